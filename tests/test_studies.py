"""The measured studies (studies/*.py) at tiny sizes: they run, and their numbers are real.

Each test runs a study's own code end to end (synthetic data or a tiny model where the
default needs minutes) and checks recorded quantities against their definitions, e.g. that
recorded factors equal ``1 + log1p(1/norm)`` for the recorded norms (Singh et al. 2015,
arXiv:1510.04609, eq. 9).
"""

from __future__ import annotations

import dataclasses
import json
import shutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import data, models, train
from studies import grouping, lenet_runs, lr_sensitivity, optimizers, saddle, vanishing
from tests import reference


def test_make_optimizer_first_step_is_lr_times_factor_times_gradient():
  params = {"a": {"w": jnp.ones((3, 2))}, "b": {"w": jnp.ones(4), "bias": jnp.ones(2)}}
  grads = {"a": {"w": jnp.full((3, 2), 1e-3)}, "b": {"w": jnp.full(4, 2.0),
                                                     "bias": jnp.full(2, 1.0)}}
  lr = 0.1
  norm_a, norm_b = np.sqrt(6) * 1e-3, np.sqrt(4 * 4 + 2)
  for method in ("gd", "sgd", "nag"):
    base = optimizers.make_optimizer(method, lr)
    layer = optimizers.make_optimizer(method + "+layer", lr)
    u_base, _ = base.update(grads, base.init(params), params)
    u_layer, _ = layer.update(grads, layer.init(params), params)
    # Nesterov's first step is (1 + momentum) times the gradient step.
    k = 1 + optimizers.MOMENTUM if method == "nag" else 1.0
    np.testing.assert_allclose(u_base["a"]["w"], -k * lr * 1e-3, rtol=1e-6)
    np.testing.assert_allclose(u_layer["a"]["w"], -k * lr * 1e-3 * reference.factor(norm_a),
                               rtol=1e-5)
    np.testing.assert_allclose(u_layer["b"]["bias"], -k * lr * reference.factor(norm_b),
                               rtol=1e-5)
  with pytest.raises(ValueError):
    optimizers.make_optimizer("adam+layer", lr)


def test_saddle_population_loss_is_the_expected_batch_loss():
  task = saddle.Task(depth=3, width=8, rank=2)
  teacher, layers = saddle.init(task, seed=0)
  params = {f"layer{i}": {"w": 0.9 * layers[i]} for i in range(task.depth)}
  x = jax.random.normal(jax.random.key(0), (200_000, task.width))
  exact = saddle.population_loss(params, teacher)
  np.testing.assert_allclose(saddle.batch_loss(params, teacher, x), exact, rtol=0.02)
  np.testing.assert_allclose(saddle.population_loss(jax.tree.map(jnp.zeros_like, params),
                                                    teacher), task.rank / 2, rtol=1e-5)


def test_saddle_study_tiny(tmp_path):
  # An easy setting (shallow, large init): every run converges well within the cap.
  res = saddle.main(["--seeds", "3", "--iters", "400", "--depth", "3", "--width", "8",
                     "--rank", "2", "--init-scale", "0.7", "--init-scales", "0.7",
                     "--lrs", "0.01,0.03", "--methods", "sgd,sgd+layer", "--record-every",
                     "20", "--no-plots", "--out", str(tmp_path)])
  for m in ("sgd", "sgd+layer"):
    r = res["methods"][m]
    conv, esc = np.asarray(r["converge"]), np.asarray(r["escape"])
    assert conv.shape == (2, 3)
    assert np.isfinite(conv).all() and (esc <= conv).all() and (esc >= 1).all()
    assert not np.asarray(r["diverged"]).any()
    curve = np.asarray(r["median_loss_curve_base_lr"])
    assert curve.shape == (20,) and curve[-1] < 0.05
    f = np.asarray(r["median_factor_curve_base_lr"])
    assert f.shape == (20, 3) and (f >= 1).all()
  assert res["base_lr"] == 0.03  # the largest grid lr at which nothing diverged
  saved = json.loads((tmp_path / "results.json").read_text())
  assert saved["methods"]["sgd"]["converge"] == np.asarray(
      res["methods"]["sgd"]["converge"]).tolist()
  assert "Paired speed-up" in (tmp_path / "table.md").read_text()


def test_saddle_runs_are_paired_and_deterministic():
  task = saddle.Task(depth=3, width=8, rank=2, iters=60, record_every=20)
  a = saddle.run_method(task, "sgd", [(0.03, 0.7)], seeds=2)
  b = saddle.run_method(task, "sgd", [(0.01, 0.7), (0.03, 0.7)], seeds=3)
  np.testing.assert_allclose(a["loss_curve"][0], b["loss_curve"][1][:2], rtol=1e-5)
  # The first recorded norms come before any update: equal only if sgd and sgd+layer start
  # from the same initialisation and batches.
  c = saddle.run_method(task, "sgd+layer", [(0.0, 0.7)], seeds=2)
  np.testing.assert_allclose(c["grad_norms"][0, :, 0], a["grad_norms"][0, :, 0], rtol=1e-5)
  # The recorded factors are eq. 9 of the recorded norms (for sgd too: what it would get).
  np.testing.assert_allclose(b["factors"], reference.factor(b["grad_norms"]), rtol=1e-5)


def _fake_fashion(n_train=256, n_test=100):
  rng = np.random.default_rng(0)
  y = rng.integers(0, 10, n_train + n_test).astype(np.int32)
  centres = rng.uniform(0, 1, (10, 784)).astype(np.float32)
  x = np.clip(centres[y] + 0.3 * rng.standard_normal((len(y), 784)), 0, 1).astype(np.float32)
  return x[:n_train], y[:n_train], x[n_train:], y[n_train:]


def test_vanishing_study_tiny(tmp_path):
  results, runs = vanishing.main(
      ["--seeds", "2", "--iters", "40", "--depth", "4", "--width", "16", "--record-every", "10",
       "--eval-every", "20", "--baseline-lrs", "0.1", "--no-plots", "--out", str(tmp_path)],
      arrays=_fake_fashion())
  assert list(runs) == ["sgd @ 0.01", "sgd+layer @ 0.01", "sgd @ 0.1"]
  for r in runs.values():
    norm, fac, dist = r["grad_norm"], r["factor"], r["distance"]
    assert norm.shape == fac.shape == dist.shape == (1, 2, 4, 5)
    # Recorded factors (from layerwise_optax.layer_factors) against eq. 9 on recorded norms.
    np.testing.assert_allclose(fac, reference.factor(norm), rtol=1e-5)
    assert (dist > 0).all() and np.isfinite(dist).all()
    assert r["test_error"].shape == (1, 2, 3)
    assert ((r["test_error"] >= 0) & (r["test_error"] <= 1)).all()
  # Sigmoid layers: gradients shrink towards the input, so the factor grows there ...
  fac = runs["sgd @ 0.01"]["factor"][0, :, 0]
  assert (fac[:, 0] > fac[:, -1]).all()
  # ... and the +layer run's first layer has moved further after 10 steps (same seed).
  d_base = runs["sgd @ 0.01"]["distance"][0, :, 0, 0]
  d_layer = runs["sgd+layer @ 0.01"]["distance"][0, :, 0, 0]
  assert (d_layer > d_base).all()
  assert (tmp_path / "table.md").exists() and (tmp_path / "results.json").exists()


class _Tiny(nn.Module):
  """A two-layer stand-in for LeNet, so the LeNet studies' code runs in seconds."""

  num_classes: int = 10
  input_shape = (28, 28, 1)
  mults = {"fc1": (2, 1), "fc2": (2, 1)}

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.relu(nn.Dense(16, name="fc1")(x.reshape(x.shape[0], -1)))
    return nn.Dense(self.num_classes, name="fc2")(x)


@pytest.fixture(scope="module")
def tiny_protocol():
  with pytest.MonkeyPatch.context() as mp:
    mp.setitem(models.MODELS, "tiny_study_model", _Tiny)
    protocol = dataclasses.replace(lenet_runs.PROTOCOL, model="tiny_study_model",
                                   eval_iters=(2, 4))
    x, y, xt, yt = _fake_fashion(128, 100)
    to_u8 = lambda a: (255 * a).astype(np.uint8).reshape(-1, 28, 28, 1)
    yield protocol, data.Dataset(to_u8(x), y, to_u8(xt), yt, 10)


@pytest.fixture(scope="module")
def main_run(tiny_protocol, tmp_path_factory):
  """A "main run" for the studies to reuse: reproduce.py's file format, sgd and sgd+layer,
  seeds 0 and 1, 8 iterations (evaluated at 2, 4, 8), layers="module"."""
  protocol, dataset = tiny_protocol
  folder = tmp_path_factory.mktemp("main_run")
  (folder / "runs").mkdir()
  for method in ("sgd", "sgd+layer"):
    for seed in range(2):
      r = train.run_spec(dataset, train.RunSpec(protocol, method, seed, 8))
      train.save_run(folder / "runs" / f"{method}_seed{seed}.npz", r)
  return folder


def _saved(folder, method, key):
  """One curve of the main run's seeds 0 and 1, read straight from its .npz files."""
  return np.stack([np.load(folder / "runs" / f"{method}_seed{s}.npz")[key] for s in (0, 1)])


def test_lr_sensitivity_study_tiny(tmp_path, tiny_protocol, main_run):
  protocol, dataset = tiny_protocol
  res = lr_sensitivity.main(["--seeds", "2", "--iters", "4", "--lrs", "0.01,0.1",
                             "--workers", "1", "--reuse", str(main_run), "--no-plots",
                             "--out", str(tmp_path)], protocol, dataset)
  # The protocol's own rate (0.01) comes from the main run, cut to 4 iterations.
  assert res["sources"] == {"sgd @ 0.01": str(main_run / "runs"),
                            "sgd+layer @ 0.01": str(main_run / "runs"),
                            "sgd @ 0.1": "trained", "sgd+layer @ 0.1": "trained"}
  base, layer = res["methods"]["sgd"], res["methods"]["sgd+layer"]
  assert base["test_error"].shape == (2, 2)
  assert ((base["test_error"] >= 0) & (base["test_error"] <= 1)).all()
  assert (layer["mean_factor"] > 1).all()
  # At the reused rate: the main run's factors over its first 4 iterations, and its test
  # errors at iteration 4 (the second of its evaluations at 2, 4, 8).
  factor_4 = _saved(main_run, "sgd+layer", "factor")[:, :4].mean()
  np.testing.assert_allclose(layer["mean_factor"][0], factor_4, rtol=1e-6)
  np.testing.assert_allclose(layer["effective_lr"][0], 0.01 * factor_4, rtol=1e-6)
  err_4 = {m: _saved(main_run, m, "test_error")[:, 1] for m in ("sgd", "sgd+layer")}
  np.testing.assert_allclose(res["paired"]["sgd+layer"][0], err_4["sgd"] - err_4["sgd+layer"])
  assert "within 1 pt" in (tmp_path / "table.md").read_text()


def test_grouping_study_tiny(tmp_path, tiny_protocol, main_run):
  protocol, dataset = tiny_protocol
  res = grouping.main(["--seeds", "2", "--iters", "4", "--bases", "sgd", "--no-plots",
                       "--workers", "1", "--reuse", str(main_run), "--out",
                       str(tmp_path / "out")], protocol, dataset)
  assert res["sources"] == {"sgd": str(main_run / "runs"),
                            "sgd+layer (module)": str(main_run / "runs"),
                            "sgd+layer (array)": "trained"}
  # Reused and cut = trained for 4 iterations (same seed, deterministic harness).
  fresh = lenet_runs.train_runs(protocol, dataset, {"m": ("sgd+layer", None, "module")}, 1, 4)["m"]
  assert fresh["source"] == "trained" and fresh["eval_iters"] == [2, 4]
  np.testing.assert_allclose(res["runs"]["sgd+layer (module)"]["test_error"][:1],
                             fresh["test_error"], atol=1e-6)
  runs = res["runs"]
  assert len(runs["sgd+layer (module)"]["layer_names"]) == 2
  assert len(runs["sgd+layer (array)"]["layer_names"]) == 4
  for label in ("sgd+layer (module)", "sgd+layer (array)"):
    assert (runs[label]["mean_factor_per_layer"] >= 1).all()
  # A bias alone has a smaller norm than its layer, hence a larger factor.
  arr = dict(zip(runs["sgd+layer (array)"]["layer_names"],
                 runs["sgd+layer (array)"]["mean_factor_per_layer"]))
  mod = dict(zip(runs["sgd+layer (module)"]["layer_names"],
                 runs["sgd+layer (module)"]["mean_factor_per_layer"]))
  assert arr["fc1/bias"] > mod["fc1"]
  assert set(res["paired"]["sgd"]) == {"base - module", "base - array", "array - module"}
  # Both reused runs, against the main run's files at iteration 4 (index 1 of 2, 4, 8).
  np.testing.assert_allclose(res["paired"]["sgd"]["base - module"],
                             _saved(main_run, "sgd", "test_error")[:, 1]
                             - _saved(main_run, "sgd+layer", "test_error")[:, 1])
  assert res["paired"]["sgd"]["array - module"].shape == (2,)
  table = (tmp_path / "out" / "table.md").read_text()
  assert "sgd+layer (array)" in table and "Paired differences" in table


def test_reuse_refuses_what_the_main_run_did_not_record(tmp_path, tiny_protocol, main_run):
  protocol, _ = tiny_protocol
  shutil.copytree(main_run / "runs", tmp_path / "runs")
  load = lambda **kw: lenet_runs.load_main_runs(
      **({"folder": tmp_path, "protocol": protocol, "method": "sgd", "base_lr": None,
          "layers": "module", "seeds": 2, "iters": 4} | kw))
  assert load() is not None and load(base_lr=0.01) is not None  # 0.01 is the protocol's
  assert load(base_lr=0.1) is None  # another learning rate
  assert load(layers="array") is None  # another grouping
  assert load(iters=8) is not None  # the whole run
  assert load(seeds=3) is None  # a missing seed
  assert load(iters=16) is None  # longer than recorded
  assert load(iters=3) is None  # 3 was not evaluated
  assert load(method="nag") is None  # not in the main run
  (tmp_path / "results.json").write_text(json.dumps({"config": {"layers": "array"}}))
  assert load() is None
