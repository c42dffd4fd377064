"""The paper's simulation study: noise injection, metrics, the sweep, the report, the linear head."""
