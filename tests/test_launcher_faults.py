"""Faults of ``python -m examples.train_mesh --processes 2`` (the launcher of
``experiments/processes.py``) and of processes started by hand: each ends with one line
and a non-zero exit, and leaves no process behind.

No test judges how long something took: promptness shows in what happened. A run that only
a stopped launcher could end is given a ``--timeout`` (the runtime's heartbeat) longer than
the test's own limit, so it cannot have ended by the runtime giving up; a killed launcher's
processes must have died by SIGKILL, the parent-death signal, not by anything later.
"""

import os
import re
import signal
import socket
import subprocess

import pytest

from experiments import processes
from tests import commands

SMALL = ("--devices", "8", "--processes", "2", "--batch", "16", "--synthetic", "--mode", "dp")
ENDLESS = (*SMALL, "--iters", "2000")  # runs long after the header, until the signal
HEARTBEAT = str(int(2 * commands.limit()))  # longer than any test waits


def train_mesh_argv(*args: str) -> list[str]:
  return commands.python("-m", "examples.train_mesh", *args)


def one_error_line(returncode: int, stderr: str, want_status: int = 1) -> str:
  lines = stderr.strip().splitlines()
  assert returncode == want_status and len(lines) == 1, (returncode, stderr)
  return lines[0]


def test_bad_port_ends_the_command_with_one_line():
  """The command itself, before jax starts: no OverflowError traceback."""
  proc = commands.run(train_mesh_argv(*SMALL, "--port", "70000"), env=commands.cpu_env())
  assert one_error_line(proc.returncode, proc.stderr, 2) == (
      "python -m examples.train_mesh: error: argument --port: 70000 is not in 1..65535 (see "
      "--help)")
  assert proc.stdout == ""


def test_a_dead_process_stops_the_others():
  """Process 1 kills itself after its first step; process 0, waiting for it in a collective
  with a heartbeat longer than the test's limit, can only have been stopped by the
  launcher."""
  proc = commands.run(train_mesh_argv(*SMALL, "--iters", "3", "--fail-process", "1",
                                      "--timeout", HEARTBEAT), env=commands.cpu_env())
  line = one_error_line(proc.returncode, proc.stderr)
  assert re.fullmatch(r"train_mesh: process 1 of 2 was killed by SIGKILL; stopped the "
                      r"other processes \(logs: \S+\)", line), line


@commands.needs_proc
@pytest.mark.parametrize("name", ["SIGINT", "SIGTERM"])
def test_a_signal_to_the_launcher_stops_everything(name):
  signum = signal.Signals[name]
  argv = train_mesh_argv(*ENDLESS, "--timeout", HEARTBEAT)
  launcher = subprocess.Popen(argv, cwd=commands.ROOT, env=commands.cpu_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    commands.Lines(launcher.stdout).wait_for("in 2 process(es)", argv)  # both joined
    workers = commands.children(launcher.pid)
    assert len(workers) == 2, workers
    launcher.send_signal(signum)
    status = commands.wait(launcher)
  finally:
    launcher.kill()
  line = one_error_line(status, launcher.stderr.read(), 128 + signum)
  assert re.fullmatch(rf"train_mesh: interrupted by {name}; stopped the 2 processes "
                      rf"\(logs: \S+\)", line), line
  assert [commands.ended_by(pid) for pid in workers] == [0, 0]  # the launcher reaped them


@commands.needs_proc
def test_a_killed_launcher_takes_its_processes_along():
  """SIGKILL to the launcher: nothing of it runs, yet its processes die at once, by the
  parent-death signal (SIGKILL); left alone they would go on training and end with a
  status of their own."""
  argv = train_mesh_argv(*ENDLESS, "--timeout", HEARTBEAT)
  launcher = subprocess.Popen(argv, cwd=commands.ROOT, env=commands.cpu_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
  workers = []
  try:
    commands.Lines(launcher.stdout).wait_for("in 2 process(es)", argv)
    workers = commands.children(launcher.pid)
    assert len(workers) == 2, workers
    launcher.kill()
    launcher.wait()
    ends = [commands.poll_until(lambda pid=pid: commands.ended_by(pid), f"process {pid}'s end")
            for pid in workers]
  finally:
    launcher.kill()
    for pid in workers:  # never leave one behind, even when the test fails
      if commands.ended_by(pid) is None:
        os.kill(pid, signal.SIGKILL)
  # A zombie shows its status (nobody reaps orphans here); one reaped by init shows 0.
  assert all(end in (0, signal.SIGKILL) for end in ends), ends


@pytest.mark.parametrize("process_id,message", [
    (0, "train_mesh: process 0 of 2: process(es) 1 did not join the coordinator at "
        "127.0.0.1:{port} within 2 s; start each with --process-id I --coordinator "
        "127.0.0.1:{port}"),
    (1, "train_mesh: process 1 of 2: no coordinator at 127.0.0.1:{port} within 2 s; is "
        "process 0 running there?"),
])
def test_a_process_started_by_hand_alone(process_id, message):
  """The multi-host recipe with the other process missing: one line after --timeout, where
  the runtime would abort with a C++ stack trace."""
  port = processes.free_port()
  proc = commands.run(train_mesh_argv(*SMALL, "--process-id", str(process_id), "--coordinator",
                                      f"127.0.0.1:{port}", "--timeout", "2"),
                      env=commands.cpu_env())
  assert one_error_line(proc.returncode, proc.stderr) == message.format(port=port)


def test_a_process_started_by_hand_interrupted():
  """Ctrl-C to process 0 while it waits for its peer: one line, exit status 130."""
  port = processes.free_port()
  argv = train_mesh_argv(*SMALL, "--process-id", "0", "--coordinator", f"127.0.0.1:{port}",
                         "--timeout", HEARTBEAT)
  proc = subprocess.Popen(argv, cwd=commands.ROOT, env=commands.cpu_env(),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    def listening():
      if proc.poll() is not None:
        return False  # ended before
      try:
        socket.create_connection(("127.0.0.1", port)).close()  # a stranger: not counted
        return True
      except OSError:
        return None
    assert commands.poll_until(listening, f"process 0 listening on port {port}"), (
        proc.stderr.read())
    proc.send_signal(signal.SIGINT)
    status = commands.wait(proc)
  finally:
    proc.kill()
  assert one_error_line(status, proc.stderr.read(), 130) == (
      "train_mesh: process 0 of 2 interrupted by SIGINT")


@pytest.fixture
def busy_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    s.listen()
    yield s.getsockname()[1]


def test_port_in_use(busy_port):
  proc = commands.run(train_mesh_argv(*SMALL, "--port", str(busy_port)), env=commands.cpu_env())
  assert one_error_line(proc.returncode, proc.stderr) == (
      f"train_mesh: port {busy_port} on 127.0.0.1 is in use; pass another --port, or none for "
      "a free one")
  # Process 0 started by hand (as on a real host) on the busy port.
  proc = commands.run(train_mesh_argv(*SMALL, "--process-id", "0", "--coordinator",
                                      f"127.0.0.1:{busy_port}", "--timeout", "5"),
                      env=commands.cpu_env())
  assert one_error_line(proc.returncode, proc.stderr) == (
      f"train_mesh: process 0 of 2: the coordinator port 127.0.0.1:{busy_port} is in use; "
      "pass another port")
