#!/usr/bin/env bash
# The built artefacts, as a user gets them.
#
# Builds the sdist and, from it, the wheel; checks that both hold every file git tracks in
# layerwise_optax/ and that the sdist holds LICENSE and README.md; installs the wheel (not
# editable, no extras) into a fresh virtual environment, outside the repository so the source
# tree cannot be imported instead; imports it there with no Flax installed; then installs Flax,
# as a user following the quick start would, and runs examples/quickstart.py against the wheel.
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

package_files=$(git -C "$repo" ls-files layerwise_optax)
tar -tzf "$sdist" | sed 's|^[^/]*/||' | sort >"$work/sdist.txt"
"$repo/.venv/bin/python" -m zipfile -l "$wheel" | awk 'NR > 1 {print $1}' | sort >"$work/wheel.txt"
missing=0
for f in LICENSE README.md pyproject.toml $package_files; do
  grep -qxF "$f" "$work/sdist.txt" || { echo "check_package: the sdist lacks $f" >&2; missing=1; }
done
for f in $package_files "layerwise_optax-$version.dist-info/licenses/LICENSE"; do
  grep -qxF "$f" "$work/wheel.txt" || { echo "check_package: the wheel lacks $f" >&2; missing=1; }
done
[ "$missing" = 0 ]

"$uv" venv -q --python "$repo/.venv/bin/python" "$work/venv"
py=$work/venv/bin/python
"$uv" pip install -q --python "$py" "$wheel"
cd "$work"
"$py" - "$version" <<'PY'
import importlib.metadata as md, importlib.util, math, sys
import jax.numpy as jnp
import layerwise_optax as lo
assert "site-packages" in lo.__file__, f"imported {lo.__file__}, not the installed wheel"
assert lo.__version__ == md.version("layerwise_optax") == sys.argv[1], lo.__version__
assert importlib.util.find_spec("flax") is None, "flax is installed without being asked for"
params = {"w": jnp.full((3,), 2.0)}
tx = lo.sgd(0.1)
updates, _ = tx.update({"w": jnp.full((3,), 1e-3)}, tx.init(params), params)
expected = -0.1 * 1e-3 * (1 + math.log1p(1 / (math.sqrt(3) * 1e-3)))  # eq. 9, ||g|| = 1.7e-3
assert abs(float(updates["w"][0]) / expected - 1) < 1e-5, (updates, expected)
print(f"wheel {lo.__version__} imports without Flax; sgd step {float(updates['w'][0]):.6f}")
PY
"$uv" pip install -q --python "$py" flax
cp "$repo/examples/quickstart.py" "$work/"
"$py" quickstart.py
