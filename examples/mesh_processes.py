"""One command on several processes of JAX's multi-controller runtime, on one host or many.

``examples/train_mesh.py --processes P`` runs its mesh over P processes (``jax.distributed``:
a coordinator at process 0's address, gloo collectives between CPU devices):

* :func:`launch` starts the P processes of the command on 127.0.0.1 (a free coordinator
  port unless ``--port`` names one), forwards process 0's report to stdout, keeps every
  process's stderr in a log file, and stops the others when one fails, ending with one
  line that names the process and the cause (its own last message, else its exit status
  or signal). Logs are kept only when something fails.
* :func:`join` is each process's start: it joins the coordinator at ``--coordinator``
  within ``--timeout`` seconds (also the heartbeat and shutdown timeouts, so a silent
  process counts as dead after that long), and fails with one line if it cannot.
* :func:`fault_drill` (``--fail-process I``): process I kills itself (SIGKILL) after its
  first step, to check that the others stop with one line instead of hanging.

On several hosts each host runs one process with ``--process-id I --coordinator HOST0:PORT``
(see docs/scale_out.md).

Every failure raises :class:`ProcessError` with a one-line message, for the command to
print.
"""

from __future__ import annotations

import argparse
import errno
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import jax

from experiments import cli

LOCALHOST = "127.0.0.1"


class ProcessError(RuntimeError):
  """A process could not start, join the coordinator or finish; the message is one line."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
  """The options of several processes: --processes, --timeout, --port, --process-id,
  --coordinator and --fail-process."""
  parser.add_argument("--processes", type=cli.positive_int, default=1,
                      help="run the mesh over P processes of N/P devices each")
  parser.add_argument("--timeout", type=cli.positive_int, default=60,
                      help="seconds to wait for the other processes to join, or for a silent "
                           "one before it counts as dead")
  parser.add_argument("--port", type=cli.positive_int, default=None,
                      help=f"coordinator port on {LOCALHOST} for --processes (default: a free "
                           "one)")
  parser.add_argument("--process-id", type=int, default=None,
                      help="run only process I of --processes (one per host; with "
                           "--coordinator)")
  parser.add_argument("--coordinator", default=None, help="HOST:PORT of process 0")
  parser.add_argument("--fail-process", type=int, default=None,
                      help="fault drill: process I kills itself (SIGKILL) after its first step")


def check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
  """Usage errors of those options, through ``parser.error``."""
  if args.process_id is not None and not 0 <= args.process_id < args.processes:
    parser.error(f"--process-id must be in 0..{args.processes - 1}")
  if (args.process_id is None) != (args.coordinator is None) and args.processes > 1:
    parser.error("--process-id and --coordinator go together")


def launches(args: argparse.Namespace) -> bool:
  """Whether this invocation starts the processes rather than being one of them."""
  return args.processes > 1 and args.process_id is None


# --- the launcher -----------------------------------------------------------------------

def free_port() -> int:
  with socket.socket() as s:
    s.bind((LOCALHOST, 0))
    return s.getsockname()[1]


def port_in_use(port: int, host: str = LOCALHOST) -> bool:
  with socket.socket() as s:
    try:
      s.bind((host, port))
    except OSError as e:
      return e.errno == errno.EADDRINUSE  # not e.g. a host name of another machine
  return False


def exit_reason(code: int) -> str:
  if code < 0:
    return f"was killed by {signal.Signals(-code).name}"
  return f"exited with status {code}"


def last_error_line(log: str, prog: str) -> str | None:
  """The one-line message (``prog: ...``) a process wrote last, if any."""
  with open(log, errors="replace") as f:
    lines = [line.strip() for line in f if line.startswith(f"{prog}:")]
  return lines[-1] if lines else None


def forward_report(stream) -> None:
  """Process 0's stdout to ours, without gloo's connection messages."""
  for line in stream:
    if not line.startswith("[Gloo]"):
      sys.stdout.write(line)
      sys.stdout.flush()


def stop(procs: list[subprocess.Popen], grace: float = 5.0) -> None:
  for proc in procs:
    if proc.poll() is None:
      proc.terminate()
  deadline = time.monotonic() + grace
  for proc in procs:
    try:
      proc.wait(max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
      proc.kill()
      proc.wait()


def launch(module: str, prog: str, argv: list[str], args: argparse.Namespace) -> int:
  """Starts ``args.processes`` copies of ``python -m module *argv`` on 127.0.0.1, each with
  its ``--process-id`` and the ``--coordinator``, and waits for them; 0 when all succeed.

  Process 0's report goes to stdout; every process's stderr (and the others' stdout) goes to
  a log file, kept only if something fails. The first process to fail stops the others.
  """
  port = args.port or free_port()
  if port_in_use(port):
    raise ProcessError(f"port {port} on {LOCALHOST} is in use; pass another --port, or none "
                       "for a free one")
  logs = tempfile.mkdtemp(prefix=f"{prog}-")
  procs, paths = [], []
  signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))  # stop them too
  try:
    for i in range(args.processes):
      paths.append(os.path.join(logs, f"process{i}.log"))
      with open(paths[-1], "w") as log:
        procs.append(subprocess.Popen(
            [sys.executable, "-m", module, *argv, "--process-id", str(i),
             "--coordinator", f"{LOCALHOST}:{port}"],
            stdout=subprocess.PIPE if i == 0 else log, stderr=log, text=True))
    report = threading.Thread(target=forward_report, args=(procs[0].stdout,))
    report.start()
    while (codes := [proc.poll() for proc in procs]).count(0) < len(procs):
      # A process killed by a signal is the cause; the others fail because it is gone.
      failed = sorted((code >= 0, i) for i, code in enumerate(codes) if code not in (None, 0))
      if failed:
        i = failed[0][1]
        stop(procs)
        report.join(5)
        message = last_error_line(paths[i], prog) or (
            f"{prog}: process {i} of {args.processes} {exit_reason(codes[i])}")
        raise ProcessError(f"{message.removeprefix(f'{prog}: ')}; stopped the other "
                           f"processes (logs: {logs})")
      time.sleep(0.1)
    report.join()
    shutil.rmtree(logs, ignore_errors=True)
    return 0
  finally:
    stop(procs)


# --- each process -----------------------------------------------------------------------

def join(args: argparse.Namespace) -> None:
  """Joins the coordinator at ``args.coordinator`` as process ``args.process_id`` (gloo
  collectives between CPU devices); call before jax starts a backend."""
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  where = f"process {args.process_id} of {args.processes}"
  host, _, port = args.coordinator.rpartition(":")
  # Checked first: jaxlib's coordinator can crash (SIGSEGV) instead of raising on a busy port.
  if args.process_id == 0 and port.isdigit() and port_in_use(int(port), host):
    raise ProcessError(f"{where}: the coordinator port {args.coordinator} is in use; pass "
                       "another port")
  try:
    jax.distributed.initialize(
        coordinator_address=args.coordinator, num_processes=args.processes,
        process_id=args.process_id, initialization_timeout=args.timeout,
        heartbeat_timeout_seconds=args.timeout, shutdown_timeout_seconds=args.timeout,
        # On one machine listen on the loopback address only; else jax's default, all.
        coordinator_bind_address=args.coordinator if host == LOCALHOST else None)
  except Exception as e:  # noqa: BLE001 - the runtime raises several kinds
    reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise ProcessError(f"{where} could not start or join the coordinator at "
                       f"{args.coordinator} ({reason}); is its port free and process 0 "
                       "running?") from None


def fault_drill(args: argparse.Namespace) -> None:
  """Kills this process (SIGKILL, no clean-up) if it is the ``--fail-process``."""
  if args.fail_process == jax.process_index():
    os.kill(os.getpid(), signal.SIGKILL)
