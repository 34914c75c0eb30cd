"""The docs' check for undocumented public names (docs/public_api.py), without a Sphinx build."""

import re
import types
from pathlib import Path

import layerwise_optax
from docs.public_api import missing_names


def _function(doc):
  def f():
    pass
  f.__doc__ = doc
  return f


FAKE = types.SimpleNamespace(
    __name__="pkg", __all__=["b_listed", "a_unlisted", "c_no_docstring", "d_listed"],
    b_listed=_function("B."), a_unlisted=_function("A."), c_no_docstring=_function(None),
    d_listed=_function("D."))


def test_missing_names_reports_unlisted_and_undocstringed_in_all_order():
  documented = {"pkg.b_listed", "pkg.c_no_docstring", "pkg.d_listed", "pkg.extra"}
  assert missing_names(FAKE, documented) == ["a_unlisted", "c_no_docstring"]


def test_missing_names_needs_the_module_prefix():
  assert missing_names(FAKE, {"b_listed", "d_listed"}) == FAKE.__all__


def test_missing_names_empty_when_all_documented():
  documented = {f"pkg.{name}" for name in FAKE.__all__}
  with_docstring = types.SimpleNamespace(**{**vars(FAKE), "c_no_docstring": _function("C.")})
  assert missing_names(with_docstring, documented) == []


def test_api_page_lists_every_public_name():
  # The same check the docs build runs, on the autodoc directives of docs/api.md.
  api = (Path(__file__).parents[1] / "docs" / "api.md").read_text()
  listed = re.findall(r"^\.\. auto(?:function|class|data):: (\w+)", api, flags=re.M)
  documented = {f"layerwise_optax.{name}" for name in listed}
  assert missing_names(layerwise_optax, documented) == []
  assert sorted(listed) == sorted(layerwise_optax.__all__)
