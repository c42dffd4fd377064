"""Benchmarks of arb-jax: throughput, MFU and scaling of ARB against the PyTorch way of doing it.

``python -m bench --preset cpu-quick|cpu-full|gpu|smoke [--json OUT] [--md OUT]``; see
``bench/README.md``. Modules: ``cases`` (presets), ``run`` (timing, check, records),
``baseline`` (HF ViT + numpy/statsmodels statistics), ``flops`` (docs/method.md §6 count, peak FLOP/s),
``machine`` (what it ran on), ``tables`` (markdown).
"""
