"""The engine (experiments/engine.py) on the image workloads of the tuned comparisons
(experiments/tuned.py: lenet, resnet) and small generated Fashion-MNIST-format files."""

import dataclasses
import functools
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import layerwise_optax as lo
from experiments import data, engine, methods, models, records, tuned
from experiments.engine import cross_entropy, make_order
from experiments.records import RunTask
from tests.generated_data import write_idx_folder

N_TRAIN, N_TEST, N_VAL = 48, 12, 16
LENET = engine.Setup(tuned.LENET_MODEL, engine.Images(batch=8, eval_chunk=8),
                     tuned.lenet_optimizer, eval_points=2, factor_points=3)
RESNET = engine.Setup(models.ResNet(widths=(4, 4, 8)), engine.Images(batch=8, eval_chunk=8),
                      tuned.resnet_optimizer, eval_points=2, factor_points=3)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  folder = tmp_path_factory.mktemp("fashion")
  write_idx_folder(folder, N_TRAIN, N_TEST)
  return folder


@pytest.fixture(scope="module")
def dataset(data_dir):
  return data.load_held_out("fashion_mnist", str(data_dir), (N_TRAIN, N_TEST), N_VAL)


def test_error_is_the_same_whatever_the_chunk(dataset):
  """A split is scored in chunks of eval_chunk images, one chunk when it is smaller; the
  padding never counts."""
  model = tuned.LENET_MODEL
  params = model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
  apply = lambda x: model.apply(params, x, train=False)
  predicted = np.argmax(np.asarray(apply(jnp.asarray(dataset.val_x))), -1)
  want = 100.0 * float(np.mean(predicted != dataset.val_y))
  for eval_chunk, padded_to in ((500, N_VAL), (N_VAL, N_VAL), (5, 20), (1, N_VAL)):
    kind = engine.Images(batch=8, eval_chunk=eval_chunk)
    _, (images, labels), _ = kind.on_device(dataset)
    assert labels.shape == (padded_to,) and int(jnp.sum(labels >= 0)) == N_VAL
    assert float(kind.score(apply, (images, labels))) == pytest.approx(want, abs=1e-4)


def test_validation_split_is_the_last_training_images(data_dir, dataset):
  raw = write_idx_folder(data_dir / "again", N_TRAIN, N_TEST)
  train_images, train_labels = raw["train"]
  assert dataset.train_x.shape == (N_TRAIN - N_VAL, 28, 28, 1)
  np.testing.assert_array_equal(dataset.val_y, train_labels[-N_VAL:])
  np.testing.assert_array_equal(dataset.val_x[..., 0], train_images[-N_VAL:] / 256)
  np.testing.assert_array_equal(dataset.test_y, raw["test"][1])


def test_record_has_the_interface_keys_and_shapes(dataset):
  record = engine.train(dataset, RunTask("sgd", 0.01, 0, 3), setup=LENET)
  assert set(record) == {*records.RECORD_KEYS, "norms"}
  assert record["eval_iters"] == [2, 3] and record["factor_iters"] == [0, 1, 2]
  for key in ("val", "test", "train_loss"):
    assert len(record[key]) == 2 and all(np.isfinite(record[key]))
  # 16 validation and 12 test images: errors are multiples of 100/16 and 100/12 percent.
  for key, n in (("val", N_VAL), ("test", N_TEST)):
    assert all(0 <= v <= 100 and abs(v * n / 100 - round(v * n / 100)) < 1e-4
               for v in record[key])
  assert list(record["factors"]) == ["conv1", "conv2", "ip1", "ip2"]
  assert all(len(f) == 3 and min(f) > 1 for f in record["factors"].values())
  for name, norms in record["norms"].items():  # f = 1 + ln(1 + 1/||g||)
    np.testing.assert_allclose(record["factors"][name], 1 + np.log1p(1 / np.array(norms)),
                               rtol=1e-6)
  json.dumps(record)


@jax.jit
def lenet_factors(params, x, y):
  """eq. 9 of the LeNet gradient with lenet_solver's weight decay, and the gradient."""
  grads = jax.grad(lambda p: cross_entropy(LENET.model.apply({"params": p}, x), y))(params)
  _, decay_mult = models.param_mults(LENET.model, params)
  decayed, _ = methods.decay_by_mult(5e-4, decay_mult).update(grads, None, params)
  return {name: v.factor for name, v in lo.layer_factors(decayed).items()}, grads


def test_base_method_records_the_factors_of_its_decayed_gradient(dataset):
  iters, lr = 3, 0.05
  record = engine.train(dataset, RunTask("sgd", lr, 1, iters), setup=LENET)
  run = engine.compile_run(LENET, "sgd", iters, LENET.data.example(dataset))
  params = run.init(jax.random.key(1))["params"]
  order = make_order(1, len(dataset.train_y), iters, LENET.data.batch)
  tx = tuned.lenet_optimizer("sgd", lr, iters, params).tx
  opt_state = tx.init(params)
  for k in range(iters):  # factor_iters are 0, 1, 2: every step
    expected, grads = lenet_factors(params, dataset.train_x[order[k]], dataset.train_y[order[k]])
    for name, value in expected.items():
      np.testing.assert_allclose(record["factors"][name][k], value, rtol=1e-5)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = jax.tree.map(jnp.add, params, updates)


def test_same_seed_same_start_for_every_method(dataset):
  """Factors at iteration 0 depend only on the initial parameters and the first batch."""
  at_start = {}
  for method, seed in (("sgd", 0), ("adagrad+layer", 0), ("sgd", 1)):
    record = engine.train(dataset, RunTask(method, 0.01, seed, 3), setup=LENET)
    at_start[method, seed] = [f[0] for f in record["factors"].values()]
  assert at_start["sgd", 0] == at_start["adagrad+layer", 0]
  assert at_start["sgd", 1] != at_start["sgd", 0]


def test_resnet_step_updates_batch_norm_statistics(dataset):
  task = RunTask("nag+relative", 0.1, 0, 2)
  run = engine.compile_run(RESNET, task.method, task.iters, RESNET.data.example(dataset))
  carry, order, slot = engine.start(RESNET, run, dataset, task)
  before = jax.tree.map(np.asarray, carry.model_state)
  stem_kernel = np.asarray(carry.params["stem_conv"]["kernel"])
  x = dataset.train_x[np.asarray(order[0])]
  after = run.step(0, carry, order, slot, (jnp.asarray(dataset.train_x),
                                           jnp.asarray(dataset.train_y)), task.lr).model_state
  # Running mean of the stem's normalisation: 0.9 * 0 + 0.1 * the batch mean of its input.
  stem = nn.Conv(4, (3, 3), padding=[(1, 1)] * 2, use_bias=False).apply(
      {"params": {"kernel": stem_kernel}}, x)
  np.testing.assert_allclose(after["batch_stats"]["stem_bn"]["mean"],
                             0.1 * np.asarray(stem).mean((0, 1, 2)), rtol=1e-4, atol=1e-7)
  np.testing.assert_array_equal(before["batch_stats"]["stem_bn"]["mean"], 0)
  changed = jax.tree.map(lambda a, b: bool(np.any(a != b)), before, after)
  assert all(jax.tree.leaves(changed))


def test_resnet_lars_trains(dataset):
  record = engine.train(dataset, RunTask("optax.lars", 10.0, 0, 2), setup=RESNET)
  assert all(np.isfinite(record["val"])) and len(record["factors"]) == 19


def test_resnet_sgd_is_optax_sgd_on_the_schedule_after_weight_decay():
  params = {"conv": {"kernel": jnp.linspace(-1.0, 1.0, 6)}, "bn": {"scale": jnp.ones(2)}}
  ours = tuned.resnet_optimizer("nag", 0.3, 10, params).tx
  reference = optax.chain(optax.add_decayed_weights(tuned.RESNET_WEIGHT_DECAY),
                          optax.sgd(tuned.resnet_schedule(0.3, 10), 0.9, nesterov=True))
  states = ours.init(params), reference.init(params)
  for k in range(1, 5):
    grads = jax.tree.map(functools.partial(jnp.multiply, k), params)
    (a, state_a), (b, state_b) = ours.update(grads, states[0], params), reference.update(
        grads, states[1], params)
    states = state_a, state_b
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-9), a, b)
  np.testing.assert_allclose([tuned.resnet_schedule(0.3, 10)(k) for k in (0, 1, 10)], [0, 0.3, 0],
                             atol=1e-7)


def test_non_finite_loss_stops_the_run(dataset):
  record = engine.train(dataset, RunTask("sgd", 1e30, 0, 3), setup=LENET)
  for key in ("val", "test", "train_loss"):
    assert np.isnan(record[key]).all()
  assert np.isfinite([f[0] for f in record["factors"].values()]).all()


def test_lenet_main_writes_results(data_dir, tmp_path):
  out = tmp_path / "out"
  tuned.main(["lenet", "--data-dir", str(data_dir), "--split-sizes", f"{N_TRAIN},{N_TEST}",
              "--val-size", str(N_VAL), "--iters", "3", "--seeds", "2", "--methods", "sgd",
              "--workers", "1", "--out", str(out), "--no-plots"])
  results = json.loads((out / "results.json").read_text())
  assert results["workload"] == "lenet" and results["lower_is_better"] is True
  assert results["sizes"]["val_images"] == N_VAL and results["iters"] == 3
  sgd = results["methods"]["sgd"]
  assert sgd["baseline"] == "sgd" and len(sgd["test"]) == 2
  assert sgd["selected_lr"] == tuned.tuning.select_lr(
      {float(lr): v for lr, v in sgd["grid"].items()}, True)
  assert sgd["paired_test_diff"] == [0.0, 0.0]
  assert (out / "table.md").exists()
  assert len(list((out / "runs" / "sgd").glob("*.json"))) == 3 * len(sgd["grid"]) + 2  # + eval


@pytest.mark.parametrize("argv, status, message", [
    (["--split-sizes", "48"], 2, "--split-sizes takes two numbers, TRAIN,TEST"),
    (["--methods", "sgd,bogus"], 2, "unknown method bogus; use some of"),
    (["--dataset", "shakespeare"], 2, "invalid choice: 'shakespeare'"),
    (["--iters", "0"], 2, "--iters: 0 must be at least 1"),
    (["--out", "/proc/x"], 1, "cannot write to /proc/x"),
    (["--split-sizes", f"{N_TRAIN},{N_TEST}", "--val-size", str(N_TRAIN)], 1,
     f"--val-size {N_TRAIN} leaves no training images of {N_TRAIN}"),
    (["--split-sizes", "50,12"], 1, "wrong count 48, expected 50"),
])
def test_bad_input_is_one_line(data_dir, tmp_path, capsys, argv, status, message):
  with pytest.raises(SystemExit) as exit_info:
    tuned.main(["resnet", "--data-dir", str(data_dir), "--out", str(tmp_path), "--workers", "1",
                *argv])
  assert exit_info.value.code == status
  err = capsys.readouterr().err
  assert message in err and err.count("\n") == 1


def test_a_run_stopped_midway_resumes_to_the_same_record(dataset, tmp_path):
  setup = dataclasses.replace(RESNET, check_every=2)  # batch statistics and momentum to carry
  task = RunTask("nag+layer", 0.05, 0, 6)
  whole = engine.train(dataset, task, setup=setup)
  path = tmp_path / "run.ckpt.npz"
  assert engine.train(dataset, task, setup=setup, checkpoint=path, stop_after=3) is None
  assert path.exists()
  saved = records.read_npz(path, "checkpoint", "")
  assert float(saved["wall_s"]) > 0  # the first part's wall time, which the resumed run adds:
  records.save_npz(path, **(saved | {"wall_s": np.array(1e6)}))  # (as if it had taken a long time)
  with pytest.raises(records.InputError, match="checkpoint of another configuration"):
    engine.train(dataset, task._replace(lr=0.1), setup=setup, checkpoint=path)
  resumed = engine.train(dataset, task, setup=setup, checkpoint=path)
  assert not path.exists() and 1e6 < resumed["wall_s"] < 2e6
  for key in (*records.RECORD_KEYS, "norms"):
    if key != "wall_s":
      assert resumed[key] == whole[key], key
  path.write_bytes(b"PK\x03\x04 not a zip")
  with pytest.raises(records.InputError, match="corrupt checkpoint") as error:
    engine.train(dataset, task, setup=setup, checkpoint=path)
  assert "\n" not in str(error.value)
