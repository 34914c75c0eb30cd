"""Layer-specific adaptive learning rates as optax gradient transformations.

Two placements of the factor ``f_l = 1 + log(1 + 1/||g_l||_2)`` (eq. 9), following where
Singh et al.'s Caffe code put ``t_l = t * f_l`` (in place of Caffe's learning rate):

* :func:`scale_by_layerwise_lr` multiplies the incoming updates by their own layer factors.
  Chained before ``optax.sgd(lr, momentum, nesterov)`` the factor scales the gradient
  *before* it enters the momentum history, which is Caffe's ``h = mu*h + t_l*g`` (eq. 10)
  and its Nesterov form.
* :func:`with_layerwise_lr` takes the factors from the raw gradients, runs any optimizer
  with a global learning rate, and multiplies that optimizer's step. Around
  ``optax.adagrad`` this is eq. 12: the history accumulates raw gradients and the factor
  scales the step, ``h += g^2; w -= t_l * g / sqrt(h)``. Chaining the plain transformation
  before ``optax.adagrad`` instead feeds scaled gradients into the history, which cancels
  most of the factor once the history outgrows its initial value.

Put ``optax.add_decayed_weights`` (and any clipping) before either, as Caffe adds weight
decay to the gradient before the update rule.

References:
  Singh, De, Zhang, Goldstein, Taylor. "Layer-Specific Adaptive Learning Rates for Deep
  Networks." ICMLA 2015. arXiv:1510.04609.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import numpy as np
import optax

from layerwise_optax import _factor
from layerwise_optax._grouping import LayersSpec, StackedSpec, make_plan, validate_layers


class LayerFactor(NamedTuple):
  """A layer's gradient norm and learning-rate factor (arrays; vectors for stacked layers)."""

  norm: jax.Array
  factor: jax.Array


def _check_eps(eps: Any) -> None:
  if isinstance(eps, jax.core.Tracer):
    return
  value = np.asarray(eps)
  if value.ndim != 0 or not np.isfinite(value) or value < 0:
    raise ValueError(f"norm_eps must be a finite scalar >= 0; got {eps!r}.")


def _layer_factors_flat(leaves, plan, norm_eps, axis_name):
  sums = _factor.layer_sums_of_squares(leaves, plan, axis_name)
  return sums, _factor.factors_from_sums_of_squares(sums, norm_eps)


def layer_factors(updates: optax.Updates, layers: LayersSpec = "module",
                  stacked: StackedSpec = None, norm_eps: Any = 0.0,
                  axis_name: Any = None) -> dict[str, LayerFactor]:
  """Each layer's gradient norm and factor ``1 + log(1 + 1/(norm + eps))``, by layer name.

  A pure function for logging (it can run inside a jitted training step); the arguments
  mean the same as in :func:`scale_by_layerwise_lr`. Names are '/'-joined paths, e.g.
  ``'params/Conv_0'`` with ``layers='module'`` or ``'params/Conv_0/kernel'`` with
  ``layers='array'``.
  """
  validate_layers(layers, stacked)
  _check_eps(norm_eps)
  leaves = jax.tree.leaves(updates)
  plan = make_plan(updates, layers, stacked)
  sums, factors = _layer_factors_flat(leaves, plan, norm_eps, axis_name)
  return {name: LayerFactor(_factor.norm_from_sum_of_squares(s), f)
          for name, s, f in zip(plan.names, sums, factors)}


def _scale_tree(tree, plan, factors):
  leaves, treedef = jax.tree.flatten(tree)
  if len(leaves) != len(plan.leaf_layer):
    raise ValueError(
        f"the inner optimizer returned {len(leaves)} update arrays for "
        f"{len(plan.leaf_layer)} gradient arrays; it must keep the gradients' structure.")
  return jax.tree.unflatten(treedef, _factor.scale_leaves(leaves, plan, factors))


def scale_by_layerwise_lr(layers: LayersSpec = "module", stacked: StackedSpec = None,
                          norm_eps: Any = 0.0,
                          axis_name: Any = None) -> optax.GradientTransformation:
  """Scales each layer's updates by ``1 + log(1 + 1/(||u_l||_2 + norm_eps))`` (eq. 9).

  Stateless (``optax.EmptyState``). The factor of layer ``l`` is computed from the incoming
  updates ``u_l`` themselves; chain it before the base optimizer:
  ``optax.chain(scale_by_layerwise_lr(), optax.sgd(lr, momentum=0.9))`` is the paper's
  eq. 10 with Caffe's placement (``h = mu*h + t_l*g``; ``w -= h``). For AdaGrad, Adam and
  other normalising optimizers use :func:`with_layerwise_lr`.

  Args:
    layers: ``"module"`` (default: one layer per innermost container, e.g. a Flax module's
      kernel and bias together; arrays directly under the root are one layer each),
      ``"array"`` (one layer per array, Caffe's per-blob granularity), a pytree of labels
      whose structure is a prefix of the parameters', or a callable ``(path, leaf) ->
      label``.
    stacked: layers whose arrays stack several layers along their leading axis (Flax
      ``nn.scan``): a layer-name prefix, a sequence of them, or a predicate on the layer
      name. Each slice along that axis gets its own factor.
    norm_eps: added to each norm (0, the paper's choice, by default); bounds the factor by
      ``1 + log(1 + 1/norm_eps)``. May be a traced value (``optax.inject_hyperparams``).
    axis_name: inside ``shard_map``/``pmap`` with parameters sharded over a mapped axis,
      the axis name (or tuple of names) to ``psum`` the per-layer sums of squares over, so
      each norm is the whole layer's. Not needed under plain ``jax.jit`` with sharded
      arrays, where reductions are already global.

  Returns:
    An ``optax.GradientTransformation``. A layer with an all-zero update gets a zero update;
    NaN and inf in the updates stay in the output.

  References:
    Singh et al., "Layer-Specific Adaptive Learning Rates for Deep Networks", ICMLA 2015,
    arXiv:1510.04609, eqs. 9-10.
  """
  validate_layers(layers, stacked)
  _check_eps(norm_eps)

  def init_fn(params):
    make_plan(params, layers, stacked)  # raises early for a mismatched label tree
    return optax.EmptyState()

  def update_fn(updates, state, params=None):
    del params
    leaves = jax.tree.leaves(updates)
    plan = make_plan(updates, layers, stacked)
    # The barrier keeps the norms' upcast of a bfloat16/float16 leaf apart from the
    # scaling's: merged by CSE, XLA:CPU materialises the float32 copy (a write and a read
    # of twice the leaf's bytes) because its reduction kernel cannot share a producer.
    # Interleaved A/B on 4 bfloat16 arrays of 2048x2048: 4.0x optax.sgd's step without,
    # 1.6x with (docs/performance.md). The float32 HLO is unchanged.
    norm_leaves = jax.lax.optimization_barrier(leaves) if leaves else leaves
    _, factors = _layer_factors_flat(norm_leaves, plan, norm_eps, axis_name)
    return _scale_tree(updates, plan, factors), state

  return optax.GradientTransformation(init_fn, update_fn)


def with_layerwise_lr(inner: optax.GradientTransformation, layers: LayersSpec = "module",
                      stacked: StackedSpec = None, norm_eps: Any = 0.0,
                      axis_name: Any = None) -> optax.GradientTransformationExtraArgs:
  """Multiplies ``inner``'s step per layer by factors taken from the raw gradients.

  ``u_l = f(||g_l||) * inner(g)_l`` with ``f`` of eq. 9. Around ``optax.adagrad`` this is
  the paper's eq. 12 (``h += g^2``; ``w -= t * f(||g_l||) * g / sqrt(h)``), where the
  history holds raw gradients; around Adam, RMSProp and the like it is the paper's
  "applicable to most existing methods". The state is ``inner``'s state, unchanged, so
  ``optax.tree_utils.tree_get`` and ``inject_hyperparams`` on ``inner`` keep working.

  Args:
    inner: the optimizer whose step is scaled; it must return updates with the gradients'
      tree structure.
    layers, stacked, norm_eps, axis_name: as in :func:`scale_by_layerwise_lr`.

  References:
    Singh et al., "Layer-Specific Adaptive Learning Rates for Deep Networks", ICMLA 2015,
    arXiv:1510.04609, eqs. 9 and 12.
  """
  validate_layers(layers, stacked)
  _check_eps(norm_eps)
  inner = optax.with_extra_args_support(inner)

  def init_fn(params):
    make_plan(params, layers, stacked)
    return inner.init(params)

  def update_fn(updates, state, params=None, **extra_args):
    leaves = jax.tree.leaves(updates)
    plan = make_plan(updates, layers, stacked)
    # The barrier hides from XLA that the norms and ``inner`` square the same gradients.
    # Without it XLA:CPU computes ``g * g`` once for both, materialises it as a temporary
    # and cannot fuse it into the norm's reduction: about 3.7x optax.adagrad's step time
    # instead of 1.3x on 4 arrays of 4096x4096 (benchmarks/bench_step.py).
    norm_leaves = jax.lax.optimization_barrier(leaves) if leaves else leaves
    _, factors = _layer_factors_flat(norm_leaves, plan, norm_eps, axis_name)
    inner_updates, state = inner.update(updates, state, params, **extra_args)
    return _scale_tree(inner_updates, plan, factors), state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
