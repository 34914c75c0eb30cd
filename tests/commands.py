"""Commands the tests run in subprocesses, with limits for a much slower machine.

A test never judges how long a command took: a machine busy with other work can be many
times slower. It only needs a limit so that a hung command fails instead of hanging the
suite, and that limit is generous: ``LAYERWISE_TEST_TIMEOUT`` seconds (default 1800, about
ten times what the slowest command takes on a loaded 2-core machine), for each command.
Hitting it fails the test with one message naming the command and its output so far.
"""

from __future__ import annotations

import json
import os
import queue
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LIMIT_VARIABLE = "LAYERWISE_TEST_TIMEOUT"
DEFAULT_LIMIT = 1800.0


def limit() -> float:
  """Seconds a command may take: ``$LAYERWISE_TEST_TIMEOUT``, default 1800."""
  return float(os.environ.get(LIMIT_VARIABLE, DEFAULT_LIMIT))


def python(*args: str) -> list[str]:
  """The argv of ``python *args`` with this interpreter."""
  return [sys.executable, *args]


def cpu_env(optimized: bool = False, **extra: str) -> dict[str, str]:
  """The environment on the CPU backend, with ``extra`` variables. conftest's XLA flags pass
  through unless ``optimized``: float64 training runs faster with LLVM's optimisation than
  the compile time it costs."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", **extra)
  if optimized:
    env["XLA_FLAGS"] = " ".join(flag for flag in env.get("XLA_FLAGS", "").split()
                                if not flag.startswith("--xla_backend_optimization_level"))
  return env


def timed_out(argv, *outputs: str | bytes | None) -> None:
  """Fails the test: ``argv`` ran past the limit; ``outputs`` are what it wrote so far."""
  text = "".join(out.decode(errors="replace") if isinstance(out, bytes) else out or ""
                 for out in outputs)
  pytest.fail(f"`{shlex.join(map(str, argv))}` did not finish within {limit():g} s (the "
              f"limit; set {LIMIT_VARIABLE} for more); its output so far:\n{text}",
              pytrace=False)


def run(argv, *, env=None, cwd=ROOT) -> subprocess.CompletedProcess:
  """Runs ``argv`` in ``cwd`` (the repository root), output captured as text, within the
  limit."""
  try:
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=limit())
  except subprocess.TimeoutExpired as e:
    timed_out(argv, e.stdout, e.stderr)
    raise  # not reached


# Runs a module as ``python -m`` does, once per argv, in one interpreter (so jax is imported
# once); prints a JSON list of [exit status, stderr] after a marker line.
RUN_EACH = """
import contextlib, io, json, runpy, sys, traceback
module, results = sys.argv[1], []
for argv in json.loads(sys.argv[2]):
  sys.argv, err, code = [module, *argv], io.StringIO(), 0
  with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
    try:
      runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as e:
      code = e.code
    except BaseException:
      traceback.print_exc()
      code = None
  results.append([code, err.getvalue()])
print("RUN_EACH_RESULTS", json.dumps(results), sep="\\n")
"""


def run_each(module: str, argvs: list[list[str]], env=None) -> list[tuple[int | None, str]]:
  """(exit status, stderr) of ``python -m module *argv`` for each argv (None: an uncaught
  exception, its traceback in stderr). One subprocess runs them all, each as ``python -m``
  would (``runpy``), so a list of bad inputs costs one import of jax."""
  argv = python("-c", RUN_EACH, module, json.dumps(argvs))
  proc = run(argv, env=env)
  _, marker, results = proc.stdout.rpartition("RUN_EACH_RESULTS\n")
  assert proc.returncode == 0 and marker, proc.stdout + proc.stderr
  return [(code, err) for code, err in json.loads(results)]


def wait(proc: subprocess.Popen) -> int:
  """``proc``'s exit status, within the limit (then it is killed and the test fails)."""
  try:
    return proc.wait(limit())
  except subprocess.TimeoutExpired:
    proc.kill()
    proc.wait()
    timed_out(proc.args)
    raise  # not reached


def poll_until(probe, what: str, interval: float = 0.1):
  """``probe()``'s first value that is not None, asked every ``interval`` s; fails the test
  if none comes within the limit."""
  deadline = time.monotonic() + limit()
  while (value := probe()) is None:
    if time.monotonic() > deadline:
      pytest.fail(f"{what} did not come within {limit():g} s (the limit; set "
                  f"{LIMIT_VARIABLE} for more)", pytrace=False)
    time.sleep(interval)
  return value


class Lines:
  """The lines of a text stream, read by a thread, so a test can wait for one."""

  def __init__(self, stream):
    self.seen: list[str] = []
    self._queue: queue.Queue[str | None] = queue.Queue()
    threading.Thread(target=self._read, args=(stream,), daemon=True).start()

  def _read(self, stream) -> None:
    for line in stream:
      self._queue.put(line)
    self._queue.put(None)

  def wait_for(self, text: str, argv) -> str:
    """The first line containing ``text``; fails the test if the stream ends first or the
    limit passes."""
    while True:
      try:
        line = self._queue.get(timeout=limit())
      except queue.Empty:
        timed_out(argv, "".join(self.seen))
        raise  # not reached
      if line is None:
        pytest.fail(f"`{shlex.join(map(str, argv))}` ended its output without a line "
                    f"containing {text!r}:\n{''.join(self.seen)}", pytrace=False)
      self.seen.append(line)
      if text in line:
        return line


def children(pid: int) -> list[int]:
  """The process ids whose parent is ``pid`` (from /proc)."""
  found = []
  for entry in Path("/proc").iterdir():
    if entry.name.isdigit():
      try:
        stat = (entry / "stat").read_text()
      except OSError:  # gone meanwhile
        continue
      if int(stat.rpartition(")")[2].split()[1]) == pid:
        found.append(int(entry.name))
  return found


def ended_by(pid: int) -> int | None:
  """How a process ended: its wait status while a zombie (nobody reaped it), 0 once gone,
  None while it runs (fields of ``/proc/PID/stat``: state, ..., exit_code last)."""
  try:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
  except OSError:
    return 0
  return int(fields[-1]) if fields[0] in "ZX" else None


needs_proc = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
