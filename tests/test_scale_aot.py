"""The AOT scale-out benchmark on 8 simulated devices: a one-block tree, SGD against optax.

``benchmarks.scale_aot`` runs each device count in a subprocess (jax fixes its device count
when it starts), so this test runs the command itself and reads its JSON.
"""

import json
import subprocess
import sys
from pathlib import Path

from benchmarks import scale_aot

ROOT = Path(__file__).resolve().parents[1]


def test_sharded_step_adds_one_small_all_reduce_and_no_gather(tmp_path):
  proc = subprocess.run(
      [sys.executable, "-m", "benchmarks.scale_aot", "--devices", "8", "--sizes", "small",
       "--dtypes", "float32", "--methods", "optax sgd,lo.sgd", "--out", str(tmp_path)],
      cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  rows = {(r["sharding"], r["method"]): r
          for r in json.loads((tmp_path / "scale_aot.json").read_text())["rows"]}
  assert set(rows) == {(s, m) for s in ("fsdp", "tp") for m in ("optax sgd", "lo.sgd")}
  assert "| 8 | small | float32 | fsdp |" in (tmp_path / "scale_aot.md").read_text()
  for sharding in ("fsdp", "tp"):
    ours, theirs = rows[sharding, "lo.sgd"], rows[sharding, "optax sgd"]
    assert theirs["collectives"] == {}, theirs  # optax's step is elementwise: no exchange
    # One combined all-reduce of one float per sharded array (its sum of squares).
    assert ours["collectives"] == {"all-reduce": {
        "count": 1, "elements": ours["sharded_arrays"], "bytes": 4 * ours["sharded_arrays"]}}
    assert ours["sharded_arrays"] == (20 if sharding == "fsdp" else 12)
    assert ours["no_gather_ok"] and ours["extra_all_reduces"] == 1
    # Same buffers in and out; temporaries far below one parameter copy.
    assert ours["argument_bytes"] == theirs["argument_bytes"] > 0
    assert ours["output_bytes"] == theirs["output_bytes"]
    assert 0 < ours["extra_temp_bytes"] < ours["argument_bytes"] / 100 and ours["temp_ok"]


def test_default_and_listed_methods_parse_with_commas_inside_names():
  every = [name for name, _, _ in scale_aot.pairs()]
  assert scale_aot.parse_args([]).methods == every  # the default run takes them all
  listed = scale_aot.parse_args(["--methods", ",".join(every)]).methods  # as workers get it
  assert listed == every
  assert scale_aot.split_names("optax sgd, chain(scale_by_layerwise_lr, optax.sgd),") == [
      "optax sgd", "chain(scale_by_layerwise_lr, optax.sgd)"]
