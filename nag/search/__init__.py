"""Per-budget architecture search baselines (random, OFA evolution, BigNAS coarse-to-fine) to compare NAG with."""
