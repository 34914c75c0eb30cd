"""Tuned comparisons (docs/evidence.md): each layer method against its tuned base optimizer
and the layer-wise peers (LARS, LAMB), every method with its own learning-rate grid selected
on held-out validation data, then rerun on fresh paired seeds. One command per workload, run
from the repository root: ``python -m evidence.lenet``, ``evidence.resnet``,
``evidence.charlm``; ``python -m evidence.verdict`` summarises them."""
