"""Sphinx extension: Markdown links to repository files outside docs/ become downloads.

The pages link to committed tables such as ``../results/bench/cpu.md``. MyST takes any
``.md`` target for a page and warns that it does not exist; this turns such a link into a
download of the file, as MyST already does for a linked ``.png``.
"""

from __future__ import annotations

import os
from pathlib import Path

from docutils import nodes
from sphinx import addnodes


def _outside_file(app, target: str) -> Path | None:
  """The existing file a MyST document link names, when it lies outside the source dir."""
  path = Path(target)
  if not path.is_absolute() or Path(app.srcdir) in path.parents:
    return None
  for suffix in app.config.source_suffix:
    if path.with_name(path.name + suffix).is_file():
      return path.with_name(path.name + suffix)
  return None


def _links_to_downloads(app, doctree: nodes.document) -> None:
  doc_dir = Path(doctree["source"]).parent
  for node in list(doctree.findall(addnodes.pending_xref)):
    if node.get("reftype") != "myst" or node.get("refdomain") != "doc":
      continue
    file = _outside_file(app, node["reftarget"])
    if file is None:
      continue
    download = addnodes.download_reference(
        "", "", *node.children, refdoc=node["refdoc"], refexplicit=True,
        reftarget=os.path.relpath(file, doc_dir), classes=["xref", "download", "myst"])
    node.replace_self(download)


def setup(app):
  # Before Sphinx's collector of downloadable files (priority 500) reads the doctree.
  app.connect("doctree-read", _links_to_downloads, priority=100)
  return {"parallel_read_safe": True, "parallel_write_safe": True}
