"""Sphinx configuration: the Markdown pages in docs/ and the API reference from the docstrings.

Built by ``make docs`` (``python -m sphinx -E -W --keep-going -b html docs docs/_build/html``
from the repository root, which puts ``docs.public_api`` on the import path).

Formulas render offline, without a CDN: MathJax 3 comes from the ``sphinx-mathjax-offline``
wheel (the ``docs`` extra; no Node.js or LaTeX needed), and :func:`_copy_mathjax` copies the
one bundle the pages load, with its fonts and TeX extensions (about 2 MB; the wheel's own
extension would copy all 24 MB of it), into ``_static/mathjax``.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
from pathlib import Path

from sphinx.errors import ConfigError
from sphinx.ext import autosummary

import layerwise_optax

project = "layerwise_optax"
author = "layerwise_optax authors"
copyright = "the layerwise_optax authors"
release = version = layerwise_optax.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "myst_parser",
    "sphinx_copybutton",
    "docs.public_api",
    "docs.repo_links",
    "docs.intersphinx_offline",
]

# Source links: every API entry gets a [source] link to its highlighted code, which viewcode
# renders into the site (_modules/), so the links work offline and at the built version; it
# follows the package root's re-exports to the private module that defines each name.
viewcode_follow_imported_members = True

# Links to the Python, NumPy, JAX and optax docs (intersphinx) with no network: the build
# must not download the projects' objects.inv inventories, and the packages' wheels ship none.
# docs/intersphinx_offline.py writes small inventories of the names these docs use, with their
# pages on each project's site, at the start of the build and sets `intersphinx_mapping` to
# them; it warns (an error here) about an external name it cannot link. The links point to
# the projects' current docs (Python 3, NumPy stable, JAX and optax latest).

source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
root_doc = "index"
exclude_patterns = ["_build", "**/.ipynb_checkpoints"]

# Markdown: $...$ and $$...$$ maths, ::: fences, heading anchors for [text](page.md#anchor).
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence"]
myst_heading_anchors = 3

# Docstrings: Google style, ``literals`` in RST; signatures as written.
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
autodoc_typehints = "signature"
autodoc_member_order = "bysource"
autodoc_preserve_defaults = True
# Keep the library's aliases by name instead of spelling out their unions.
autodoc_type_aliases = {name: name for name in (
    "optax.ScalarOrSchedule", "optax.Schedule", "optax.Params", "optax.Updates",
    "jax.typing.ArrayLike", "ArrayLike", "jax.typing.DTypeLike", "DTypeLike",
    "chex.Numeric", "LayersSpec", "StackedSpec", "KeyPath", "LabelTree", "LayerStats")}
# One parameter per line once a signature is longer than this.
python_maximum_signature_line_length = 88
autosummary_generate = False
# The API table shows each docstring's first sentence; "(eq. 10)" does not end it.
autosummary.WELL_KNOWN_ABBREVIATIONS += ("eq.", "eqs.")
add_module_names = False

# The copy button leaves out the ">>> " and "... " prompts and the printed output.
copybutton_prompt_text = r">>> |\.\.\. "
copybutton_prompt_is_regexp = True
copybutton_only_copy_prompt_lines = True

html_theme = "furo"
html_title = f"layerwise_optax {release}"
html_show_sourcelink = False
html_copy_source = False

MATHJAX_PACKAGE = "sphinx-mathjax-offline"
MATHJAX_FILES = ("tex-chtml.js", "output/chtml/fonts", "input/tex/extensions")
mathjax_path = "mathjax/tex-chtml.js"


def _mathjax_dir() -> Path:
  spec = importlib.util.find_spec(MATHJAX_PACKAGE)
  if spec is None or not spec.submodule_search_locations:
    raise ConfigError(f"MathJax is missing: pip install '.[docs]' (needs {MATHJAX_PACKAGE}).")
  return Path(next(iter(spec.submodule_search_locations))) / "static" / "mathjax"


def _copy_mathjax(app, exception) -> None:
  if exception is not None or app.builder.format != "html":
    return
  source, target = _mathjax_dir(), Path(app.outdir) / "_static" / "mathjax"
  for name in MATHJAX_FILES:
    if (source / name).is_dir():
      shutil.copytree(source / name, target / name, dirs_exist_ok=True)
    else:
      (target / name).parent.mkdir(parents=True, exist_ok=True)
      shutil.copy2(source / name, target / name)


def _alias_names(app, what, name, obj, options, signature, return_annotation):
  # Sphinx prints an alias inside a union (``ArrayLike | None``) by its repr.
  def clean(text):
    return text and re.sub(r"TypeAliasForwardRef\('([^']*)'\)", r"\1", text)
  return clean(signature), clean(return_annotation)


def setup(app):
  _mathjax_dir()  # fail at the start of the build, not after it
  app.connect("build-finished", _copy_mathjax)
  app.connect("autodoc-process-signature", _alias_names)
