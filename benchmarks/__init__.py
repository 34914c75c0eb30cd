"""Optimizer-step and training-step cost against optax (docs/performance.md):
``python -m benchmarks.bench_step`` from the repository root."""
