"""The shipped demo ViT: its synthetic training data and its training run (``arb train-demo``)."""
