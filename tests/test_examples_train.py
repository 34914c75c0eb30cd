"""Training harness (experiments): Caffe update rules, smoke runs, resume, the paper's
command (experiments.paper) and its report."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import layerwise_optax as lo
from experiments import configs, data, engine, methods, models, paper
from experiments.records import RunTask
from tests.generated_data import learnable_dataset, write_idx_folder
from tests.reference import layer_factor

ALL = configs.METHODS + configs.EXTRA_METHODS


def test_inv_schedule():
  lr = methods.schedule_fn(0.01, configs.MNIST.solvers["sgd"].schedule)
  assert float(lr(0)) == pytest.approx(0.01)
  assert float(lr(1000)) == pytest.approx(0.01 * 1.1 ** -0.75, rel=1e-6)
  steps = methods.schedule_fn(1e-3, configs.CIFAR10_FULL.solvers["sgd"].schedule)
  assert [float(steps(k)) for k in (59999, 60000, 65000)] == pytest.approx([1e-3, 1e-4, 1e-5])


@pytest.mark.parametrize("method", ["sgd+layer", "nag+layer", "adagrad+layer", "nag"])
def test_update_rules_follow_caffe(method):
  """Two steps of one layer {kernel, bias}: decay first, factor, lr_mult 2 on the bias."""
  wd, lr, mu = 0.1, 0.5, 0.9
  solver = configs.Solver(lr, configs.Schedule("fixed"), 0.0 if "adagrad" in method else mu, wd)
  params = {"l": {"kernel": jnp.array([1.0, -2.0]), "bias": jnp.array([0.5])}}
  lr_mult = {"l": {"kernel": 1.0, "bias": 2.0}}
  tx = methods.make_optimizer(method, solver, lr_mult, {"l": {"kernel": 1.0, "bias": 1.0}})
  state = tx.init(params)
  grads = [{"l": {"kernel": jnp.array([0.3, 0.1]), "bias": jnp.array([-0.2])}},
           {"l": {"kernel": jnp.array([0.05, -0.4]), "bias": jnp.array([0.1])}}]
  w = {k: np.asarray(v, np.float64) for k, v in params["l"].items()}
  h = {k: np.zeros_like(v) for k, v in w.items()}
  for g in grads:
    gd = {k: np.asarray(g["l"][k], np.float64) + wd * w[k] for k in w}
    f = layer_factor(list(gd.values())) if method.endswith("+layer") else 1.0
    updates, state = tx.update(g, state, params)
    params = jax.tree.map(lambda p, u: p + u, params, updates)
    for k in w:
      rate = lr * f * lr_mult["l"][k]
      if method.startswith("sgd"):
        h[k] = mu * h[k] + rate * gd[k]
        step = h[k]
      elif method.startswith("nag"):
        old = h[k]
        h[k] = mu * h[k] + rate * gd[k]
        step = (1 + mu) * h[k] - mu * old
      else:
        h[k] = h[k] + gd[k] ** 2
        step = rate * gd[k] / (np.sqrt(h[k]) + 1e-8)
      w[k] = w[k] - step
    for k in w:
      np.testing.assert_allclose(params["l"][k], w[k], rtol=2e-6, atol=1e-7)


@pytest.fixture(scope="module")
def tiny():
  return learnable_dataset()


@pytest.fixture(scope="module")
def images(tiny):
  """``tiny`` as the engine reads it: preprocessed, no validation split."""
  return data.held_out(tiny, 0)


def lenet_setup(iters: int, eval_points: tuple[int, ...] = (20,)) -> engine.Setup:
  """The paper's MNIST protocol on the engine (as python -m experiments.paper builds it) at
  batch 8, every iteration's factors and losses kept."""
  model = models.LeNet()
  return engine.Setup(model, engine.Images(8, eval_chunk=20),
                      methods.CaffeOptimizer("mnist", model, keep_stats=True), eval_points,
                      factor_points=iters, keep_losses=True)


def run(dataset, method: str, seed: int, iters: int = 20, **options) -> dict:
  task = RunTask(method, paper.base_lr(configs.MNIST, method), seed, iters)
  return engine.train(dataset, task, setup=lenet_setup(iters), **options)


def test_smoke_every_method(images):
  """20 iterations of all eight methods: finite, learning, factors recorded."""
  for method in ALL:
    task = RunTask(method, paper.base_lr(configs.MNIST, method), 0, 20)
    r = paper.curves(configs.MNIST, task, run(images, method, 0))
    assert r["test_error"].shape == (1,), method
    assert np.all(np.isfinite(r["train_loss"])), method
    assert r["train_loss"][-5:].mean() < r["train_loss"][:5].mean(), method
    assert r["factor"].shape == (20, 4) and np.all(r["factor"] > 1), method
    lr = methods.schedule_fn(configs.MNIST.solvers[method.split("+")[0]].base_lr,
                             configs.MNIST.solvers[method.split("+")[0]].schedule)(19)
    expect = lr * (r["factor"][19] if method.endswith("+layer") else 1.0)
    np.testing.assert_allclose(r["effective_lr"][19], expect, rtol=1e-6)


def test_resume_is_bit_identical_and_deterministic(images, tmp_path):
  whole, again = run(images, "nag+layer", 3), run(images, "nag+layer", 3)
  ckpt = tmp_path / "ckpt.npz"
  assert run(images, "nag+layer", 3, checkpoint=ckpt, checkpoint_every=5, stop_after=12) is None
  assert ckpt.exists()
  resumed = run(images, "nag+layer", 3, checkpoint=ckpt)
  for other in (again, resumed):
    for key in ("test", "losses", "norms", "factors"):
      assert other[key] == whole[key], key
  assert run(images, "nag+layer", 4)["losses"] != whole["losses"]


def sgd_decay(model):
  """The MNIST sgd solver's weight decay (Caffe's decay_mult) for ``model``."""
  _, decay_mult = models.param_mults(model, models.abstract_params(model))
  return methods.decay_by_mult(configs.MNIST.solvers["sgd"].weight_decay, decay_mult)


def first_step_records(images, keep_stats: bool, seed=0):
  """One engine step of sgd+layer: the carry after it and the decayed gradient."""
  setup = lenet_setup(1)
  setup = dataclasses.replace(setup, optimizer=dataclasses.replace(setup.optimizer,
                                                                   keep_stats=keep_stats))
  compiled = engine.compile_run(setup, "sgd+layer", 1, setup.data.example(images))
  carry, order, slot = engine.start(setup, compiled, images, RunTask("sgd+layer", 0.01, seed, 1))
  train_x, train_y = jnp.asarray(images.train_x), jnp.asarray(images.train_y)
  grads = jax.grad(lambda p: engine.cross_entropy(setup.model.apply(
      {"params": p}, train_x[order[0]], train=True), train_y[order[0]]))(carry.params)
  decayed, _ = sgd_decay(setup.model).update(grads, optax.EmptyState(), carry.params)
  step = engine.make_step(setup, "sgd+layer", 1)
  return step(0, carry, order, slot, (train_x, train_y), jnp.float32(0.01)), decayed


@pytest.mark.parametrize("keep_stats", [False, True])
def test_recorded_factors_are_those_of_the_decayed_gradient(images, keep_stats):
  """An sgd+layer step records layer_factors of the gradient after weight decay, whether the
  engine recomputes them or reads them from a state that keeps them."""
  after, decayed = first_step_records(images, keep_stats)
  kept = optax.tree_utils.tree_get(after.opt_state, "layer_stats")
  assert (kept is not None) == keep_stats
  expect = lo.layer_factors(decayed)
  assert list(expect) == engine.factor_names(decayed)
  np.testing.assert_allclose(after.norms[0], [v.norm for v in expect.values()], rtol=1e-6)
  np.testing.assert_allclose(after.factors[0], [v.factor for v in expect.values()], rtol=1e-6)
  assert np.all(np.asarray(after.factors[0]) > 1)


def test_kept_stats_are_read_in_layer_order():
  """Stats in the state are read, not recomputed, and stacked in the factor names' order."""
  setup = lenet_setup(1)
  params = models.abstract_params(setup.model)
  grads = jax.tree.map(lambda s: jnp.ones(s.shape, s.dtype), params)
  names = engine.factor_names(params)
  kept = {name: lo.LayerFactor(jnp.float32(i), jnp.float32(10 + i))
          for i, name in reversed(list(enumerate(names)))}
  opt = setup.optimizer("sgd+layer", 0.01, 1, grads)
  norm, factor = engine._layer_stats(setup, opt, grads, grads, {"layer_stats": kept})
  np.testing.assert_array_equal(norm, np.arange(len(names)))
  np.testing.assert_array_equal(factor, 10 + np.arange(len(names)))


def test_paired_seeds_share_init_and_batches(images):
  dataset = images
  starts = []
  for method in ("sgd", "adagrad+layer"):
    setup = lenet_setup(1)
    compiled = engine.compile_run(setup, method, 1, setup.data.example(dataset))
    starts.append(engine.start(setup, compiled, dataset, RunTask(method, 0.01, 5, 1)))
  (a, order_a, _), (b, order_b, _) = starts
  np.testing.assert_array_equal(order_a, order_b)
  np.testing.assert_array_equal(a.dropout, b.dropout)
  for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
    np.testing.assert_array_equal(x, y)
  order = engine.make_order(5, 64, 20, 8)  # 160 draws: every epoch is a permutation
  assert sorted(order.ravel()[:64]) == list(range(64))


def test_cli_end_to_end_and_report(tmp_path, monkeypatch):
  write_idx_folder(tmp_path / "idx", n_train=64, n_test=20)
  out = tmp_path / "out"
  argv = ["--dataset", "mnist", "--data-dir", str(tmp_path / "idx"), "--split-sizes", "64,20",
          "--methods", "sgd,sgd+layer", "--seeds", "2", "--iters", "20", "--batch-size", "8",
          "--out", str(out), "--no-progress"]
  results = paper.main(argv)
  assert results["sgd+layer"]["test_error"].shape == (2, 1)
  table = (out / "table.md").read_text()
  assert "| sgd+layer |" in table and "over 2 seeds" in table and "(wins/seeds)" in table
  saved = json.loads((out / "results.json").read_text())
  assert saved["config"]["seeds_done"] == [0, 1]
  assert len(saved["methods"]["sgd"]["factor"]) == 2
  rows = (out / "test_error.csv").read_text().splitlines()
  assert rows[0] == "method,seed,iteration,test_error" and len(rows) == 1 + 2 * 2
  for png in ("test_error.png", "effective_lr.png"):
    assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  # A second call finds every run done and reproduces the same table without training.
  monkeypatch.setattr(engine, "train", lambda *a, **k: pytest.fail("retrained"))
  paper.main(argv + ["--no-plots"])
  assert (out / "table.md").read_text() == table


def test_cli_workers_match_one_process(tmp_path, monkeypatch):
  """--workers 2 trains seeds in two single-threaded processes and reports all of them;
  the workers' progress reaches the parent's bar."""
  write_idx_folder(tmp_path / "idx", n_train=64, n_test=20)
  common = ["--dataset", "mnist", "--data-dir", str(tmp_path / "idx"), "--split-sizes", "64,20",
            "--methods", "sgd+layer",
            "--seeds", "2", "--iters", "6", "--batch-size", "8", "--no-progress", "--no-plots"]
  one = paper.main(common + ["--out", str(tmp_path / "one")])
  ticks = []
  monkeypatch.setattr(paper, "progress_bar", lambda args, total: (ticks.append, list))
  two = paper.main(common + ["--out", str(tmp_path / "two"), "--workers", "2"])
  assert sorted(p.name for p in (tmp_path / "two" / "runs" / "sgd+layer").iterdir()) == [
      "lr0.01_seed0.json", "lr0.01_seed1.json"]
  assert sum(ticks) == 2 * 6
  for key in ("train_loss", "factor", "test_error"):
    np.testing.assert_allclose(two["sgd+layer"][key], one["sgd+layer"][key], rtol=1e-5)
  saved = json.loads((tmp_path / "two" / "results.json").read_text())
  assert saved["config"]["seeds_done"] == [0, 1]
