"""Ready-made optimizers in optax's alias style: SGD/Nesterov (eq. 10) and AdaGrad (eq. 12).

References:
  Singh, De, Zhang, Goldstein, Taylor. "Layer-Specific Adaptive Learning Rates for Deep
  Networks." ICMLA 2015. arXiv:1510.04609.
"""

from __future__ import annotations

from typing import Any

import optax

from layerwise_optax._grouping import LayersSpec, StackedSpec
from layerwise_optax._transform import scale_by_layerwise_lr, with_layerwise_lr


def _weight_decay(weight_decay: Any) -> list[optax.GradientTransformation]:
  # A literal 0 adds no pass over the parameters; a traced value always applies.
  if isinstance(weight_decay, (int, float)):
    if weight_decay < 0:
      raise ValueError(f"weight_decay must be >= 0; got {weight_decay!r}.")
    if weight_decay == 0:
      return []
  return [optax.add_decayed_weights(weight_decay)]


def sgd(learning_rate: optax.ScalarOrSchedule, momentum: Any = None, nesterov: bool = False,
        weight_decay: Any = 0.0, layers: LayersSpec = "module", stacked: StackedSpec = None,
        norm_eps: Any = 0.0, axis_name: Any = None,
        accumulator_dtype: Any = None) -> optax.GradientTransformationExtraArgs:
  """SGD, heavy-ball or Nesterov momentum with layer-specific learning rates (eq. 10).

  Caffe's order: ``g += weight_decay * w``; ``g_l *= 1 + log(1 + 1/||g_l||)``; then
  ``optax.sgd``: ``m = g + momentum * m``, ``w -= learning_rate * m`` (Nesterov:
  ``w -= learning_rate * (g + momentum * m)``), which equals Caffe's ``h = mu*h + t_l*g``
  for a constant learning rate.

  Args:
    learning_rate: a scalar or an optax schedule.
    momentum: ``None`` for plain SGD.
    nesterov: Nesterov momentum; needs ``momentum`` (``optax.sgd`` silently drops it).
    weight_decay: L2 coefficient added to the gradient before the factor, as Caffe does;
      needs ``params`` in ``update``.
    layers, stacked, norm_eps, axis_name: see :func:`scale_by_layerwise_lr`.
    accumulator_dtype: dtype of the momentum buffer, as in ``optax.sgd``.

  References:
    Singh et al., ICMLA 2015, arXiv:1510.04609, eq. 10.
  """
  if nesterov and momentum is None:
    raise ValueError("nesterov=True needs a momentum (e.g. momentum=0.9); optax.sgd would "
                     "silently run plain SGD.")
  return optax.chain(
      *_weight_decay(weight_decay),
      scale_by_layerwise_lr(layers, stacked, norm_eps, axis_name),
      optax.sgd(learning_rate, momentum, nesterov, accumulator_dtype),
  )


def adagrad(learning_rate: optax.ScalarOrSchedule, initial_accumulator_value: Any = 0.1,
            eps: Any = 1e-7, weight_decay: Any = 0.0, layers: LayersSpec = "module",
            stacked: StackedSpec = None, norm_eps: Any = 0.0,
            axis_name: Any = None) -> optax.GradientTransformationExtraArgs:
  """AdaGrad with layer-specific learning rates, the paper's eq. 12.

  ``G += g^2`` (raw gradients, from ``initial_accumulator_value``);
  ``w -= learning_rate * f(||g_l||) * g / sqrt(G + eps)``: :func:`with_layerwise_lr` around
  ``optax.adagrad``, whose ``initial_accumulator_value`` and ``eps`` (inside the square
  root) it keeps. Caffe's AdaGrad starts the history at 0 and adds its delta outside the
  square root; ``initial_accumulator_value=0`` and ``eps=delta**2`` come close.

  Args:
    learning_rate: a scalar or an optax schedule.
    initial_accumulator_value, eps: as in ``optax.adagrad``.
    weight_decay: L2 coefficient added to the gradient first (Caffe's order); the factor
      and the history both see the decayed gradient.
    layers, stacked, norm_eps, axis_name: see :func:`scale_by_layerwise_lr`.

  References:
    Singh et al., ICMLA 2015, arXiv:1510.04609, eq. 12.
  """
  inner = optax.adagrad(learning_rate, initial_accumulator_value, eps)
  return optax.chain(
      *_weight_decay(weight_decay),
      with_layerwise_lr(inner, layers, stacked, norm_eps, axis_name),
  )
