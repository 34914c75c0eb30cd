"""Test-session setup: fast XLA compiles, and each program compiled once per session.

The suite compiles hundreds of small programs and runs each for a few steps, so LLVM's
optimisation of the generated CPU code costs more than it saves (about half of the suite's
time). ``--xla_backend_optimization_level=0`` turns it off for the tests only; XLA's HLO
passes (fusion, SPMD partitioning) still run, so the HLO the tests inspect is unchanged.

The same steps (LeNet's, the transformer's) are compiled again in dozens of processes: the
pytest workers and the commands and launchers the tests start. One persistent compilation
cache for the session (``JAX_COMPILATION_CACHE_DIR``, every compile cached however short)
compiles each once; it starts empty and is removed when the session ends, so no result
depends on an earlier run. Its key is the program with every flag that changes it, so a hit
is the executable a compile would have made. A size limit turns on jax's file lock around
every read and write of the cache (``filelock``, in the test extra): without it a process
could read an entry another is still writing, and warn on its stderr. Without ``filelock``
there is no cache.

Both are set when pytest configures the session, before any test starts a backend or a
worker; the workers and subprocesses inherit them through the environment. The harness is
imported from the repository root (``pythonpath = ["."]`` in pyproject.toml), e.g.
``from experiments import engine``.
"""

import importlib.util
import os
import shutil
import tempfile

import pytest

TEST_XLA_FLAGS = "--xla_backend_optimization_level=0"
CACHE = "JAX_COMPILATION_CACHE_DIR"
cache_key = pytest.StashKey[str]()


def pytest_configure(config):
  # The cases of _multidevice_checks.py that test_multiprocess.py runs on two processes.
  config.addinivalue_line("markers", "across_processes: run across two processes too")
  if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {TEST_XLA_FLAGS}".strip()
  # The first process of the session (xdist's controller) makes it; the others inherit it.
  if CACHE not in os.environ and importlib.util.find_spec("filelock"):
    config.stash[cache_key] = os.environ[CACHE] = tempfile.mkdtemp(prefix="jax-cache-")
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    os.environ["JAX_COMPILATION_CACHE_MAX_SIZE"] = str(2**34)  # a limit: the file lock


def pytest_unconfigure(config):
  if cache_key in config.stash:
    shutil.rmtree(config.stash[cache_key], ignore_errors=True)
    for name in (CACHE, "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS",
                 "JAX_COMPILATION_CACHE_MAX_SIZE"):
      del os.environ[name]

