"""The studies (experiments/studies/) at tiny sizes: they run on the engine, and their numbers
are real.

Each test runs a study's own code end to end on the registries' data (``--dataset
generated``, a generated teacher) or a tiny model added to the model registry, and checks
recorded quantities against their definitions, e.g. that recorded factors equal
``1 + log1p(1/norm)`` for the recorded norms (Singh et al. 2015, arXiv:1510.04609, eq. 9).
The committed results are tied to the code: their tables have the headings the code writes,
and the saddle summary of docs/studies.md is what the code makes of the committed
``results.json``.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import data, engine, models, records
from experiments.studies import grouping, lenet, lr_sensitivity, saddle, vanishing
from tests import reference

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results" / "studies"


def test_teacher_has_rank_unit_singular_values():
  teacher = data.teacher(width=8, rank=3, seed=1).matrix
  np.testing.assert_allclose(np.linalg.svd(teacher, compute_uv=False),
                             [1, 1, 1, 0, 0, 0, 0, 0], atol=1e-6)
  assert data.load_dataset("teacher").matrix.shape == (16, 16)  # the registry's default


def test_regression_scores_the_population_loss():
  teacher = data.teacher(width=8, rank=2)
  model = models.DeepLinear(width=8, depth=3, init_scale=0.9)
  params = model.init(jax.random.key(0), jnp.zeros((1, 8)))
  kind = saddle.Regression(batch=16)
  # The network maps x (a row) to x K_0 K_1 K_2, i.e. P = (K_0 K_1 K_2)^T.
  kernels = [np.asarray(params["params"][f"layer{i}"]["kernel"], np.float64) for i in range(3)]
  product = (kernels[0] @ kernels[1] @ kernels[2]).T
  exact = 0.5 * np.sum((product - teacher.matrix) ** 2)  # L = ||P - A||_F^2 / 2
  _, split, _ = kind.on_device(teacher)
  score = kind.score(lambda x: model.apply(params, x), split)
  np.testing.assert_allclose(score, exact / (0.5 * 2), rtol=1e-5)  # L / L_0, L_0 = rank / 2
  x = jnp.asarray(np.random.default_rng(0).standard_normal((200_000, 8)), jnp.float32)
  inputs, targets = kind.batch_at(split, x)
  np.testing.assert_allclose(kind.loss(model.apply(params, inputs), targets), exact, rtol=0.02)


def test_saddle_runs_are_paired_and_record_eq9():
  settings = {"width": 8, "depth": 3, "rank": 2, "batch": 16, "iters": 60, "record_every": 20,
              "init_scale": 0.7}
  setup = saddle.make_setup(settings, 0.7)
  teacher = data.teacher(8, 2)
  sgd, layer = (engine.train(teacher, records.RunTask(m, 0.03, 1, 60), setup=setup)
                for m in ("sgd", "sgd+layer"))
  assert sgd["eval_iters"] == [20, 40, 60]
  # The first factors come from the gradient at initialisation: equal only if both methods
  # start from the same initialisation and minibatch.
  first = {name: values[0] for name, values in sgd["factors"].items()}
  assert first == {name: values[0] for name, values in layer["factors"].items()}
  for run in (sgd, layer):  # for sgd too: the factor it would get
    np.testing.assert_allclose(np.array(list(run["factors"].values())),
                               reference.factor(np.array(list(run["norms"].values()))),
                               rtol=1e-5)
  assert saddle.first_below(sgd["val"], sgd["eval_iters"], 2.0) == 20
  assert saddle.first_below(sgd["val"], sgd["eval_iters"], -1.0) == np.inf


def test_fused_steps_compute_what_single_steps_compute():
  settings = {"width": 8, "depth": 3, "rank": 2, "batch": 16, "iters": 60, "record_every": 20,
              "init_scale": 0.7}
  fused = saddle.make_setup(settings, 0.7)
  single = dataclasses.replace(fused, fused=False)
  task = records.RunTask("nag+layer", 0.03, 2, 60)
  a, b = (engine.train(data.teacher(8, 2), task, setup=setup) for setup in (fused, single))
  assert a["eval_iters"] == b["eval_iters"] and a["factor_iters"] == b["factor_iters"]
  for key in ("val", "test", "train_loss"):
    np.testing.assert_allclose(a[key], b[key], rtol=1e-6)
  for name in a["factors"]:
    np.testing.assert_allclose(a["factors"][name], b["factors"][name], rtol=1e-6)


def test_saddle_study_tiny(tmp_path):
  # An easy setting (shallow, large init): every run converges well within the cap.
  argv = ["--seeds", "3", "--iters", "400", "--depth", "3", "--width", "8", "--rank", "2",
          "--init-scale", "0.7", "--init-scales", "0.5,0.7", "--lrs", "0.01,0.03",
          "--methods", "sgd,sgd+layer", "--record-every", "20", "--no-plots",
          "--out", str(tmp_path)]
  res = saddle.main(argv)
  for m in ("sgd", "sgd+layer"):
    r = res["methods"][m]
    conv, esc = np.asarray(r["converge"]), np.asarray(r["escape"])
    assert conv.shape == (2, 3)
    assert np.isfinite(conv).all() and (esc <= conv).all() and (esc >= 20).all()
    assert (conv % 20 == 0).all()  # evaluation iterations
    assert not np.asarray(r["diverged"]).any()
    curve = np.asarray(r["median_loss_curve_base_lr"])
    assert curve.shape == (20,) and curve[-1] < 0.05
    f = np.asarray(r["median_factor_curve_base_lr"])
    assert f.shape == (saddle.FACTOR_POINTS, 3) and (f >= 1).all()
    # The scale sweep's s = 0.7 runs are the main sweep's at the best lr (same records).
    best = [0.01, 0.03].index(r["best_lr"])
    assert r["scale_sweep"]["converge"][1] == conv[best].tolist()
  assert res["base_lr"] == 0.03  # the largest grid lr at which nothing diverged
  saved = json.loads((tmp_path / "results.json").read_text())
  assert saved["methods"]["sgd"]["converge"] == np.asarray(
      res["methods"]["sgd"]["converge"]).tolist()
  assert "Paired speed-up" in (tmp_path / "table.md").read_text()
  assert (tmp_path / "summary.md").read_text() == saddle.summary_table(saved) + "\n"
  assert len(list((tmp_path / "runs").rglob("*.json"))) == 2 * 2 * 3
  assert len(list((tmp_path / "scale0.5" / "runs").rglob("*.json"))) == 2 * 3


def test_vanishing_study_tiny(tmp_path):
  results, runs = vanishing.main(
      ["--dataset", "generated", "--seeds", "2", "--iters", "40", "--depth", "4", "--width",
       "16", "--record-every", "10", "--baseline-lrs", "0.1", "--no-plots",
       "--out", str(tmp_path)])
  assert list(runs) == ["sgd @ 0.01", "sgd+layer @ 0.01", "sgd @ 0.1"]
  for r in runs.values():
    norm, fac, dist = r["grad_norm"], r["factor"], r["distance"]
    assert r["factor_iters"] == [0, 9, 19, 29, 39] and r["eval_iters"] == [10, 20, 30, 40]
    assert norm.shape == fac.shape == (2, 5, 5) and dist.shape == (2, 4, 5)
    np.testing.assert_allclose(fac, reference.factor(norm), rtol=1e-5)
    assert (dist > 0).all() and np.isfinite(dist).all()
    assert r["test_error"].shape == (2, 4)
    assert ((r["test_error"] >= 0) & (r["test_error"] <= 1)).all()
  # Sigmoid layers: gradients shrink towards the input, so the factor grows there ...
  fac = runs["sgd @ 0.01"]["factor"][:, 0]
  assert (fac[:, 0] > fac[:, -1]).all()
  # ... and the +layer run's first layer has moved further after 10 steps (same seed).
  d_base = runs["sgd @ 0.01"]["distance"][:, 0, 0]
  d_layer = runs["sgd+layer @ 0.01"]["distance"][:, 0, 0]
  assert (d_layer > d_base).all()
  table = (tmp_path / "table.md").read_text()
  caption, _ = vanishing.summary_heading(results["settings"], 2, 40)
  assert table.startswith(caption) and "layer-1 distance @ 10" in table


class _Tiny(nn.Module):
  """A two-layer stand-in for LeNet, so the LeNet studies' code runs in seconds."""

  num_classes: int = 10
  input_shape = (28, 28, 1)
  mults = {"fc1": (2, 1), "fc2": (2, 1)}

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.relu(nn.Dense(16, name="fc1")(x.reshape(x.shape[0], -1)))
    return nn.Dense(self.num_classes, name="fc2")(x)


@pytest.fixture
def tiny_protocol(monkeypatch):
  """The Table I protocol with the tiny model (a registry entry), evaluated at 2 and 4."""
  monkeypatch.setitem(models.MODELS, "tiny_study_model", _Tiny)
  monkeypatch.setattr(lenet, "PROTOCOL", dataclasses.replace(
      lenet.PROTOCOL, model="tiny_study_model", eval_iters=(2, 4)))


TINY = ["--dataset", "generated", "--seeds", "2", "--iters", "4", "--no-plots"]


def _records(folder: Path, method: str, lr: float) -> list[dict]:
  return [records.read_record(path, records.RunTask(method, lr, seed, 4))
          for seed, path in enumerate(sorted((folder / "runs" / method).glob(f"lr{lr!r}_*")))]


def test_lr_sensitivity_study_tiny(tmp_path, tiny_protocol, capsys):
  argv = TINY + ["--lrs", "0.01,0.1", "--out", str(tmp_path)]
  res = lr_sensitivity.main(argv)
  base, layer = res["methods"]["sgd"], res["methods"]["sgd+layer"]
  assert base["test_error"].shape == (2, 2) and base["eval_iters"] == [2, 4]
  assert ((base["test_error"] >= 0) & (base["test_error"] <= 1)).all()
  assert (layer["mean_factor"] > 1).all()
  # From the run records: the mean of every recorded factor, the paired final errors.
  for i, lr in enumerate([0.01, 0.1]):
    saved = _records(tmp_path, "sgd+layer", lr)
    factors = np.array([list(r["factors"].values()) for r in saved])
    np.testing.assert_allclose(layer["mean_factor"][i], factors.mean(), rtol=1e-6)
    np.testing.assert_allclose(layer["effective_lr"][i], lr * factors.mean(), rtol=1e-6)
    final = {m: np.array([r["test"][-1] for r in _records(tmp_path, m, lr)]) / 100
             for m in ("sgd", "sgd+layer")}
    np.testing.assert_allclose(res["paired"]["sgd+layer"][i], final["sgd"] - final["sgd+layer"])
  assert "within 1 pt" in (tmp_path / "table.md").read_text()
  # A rerun reads the records, trains nothing and reports the same numbers.
  capsys.readouterr()
  again = lr_sensitivity.main(argv)
  assert "training" not in capsys.readouterr().out
  np.testing.assert_array_equal(again["methods"]["sgd"]["test_error"], base["test_error"])
  # Runs of other settings in the same --out are refused.
  with pytest.raises(SystemExit) as exit_info:
    lr_sensitivity.main(argv + ["--data-dir", str(tmp_path / "elsewhere")])
  assert exit_info.value.code == 1
  assert "holds runs of other settings (data_dir)" in capsys.readouterr().err


def test_grouping_study_tiny(tmp_path, tiny_protocol):
  res = grouping.main(TINY + ["--methods", "sgd", "--out", str(tmp_path)])
  runs = res["runs"]
  assert runs["sgd+layer (module)"]["layer_names"] == ["fc1", "fc2"]
  assert runs["sgd+layer (array)"]["layer_names"] == ["fc1/bias", "fc1/kernel", "fc2/bias",
                                                      "fc2/kernel"]
  for label in ("sgd+layer (module)", "sgd+layer (array)"):
    assert (runs[label]["mean_factor_per_layer"] >= 1).all()
  # A bias alone has a smaller norm than its layer, hence a larger factor.
  arr = dict(zip(runs["sgd+layer (array)"]["layer_names"],
                 runs["sgd+layer (array)"]["mean_factor_per_layer"]))
  mod = dict(zip(runs["sgd+layer (module)"]["layer_names"],
                 runs["sgd+layer (module)"]["mean_factor_per_layer"]))
  assert arr["fc1/bias"] > mod["fc1"]
  # The array runs' records are their own (under --out/array), the module ones the main's.
  module, array = (np.array([r["test"][-1] for r in _records(folder, "sgd+layer", 0.01)]) / 100
                   for folder in (tmp_path, tmp_path / "array"))
  np.testing.assert_allclose(res["paired"]["sgd"]["array - module"], array - module)
  table = (tmp_path / "table.md").read_text()
  assert "sgd+layer (array)" in table and "Paired differences" in table


@pytest.mark.parametrize("folder", ["vanishing", "vanishing/gain4"])
def test_committed_vanishing_tables_have_the_heading_the_study_writes(folder):
  results = json.loads((RESULTS / folder / "results.json").read_text())
  caption, header = vanishing.summary_heading(results["settings"], results["seeds"],
                                              results["iters"])
  lines = (RESULTS / folder / "table.md").read_text().splitlines()
  assert lines[0] == caption and lines[2] == "| " + " | ".join(header) + " |"
  assert results["command"].startswith("python -m experiments.studies.vanishing")


@pytest.mark.parametrize("folder", ["vanishing", "vanishing/gain4", "saddle", "lr_sensitivity"])
def test_committed_results_come_from_the_studies_on_the_engine(folder):
  results = json.loads((RESULTS / folder / "results.json").read_text())
  name = folder.split("/")[0]
  assert results["command"].startswith(f"python -m experiments.studies.{name} ")
  assert f"--out results/studies/{folder}" in results["command"]
  table = (RESULTS / folder / "table.md").read_text()
  assert table.endswith(f"the runs took {results['train_seconds']:.0f} s in all (cpu).\n")


def test_committed_saddle_summary_is_the_code_s_and_in_the_docs():
  results = json.loads((RESULTS / "saddle" / "results.json").read_text())
  summary = (RESULTS / "saddle" / "summary.md").read_text()
  assert summary == saddle.summary_table(results) + "\n"
  assert results["command"].startswith("python -m experiments.studies.saddle")
  docs = (ROOT / "docs" / "studies.md").read_text()
  assert "```{include} ../results/studies/saddle/summary.md\n```" in docs
