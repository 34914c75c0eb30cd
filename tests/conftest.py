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
is the executable a compile would have made. jax writes an entry without a lock, so a
process may find one another is still writing: it warns ("Error reading persistent
compilation cache entry"), then compiles as it would without a cache. Those warnings are
ignored, here and in every process the tests start (``PYTHONWARNINGS``), so that no checked
stderr holds one; every other warning stays.
"""

import os
import shutil
import tempfile

import pytest

TEST_XLA_FLAGS = "--xla_backend_optimization_level=0"
CACHE = "JAX_COMPILATION_CACHE_DIR"
saved_env_key = pytest.StashKey[dict[str, str | None]]()  # before the cache
# What jax warns when an entry cannot be read (another process is still writing it) or
# written; either way it compiles as without a cache.
CACHE_WARNINGS = ("Error reading persistent compilation cache entry",
                  "Error writing persistent compilation cache entry")


def pytest_configure(config):
  # The cases of _multidevice_checks.py that test_multiprocess.py runs on two processes.
  config.addinivalue_line("markers", "across_processes: run across two processes too")
  if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {TEST_XLA_FLAGS}".strip()
  # The first process of the session (xdist's controller) makes it; the others inherit it.
  if CACHE not in os.environ:
    cache_env = {CACHE: tempfile.mkdtemp(prefix="jax-cache-"),
                 "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
                 "PYTHONWARNINGS": ",".join(filter(None, [
                     os.environ.get("PYTHONWARNINGS"),
                     *(f"ignore:{m}" for m in CACHE_WARNINGS)]))}
    config.stash[saved_env_key] = {name: os.environ.get(name) for name in cache_env}
    os.environ.update(cache_env)
  for message in CACHE_WARNINGS:  # in every process: the warnings of the tests themselves
    config.addinivalue_line("filterwarnings", f"ignore:{message}")


def pytest_unconfigure(config):
  """Removes the session's cache and gives the environment back as it was."""
  if saved_env_key in config.stash:
    shutil.rmtree(os.environ[CACHE], ignore_errors=True)
    for name, value in config.stash[saved_env_key].items():
      if value is None:
        os.environ.pop(name, None)
      else:
        os.environ[name] = value
