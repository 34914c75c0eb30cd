"""The experiment harness that reproduces Singh et al. (2015) with layerwise_optax.

Modules: ``configs`` (the paper's Caffe protocols), ``data`` (checked readers and downloads),
``models`` (LeNet, cifar10_quick/full, AlexNet in Flax), ``methods`` (the optimizers, Caffe
order), ``train`` (jitted training, evaluation, checkpoints), ``relative`` (the layer-relative
ablation), ``report`` (table, JSON/CSV, plots), ``files`` (atomic writes), ``pool`` (worker
processes), ``cli`` (one-line command-line errors). The CLI is ``examples/reproduce.py``.

References:
  Singh, De, Zhang, Goldstein, Taylor. "Layer-Specific Adaptive Learning Rates for Deep
  Networks." ICMLA 2015. arXiv:1510.04609.
"""
