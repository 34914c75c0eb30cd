"""``python -m examples.train_mesh`` on 8 simulated CPU devices in one process, its usage
errors and its step comparison.

The command sets the CPU device count itself before jax starts a backend, so it runs in a
subprocess; the rest of the suite keeps its single device. Tiny run: 4 iterations, global
batch 16, random images, float64 (the trajectories are judged there). The multi-process
runs are in ``test_multiprocess.py``.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from examples import train_mesh

ROOT = Path(__file__).resolve().parents[1]
ITERS = 4


def test_dp_and_fsdp_match_one_device_float64(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu")  # conftest's XLA flags pass through
  proc = subprocess.run(
      [sys.executable, "-m", "examples.train_mesh", "--devices", "8", "--mode", "both",
       "--iters", str(ITERS), "--batch", "16", "--synthetic", "--x64",
       "--json", str(tmp_path / "mesh.json")],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  out = proc.stdout + proc.stderr
  assert proc.returncode == 0, out
  assert "float64" in out and "mesh of 8 cpu devices in 1 process(es)" in out, out
  runs = json.loads((tmp_path / "mesh.json").read_text())["runs"]
  assert [(r["method"], r["mode"]) for r in runs] == [("sgd+layer", "dp"), ("sgd+layer", "fsdp")]
  assert runs[0]["split"] == "none"
  assert runs[1]["split"] == "ip1/kernel P('data', None)"  # fsdp split the largest array
  for run in runs:
    assert run["kept"], run
    assert max(run["step"].values()) <= 1e-12, run
    assert len(run["loss_mesh"]) == ITERS
    np.testing.assert_allclose(run["loss_mesh"], run["loss_one_device"], rtol=1e-12)
  assert f"{runs[1]['loss_mesh'][-1]:.7f}" in out  # the printed table is the same run


@pytest.mark.parametrize("args,message", [
    (["--devices", "8", "--batch", "12"], "does not split over 8 devices"),
    (["--methods", "sgd,foo"], "unknown method"),
    (["--devices", "8", "--processes", "3"], "do not split over 3 processes"),
    (["--iters", "0"], "must be at least 1"),
    (["--step-tol", "-1"], "--step-tol must be > 0"),
    (["--processes", "2", "--process-id", "2", "--coordinator", "h:1"], "--process-id must"),
])
def test_usage_errors(args, message, capsys):
  with pytest.raises(SystemExit) as exit_info:
    train_mesh.parse_args(args)
  err = capsys.readouterr().err
  assert exit_info.value.code == 2
  assert message in err and len(err.strip().splitlines()) == 1, err


def test_relative_difference():
  assert train_mesh.relative([3.0, 4.0], [3.0, 4.0]) == 0.0
  assert train_mesh.relative([3.0, 5.0], [3.0, 4.0]) == pytest.approx(1 / 5)
  # Parameter updates: the difference relative to the step, not to the parameters.
  assert train_mesh.relative([1.1], [1.2], scale=np.array([0.2])) == pytest.approx(0.5)
  assert train_mesh.relative([0.0], [0.0]) == 0.0
  assert train_mesh.relative([1e-30], [0.0]) == float("inf")
  assert train_mesh.relative(np.int32(3), np.int32(3)) == 0.0
  assert train_mesh.relative(np.int32(4), np.int32(3)) > 0
