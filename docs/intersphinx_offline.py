"""Sphinx extension: links from the API reference to the Python, NumPy, JAX and optax docs,
built without the network.

``sphinx.ext.intersphinx`` resolves a name such as ``optax.GradientTransformation`` through
the other project's ``objects.inv``, which it normally downloads; the docs build offline. So
this extension writes, at the start of each build, one small inventory per project (into the
doctree folder) from :data:`PROJECTS`, the names these docs use with their pages on each
project's site, and points ``intersphinx_mapping`` at those files; the links still go to the
projects' sites. It also

* reads a name that reaches a signature through a private module as its public name
  (``optax._src.base.GradientTransformation`` is ``optax.GradientTransformation``,
  ``jax.jaxlib._jax.Array`` is ``jax.Array``) and the library's bare ``ArrayLike`` and
  ``DTypeLike`` as ``jax.typing``'s;
* warns (an error under ``-W``) about a Python, NumPy, JAX or optax name it cannot link:
  add it to :data:`PROJECTS`, or to :data:`NO_PAGE` when its project documents it nowhere.
"""

from __future__ import annotations

import builtins
import zlib
from pathlib import Path

from docutils import nodes
from sphinx import addnodes
from sphinx.util import logging

logger = logging.getLogger(__name__)


def _pages(pattern: str, names: str, role: str = "py:class") -> dict[str, tuple[str, str]]:
  """``{name: (role, page)}`` for names whose page follows ``pattern`` (``{}`` is the name)."""
  return {name: (role, pattern.format(name)) for name in names.split()}


# The docs' external names: {project: (site, {name: (domain:role, page on the site)})}. Types
# and type aliases are ``py:class`` (annotations refer to them with the class role). The page
# layouts are those of the projects' Sphinx sources: autosummary pages per name for JAX
# (``_autosummary/``) and optax (``api/generated/``), one page per module for Python.
PROJECTS: dict[str, tuple[str, dict[str, tuple[str, str]]]] = {
    "python": ("https://docs.python.org/3/", {
        **_pages("library/functions.html#{}", "bool int float complex object type slice"),
        **_pages("library/stdtypes.html#{}", "str bytes tuple list dict set frozenset"),
        **_pages("library/constants.html#{}", "None Ellipsis", "py:data"),
        **_pages("library/exceptions.html#{}", "ValueError TypeError KeyError IndexError "
                 "RuntimeError NotImplementedError", "py:exception"),
        **_pages("library/typing.html#{}", "typing.Any typing.Literal typing.NamedTuple "
                 "typing.TypeAlias typing.Callable typing.Optional typing.Union "
                 "typing.Protocol typing.TypeVar typing.Generic"),
        **_pages("library/collections.abc.html#{}", "collections.abc.Hashable "
                 "collections.abc.Callable collections.abc.Sequence collections.abc.Mapping "
                 "collections.abc.Iterable collections.abc.Iterator"),
    }),
    "numpy": ("https://numpy.org/doc/stable/", {
        **_pages("reference/generated/{0}.html#{0}", "numpy.ndarray numpy.dtype"),
        **_pages("reference/arrays.scalars.html#{}", "numpy.generic numpy.number "
                 "numpy.floating numpy.integer numpy.float16 numpy.float32 numpy.float64 "
                 "numpy.int32 numpy.int64"),
        **_pages("reference/typing.html#{}", "numpy.typing.ArrayLike numpy.typing.DTypeLike "
                 "numpy.typing.NDArray"),
    }),
    "jax": ("https://docs.jax.dev/en/latest/", {
        **_pages("_autosummary/{0}.html#{0}", "jax.Array jax.typing.ArrayLike "
                 "jax.typing.DTypeLike jax.tree_util.KeyPath"),
        **_pages("_autosummary/{0}.html#{0}", "jax.jit jax.grad jax.value_and_grad jax.vmap "
                 "jax.pmap jax.shard_map jax.device_put jax.lax.optimization_barrier "
                 "jax.tree_util.keystr", "py:function"),
        **_pages("jax.sharding.html#{}", "jax.sharding.Sharding jax.sharding.NamedSharding "
                 "jax.sharding.PartitionSpec jax.sharding.Mesh"),
    }),
    "optax": ("https://optax.readthedocs.io/en/latest/", {
        **_pages("api/generated/{0}.html#{0}", "optax.GradientTransformation "
                 "optax.GradientTransformationExtraArgs optax.OptState optax.Params "
                 "optax.Updates optax.EmptyState optax.TransformInitFn optax.TransformUpdateFn "
                 "optax.MultiSteps"),
        **_pages("api/generated/{0}.html#{0}", "optax.chain optax.sgd optax.adagrad optax.adam "
                 "optax.adamw optax.lars optax.lamb optax.scale_by_trust_ratio "
                 "optax.scale_by_learning_rate optax.add_decayed_weights optax.masked "
                 "optax.apply_if_finite optax.apply_updates optax.tree_utils.tree_get "
                 "optax.tree_utils.tree_map_params", "py:function"),
        "optax.Schedule": ("py:class", "api/generated/optax.schedules.Schedule.html"
                           "#optax.schedules.Schedule"),
        "optax.inject_hyperparams": (
            "py:function", "api/generated/optax.schedules.inject_hyperparams.html"
            "#optax.schedules.inject_hyperparams"),
    }),
}
# External names their projects document nowhere: shown as text, without a link.
NO_PAGE = frozenset({"optax.ScalarOrSchedule"})
# Bare names the library imports from another project.
IMPORTED = {"ArrayLike": "jax.typing.ArrayLike", "DTypeLike": "jax.typing.DTypeLike"}
# The public package of a private one (``jax.jaxlib._jax.Array`` is ``jax.Array``).
PUBLIC_PACKAGE = {"jaxlib": "jax"}
EXTERNAL_ROOTS = frozenset(PROJECTS) | {"jaxlib", "typing", "collections"}
KNOWN = {name for _, names in PROJECTS.values() for name in names}


def write_inventory(path: Path, project: str, names: dict[str, tuple[str, str]]) -> None:
  """An ``objects.inv`` (Sphinx inventory version 2) with one entry per name."""
  lines = "".join(f"{name} {role} 1 {page} -\n" for name, (role, page) in sorted(names.items()))
  header = (f"# Sphinx inventory version 2\n# Project: {project}\n# Version: \n"
            "# The remainder of this file is compressed using zlib.\n")
  path.write_bytes(header.encode() + zlib.compress(lines.encode()))


def public_name(target: str) -> str:
  """The name :data:`PROJECTS` lists for a reference target, or the target itself."""
  if target in IMPORTED:
    return IMPORTED[target]
  parts = target.split(".")
  if any(part.startswith("_") for part in parts[:-1]):
    public = f"{PUBLIC_PACKAGE.get(parts[0], parts[0])}.{parts[-1]}"
    if public in KNOWN:
      return public
  return target


def is_external(target: str) -> bool:
  """A Python (builtins, typing, collections), NumPy, JAX or optax name."""
  return target.split(".")[0] in EXTERNAL_ROOTS or hasattr(builtins, target)


def _write_inventories(app, config) -> None:
  folder = Path(app.doctreedir) / "intersphinx_offline"
  folder.mkdir(parents=True, exist_ok=True)
  mapping = {}
  for project, (site, names) in PROJECTS.items():
    write_inventory(folder / f"{project}.inv", project, names)
    mapping[project] = (site, str(folder / f"{project}.inv"))
  config.intersphinx_mapping = mapping


def _public_targets(app, doctree: nodes.document) -> None:
  for node in doctree.findall(addnodes.pending_xref):
    if node.get("refdomain") == "py":
      node["reftarget"] = public_name(node["reftarget"])


def _warn_unlinked(app, env, node, contnode):
  # Sphinx calls every missing-reference listener, intersphinx's too, so this one looks the
  # target up in the inventories as intersphinx does: by name, among the role's object types.
  target = node.get("reftarget", "")
  if node.get("refdomain") != "py" or not is_external(target) or target in NO_PAGE:
    return None
  objtypes = env.get_domain("py").objtypes_for_role(node["reftype"]) or ()
  inventory = env.intersphinx_inventory
  if not any(target in inventory.get(f"py:{objtype}", {}) for objtype in objtypes):
    logger.warning("no link for %s %r: add it to PROJECTS in docs/intersphinx_offline.py",
                   node["reftype"], target, location=node, type="intersphinx_offline")
  return None


def setup(app):
  app.setup_extension("sphinx.ext.intersphinx")
  # Before intersphinx checks the mapping (config-inited, priority 800) and loads it.
  app.connect("config-inited", _write_inventories, priority=500)
  app.connect("doctree-read", _public_targets)
  app.connect("missing-reference", _warn_unlinked, priority=800)
  return {"parallel_read_safe": True, "parallel_write_safe": True}
