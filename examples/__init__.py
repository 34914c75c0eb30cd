"""Examples: ``quickstart`` (a Flax loop with the factor), ``reproduce`` (the paper's
comparisons, on the harness in ``paper``) and ``train_mesh`` (the same training on a device
mesh). Run from the repository root, e.g. ``python -m examples.reproduce --help``."""
