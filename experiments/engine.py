r"""One training engine for every experiment: one jitted step, one evaluation, one loop.

A run trains ``setup.model`` with one method at one learning rate from one seed
(:class:`~experiments.records.RunTask`) and returns its run record
(:mod:`experiments.records`).

**Batches.** The data kind of a :class:`Setup` says how a minibatch is drawn and a split is
scored: :class:`Images` (classification: a fresh permutation of the training images each
epoch, cross-entropy in nats, error in percent) or :class:`Windows` (next-token prediction:
windows of ``context + 1`` tokens at uniformly drawn offsets, cross-entropy and score in bits
per token over fixed, evenly spaced windows). Seed ``s`` fixes the initial variables
(``jax.random.key(s)``), the minibatch order and the dropout keys (``fold_in(fold_in(key(s),
1), k)`` at step ``k``, for models with dropout), and nothing else does, so runs of different
methods with the same seed are paired.

**Step.** One jitted step, compiled once per (setup, method, iterations): it gathers its
minibatch on device, updates the parameters and, where the model has batch normalisation,
its running statistics (``batch_stats``). The learning rate is an argument of the step (the
optimizer is built inside it, from a traced scalar), so one compilation serves a whole
learning-rate grid and every seed. At the iterations ``factor_iters`` it records, for every
method whether or not it applies them, each layer's norm ``||g_l||_2`` and factor of eq. 9,

    f_l = 1 + ln(1 + 1 / ||g_l||_2),

of the gradient the factor sees (``g + wd * w`` where the method adds weight decay to the
gradient): read from the optimizer state where the method keeps them (``keep_stats=True``),
computed otherwise.

**Loop.** Validation and test metric at ``eval_points`` evenly spaced iterations (the last
the final one), with the mean training loss since the previous point. A non-finite training
loss stops the run (checked every ``check_every`` iterations and at each evaluation point);
every metric from then on is NaN. With a checkpoint path the whole state (variables,
optimizer state, buffers, metrics so far) is saved every ``checkpoint_every`` iterations and
resumed by the next call; the resumed run computes what the uninterrupted one would.

References:
  Singh et al., "Layer-Specific Adaptive Learning Rates for Deep Networks", ICMLA 2015,
  arXiv:1510.04609, eq. 9.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

import layerwise_optax as lo
from experiments import records
from experiments.methods import Optimizer


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Mean softmax cross-entropy (nats) of integer labels."""
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def bits(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """Mean next-token cross-entropy in bits."""
  return cross_entropy(logits, targets) / math.log(2)


def make_order(seed: int, n_train: int, iters: int, batch: int) -> np.ndarray:
  """Minibatch indices (iters, batch): a fresh permutation of the training set each epoch."""
  rng = np.random.default_rng(seed)
  epochs = -(-iters * batch // n_train)
  perm = np.concatenate([rng.permutation(n_train) for _ in range(epochs)])
  return perm[: iters * batch].reshape(iters, batch).astype(np.int32)


def eval_iters(iters: int, points: int) -> list[int]:
  """A run's evaluation iterations: ``points`` evenly spaced in 1..iters, the last one
  ``iters`` (fewer when ``iters < points``)."""
  return sorted({max(1, round(iters * (i + 1) / points)) for i in range(points)})


def spaced_iters(iters: int, points: int) -> list[int]:
  """``points`` evenly spaced iterations in 0..iters-1 (iterations done when a gradient is
  taken)."""
  return sorted({int(k) for k in np.linspace(0, iters - 1, points).round()})


def padded(images: np.ndarray, labels: np.ndarray, chunk: int) -> tuple[np.ndarray, ...]:
  """Images and labels padded to a multiple of ``chunk``; padding labels are -1."""
  pad = -len(labels) % chunk
  return (np.concatenate([images, np.zeros((pad,) + images.shape[1:], images.dtype)]),
          np.concatenate([labels, np.full(pad, -1, labels.dtype)]))


def eval_windows(tokens: np.ndarray, context: int, count: int, chunk: int) -> np.ndarray:
  """(chunks, chunk, context + 1) fixed windows, evenly spaced and non-overlapping, about
  ``count`` of them (a multiple of ``chunk``, at most what ``tokens`` holds)."""
  fits = (len(tokens) - 1) // context
  chunk = max(1, min(chunk, count, fits))
  count = max(chunk, min(count, fits) // chunk * chunk)
  starts = np.linspace(0, len(tokens) - context - 1, count).astype(np.int64)
  windows = tokens[starts[:, None] + np.arange(context + 1)]
  return windows.reshape(-1, chunk, context + 1)


@dataclasses.dataclass(frozen=True)
class Images:
  """Image classification on :class:`experiments.data.ImageData`: ``batch`` images per step,
  error (%) scored ``eval_chunk`` images at a time (a smaller split in one chunk)."""

  batch: int
  eval_chunk: int = 500
  metric = "error (%)"

  def example(self, dataset) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct((1,) + dataset.train_x.shape[1:], jnp.float32)

  def on_device(self, dataset) -> tuple[tuple, tuple, tuple]:
    """(train images, labels), and the validation and test splits padded to the chunk."""
    return ((jnp.asarray(dataset.train_x), jnp.asarray(dataset.train_y)),
            *(tuple(jnp.asarray(a) for a in padded(x, y, self.chunk(len(y))))
              for x, y in ((dataset.val_x, dataset.val_y), (dataset.test_x, dataset.test_y))))

  def chunk(self, n: int) -> int:
    """Images scored at a time in a split of ``n`` (padded to a multiple of it)."""
    return max(1, min(self.eval_chunk, n))

  def order(self, dataset, seed: int, iters: int) -> np.ndarray:
    return make_order(seed, dataset.train_x.shape[0], iters, self.batch)

  def batch_at(self, train: tuple, row: jax.Array) -> tuple[jax.Array, jax.Array]:
    return train[0][row], train[1][row]

  loss = staticmethod(cross_entropy)

  def score(self, apply: Callable, split: tuple) -> jax.Array:
    """Error (%) over labels >= 0 of the padded split, ``eval_chunk`` images at a time."""
    images, labels = split
    chunk = self.chunk(labels.shape[0])  # the padded length: the split's own chunk

    def wrong(batch):
      x, y = batch
      return jnp.sum((jnp.argmax(apply(x), -1) != y) & (y >= 0))
    shaped = (images.reshape((-1, chunk) + images.shape[1:]), labels.reshape(-1, chunk))
    return 100.0 * jnp.sum(jax.lax.map(wrong, shaped)) / jnp.sum(labels >= 0)


@dataclasses.dataclass(frozen=True)
class Windows:
  """Next-token prediction on :class:`experiments.shakespeare.CharData`: ``batch`` windows of
  ``context + 1`` tokens per step; bits per token scored over about ``eval_tokens``
  positions of each split, ``eval_chunk`` windows at a time."""

  context: int
  batch: int
  eval_tokens: int = 65536
  eval_chunk: int = 64
  metric = "bits per character"

  def example(self, dataset) -> jax.ShapeDtypeStruct:
    del dataset
    return jax.ShapeDtypeStruct((1, self.context), jnp.int32)

  def on_device(self, dataset) -> tuple[tuple, tuple, tuple]:
    """(train tokens,), and the validation and test windows."""
    count = max(1, self.eval_tokens // self.context)
    return ((jnp.asarray(dataset.train),),
            *((jnp.asarray(eval_windows(part, self.context, count, self.eval_chunk)),)
              for part in (dataset.val, dataset.test)))

  def order(self, dataset, seed: int, iters: int) -> np.ndarray:
    """(iters, batch) offsets of the training windows: the data order of ``seed``."""
    return np.random.default_rng(seed).integers(
        0, len(dataset.train) - self.context, (iters, self.batch)).astype(np.int32)

  def batch_at(self, train: tuple, row: jax.Array) -> tuple[jax.Array, jax.Array]:
    windows = train[0][row[:, None] + jnp.arange(self.context + 1)]
    return windows[:, :-1], windows[:, 1:]

  loss = staticmethod(bits)

  def score(self, apply: Callable, split: tuple) -> jax.Array:
    """Mean bits per token over the split's windows (the mean of the chunks' means)."""
    return jnp.mean(jax.lax.map(lambda chunk: bits(apply(chunk[:, :-1]), chunk[:, 1:]),
                                split[0]))


@dataclasses.dataclass(frozen=True)
class Setup:
  """What a workload fixes for every run: model, data kind, optimizers and measurement.

  ``optimizer(method, lr, iters, params)`` builds a method's
  :class:`~experiments.methods.Optimizer` for its learning rate and run length (a
  module-level function, so the setup pickles); it is called inside the jitted step with
  ``lr`` a traced scalar, so it may only compute with ``lr``, never branch on it. The model
  is called ``model.apply(variables, x, train=...)``. Factors are recorded at
  ``factor_points`` evenly spaced iterations (every iteration when it equals the run's
  length), or (``None``) at initialisation and just before each evaluation point.
  ``keep_losses``: the record also holds every iteration's training loss (``losses``).
  ``probe(params, initial_params) -> {name: scalar}`` (a module-level function), where
  given, is measured at each evaluation point too (the record's ``probes``). ``fused`` runs
  the steps between two stops in one compiled loop (``lax.fori_loop``): one dispatch instead
  of one per step, for models so small that dispatching costs more than computing.
  """

  model: Any  # a Flax module, hashable
  data: Images | Windows
  optimizer: Callable[[str, Any, int, Any], Optimizer]
  eval_points: int | tuple[int, ...]
  factor_points: int | None = 50
  layers: Any = "module"
  stacked: Any = None
  check_every: int = 50
  keep_losses: bool = False
  probe: Callable[[Any, Any], dict] | None = None
  fused: bool = False

  def eval_iters(self, iters: int) -> list[int]:
    """``eval_points`` evenly spaced iterations, or (a tuple) those of them up to ``iters``
    and ``iters`` itself."""
    if isinstance(self.eval_points, tuple):
      return sorted({*(k for k in self.eval_points if k <= iters), iters})
    return eval_iters(iters, self.eval_points)

  def factor_iters(self, iters: int) -> list[int]:
    if self.factor_points is None:
      return sorted({0, *(k - 1 for k in self.eval_iters(iters))})
    return spaced_iters(iters, self.factor_points)


def factor_names(params: Any, layers: Any = "module", stacked: Any = None) -> list[str]:
  """The names of the factors a step records: ``name[i]`` for slice ``i`` of a stacked
  layer."""
  shapes = jax.eval_shape(lambda tree: lo.layer_factors(tree, layers, stacked), params)
  return [f"{name}[{i}]" if stat.factor.shape else name
          for name, stat in shapes.items() for i in range(max(1, math.prod(stat.factor.shape)))]


class Carry(NamedTuple):
  """One run's state on device."""

  params: Any
  model_state: dict  # batch_stats, or empty
  opt_state: Any
  losses: jax.Array  # (iters,) training loss per iteration
  norms: jax.Array  # (len(factor_iters) + 1, factors); the last row takes the unrecorded
  factors: jax.Array  # as norms
  dropout: jax.Array  # the key data of the dropout key; step k uses fold_in(key, k)


class Compiled(NamedTuple):
  init: Callable  # key -> variables
  step: Callable  # (k, carry, order, slot, train, lr) -> carry
  score: Callable  # (variables, split) -> metric
  names: list[str]
  steps: Callable  # (first, stop, carry, order, slot, train, lr) -> carry after steps first..
  probe: Callable | None  # (params, initial params) -> {name: scalar}
  probes: list[str]  # the probe's names, in the order of its values


def _layer_stats(setup: Setup, opt: Optimizer, grads, params, opt_state):
  """Norms and factors (flat, in :func:`factor_names` order) of the gradient the factor sees:
  from the optimizer state where it keeps them, else computed."""
  kept = optax.tree_utils.tree_get(opt_state, "layer_stats")
  if kept is None:
    seen, _ = opt.seen.update(grads, opt.seen.init(params), params)
    kept = lo.layer_factors(seen, setup.layers, setup.stacked)
  names = lo.make_plan(params, setup.layers, setup.stacked).names
  return (jnp.concatenate([jnp.ravel(kept[n].norm) for n in names]),
          jnp.concatenate([jnp.ravel(kept[n].factor) for n in names]))


def make_step(setup: Setup, method: str, iters: int) -> Callable:
  """The pure training step ``(k, carry, order, slot, train, lr) -> carry`` of iteration
  ``k``: the minibatch ``order[k]`` of ``train``, the loss and factors written at ``k`` and
  ``slot[k]``. :func:`compile_run` jits it; a caller may shard it instead (e.g. with a
  ``setup.model`` whose ``apply`` adds sharding constraints)."""
  model, kind = setup.model, setup.data

  def step(k, carry: Carry, order, slot, train, lr) -> Carry:
    opt = setup.optimizer(method, lr, iters, carry.params)
    x, y = kind.batch_at(train, order[k])

    def loss_fn(params):
      rngs = {"dropout": jax.random.fold_in(jax.random.wrap_key_data(carry.dropout), k)}
      out, new_state = model.apply({"params": params, **carry.model_state}, x, train=True,
                                   mutable=list(carry.model_state), rngs=rngs)
      return kind.loss(out, y), new_state

    (loss, new_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(carry.params)
    updates, opt_state = opt.tx.update(grads, carry.opt_state, carry.params)
    norm, factor = _layer_stats(setup, opt, grads, carry.params, opt_state)
    return Carry(optax.apply_updates(carry.params, updates), dict(new_state), opt_state,
                 carry.losses.at[k].set(loss), carry.norms.at[slot[k]].set(norm),
                 carry.factors.at[slot[k]].set(factor), carry.dropout)
  return step


@functools.lru_cache(maxsize=16)
def compile_run(setup: Setup, method: str, iters: int, example: jax.ShapeDtypeStruct
                ) -> Compiled:
  """The jitted initialisation, step (:func:`make_step`) and evaluation of (method, iters),
  kept for the next runs of the same configuration in this process."""
  model, kind = setup.model, setup.data
  init = jax.jit(lambda key: model.init(key, jnp.zeros(example.shape, example.dtype)))
  names = factor_names(jax.eval_shape(init, jax.random.key(0))["params"], setup.layers,
                       setup.stacked)
  step = make_step(setup, method, iters)

  def score(variables, split):
    return kind.score(lambda x: model.apply(variables, x, train=False), split)

  def steps(first, stop, carry: Carry, order, slot, train, lr) -> Carry:
    return jax.lax.fori_loop(first, stop, lambda k, c: step(k, c, order, slot, train, lr),
                             carry)

  params = jax.eval_shape(init, jax.random.key(0))["params"]
  probes = [] if setup.probe is None else sorted(jax.eval_shape(setup.probe, params, params))
  return Compiled(init, jax.jit(step, donate_argnums=1), jax.jit(score), names,
                  jax.jit(steps, donate_argnums=2),
                  None if setup.probe is None else jax.jit(setup.probe), probes)


_ON_DEVICE: dict[tuple, tuple] = {}  # (id(dataset), data kind) -> its arrays on device


def on_device(kind: Images | Windows, dataset) -> tuple:
  """``kind.on_device(dataset)``, kept for the next runs on the same dataset."""
  key = (id(dataset), kind)
  if key not in _ON_DEVICE:
    _ON_DEVICE.clear()
    _ON_DEVICE[key] = kind.on_device(dataset)
  return _ON_DEVICE[key]


def start(setup: Setup, run: Compiled, dataset, task: records.RunTask) -> tuple:
  """The initial carry of ``task``, its minibatch order (one row per iteration) and the
  factor buffers' row for each iteration (the spare last row where none is recorded)."""
  recorded = setup.factor_iters(task.iters)
  slot = np.full(task.iters, len(recorded), np.int32)
  slot[recorded] = np.arange(len(recorded))
  variables = dict(run.init(jax.random.key(task.seed)))
  params = variables.pop("params")
  opt = setup.optimizer(task.method, task.lr, task.iters, params)
  shape = (len(recorded) + 1, len(run.names))
  dropout = jax.random.key_data(jax.random.fold_in(jax.random.key(task.seed), 1))
  carry = Carry(params, variables, opt.tx.init(params), jnp.zeros(task.iters),
                jnp.full(shape, jnp.nan), jnp.full(shape, jnp.nan), dropout)
  order = setup.data.order(dataset, task.seed, task.iters)
  return carry, jnp.asarray(order), jnp.asarray(slot)


def tag(setup: Setup, task: records.RunTask) -> str:
  """The configuration of a run, as its checkpoint records it (the same in every process)."""
  fields = {f.name: getattr(setup, f.name) for f in dataclasses.fields(setup)}
  optimizer = setup.optimizer
  fields["optimizer"] = (f"{optimizer.__module__}.{optimizer.__qualname__}"
                         if hasattr(optimizer, "__qualname__") else repr(optimizer))
  if setup.probe is not None:  # a function's repr names its address, another in each process
    fields["probe"] = f"{setup.probe.__module__}.{setup.probe.__qualname__}"
  return " ".join(f"{fields!r} {tuple(task)!r}".split())  # one line (module reprs have several)


def train(dataset, task: records.RunTask, progress: Callable[[int], None] = lambda n: None, *,
          setup: Setup, checkpoint: Path | None = None, checkpoint_every: int = 500,
          stop_after: int | None = None) -> dict:
  """Trains ``task`` on ``dataset``; returns its run record (:mod:`experiments.records`).

  With ``checkpoint`` the state is saved there every ``checkpoint_every`` iterations and an
  existing checkpoint of the same configuration is resumed (and removed at the end).
  ``stop_after`` stops after that many iterations and returns ``None`` (to test resuming).
  ``progress`` is called with the iterations done since its last call.
  """
  began = time.perf_counter()
  iters = task.iters
  run = compile_run(setup, task.method, iters, setup.data.example(dataset))
  train_arrays, val_split, test_split = on_device(setup.data, dataset)
  carry, order, slot = start(setup, run, dataset, task)
  initial = jax.tree.map(jnp.copy, carry.params) if run.probe is not None else None
  # (val, test, train loss, *probes) at each evaluation point so far
  measured = np.zeros((0, 3 + len(run.probes)))
  done, earlier_s = 0, 0.0  # wall time spent before the checkpoint resumed from
  if checkpoint is not None and Path(checkpoint).exists():
    carry, extra = records.load_checkpoint(checkpoint, carry, tag(setup, task))
    measured, done = extra["measured"], int(extra["done"])
    earlier_s = float(extra.get("wall_s", 0.0))  # (checkpoints before it was kept: 0)
  lr = jnp.float32(task.lr)
  evals = setup.eval_iters(iters)
  saves = range(checkpoint_every, iters, checkpoint_every) if checkpoint is not None else ()
  stops = sorted({*range(setup.check_every, iters, setup.check_every), *evals, *saves})
  end = iters if stop_after is None else min(iters, stop_after)
  diverged, saved = False, done
  for stop in (s for s in stops if s > done):
    if done >= end:
      break
    if setup.fused:
      carry = run.steps(done, min(stop, end), carry, order, slot, train_arrays, lr)
    else:
      for k in range(done, min(stop, end)):
        carry = run.step(k, carry, order, slot, train_arrays, lr)
    segment = carry.losses[done:min(stop, end)]
    progress(len(segment))
    done = min(stop, end)
    if not bool(jnp.all(jnp.isfinite(segment))):
      diverged = True
      break
    if done == stop and stop in evals:
      variables = {"params": carry.params, **carry.model_state}
      previous = max([0] + [k for k in evals if k < stop])
      point = (run.score(variables, val_split), run.score(variables, test_split),
               jnp.mean(carry.losses[previous:stop]))
      if run.probe is not None:
        probed = run.probe(carry.params, initial)
        point += tuple(probed[name] for name in run.probes)
      measured = np.concatenate([measured, [[float(v) for v in point]]])
    if checkpoint is not None and done < iters and (
        done - saved >= checkpoint_every or done == end):
      saved = done
      records.save_checkpoint(checkpoint, carry, tag(setup, task), measured=measured,
                              done=np.array(done),
                              wall_s=np.array(earlier_s + time.perf_counter() - began))
  if done < iters and not diverged:
    return None
  progress(iters - done)
  if checkpoint is not None:
    Path(checkpoint).unlink(missing_ok=True)
  table = np.full((len(evals), 3 + len(run.probes)), np.nan)
  table[:len(measured)] = measured
  norms, factors = np.asarray(carry.norms[:-1]), np.asarray(carry.factors[:-1])
  kept = {"losses": np.asarray(carry.losses).tolist()} if setup.keep_losses else {}
  if run.probes:
    kept["probes"] = {name: table[:, 3 + i].tolist() for i, name in enumerate(run.probes)}
  return kept | {"eval_iters": evals, "val": table[:, 0].tolist(), "test": table[:, 1].tolist(),
          "train_loss": table[:, 2].tolist(), "factor_iters": setup.factor_iters(iters),
          "factors": {name: factors[:, i].tolist() for i, name in enumerate(run.names)},
          "norms": {name: norms[:, i].tolist() for i, name in enumerate(run.names)},
          "wall_s": earlier_s + time.perf_counter() - began}


def train_resuming(dataset, task: records.RunTask, progress: Callable[[int], None], *,
                   train: Callable, out: Path) -> dict:
  """``train`` (:func:`train` bound to a setup) with the task's checkpoint under ``out``
  (:func:`experiments.records.checkpoint_path`): a worker pool's task function."""
  return train(dataset, task, progress, checkpoint=records.checkpoint_path(out, task))
