#!/usr/bin/env bash
# The library's tests and doctests with the lowest versions pyproject.toml declares.
#
# A fresh virtual environment gets the runtime requirements at their floors
# (`uv pip install --resolution lowest-direct`), checked against the declared floors, then the
# newest pytest, pytest-xdist and hypothesis that fit; tests that need Flax or equinox skip
# there. Python: the venv's (3.11, the declared floor), or LOWEST_PYTHON.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
uv=${UV:-$(command -v "$repo/.venv/bin/uv" || command -v uv || echo uv)}
python=${LOWEST_PYTHON:-}
python=${python:-$repo/.venv/bin/python}
command -v "$uv" >/dev/null || { echo "test_lowest: needs uv; make test installs it in .venv" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

"$uv" venv -q --python "$python" "$work/venv"
py=$work/venv/bin/python
"$uv" pip install -q --python "$py" --resolution lowest-direct -r "$repo/pyproject.toml"
"$uv" pip install -q --python "$py" pytest pytest-xdist hypothesis

# Every floor in `dependencies` is the version installed, so the floors are what is tested.
"$py" - "$repo/pyproject.toml" <<'PY'
import importlib.metadata as md, sys
from packaging.requirements import Requirement
from packaging.version import Version
import tomllib
rows = []
for dep in tomllib.load(open(sys.argv[1], "rb"))["project"]["dependencies"]:
  req = Requirement(dep)
  (floor,) = [s.version for s in req.specifier if s.operator == ">="]
  got = md.version(req.name)
  if Version(got) != Version(floor):
    sys.exit(f"test_lowest: {req.name} resolved to {got}, not its declared floor {floor}")
  rows.append(f"{req.name} {got}")
print(f"lowest versions: Python {sys.version.split()[0]}, " + ", ".join(rows))
PY

cd "$repo"
"$py" -m pytest -q -n "${LOWEST_WORKERS:-auto}" -p no:cacheprovider --doctest-modules \
  tests/test_core_*.py layerwise_optax
