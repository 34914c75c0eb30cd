"""The experiment harness: one engine under every experiment of the repository.

Registries: :mod:`~experiments.data` (``DATASETS``), :mod:`~experiments.models` (``MODELS``),
:mod:`~experiments.methods` (``BASES``, ``PEERS``: every optimizer a ``--methods`` option
names). Training: :mod:`~experiments.engine` (one jitted step, one evaluation, one loop with
checkpoints). Files: :mod:`~experiments.records` (run records, checkpoints, the results
schema), :mod:`~experiments.files` (atomic writes). Statistics and reports:
:mod:`~experiments.stats`, :mod:`~experiments.report`. Runs in parallel:
:mod:`~experiments.pool`; on several processes of JAX's multi-controller runtime:
:mod:`~experiments.processes`. Commands: :mod:`~experiments.cli` (one convention).

Front-ends: :mod:`~experiments.tuned` (tuned comparisons, protocol in
:mod:`~experiments.tuning`), :mod:`~experiments.verdict`, :mod:`~experiments.paper` (the
paper's Caffe protocols, :mod:`~experiments.configs`) and the four studies
(:mod:`experiments.studies`). The device-mesh example (``examples/train_mesh.py``) shards
the engine's pure step (:func:`experiments.engine.make_step`).

References:
  Singh, De, Zhang, Goldstein, Taylor. "Layer-Specific Adaptive Learning Rates for Deep
  Networks." ICMLA 2015. arXiv:1510.04609.
"""
