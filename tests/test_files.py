"""Atomic writes: the destination holds the old content or the new, never part of it."""

import json
import math

import numpy as np
import pytest

from experiments import files, records


def test_write_json_replaces_and_leaves_no_temporary(tmp_path):
  path = tmp_path / "results.json"
  files.write_json(path, {"a": 1})
  files.write_json(path, {"a": [1.5, float("nan")]})
  assert path.read_text() == '{\n "a": [\n  1.5,\n  NaN\n ]\n}\n'
  assert json.loads(path.read_text())["a"][0] == 1.5
  assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_failed_write_keeps_old_content_and_removes_temporary(tmp_path):
  path = tmp_path / "table.md"
  files.write_text(path, "old\n")
  with pytest.raises(RuntimeError), files.replacing(path) as temporary:
    temporary.write_text("half")
    raise RuntimeError("killed mid-write")
  assert path.read_text() == "old\n"
  assert [p.name for p in tmp_path.iterdir()] == ["table.md"]


def test_temporary_keeps_the_suffix_for_format_choosing_writers(tmp_path):
  path = tmp_path / "run.npz"
  with files.replacing(path) as temporary:
    assert temporary.suffix == ".npz" and temporary.parent == tmp_path
    np.savez(temporary, x=np.arange(3))  # np.savez would append .npz to another suffix
  with np.load(path) as saved:
    np.testing.assert_array_equal(saved["x"], [0, 1, 2])


def test_run_records_write_numpy_values_as_json_ones(tmp_path):
  value = {np.int64(3): [np.float32(0.5), np.bool_(True), np.array([1, 2]), np.float64("nan")],
           "flag": np.bool_(False), "n": np.int32(7)}
  records.write_json(tmp_path / "r.json", value)  # json.dumps fails on np.bool_ and np.int32
  loaded = json.loads((tmp_path / "r.json").read_text())
  assert list(loaded) == ["3", "flag", "n"]
  half, true, array, nan = loaded["3"]
  assert (half, true, array) == (0.5, True, [1, 2]) and true is True and math.isnan(nan)
  assert loaded["flag"] is False and loaded["n"] == 7
