"""The per-layer statistics a ``keep_stats=True`` state holds, and how to read them.

:class:`LayerStats` is a read-only mapping ``{layer name: LayerFactor(norm, factor)}`` stored
as two vectors. It is a pytree whose leaves are the two vectors and whose static part is the
layout (each layer's name, shape and dtype), and a named tuple ``(norms, factors, layout)``
for serialisers that read named tuples by their fields (``flax.serialization``), so a state
that holds it goes through ``flax.serialization``, orbax, pickle and
``optax.tree_utils.tree_map_params`` like any optax state.

References:
  Singh, De, Zhang, Goldstein, Taylor. "Layer-Specific Adaptive Learning Rates for Deep
  Networks." ICMLA 2015. arXiv:1510.04609.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, ClassVar, NamedTuple, TypeAlias, TypeVar, cast

import jax
import jax.numpy as jnp
import optax

from layerwise_optax import _factor
from layerwise_optax._grouping import LayerPlan, LayersSpec, StackedSpec, make_plan

Layout: TypeAlias = tuple[tuple[str, tuple[int, ...], str], ...]
"""Each layer's name, shape (``()``, or ``(n,)`` for a layer stacked ``n`` times) and dtype
name, in packing order."""


class LayerFactor(NamedTuple):
  r"""A layer's gradient norm and its learning-rate factor (eq. 9).

  .. math::
    f_l = 1 + \log\left(1 + \frac{1}{\lVert g_l \rVert_2 + \epsilon}\right)

  Both are arrays: scalars, or vectors over the stacking axis for a stacked layer. A layer
  whose gradient is all zero has norm 0 and factor 1; one with a NaN has norm NaN and
  factor 1.

  Attributes:
    norm: :math:`\lVert g_l \rVert_2`, in float32 at least (float64 for float64 leaves).
    factor: :math:`f_l`, in the norm's dtype.

  Examples:
    >>> import jax.numpy as jnp
    >>> import layerwise_optax as lo
    >>> stats = lo.layer_factors({"w": jnp.array([3.0, 4.0])})["w"]
    >>> print(f"norm {stats.norm:.4f}, factor {stats.factor:.4f}")
    norm 5.0000, factor 1.1823

  References:
    Singh et al., "Layer-Specific Adaptive Learning Rates for Deep Networks", ICMLA 2015,
    arXiv:1510.04609, eq. 9.
  """

  norm: jax.Array
  factor: jax.Array


class _OpenLayout:
  """The pytree aux data of statistics initialised from a tree without arrays.

  ``optax.tree_utils.tree_map_params`` initialises the optimizer with a parameter stand-in
  that has no arrays, matches the state against that structure and builds its result in it.
  Such statistics have no layers; their layout is open: equal to the first layout it is
  compared with, which it then takes, so the result keeps the real statistics' layout.
  """

  __slots__ = ("layout",)

  def __init__(self) -> None:
    self.layout: Layout | None = None

  def __eq__(self, other: object) -> bool:
    other_layout = other.layout if isinstance(other, _OpenLayout) else other
    if other_layout is not None and not isinstance(other_layout, tuple):
      return NotImplemented
    if self.layout is None:
      self.layout = other_layout
    elif isinstance(other, _OpenLayout) and other.layout is None:
      other.layout = self.layout
    return self.layout == other_layout

  def __ne__(self, other: object) -> bool:
    equal = self.__eq__(other)
    return equal if equal is NotImplemented else not equal

  __hash__ = object.__hash__


@functools.lru_cache(maxsize=256)
def _offsets(layout: Layout) -> dict[str, tuple[int, tuple[int, ...], str]]:
  """Each layer's start in the vectors, shape and dtype name, by name."""
  where, start = {}, 0
  for name, shape, dtype in layout:
    where[name] = (start, shape, dtype)
    start += math.prod(shape)
  return where


class PackedStats(tuple):
  """Per-layer statistics packed as vectors: a tuple ``(*vectors, layout)`` read as a mapping
  ``{layer name: record}``, where a record holds each vector's entries of that layer.

  A subclass names its fields (``_fields``: the vectors', then ``"_layout"``) and its record
  type (``_record``, a named tuple with one field per vector); it is then a pytree whose
  leaves are the vectors and whose static part is the layout, and a named tuple to
  ``flax.serialization``. ``_layout`` None: no layers, open (see :class:`_OpenLayout`); the
  vectors may be any pytree values (``tree_map_params`` puts shardings there).
  """

  __slots__ = ()
  # The named-tuple protocol flax.serialization reads (its restore calls ``cls(**fields)``).
  _fields: ClassVar[tuple[str, ...]] = ("_layout",)
  _record: ClassVar[Callable[..., Any]] = tuple
  # Built by the optimizers: the documented signature has no internal arguments.
  __signature__: ClassVar[inspect.Signature] = inspect.Signature()

  def __init_subclass__(cls, **kwargs: Any) -> None:
    super().__init_subclass__(**kwargs)
    keys = tuple(jax.tree_util.GetAttrKey(f) for f in cls._fields[:-1])

    def flatten_with_keys(stats: PackedStats) -> tuple[tuple[tuple[Any, Any], ...], Any]:
      layout = stats._layout
      return tuple(zip(keys, stats._vectors)), _OpenLayout() if layout is None else layout

    def flatten(stats: PackedStats) -> tuple[tuple[Any, ...], Any]:
      children, layout = flatten_with_keys(stats)
      return tuple(child for _, child in children), layout

    def unflatten(layout: Layout | _OpenLayout, children: Iterable[Any]) -> PackedStats:
      open_layout = isinstance(layout, _OpenLayout)
      return cast(Any, cls)(*children, layout.layout if open_layout else layout)

    jax.tree_util.register_pytree_with_keys(cls, flatten_with_keys, unflatten, flatten)

  @property
  def _vectors(self) -> tuple[Any, ...]:
    return tuple(tuple.__getitem__(self, i) for i in range(len(self._fields) - 1))

  @property
  def _layout(self) -> Layout | None:
    return tuple.__getitem__(self, len(self._fields) - 1)

  @property
  def _entries(self) -> Layout:
    return self._layout or ()

  def __getnewargs__(self) -> tuple[Any, ...]:  # pickle and copy: the fields
    return tuple(tuple.__getitem__(self, i) for i in range(len(self._fields)))

  # A mapping by layer name, not a sequence: the fields are read by attribute.
  def __getitem__(self, name: str) -> Any:  # pyright: ignore[reportIncompatibleMethodOverride]
    start, shape, dtype = _offsets(self._entries)[name]
    size = math.prod(shape)
    return self._record(*(v[start:start + size].reshape(shape).astype(dtype)
                          for v in self._vectors))

  def __iter__(self) -> Iterator[str]:
    return (name for name, _, _ in self._entries)

  def __len__(self) -> int:
    return len(self._entries)

  def __contains__(self, name: object) -> bool:
    return name in _offsets(self._entries)

  # Compared and hashed as an object, not as a tuple of arrays.
  def __eq__(self, other: object) -> bool:
    return self is other

  def __ne__(self, other: object) -> bool:
    return self is not other

  def __hash__(self) -> int:
    return object.__hash__(self)

  def __repr__(self) -> str:
    return f"{type(self).__name__}({dict((n, self[n]) for n in self)!r})"


class LayerStats(PackedStats, Mapping[str, LayerFactor]):
  r"""The per-layer statistics a ``keep_stats=True`` state holds: a read-only mapping
  ``{layer name: LayerFactor(norm, factor)}``, like the dict :func:`layer_factors` returns.

  Stored packed: the norms of all layers in one vector and the factors in another (one
  entry per layer, one per slice of a stacked layer), so a step writes two small arrays
  instead of two per layer. ``stats[name]`` slices them back to the layer's shape and dtype;
  ``dict(stats)`` gives the plain dict. As a pytree its leaves are the two vectors,
  ``norms`` and ``factors``; the layer names, shapes and dtypes are its static part. Read it
  from any state with :func:`layer_stats`; the optimizers build it, not the user.

  Attributes:
    norms: :math:`\lVert g_l \rVert_2` of every layer, concatenated in layer order.
    factors: :math:`f_l` of every layer, in the same order.

  Examples:
    >>> import jax.numpy as jnp
    >>> import layerwise_optax as lo
    >>> tx = lo.scale_by_layerwise_lr(stacked="blocks", keep_stats=True)
    >>> params = {"blocks": {"w": jnp.ones((2, 3))}, "head": {"w": jnp.ones(2)}}
    >>> state = tx.init(params)
    >>> grads = {"blocks": {"w": jnp.array([[3.0, 4.0, 0.0], [0.0, 0.0, 0.0]])},
    ...          "head": {"w": jnp.array([0.6, 0.8])}}
    >>> _, state = tx.update(grads, state)
    >>> stats = lo.layer_stats(state)
    >>> print(stats.norms, list(stats))
    [5. 0. 1.] ['blocks', 'head']
    >>> print(stats["blocks"].factor)
    [1.1823215 1.       ]

  References:
    Singh et al., "Layer-Specific Adaptive Learning Rates for Deep Networks", ICMLA 2015,
    arXiv:1510.04609, eq. 9.
  """

  __slots__ = ()
  _fields: ClassVar[tuple[str, ...]] = ("norms", "factors", "_layout")
  _record: ClassVar[Callable[..., Any]] = LayerFactor

  def __new__(cls, norms: Any, factors: Any, _layout: Layout | None) -> LayerStats:
    return super().__new__(cls, (norms, factors, _layout))

  @property
  def norms(self) -> jax.Array:
    return tuple.__getitem__(self, 0)

  @property
  def factors(self) -> jax.Array:
    return tuple.__getitem__(self, 1)

  def __getitem__(self, name: str) -> LayerFactor:  # pyright: ignore[reportIncompatibleMethodOverride]
    return super().__getitem__(name)


def _layout_of(like: Sequence[jax.ShapeDtypeStruct | jax.Array],
               names: Sequence[str]) -> tuple[jnp.dtype, Layout]:
  """The packing dtype (the widest of the layers') and each layer's name, shape and dtype."""
  dtype = jnp.result_type(*[x.dtype for x in like]) if like else jnp.dtype(jnp.float32)
  return dtype, tuple((n, tuple(int(d) for d in x.shape), jnp.dtype(x.dtype).name)
                      for n, x in zip(names, like))


def _flat(values: Sequence[jax.Array], dtype: jnp.dtype) -> jax.Array:
  """The layers' values as one vector, in layer order."""
  if not values:
    return jnp.zeros((0,), dtype)
  return jnp.concatenate([jnp.ravel(v).astype(dtype) for v in values])


def packed_stats(plan: LayerPlan, sums: Sequence[jax.Array],
                 factors: Sequence[jax.Array]) -> LayerStats:
  """The statistics of one step, from each layer's sum of squares and factor."""
  dtype, layout = _layout_of(sums, plan.names)
  norms = _factor.norm_from_sum_of_squares(_flat(sums, dtype))  # one vector operation
  return LayerStats(norms, _flat(factors, dtype), layout)


def initial_stats(params: optax.Params, layers: LayersSpec, stacked: StackedSpec) -> LayerStats:
  """Norms 0 and factors 1 of the shapes and dtypes a step gives; abstract params work.

  A tree without arrays (such as the parameter stand-in of
  ``optax.tree_utils.tree_map_params``) has no layers: its statistics are empty, with an open
  layout.
  """
  if not jax.tree.leaves(params):
    return LayerStats(jnp.zeros((0,), jnp.float32), jnp.ones((0,), jnp.float32), None)
  plan = make_plan(params, layers, stacked)
  like = _factor.layer_sums_like(jax.tree.leaves(params), plan)
  dtype, layout = _layout_of(like, plan.names)
  size = sum(math.prod(s.shape) for s in like)
  return LayerStats(jnp.zeros((size,), dtype), jnp.ones((size,), dtype), layout)


def like(stats: LayerStats, previous: LayerStats) -> LayerStats:
  """``stats`` in ``previous``'s layout and dtype, so the state keeps its types from step to
  step."""
  if list(stats) != list(previous):
    raise ValueError(f"the layers of the updates {sorted(stats)} differ from those of the "
                     f"parameters at init {sorted(previous)}.")
  dtype = previous.norms.dtype
  return LayerStats(stats.norms.astype(dtype), stats.factors.astype(dtype),
                    previous._layout or stats._layout)


def layer_stats(state: optax.OptState) -> LayerStats:
  r"""The :class:`LayerStats` a ``keep_stats=True`` optimizer keeps, found anywhere in its
  state (chained, or wrapped by ``optax.inject_hyperparams``, ``optax.MultiSteps`` and the
  like).

  Args:
    state: an optimizer state that holds one set of statistics.

  Returns:
    The last step's ``{layer name: LayerFactor(norm, factor)}`` (eq. 9): norms 0 and factors
    1 before the first step.

  Raises:
    ValueError: the state holds no statistics (the optimizer was built without
      ``keep_stats=True``) or more than one set.

  Examples:
    >>> import jax.numpy as jnp
    >>> import optax
    >>> import layerwise_optax as lo
    >>> tx = optax.inject_hyperparams(lo.sgd)(learning_rate=0.1, keep_stats=True)
    >>> params = {"w": jnp.zeros(2)}
    >>> state = tx.init(params)
    >>> _, state = tx.update({"w": jnp.array([3.0, 4.0])}, state, params)
    >>> stats = lo.layer_stats(state)  # state.inner_state[1].layer_stats
    >>> print(f"norm {stats['w'].norm:.4f}, factor {stats['w'].factor:.4f}")
    norm 5.0000, factor 1.1823

  References:
    Singh et al., "Layer-Specific Adaptive Learning Rates for Deep Networks", ICMLA 2015,
    arXiv:1510.04609, eq. 9.
  """
  return find_stats(state, LayerStats, "layer statistics", "layer_stats")


StatsT = TypeVar("StatsT", bound=PackedStats)


def find_stats(state: optax.OptState, kind: type[StatsT], what: str, field: str) -> StatsT:
  """The one ``kind`` of statistics in ``state`` (kept in a state field named ``field``)."""
  found = [x for x in jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, kind))
           if isinstance(x, kind)]
  if not found:
    raise ValueError(f"the optimizer state holds no {what}: build the optimizer with "
                     "keep_stats=True.")
  if len(found) > 1:
    raise ValueError(f"the optimizer state holds {len(found)} sets of {what}; read each "
                     f"with optax.tree_utils.tree_get_all_with_path(state, '{field}').")
  return found[0]
