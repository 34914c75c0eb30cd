"""Which arrays of a parameter pytree form one layer.

The factor of Singh et al. (2015) is computed per layer. A *layer plan* maps every
array leaf of a pytree to one layer and gives each layer a readable name. Plans are
computed at trace time from the tree's structure alone, so they cost nothing at run time
and never cause a recompile.

Groupings (the ``layers`` argument):

* ``"module"`` (default): the arrays of one innermost container form a layer, e.g. a
  Flax ``{'Dense_0': {'kernel': k, 'bias': b}}`` is one layer ``Dense_0``. This is the
  design card's "leaf-subtree" and the paper's notion of a layer. An array directly under
  the root (a bare list or dict of arrays) has no module around it and is a layer by itself.
* ``"array"``: every array is its own layer. This is Caffe's per-blob granularity (its
  solver loops over parameter blobs, so a layer's weights and biases get separate factors)
  and that of optax's ``scale_by_trust_ratio``.
* a pytree of labels (strings or ints) whose structure is a prefix of the parameters': arrays
  with equal labels form one layer, as in ``optax.partition``.
* a callable ``(path, leaf) -> label``.

``stacked`` marks layers whose arrays carry a leading axis of stacked layers (Flax
``nn.scan``/``nnx.scan``): each slice along that axis is then a layer of its own.

``flax.nnx`` Variables flatten with a trailing ``GetAttrKey('value')``; it is dropped, so a
tree of Variables (``nnx.Optimizer`` at init) and the same tree of plain arrays (at update)
give the same plan. ``None`` leaves and ``optax.MaskedNode`` are empty subtrees and are
skipped.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import Any, NamedTuple

import jax

KeyPath = tuple[Any, ...]
LayersSpec = Any  # "module" | "array" | pytree of labels | Callable[[KeyPath, Any], Hashable]
StackedSpec = None | str | Sequence[str] | Callable[[str], bool]

_GROUPINGS = ("module", "array")


class LayerPlan(NamedTuple):
  """Static assignment of the leaves of one tree structure to layers."""

  leaf_layer: tuple[int, ...]  # layer index of each leaf, in flattening order
  names: tuple[str, ...]  # readable name of each layer
  stacked: tuple[bool, ...]  # whether each layer is split along its leading axis


def _key_name(key: Any) -> str:
  for attr in ("key", "idx", "name"):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def _normalise(path: KeyPath) -> KeyPath:
  """Drops the trailing ``.value`` of a flax.nnx Variable."""
  last = path[-1] if path else None
  if isinstance(last, jax.tree_util.GetAttrKey) and last.name == "value":
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
  _stacked_predicate(stacked)


def _stacked_predicate(stacked: StackedSpec) -> Callable[[str], bool]:
  if stacked is None:
    return lambda name: False
  if callable(stacked):
    return stacked
  prefixes = (stacked,) if isinstance(stacked, str) else tuple(stacked)
  for p in prefixes:
    if not isinstance(p, str):
      raise ValueError(f"stacked must hold layer-name prefixes (str); got {p!r}.")
  return lambda name: any(name == p or name.startswith(p + "/") for p in prefixes)


def _labels_per_leaf(labels: Any, tree: Any) -> list[Hashable]:
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
  """Assigns each array leaf of ``tree`` to a layer (trace-time Python only)."""
  validate_layers(layers)
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
  is_stacked = _stacked_predicate(stacked)
  stacked_flags = tuple(bool(is_stacked(n)) for n in names)

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
