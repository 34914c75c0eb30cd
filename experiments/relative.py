r"""Layer-relative learning rates: the factors of eq. 9 divided by their mean over layers.

The factor ``f_l = 1 + log(1 + 1/||g_l||_2)`` of Singh et al. is at least 1 and grows as
gradients shrink, so it does two things at once: it raises the global step size (the mean
factor is above 1) and it redistributes the step across layers (layers with small gradients
get more). This ablation keeps only the redistribution: at every step

    r_l = f_l / mean_k f_k,     t_l = t * r_l,

where the mean runs over every layer of the parameter tree (each slice of a stacked layer
counting as one layer), so the mean of the applied factors is exactly 1. A tuned global
learning rate can imitate the boost but not the redistribution: if ``+layer`` beats its
tuned base and the relative form does not, the gain was the learning rate.

Two placements, like the library's (see :mod:`layerwise_optax`):

* :func:`scale_by_relative_layerwise_lr` scales the incoming updates by their own relative
  factors; chained before ``optax.sgd`` the factor enters the momentum history (SGD, NAG).
* :func:`with_relative_layerwise_lr` takes the factors from the raw gradients and scales the
  step of ``inner`` (AdaGrad, Adam), whose history holds the unscaled gradients.

Built on the public API only: :func:`layerwise_optax.make_plan` for which arrays form a
layer, :func:`layerwise_optax.layer_factors` for ``f_l``.

References:
  Singh, De, Zhang, Goldstein, Taylor. "Layer-Specific Adaptive Learning Rates for Deep
  Networks." ICMLA 2015. arXiv:1510.04609, eq. 9.
  Nado, Gilmer, Shallue, Anil, Dahl. "A Large Batch Optimizer Reality Check: Traditional,
  Generic Optimizers Suffice Across Batch Sizes." arXiv:2102.06356, 2021.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

import layerwise_optax as lo


def relative_factors(updates: optax.Updates, layers: Any = "module",
                     stacked: Any = None) -> dict[str, jax.Array]:
  """``{layer name: f_l / mean f}`` of ``updates`` (a vector over the slices of a stacked
  layer); the mean is over all layers and slices."""
  stats = lo.layer_factors(updates, layers, stacked)
  if not stats:
    return {}
  factors = [stats[name].factor for name in stats]
  mean = jnp.mean(jnp.concatenate([jnp.ravel(f) for f in factors]))
  return {name: factor / mean for name, factor in zip(stats, factors)}


def _scale_by(tree: optax.Updates, factors_from: optax.Updates, layers: Any,
              stacked: Any) -> optax.Updates:
  """``tree`` with every array multiplied by the relative factor of its layer, taken from
  ``factors_from`` (of the same structure); each array keeps its dtype."""
  plan = lo.make_plan(factors_from, layers, stacked)
  relative = relative_factors(factors_from, layers, stacked)
  leaves, treedef = jax.tree.flatten(tree)
  if len(leaves) != len(plan.leaf_layer):
    raise ValueError(f"the updates have {len(leaves)} arrays for {len(plan.leaf_layer)} "
                     "gradient arrays; the inner optimizer must keep the gradients' structure.")
  scaled = []
  for leaf, layer in zip(leaves, plan.leaf_layer):
    factor = relative[plan.names[layer]]
    if plan.stacked[layer]:
      factor = factor.reshape(factor.shape + (1,) * (leaf.ndim - 1))
    scaled.append((leaf * factor).astype(leaf.dtype))
  return jax.tree.unflatten(treedef, scaled)


def scale_by_relative_layerwise_lr(layers: Any = "module",
                                   stacked: Any = None) -> optax.GradientTransformation:
  r"""Scales each layer's updates by ``f_l / mean_k f_k`` of the updates themselves.

  Chain it before ``optax.sgd(lr, momentum, nesterov)``, as
  :func:`layerwise_optax.scale_by_layerwise_lr`: ``h = mu h + t r_l g``. ``layers`` and
  ``stacked`` mean what they mean there.
  """
  def init_fn(params: optax.Params) -> optax.OptState:
    lo.make_plan(params, layers, stacked)  # raises early for a bad grouping
    return optax.EmptyState()

  def update_fn(updates: optax.Updates, state: optax.OptState,
                params: optax.Params | None = None) -> tuple[optax.Updates, optax.OptState]:
    del params
    return _scale_by(updates, updates, layers, stacked), state

  return optax.GradientTransformation(init_fn, update_fn)


def with_relative_layerwise_lr(inner: optax.GradientTransformation, layers: Any = "module",
                               stacked: Any = None) -> optax.GradientTransformationExtraArgs:
  r"""Multiplies ``inner``'s step per layer by ``f_l / mean_k f_k`` of the raw gradients.

  As :func:`layerwise_optax.with_layerwise_lr`: around ``optax.adagrad`` the history holds
  raw gradients, ``G += g^2; w -= t r_l g / sqrt(G)``. The state is ``inner``'s.
  """
  wrapped = optax.with_extra_args_support(inner)

  def init_fn(params: optax.Params) -> optax.OptState:
    lo.make_plan(params, layers, stacked)
    return wrapped.init(params)

  def update_fn(updates: optax.Updates, state: optax.OptState,
                params: optax.Params | None = None,
                **extra_args: Any) -> tuple[optax.Updates, optax.OptState]:
    inner_updates, state = wrapped.update(updates, state, params, **extra_args)
    return _scale_by(inner_updates, updates, layers, stacked), state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
