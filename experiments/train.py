"""Training and evaluation of one method over several seeds, with checkpoint and resume.

Loop shape. One jitted step (buffers donated) called from a Python loop, one seed after
another with the same compiled step. ``jax.vmap`` over seeds measured slower per seed-step
on XLA:CPU (it turns the convolutions into grouped ones), and so did a ``lax.scan`` over
steps. The step draws its minibatch on device from a precomputed index table, so the loop makes no
host transfer and no host sync: per-step losses, per-layer gradient norms and factors are
written into on-device history buffers, and test errors are read back only at the end.

Determinism and pairing. Seed ``s`` fixes the initial parameters (``jax.random.key(s)``),
the minibatch order (a numpy ``default_rng(s)`` permutation per epoch) and dropout keys, and
nothing else does: every method sees the same initialisation and batches for a given seed,
so per-seed differences between methods are paired. A checkpoint holds the whole state
(parameters, optimizer state, histories, test errors so far, iteration); resuming runs the
same compiled step on the same inputs, so it continues bit-identically. Checkpoints and
finished runs are written to a temporary file and renamed into place (``os.replace``), so a
process killed at any point leaves either the previous file or the new one; a checkpoint
records the configuration that wrote it and is refused (named, left in place) by a run of
another configuration.

Recorded per iteration ``k`` and layer ``l``: the norm of the gradient the factor sees
(after weight decay), the factor ``f_l = 1 + log(1 + 1/||g_l||)`` and the effective learning
rate ``lr_k * f_l`` (``lr_k`` for the base methods).

Pieces for other loops: :func:`make_train_step` and :func:`make_eval` build the pure
per-seed functions; :func:`init_state` and :func:`make_order` the inputs
(``examples/train_mesh.py`` runs the same step on a device mesh). :class:`RunSpec` and
:func:`run_spec` make one seed's run a picklable task, for the worker pool of
:mod:`experiments.pool`.

References:
  Singh et al., ICMLA 2015, arXiv:1510.04609, section IV (10 runs per method, test error at
  the first iterations).
"""

from __future__ import annotations

import dataclasses
import functools
import time
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

import layerwise_optax as lo

from . import data as data_lib
from . import methods as methods_lib
from . import models as models_lib
from .cli import InputError
from .configs import Protocol
from .engine import cross_entropy, make_order
from .paper import RUN_KEYS, stack_runs  # noqa: F401 (the studies call train.stack_runs)
from .records import load_checkpoint, read_npz, save_checkpoint, save_npz


class SeedState(NamedTuple):
  """Everything one seed's run carries."""

  params: Any
  opt_state: Any
  loss: jax.Array  # (iters,)
  norm: jax.Array  # (iters, layers)
  factor: jax.Array  # (iters, layers)
  errors: jax.Array  # (len(eval_iters),)


class TrainState(NamedTuple):
  step: jax.Array  # scalar int32: iterations done
  seed: SeedState
  order: jax.Array  # (iters, batch) int32 minibatch indices
  key: jax.Array  # (2,) uint32 dropout key data




def eval_points(protocol: Protocol, iters: int,
                candidates: tuple[int, ...] | None = None) -> tuple[int, ...]:
  """The evaluation iterations (``candidates``, default the protocol's) up to ``iters``,
  and ``iters`` itself."""
  evals = [k for k in (protocol.eval_iters if candidates is None else candidates)
           if k <= iters]
  return tuple(evals if iters in evals else evals + [iters])


@dataclasses.dataclass
class Setup:
  """The static pieces of one run: model, optimizer, recorder and data on device."""

  model: Any
  tx: optax.GradientTransformation
  record: Any  # (grads, params, opt_state) -> (norms, factors), each (layers,)
  layer_names: tuple[str, ...]
  train_x: jax.Array
  train_y: jax.Array
  test_x: jax.Array
  test_y: jax.Array


@functools.cache
def jitted_init(model) -> Any:
  """``jax.jit(model.init)``, compiled once per model configuration (Flax modules are
  hashable), so the methods of a comparison share one compiled initialiser."""
  return jax.jit(model.init)


def layer_names(protocol: Protocol, layers: Any = "module",
                num_classes: int = 10) -> tuple[str, ...]:
  """The names of the protocol model's layers under ``layers`` grouping (no data needed)."""
  model = models_lib.MODELS[protocol.model](num_classes=num_classes)
  return lo.make_plan(models_lib.abstract_params(model), layers).names


def make_recorder(solver, decay_mult: Any, layers: Any):
  """``(grads, params, opt_state=None) -> (norms, factors)``, each (layers,), of the
  gradient the factor sees (after decay), in the order of the layer names.

  An optimizer state that keeps its statistics (a "+layer" optimizer built with
  ``keep_stats=True``: ``optax.tree_utils.tree_get(opt_state, "layer_stats")``) is read,
  so the norms are not computed twice; otherwise (the base methods, which have no layer
  factor, or no state given) they are computed from the decayed gradients.
  """
  decay = methods_lib.decay_by_mult(solver.weight_decay, decay_mult)

  def record(grads, params, opt_state=None):
    stats = None if opt_state is None else optax.tree_utils.tree_get(opt_state, "layer_stats")
    if stats is None:
      decayed, _ = decay.update(grads, optax.EmptyState(), params)
      stats = lo.layer_factors(decayed, layers)
    names = lo.make_plan(grads, layers).names  # a state's dict comes back in sorted order
    return (jnp.stack([stats[name].norm for name in names]),
            jnp.stack([stats[name].factor for name in names]))
  return record


def make_train_step(model, tx, record):
  """The per-seed step ``(step, seed_state, order, key, train_x, train_y) -> seed_state``.

  ``order`` is the seed's (iters, batch) index table; the minibatch of iteration ``step`` is
  gathered on device. Pure and jittable; vmap it over seeds or shard it over devices.
  """
  def step_fn(step, s: SeedState, order, key, train_x, train_y):
    idx = order[step]
    x, y = train_x[idx], train_y[idx]
    rngs = {"dropout": jax.random.fold_in(key, step)}

    def loss_fn(p):
      return cross_entropy(model.apply({"params": p}, x, train=True, rngs=rngs), y)

    loss, grads = jax.value_and_grad(loss_fn)(s.params)
    updates, opt_state = tx.update(grads, s.opt_state, s.params)
    params = optax.apply_updates(s.params, updates)
    norm, factor = record(grads, s.params, opt_state)
    return s._replace(params=params, opt_state=opt_state, loss=s.loss.at[step].set(loss),
                      norm=s.norm.at[step].set(norm), factor=s.factor.at[step].set(factor))
  return step_fn


def make_eval(model, chunk: int = 1000):
  """``(params, test_x, test_y) -> error rate`` on the whole test set, ``chunk`` at a time."""
  def eval_fn(params, test_x, test_y):
    n = test_x.shape[0]
    c = min(chunk, n)
    if n % c:
      raise ValueError(f"test set size {n} is not a multiple of the chunk {c}")
    xs = test_x.reshape((n // c, c) + test_x.shape[1:])
    ys = test_y.reshape(n // c, c)

    def wrong(xy):
      logits = model.apply({"params": params}, xy[0], train=False)
      return jnp.sum(jnp.argmax(logits, -1) != xy[1])
    return jnp.sum(jax.lax.map(wrong, (xs, ys))) / n
  return eval_fn


def build_setup(protocol: Protocol, method: str, dataset: data_lib.Dataset,
                layers: Any = "module", model_kwargs: dict | None = None) -> Setup:
  model = models_lib.MODELS[protocol.model](num_classes=dataset.num_classes,
                                             **(model_kwargs or {}))
  base, _ = methods_lib.split_method(method)
  solver = protocol.solvers[base]
  abstract = models_lib.abstract_params(model)
  lr_mult, decay_mult = models_lib.param_mults(model, abstract)
  tx = methods_lib.make_optimizer(method, solver, lr_mult, decay_mult, layers, keep_stats=True)
  names = lo.make_plan(abstract, layers).names
  mean = None if protocol.model == "lenet" else dataset.train_images.mean(0)
  return Setup(model, tx, make_recorder(solver, decay_mult, layers), names,
               jnp.asarray(data_lib.preprocess(dataset.train_images, mean)),
               jnp.asarray(dataset.train_labels),
               jnp.asarray(data_lib.preprocess(dataset.test_images, mean)),
               jnp.asarray(dataset.test_labels))


def init_state(setup: Setup, seed: int, iters: int, batch: int, n_eval: int) -> TrainState:
  """Initial parameters (Caffe fillers, key = seed), optimizer state and empty histories."""
  params = jitted_init(setup.model)(jax.random.key(seed), setup.train_x[:1])["params"]
  n_layers = len(setup.layer_names)
  s = SeedState(params, setup.tx.init(params), jnp.zeros(iters), jnp.zeros((iters, n_layers)),
                jnp.zeros((iters, n_layers)), jnp.full((n_eval,), jnp.nan))
  order = make_order(seed, setup.train_x.shape[0], iters, batch)
  key = jax.random.key_data(jax.random.fold_in(jax.random.key(seed), 1))
  return TrainState(jnp.zeros((), jnp.int32), s, jnp.asarray(order), key)


class Runner:
  """One method under one protocol: builds and compiles once, then runs seed after seed.

  Evaluates on the full test set after each iteration in ``eval_iters`` (default: the
  protocol's, up to ``iters``) and after the last one.
  """

  def __init__(self, protocol: Protocol, method: str, dataset: data_lib.Dataset, iters: int,
               layers: Any = "module", eval_iters: tuple[int, ...] | None = None,
               batch_size: int | None = None, model_kwargs: dict | None = None):
    self.protocol, self.method, self.iters, self.layers = protocol, method, iters, layers
    self.batch = batch_size or protocol.batch_size
    self.eval_iters = eval_points(protocol, iters, eval_iters)
    self.setup = setup = build_setup(protocol, method, dataset, layers, model_kwargs)
    step_fn = make_train_step(setup.model, setup.tx, setup.record)
    eval_fn = make_eval(setup.model)

    def train_one(state: TrainState, train_x, train_y) -> TrainState:
      key = jax.random.wrap_key_data(state.key)
      seed = step_fn(state.step, state.seed, state.order, key, train_x, train_y)
      return state._replace(step=state.step + 1, seed=seed)

    def evaluate(state: TrainState, k, test_x, test_y) -> TrainState:
      err = eval_fn(state.seed.params, test_x, test_y)
      return state._replace(seed=state.seed._replace(errors=state.seed.errors.at[k].set(err)))

    self.train_one = jax.jit(train_one, donate_argnums=0)
    self.evaluate = jax.jit(evaluate, donate_argnums=0)

  def tag(self, seed: int) -> str:
    """The configuration of one seed's run, as its checkpoint records it."""
    return (f"protocol={self.protocol!r} method={self.method} seed={seed} iters={self.iters} "
            f"batch={self.batch} layers={self.layers} eval_iters={self.eval_iters}")

  def init(self, seed: int) -> TrainState:
    return init_state(self.setup, seed, self.iters, self.batch, len(self.eval_iters))

  def run(self, seed: int, checkpoint: Path | None = None, checkpoint_every: int = 500,
          stop_after: int | None = None, progress=None) -> dict:
    """Trains one seed; returns its curves (numpy).

    With ``checkpoint`` the state is saved every ``checkpoint_every`` iterations and at the
    end, and an existing checkpoint is resumed. ``stop_after`` stops early (to test
    resuming). ``progress`` is called with 1 after each dispatched iteration.
    """
    setup = self.setup
    state = self.init(seed)
    tag = self.tag(seed)
    if checkpoint is not None and Path(checkpoint).exists():
      state, _ = load_checkpoint(checkpoint, state, tag)
    end = self.iters if stop_after is None else min(self.iters, stop_after)
    t0 = time.perf_counter()
    for k in range(int(state.step), end):
      state = self.train_one(state, setup.train_x, setup.train_y)
      if k + 1 in self.eval_iters:
        state = self.evaluate(state, self.eval_iters.index(k + 1), setup.test_x, setup.test_y)
      if checkpoint is not None and (k + 1) % checkpoint_every == 0 and k + 1 < end:
        save_checkpoint(checkpoint, state, tag)
      if progress is not None:
        progress(1)
    if checkpoint is not None:
      save_checkpoint(checkpoint, state, tag)
    s = jax.device_get(state.seed)
    base, layerwise = methods_lib.split_method(self.method)
    solver = self.protocol.solvers[base]
    lr = np.broadcast_to(methods_lib.schedule_fn(solver.base_lr, solver.schedule)(
        np.arange(self.iters)), (self.iters,))
    return {"seed": seed, "done": int(state.step), "test_error": np.asarray(s.errors),
            "train_loss": np.asarray(s.loss), "grad_norm": np.asarray(s.norm),
            "factor": np.asarray(s.factor),
            "effective_lr": lr[:, None] * (s.factor if layerwise else np.ones_like(s.factor)),
            "wall_s": time.perf_counter() - t0, "params": s.params}


def save_run(path: Path, run: dict) -> None:
  """Writes one seed's curves (``RUN_KEYS``), its seed and wall time to ``path`` (.npz)."""
  save_npz(path, seed=run["seed"], wall_s=run["wall_s"], **{k: run[k] for k in RUN_KEYS})


def load_run(path: Path) -> dict:
  """One seed's run as :func:`save_run` wrote it (int seed, float wall time)."""
  saved = read_npz(path, "finished run", "delete it to train that run again")
  missing = [k for k in RUN_KEYS + ("seed", "wall_s") if k not in saved]
  if missing:
    raise InputError(f"{path}: not a finished run (no {', '.join(missing)}); left in place: "
                     "delete it to train that run again")
  return {k: saved[k] for k in RUN_KEYS} | {"seed": int(saved["seed"]),
                                            "wall_s": float(saved["wall_s"])}


class RunSpec(NamedTuple):
  """One seed of one method under one protocol, as a picklable task for a worker pool.

  With ``save_to`` the finished run is written there (:func:`save_run`) and its checkpoint,
  ``checkpoint``, removed."""

  protocol: Protocol
  method: str
  seed: int
  iters: int
  layers: Any = "module"
  batch_size: int | None = None
  checkpoint: Path | None = None
  checkpoint_every: int = 500
  save_to: Path | None = None


_RUNNER: dict[str, Runner] = {}  # one compiled configuration per process, for the next seed


def run_spec(dataset: data_lib.Dataset, spec: RunSpec, progress=None) -> dict:
  """Trains ``spec`` (reusing the last compiled :class:`Runner` when the configuration is
  the same); returns its curves without the parameters, with ``eval_iters`` and
  ``layer_names``."""
  key = repr((spec.protocol, spec.method, spec.iters, spec.layers, spec.batch_size,
              id(dataset)))
  if key not in _RUNNER:
    _RUNNER.clear()
    _RUNNER[key] = Runner(spec.protocol, spec.method, dataset, spec.iters, spec.layers,
                          batch_size=spec.batch_size)
  runner = _RUNNER[key]
  run = runner.run(spec.seed, spec.checkpoint, spec.checkpoint_every, progress=progress)
  run.pop("params")
  if spec.save_to is not None:
    save_run(spec.save_to, run)
    if spec.checkpoint is not None:
      Path(spec.checkpoint).unlink(missing_ok=True)
  return run | {"eval_iters": list(runner.eval_iters),
                "layer_names": list(runner.setup.layer_names)}
