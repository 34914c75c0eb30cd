"""JAX's multi-controller runtime on one machine: ``python -m examples.train_mesh
--processes 2`` starts 2 processes of 4 simulated CPU devices each (8 global, a coordinator
on 127.0.0.1, gloo collectives) and trains LeNet data parallel and FSDP with the layer-wise
SGD, Nesterov and AdaGrad; and faults end the run with one line, never a hang.

One launch runs every method and layout (3 iterations, global batch 16, random images):
LeNet's compilations in both processes are most of its time.
"""

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]

ITERS = 3
METHODS = ("sgd+layer", "nag+layer", "adagrad+layer")
SMALL = ("--devices", "8", "--processes", "2", "--batch", "16", "--synthetic",
         "--print-every", "1", "--iters", str(ITERS))


def run_command(*args, timeout):
  env = dict(os.environ, JAX_PLATFORMS="cpu")  # conftest's XLA flags pass through
  return subprocess.run([sys.executable, "-m", "examples.train_mesh", *args], cwd=ROOT,
                        env=env, capture_output=True, text=True, timeout=timeout)


def one_error_line(proc):
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1, proc.stdout + proc.stderr
  return lines[0]


def test_two_processes_match_one_device(tmp_path):
  proc = run_command(*SMALL, "--mode", "both", "--methods", ",".join(METHODS), "--tol", "1e-4",
                     "--json", str(tmp_path / "mesh.json"), timeout=300)
  out = proc.stdout + proc.stderr
  assert proc.returncode == 0, out
  assert "mesh of 8 cpu devices in 2 process(es)" in out, out
  assert "[Gloo]" not in out, out
  runs = json.loads((tmp_path / "mesh.json").read_text())["runs"]
  assert [(r["method"], r["mode"]) for r in runs] == [
      (method, mode) for method in METHODS for mode in ("dp", "fsdp")]
  for run in runs:
    assert run["kept"], run  # parameters and optimizer state kept their shardings
    assert max(run["step"].values()) <= 1e-4, run  # each step from the mesh's state
    assert len(run["loss_mesh"]) == ITERS
    np.testing.assert_allclose(run["loss_mesh"], run["loss_one_device"], rtol=1e-4)


def test_a_dead_process_stops_the_others():
  start = time.monotonic()
  proc = run_command(*SMALL, "--mode", "dp", "--fail-process", "1", "--timeout", "10",
                     timeout=120)
  assert proc.returncode == 1
  line = one_error_line(proc)
  assert re.fullmatch(r"train_mesh: process 1 of 2 was killed by SIGKILL; stopped the "
                      r"other processes \(logs: \S+\)", line), line
  assert time.monotonic() - start < 90


@pytest.fixture
def busy_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    s.listen()
    yield s.getsockname()[1]


def test_port_in_use(busy_port):
  proc = run_command(*SMALL, "--port", str(busy_port), timeout=60)
  assert proc.returncode == 1
  assert one_error_line(proc) == (f"train_mesh: port {busy_port} on 127.0.0.1 is in use; "
                                  "pass another --port, or none for a free one")
  # Process 0 started by hand (as on a real host) on the busy port.
  proc = run_command(*SMALL, "--process-id", "0", "--coordinator", f"127.0.0.1:{busy_port}",
                     "--timeout", "5", timeout=60)
  assert proc.returncode == 1
  assert one_error_line(proc) == (f"train_mesh: process 0 of 2: the coordinator port "
                                  f"127.0.0.1:{busy_port} is in use; pass another port")
