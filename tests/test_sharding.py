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

from tests import commands

CHECKS = "tests/_multidevice_checks.py"  # relative to the repository root, the subprocess's


def test_multidevice_checks():
  flags = os.environ.get("XLA_FLAGS", "")
  # Simulated devices exist on the CPU backend only.
  env = commands.cpu_env(XLA_FLAGS=f"{flags} --xla_force_host_platform_device_count=8".strip())
  proc = commands.run(commands.python("-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
                                      CHECKS), env=env)
  out = proc.stdout + proc.stderr
  assert proc.returncode == 0, out
  assert "fewer than 8 devices" not in out, out  # a skipped module must not pass silently
  passed = re.search(r"(\d+) passed", out)
  assert passed and int(passed.group(1)) >= 14, out
