#!/usr/bin/env bash
# The benchmark on a GPU, as one prepared script: for a machine with jax[cuda] installed
# (e.g. the device tool's H200 image, which has jax, flax and optax but no network).
# Writes gpu.md and gpu.json (benchmarks.bench_step) and gpu_stats.md and gpu_stats.json
# (benchmarks.bench_stats) to $OUT (default results/bench); not yet run on a GPU.
# Extra arguments go to both benchmarks (e.g. --quick for a smoke run).
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
# The cost of keep_stats (the per-layer statistics kept in the optimizer state).
stats_tmp="$(mktemp -d)"
"$python" -m benchmarks.bench_stats --budget 8 --out "$stats_tmp" "$@"
mv "$stats_tmp/stats.md" "$out/gpu_stats.md"
mv "$stats_tmp/stats.json" "$out/gpu_stats.json"
rmdir "$stats_tmp"
