"""The docs without a Sphinx build: the check for undocumented public names
(docs/public_api.py), the pages' ``pycon`` examples as doctests and their whole programs, the
README's quick start, and the commands the README and the pages name: every ``make`` target
exists and every ``python -m`` module answers ``--help``."""

import doctest
import importlib
import re
import types
from pathlib import Path

import pytest

import layerwise_optax
from docs.public_api import missing_names
from tests import commands

ROOT = Path(__file__).parents[1]
DOCS = ROOT / "docs"
PYCON_BLOCK = re.compile(r"^```pycon\n(.*?)^```", flags=re.M | re.S)
# On these pages a ```python block that starts with an import is a whole program (the others
# are fragments); other pages (scale_out.md) start fragments with imports too.
PROGRAM_PAGES = ("getting_started.md",)
PROGRAM_BLOCK = re.compile(r"^```python\n((?:import|from) .*?)^```", flags=re.M | re.S)


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
  api = (DOCS / "api.md").read_text()
  listed = re.findall(r"^\.\. auto(?:function|class|data):: (\w+)", api, flags=re.M)
  documented = {f"layerwise_optax.{name}" for name in listed}
  assert missing_names(layerwise_optax, documented) == []
  assert sorted(listed) == sorted(layerwise_optax.__all__)


def _pages_with_examples():
  return sorted(page.name for page in DOCS.glob("*.md") if PYCON_BLOCK.search(page.read_text()))


def test_the_example_pages_are_found():
  assert {"layers.md", "numerics.md"} <= set(_pages_with_examples())


@pytest.mark.parametrize("page", _pages_with_examples())
def test_page_examples_print_what_the_page_shows(page):
  # The page's ```pycon blocks, in order, as one doctest sharing its names.
  text = (DOCS / page).read_text()
  examples = "\n".join(block.group(1) for block in PYCON_BLOCK.finditer(text))
  test = doctest.DocTestParser().get_doctest(examples, {}, page, str(DOCS / page), 0)
  runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
  runner.run(test)
  assert runner.tries > 0 and runner.failures == 0


def _programs():
  params = []
  for page in PROGRAM_PAGES:
    text = (DOCS / page).read_text()
    for match in PROGRAM_BLOCK.finditer(text):
      line = text[:match.start()].count("\n") + 2
      params.append(pytest.param(match.group(1), id=f"{page}:{line}"))
  return params


def test_the_programs_are_found():
  assert len(_programs()) >= 2  # choosing an optimizer; the plain JAX loop


@pytest.mark.parametrize("program", _programs())
def test_page_program_runs(program):
  exec(compile(program, "<docs>", "exec"), {"__name__": "docs_example"})


def test_readme_quick_start_runs():
  readme = (ROOT / "README.md").read_text()
  (program,) = PROGRAM_BLOCK.findall(readme)
  namespace = {"__name__": "readme_example"}
  exec(compile(program, "<README>", "exec"), namespace)
  assert type(namespace["tx"]).__name__ == "GradientTransformationExtraArgs"


def _command_texts() -> dict[str, str]:
  return {page.name: page.read_text() for page in [ROOT / "README.md", *DOCS.glob("*.md")]}


def _script_texts() -> dict[str, str]:
  """The docs and the scripts that run commands: the Makefile, CI, the GPU benchmark run."""
  scripts = [ROOT / "Makefile", ROOT / "benchmarks" / "run_gpu.sh", *(ROOT / ".ci").glob("*")]
  return _command_texts() | {path.name: path.read_text() for path in scripts if path.is_file()}


MAKE_COMMAND = re.compile(r"`make ([a-z][\w-]*)")
PYTHON_MODULE = re.compile(r"-m ([A-Za-z_]\w*(?:\.\w+)*)")
TOOLS = {"pip", "pyright", "pytest", "ruff", "sphinx", "venv"}  # not this repository's


def test_every_make_target_named_exists():
  makefile = (ROOT / "Makefile").read_text()
  targets = set(re.findall(r"^([a-z][\w-]*):", makefile, flags=re.M))
  named = {target for text in _command_texts().values() for target in MAKE_COMMAND.findall(text)}
  assert {"test", "demo", "docs"} <= named
  assert named <= targets, named - targets


def _modules_named():
  """Every ``-m MODULE`` of the docs and scripts but the tools': renamed or removed modules
  (``examples.reproduce``) fail to import below."""
  return sorted({module for text in _script_texts().values()
                 for module in PYTHON_MODULE.findall(text)} - TOOLS)


def test_the_commands_are_found():
  assert {"experiments.paper", "experiments.studies.vanishing", "benchmarks.bench_step"} <= set(
      _modules_named())


@pytest.mark.parametrize("module", [m for m in _modules_named() if not m.startswith("examples.")])
def test_every_python_module_named_answers_help(module, capsys):
  with pytest.raises(SystemExit) as exit_info:
    importlib.import_module(module).main(["--help"])
  assert exit_info.value.code == 0
  assert capsys.readouterr().out.startswith("usage: ")


def test_every_example_named_answers_help():
  """The examples run as commands (nothing outside examples/ imports them)."""
  examples = [m for m in _modules_named() if m.startswith("examples.")]
  assert examples
  for module in examples:
    proc = commands.run(commands.python("-m", module, "--help"))
    assert proc.returncode == 0 and proc.stdout.startswith("usage: "), proc.stdout + proc.stderr


def _github_anchor(heading: str) -> str:
  return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_readme_links_point_at_files_and_headings_there_are():
  links = re.findall(r"\]\(([^)#:]+)(?:#([\w-]+))?\)", (ROOT / "README.md").read_text())
  assert len(links) >= 10
  for path, anchor in links:
    assert (ROOT / path).exists(), path
    if anchor:
      headings = re.findall(r"^#+ (.*)$", (ROOT / path).read_text(), flags=re.M)
      assert anchor in {_github_anchor(heading) for heading in headings}, f"{path}#{anchor}"
