"""Test-session setup: ``examples/`` on ``sys.path`` (``import paper``) and fast XLA compiles.

The suite compiles hundreds of small programs and runs each for a few steps, so LLVM's
optimisation of the generated CPU code costs more than it saves (about half of the suite's
time). ``--xla_backend_optimization_level=0`` turns it off for the tests only; XLA's HLO
passes (fusion, SPMD partitioning) still run, so the HLO the tests inspect is unchanged.
Subprocesses inherit it through the environment.
"""

import os
import sys
from pathlib import Path

TEST_XLA_FLAGS = "--xla_backend_optimization_level=0"
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {TEST_XLA_FLAGS}".strip()

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
if str(EXAMPLES) not in sys.path:
  sys.path.insert(0, str(EXAMPLES))
