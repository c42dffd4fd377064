"""Named checkpoints: the download table, the cache, and ``load_vit`` (name or path → ViT)."""
