"""A run killed at any point, also while it writes a file, resumes to the same result.

``python -m experiments.paper`` is killed with SIGKILL while it writes its checkpoints (a
checkpoint every iteration), then rerun to the end; its run records must equal those of an
uninterrupted run bit for bit. A write that fails halfway leaves the previous file. SIGTERM
to a run with worker processes ends it, and them, at once with one line.
"""

import json
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest

from experiments import paper, records
from tests import commands
from tests.generated_data import write_idx_folder


@pytest.fixture(scope="module")
def idx_folder(tmp_path_factory):
  folder = tmp_path_factory.mktemp("idx")
  write_idx_folder(folder, n_train=64, n_test=20)
  return folder


def argv(folder: Path, out: Path) -> list[str]:
  return ["--dataset", "mnist", "--data-dir", str(folder), "--split-sizes", "64,20",
          "--methods", "sgd+layer,adagrad", "--seeds", "1", "--iters", "24",
          "--batch-size", "8", "--checkpoint-every", "1", "--out", str(out), "--no-progress",
          "--no-plots"]


def saved_runs(out: Path) -> dict:
  return {path.parent.name: json.loads(path.read_text())["record"]
          for path in sorted((out / "runs").glob("*/*.json"))}


def assert_same_runs(got: dict, want: dict) -> None:
  assert sorted(got) == sorted(want) == ["adagrad", "sgd+layer"]
  for name in want:
    for key in (*records.RECORD_KEYS, "norms", "losses"):
      if key != "wall_s":
        assert got[name][key] == want[name][key], f"{name} {key}"


@pytest.fixture(scope="module")
def uninterrupted(idx_folder, tmp_path_factory):
  out = tmp_path_factory.mktemp("whole")
  paper.main(argv(idx_folder, out))
  return saved_runs(out)


def kill_when(process: subprocess.Popen, ready, what: str) -> None:
  """SIGKILLs ``process`` as soon as ``ready()`` holds (``what`` names that point); fails the
  test if the run ends first, or if the point never comes within the tests' limit."""
  def reached():
    if ready():
      return True
    assert process.poll() is None, f"the run ended before {what}: {process.communicate()}"
    return None

  commands.poll_until(reached, what, interval=0.001)
  process.send_signal(signal.SIGKILL)
  process.wait()


def test_sigkill_during_checkpoint_writes_resumes_bit_identically(idx_folder, uninterrupted,
                                                                  tmp_path):
  out = tmp_path / "out"
  command = commands.python("-m", "experiments.paper", *argv(idx_folder, out))
  # Kill 1: while a checkpoint's temporary file is being written (checkpoints every step).
  # Kill 2: after the first run finished, while a later one writes its checkpoints.
  points = [("a checkpoint's temporary file", lambda: any(out.glob("runs/*/*.tmp.npz"))),
            ("a finished run and a later run's checkpoint",
             lambda: len(list(out.glob("runs/*/*.json"))) >= 1
             and any(out.glob("runs/*/*.ckpt.npz")))]
  for what, ready in points:
    process = subprocess.Popen(command, cwd=commands.ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    kill_when(process, ready, what)
  assert len(list(out.glob("runs/*/*.json"))) < 2  # killed before the end
  paper.main(argv(idx_folder, out))
  assert_same_runs(saved_runs(out), uninterrupted)
  assert list(out.glob("runs/*/*.npz")) == []  # no checkpoint, no temporary file left


def test_failed_write_keeps_the_previous_checkpoint(idx_folder, uninterrupted, tmp_path,
                                                    monkeypatch):
  out = tmp_path / "out"
  real_savez = np.savez
  calls = []

  def savez_then_crash(file, **arrays):
    calls.append(file)
    if len(calls) == 5:  # the fifth checkpoint: half a file, then the process "dies"
      Path(file).write_bytes(b"PK\x03\x04 half a file")
      raise KeyboardInterrupt
    real_savez(file, **arrays)

  monkeypatch.setattr(np, "savez", savez_then_crash)
  with pytest.raises(KeyboardInterrupt):
    paper.main(argv(idx_folder, out))
  checkpoint = records.checkpoint_path(out, records.RunTask("sgd+layer", 0.01, 0, 24))
  assert np.load(checkpoint)["done"] == 4  # the fourth checkpoint, at iteration 4
  monkeypatch.setattr(np, "savez", real_savez)
  paper.main(argv(idx_folder, out))
  assert_same_runs(saved_runs(out), uninterrupted)


@commands.needs_proc
def test_sigterm_stops_the_workers_at_once_and_the_rerun_finishes(idx_folder, tmp_path):
  """SIGTERM to ``--workers 2`` while a worker trains: one line, exit status 143, the workers
  ended and reaped before the command ends, the run under way stopped mid-way (its
  checkpoint kept; a finished run removes its own); the same command then finishes."""
  out = tmp_path / "out"
  longer = argv(idx_folder, out)
  longer[longer.index("--iters") + 1] = "200"  # runs long enough to be caught mid-way
  longer[longer.index("--checkpoint-every") + 1] = "10"  # (not 200 files a run to write)
  command = commands.python("-m", "experiments.paper", *longer, "--workers", "2")
  process = subprocess.Popen(command, cwd=commands.ROOT, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
  workers = []
  try:
    def training():
      assert process.poll() is None, f"the run ended first: {process.communicate()}"
      return any(out.glob("runs/*/*.ckpt.npz")) or None
    commands.poll_until(training, "a worker's first checkpoint", interval=0.005)
    workers = [pid for pid in commands.children(process.pid)  # not its resource tracker
               if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()]
    process.send_signal(signal.SIGTERM)
    status = commands.wait(process)
  finally:
    process.kill()
  assert status == 128 + signal.SIGTERM and len(workers) == 2, (status, workers)
  assert process.stderr.read() == "python -m experiments.paper: interrupted by SIGTERM\n"
  assert [commands.ended_by(pid) for pid in workers] == [0, 0]
  assert len(list(out.glob("runs/*/*.json"))) < 2
  assert any(out.glob("runs/*/*.ckpt.npz"))  # the run under way did not go on to its end
  paper.main(longer)
  assert sorted(saved_runs(out)) == ["adagrad", "sgd+layer"]
  assert list(out.glob("runs/*/*.npz")) == []
