"""The registries: a method and a dataset added by one entry each reach every front-end that
takes ``--methods`` and ``--dataset`` (experiments.tuned, experiments.paper, the image
studies)."""

import dataclasses
import json
import math

import numpy as np
import optax
import pytest

from experiments import data, methods, paper, tuned
from experiments.studies import grouping, lr_sensitivity, vanishing


def new_images(folder, sizes, download):
  del folder, sizes, download
  return data.generated_images((48, 16), seed=3)


@pytest.fixture
def registered(monkeypatch):
  """``gd`` (plain gradient descent, no momentum) and ``tiny_images``, one entry each."""
  monkeypatch.setitem(methods.BASES, "gd", methods.Base(lambda r: optax.sgd(r.lr),
                                                        factor_first=True))
  monkeypatch.setitem(data.DATASETS, "tiny_images", data.Source(
      "images", new_images, lambda folder: True, "", {}))


def test_registries_list_them(registered):
  assert {"gd", "gd+layer", "gd+relative"} <= set(methods.names())
  assert "tiny_images" in tuned.datasets_of("images") and "tiny_images" in paper.image_datasets()
  params = {"w": np.ones(3, np.float32)}
  tx = methods.build("gd", methods.Recipe(0.5)).tx
  updates, _ = tx.update({"w": np.full(3, 2.0, np.float32)}, tx.init(params), params)
  np.testing.assert_array_equal(updates["w"], [-1.0, -1.0, -1.0])  # -lr * g, no decay


def test_tuned_comparison_runs_them(registered, tmp_path, monkeypatch):
  # The search starts where the workload's entry says, here near gd's best rate on this data
  # (from lenet's 0.01 it walks 8 lattice points up: 22 grid runs, not 14).
  lenet = tuned.WORKLOADS["lenet"]
  monkeypatch.setitem(tuned.WORKLOADS, "lenet", dataclasses.replace(
      lenet, methods={**lenet.methods, "gd": 0.113}))
  out = tmp_path / "tuned"
  tuned.main(["lenet", "--dataset", "tiny_images", "--methods", "gd+layer", "--val-size", "16",
              "--iters", "4", "--seeds", "2", "--grid-seeds", "1", "--coarse-iters", "0",
              "--workers", "1", "--no-plots", "--out", str(out)])
  results = json.loads((out / "results.json").read_text())
  assert list(results["methods"]) == ["gd+layer", "gd"]  # its baseline added
  assert results["methods"]["gd+layer"]["baseline"] == "gd"
  assert results["sizes"]["train_images"] == 32 and results["sizes"]["test_images"] == 16
  assert all(math.isfinite(v) for m in results["methods"].values() for v in m["test"])
  for m in results["methods"].values():  # each best bracketed by the grid
    assert min(map(float, m["grid"])) < m["selected_lr"] < max(map(float, m["grid"])), m


def test_paper_protocol_runs_them(registered, tmp_path):
  out = tmp_path / "paper"
  results = paper.main(["--dataset", "tiny_images", "--methods", "gd,gd+relative", "--seeds", "1",
                        "--iters", "5", "--batch-size", "8", "--no-plots", "--no-progress",
                        "--out", str(out)])
  assert set(results) == {"gd", "gd+relative"}
  assert results["gd+relative"]["factor"].shape == (1, 5, 4)
  assert np.isfinite(results["gd"]["test_error"]).all()
  assert json.loads((out / "results.json").read_text())["config"]["dataset"] == "tiny_images"


@pytest.mark.parametrize("study, argv", [
    (lr_sensitivity, ["--methods", "gd,gd+layer", "--lrs", "0.01"]),
    (vanishing, ["--methods", "gd,gd+layer"]),
    (grouping, ["--methods", "gd"]),
])
def test_studies_run_them(registered, tmp_path, study, argv):
  out = tmp_path / "study"
  study.main(["--dataset", "tiny_images", "--seeds", "1", "--iters", "20", "--no-plots",
              "--out", str(out), *argv])
  results = json.loads((out / "results.json").read_text())
  text = json.dumps(results)
  assert '"tiny_images"' in text and '"gd' in text
  records = sorted(path.parent.name for path in (out / "runs").rglob("*.json"))
  assert records and set(records) <= {"gd", "gd+layer"}, records
