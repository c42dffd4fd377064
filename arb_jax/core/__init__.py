"""The ARB method: bootstrap null images, statistics (z, p, lfdr, π₀), shrunk maps, the runner."""
