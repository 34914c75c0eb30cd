"""A run killed at any point, also while it writes a file, resumes to the same result.

``python -m examples.reproduce`` is killed with SIGKILL while it writes its checkpoints (a
checkpoint every iteration), then rerun to the end; its saved runs must equal those of an
uninterrupted run bit for bit. A write that fails halfway leaves the previous file.
"""

import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from examples import reproduce
from experiments import train
from tests.generated_data import write_idx_folder

ROOT = Path(__file__).resolve().parents[1]


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
  return {path.name: dict(np.load(path)) for path in sorted((out / "runs").glob("*.npz"))}


def assert_same_runs(got: dict, want: dict) -> None:
  assert sorted(got) == sorted(want) == ["adagrad_seed0.npz", "sgd+layer_seed0.npz"]
  for name in want:
    for key in train.RUN_KEYS:
      np.testing.assert_array_equal(got[name][key], want[name][key], err_msg=f"{name} {key}")


@pytest.fixture(scope="module")
def uninterrupted(idx_folder, tmp_path_factory):
  out = tmp_path_factory.mktemp("whole")
  reproduce.main(argv(idx_folder, out))
  return saved_runs(out)


def kill_when(process: subprocess.Popen, ready, timeout: float = 120) -> None:
  """SIGKILLs ``process`` as soon as ``ready()`` holds."""
  deadline = time.monotonic() + timeout
  while not ready():
    assert process.poll() is None, process.communicate()
    assert time.monotonic() < deadline, "the run never reached the point to kill it at"
    time.sleep(0.001)
  process.send_signal(signal.SIGKILL)
  process.wait()


def test_sigkill_during_checkpoint_writes_resumes_bit_identically(idx_folder, uninterrupted,
                                                                  tmp_path):
  out = tmp_path / "out"
  command = [sys.executable, "-m", "examples.reproduce", *argv(idx_folder, out)]
  # Kill 1: while a checkpoint's temporary file is being written (checkpoints every step).
  # Kill 2: after the first run finished, while a later one writes its checkpoints.
  points = [lambda: any((out / "ckpt").glob("*.tmp.npz")),
            lambda: len(list((out / "runs").glob("*.npz"))) >= 1
            and any((out / "ckpt").glob("*.npz"))]
  for ready in points:
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    kill_when(process, ready)
  assert len(list((out / "runs").glob("*.npz"))) < 2  # killed before the end
  reproduce.main(argv(idx_folder, out))
  assert_same_runs(saved_runs(out), uninterrupted)
  assert list((out / "ckpt").iterdir()) == []


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
    reproduce.main(argv(idx_folder, out))
  checkpoint = out / "ckpt" / "sgd+layer_seed0.npz"
  assert np.load(checkpoint)["arr_0"] == 4  # the fourth checkpoint, at iteration 4
  monkeypatch.setattr(np, "savez", real_savez)
  reproduce.main(argv(idx_folder, out))
  assert_same_runs(saved_runs(out), uninterrupted)
