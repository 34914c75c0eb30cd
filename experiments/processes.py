"""One command on several processes of JAX's multi-controller runtime, on one host or many.

``python -m examples.train_mesh --processes P`` runs its mesh over P processes (``jax.distributed``:
a coordinator at process 0's address, gloo collectives between CPU devices):

* :func:`launch` starts the P processes of the command on 127.0.0.1 (a free coordinator
  port unless ``--port`` names one), forwards process 0's report to stdout, keeps every
  process's stderr in a log file, and stops the others when one fails, ending with one
  line that names the process and the cause (its own last message, else its exit status
  or signal). Logs are kept only when something fails. SIGTERM or SIGINT (Ctrl-C) to the
  launcher stops the processes too, with one line; the processes die with the launcher
  even when it is killed outright (SIGKILL), through a parent-death signal.
* :func:`join` is each process's start: a :func:`rendezvous` on the coordinator's port
  (plain TCP: process 0 listens, the others connect and wait until all P are there), then
  ``jax.distributed.initialize``. Every wait is bounded by ``--timeout`` seconds (also the
  runtime's heartbeat and shutdown timeouts, so a silent process counts as dead after that
  long); a coordinator or peer that never appears ends the process with one line, where
  the runtime itself would abort with a C++ stack trace.
* :func:`separate_report` keeps the runtime's own output (gloo's connection messages, which
  its C++ code writes to the process's stdout) out of the report: from then on, stdout is
  the report only, and the runtime writes to stderr.
* :func:`fault_drill` (``--fail-process I``): process I kills itself (SIGKILL) after its
  first step, to check that the others stop with one line instead of hanging.

On several hosts each host runs one process with ``--process-id I --coordinator HOST0:PORT``
(see docs/scale_out.md).

Every failure raises :class:`ProcessError` with a one-line message, for the command to
print; a signal to the launcher raises :class:`experiments.cli.Interrupted`.
"""

from __future__ import annotations

import argparse
import ctypes
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
LAUNCHER_PID = "MESH_PROCESSES_LAUNCHER_PID"  # set in the environment of launched processes
HELLO = "mesh-processes"  # the first word of a rendezvous greeting


class ProcessError(RuntimeError):
  """A process could not start, join the coordinator or finish; the message is one line."""

  status = 1  # the command's exit status


# --- options ----------------------------------------------------------------------------

def int_in(low: int, high: int | None = None):
  """argparse type: an integer in ``low..high`` (no upper bound if None)."""
  def parse(text: str) -> int:
    try:
      value = int(text)
    except ValueError:
      raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if high is not None and not low <= value <= high:
      raise argparse.ArgumentTypeError(f"{value} is not in {low}..{high}")
    if value < low:
      raise argparse.ArgumentTypeError(f"{value} must be at least {low}")
    return value
  return parse


port_number = int_in(1, 65535)
process_index = int_in(0)


def host_and_port(text: str) -> tuple[str, int]:
  """argparse type: ``HOST:PORT``."""
  host, colon, port = text.rpartition(":")
  if not (colon and host):
    raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT")
  return host, port_number(port)


def add_arguments(parser: argparse.ArgumentParser) -> None:
  """The options of several processes: --processes, --timeout, --port, --process-id,
  --coordinator and --fail-process."""
  parser.add_argument("--processes", type=cli.positive_int, default=1,
                      help="run the mesh over P processes of N/P devices each")
  parser.add_argument("--timeout", type=cli.positive_int, default=60,
                      help="seconds to wait for the other processes to join, or for a silent "
                           "one before it counts as dead")
  parser.add_argument("--port", type=port_number, default=None,
                      help=f"coordinator port on {LOCALHOST} for --processes (default: a free "
                           "one)")
  parser.add_argument("--process-id", type=process_index, default=None,
                      help="run only process I of --processes (one per host; with "
                           "--coordinator)")
  parser.add_argument("--coordinator", type=host_and_port, default=None,
                      help="HOST:PORT of process 0")
  parser.add_argument("--fail-process", type=process_index, default=None,
                      help="fault drill: process I kills itself (SIGKILL) after its first step")


def check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
  """Usage errors of those options, through ``parser.error``."""
  last = args.processes - 1
  if args.process_id is not None and args.process_id > last:
    parser.error(f"--process-id must be in 0..{last}")
  if args.fail_process is not None and args.fail_process > last:
    parser.error(f"--fail-process must be in 0..{last} (one of the --processes)")
  if (args.process_id is None) != (args.coordinator is None) and args.processes > 1:
    parser.error("--process-id and --coordinator go together")
  if args.port is not None and (args.processes == 1 or args.process_id is not None):
    parser.error("--port is for the launcher (--processes P without --process-id); "
                 "a process started by hand takes --coordinator HOST:PORT")


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
  """Process 0's stdout (its report only: :func:`separate_report`) to ours."""
  for line in stream:
    sys.stdout.write(line)
    sys.stdout.flush()


def stop(procs: list[subprocess.Popen], grace: float = 5.0) -> None:
  """SIGTERM to every running process, SIGKILL to those still running ``grace`` s later."""
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
  a log file, kept only if something fails. The first process to fail stops the others, and
  so does a signal to the launcher (:func:`experiments.cli.handle_signals` must be in
  place). The processes run in their own session, so a Ctrl-C reaches the launcher only,
  which stops them.
  """
  port = args.port or free_port()
  if port_in_use(port):
    raise ProcessError(f"port {port} on {LOCALHOST} is in use; pass another --port, or none "
                       "for a free one")
  logs = tempfile.mkdtemp(prefix=f"{prog}-")
  procs, paths = [], []
  env = dict(os.environ, **{LAUNCHER_PID: str(os.getpid())})
  try:
    for i in range(args.processes):
      paths.append(os.path.join(logs, f"process{i}.log"))
      with open(paths[-1], "w") as log:
        procs.append(subprocess.Popen(
            [sys.executable, "-m", module, *argv, "--process-id", str(i),
             "--coordinator", f"{LOCALHOST}:{port}"],
            stdout=subprocess.PIPE if i == 0 else log, stderr=log, text=True, env=env,
            start_new_session=True))
    report = threading.Thread(target=forward_report, args=(procs[0].stdout,), daemon=True)
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
  except cli.Interrupted as e:
    stop(procs)
    e.args = (f"{e}; stopped the {len(procs)} processes (logs: {logs})",)
    raise
  finally:
    stop(procs)


# --- each process -----------------------------------------------------------------------

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_launcher() -> None:
  """In a process the launcher started: die (SIGKILL) when the launcher does, however it
  ends (:func:`die_with_parent`)."""
  launcher = os.environ.pop(LAUNCHER_PID, None)
  if launcher is not None:
    die_with_parent(int(launcher))


def die_with_parent(parent: int) -> None:
  """Dies (SIGKILL) when process ``parent``, this one's parent, ends, however it ends (also
  by SIGKILL): Linux's parent-death signal (``prctl``) where there is one, else a thread
  that watches the parent's process id."""
  try:
    libc = ctypes.CDLL(None, use_errno=True)
    armed = libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
  except (OSError, AttributeError):  # not Linux
    armed = False
  gone = lambda: os.getppid() != parent
  if gone():  # it died before the signal was armed
    os.kill(os.getpid(), signal.SIGKILL)
  if not armed:
    def watch():
      while not gone():
        time.sleep(0.5)
      os.kill(os.getpid(), signal.SIGKILL)
    threading.Thread(target=watch, daemon=True).start()


def separate_report() -> None:
  """From now on ``sys.stdout`` is the process's stdout, and everything else written to file
  descriptor 1 (the runtime's C++ messages, e.g. gloo's) goes to stderr."""
  sys.stdout.flush()
  report = os.dup(1)
  os.dup2(2, 1)
  sys.stdout = open(report, "w", buffering=1, encoding=sys.stdout.encoding)  # noqa: SIM115


def receive_line(conn: socket.socket, deadline: float) -> str:
  """One line from ``conn`` (without the newline), '' if it closes first; by ``deadline``."""
  data = b""
  while not data.endswith(b"\n"):
    conn.settimeout(max(0.01, deadline - time.monotonic()))
    chunk = conn.recv(256)
    if not chunk:
      return ""
    data += chunk
  return data.decode(errors="replace").strip()


def rendezvous(process_id: int, processes: int, host: str, port: int, timeout: float) -> None:
  """Returns once all ``processes`` processes have met at ``host:port``, within ``timeout``
  seconds, else raises :class:`ProcessError`.

  Process 0 listens on the coordinator's port and, once every other process has connected
  and said who it is, answers each 'go' and frees the port for the runtime's coordinator.
  The others connect (retrying until process 0 listens) and wait for the 'go'.
  """
  where, address = f"process {process_id} of {processes}", f"{host}:{port}"
  deadline = time.monotonic() + timeout
  if process_id != 0:
    await_go(where, address, f"{HELLO} {process_id} {processes}\n", deadline, timeout)
    return
  try:  # on one machine the loopback address only; else all addresses, as jax listens
    server = socket.create_server(("" if host != LOCALHOST else host, port))
  except OSError as e:
    if e.errno == errno.EADDRINUSE:
      raise ProcessError(f"{where}: the coordinator port {address} is in use; pass "
                         "another port") from None
    raise ProcessError(f"{where}: cannot listen on {address} ({e.strerror})") from None
  peers: dict[int, socket.socket] = {}
  try:
    with server:
      while len(peers) < processes - 1:
        server.settimeout(max(0.01, deadline - time.monotonic()))
        try:
          conn, _ = server.accept()
          words = receive_line(conn, deadline).split()
        except TimeoutError:
          missing = ", ".join(str(i) for i in range(1, processes) if i not in peers)
          raise ProcessError(
              f"{where}: process(es) {missing} did not join the coordinator at {address} "
              f"within {timeout:g} s; start each with --process-id I --coordinator "
              f"{address}") from None
        except OSError:
          continue  # a connection that broke off: not one of ours
        if len(words) != 3 or words[0] != HELLO or not (words[1] + words[2]).isdigit():
          conn.close()  # not one of ours
          continue
        peer, peer_processes = int(words[1]), int(words[2])
        if peer_processes != processes or not 0 < peer < processes or peer in peers:
          conn.close()
          raise ProcessError(
              f"{where}: a process joined as process {peer} of {peer_processes}; start each "
              f"with the same --processes and its own --process-id in 1..{processes - 1}")
        peers[peer] = conn
    for conn in peers.values():
      conn.sendall(b"go\n")
    for conn in peers.values():  # the peers close first, so the port is free at once
      receive_line(conn, deadline)
  except OSError:
    pass  # a peer gone now fails to join the runtime, with its own message
  finally:
    for conn in peers.values():
      conn.close()


def await_go(where: str, address: str, hello: str, deadline: float, timeout: float) -> None:
  """A process other than 0: connects to the coordinator's port (retrying until it listens),
  says ``hello`` and waits for the 'go', by ``deadline``."""
  host, _, port = address.rpartition(":")
  while True:
    try:
      conn = socket.create_connection((host, int(port)),
                                      timeout=max(0.01, deadline - time.monotonic()))
      break
    except OSError:
      if time.monotonic() >= deadline:
        raise ProcessError(f"{where}: no coordinator at {address} within {timeout:g} s; is "
                           "process 0 running there?") from None
      time.sleep(0.2)
  with conn:
    try:
      conn.sendall(hello.encode())
      answer = receive_line(conn, deadline)
    except TimeoutError:
      raise ProcessError(f"{where}: the coordinator at {address} did not start the run "
                         f"within {timeout:g} s; are all processes running?") from None
    except OSError as e:
      answer = e.strerror or type(e).__name__
  if answer != "go":
    raise ProcessError(f"{where}: the coordinator at {address} turned this process away "
                       f"({answer or 'closed'}); do all processes have the same --processes "
                       "and their own --process-id?")


def join(process_id: int, processes: int, coordinator: tuple[str, int], timeout: int) -> None:
  """Joins the coordinator at ``coordinator`` (host, port) as process ``process_id`` of
  ``processes`` (gloo collectives between CPU devices); call before jax starts a backend.

  Started by the launcher, the process dies with it. The runtime's messages go to stderr
  (:func:`separate_report`)."""
  die_with_launcher()
  separate_report()
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  host, port = coordinator
  address = f"{host}:{port}"
  where = f"process {process_id} of {processes}"
  rendezvous(process_id, processes, host, port, timeout)
  try:
    jax.distributed.initialize(
        coordinator_address=address, num_processes=processes, process_id=process_id,
        initialization_timeout=timeout, heartbeat_timeout_seconds=timeout,
        shutdown_timeout_seconds=timeout,
        # On one machine listen on the loopback address only; else jax's default, all.
        coordinator_bind_address=address if host == LOCALHOST else None)
  except Exception as e:  # noqa: BLE001 - the runtime raises several kinds
    reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise ProcessError(f"{where} could not start or join the coordinator at {address} "
                       f"({reason}); is its port free and process 0 running?") from None


def fault_drill(fail_process: int | None) -> None:
  """Kills this process (SIGKILL, no clean-up) if it is process ``fail_process``."""
  if fail_process == jax.process_index():
    os.kill(os.getpid(), signal.SIGKILL)
