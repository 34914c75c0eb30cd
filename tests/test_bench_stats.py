"""Smoke test of benchmarks/bench_stats at tiny size (seconds, not a measurement)."""

import json

import jax
import numpy as np
import optax

from benchmarks import bench_stats, trees

TREE = "4x256^2 f32"


def test_both_logging_routes_give_the_same_statistics():
  shapes = trees.big_tree(2, 8)
  params, grads = trees.materialise(shapes, 0), trees.materialise(shapes, 1)
  for family in bench_stats.FACTOR_FAMILIES:
    tx = bench_stats.optimizers(True)[family]
    plain = bench_stats.optimizers(False)[family]
    _, state = jax.jit(tx.update)(grads, tx.init(params), params)
    kept = optax.tree_utils.tree_get(state, "layer_stats")
    params_copy = jax.tree.map(lambda x: x.copy(), params)
    _, _, beside = bench_stats.beside_step(plain)(params_copy, plain.init(params), grads)
    assert set(kept) == set(beside) == {"dense_0", "dense_1"}, family
    for name, stats in kept.items():
      np.testing.assert_allclose(stats, beside[name], rtol=1e-6, err_msg=family)
      assert float(stats.factor) > 1, family


def test_quick_run_writes_every_ratio(tmp_path):
  # The 4-array tree: half the compile time of LeNet's 8 arrays.
  assert bench_stats.main(["--quick", "--trees", TREE, "--reps", "5", "--budget", "0",
                           "--out", str(tmp_path)]) == 0
  rows = json.loads((tmp_path / "stats.json").read_text())["rows"]
  families = ("sgd", "nesterov", "adagrad", "adam")
  assert [(r["family"], r["variant"]) for r in rows] == [
      (f, v) for f in families for v in ("plain", "keep_stats", "beside")] + [
          (f, v) for f in ("lars", "lamb") for v in ("plain", "keep_stats")] + [
          ("sgd", "plain A/A")]
  for r in rows:
    assert r["reps"] == 5 and len(r["times_ms"]) == 5 and r["median_ms"] > 0
    assert (r["ratio"] is None) == (r["variant"] == "plain") and r["target"] is None
  assert all(r["ratio"] > 0 for r in rows if r["ratio"] is not None)
  text = (tmp_path / "stats.md").read_text()
  assert text.count(f"| {TREE} |") == 6 and "python -m benchmarks.bench_stats --quick" in text
