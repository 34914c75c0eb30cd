"""Smoke test of the benchmark (benchmarks/) on tiny trees (seconds, not a measurement)."""

import math

import jax
import numpy as np

from benchmarks import bench_step, compiles, hlo, methods, timing, trees


def _tiny_tree():
  """Two one-array layers and one kernel+bias layer (Flax-style nesting)."""
  # Above 16,384 elements XLA:CPU squares and sums in one read (below it, a reduce-window
  # tree reads a materialised square: docs/performance.md).
  tree = trees.big_tree(2, 144)
  tree["ip"] = {"kernel": jax.ShapeDtypeStruct((16, 8), "float32"),
                "bias": jax.ShapeDtypeStruct((8,), "float32")}
  return tree


def test_methods_stream_through_the_same_buffers():
  shapes = trees.big_tree(2, 8)
  grads = trees.materialise(shapes, 1)
  buffers = timing.SharedBuffers(trees.materialise(shapes, 0))
  by_name = {m.name: m.tx for m in methods.methods()}
  optax_sgd, ours_sgd, adagrad = (by_name[n] for n in ("optax sgd", "ours sgd",
                                                       "optax adagrad"))
  runs = [buffers.runner(methods.optimizer_step(tx), tx, family, grads)
          for tx, family in ((optax_sgd, "sgd"), (ours_sgd, "sgd"), (adagrad, "adagrad"))]
  runs[0]()
  params = [p.unsafe_buffer_pointer() for p in buffers.params]
  trace = [m.unsafe_buffer_pointer() for m in buffers.states["sgd"]]
  before = [np.array(p, copy=True) for p in buffers.params]  # a view would pin the buffer
  for run in runs[1:] + runs[:1]:
    run()
  # Donated steps wrote in place: the same memory, holding the updated parameters.
  assert [p.unsafe_buffer_pointer() for p in buffers.params] == params
  assert [m.unsafe_buffer_pointer() for m in buffers.states["sgd"]] == trace
  assert set(buffers.states) == {"sgd", "adagrad"}
  assert all(not np.array_equal(a, np.array(b, copy=True)) for a, b in zip(before, buffers.params))


def test_paired_ratio_is_the_median_of_per_repetition_ratios():
  assert timing.paired_ratio([2.0, 4.0, 9.0], [1.0, 1.0, 3.0]) == 3.0


def test_bench_tree_ratios_state_and_recompiles():
  rows = bench_step.bench_tree("tiny", _tiny_tree(), reps=5)
  by_method = {r["method"]: r for r in rows}
  assert set(by_method) == {m.name for m in methods.methods()}
  for r in rows:
    assert r["median_ms"] > 0 and len(r["times_ms"]) == r["reps"] == 5
    assert r["recompiles"] == 0 and r["cache_size"] == 1
    if r["baseline"]:
      assert math.isfinite(r["ratio"]) and r["ratio"] > 0
  for name in ("ours sgd", "ours nesterov", "ours adagrad eq.12"):
    r = by_method[name]
    assert r["state_bytes"] == r["base_state_bytes"] > 0
  summary = bench_step.summary(rows)
  assert summary["added_state"] == 0 and summary["recompiled"] == 0
  lines = bench_step.table(rows)
  assert len(lines) == 2 + sum(1 for r in rows if r["baseline"])


def test_recompile_is_detected():
  tx = methods.methods()[1].tx
  step = methods.optimizer_step(tx)
  shapes = trees.big_tree(1, 8)
  params = trees.materialise(shapes, 0)
  grads = trees.materialise(shapes, 1)
  state = tx.init(params)
  with compiles.compile_log() as log:
    params, state = step(params, state, grads)
    params, state = step(params, state, grads)
  assert compiles.n_compiles(log) == 1
  # A new shape compiles the step again (inputs built first: their creation compiles too).
  wide = trees.materialise(trees.big_tree(1, 16), 0)
  wide_state, wide_grads = jax.block_until_ready((tx.init(wide),
                                                   trees.materialise(trees.big_tree(1, 16), 1)))
  with compiles.compile_log() as log:
    step(wide, wide_state, wide_grads)
  assert compiles.n_compiles(log) == 1 and step._cache_size() == 2


def test_hlo_summary_counts_the_norm_pass():
  shapes = _tiny_tree()
  optax_sgd, ours_sgd = methods.methods()[0].tx, methods.methods()[1].tx
  base, ours = hlo.hlo_summary(optax_sgd, shapes), hlo.hlo_summary(ours_sgd, shapes)
  n_leaves = len(jax.tree.leaves(shapes))
  assert base["kernels"] >= n_leaves and base["reductions"] == 0
  assert ours["reductions"] > 0 and ours["kernels"] > base["kernels"]
  # The update passes are the same: no extra full-size pass besides the norms' reads.
  assert ours["full_size"] == base["full_size"] > 0
  # The norm pass alone: the same reductions as ours, and nothing written at full size.
  norms = hlo.hlo_summary(methods.methods()[-1].tx, shapes, methods.norm_pass_step)
  assert norms["reductions"] == ours["reductions"] and norms["full_size"] == 0


def test_hlo_trust_ratio_aliases_read_parameters_and_updates_once_for_their_norms():
  shapes = _tiny_tree()
  by_name = {m.name: m for m in methods.methods()}
  counts = {name: hlo.hlo_summary(by_name[name].tx, shapes)
            for name in ("optax sgd", "ours lars", "optax lars", "ours lamb", "optax lamb")}
  norms = hlo.hlo_summary(by_name["norm pass only"].tx, shapes, methods.norm_pass_step)
  # LARS writes nothing at full size besides SGD's momentum and parameters, reduces the
  # parameters and the updates (at most twice the norm pass's reductions) and has no
  # per-layer scalar kernels.
  ours_lars = counts["ours lars"]
  assert ours_lars["full_size"] == counts["optax sgd"]["full_size"]
  assert 0 < ours_lars["reductions"] <= 2 * norms["reductions"] and ours_lars["scalar"] == 0
  for name in ("lars", "lamb"):
    assert counts[f"ours {name}"]["kernels"] < counts[f"optax {name}"]["kernels"]
    assert counts[f"ours {name}"]["full_size"] < counts[f"optax {name}"]["full_size"]


def test_training_step_overhead_runs():
  rows = bench_step.bench_training("lenet", reps=3, budget_s=0.0, batch=2)
  assert {r["method"] for r in rows} >= {"ours sgd", "optax sgd"}
  for r in rows:
    assert r["median_ms"] > 0 and r["recompiles"] == 0 and r["cache_size"] == 1
    assert r["tree"].startswith("lenet") and "batch 2" in r["tree"]
    if r["baseline"]:
      assert math.isfinite(r["ratio"]) and r["ratio"] > 0
