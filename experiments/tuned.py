"""Tuned comparisons: each layer method against its tuned base optimizer and the layer-wise
peers, every method's learning rate tuned on one shared lattice and selected on held-out
validation data, then rerun on ten fresh paired seeds (the protocol of
:mod:`experiments.tuning`, docs/evidence.md).

    python -m experiments.tuned lenet|resnet|charlm [options]

Outputs under ``--out`` (default ``runs/tuned/<workload>``): ``coarse/runs/`` and ``runs/``
(one run record per run; a rerun resumes), ``results.json``, ``table.md`` and the figures
(:func:`experiments.report.write_tuned`). ``--methods`` takes any method of
:mod:`experiments.methods` (the baselines they need are added); ``--dataset`` any dataset of
:mod:`experiments.data` of the workload's kind; ``--pilot N`` only times N full-length runs
of the first method (for sizing a protocol). Workloads (:data:`WORKLOADS`), each evaluated at
10 evenly spaced points per run:

* ``lenet``: LeNet on Fashion-MNIST under Caffe's ``lenet_solver``
  (:data:`experiments.configs.MNIST`): batch 64, momentum 0.9 (SGD, NAG), weight decay 5e-4
  added to the gradient first, the "inv" schedule ``lr_k = lr (1 + 1e-4 k)^-0.75``, biases at
  twice the rate; 2,000 iterations (the paper's Table I horizon, 2.3 epochs of the 55,000
  training images; validation: the last 5,000 training images, test: 10,000). Only the base
  learning rate is tuned. Methods: sgd, adagrad, each with +layer and +relative,
  adagrad+uniform (the other part of the factor, where +layer differs from its base), and
  ``lars`` (the library's, no trust ratio and no decay for 1-D arrays) against sgd; nag by
  --methods.
* ``resnet``: the small batch-norm ResNet (:mod:`experiments.resnet`, widths 8/16/32) on
  Fashion-MNIST: linear warm-up over the first 5% of the iterations then cosine decay to 0,
  weight decay 5e-4 on every parameter added to the gradient first, momentum 0.9, batch 64,
  1,719 iterations (2 epochs). Methods: nag, nag+layer, nag+relative and ``lars`` against
  nag; sgd by --methods.
* ``charlm``: the pre-LN char transformer (:mod:`experiments.transformer`) sized like
  nanoGPT's shakespeare_char CPU recipe (4 scanned blocks, width 128, 4 heads, context 64,
  batch 12, 2,000 iterations) on Shakespeare's plays (:mod:`experiments.shakespeare`, split
  90 / 5 / 5 %): AdamW (b2 0.95, decoupled weight decay 0.1 on kernels and embeddings),
  adamw+layer and adamw+relative (each block's slice of each sublayer a layer of its own) and
  ``lamb`` (the library's: one trust ratio per scanned block, 1-D arrays excluded) against
  adamw. Schedule ``lr_k = lr * s_k``, ``s`` a linear warm-up over the first 10% then a cosine
  decay to 0.1; each optimizer is built with ``s`` as its learning rate and its update
  multiplied by ``lr`` (one compiled step serves every grid point). Metric: bits per
  character over 65,536 positions of fixed windows per split; a final validation value at or
  above log2(vocabulary), a uniform guess, counts as diverged.

``optax.lars`` and ``optax.lamb`` (as optax ships them) stay available by --methods.

References:
  Singh et al., "Layer-Specific Adaptive Learning Rates for Deep Networks", ICMLA 2015,
  arXiv:1510.04609, eq. 9.
  LeCun et al., Proc. IEEE 1998 (LeNet); BVLC Caffe's lenet_solver.prototxt.
  He, Zhang, Ren, Sun, CVPR 2016 (ResNet); Loshchilov, Hutter, ICLR 2017 (cosine decay).
  You, Gitman, Ginsburg, arXiv:1708.03888 (LARS); You et al., ICLR 2020 (LAMB).
  Karpathy, char-rnn (2015) and nanoGPT (2022): character-level Shakespeare models.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import optax

from experiments import cli, data, engine, methods, models, report, shakespeare, tuning
from experiments.methods import Optimizer, Recipe

# --- lenet: Caffe's lenet_solver ---------------------------------------------------------------

LENET_MODEL = models.LeNet()
LENET_SOLVER = methods.CaffeOptimizer("mnist", LENET_MODEL)


def lenet_optimizer(method: str, lr: Any, iters: int, params: Any) -> Optimizer:
  """``method`` under ``lenet_solver`` with base learning rate ``lr`` (Caffe's order: weight
  decay into the gradient, then the factor, then the update rule)."""
  return LENET_SOLVER(method, lr, iters, params)


# --- resnet: warm-up and cosine decay, weight decay in the gradient ----------------------------

RESNET_WEIGHT_DECAY = 5e-4
RESNET_MOMENTUM = 0.9
RESNET_WARMUP = 0.05  # fraction of the iterations
TRAIN_IMAGES = 55_000  # Fashion-MNIST's 60,000 less the 5,000 held out for validation
RESNET_ITERS = -(-2 * TRAIN_IMAGES // 64)  # 2 epochs of batch 64: 1,719
EVAL_POINTS = 10
# Where a peer not among a workload's methods starts (its rates differ from the bases': the
# trust ratio's coefficient is 1e-3).
PEER_CENTRES = {"lars": 10.0, "optax.lars": 10.0, "lamb": 1e-2, "optax.lamb": 1e-2}


def resnet_schedule(lr: Any, iters: int) -> optax.Schedule:
  """``lr`` times a linear warm-up over the first ``RESNET_WARMUP`` of ``iters`` and a cosine
  decay to 0 at the end (``lr`` may be a traced scalar)."""
  warmup = max(1, round(RESNET_WARMUP * iters))
  unit = optax.warmup_cosine_decay_schedule(0.0, 1.0, warmup, max(iters, warmup + 1))
  return lambda k: lr * unit(k)


def resnet_optimizer(method: str, lr: Any, iters: int, params: Any) -> Optimizer:
  del params
  return methods.build(method, Recipe(resnet_schedule(lr, iters),
                                                     RESNET_MOMENTUM, RESNET_WEIGHT_DECAY))


# --- charlm: AdamW's recipe, the learning rate applied after the update ------------------------

CHARLM_STACKED = ("blocks",)
CHARLM_DECAYED = ("kernel", "embedding")
CHARLM_WARMUP = 0.1  # of the iterations, linear warm-up to the peak rate
CHARLM_FINAL = 0.1  # the cosine decay ends at this fraction of the peak


def decay_mask(params: Any) -> Any:
  """True for the arrays decoupled weight decay applies to: dense kernels and embeddings."""
  return jax.tree_util.tree_map_with_path(lambda path, _: path[-1].key in CHARLM_DECAYED,
                                          params)


def charlm_optimizer(method: str, lr: Any, iters: int, params: Any) -> Optimizer:
  """``method`` with the schedule's shape ``s`` (peak 1) as its learning rate, its update
  multiplied by ``lr``."""
  del params
  shape = optax.warmup_cosine_decay_schedule(
      0.0, 1.0, max(1, round(CHARLM_WARMUP * iters)), iters, CHARLM_FINAL)
  unit = methods.build(method, Recipe(
      shape, weight_decay=0.1, b2=0.95, decay_mask=decay_mask, stacked=CHARLM_STACKED))
  return Optimizer(optax.chain(unit.tx, optax.scale(lr)), unit.seen)


# --- the registry ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Entry:
  """A workload of the tuned comparisons.

  ``methods``: the default methods and where their search starts; a method given with
  ``--methods`` and not listed takes its base's start, a peer :data:`PEER_CENTRES`, else
  ``centre``, which is also the lattice's anchor. ``baseline``: the peers' base
  (``peer_baseline`` for a peer not listed); every other method is compared with its base
  part (``sgd`` for ``sgd+layer``). ``setup(args, dataset)`` gives the engine's
  :class:`~experiments.engine.Setup` and the run's sizes for results.json. ``reference``:
  the level a trained base reaches (:class:`experiments.tuning.Workload`).
  """

  kind: str  # the data kind: "images" or "text"
  dataset: str
  iters: int
  methods: dict[str, float]
  centre: float
  peer_baseline: str
  setup: Callable[[argparse.Namespace, Any], tuple[engine.Setup, dict]]
  add_options: Callable[[argparse.ArgumentParser], None]
  diverged_at: Callable[[Any], float]
  reference: dict
  baseline: dict[str, str] = dataclasses.field(default_factory=dict)


def _image_sizes(setup: engine.Setup, args, dataset: data.ImageData, **extra) -> dict:
  return {"model": type(setup.model).__name__, "train_images": len(dataset.train_y),
          "val_images": len(dataset.val_y), "test_images": len(dataset.test_y),
          "batch": setup.data.batch, "eval_iters": setup.eval_iters(args.iters),
          "factor_points": setup.factor_points, "layers": setup.layers, **extra}


def lenet_setup(args, dataset) -> tuple[engine.Setup, dict]:
  setup = engine.Setup(LENET_MODEL, engine.Images(batch=64), lenet_optimizer,
                       eval_points=EVAL_POINTS)
  return setup, _image_sizes(setup, args, dataset, solver="Caffe lenet_solver (inv, momentum "
                             "0.9, wd 5e-4, bias lr x2)")


def resnet_setup(args, dataset) -> tuple[engine.Setup, dict]:
  setup = engine.Setup(models.ResNet(widths=tuple(args.widths)), engine.Images(args.batch),
                       resnet_optimizer, eval_points=EVAL_POINTS)
  return setup, _image_sizes(setup, args, dataset, widths=list(args.widths), blocks_per_stage=1,
                             schedule=f"linear warm-up {RESNET_WARMUP:.0%}, cosine to 0",
                             weight_decay=RESNET_WEIGHT_DECAY, momentum=RESNET_MOMENTUM)


def charlm_setup(args, corpus: shakespeare.CharData) -> tuple[engine.Setup, dict]:
  if args.width % args.heads:
    raise cli.UsageError(f"--width {args.width} is not a multiple of --heads {args.heads}")
  if len(corpus.train) <= args.context:
    raise cli.InputError(f"the training part ({len(corpus.train)} characters) is shorter than "
                         f"--context {args.context}; pass a longer text or a smaller --context")
  model = models.CharTransformer(len(corpus.vocab), args.context, args.width, args.heads,
                                 args.blocks)
  kind = engine.Windows(args.context, args.batch, args.eval_tokens)
  setup = engine.Setup(model, kind, charlm_optimizer, args.eval_points, factor_points=None,
                       stacked=CHARLM_STACKED)
  params = jax.eval_shape(lambda: model.init(
      jax.random.key(0), jnp.zeros((1, args.context), jnp.int32))["params"])
  sizes = {"corpus": corpus.source, "text_sha256": corpus.text_sha256,
           "train_chars": len(corpus.train), "val_chars": len(corpus.val),
           "test_chars": len(corpus.test), "vocab": len(corpus.vocab),
           "model": f"pre-LN transformer, {args.blocks} scanned blocks, width {args.width}, "
                    f"{args.heads} heads, MLP x4, context {args.context}",
           "parameters": sum(math.prod(p.shape) for p in jax.tree.leaves(params)),
           "layers": "module", "stacked": list(CHARLM_STACKED), "context": args.context,
           "width": args.width, "heads": args.heads, "blocks": args.blocks,
           "batch": args.batch, "eval_points": args.eval_points,
           "eval_tokens": args.eval_tokens, "eval_chunk": kind.eval_chunk,
           "warmup_fraction": CHARLM_WARMUP, "final_fraction": CHARLM_FINAL,
           "weight_decay": 0.1, "b2": 0.95, "check_every": setup.check_every}
  return setup, sizes


def _image_options(parser) -> None:
  parser.add_argument("--split-sizes", type=cli.positive_ints, default=None, metavar="TRAIN,TEST",
                      help="the number of train and test images the files hold, for small "
                      "generated data (default: the dataset's)")
  parser.add_argument("--val-size", type=cli.positive_int, default=5000,
                      help="the last N training images, held out for validation (default 5000)")


def _resnet_options(parser) -> None:
  _image_options(parser)
  parser.add_argument("--widths", type=cli.positive_ints, default=(8, 16, 32),
                      help="channels of the three stages (default 8,16,32)")
  parser.add_argument("--batch", type=cli.positive_int, default=64)


def _charlm_options(parser) -> None:
  parser.add_argument("--text", default=None, metavar="FILE",
                      help="train on this UTF-8 text file instead of --dataset")
  for option, default, help_text in (
      ("context", 64, "characters per window"), ("width", 128, "model width"),
      ("heads", 4, "attention heads"), ("blocks", 4, "transformer blocks"),
      ("batch", 12, "windows per minibatch"),
      ("eval-points", EVAL_POINTS, "evaluation points per run"),
      ("eval-tokens", 65536, "positions scored per split at each evaluation")):
    parser.add_argument(f"--{option}", type=cli.positive_int, default=default,
                        help=f"{help_text} (default {default})")


LENET_REFERENCE = {"split": "test", "value": 12.0, "source": "SGD at the paper's rate after "
                   "2,000 iterations: 11.97% test error; a trained LeNet: 9-10%"}
RESNET_REFERENCE = {"split": "test", "value": 11.0, "source": "a small ResNet trained for a "
                    "few epochs: at or below 11% test error"}
CHARLM_REFERENCE = {"split": "val", "value": 2.0 / math.log(2), "source": "nanoGPT's "
                    "shakespeare_char CPU recipe: 1.88 nats/char validation (2.71 bits) on "
                    "tiny Shakespeare; the level asked: 2.0 nats/char (2.89 bits)"}

WORKLOADS: dict[str, Entry] = {
    "lenet": Entry("images", "fashion_mnist", 2000,
                   {**{f"{b}{s}": 0.01 for b in ("sgd", "adagrad")
                       for s in ("", "+layer", "+relative")}, "adagrad+uniform": 0.01,
                    "lars": 10.0},
                   0.01, "sgd", lenet_setup, _image_options, lambda dataset: 80.0,
                   LENET_REFERENCE),
    "resnet": Entry("images", "fashion_mnist", RESNET_ITERS,
                    {"nag": 0.1, "nag+layer": 0.1, "nag+relative": 0.1, "lars": 10.0},
                    0.1, "nag", resnet_setup, _resnet_options, lambda dataset: 80.0,
                    RESNET_REFERENCE),
    "charlm": Entry("text", "shakespeare", 2000,
                    {"adamw": 1e-3, "adamw+layer": 1e-3, "adamw+relative": 1e-3, "lamb": 1e-2},
                    1e-3, "adamw", charlm_setup, _charlm_options,
                    lambda corpus: math.log2(len(corpus.vocab)), CHARLM_REFERENCE),
}


def choose_methods(entry: Entry, spec: str | None,
                   log: Callable[[str], None]) -> tuple[dict[str, float], dict[str, str]]:
  """The methods of ``spec`` (comma-separated registry names; ``None``: the workload's) and
  the baselines they need, with their grid centres; and each method's baseline."""
  names = list(entry.methods) if spec is None else [m.strip() for m in spec.split(",")
                                                     if m.strip()]
  known = methods.names()
  unknown = [m for m in names if m not in known]
  if unknown or not names:
    raise cli.UsageError(f"unknown method {', '.join(unknown) or '(none given)'}; use some of "
                         f"{', '.join(known)}")

  def baseline(method: str) -> str:
    if method in methods.PEERS:
      return entry.baseline.get(method, entry.peer_baseline)
    return method.partition("+")[0]

  needed = list(dict.fromkeys(names + [baseline(m) for m in names]))
  if len(needed) > len(names):
    log(f"adding the baselines {', '.join(needed[len(names):])}")
  centres = {m: entry.methods.get(m, entry.methods.get(
      m.partition("+")[0], PEER_CENTRES.get(m, entry.centre))) for m in needed}
  return centres, {m: baseline(m) for m in needed}


def load_data(entry: Entry, args) -> Callable[[], Any]:
  """The picklable loader of the workload's data (each worker calls it)."""
  if entry.kind == "text":
    if args.text is not None:
      return functools.partial(shakespeare.load, text_file=args.text)
    return functools.partial(data.load_dataset, args.dataset, args.data_dir)
  if args.split_sizes is not None and len(args.split_sizes) != 2:
    raise cli.UsageError("--split-sizes takes two numbers, TRAIN,TEST")
  return functools.partial(data.load_held_out, args.dataset, args.data_dir, args.split_sizes,
                           args.val_size)


def workload(name: str, args, log: Callable[[str], None] = print) -> tuning.Workload:
  """The :class:`~experiments.tuning.Workload` of ``args``; the data are read (and fetched,
  with --download) here once, so the workers read the files or cache."""
  entry = WORKLOADS[name]
  centres, baseline = choose_methods(entry, args.methods, log)
  if data.DATASETS[args.dataset].kind != entry.kind:
    raise cli.UsageError(f"--dataset {args.dataset} is not {entry.kind} data, which {name} "
                         f"trains on; use one of {', '.join(datasets_of(entry.kind))}")
  if args.download and entry.kind == "text" and args.text is None:
    data.load_dataset(args.dataset, args.data_dir, True)
  elif args.download:
    data.load_dataset(args.dataset, args.data_dir, True, getattr(args, "split_sizes", None))
  loader = load_data(entry, args)
  dataset = loader()
  setup, sizes = entry.setup(args, dataset)
  return tuning.Workload(
      name=name, metric=setup.data.metric, lower_is_better=True, methods=centres,
      baseline=baseline, train=functools.partial(engine.train, setup=setup), load_data=loader,
      iters=args.iters, diverged_at=entry.diverged_at(dataset),
      sizes={**sizes, "reference": entry.reference}, anchor=entry.centre,
      coarse_iters=args.iters // 4 if args.coarse_iters is None else args.coarse_iters,
      coarse_points=args.coarse_points, fine_span=args.fine_span,
      grid_seeds=tuple(range(args.grid_seeds)),
      eval_seeds=tuple(range(EVAL_SEED0, EVAL_SEED0 + args.seeds)),
      reference=entry.reference)


EVAL_SEED0 = 100  # evaluation seeds 100, 101, ...: disjoint from the grid seeds 0, 1, ...


def datasets_of(kind: str) -> list[str]:
  return [name for name, source in data.DATASETS.items() if source.kind == kind]


def parser() -> cli.Parser:
  """``python -m experiments.tuned WORKLOAD``: the options every workload has, then its own."""
  result = cli.Parser(prog="python -m experiments.tuned", description=__doc__.split("\n\n")[0],
                      formatter_class=argparse.RawDescriptionHelpFormatter)
  commands = result.add_subparsers(dest="workload", required=True, metavar="WORKLOAD",
                                   parser_class=cli.Parser)
  for name, entry in WORKLOADS.items():
    sub = commands.add_parser(name, help=f"{name} ({entry.kind}, {entry.dataset})",
                              prog=f"python -m experiments.tuned {name}")
    sub.add_argument("--out", type=Path, default=Path("runs/tuned") / name,
                     help="output folder; its runs/ records make a rerun resume "
                          "(default %(default)s)")
    sub.add_argument("--workers", type=cli.positive_int, default=2,
                     help="worker processes, one core each (default %(default)s)")
    sub.add_argument("--iters", type=cli.positive_int, default=entry.iters,
                     help="training iterations per run (default %(default)s)")
    sub.add_argument("--seeds", type=cli.positive_int, default=10,
                     help=f"evaluation seeds {EVAL_SEED0}, {EVAL_SEED0 + 1}, ... at the "
                     "selected learning rate (default %(default)s)")
    sub.add_argument("--grid-seeds", type=cli.positive_int, default=3,
                     help="seeds 0, 1, ... per full-length grid point (default %(default)s)")
    sub.add_argument("--coarse-iters", type=int, default=None,
                     help="iterations of the coarse stage's runs, 0 for none (default: a "
                     "quarter of --iters)")
    sub.add_argument("--coarse-points", type=cli.positive_int, default=7,
                     help="coarse points, 2 lattice steps apart (default %(default)s)")
    sub.add_argument("--fine-span", type=int, default=1,
                     help="full-length grid: lattice points this many steps either side of "
                     "the coarse best (default %(default)s)")
    sub.add_argument("--pilot", type=cli.positive_int, default=None, metavar="N",
                     help="only time N full-length runs of the first method (one process)")
    sub.add_argument("--methods", default=None,
                     help="comma-separated methods of experiments.methods (default: "
                     f"{','.join(entry.methods)}); their baselines are added")
    sub.add_argument("--dataset", choices=datasets_of(entry.kind), default=entry.dataset,
                     help="default %(default)s")
    sub.add_argument("--data-dir", default=None,
                     help="folder of the dataset's files (default: experiments.data's)")
    sub.add_argument("--download", action="store_true",
                     help="fetch the dataset's missing files (needs a network)")
    sub.add_argument("--no-plots", action="store_true", help="skip the figures")
    entry.add_options(sub)
  return result


@cli.reports_errors
def main(argv: list[str] | None = None) -> dict:
  """Runs one workload; writes results.json, table.md and the figures; prints the table."""
  argv = sys.argv[1:] if argv is None else list(argv)
  args = parser().parse_args(argv)
  out = cli.writable_folder(args.out)
  if (args.coarse_iters is not None and not 0 <= args.coarse_iters < args.iters
      or args.fine_span < 0):
    raise cli.UsageError("--coarse-iters takes 0 to --iters - 1 and --fine-span 0 or more")
  if args.pilot is not None:
    timed = tuning.pilot(workload(args.workload, args), out, args.pilot)
    print(json.dumps(timed, indent=1))
    return timed
  results = tuning.run(workload(args.workload, args), out, args.workers,
                       command=" ".join(["python -m experiments.tuned", *argv]))
  print(report.write_tuned(out, results, plots=not args.no_plots))
  return results


if __name__ == "__main__":
  main()
