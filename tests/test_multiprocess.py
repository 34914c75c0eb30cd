"""JAX's multi-controller runtime on one machine: 2 processes of 4 simulated CPU devices each
(8 global, a coordinator on 127.0.0.1, gloo collectives).

* ``python -m examples.train_mesh --processes 2`` (the launcher) trains LeNet FSDP (batch,
  parameters and optimizer state split over the 8 devices of both processes) with the
  layer-wise AdaGrad (its history is the state most sensitive to the order of the sums) in
  float64: each step from the mesh's state, and the free-running loss curves, within 1e-10
  (relative) of one device's. FSDP splits the batch as data parallel does, so the gradient
  mean across processes is in it; data parallel itself (replicated state) and the layer-wise
  SGD are test_train_mesh's (one process, float64).
* The multi-host recipe of docs/scale_out.md, its two commands started by hand (Nesterov,
  FSDP, float64): process 0's report holds the report only (the runtime's own messages go to
  stderr) and agrees with one device to 1e-10.
* The sharding checks of ``_multidevice_checks.py`` across the two processes: jit with
  tensor-parallel and FSDP layouts on a 2-D mesh, and shard_map with ``axis_name``.

The faults (a dead process, signals, a missing coordinator, bad options) are in
``test_launcher_faults.py``. Runs are tiny (2 iterations, global batch 16, random images):
the compilations in both processes are most of their time.
"""

import json
import re
import shlex
import subprocess

import numpy as np

from experiments import processes
from tests import commands

ITERS = 2
METHODS = ("adagrad+layer",)
X64_TOL = 1e-10
ACROSS_PROCESSES = 6  # the cases of _multidevice_checks.py marked across_processes
# Lines of the runtime's own logging: gloo's, and absl/glog's ("I1206 07:00:35.97 123 f.cc:9]").
RUNTIME_LINE = re.compile(r"\[Gloo\]|^[IWEF]\d{4} \d\d:\d\d:\d\d", re.MULTILINE)


def test_launcher_matches_one_device_in_float64(tmp_path):
  proc = commands.run(commands.python(
      "-m", "examples.train_mesh", "--devices", "8", "--processes", "2", "--batch", "16",
      "--synthetic", "--iters", str(ITERS), "--x64", "--mode", "fsdp", "--methods",
      ",".join(METHODS), "--json", str(tmp_path / "mesh.json")),
      env=commands.cpu_env(optimized=True))
  assert proc.returncode == 0, proc.stdout + proc.stderr
  assert "float64" in proc.stdout and "mesh of 8 cpu devices in 2 process(es)" in proc.stdout
  assert not RUNTIME_LINE.search(proc.stdout + proc.stderr), proc.stdout + proc.stderr
  runs = json.loads((tmp_path / "mesh.json").read_text())["runs"]
  assert [(r["method"], r["mode"]) for r in runs] == [(method, "fsdp") for method in METHODS]
  for run in runs:
    assert run["kept"], run  # parameters and optimizer state kept their shardings
    assert max(run["step"].values()) <= X64_TOL, run  # each step from the mesh's state
    assert len(run["loss_mesh"]) == ITERS
    np.testing.assert_allclose(run["loss_mesh"], run["loss_one_device"], rtol=X64_TOL)
  assert runs[-1]["split"] == "ip1/kernel P('data', None)"  # FSDP split the largest array


def recipe() -> list[str]:
  """The per-process commands of docs/scale_out.md's multi-host recipe."""
  text = (commands.ROOT / "docs" / "scale_out.md").read_text()
  return [line for line in text.splitlines()
          if line.startswith("python -m examples.train_mesh") and "--process-id" in line]


def test_processes_started_by_hand_as_the_docs_say():
  lines = recipe()
  assert [re.search(r"--process-id (\d)", line).group(1) for line in lines] == ["0", "1"]
  port = str(processes.free_port())
  procs = [subprocess.Popen(
      commands.python(*shlex.split(line.replace("PORT", port))[1:]), cwd=commands.ROOT,
      env=commands.cpu_env(optimized=True), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
      text=True)
      for line in reversed(lines)]  # process 1 first: it waits for the coordinator
  try:
    outputs = [proc.communicate(timeout=commands.limit()) for proc in procs]
  except subprocess.TimeoutExpired:
    commands.timed_out(lines)
  finally:
    for proc in procs:
      proc.kill()
  (out1, err1), (out0, err0) = outputs
  assert [proc.returncode for proc in procs] == [0, 0], err1 + err0
  assert out1 == ""  # process 0 reports
  assert "mesh of 8 cpu devices in 2 process(es)" in out0 and "float64" in out0, out0
  assert not RUNTIME_LINE.search(out0), out0  # the report only
  differences = re.search(r"max \|loss difference\| over \d+ iterations: \S+ \(relative "
                          r"(\S+)\)", out0)
  assert differences and float(differences.group(1)) <= X64_TOL, out0


def test_sharding_checks_across_two_processes():
  """_multidevice_checks.py's tensor-parallel, 2-D mesh and shard_map + axis_name cases, in
  two pytest processes that join one runtime (``MULTIDEVICE_*`` variables)."""
  port = str(processes.free_port())
  argv = commands.python("-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
                         "tests/_multidevice_checks.py", "-m", "across_processes")
  procs = [subprocess.Popen(
      argv, cwd=commands.ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
      env=commands.cpu_env(MULTIDEVICE_PROCESS_ID=str(i), MULTIDEVICE_PROCESSES="2",
                           MULTIDEVICE_COORDINATOR=f"127.0.0.1:{port}"))
      for i in range(2)]
  try:
    outputs = [proc.communicate(timeout=commands.limit())[0] for proc in procs]
  except subprocess.TimeoutExpired:
    commands.timed_out(argv)
  finally:
    for proc in procs:
      proc.kill()
  for proc, out in zip(procs, outputs):
    assert proc.returncode == 0, out
    assert "fewer than 8 devices" not in out, out  # a skipped module must not pass
    passed = re.search(r"(\d+) passed", out)
    assert passed and int(passed.group(1)) == ACROSS_PROCESSES, out

