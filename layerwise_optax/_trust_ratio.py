r"""Trust ratios (LARS, LAMB) on the library's layer plan.

For layer ``l`` with parameters ``w_l`` and incoming updates ``u_l``:

    r_l = trust_coefficient * ||w_l||_2 / (||u_l||_2 + eps)     (1 where either norm is 0)
    u_l <- r_l * u_l

``optax.scale_by_trust_ratio`` takes one ratio per array; here a layer is whatever the
layer plan says (``layers=``, default one layer per array as in optax), each slice of a
stacked (``nn.scan``) layer gets its own ratio (``stacked=``), the norms can be summed over a
mapped axis (``axis_name=``), some arrays can keep ratio 1 (``mask=``) and the last step's
norms and ratios can be kept in the state (``keep_stats=``). All the norms of a step, the
parameters' and the updates', come from one call of the sums of squares the factor of eq. 9
uses, so they cost one read of each and one collective under ``shard_map``.

References:
  You, Gitman, Ginsburg. "Large Batch Training of Convolutional Networks." arXiv:1708.03888,
  2017 (LARS).
  You, Li, Reddi, Hseu, Kumar, Bhojanapalli, Song, Demmel, Keutzer, Hsieh. "Large Batch
  Optimization for Deep Learning: Training BERT in 76 minutes." ICLR 2020, arXiv:1904.00962
  (LAMB).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any, ClassVar, NamedTuple, TypeAlias, cast

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
from layerwise_optax._stats import Layout, PackedStats, find_stats

MaskOrFn: TypeAlias = Any | Callable[[optax.Params], Any]
"""Which arrays get a trust ratio: a pytree of booleans whose structure is a prefix of the
parameters' (``True``: the ratio applies; ``False``: ratio 1), or a callable returning one
from the parameters (at ``init``) or the updates (at ``update``), as ``optax.masked`` takes
it. The booleans must be Python values, fixed when the step is traced."""


class TrustRatio(NamedTuple):
  r"""A layer's parameter norm, update norm and trust ratio.

  .. math::
    r_l = \frac{c \, \lVert w_l \rVert_2}{\lVert u_l \rVert_2 + \epsilon}

  Scalars, or vectors over the stacking axis for a stacked layer; in float32 at least
  (float64 for float64 leaves).

  Attributes:
    param_norm: :math:`\lVert w_l \rVert_2`.
    update_norm: :math:`\lVert u_l \rVert_2` of the updates entering the transformation.
    ratio: the factor applied to :math:`u_l` (1 where either norm is 0, after any
      ``min_norm`` and ``max_ratio``).

  Examples:
    >>> import jax.numpy as jnp
    >>> import layerwise_optax as lo
    >>> tx = lo.scale_by_trust_ratio(keep_stats=True)
    >>> params = {"w": jnp.array([3.0, 4.0])}
    >>> _, state = tx.update({"w": jnp.array([0.6, 0.8])}, tx.init(params), params)
    >>> param_norm, update_norm, ratio = state.trust_ratio_stats["w"]
    >>> print(f"{param_norm:.1f} / {update_norm:.1f} = {ratio:.1f}")
    5.0 / 1.0 = 5.0

  References:
    You et al., "Large Batch Training of Convolutional Networks", arXiv:1708.03888, 2017,
    eq. 6.
  """

  param_norm: jax.Array
  update_norm: jax.Array
  ratio: jax.Array


class TrustRatioStats(PackedStats, Mapping[str, TrustRatio]):
  r"""The per-layer statistics of :func:`scale_by_trust_ratio` with ``keep_stats=True``: a
  read-only mapping ``{layer name: TrustRatio(param_norm, update_norm, ratio)}``.

  Stored packed, like :class:`LayerStats`: the parameter norms of all layers in one vector,
  the update norms in a second and the ratios in a third (one entry per layer, one per slice
  of a stacked layer), so a step writes three small arrays, not three per layer.
  ``stats[name]`` slices them back to the layer's shape and dtype; ``dict(stats)`` gives the
  plain dict. As a pytree its leaves are the three vectors.

  Attributes:
    param_norms: :math:`\lVert w_l \rVert_2` of every layer, concatenated in layer order.
    update_norms: :math:`\lVert u_l \rVert_2` of every layer, in the same order.
    ratios: :math:`r_l` of every layer, in the same order.

  Examples:
    >>> import jax.numpy as jnp
    >>> import optax
    >>> import layerwise_optax as lo
    >>> tx = lo.scale_by_trust_ratio(stacked="blocks", keep_stats=True)
    >>> params = {"blocks": {"w": jnp.array([[3.0, 4.0], [1.0, 0.0]])}}
    >>> updates = {"blocks": {"w": jnp.array([[0.6, 0.8], [0.0, 0.5]])}}
    >>> _, state = tx.update(updates, tx.init(params), params)
    >>> stats = lo.trust_ratio_stats(state)  # or optax.tree_utils.tree_get
    >>> print(list(stats), stats.ratios)
    ['blocks/w'] [5. 2.]

  References:
    You et al., "Large Batch Training of Convolutional Networks", arXiv:1708.03888, 2017.
  """

  __slots__ = ()
  _fields: ClassVar[tuple[str, ...]] = ("param_norms", "update_norms", "ratios", "_layout")
  _record: ClassVar[Callable[..., Any]] = TrustRatio

  def __new__(cls, param_norms: Any, update_norms: Any, ratios: Any,
              _layout: Layout | None) -> TrustRatioStats:
    return super().__new__(cls, (param_norms, update_norms, ratios, _layout))

  @property
  def param_norms(self) -> jax.Array:
    return tuple.__getitem__(self, 0)

  @property
  def update_norms(self) -> jax.Array:
    return tuple.__getitem__(self, 1)

  @property
  def ratios(self) -> jax.Array:
    return tuple.__getitem__(self, 2)

  def __getitem__(self, name: str) -> TrustRatio:  # pyright: ignore[reportIncompatibleMethodOverride]
    return super().__getitem__(name)


class TrustRatioState(NamedTuple):
  r"""State of :func:`scale_by_trust_ratio` with ``keep_stats=True``.

  Attributes:
    trust_ratio_stats: the :class:`TrustRatioStats` mapping ``{layer name:
      TrustRatio(param_norm, update_norm, ratio)}`` of the last step (norms 0 and ratios 1
      before the first step); read it with :func:`trust_ratio_stats`.

  Examples:
    >>> import jax.numpy as jnp
    >>> import layerwise_optax as lo
    >>> state = lo.scale_by_trust_ratio(keep_stats=True).init({"w": jnp.ones(3)})
    >>> print(state.trust_ratio_stats["w"].ratio)
    1.0

  References:
    You et al., "Large Batch Training of Convolutional Networks", arXiv:1708.03888, 2017.
  """

  trust_ratio_stats: TrustRatioStats


def _check_scalar(name: str, value: ArrayLike, positive: bool) -> None:
  """Raises one ValueError for a concrete ``value`` that is not a finite scalar >= 0 (> 0)."""
  concrete = _factor.concrete_value(value)
  if concrete is None:  # traced (inject_hyperparams): not checkable here
    return
  bound_ok = concrete > 0 if positive else concrete >= 0
  if concrete.ndim != 0 or not np.isfinite(concrete) or not bound_ok:
    raise ValueError(f"{name} must be a finite scalar {'>' if positive else '>='} 0; "
                     f"got {value!r}.")


def _mask_flags(mask: MaskOrFn, tree: Any) -> list[bool]:
  """Whether each array leaf of ``tree`` (in flattening order) gets a trust ratio.

  A tree without arrays (such as the parameter stand-in of
  ``optax.tree_utils.tree_map_params``) has nothing to mask."""
  if mask is None or not jax.tree.leaves(tree):
    return [True] * len(jax.tree.leaves(tree))
  mask_tree = mask(tree) if callable(mask) else mask
  try:
    per_leaf = jax.tree.map(lambda m, sub: jax.tree.map(lambda _: bool(m), sub),
                            mask_tree, tree)
  except (ValueError, TypeError) as e:
    raise ValueError("the trust-ratio mask does not match the parameters: it must be a "
                     f"pytree of booleans whose structure is a prefix of theirs ({e})") from None
  return jax.tree.leaves(per_leaf)


def _masked_plan(tree: Any, mask: MaskOrFn, layers: LayersSpec,
                 stacked: StackedSpec) -> tuple[LayerPlan, list[int]]:
  """The layer plan of the leaves the mask keeps, and those leaves' indices.

  The plan is made on the whole tree (so ``layers`` and ``stacked`` see every array) and
  then restricted: a layer keeps its kept arrays, and a layer without any is dropped.
  """
  plan = make_plan(tree, layers, stacked)
  kept = [i for i, keep in enumerate(_mask_flags(mask, tree)) if keep]
  renumber = {old: new for new, old in enumerate(dict.fromkeys(plan.leaf_layer[i]
                                                               for i in kept))}
  restricted = LayerPlan(tuple(renumber[plan.leaf_layer[i]] for i in kept),
                         tuple(plan.names[old] for old in renumber),
                         tuple(plan.stacked[old] for old in renumber))
  return restricted, kept


def _layout(plan: LayerPlan, sums: Sequence[jax.Array | jax.ShapeDtypeStruct]) -> Layout:
  return tuple((name, tuple(s.shape), jnp.dtype(s.dtype).name)
               for name, s in zip(plan.names, sums))


def _split(flat: jax.Array, layout: Layout) -> list[jax.Array]:
  """A packed vector back into one array per layer, each in its layer's shape and dtype."""
  ends = np.cumsum([math.prod(shape) for _, shape, _ in layout])[:-1]
  return [part.reshape(shape).astype(dtype)
          for part, (_, shape, dtype) in zip(jnp.split(flat, ends), layout)]


class _Hyperparams(NamedTuple):
  min_norm: ArrayLike
  trust_coefficient: ArrayLike
  eps: ArrayLike
  max_ratio: ArrayLike | None


def _ratios(param_norms: jax.Array, update_norms: jax.Array, hp: _Hyperparams) -> jax.Array:
  """The trust ratios of packed norms, with optax's ``min_norm`` and zero-norm semantics."""
  dtype = param_norms.dtype

  def clipped(norm: jax.Array) -> jax.Array:  # optax.safe_norm: min_norm where norm <= it
    floor = jnp.asarray(hp.min_norm, dtype)
    return jnp.where(norm <= floor, floor, norm)

  w, u = clipped(param_norms), clipped(update_norms)
  zero = jnp.logical_or(w == 0, u == 0)
  denominator = jnp.where(zero, jnp.ones_like(u), u + jnp.asarray(hp.eps, dtype))
  ratio = jnp.asarray(hp.trust_coefficient, dtype) * w / denominator
  if hp.max_ratio is not None:
    ratio = jnp.minimum(ratio, jnp.asarray(hp.max_ratio, dtype))
  return jnp.where(zero, jnp.ones_like(ratio), ratio)


def _norms_and_ratios(param_leaves: Sequence[ArrayLike], update_leaves: Sequence[ArrayLike],
                      plan: LayerPlan, axis_name: Hashable | None,
                      hp: _Hyperparams) -> tuple[jax.Array, jax.Array, jax.Array, Layout]:
  """Packed parameter norms, update norms and ratios of every layer, from one pass."""
  n_layers = len(plan.names)
  if not n_layers:  # every array masked out
    empty = jnp.zeros((0,), jnp.float32)
    return empty, empty, empty, ()
  # Parameters and updates as one plan of 2 * n_layers layers: one call of the sums of
  # squares (and, with axis_name, one psum) for all the norms.
  both = LayerPlan(plan.leaf_layer + tuple(layer + n_layers for layer in plan.leaf_layer),
                   plan.names * 2, plan.stacked * 2)
  # The barrier keeps the norms' reads apart from the scaling's, as in scale_by_layerwise_lr:
  # merged with the scaling's upcast of a bfloat16 leaf, XLA:CPU writes a float32 copy.
  leaves = jax.lax.optimization_barrier(list(param_leaves) + list(update_leaves))
  sums = _factor.layer_sums_of_squares(leaves, both, axis_name)
  dtype = jnp.result_type(*sums)
  flat = jnp.concatenate([jnp.ravel(s).astype(dtype) for s in sums])
  param_norms, update_norms = jnp.split(_factor.norm_from_sum_of_squares(flat), 2)
  return (param_norms, update_norms, _ratios(param_norms, update_norms, hp),
          _layout(plan, sums[:n_layers]))


def _initial_stats(params: optax.Params, mask: MaskOrFn, layers: LayersSpec,
                   stacked: StackedSpec) -> TrustRatioStats:
  """Norms 0 and ratios 1 in the shapes and dtypes a step gives; abstract params work.

  A tree without arrays (the parameter stand-in of ``optax.tree_utils.tree_map_params``) has
  no layers: its statistics are empty, with an open layout."""
  if not jax.tree.leaves(params):
    empty = jnp.zeros((0,), jnp.float32)
    return TrustRatioStats(empty, empty, empty, None)
  plan, kept = _masked_plan(params, mask, layers, stacked)
  leaves = jax.tree.leaves(params)
  like = _factor.layer_sums_like([leaves[i] for i in kept], plan)
  layout = _layout(plan, like)
  dtype = jnp.result_type(*[s.dtype for s in like]) if like else jnp.dtype(jnp.float32)
  zeros = jnp.zeros((sum(math.prod(s.shape) for s in like),), dtype)
  return TrustRatioStats(zeros, zeros, jnp.ones_like(zeros), layout)


def scale_by_trust_ratio(min_norm: ArrayLike = 0.0, trust_coefficient: ArrayLike = 1.0,
                         eps: ArrayLike = 0.0, *, max_ratio: ArrayLike | None = None,
                         mask: MaskOrFn = True, layers: LayersSpec = "array",
                         stacked: StackedSpec = None, axis_name: Hashable | None = None,
                         keep_stats: bool = False) -> optax.GradientTransformation:
  r"""Scales each layer's updates by its trust ratio (LARS, LAMB).

  .. math::
    r_l = \min\left(\frac{c \, \lVert w_l \rVert_2}{\lVert u_l \rVert_2 + \epsilon},
    \; r_{\max}\right), \qquad u_l \leftarrow r_l u_l

  with :math:`r_l = 1` where either norm is 0 (a zero update stays zero; a layer with zero
  parameters, e.g. biases at initialisation, is not frozen). Each norm is first raised to
  ``min_norm`` where it is at most ``min_norm``, as in ``optax.scale_by_trust_ratio``.

  With the defaults (``layers="array"``, nothing stacked, ``max_ratio=None``, no mask) it
  equals ``optax.scale_by_trust_ratio(min_norm, trust_coefficient, eps)``; with a mask it
  equals that transformation inside ``optax.masked(..., mask)``. One ratio per array is the
  reference implementations' granularity (LARS in NVIDIA's Caffe, LAMB in TensorFlow), and it
  keeps a zero-initialised bias from taking its kernel's ratio; ``layers="module"`` gives one
  ratio per module instead.

  Args:
    min_norm: the floor of both norms (0 by default).
    trust_coefficient: :math:`c`, the ratio's multiplier (LARS's :math:`\eta`).
    eps: :math:`\epsilon`, added to the update norm.
    max_ratio: :math:`r_{\max}`, an upper clip of the ratio (LAMB's :math:`\phi`); ``None``
      (default) for none. It does not touch the ratio 1 of a zero norm.
    mask: the arrays that get a ratio: a pytree of booleans (a prefix of the parameters'
      structure; ``False`` keeps ratio 1) or a callable returning one, as optax.lars's
      ``trust_ratio_mask``; masked-out arrays are left out of their layer's norms. ``True``
      (default) or ``None``: every array.
    layers: what forms a layer, as in :func:`scale_by_layerwise_lr`; ``"array"`` by default.
    stacked: layers whose arrays stack several layers along their leading axis (``nn.scan``):
      each slice gets its own ratio, as in :func:`scale_by_layerwise_lr`.
    axis_name: inside ``shard_map``/``pmap`` with the arrays split over a mapped axis, the
      axis name (or names) to ``psum`` the sums of squares over, so each norm is the whole
      layer's. Not needed under ``jax.jit`` with sharded arrays.
    keep_stats: keep the last step's ``{layer name: TrustRatio(param_norm, update_norm,
      ratio)}`` in the state (:class:`TrustRatioState`; read it with
      :func:`trust_ratio_stats`). Off by default: the state
      is then ``optax.EmptyState()``.

  Returns:
    An ``optax.GradientTransformation``; ``update`` needs ``params``. Numeric arguments may
    be traced values (``optax.inject_hyperparams``).

  Raises:
    ValueError: at construction for a negative ``min_norm`` or ``eps``, a
      ``trust_coefficient`` or ``max_ratio`` that is not positive, a non-finite or
      non-scalar value among them, or a bad ``layers``/``stacked``.

  Examples:
    >>> import jax.numpy as jnp
    >>> import layerwise_optax as lo
    >>> params = {"blocks": {"kernel": jnp.array([[3.0, 4.0], [0.3, 0.4]])},  # 2 blocks
    ...           "head": {"kernel": jnp.array([1.0, 0.0]), "bias": jnp.array([2.0])}}
    >>> updates = {"blocks": {"kernel": jnp.array([[0.6, 0.8], [0.6, 0.8]])},
    ...            "head": {"kernel": jnp.array([0.3, 0.4]), "bias": jnp.array([0.1])}}
    >>> no_bias = {"blocks": True, "head": {"kernel": True, "bias": False}}
    >>> tx = lo.scale_by_trust_ratio(stacked="blocks", mask=no_bias)
    >>> scaled, _ = tx.update(updates, tx.init(params), params)
    >>> print(scaled["blocks"]["kernel"])  # ratios 5 / 1 and 0.5 / 1
    [[3.  4. ]
     [0.3 0.4]]
    >>> print(scaled["head"]["kernel"], scaled["head"]["bias"])  # ratio 1 / 0.5; masked
    [0.6 0.8] [0.1]

  References:
    You, Gitman, Ginsburg, "Large Batch Training of Convolutional Networks",
    arXiv:1708.03888, 2017, eq. 6. You et al., "Large Batch Optimization for Deep Learning:
    Training BERT in 76 minutes", ICLR 2020, arXiv:1904.00962, algorithms 1-2.
  """
  validate_layers(layers, stacked)
  _check_scalar("min_norm", min_norm, positive=False)
  _check_scalar("trust_coefficient", trust_coefficient, positive=True)
  _check_scalar("eps", eps, positive=False)
  if max_ratio is not None:
    _check_scalar("max_ratio", max_ratio, positive=True)
  hp = _Hyperparams(min_norm, trust_coefficient, eps, max_ratio)

  def init_fn(params: optax.Params) -> optax.OptState:
    if keep_stats:
      return TrustRatioState(_initial_stats(params, mask, layers, stacked))
    if jax.tree.leaves(params):  # not tree_map_params' stand-in, which has no layers
      _masked_plan(params, mask, layers, stacked)  # raises early for a bad grouping or mask
    return optax.EmptyState()

  def update_fn(updates: optax.Updates, state: optax.OptState,
                params: optax.Params | None = None) -> tuple[optax.Updates, optax.OptState]:
    if params is None:
      raise ValueError("scale_by_trust_ratio needs the parameters: call "
                       "update(updates, state, params).")
    leaves, treedef = jax.tree.flatten(updates)
    try:
      param_leaves = treedef.flatten_up_to(params)
    except (ValueError, TypeError) as e:
      raise ValueError(f"params do not have the updates' tree structure ({e}).") from None
    plan, kept = _masked_plan(updates, mask, layers, stacked)
    param_norms, update_norms, ratios, layout = _norms_and_ratios(
        [param_leaves[i] for i in kept], [leaves[i] for i in kept], plan, axis_name, hp)
    scaled = _factor.scale_leaves([leaves[i] for i in kept], plan, _split(ratios, layout))
    for i, leaf in zip(kept, scaled):
      leaves[i] = leaf
    if keep_stats:
      previous = cast(TrustRatioState, state).trust_ratio_stats
      names = [name for name, _, _ in layout]
      if names != list(previous):
        raise ValueError(f"the layers of the updates {names} differ from those of the "
                         f"parameters at init {list(previous)}.")
      dtype = previous.ratios.dtype
      state = TrustRatioState(TrustRatioStats(
          param_norms.astype(dtype), update_norms.astype(dtype), ratios.astype(dtype),
          previous._layout or layout))
    return jax.tree.unflatten(treedef, leaves), state

  return optax.GradientTransformation(init_fn, update_fn)


def trust_ratio_stats(state: optax.OptState) -> TrustRatioStats:
  r"""The :class:`TrustRatioStats` a ``keep_stats=True`` trust ratio keeps, found anywhere in
  the optimizer's state (chained, or wrapped by ``optax.inject_hyperparams``,
  ``optax.MultiSteps`` and the like).

  Args:
    state: an optimizer state that holds one set of trust-ratio statistics.

  Returns:
    The last step's ``{layer name: TrustRatio(param_norm, update_norm, ratio)}``: norms 0
    and ratios 1 before the first step.

  Raises:
    ValueError: the state holds no trust-ratio statistics (built without
      ``keep_stats=True``) or more than one set.

  Examples:
    >>> import jax.numpy as jnp
    >>> import optax
    >>> import layerwise_optax as lo
    >>> tx = optax.inject_hyperparams(lo.lamb)(learning_rate=0.1, keep_stats=True)
    >>> params = {"w": jnp.array([3.0, 4.0])}
    >>> _, state = tx.update({"w": jnp.array([0.1, 0.2])}, tx.init(params), params)
    >>> stats = lo.trust_ratio_stats(state)  # state.inner_state[2].trust_ratio_stats
    >>> print(f"ratio {stats['w'].ratio:.3f}")
    ratio 3.536

  References:
    You et al., "Large Batch Training of Convolutional Networks", arXiv:1708.03888, 2017.
  """
  return find_stats(state, TrustRatioStats, "trust-ratio statistics", "trust_ratio_stats")
