"""Test-session setup: fast XLA compiles.

The suite compiles hundreds of small programs and runs each for a few steps, so LLVM's
optimisation of the generated CPU code costs more than it saves (about half of the suite's
time). ``--xla_backend_optimization_level=0`` turns it off for the tests only; XLA's HLO
passes (fusion, SPMD partitioning) still run, so the HLO the tests inspect is unchanged.
Set when pytest configures the session, before any test starts a backend; subprocesses
inherit it through the environment. The harness is imported from the repository root
(``pythonpath = ["."]`` in pyproject.toml), e.g. ``from experiments import engine``.
"""

import os

TEST_XLA_FLAGS = "--xla_backend_optimization_level=0"


def pytest_configure(config):
  # The cases of _multidevice_checks.py that test_multiprocess.py runs on two processes.
  config.addinivalue_line("markers", "across_processes: run across two processes too")
  if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {TEST_XLA_FLAGS}".strip()
