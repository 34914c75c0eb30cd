#!/usr/bin/env bash
# The built artefacts, as a packager gets them.
#
# Builds the sdist and, from it, the wheel. Checks the wheel's metadata against pyproject.toml
# (project URLs, classifiers with `Typing :: Typed` and a Python version classifier from the
# `Requires-Python` floor on, keywords, licence), and the file lists: the wheel holds every file
# git tracks in layerwise_optax/ and nothing else; the sdist holds those, LICENSE, README.md,
# CHANGELOG.md, CITATION.cff, and the library's tests (every tracked tests/test_core_*.py) with
# their helpers, and nothing of the experiment harness.
#
# Then the library on the lowest versions pyproject.toml declares: a fresh environment outside
# the repository gets the wheel (not editable, no extras) with its runtime requirements at
# their floors (`uv pip install --resolution lowest-direct`, checked against the declared
# floors) and the newest pytest, pytest-xdist and hypothesis that fit; the wheel imports
# there without Flax and takes one step of eq. 9; the sdist's tests run from the unpacked
# sdist, its copy of the package removed so that only the wheel can be imported, with the
# installed package's doctests. Tests that need Flax, equinox or orbax skip there (`make
# test` runs them, and the quick start, on the newest releases from the source tree).
# Python: the venv's (3.11, the declared floor), or PACKAGE_PYTHON.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
uv=${UV:-$(command -v "$repo/.venv/bin/uv" || command -v uv || echo uv)}
command -v "$uv" >/dev/null || { echo "check_package: needs uv; make test installs it in .venv" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

"$uv" build -q --out-dir "$work/dist" "$repo"
sdist=$(echo "$work"/dist/layerwise_optax-*.tar.gz)
wheel=$(echo "$work"/dist/layerwise_optax-*-py3-none-any.whl)
version=$(basename "$wheel" | cut -d- -f2)

# The file lists, and the metadata of both artefacts against pyproject.toml.
git -C "$repo" ls-files layerwise_optax 'tests/test_core_*.py' >"$work/tracked.txt"
"$repo/.venv/bin/python" - "$repo/pyproject.toml" "$sdist" "$wheel" "$work/tracked.txt" <<'PY'
import email.parser, re, sys, tarfile, tomllib, zipfile
pyproject, sdist, wheel, tracked = sys.argv[1:]
project = tomllib.load(open(pyproject, "rb"))["project"]
tracked = open(tracked).read().split()
package = [f for f in tracked if f.startswith("layerwise_optax/")]
errors = []

with zipfile.ZipFile(wheel) as z:
  wheel_files = z.namelist()
  (info,) = {f.split("/")[0] for f in wheel_files if ".dist-info/" in f}
  metadata = z.read(f"{info}/METADATA").decode()
with tarfile.open(sdist) as t:
  members = t.getmembers()
  sdist_files = [m.name.split("/", 1)[1] for m in members if m.isfile()]
  (pkg_info,) = [m for m in members if m.name.count("/") == 1 and m.name.endswith("/PKG-INFO")]
  sdist_metadata = t.extractfile(pkg_info).read().decode()

# The wheel: the package and its metadata, nothing else.
for f in package + [f"{info}/licenses/LICENSE"]:
  if f not in wheel_files:
    errors.append(f"the wheel lacks {f}")
errors += [f"the wheel holds {f}" for f in wheel_files
           if not f.startswith(("layerwise_optax/", f"{info}/"))]
# The sdist: the package, the documents, the library's tests and their helpers.
documents = ["LICENSE", "README.md", "CHANGELOG.md", "CITATION.cff", "pyproject.toml"]
helpers = ["tests/conftest.py", "tests/reference.py"]
for f in documents + helpers + tracked:
  if f not in sdist_files:
    errors.append(f"the sdist lacks {f}")
allowed = re.compile(r"(PKG-INFO|setup\.cfg|MANIFEST\.in|layerwise_optax(\.egg-info)?/.+"
                     r"|tests/[\w]+\.py)$")
errors += [f"the sdist holds {f}" for f in sdist_files
           if f not in documents and not allowed.fullmatch(f)]

def check(text, where):
  meta = email.parser.Parser().parsestr(text)
  def want(field, got, expected):
    if got != expected:
      errors.append(f"{where} {field}: {got!r}, pyproject.toml says {expected!r}")
  want("Version", meta["Version"], version)
  want("Requires-Python", meta["Requires-Python"], project["requires-python"])
  want("License-Expression", meta["License-Expression"], project["license"])
  want("Keywords", meta["Keywords"], ",".join(project["keywords"]))
  want("Classifier", meta.get_all("Classifier"), project["classifiers"])
  urls = dict(u.split(", ", 1) for u in meta.get_all("Project-URL") or [])
  want("Project-URL", urls, project["urls"])
  for label in ("Homepage", "Repository", "Documentation", "Issues", "Changelog"):
    if not urls.get(label, "").startswith("https://"):
      errors.append(f"{where} has no {label} URL")
  if not meta["Author"] and not meta["Author-email"]:
    errors.append(f"{where} names no author")
  classifiers = meta.get_all("Classifier") or []
  for c in ("Typing :: Typed", "Programming Language :: Python :: 3 :: Only"):
    if c not in classifiers:
      errors.append(f"{where} lacks the classifier {c!r}")
  # Python versions: one classifier each, from the Requires-Python floor on.
  minors = sorted(int(m) for m in re.findall(r"^Programming Language :: Python :: 3\.(\d+)$",
                                             "\n".join(classifiers), flags=re.MULTILINE))
  floor = int(re.fullmatch(r">=3\.(\d+)", meta["Requires-Python"] or "").group(1))
  if not minors or minors != list(range(floor, floor + len(minors))):
    errors.append(f"{where}: Python classifiers 3.{minors} are not one each from 3.{floor} on")

version = wheel.rsplit("/", 1)[-1].split("-")[1]
check(metadata, "the wheel's METADATA")
check(sdist_metadata, "the sdist's PKG-INFO")
if errors:
  sys.exit("check_package: " + "\ncheck_package: ".join(errors))
print(f"wheel and sdist {version}: files and metadata as pyproject.toml declares "
      f"({len(wheel_files)} and {len(sdist_files)} files)")
PY

# The wheel, the sdist's tests and the wheel's doctests on the lowest declared versions.
cd "$work"
"$uv" venv -q --python "${PACKAGE_PYTHON:-$repo/.venv/bin/python}" "$work/lowest"
py=$work/lowest/bin/python
"$uv" pip install -q --python "$py" --resolution lowest-direct -r "$repo/pyproject.toml" "$wheel"
"$uv" pip install -q --python "$py" pytest pytest-xdist hypothesis
"$py" - "$repo/pyproject.toml" "$version" <<'PY'
import importlib.metadata as md, importlib.util, math, os, sys
from packaging.requirements import Requirement
from packaging.version import Version
import tomllib
os.chdir("/")  # outside the repository: only the installed wheel can be imported
import jax.numpy as jnp
import layerwise_optax as lo
assert "site-packages" in lo.__file__, f"imported {lo.__file__}, not the installed wheel"
assert lo.__version__ == md.version("layerwise_optax") == sys.argv[2], lo.__version__
assert importlib.util.find_spec("flax") is None, "flax is installed without being asked for"
params = {"w": jnp.full((3,), 2.0)}
tx = lo.sgd(0.1)
updates, _ = tx.update({"w": jnp.full((3,), 1e-3)}, tx.init(params), params)
expected = -0.1 * 1e-3 * (1 + math.log1p(1 / (math.sqrt(3) * 1e-3)))  # eq. 9, ||g|| = 1.7e-3
assert abs(float(updates["w"][0]) / expected - 1) < 1e-5, (updates, expected)
print(f"wheel {lo.__version__} imports without Flax; sgd step {float(updates['w'][0]):.6f}")
rows = []
for dep in tomllib.load(open(sys.argv[1], "rb"))["project"]["dependencies"]:
  req = Requirement(dep)
  (floor,) = [s.version for s in req.specifier if s.operator == ">="]
  got = md.version(req.name)
  if Version(got) != Version(floor):
    sys.exit(f"check_package: {req.name} resolved to {got}, not its declared floor {floor}")
  rows.append(f"{req.name} {got}")
print(f"lowest versions: Python {sys.version.split()[0]}, " + ", ".join(rows))
PY
mkdir "$work/sdist" && tar -xzf "$sdist" -C "$work/sdist"
cd "$work"/sdist/layerwise_optax-*/
rm -r layerwise_optax
installed=$("$py" -c 'import layerwise_optax as lo, os; print(os.path.dirname(lo.__file__))')
[[ $installed == */site-packages/layerwise_optax ]] || { echo "check_package: imported $installed, not the wheel" >&2; exit 1; }
"$py" -m pytest -q -p no:cacheprovider -n "${PACKAGE_TEST_WORKERS:-auto}" tests "$installed"
