"""The README's quick start runs and trains: ``python -m examples.quickstart --steps 100``."""

import re

from tests import commands


def test_quickstart_trains():
  proc = commands.run(commands.python("-m", "examples.quickstart", "--steps", "100"),
                      env=commands.cpu_env())
  assert proc.returncode == 0, proc.stdout + proc.stderr
  final = re.fullmatch(r"final loss (\S+)", proc.stdout.splitlines()[-1])
  assert final and float(final[1]) < 0.5, proc.stdout
