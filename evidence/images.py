"""One image-classification training run on Fashion-MNIST: the ``train`` of the image
workloads (``evidence.lenet``, ``evidence.resnet``).

Data. The last ``val_size`` images of the 60,000 training images are the validation split
(the same for every seed and method); the model trains on the rest and is tested on the
official 10,000 test images. Pixels are scaled by 1/256 (Caffe's MNIST transform).

Run. Seed ``s`` fixes the initial variables (``jax.random.key(s)``) and the minibatch order
(:func:`examples.paper.train.make_order`), and nothing else does, so runs of different
methods with the same seed are paired. One jitted step gathers its minibatch on device,
updates the parameters and, where the model has batch normalisation, its running
statistics. At every iteration it takes the gradient the factor sees, ``g + wd * w`` where
the method adds weight decay to the gradient, and records the factors of eq. 9,

    f_l = 1 + ln(1 + 1 / ||g_l||_2),

(:func:`layerwise_optax.layer_factors`) at ``factor_points`` iterations, for every method,
whether or not it applies them. Validation and test error (%) are measured at ``eval_points``
evenly spaced iterations (the last one being the final iteration), with the mean training
loss since the previous point. A non-finite training loss stops the run (checked every
``check_every`` iterations and at each evaluation point); every metric from then on is NaN.

The run returns the RunRecord of the evidence interface: ``eval_iters``, ``val``, ``test``,
``train_loss``, ``factor_iters`` (the iterations done when the gradient was taken, 0 = at
initialisation), ``factors`` (layer name -> f_l at those iterations) and ``wall_s``.

References:
  Singh et al., "Layer-Specific Adaptive Learning Rates for Deep Networks", ICMLA 2015,
  arXiv:1510.04609, eq. 9.
  Xiao, Rasul, Vollgraf, "Fashion-MNIST", arXiv:1708.07747.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

import layerwise_optax as lo
from evidence import tuning
from experiments import data as data_lib
from experiments.cli import InputError, positive_int, positive_ints
from experiments.train import cross_entropy, jitted_init, make_order


class ImageData(NamedTuple):
  """Preprocessed float32 NHWC images and int32 labels of the three splits."""

  train_x: np.ndarray
  train_y: np.ndarray
  val_x: np.ndarray
  val_y: np.ndarray
  test_x: np.ndarray
  test_y: np.ndarray


def load(data_dir: str | None = None, split_sizes: tuple[int, int] | None = None,
         val_size: int = 10000) -> ImageData:
  """Fashion-MNIST with the last ``val_size`` training images held out for validation.

  ``data_dir`` defaults to the harness's (:func:`examples.paper.data.default_folder`).
  ``split_sizes`` = (train, test) counts of smaller files in the same format (tests); those
  are read without the published files' content hashes, which only the full files match.
  """
  if split_sizes is None:
    dataset = data_lib.load_dataset("fashion_mnist", data_dir)
    train_images, train_labels = dataset.train_images, dataset.train_labels
    test_images, test_labels = dataset.test_images, dataset.test_labels
  else:
    folder = data_dir or data_lib.default_folder("fashion_mnist")
    train_images, train_labels = data_lib.read_idx_split(folder, "train", None, split_sizes[0])
    test_images, test_labels = data_lib.read_idx_split(folder, "test", None, split_sizes[1])
  n_train = train_images.shape[0] - val_size
  if n_train < 1:
    raise InputError(f"--val-size {val_size} leaves no training images of "
                     f"{train_images.shape[0]}; pass a smaller --val-size")
  scaled = data_lib.preprocess(train_images)
  return ImageData(scaled[:n_train], train_labels[:n_train], scaled[n_train:],
                   train_labels[n_train:], data_lib.preprocess(test_images), test_labels)


class Optimizer(NamedTuple):
  """A method's optimizer and the transformation that gives the gradient its factor sees
  (the weight decay it adds to the gradient; ``optax.identity()`` where it adds none)."""

  tx: optax.GradientTransformation
  seen: optax.GradientTransformation


@dataclasses.dataclass(frozen=True)
class ImageSetup:
  """What a workload fixes: model, optimizers, batch and measurement points.

  ``optimizer(method, lr, iters, params)`` builds a method's :class:`Optimizer` for its
  learning rate and run length (a module-level function, so the setup pickles); it is
  called inside the jitted step with ``lr`` a traced scalar, so it may only compute with
  ``lr``, never branch on it.
  """

  model: Any  # a Flax module, hashable
  optimizer: Callable[[str, float, int, Any], Optimizer]
  batch: int
  eval_points: int
  factor_points: int = 50
  layers: Any = "module"
  check_every: int = 50
  eval_chunk: int = 500


def factor_iters(iters: int, points: int) -> list[int]:
  """``points`` evenly spaced iterations in 0..iters-1 (the iterations done when the
  gradient is taken)."""
  return sorted({int(k) for k in np.linspace(0, iters - 1, points).round()})


def init_variables(model, seed: int, example: np.ndarray) -> dict:
  """The model's initial variables for ``seed`` (``params`` and, with batch normalisation,
  ``batch_stats``)."""
  return dict(jitted_init(model)(jax.random.key(seed), jnp.asarray(example[:1])))


def padded(images: np.ndarray, labels: np.ndarray, chunk: int) -> tuple[np.ndarray, ...]:
  """Images and labels padded to a multiple of ``chunk``; padding labels are -1."""
  pad = -len(labels) % chunk
  return (np.concatenate([images, np.zeros((pad,) + images.shape[1:], images.dtype)]),
          np.concatenate([labels, np.full(pad, -1, labels.dtype)]))


def make_error(model, chunk: int):
  """``(variables, images, labels) -> error (%)`` over labels >= 0, ``chunk`` at a time
  (the length must be a multiple of ``chunk``: :func:`padded`)."""
  def error(variables, images, labels):
    def wrong(batch):
      x, y = batch
      guess = jnp.argmax(model.apply(variables, x, train=False), -1)
      return jnp.sum((guess != y) & (y >= 0))
    shaped = (images.reshape((-1, chunk) + images.shape[1:]), labels.reshape(-1, chunk))
    return 100.0 * jnp.sum(jax.lax.map(wrong, shaped)) / jnp.sum(labels >= 0)
  return error


class Carry(NamedTuple):
  """One run's state on device."""

  params: Any
  model_state: dict  # batch_stats, or empty
  opt_state: Any
  losses: jax.Array  # (iters,) training loss per iteration
  factors: jax.Array  # (len(factor_iters) + 1, layers); the last row takes the unrecorded


class Compiled(NamedTuple):
  step: Callable
  error: Callable
  layer_names: tuple[str, ...]


def compile_run(setup: ImageSetup, method: str, iters: int,
                image_shape: tuple[int, ...]) -> Compiled:
  """The jitted step ``(k, carry, order, slot, train_x, train_y, lr) -> carry`` and evaluation
  of one (method, iters). The learning rate is an argument, so one compilation serves the
  whole grid; the optimizer is built inside the step (its state does not depend on ``lr``)."""
  model = setup.model
  abstract = jax.eval_shape(lambda x: model.init(jax.random.key(0), x),
                            jax.ShapeDtypeStruct((1,) + image_shape, jnp.float32))
  names = lo.make_plan(abstract["params"], setup.layers).names

  def step(k, carry: Carry, order, slot, train_x, train_y, lr) -> Carry:
    opt = setup.optimizer(method, lr, iters, carry.params)
    x, y = train_x[order[k]], train_y[order[k]]

    def loss_fn(params):
      logits, new_state = model.apply({"params": params, **carry.model_state}, x, train=True,
                                      mutable=list(carry.model_state))
      return cross_entropy(logits, y), new_state

    (loss, new_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(carry.params)
    seen, _ = opt.seen.update(grads, opt.seen.init(carry.params), carry.params)
    factor = jnp.stack([v.factor for v in lo.layer_factors(seen, setup.layers).values()])
    updates, opt_state = opt.tx.update(grads, carry.opt_state, carry.params)
    return Carry(optax.apply_updates(carry.params, updates), dict(new_state), opt_state,
                 carry.losses.at[k].set(loss), carry.factors.at[slot[k]].set(factor))

  return Compiled(jax.jit(step, donate_argnums=1), jax.jit(make_error(model, setup.eval_chunk)),
                  names)


@functools.lru_cache(maxsize=16)
def compiled(setup: ImageSetup, method: str, iters: int,
             image_shape: tuple[int, ...]) -> Compiled:
  """:func:`compile_run`, kept for the next runs of the same configuration in a process."""
  return compile_run(setup, method, iters, image_shape)


def start(run: Compiled, setup: ImageSetup, dataset: ImageData, task) -> tuple:
  """The initial carry of ``task`` (``RunTask``), its minibatch order (iters, batch) and the
  factor buffer's row for each iteration (the spare last row where none is recorded)."""
  variables = init_variables(setup.model, task.seed, dataset.train_x)
  params = variables.pop("params")
  recorded = factor_iters(task.iters, setup.factor_points)
  slot = np.full(task.iters, len(recorded), np.int32)
  slot[recorded] = np.arange(len(recorded))
  tx = setup.optimizer(task.method, task.lr, task.iters, params).tx
  carry = Carry(params, variables, tx.init(params), jnp.zeros(task.iters),
                jnp.full((len(recorded) + 1, len(run.layer_names)), jnp.nan))
  order = make_order(task.seed, dataset.train_x.shape[0], task.iters, setup.batch)
  return carry, jnp.asarray(order), jnp.asarray(slot)


_ON_DEVICE: dict[int, tuple] = {}  # id(dataset) -> its arrays on device, eval splits padded


def device_data(dataset: ImageData, chunk: int) -> tuple:
  key = id(dataset)
  if key not in _ON_DEVICE:
    _ON_DEVICE.clear()
    arrays = (dataset.train_x, dataset.train_y,
              *padded(dataset.val_x, dataset.val_y, chunk),
              *padded(dataset.test_x, dataset.test_y, chunk))
    _ON_DEVICE[key] = tuple(jnp.asarray(a) for a in arrays)
  return _ON_DEVICE[key]


def train(dataset: ImageData, task, progress: Callable[[int], None] = lambda n: None, *,
          setup: ImageSetup) -> dict:
  """Trains ``task`` (an ``evidence.tuning.RunTask``: method, lr, seed, iters); returns its
  RunRecord (module docstring)."""
  began = time.perf_counter()
  iters = task.iters
  run = compiled(setup, task.method, iters, dataset.train_x.shape[1:])
  train_x, train_y, val_x, val_y, test_x, test_y = device_data(dataset, setup.eval_chunk)
  carry, order, slot = start(run, setup, dataset, task)
  recorded = factor_iters(iters, setup.factor_points)
  lr = jnp.float32(task.lr)
  evals = tuning.eval_iters(iters, setup.eval_points)
  val, test, train_loss = [], [], []
  checked = previous = 0
  for k in range(iters):
    carry = run.step(k, carry, order, slot, train_x, train_y, lr)
    done = k + 1
    if done % setup.check_every and done not in evals and done < iters:
      continue
    finite = bool(jnp.all(jnp.isfinite(carry.losses[checked:done])))
    progress(done - checked)
    checked = done
    if not finite:
      break
    if done in evals:
      variables = {"params": carry.params, **carry.model_state}
      val.append(float(run.error(variables, val_x, val_y)))
      test.append(float(run.error(variables, test_x, test_y)))
      train_loss.append(float(jnp.mean(carry.losses[previous:done])))
      previous = done
  progress(iters - checked)
  missing = len(evals) - len(val)
  factors = np.asarray(carry.factors[:-1])
  return {"eval_iters": evals, "val": val + [float("nan")] * missing,
          "test": test + [float("nan")] * missing,
          "train_loss": train_loss + [float("nan")] * missing,
          "factor_iters": recorded,
          "factors": {name: factors[:, i].tolist() for i, name in enumerate(run.layer_names)},
          "wall_s": time.perf_counter() - began}


def make_train(setup: ImageSetup) -> Callable:
  """``train`` bound to ``setup``: the picklable ``Workload.train``."""
  return functools.partial(train, setup=setup)


def add_data_options(parser, val_size: int) -> None:
  """``--data-dir``, ``--split-sizes TRAIN,TEST`` (smaller data files) and ``--val-size``."""
  parser.add_argument("--data-dir", default=None,
                      help="folder of the Fashion-MNIST IDX files (default: the harness's)")
  parser.add_argument("--split-sizes", type=positive_ints, default=None, metavar="TRAIN,TEST",
                      help="the number of train and test images the files hold, for small "
                      "generated data (default: 60000,10000)")
  parser.add_argument("--val-size", type=positive_int, default=val_size,
                      help="the last N training images, held out for validation")


def data_loader(parser, args) -> Callable[[], ImageData]:
  """The picklable ``Workload.load_data`` of the data options (usage errors via ``parser``)."""
  if args.split_sizes is not None and len(args.split_sizes) != 2:
    parser.error("--split-sizes takes two numbers, TRAIN,TEST")
  return functools.partial(load, args.data_dir, args.split_sizes, args.val_size)


def sizes(setup: ImageSetup, args, **extra) -> dict:
  """The run's sizes for results.json: data splits, batch and measurement points."""
  n_train, n_test = args.split_sizes or (60000, 10000)
  return {"model": type(setup.model).__name__, "train_images": n_train - args.val_size,
          "val_images": args.val_size, "test_images": n_test, "batch": setup.batch,
          "eval_iters": tuning.eval_iters(args.iters, setup.eval_points),
          "factor_points": setup.factor_points,
          "layers": setup.layers, **extra}
