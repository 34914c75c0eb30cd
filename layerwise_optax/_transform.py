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

With ``keep_stats=True`` either keeps the last step's ``{layer name: LayerFactor(norm,
factor)}`` in its state (a :class:`LayerStats` mapping stored as two vectors, read with
:func:`layer_stats`), taken from the sums of squares the factor needs anyway, so logging them
costs no second pass over the gradients.

References:
  Singh, De, Zhang, Goldstein, Taylor. "Layer-Specific Adaptive Learning Rates for Deep
  Networks." ICMLA 2015. arXiv:1510.04609.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from typing import NamedTuple, cast

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.typing import ArrayLike

from layerwise_optax import _factor
from layerwise_optax._grouping import (
    LayerPlan,
    LayersSpec,
    StackedSpec,
    make_plan,
    validate_layers,
)
from layerwise_optax._stats import LayerFactor, LayerStats, initial_stats, like, packed_stats


class LayerwiseLrState(NamedTuple):
  r"""State of :func:`scale_by_layerwise_lr` with ``keep_stats=True``.

  For each layer :math:`l` the last step's :math:`\lVert u_l \rVert_2` and
  :math:`f_l = 1 + \log(1 + 1/(\lVert u_l \rVert_2 + \epsilon))` (eq. 9), taken from the sums
  of squares the factor needed anyway: O(number of layers) floats.

  Attributes:
    layer_stats: the :class:`LayerStats` mapping ``{layer name: LayerFactor(norm,
      factor)}`` of the last step, with the values :func:`layer_factors` returns (norms 0
      and factors 1 before the first step).

  Examples:
    >>> import jax.numpy as jnp
    >>> import layerwise_optax as lo
    >>> tx = lo.scale_by_layerwise_lr(keep_stats=True)
    >>> state = tx.init({"w": jnp.zeros(2)})
    >>> _, state = tx.update({"w": jnp.array([3.0, 4.0])}, state)
    >>> print(f"{state.layer_stats['w'].factor:.4f}")
    1.1823

  References:
    Singh et al., "Layer-Specific Adaptive Learning Rates for Deep Networks", ICMLA 2015,
    arXiv:1510.04609, eq. 9.
  """

  layer_stats: LayerStats


class WithLayerwiseLrState(NamedTuple):
  r"""State of :func:`with_layerwise_lr` with ``keep_stats=True``.

  For each layer :math:`l` the last step's raw-gradient norm :math:`\lVert g_l \rVert_2` and
  factor :math:`f_l` (eq. 9), beside the wrapped optimizer's state.

  Attributes:
    inner_state: the wrapped optimizer's state, unchanged.
    layer_stats: the :class:`LayerStats` mapping ``{layer name: LayerFactor(norm,
      factor)}`` of the last step's raw gradients, with the values :func:`layer_factors`
      returns (norms 0, factors 1 before the first step).

  Examples:
    >>> import jax.numpy as jnp
    >>> import optax
    >>> import layerwise_optax as lo
    >>> tx = lo.with_layerwise_lr(optax.adagrad(0.1), keep_stats=True)
    >>> state = tx.init({"w": jnp.zeros(2)})
    >>> _, state = tx.update({"w": jnp.array([3.0, 4.0])}, state)
    >>> print(f"norm {state.layer_stats['w'].norm:.4f}")
    norm 5.0000
    >>> history = optax.tree_utils.tree_get(state, "sum_of_squares")  # inner: 0.1 + g^2
    >>> print([f"{h:.1f}" for h in history["w"]])
    ['9.1', '16.1']

  References:
    Singh et al., "Layer-Specific Adaptive Learning Rates for Deep Networks", ICMLA 2015,
    arXiv:1510.04609, eqs. 9 and 12.
  """

  inner_state: optax.OptState
  layer_stats: LayerStats


def _check_eps(eps: ArrayLike) -> None:
  value = _factor.concrete_value(eps)
  if value is None:
    return
  if value.ndim != 0 or not np.isfinite(value) or value < 0:
    raise ValueError(f"norm_eps must be a finite scalar >= 0; got {eps!r}.")


def _layer_factors_flat(leaves: Sequence[ArrayLike], plan: LayerPlan, norm_eps: ArrayLike,
                        axis_name: Hashable | None) -> tuple[list[jax.Array], list[jax.Array]]:
  sums = _factor.layer_sums_of_squares(leaves, plan, axis_name)
  return sums, _factor.factors_from_sums_of_squares(sums, norm_eps)


def _stats(plan: LayerPlan, sums: Sequence[jax.Array],
           factors: Sequence[jax.Array]) -> dict[str, LayerFactor]:
  norms = _factor.norms_from_sums_of_squares(sums)
  return {name: LayerFactor(n, f) for name, n, f in zip(plan.names, norms, factors)}


def layer_factors(updates: optax.Updates, layers: LayersSpec = "module",
                  stacked: StackedSpec = None, norm_eps: ArrayLike = 0.0,
                  axis_name: Hashable | None = None) -> dict[str, LayerFactor]:
  r"""Each layer's gradient norm and factor of eq. 9, by layer name.

  .. math::
    \lVert g_l \rVert_2 = \Big(\sum_{i \in l} g_i^2\Big)^{1/2}, \qquad
    f_l = 1 + \log\left(1 + \frac{1}{\lVert g_l \rVert_2 + \epsilon}\right)

  A pure function for logging (it can run inside a jitted training step); the arguments
  mean the same as in :func:`scale_by_layerwise_lr`. To log the factors an optimizer used
  without computing the norms twice, build it with ``keep_stats=True`` instead.

  Args:
    updates: a pytree of gradients (or any updates).
    layers: the grouping, see :func:`make_plan`.
    stacked: the stacked layers, see :func:`make_plan`.
    norm_eps: :math:`\epsilon`, added to each norm.
    axis_name: the mapped axis (or axes) to sum the squares over inside ``shard_map``.

  Returns:
    ``{layer name: LayerFactor(norm, factor)}``. Names are '/'-joined paths, e.g.
    ``'params/Conv_0'`` with ``layers='module'`` or ``'params/Conv_0/kernel'`` with
    ``layers='array'``.

  Examples:
    >>> import jax.numpy as jnp
    >>> import layerwise_optax as lo
    >>> grads = {"Dense_0": {"kernel": jnp.array([[0.3], [0.4]]), "bias": jnp.zeros(1)},
    ...          "Dense_1": {"kernel": jnp.array([[3.0, 4.0]])}}
    >>> for name, (norm, factor) in lo.layer_factors(grads).items():
    ...   print(f"{name}: norm {norm:.2f}, factor {factor:.4f}")
    Dense_0: norm 0.50, factor 2.0986
    Dense_1: norm 5.00, factor 1.1823

  References:
    Singh et al., "Layer-Specific Adaptive Learning Rates for Deep Networks", ICMLA 2015,
    arXiv:1510.04609, eq. 9.
  """
  validate_layers(layers, stacked)
  _check_eps(norm_eps)
  leaves = jax.tree.leaves(updates)
  plan = make_plan(updates, layers, stacked)
  sums, factors = _layer_factors_flat(leaves, plan, norm_eps, axis_name)
  return _stats(plan, sums, factors)


def _check_layers(params: optax.Params, layers: LayersSpec, stacked: StackedSpec) -> None:
  """Raises at ``init`` for a label tree that does not match the parameters. A tree without
  arrays, such as ``optax.tree_utils.tree_map_params``'s parameter stand-in, has no layers."""
  if jax.tree.leaves(params):
    make_plan(params, layers, stacked)


def _scale_tree(tree: optax.Updates, plan: LayerPlan,
                factors: Sequence[jax.Array]) -> optax.Updates:
  leaves, treedef = jax.tree.flatten(tree)
  if len(leaves) != len(plan.leaf_layer):
    raise ValueError(
        f"the inner optimizer returned {len(leaves)} update arrays for "
        f"{len(plan.leaf_layer)} gradient arrays; it must keep the gradients' structure.")
  return jax.tree.unflatten(treedef, _factor.scale_leaves(leaves, plan, factors))


def _parameter_counts(leaves: Sequence[ArrayLike], plan: LayerPlan) -> list[int]:
  """Each layer's number of parameters (of one slice for a stacked layer), from the shapes."""
  counts = [0] * len(plan.names)
  for leaf, layer in zip(leaves, plan.leaf_layer):
    shape = np.shape(leaf)
    counts[layer] += math.prod(shape[1:] if plan.stacked[layer] else shape)
  return counts


def _weighted_mean_factor(factors: Sequence[jax.Array], plan: LayerPlan,
                         leaves: Sequence[ArrayLike]) -> jax.Array | None:
  r"""The factors' mean weighted by each layer's parameter count (``None``: no parameters).

  .. math::
    \bar f = \frac{\sum_k n_k f_k}{\sum_k n_k},

  with :math:`n_k` the parameter count of layer :math:`k` (each slice of a stacked layer is
  a layer). Under ``shard_map`` the counts are each shard's, proportional to the whole
  layers' when every array is split over the axis, as ``axis_name`` assumes.
  """
  counts = _parameter_counts(leaves, plan)
  total = sum(c * math.prod(f.shape) for c, f in zip(counts, factors))
  if not total:
    return None
  dtype = jnp.result_type(*factors)
  weights = np.concatenate([np.full(math.prod(f.shape), c / total)
                            for c, f in zip(counts, factors)])
  flat = jnp.concatenate([jnp.ravel(f).astype(dtype) for f in factors])
  return jnp.dot(flat, jnp.asarray(weights, dtype))  # one vector operation for all layers


def _split_factors(factors: Sequence[jax.Array], plan: LayerPlan, leaves: Sequence[ArrayLike],
                   part: str | None) -> list[jax.Array]:
  r"""Eq. 9's factors (``part`` None), or one of the two parts they split into,
  :math:`f_l = \bar f \, r_l` (:func:`_weighted_mean_factor`): ``"relative"``, the
  redistribution across layers :math:`r_l = f_l / \bar f` (parameter-weighted mean 1 at
  every step), or ``"uniform"``, the common multiplier :math:`\bar f` on every layer."""
  mean = None if part is None else _weighted_mean_factor(factors, plan, leaves)
  if mean is None:  # eq. 9 itself, or no parameters: nothing to split
    return list(factors)
  if part == "relative":
    return [f / mean.astype(f.dtype) for f in factors]
  return [jnp.broadcast_to(mean.astype(f.dtype), f.shape) for f in factors]


def _part(relative: bool, uniform: bool) -> str | None:
  """The part of the factor a transformation applies; both parts together are refused."""
  if relative and uniform:
    raise ValueError("relative=True and uniform=True together leave every layer a factor of "
                     "1; pass at most one of them.")
  return "relative" if relative else "uniform" if uniform else None


def _factors_of(updates: optax.Updates, layers: LayersSpec, stacked: StackedSpec,
                norm_eps: ArrayLike, axis_name: Hashable | None, part: str | None = None
                ) -> tuple[LayerPlan, list[jax.Array], list[jax.Array]]:
  leaves = jax.tree.leaves(updates)
  plan = make_plan(updates, layers, stacked)
  # The barrier keeps the norm pass apart from what else reads the same gradients.
  # scale_by_layerwise_lr: merged by CSE with the scaling's upcast of a bfloat16/float16
  # leaf, XLA:CPU materialises the float32 copy (a write and a read of twice the leaf's
  # bytes) because its reduction kernel cannot share a producer: 4.0x optax.sgd's step
  # without, 1.6x with, on 4 bfloat16 arrays of 2048x2048 (docs/performance.md).
  # with_layerwise_lr: XLA:CPU would compute ``g * g`` once for the norms and ``inner``,
  # materialise it and not fuse it into the norm's reduction: 3.7x optax.adagrad's step
  # instead of 1.3x on 4 arrays of 4096x4096 (benchmarks/bench_step.py).
  norm_leaves = jax.lax.optimization_barrier(leaves) if leaves else leaves
  sums, factors = _layer_factors_flat(norm_leaves, plan, norm_eps, axis_name)
  return plan, sums, _split_factors(factors, plan, leaves, part)


def scale_by_layerwise_lr(layers: LayersSpec = "module", stacked: StackedSpec = None,
                          norm_eps: ArrayLike = 0.0, axis_name: Hashable | None = None,
                          keep_stats: bool = False, relative: bool = False,
                          uniform: bool = False) -> optax.GradientTransformation:
  r"""Scales each layer's updates by their own factor of eq. 9.

  .. math::
    u_l \leftarrow \left(1 + \log\left(1 + \frac{1}{\lVert u_l \rVert_2 + \epsilon}\right)
    \right) u_l

  Chain it before the base optimizer:
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
      name. Each slice along that axis gets its own factor. A prefix that matches no layer
      raises ``ValueError`` at ``init``.
    norm_eps: :math:`\epsilon`, added to each norm (0, the paper's choice, by default);
      bounds the factor by ``1 + log(1 + 1/norm_eps)``. May be a traced value
      (``optax.inject_hyperparams``).
    axis_name: inside ``shard_map``/``pmap`` with parameters sharded over a mapped axis,
      the axis name (or tuple of names) to ``psum`` the per-layer sums of squares over, so
      each norm is the whole layer's. Not needed under plain ``jax.jit`` with sharded
      arrays, where reductions are already global.
    keep_stats: keep the last step's ``{layer name: LayerFactor(norm, factor)}`` in the
      state (:class:`LayerwiseLrState`, read by :func:`layer_stats`). Off by default: the state is
      then ``optax.EmptyState()``. With ``relative`` or ``uniform`` the kept factor is the
      one applied, :math:`r_l` or :math:`\bar f`.
    relative: the layer-relative form: each factor divided by the parameter-weighted mean
      of all the layers' factors at this step,

      .. math::
        r_l = f_l \Big/ \frac{\sum_k n_k f_k}{\sum_k n_k}
        \quad (n_k \text{: the parameter count of layer } k),

      so that :math:`\sum_l n_l r_l / \sum_l n_l = 1` at every step: the step is
      redistributed across layers without the factor's global boost (an ablation of eq. 9;
      a slice of a stacked layer is a layer).
    uniform: the other part of eq. 9's factor, :math:`f_l = \bar f \, r_l`: every layer
      gets the same factor :math:`\bar f = \sum_k n_k f_k / \sum_k n_k`, the
      parameter-weighted mean of the layers' factors at this step (a global multiplier
      that follows the gradients' norms, without the redistribution across layers; an
      ablation of eq. 9). Not together with ``relative`` (``ValueError``).

  Returns:
    An ``optax.GradientTransformation``. A layer with an all-zero update gets a zero update;
    NaN and inf in the updates stay in the output.

  Examples:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> import optax
    >>> import layerwise_optax as lo
    >>> def f(p): return jnp.sum(p["a"] ** 2) + 10 * jnp.sum(p["b"] ** 2)
    >>> params = {"a": jnp.array([1.0, 2.0]), "b": jnp.array([0.1])}
    >>> tx = optax.chain(lo.scale_by_layerwise_lr(keep_stats=True),
    ...                  optax.sgd(learning_rate=0.01))
    >>> state = tx.init(params)
    >>> for _ in range(3):  # prints f, then the factors of layers a and b
    ...   grads = jax.grad(f)(params)
    ...   updates, state = tx.update(grads, state, params)
    ...   params = optax.apply_updates(params, updates)
    ...   stats = lo.layer_stats(state)
    ...   print(f"{f(params):.4f}", f"{stats['a'].factor:.4f}", f"{stats['b'].factor:.4f}")
    4.8142 1.2018 1.4055
    4.5604 1.2063 1.5280
    4.3294 1.2109 1.6939

  References:
    Singh et al., "Layer-Specific Adaptive Learning Rates for Deep Networks", ICMLA 2015,
    arXiv:1510.04609, eqs. 9-10.
  """
  validate_layers(layers, stacked)
  _check_eps(norm_eps)
  part = _part(relative, uniform)

  def init_fn(params: optax.Params) -> optax.OptState:
    if keep_stats:
      return LayerwiseLrState(initial_stats(params, layers, stacked))
    _check_layers(params, layers, stacked)
    return optax.EmptyState()

  def update_fn(updates: optax.Updates, state: optax.OptState,
                params: optax.Params | None = None) -> tuple[optax.Updates, optax.OptState]:
    del params
    plan, sums, factors = _factors_of(updates, layers, stacked, norm_eps, axis_name, part)
    if keep_stats:
      previous = cast(LayerwiseLrState, state).layer_stats
      state = LayerwiseLrState(like(packed_stats(plan, sums, factors), previous))
    return _scale_tree(updates, plan, factors), state

  return optax.GradientTransformation(init_fn, update_fn)


def with_layerwise_lr(inner: optax.GradientTransformation, layers: LayersSpec = "module",
                      stacked: StackedSpec = None, norm_eps: ArrayLike = 0.0,
                      axis_name: Hashable | None = None, keep_stats: bool = False,
                      relative: bool = False,
                      uniform: bool = False) -> optax.GradientTransformationExtraArgs:
  r"""Multiplies ``inner``'s step per layer by factors taken from the raw gradients.

  .. math::
    u_l = \left(1 + \log\left(1 + \frac{1}{\lVert g_l \rVert_2 + \epsilon}\right)\right)
    \mathrm{inner}(g)_l

  Around ``optax.adagrad`` this is the paper's eq. 12 (``h += g^2``;
  ``w -= t * f(||g_l||) * g / sqrt(h)``), where the history holds raw gradients; around
  Adam, RMSProp and the like it is the paper's "applicable to most existing methods".
  Adam alone moves every coordinate by about its learning rate; the factor moves the layer
  with the small gradient faster (the example). Without ``keep_stats`` the state is
  ``inner``'s state, unchanged, so
  ``optax.tree_utils.tree_get`` and ``inject_hyperparams`` on ``inner`` keep working.

  Args:
    inner: the optimizer whose step is scaled; it must return updates with the gradients'
      tree structure.
    layers: the grouping, as in :func:`scale_by_layerwise_lr`.
    stacked: the stacked layers, as in :func:`scale_by_layerwise_lr`.
    norm_eps: :math:`\epsilon`, as in :func:`scale_by_layerwise_lr`.
    axis_name: the mapped axis to sum over, as in :func:`scale_by_layerwise_lr`.
    keep_stats: keep the last step's ``{layer name: LayerFactor(norm, factor)}`` of the raw
      gradients: the state is then :class:`WithLayerwiseLrState` ``(inner_state,
      layer_stats)``. With ``relative`` or ``uniform`` the kept factor is the one applied.
    relative: the layer-relative form, factors divided by their parameter-weighted mean
      (taken from the raw gradients), as in :func:`scale_by_layerwise_lr`.
    uniform: that mean on every layer, as in :func:`scale_by_layerwise_lr`.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` (extra arguments go to ``inner``).

  Examples:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> import optax
    >>> import layerwise_optax as lo
    >>> target = {"near": jnp.array([0.01, 0.02]), "far": jnp.array([3.0])}
    >>> def distance(p): return sum(jnp.sum((p[k] - target[k]) ** 2) for k in p)
    >>> tx = lo.with_layerwise_lr(optax.adam(learning_rate=0.001))
    >>> params = jax.tree.map(jnp.zeros_like, target)
    >>> state = tx.init(params)
    >>> for _ in range(3):
    ...   updates, state = tx.update(jax.grad(distance)(params), state, params)
    ...   params = optax.apply_updates(params, updates)
    ...   print(f"near {params['near'][1]:.4f}, far {params['far'][0]:.4f}")
    near 0.0042, far 0.0012
    near 0.0085, far 0.0023
    near 0.0131, far 0.0035

  References:
    Singh et al., "Layer-Specific Adaptive Learning Rates for Deep Networks", ICMLA 2015,
    arXiv:1510.04609, eqs. 9 and 12.
  """
  validate_layers(layers, stacked)
  _check_eps(norm_eps)
  part = _part(relative, uniform)
  wrapped = optax.with_extra_args_support(inner)

  def init_fn(params: optax.Params) -> optax.OptState:
    if keep_stats:
      return WithLayerwiseLrState(wrapped.init(params),
                                  initial_stats(params, layers, stacked))
    _check_layers(params, layers, stacked)
    return wrapped.init(params)

  def update_fn(updates: optax.Updates, state: optax.OptState,
                params: optax.Params | None = None,
                **extra_args: object) -> tuple[optax.Updates, optax.OptState]:
    plan, sums, factors = _factors_of(updates, layers, stacked, norm_eps, axis_name, part)
    if not keep_stats:
      inner_updates, state = wrapped.update(updates, state, params, **extra_args)
      return _scale_tree(inner_updates, plan, factors), state
    inner_state, previous = cast(WithLayerwiseLrState, state)
    inner_updates, inner_state = wrapped.update(updates, inner_state, params, **extra_args)
    stats = like(packed_stats(plan, sums, factors), previous)
    return _scale_tree(inner_updates, plan, factors), WithLayerwiseLrState(inner_state, stats)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
