"""Examples to copy into your own code: ``quickstart`` (a Flax loop with the factor) and
``train_mesh`` (training on a device mesh, on one or several processes; its launcher is
``experiments.processes``). Run from the repository root, e.g.
``python -m examples.train_mesh --help``. The paper's experiments are
``python -m experiments.paper``."""
