"""examples/train_mesh.py on 8 simulated CPU devices: LeNet data parallel and FSDP give the
loss curve of one device for the same global batch.

The example sets ``XLA_FLAGS=--xla_force_host_platform_device_count=8`` itself, before jax
starts, so it runs in a subprocess; the rest of the suite keeps its single device. Tiny run:
4 iterations, global batch 16, random images (no dataset needed). Three LeNet compilations
(one device, dp, fsdp) are most of its time.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ITERS = 4


def test_train_mesh_dp_and_fsdp_match_one_device():
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  # The example sets the device count itself; other flags (conftest's) pass through.
  env["XLA_FLAGS"] = " ".join(f for f in env.get("XLA_FLAGS", "").split()
                              if "device_count" not in f)
  proc = subprocess.run(
      [sys.executable, str(ROOT / "examples" / "train_mesh.py"), "--devices", "8",
       "--mode", "both", "--iters", str(ITERS), "--batch", "16", "--synthetic",
       "--print-every", "1", "--tol", "1e-5"],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  out = proc.stdout + proc.stderr
  assert proc.returncode == 0, out
  for mode in ("dp", "fsdp"):
    assert f"{mode} on 8 devices" in out, out
  assert out.count("parameter shardings kept: True; optimizer state sharded like its "
                   "parameter: True") == 2, out
  assert "ip1/kernel P('data', None)" in out, out  # fsdp really split the largest array
  # One row per iteration and mode: iteration, loss on one device, loss on the mesh, |diff|.
  rows = re.findall(r"^\s+(\d+)\s+([\d.]+)\s+([\d.]+)\s+([\d.e+-]+)$", out, re.M)
  assert len(rows) == 2 * ITERS, out
  for _, ref, mesh, diff in rows:
    assert abs(float(ref) - float(mesh)) <= 1e-5 * float(ref) + 1e-6, out
    assert float(diff) <= 1e-5, out
  maxima = re.findall(r"max \|loss difference\| over \d+ iterations: (\S+)", out)
  assert len(maxima) == 2 and all(float(m) <= 1e-5 for m in maxima), out

