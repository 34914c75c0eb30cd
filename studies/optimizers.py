"""The studies' optimizers: a base method, or the same one with the layer factor in front.

Method names follow the paper: ``sgd`` is heavy-ball momentum 0.9 (Caffe's SGD), ``nag``
Nesterov momentum 0.9, ``gd`` plain SGD without momentum; ``+layer`` chains
:func:`layerwise_optax.scale_by_layerwise_lr` (``t_l = t * f_l``,
``f_l = 1 + log(1 + 1/||g_l||_2)``, eq. 9) before the same ``optax.sgd``.

References:
  Singh, De, Zhang, Goldstein, Taylor. "Layer-Specific Adaptive Learning Rates for Deep
  Networks." ICMLA 2015. arXiv:1510.04609.
"""

from __future__ import annotations

from typing import Any

import optax

import layerwise_optax as lo
from experiments import methods

MOMENTUM = 0.9
BASES = ("gd", "sgd", "nag")


def make_optimizer(method: str, lr: Any, layers: Any = "module") -> optax.GradientTransformation:
  """The base optimizer, or the same one with the layer factor chained in front.

  ``lr`` may be a traced array, so one compiled run serves a whole learning-rate grid.
  """
  base, layerwise = methods.split_method(method, BASES)
  momentum = None if base == "gd" else MOMENTUM
  nesterov = base == "nag"
  if layerwise:
    return lo.sgd(lr, momentum=momentum, nesterov=nesterov, layers=layers)
  return optax.sgd(lr, momentum=momentum, nesterov=nesterov)
