"""``python -m examples.train_mesh`` on 8 simulated CPU devices in one process, its usage
errors and its step comparison.

The command sets the CPU device count itself before jax starts a backend, so it runs in a
subprocess; the rest of the suite keeps its single device. Tiny run: 3 iterations, global
batch 16, random images, float64 (the trajectories are judged there). The multi-process
runs are in ``test_multiprocess.py``.
"""

import json

import numpy as np

from tests import commands

ITERS = 3


def test_dp_and_fsdp_match_one_device_float64(tmp_path):
  proc = commands.run(commands.python(
      "-m", "examples.train_mesh", "--devices", "8", "--mode", "both", "--iters", str(ITERS),
      "--batch", "16", "--synthetic", "--x64", "--json", str(tmp_path / "mesh.json")),
      env=commands.cpu_env(optimized=True))
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


USAGE_ERRORS = [
    (["--devices", "8", "--batch", "12"], "does not split over 8 devices"),
    (["--methods", "sgd,foo"], "unknown method"),
    (["--devices", "8", "--processes", "3"], "do not split over 3 processes"),
    (["--iters", "0"], "must be at least 1"),
    (["--step-tol", "-1"], "--step-tol must be > 0"),
    (["--processes", "2", "--process-id", "2", "--coordinator", "h:1"], "--process-id must"),
    # The launcher's options (experiments/processes.py; their faults: test_launcher_faults).
    (["--processes", "2", "--port", "70000"], "argument --port: 70000 is not in 1..65535"),
    (["--processes", "2", "--port", "0"], "argument --port: 0 is not in 1..65535"),
    (["--processes", "2", "--fail-process", "2"], "--fail-process must be in 0..1"),
    (["--processes", "2", "--fail-process", "-1"], "--fail-process: -1 must be at least 0"),
    (["--processes", "2", "--process-id", "0", "--coordinator", "host"], "is not HOST:PORT"),
    (["--processes", "2", "--process-id", "0", "--coordinator", "h:65536"], "not in 1..65535"),
    (["--processes", "2", "--process-id", "1", "--coordinator", "h:1", "--port", "5"],
     "--port is for the launcher"),
    (["--json", "/proc/no/such/folder/x.json"], "cannot write --json /proc/no/such/folder"),
]


def test_usage_errors(tmp_path):
  """Each bad input ends ``python -m examples.train_mesh`` with exit status 2 and one line."""
  cases = [*USAGE_ERRORS, (["--json", str(tmp_path)], f"cannot write --json {tmp_path} (a folder)")]
  results = commands.run_each("examples.train_mesh", [args for args, _ in cases])
  for (args, message), (code, err) in zip(cases, results, strict=True):
    assert code == 2, (args, err)
    assert message in err and len(err.strip().splitlines()) == 1, (args, err)
