"""Which arrays of a parameter pytree form one layer.

The factor of Singh et al. (2015) is computed per layer. A *layer plan* maps every
array leaf of a pytree to one layer and gives each layer a readable name. Plans are
computed at trace time from the tree's structure alone, so they cost nothing at run time
and never cause a recompile.

Groupings (the ``layers`` argument):

* ``"module"`` (default): the arrays of one innermost container form a layer, e.g. a
  Flax ``{'Dense_0': {'kernel': k, 'bias': b}}`` is one layer ``Dense_0``, the paper's
  notion of a layer. An array directly under the root (a bare list or dict of arrays) has
  no module around it and is a layer by itself.
* ``"array"``: every array is its own layer. This is Caffe's per-blob granularity (its
  solver loops over parameter blobs, so a layer's weights and biases get separate factors)
  and that of optax's ``scale_by_trust_ratio``.
* a pytree of labels (strings or ints) whose structure is a prefix of the parameters': arrays
  with equal labels form one layer, as in ``optax.partition``.
* a callable ``(path, leaf) -> label``.

``stacked`` marks layers whose arrays carry a leading axis of stacked layers (Flax
``nn.scan``/``nnx.scan``): each slice along that axis is then a layer of its own. A prefix
that matches no layer name (a typo such as ``"block"`` for ``"blocks"``) is an error naming
the layers there are; a predicate is not checked.

``flax.nnx`` Variables flatten with a trailing ``GetAttrKey('value')``; it is dropped, so a
tree of Variables (``nnx.Optimizer`` at init) and the same tree of plain arrays (at update)
give the same plan. ``None`` leaves and ``optax.MaskedNode`` are empty subtrees and are
skipped.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import Any, Literal, NamedTuple, TypeAlias

import jax

KeyPath: TypeAlias = tuple[Any, ...]
"""A leaf's path in its pytree: a tuple of JAX key entries (``DictKey``, ``SequenceKey``...)."""

LabelTree: TypeAlias = Any
"""A pytree of layer labels (``str`` or ``int`` leaves); its structure is a prefix of the
parameters' (as in ``optax.partition``). Any pytree container may hold the labels."""

LayersSpec: TypeAlias = Literal["module", "array"] | LabelTree | Callable[[KeyPath, Any], Hashable]
"""What forms a layer: ``"module"``, ``"array"``, a :data:`LabelTree`, or a callable
``(path, leaf) -> label`` (the leaf may be an array, a ``jax.ShapeDtypeStruct`` or a Python
scalar)."""

StackedSpec: TypeAlias = None | str | Sequence[str] | Callable[[str], bool]
"""Which layers are stacked: ``None``, a layer-name prefix, a sequence of them, or a predicate
on the layer name."""

_GROUPINGS = ("module", "array")
_NAMES_SHOWN = 12


class LayerPlan(NamedTuple):
  r"""The static assignment of the array leaves of one tree structure to layers.

  Leaf ``i`` (in ``jax.tree.leaves`` order) belongs to layer ``leaf_layer[i]``; the factor
  of eq. 9, :math:`f_l = 1 + \log(1 + 1/\lVert g_l \rVert_2)`, is computed once per layer
  (once per slice of the leading axis for a stacked layer). Built by :func:`make_plan`.

  Attributes:
    leaf_layer: the layer index of each leaf, in flattening order.
    names: the readable name of each layer ('/'-joined key path, e.g. ``'params/Dense_0'``).
    stacked: whether each layer is split along its leading (stacking) axis.

  Examples:
    >>> import jax.numpy as jnp
    >>> import layerwise_optax as lo
    >>> plan = lo.make_plan({"enc": {"w": jnp.ones(2)}, "dec": {"w": jnp.ones(3)}})
    >>> plan.names, plan.leaf_layer, plan.stacked
    (('dec', 'enc'), (0, 1), (False, False))

  References:
    Singh et al., "Layer-Specific Adaptive Learning Rates for Deep Networks", ICMLA 2015,
    arXiv:1510.04609, eq. 9.
  """

  leaf_layer: tuple[int, ...]
  names: tuple[str, ...]
  stacked: tuple[bool, ...]


def _key_name(key: Any) -> str:
  for attr in ("key", "idx", "name"):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def _normalise(path: KeyPath) -> KeyPath:
  """Drops the trailing ``.value`` of a flax.nnx Variable."""
  if path and isinstance(path[-1], jax.tree_util.GetAttrKey) and path[-1].name == "value":
    return path[:-1]
  return path


def path_name(path: KeyPath) -> str:
  """'Dense_0/kernel' for a path; '<root>' for the empty path."""
  return "/".join(_key_name(k) for k in path) or "<root>"


def validate_layers(layers: LayersSpec, stacked: StackedSpec = None) -> None:
  """Raises ValueError for an unknown grouping name or a bad ``stacked`` at construction."""
  if isinstance(layers, str) and layers not in _GROUPINGS:
    raise ValueError(
        f"layers={layers!r} is not a known grouping; use one of {_GROUPINGS}, a pytree "
        "of labels matching the parameters, or a callable (path, leaf) -> label.")
  if layers is None:
    raise ValueError("layers=None is not a grouping; use 'module' (the default) or 'array'.")
  _stacked_prefixes(stacked)


def _stacked_prefixes(stacked: StackedSpec) -> tuple[str, ...]:
  """The layer-name prefixes of a ``stacked`` spec (none for ``None`` or a predicate)."""
  if stacked is None or callable(stacked):
    return ()
  prefixes = (stacked,) if isinstance(stacked, str) else tuple(stacked)
  for p in prefixes:
    if not isinstance(p, str):
      raise ValueError(f"stacked must hold layer-name prefixes (str); got {p!r}.")
  return prefixes


def _matches(name: str, prefix: str) -> bool:
  return name == prefix or name.startswith(prefix + "/")


def _stacked_flags(names: tuple[str, ...], stacked: StackedSpec) -> tuple[bool, ...]:
  if callable(stacked):
    return tuple(bool(stacked(n)) for n in names)
  prefixes = _stacked_prefixes(stacked)
  if names:  # an empty (e.g. fully masked) tree has no layer to match
    for p in prefixes:
      if not any(_matches(n, p) for n in names):
        shown = ", ".join(repr(n) for n in names[:_NAMES_SHOWN])
        more = f", ... ({len(names) - _NAMES_SHOWN} more)" if len(names) > _NAMES_SHOWN else ""
        raise ValueError(f"stacked prefix {p!r} matches no layer; the layers are {shown}{more}.")
  return tuple(any(_matches(n, p) for p in prefixes) for n in names)


def _labels_per_leaf(labels: LabelTree, tree: Any) -> list[Hashable]:
  try:
    per_leaf = jax.tree.map(lambda lab, sub: jax.tree.map(lambda _: lab, sub), labels, tree)
  except (ValueError, TypeError) as e:
    raise ValueError(
        "layers= label tree does not match the parameters: its structure must be a "
        f"prefix of theirs ({e})") from None
  leaves = jax.tree.leaves(per_leaf)
  if len(leaves) != len(jax.tree.leaves(tree)):
    raise ValueError("layers= label tree has None or container labels; use str or int.")
  return leaves


def make_plan(tree: Any, layers: LayersSpec = "module", stacked: StackedSpec = None) -> LayerPlan:
  r"""Assigns each array leaf of ``tree`` to a layer (trace-time Python only).

  Leaves with the same key form one layer :math:`l`, whose gradient norm
  :math:`\lVert g_l \rVert_2 = (\sum_{i \in l} \lVert g_i \rVert_2^2)^{1/2}` sets the factor of
  eq. 9. The key is the path of the innermost container (``"module"``), the leaf's own path
  (``"array"``), its label in a label tree, or ``layers(path, leaf)``. A stacked layer is
  split along its leading axis, each slice a layer of its own.

  Args:
    tree: a pytree of arrays (gradients or parameters; ``jax.ShapeDtypeStruct`` leaves work,
      ``None`` and ``optax.MaskedNode`` are skipped).
    layers: the grouping: ``"module"``, ``"array"``, a pytree of labels whose structure is a
      prefix of ``tree``'s, or a callable ``(path, leaf) -> label``.
    stacked: layers whose arrays stack several layers along their leading axis: a layer-name
      prefix, a sequence of them, or a predicate on the layer name.

  Returns:
    The :class:`LayerPlan` of ``tree``.

  Raises:
    ValueError: for a label tree that does not fit ``tree``, a ``stacked`` prefix that matches
      no layer, or a stacked layer whose arrays do not share their leading axis.

  Examples:
    >>> import jax.numpy as jnp
    >>> import layerwise_optax as lo
    >>> params = {"blocks": {"kernel": jnp.ones((4, 3, 3)), "bias": jnp.zeros((4, 3))},
    ...           "head": {"kernel": jnp.ones((3, 1))}}
    >>> lo.make_plan(params, stacked="blocks")
    LayerPlan(leaf_layer=(0, 0, 1), names=('blocks', 'head'), stacked=(True, False))
    >>> lo.make_plan(params, layers="array").names
    ('blocks/bias', 'blocks/kernel', 'head/kernel')
    >>> lo.make_plan(params, stacked="block")
    Traceback (most recent call last):
    ...
    ValueError: stacked prefix 'block' matches no layer; the layers are 'blocks', 'head'.

  References:
    Singh et al., "Layer-Specific Adaptive Learning Rates for Deep Networks", ICMLA 2015,
    arXiv:1510.04609, section 3 (one learning rate per layer).
  """
  validate_layers(layers, stacked)
  paths_leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  paths = [_normalise(p) for p, _ in paths_leaves]
  if layers == "module":
    keys = [path_name(p[:-1] if len(p) > 1 else p) for p in paths]
  elif layers == "array":
    keys = [path_name(p) for p in paths]
  elif callable(layers):
    keys = [str(layers(p, leaf)) for p, (_, leaf) in zip(paths, paths_leaves)]
  else:
    keys = [str(lab) for lab in _labels_per_leaf(layers, tree)]

  index: dict[str, int] = {}
  leaf_layer = tuple(index.setdefault(k, len(index)) for k in keys)
  names = tuple(index)
  stacked_flags = _stacked_flags(names, stacked)

  # Every array of a stacked layer must share the same leading axis.
  lead: dict[int, int] = {}
  for layer, (path, leaf) in zip(leaf_layer, paths_leaves):
    if not stacked_flags[layer]:
      continue
    shape = getattr(leaf, "shape", ())
    if len(shape) == 0 or lead.setdefault(layer, shape[0]) != shape[0]:
      raise ValueError(
          f"stacked layer {names[layer]!r}: array {path_name(path)} with shape {shape} "
          "does not share the layer's leading (stacking) axis.")
  return LayerPlan(leaf_layer, names, stacked_flags)
