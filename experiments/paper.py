"""The paper's protocol: base optimizers against their layer versions (Singh et al. 2015).

    python -m experiments.paper --dataset fashion_mnist --seeds 10 --iters 2000 \\
        --out results/fashion_mnist

Each method trains under its Caffe solver (:mod:`experiments.configs`; a method whose base
has no solver there takes SGD's schedule and weight decay) on the one engine
(:mod:`experiments.engine`), with the test error at the protocol's evaluation iterations and
each layer's gradient norm and factor at every iteration. Runs are seed-major (seed 0 of
every method, then seed 1, ...) so that after each seed the report under ``--out``
(table.md, results.json, test_error.csv, test_error.png, effective_lr.png;
:func:`experiments.report.write_report`) covers every seed finished so far, paired across
methods. Every finished run is one run record under ``--out/runs`` and an unfinished one
resumes from its checkpoint there: rerunning the same command continues where it stopped,
to the same result.

``--workers N`` trains the runs in N single-threaded worker processes
(:mod:`experiments.pool`) and reports as seeds complete.

References:
  Singh et al., "Layer-Specific Adaptive Learning Rates for Deep Networks", ICMLA 2015,
  arXiv:1510.04609.
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from pathlib import Path

import numpy as np

from experiments import cli, configs, data, engine, files, methods, models, pool, records, report

# The protocols of the data this command reads (ImageNet has no reader).
READABLE_PROTOCOLS = sorted(name for name, protocol in configs.PROTOCOLS.items()
                            if set(protocol.datasets) & set(data.DATASETS))
# What a run's curves are called in results.json and the report.
RUN_KEYS = ("test_error", "train_loss", "grad_norm", "factor", "effective_lr")


def image_datasets() -> list[str]:
  return [name for name, source in data.DATASETS.items() if source.kind == "images"]


def parse_args(argv=None) -> argparse.Namespace:
  parser = cli.Parser(prog="python -m experiments.paper", description=__doc__.split("\n")[0])
  parser.add_argument("--dataset", default="fashion_mnist", choices=image_datasets())
  parser.add_argument("--protocol", default=None, choices=READABLE_PROTOCOLS,
                      help="default: mnist for 28x28 images, cifar10_full for cifar10 "
                      "(alexnet is implemented, but ImageNet has no reader here)")
  parser.add_argument("--methods", default="paper",
                      type=methods.method_names(tuple(methods.BASES), peers=True),
                      help="comma-separated, e.g. sgd,sgd+layer; 'paper' = the six methods, "
                      "'all' = those plus adam,adam+layer")
  parser.add_argument("--seeds", type=cli.positive_int, default=10, help="number of seeds")
  parser.add_argument("--first-seed", type=int, default=0)
  parser.add_argument("--iters", type=cli.positive_int, default=2000)
  parser.add_argument("--layers", default="module", choices=["module", "array"],
                      help="module: one factor per layer (weights+bias); array: per blob, Caffe's")
  parser.add_argument("--batch-size", type=cli.positive_int, default=None,
                      help="default: the protocol's")
  parser.add_argument("--data-dir", default=None)
  parser.add_argument("--download", action="store_true", help="fetch missing public files")
  parser.add_argument("--split-sizes", type=cli.positive_ints, default=None, metavar="TRAIN,TEST",
                      help="the number of train and test images the data files hold, for small "
                      "generated data (default: the dataset's)")
  parser.add_argument("--out", default="runs/paper", help="output folder (default %(default)s)")
  parser.add_argument("--checkpoint-every", type=cli.positive_int, default=500)
  parser.add_argument("--no-plots", action="store_true")
  parser.add_argument("--no-progress", action="store_true")
  parser.add_argument("--workers", type=cli.positive_int, default=1,
                      help="train in N single-threaded processes")
  args = parser.parse_args(argv)
  name = args.protocol or configs.DEFAULT_PROTOCOL.get(args.dataset, "mnist")
  args.protocol = configs.PROTOCOLS[name]
  known = any(args.dataset in p.datasets for p in configs.PROTOCOLS.values())
  if known and args.dataset not in args.protocol.datasets:
    parser.error(f"protocol {args.protocol.name} is for {', '.join(args.protocol.datasets)}, "
                 f"not {args.dataset}")
  if args.first_seed < 0:
    parser.error(f"--first-seed {args.first_seed} must be at least 0")
  if args.split_sizes is not None and len(args.split_sizes) != 2:
    parser.error("--split-sizes takes two numbers, TRAIN,TEST")
  return args


def base_lr(protocol: configs.Protocol, method: str) -> float:
  """The protocol's base learning rate of ``method`` (SGD's where its base has no solver)."""
  return protocol.solvers.get(method.partition("+")[0], protocol.solvers["sgd"]).base_lr


def make_setup(args: argparse.Namespace, num_classes: int) -> engine.Setup:
  """The engine's setup of the protocol: its model, batch, evaluation iterations, every
  iteration's factors and losses kept."""
  model = models.MODELS[args.protocol.model](num_classes=num_classes)
  return engine.Setup(
      model, engine.Images(args.batch_size or args.protocol.batch_size),
      methods.CaffeOptimizer(args.protocol.name, model, args.layers, keep_stats=True),
      eval_points=tuple(args.protocol.eval_iters), factor_points=args.iters,
      layers=args.layers, keep_losses=True)


def tasks(args: argparse.Namespace, seeds: list[int]) -> list[records.RunTask]:
  """One task per (seed, method), seed-major."""
  return [records.RunTask(method, base_lr(args.protocol, method), seed, args.iters)
          for seed in seeds for method in args.methods]


def curves(protocol: configs.Protocol, task: records.RunTask, record: dict) -> dict:
  """One seed's curves (:data:`RUN_KEYS`) from its run record: test error (a fraction),
  per-iteration training loss, gradient norms, factors and effective learning rates
  ``lr_k * f_l`` (``lr_k`` for a method without a factor), layers in the record's order."""
  solver = protocol.solvers.get(task.method.partition("+")[0], protocol.solvers["sgd"])
  lr = np.broadcast_to(methods.schedule_fn(task.lr, solver.schedule)(np.arange(task.iters)),
                       (task.iters,))
  factor = np.array(list(record["factors"].values()), np.float64).T
  layerwise = "+" in task.method
  return {"seed": task.seed, "wall_s": record["wall_s"],
          "test_error": np.asarray(record["test"]) / 100, "train_loss": np.asarray(
              record["losses"]), "grad_norm": np.array(list(record["norms"].values())).T,
          "factor": factor,
              "effective_lr": lr[:, None] * (factor if layerwise else np.ones_like(factor))}


def stack_runs(runs: list[dict]) -> dict:
  """Stacks per-seed curves along a leading seed axis."""
  out = {k: np.stack([r[k] for r in runs]) for k in RUN_KEYS}
  out["seeds"] = [r["seed"] for r in runs]
  out["wall_s"] = float(sum(r["wall_s"] for r in runs))
  return out


class Reporter:
  """Collects finished runs; rewrites the report whenever another seed is complete for
  every method (the report only pairs seeds every method has)."""

  def __init__(self, args: argparse.Namespace, out: Path, config: dict, setup: engine.Setup):
    self.args, self.out, self.config = args, out, config
    self.runs: dict[tuple[str, int], dict] = {}
    self.reported: list[int] = []
    self.extra = {"eval_iters": setup.eval_iters(args.iters), "layer_names": []}
    self.t0 = time.perf_counter()
    self.results: dict = {}
    self.markdown = ""

  def load_finished(self, todo: list[records.RunTask]) -> list[records.RunTask]:
    """Loads the runs finished earlier (reporting them); returns the tasks still to run."""
    missing = []
    for task in todo:
      record = records.read_record(records.record_path(self.out, task), task)
      if record is None:
        missing.append(task)
      else:
        self.keep(task, record)
        records.checkpoint_path(self.out, task).unlink(missing_ok=True)  # a run killed late
    self.write(self.complete_seeds(sorted({task.seed for task in todo})))
    return missing

  def keep(self, task: records.RunTask, record: dict) -> None:
    self.runs[(task.method, task.seed)] = curves(self.args.protocol, task, record)
    self.extra["layer_names"] = list(record["factors"])

  def add(self, task: records.RunTask, record: dict) -> None:
    self.keep(task, records.write_record(self.out, task, record))
    if task.seed in self.complete_seeds([task.seed]):
      self.write(self.complete_seeds(sorted({s for _, s in self.runs})))

  def complete_seeds(self, seeds: list[int]) -> list[int]:
    return [s for s in seeds if all((m, s) in self.runs for m in self.args.methods)]

  def write(self, seeds: list[int]) -> None:
    if not seeds or seeds == self.reported:
      return
    self.results = {m: stack_runs([self.runs[(m, s)] for s in seeds]) | self.extra
                    for m in self.args.methods}
    self.config.update(seeds_done=seeds, wall_s=round(time.perf_counter() - self.t0, 1))
    self.markdown = report.write_report(self.out, self.results, self.config,
                                        plots=not self.args.no_plots)
    self.reported = seeds

  def finish(self, seeds: list[int]) -> None:
    """Prints the report and writes timing.json (wall time of the command and of each run)."""
    print(self.markdown)
    print(f"wrote {self.out}/table.md, results.json, test_error.csv"
          + ("" if self.args.no_plots else ", test_error.png, effective_lr.png"))
    files.write_json(self.out / "timing.json", {"wall_s": self.config["wall_s"], "runs": {
        m: [round(float(self.runs[(m, s)]["wall_s"]), 1) for s in seeds]
        for m in self.args.methods}})


def progress_bar(args: argparse.Namespace, total: int):
  """A tqdm bar's ``update`` (``None`` with ``--no-progress``) and a closer."""
  if args.no_progress:
    return (lambda n: None), (lambda: None)
  from tqdm import tqdm
  bar = tqdm(total=total, unit="it", smoothing=0.05,
             desc=f"{args.workers} workers" if args.workers > 1 else None)
  return bar.update, bar.close


def run_config(args: argparse.Namespace, seeds: list[int], argv) -> dict:
  """The run's settings as results.json records them."""
  return {"dataset": args.dataset, "protocol": args.protocol.name, "methods": args.methods,
          "seeds_requested": seeds, "iters": args.iters, "layers": args.layers,
          "batch_size": args.batch_size or args.protocol.batch_size,
          "command": "python -m experiments.paper " + " ".join(
              sys.argv[1:] if argv is None else argv)}


@cli.reports_errors
def main(argv=None) -> dict:
  args = parse_args(argv)
  out = cli.writable_folder(args.out)
  mean_image = args.protocol.model != "lenet"
  load = functools.partial(data.load_held_out, args.dataset, args.data_dir, args.split_sizes,
                           0, mean_image)
  if args.download:
    data.load_dataset(args.dataset, args.data_dir, True, args.split_sizes)
  dataset = load()
  batch = args.batch_size or args.protocol.batch_size
  if batch > len(dataset.train_y):
    raise cli.UsageError(f"--batch-size {batch} is more than the {len(dataset.train_y)} "
                         "training images; pass a smaller --batch-size")
  setup = make_setup(args, num_classes=10)
  seeds = list(range(args.first_seed, args.first_seed + args.seeds))
  reporter = Reporter(args, out, run_config(args, seeds, argv), setup)
  todo = reporter.load_finished(tasks(args, seeds))
  update, close = progress_bar(args, len(todo) * args.iters)
  train = functools.partial(engine.train, setup=setup, checkpoint_every=args.checkpoint_every)
  try:
    pool.run_tasks(functools.partial(engine.train_resuming, train=train, out=out), todo,
                   args.workers, load, dataset, reporter.add, update)
  finally:
    close()
  reporter.finish(seeds)
  return reporter.results


if __name__ == "__main__":
  main()
