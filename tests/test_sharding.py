"""Scale-out on 8 simulated CPU devices: jit over a mesh (FSDP, tensor and data parallel),
shard_map and pmap with sharded parameters, with and without ``axis_name``.

jax fixes its device count when it starts, so the checks in ``_multidevice_checks.py`` run
in one pytest subprocess at the repository root with
``XLA_FLAGS=--xla_force_host_platform_device_count=8`` (it imports ``tests.reference`` the
way every test does, through pytest's ``pythonpath``); the rest of the suite keeps its single
device.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHECKS = "tests/_multidevice_checks.py"  # relative to ROOT, the subprocess's folder


def test_multidevice_checks():
  env = dict(os.environ)
  flags = env.get("XLA_FLAGS", "")
  env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count=8".strip()
  env["JAX_PLATFORMS"] = "cpu"  # simulated devices exist on the CPU backend only
  proc = subprocess.run(
      [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", CHECKS],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
  out = proc.stdout + proc.stderr
  assert proc.returncode == 0, out
  assert "fewer than 8 devices" not in out, out  # a skipped module must not pass silently
  passed = re.search(r"(\d+) passed", out)
  assert passed and int(passed.group(1)) >= 14, out
