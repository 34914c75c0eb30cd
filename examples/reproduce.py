"""Reproduces the comparisons of Singh et al. (2015): base optimizers against their layer versions.

    python -m examples.reproduce --dataset fashion_mnist --seeds 10 --iters 2000 \\
        --out results/fashion_mnist

Runs seed-major (seed 0 of every method, then seed 1, ...) so that after each seed the
report under ``--out`` (table.md, results.json, test_error.csv, test_error.png,
effective_lr.png) covers every seed finished so far, paired across methods. Finished runs
are kept in ``--out/runs`` and an interrupted run resumes from ``--out/ckpt``: rerunning the
same command continues where it stopped, to the same result.

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

from experiments import cli, configs, data, files, methods, pool, report, train

# The protocols of the datasets this command reads.
READABLE_PROTOCOLS = sorted(name for name, protocol in configs.PROTOCOLS.items()
                            if set(protocol.datasets) & set(configs.DEFAULT_PROTOCOL))


def parse_args(argv=None) -> argparse.Namespace:
  parser = cli.Parser(prog="python -m examples.reproduce", description=__doc__.split("\n")[0])
  parser.add_argument("--dataset", default="fashion_mnist",
                      choices=sorted(configs.DEFAULT_PROTOCOL))
  parser.add_argument("--protocol", default=None, choices=READABLE_PROTOCOLS,
                      help="default: mnist for (fashion_)mnist, cifar10_full for cifar10 "
                      "(alexnet is implemented, but ImageNet has no reader here)")
  parser.add_argument("--methods", default="paper", type=methods.method_names(),
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
  parser.add_argument("--out", default="runs/fashion_mnist")
  parser.add_argument("--checkpoint-every", type=cli.positive_int, default=500)
  parser.add_argument("--no-plots", action="store_true")
  parser.add_argument("--no-progress", action="store_true")
  parser.add_argument("--workers", type=cli.positive_int, default=1,
                      help="train in N single-threaded processes")
  args = parser.parse_args(argv)
  args.protocol = configs.PROTOCOLS[args.protocol or configs.DEFAULT_PROTOCOL[args.dataset]]
  if args.dataset not in args.protocol.datasets:
    parser.error(f"protocol {args.protocol.name} is for {', '.join(args.protocol.datasets)}, "
            f"not {args.dataset}")
  if args.first_seed < 0:
    parser.error(f"--first-seed {args.first_seed} must be at least 0")
  if args.split_sizes is not None and len(args.split_sizes) != 2:
    parser.error("--split-sizes takes two numbers, TRAIN,TEST")
  return args


def run_specs(args: argparse.Namespace, out: Path, seeds: list[int]) -> list[train.RunSpec]:
  """One task per (seed, method), seed-major, with its checkpoint and result files."""
  return [train.RunSpec(args.protocol, method, seed, args.iters, args.layers, args.batch_size,
                        out / "ckpt" / f"{method}_seed{seed}.npz", args.checkpoint_every,
                        out / "runs" / f"{method}_seed{seed}.npz")
          for seed in seeds for method in args.methods]


class Reporter:
  """Collects finished runs; rewrites the report whenever another seed is complete for
  every method (the report only pairs seeds every method has)."""

  def __init__(self, args: argparse.Namespace, out: Path, config: dict, dataset_classes: int):
    self.args, self.out, self.config = args, out, config
    self.runs: dict[tuple[str, int], dict] = {}
    self.reported: list[int] = []
    self.extra = {"eval_iters": list(train.eval_points(args.protocol, args.iters)),
                  "layer_names": list(train.layer_names(args.protocol, args.layers,
                                                        dataset_classes))}
    self.t0 = time.perf_counter()
    self.results: dict = {}
    self.markdown = ""

  def load_finished(self, specs: list[train.RunSpec]) -> list[train.RunSpec]:
    """Loads the runs finished earlier (reporting them); returns the specs still to run."""
    todo = [spec for spec in specs if not spec.save_to.exists()]
    for spec in specs:
      if spec not in todo:
        self.runs[(spec.method, spec.seed)] = train.load_run(spec.save_to)
        spec.checkpoint.unlink(missing_ok=True)  # left by a run killed after it finished
    self.write(self.complete_seeds(sorted({spec.seed for spec in specs})))
    return todo

  def finish(self, seeds: list[int]) -> None:
    """Prints the report and writes timing.json (wall time of the command and of each run)."""
    print(self.markdown)
    print(f"wrote {self.out}/table.md, results.json, test_error.csv"
          + ("" if self.args.no_plots else ", test_error.png, effective_lr.png"))
    files.write_json(self.out / "timing.json", {"wall_s": self.config["wall_s"], "runs": {
        m: [round(float(self.runs[(m, s)]["wall_s"]), 1) for s in seeds]
        for m in self.args.methods}})

  def complete_seeds(self, seeds: list[int]) -> list[int]:
    return [s for s in seeds if all((m, s) in self.runs for m in self.args.methods)]

  def add(self, spec: train.RunSpec, run: dict) -> None:
    self.runs[(spec.method, spec.seed)] = train.load_run(spec.save_to)
    if spec.seed in self.complete_seeds([spec.seed]):
      self.write(self.complete_seeds(sorted({s for _, s in self.runs})))

  def write(self, seeds: list[int]) -> None:
    if not seeds or seeds == self.reported:
      return
    self.results = {m: train.stack_runs([self.runs[(m, s)] for s in seeds]) | self.extra
                    for m in self.args.methods}
    self.config.update(seeds_done=seeds, wall_s=round(time.perf_counter() - self.t0, 1))
    self.markdown = report.write_report(self.out, self.results, self.config,
                                        plots=not self.args.no_plots)
    self.reported = seeds


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
          "command": "python -m examples.reproduce " + " ".join(
              sys.argv[1:] if argv is None else argv)}


@cli.reports_errors
def main(argv=None) -> dict:
  args = parse_args(argv)
  out = cli.writable_folder(args.out)
  load = functools.partial(data.load_dataset, args.dataset, args.data_dir, args.download,
                           args.split_sizes)
  dataset = load()
  seeds = list(range(args.first_seed, args.first_seed + args.seeds))
  reporter = Reporter(args, out, run_config(args, seeds, argv), dataset.num_classes)
  todo = reporter.load_finished(run_specs(args, out, seeds))
  update, close = progress_bar(args, len(todo) * args.iters)
  try:
    pool.run_tasks(train.run_spec, todo, args.workers, load, dataset, reporter.add, update)
  finally:
    close()
  reporter.finish(seeds)
  return reporter.results


if __name__ == "__main__":
  main()
