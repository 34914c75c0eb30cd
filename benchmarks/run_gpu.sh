#!/usr/bin/env bash
# The benchmark on a GPU, as one prepared script: for a machine with jax[cuda] installed
# (e.g. the device tool's H200 image, which has jax, flax and optax but no network).
# Writes gpu.md and gpu.json to $OUT (default results/bench); about 5 minutes on an H200.
# Extra arguments go to benchmarks.bench_step (e.g. --quick for a smoke run).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-results/bench}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1
python="${PYTHON:-python3}"
"$python" -c "import jax, optax, flax; print('jax', jax.__version__, jax.devices())"
# --hlo: kernels of one step on the 161-array ResNet-50 tree after XLA:GPU's fusions.
"$python" -m benchmarks.bench_step --budget 8 --hlo --json "$out/gpu.json" "$@" \
  | tee "$out/gpu.md"
