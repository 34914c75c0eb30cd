r"""The tuning protocol every workload of :mod:`evidence` follows (docs/evidence.md).

Each method gets its own learning-rate grid around its centre ``c``,

    lr_k = c * ratio**k,   k = -(points // 2) .. points // 2,

trained for the grid seeds ``0 .. grid_seeds - 1``. Round by round the grid grows: one point
below while the best value sits on the lowest point, one above while it sits on the highest
point or the highest point has not diverged, at most ``max_extensions`` per side. The
selected learning rate has the best mean final *validation* metric over the grid seeds
(NaN/inf count as the worst, ties go to the smaller rate); it is rerun on seeds
``0 .. seeds - 1`` (the grid seeds are reused), the same seeds for every method, so seed
``s`` of a method and of its baseline share initialisation and batch order (paired).

A run *diverged* when its training loss became non-finite or its final validation metric is
at or beyond the workload's ``diverged_at`` in the bad direction.

Reported per method: the final test metric per seed, its paired difference to the baseline
method (method minus baseline, per seed) and the wins (seeds where the method is better),
and per seed the first evaluation iteration whose validation metric reaches the tuned
baseline's mean final validation metric (inf when none does).

Every run is one JSON record under ``out/runs/<method>/lr<lr>_seed<s>.json``, written
atomically as it finishes; a rerun with the same ``--out`` trains only the missing runs.

References:
  Nado, Gilmer, Shallue, Anil, Dahl. "A Large Batch Optimizer Reality Check: Traditional,
  Generic Optimizers Suffice Across Batch Sizes." arXiv:2102.06356, 2021.
  Dahl et al. "Benchmarking Neural Network Training Algorithms" (MLCommons AlgoPerf),
  arXiv:2306.07179, 2023: the external tuning ruleset.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from tqdm import tqdm

from experiments import cli, pool
from studies import outputs

RECORD_KEYS = ("eval_iters", "val", "test", "train_loss", "factor_iters", "factors", "wall_s")
SELECTION = "mean final validation metric over grid seeds"


class RunTask(NamedTuple):
  """One training run: ``method`` at learning rate ``lr`` from seed ``seed``."""

  method: str
  lr: float
  seed: int
  iters: int


@dataclasses.dataclass(frozen=True)
class Workload:
  """A model, data and metric, and the methods compared on it (see the module doc)."""

  name: str
  metric: str
  lower_is_better: bool
  methods: dict[str, float]
  baseline: dict[str, str]
  train: Callable[[Any, RunTask, Callable[[int], None]], dict]
  load_data: Callable[[], Any]
  iters: int
  diverged_at: float
  sizes: dict
  grid_ratio: float = 10 ** 0.5
  grid_points: int = 5
  grid_seeds: int = 1
  seeds: int = 5
  max_extensions: int = 4


def write_text(path: Path, text: str) -> None:
  """Writes ``text`` to ``path`` atomically (a temporary file renamed into place)."""
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
  try:
    with os.fdopen(fd, "w") as file:
      file.write(text)
    os.replace(tmp, path)
  except BaseException:
    Path(tmp).unlink(missing_ok=True)
    raise


def write_json(path: Path, value: Any) -> None:
  """Writes ``value`` as JSON (NaN and inf as JSON's NaN/Infinity tokens) atomically."""
  write_text(path, json.dumps(plain(value), indent=1) + "\n")


def plain(value: Any) -> Any:
  """``value`` with NumPy values as Python ones; NaN and inf are kept."""
  if isinstance(value, dict):
    return {str(k): plain(v) for k, v in value.items()}
  if isinstance(value, (list, tuple, np.ndarray)):
    return [plain(v) for v in value]
  if isinstance(value, (np.floating, float)):
    return float(value)
  if isinstance(value, np.integer):
    return int(value)
  return value


def record_path(out: Path, task: RunTask) -> Path:
  return out / "runs" / task.method / f"lr{task.lr!r}_seed{task.seed}.json"


def read_record(path: Path, task: RunTask) -> dict | None:
  """The RunRecord of ``task`` stored at ``path``, ``None`` if there is none."""
  if not path.exists():
    return None
  try:
    stored = json.loads(path.read_text())
    record = stored["record"]
    missing = [k for k in RECORD_KEYS if k not in record]
    if missing:
      raise KeyError(", ".join(missing))
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise cli.InputError(f"{path} is not a run record ({type(e).__name__}: {e}); delete it "
                         "to train that run again") from None
  if stored.get("task") != plain(task._asdict()):
    raise cli.InputError(f"{path} holds the run {stored.get('task')}, not {task._asdict()}; "
                         "pass another --out or delete it")
  return record


def final(values: list[float]) -> float:
  return float(values[-1]) if values else math.nan


def diverged(record: dict, workload: Workload) -> bool:
  """Non-finite training loss, or a final validation metric at/beyond ``diverged_at``."""
  value = final(record["val"])
  if not all(math.isfinite(x) for x in record["train_loss"]) or not math.isfinite(value):
    return True
  return value >= workload.diverged_at if workload.lower_is_better else (
      value <= workload.diverged_at)


def _score(values: Iterable[float], lower_is_better: bool) -> float:
  """Lower is better; non-finite means count as the worst (inf)."""
  mean = float(np.mean(list(values)))
  if not math.isfinite(mean):
    return math.inf
  return mean if lower_is_better else -mean


def select_lr(grid: dict[Any, list[float]], lower_is_better: bool) -> float:
  """The learning rate with the best mean final validation metric over grid seeds; NaN/inf
  count as the worst, ties go to the smaller rate. Keys are rates or their ``repr``."""
  if not grid:
    raise ValueError("an empty grid has no best learning rate")
  by_lr = sorted((float(lr), values) for lr, values in grid.items())
  best_lr, best = by_lr[0][0], math.inf
  for lr, values in by_lr:
    score = _score(values, lower_is_better)
    if score < best:
      best_lr, best = lr, score
  return best_lr


def grid_lr(centre: float, ratio: float, k: int) -> float:
  return float(centre * ratio ** k)


def eval_iters(iters: int, points: int) -> list[int]:
  """A run's evaluation iterations (its RunRecord's ``eval_iters``): ``points`` evenly
  spaced in 1..iters, the last one ``iters`` (fewer when ``iters < points``)."""
  return sorted({max(1, round(iters * (i + 1) / points)) for i in range(points)})


def iters_to_reach(record: dict, target: float, lower_is_better: bool) -> float:
  """The first evaluation iteration whose validation metric is at least as good as
  ``target``; inf if none is."""
  for k, value in zip(record["eval_iters"], record["val"]):
    if math.isfinite(value) and (value <= target if lower_is_better else value >= target):
      return float(k)
  return math.inf


class _Runs:
  """The records of finished runs: read from ``out/runs`` or trained in pools of workers."""

  def __init__(self, workload: Workload, out: Path, workers: int, log: Callable[[str], None]):
    self.workload, self.out, self.workers, self.log = workload, out, workers, log
    self.records: dict[RunTask, dict] = {}
    self.dataset = None

  def task(self, method: str, lr: float, seed: int) -> RunTask:
    return RunTask(method, lr, seed, self.workload.iters)

  def ensure(self, tasks: list[RunTask], title: str) -> None:
    """Reads or trains every task of ``tasks``."""
    missing = []
    for task in dict.fromkeys(tasks):
      if task in self.records:
        continue
      record = read_record(record_path(self.out, task), task)
      if record is None:
        missing.append(task)
      else:
        self.records[task] = record
    if not missing:
      return
    self.log(f"{title}: {len(missing)} run{'s' * (len(missing) != 1)} of "
             f"{self.workload.iters} iterations")
    if (self.workers <= 1 or len(missing) == 1) and self.dataset is None:
      self.dataset = self.workload.load_data()  # run_tasks trains here; load it once
    with tqdm(total=len(missing) * self.workload.iters, unit="it", desc=title,
              smoothing=0.05) as bar:
      pool.run_tasks(self.workload.train, missing, self.workers, self.workload.load_data,
                     dataset=self.dataset, on_result=self.store, progress=bar.update)

  def store(self, task: RunTask, record: dict) -> None:
    record = plain(record)
    write_json(record_path(self.out, task), {"task": task._asdict(), "record": record})
    self.records[task] = record


def _grid_round(runs: _Runs, spans: dict[str, list[int]]) -> dict[str, list[int]]:
  """Trains the grids of ``spans`` (method -> [lowest k, highest k, added below, above]);
  returns the spans the next round adds."""
  workload = runs.workload
  runs.ensure([runs.task(m, grid_lr(workload.methods[m], workload.grid_ratio, k), seed)
               for m, (low, high, _, _) in spans.items() for k in range(low, high + 1)
               for seed in range(workload.grid_seeds)], "grid")
  grown = {}
  for method, (low, high, below, above) in spans.items():
    lrs = {k: grid_lr(workload.methods[method], workload.grid_ratio, k)
           for k in range(low, high + 1)}
    grid = {lrs[k]: [final(runs.records[runs.task(method, lrs[k], s)]["val"])
                     for s in range(workload.grid_seeds)] for k in lrs}
    best = select_lr(grid, workload.lower_is_better)
    top_diverged = any(diverged(runs.records[runs.task(method, lrs[high], s)], workload)
                       for s in range(workload.grid_seeds))
    add_below = best == lrs[low] and below < workload.max_extensions
    add_above = (best == lrs[high] or not top_diverged) and above < workload.max_extensions
    if add_below or add_above:
      grown[method] = [low - add_below, high + add_above, below + add_below, above + add_above]
  return grown


def _method_results(runs: _Runs, method: str, span: list[int]) -> dict:
  workload = runs.workload
  lrs = [grid_lr(workload.methods[method], workload.grid_ratio, k)
         for k in range(span[0], span[1] + 1)]
  grid = {lr: [runs.records[runs.task(method, lr, s)] for s in range(workload.grid_seeds)]
          for lr in lrs}
  selected = select_lr({lr: [final(r["val"]) for r in records] for lr, records in grid.items()},
                       workload.lower_is_better)
  return {"baseline": workload.baseline[method],
          "grid": {repr(lr): [final(r["val"]) for r in records] for lr, records in grid.items()},
          "diverged": [repr(lr) for lr, records in grid.items()
                       if any(diverged(r, workload) for r in records)],
          "selected_lr": selected}


def _paired(runs: _Runs, methods: dict[str, dict]) -> None:
  """Adds the per-seed results at the selected rates and the paired comparisons."""
  workload = runs.workload
  seeds = range(workload.seeds)
  finals = {m: [runs.records[runs.task(m, r["selected_lr"], s)] for s in seeds]
            for m, r in methods.items()}
  sign = 1 if workload.lower_is_better else -1
  for method, result in methods.items():
    baseline = result["baseline"]
    result["val"] = [final(r["val"]) for r in finals[method]]
    result["test"] = [final(r["test"]) for r in finals[method]]
    baseline_test = [final(r["test"]) for r in finals[baseline]]
    diffs = [t - b for t, b in zip(result["test"], baseline_test)]
    result["paired_test_diff"] = diffs
    result["wins"] = sum(1 for d in diffs if sign * d < 0)
    target = float(np.mean([final(r["val"]) for r in finals[baseline]]))
    result["iters_to_baseline_val"] = [iters_to_reach(r, target, workload.lower_is_better)
                                       for r in finals[method]]


def run(workload: Workload, out: Path, workers: int = 2, log: Callable[[str], None] = print,
        command: str | None = None) -> dict:
  """Runs the protocol (module doc) for every method of ``workload``; reuses and writes the
  run records under ``out/runs``; returns the results, also written to ``out/results.json``."""
  start = time.perf_counter()
  out = Path(out)
  for method in workload.methods:
    baseline = workload.baseline.get(method)
    if baseline not in workload.methods:
      raise cli.InputError(f"method {method!r} is compared to {baseline!r}, which is not run; "
                           "give every method a baseline among the methods")
  runs = _Runs(workload, out, workers, log)
  half = workload.grid_points // 2
  spans = {m: [-half, workload.grid_points - 1 - half, 0, 0] for m in workload.methods}
  pending = dict(spans)
  while pending:
    grown = _grid_round(runs, pending)
    spans.update(grown)
    pending = grown
  methods = {m: _method_results(runs, m, spans[m]) for m in workload.methods}
  runs.ensure([runs.task(m, r["selected_lr"], s) for m, r in methods.items()
               for s in range(workload.seeds)], "selected")
  _paired(runs, methods)
  results = {
      "workload": workload.name, "metric": workload.metric,
      "lower_is_better": workload.lower_is_better, "iters": workload.iters,
      "sizes": workload.sizes,
      "protocol": {"grid_ratio": workload.grid_ratio, "grid_points": workload.grid_points,
                   "grid_seeds": workload.grid_seeds, "seeds": workload.seeds,
                   "max_extensions": workload.max_extensions,
                   "diverged_at": workload.diverged_at, "selection": SELECTION},
      "methods": methods,
      "train_seconds": sum(r["wall_s"] for r in runs.records.values()),
      "environment": outputs.environment(),
      "command": command or f"python -m evidence.{workload.name}",
      "seconds": time.perf_counter() - start}
  write_json(out / "results.json", results)
  return results


class _Parser(cli.Parser):
  """Records the command line it parsed as ``args.command`` (for results.json)."""

  def parse_known_args(self, args=None, namespace=None):
    argv = sys.argv[1:] if args is None else list(args)
    parsed, rest = super().parse_known_args(argv, namespace)
    parsed.command = " ".join([self.prog, *argv])
    return parsed, rest


def parser(name: str, doc: str, iters: int, seeds: int | None = None,
           grid_seeds: int | None = None, workers: int = 2) -> cli.Parser:
  """The options every workload has; ``None`` defaults mean the :class:`Workload`'s own.

  ``--out`` (default results/evidence/<name>), ``--workers``, ``--iters``, ``--seeds``,
  ``--grid-seeds``, ``--methods`` (a comma-separated subset; the baselines they need are
  added), ``--no-plots``. A workload adds its own options to the returned parser.
  """
  result = _Parser(prog=f"python -m evidence.{name}", description=doc,
                   formatter_class=argparse.RawDescriptionHelpFormatter)
  result.add_argument("--out", type=Path, default=Path("results/evidence") / name,
                      help="output folder; its runs/ records make a rerun resume "
                           "(default %(default)s)")
  result.add_argument("--workers", type=cli.positive_int, default=workers,
                      help="worker processes, one core each (default %(default)s)")
  result.add_argument("--iters", type=cli.positive_int, default=iters,
                      help="training iterations per run (default %(default)s)")
  result.add_argument("--seeds", type=cli.positive_int, default=seeds,
                      help="seeds at the selected learning rate (default: the workload's, 5)")
  result.add_argument("--grid-seeds", type=cli.positive_int, default=grid_seeds,
                      help="seeds per grid point (default: the workload's, 1)")
  result.add_argument("--methods", default=None,
                      help="comma-separated subset of the workload's methods (default all)")
  result.add_argument("--no-plots", action="store_true", help="skip the figures")
  return result


def choose_methods(workload: Workload, spec: str | list[str] | None,
            log: Callable[[str], None]) -> Workload:
  """``workload`` restricted to the methods of ``spec`` and the baselines they need."""
  if spec is None:
    return workload
  names = [m.strip() for m in spec.split(",")] if isinstance(spec, str) else list(spec)
  names = [m for m in names if m]
  unknown = [m for m in names if m not in workload.methods]
  if unknown or not names:
    raise cli.InputError(f"unknown method {', '.join(unknown) or '(none given)'} for "
                         f"{workload.name}; use some of {', '.join(workload.methods)}")
  needed = list(dict.fromkeys(names + [workload.baseline[m] for m in names]))
  if len(needed) > len(names):
    log(f"adding the baselines {', '.join(needed[len(names):])}")
  return dataclasses.replace(workload, methods={m: workload.methods[m] for m in needed},
                             baseline={m: workload.baseline[m] for m in needed})


@cli.reports_errors
def main(workload: Workload, args: argparse.Namespace) -> None:
  """Runs ``workload`` with the common options of :func:`parser`, writes table.md and the
  figures (:mod:`evidence.report`) and prints the table."""
  from evidence import report

  workload = choose_methods(workload, args.methods, print)
  workload = dataclasses.replace(
      workload, iters=args.iters, seeds=args.seeds or workload.seeds,
      grid_seeds=args.grid_seeds or workload.grid_seeds)
  out = cli.writable_folder(args.out)
  results = run(workload, out, args.workers, command=getattr(args, "command", None))
  print(report.write(out, results, plots=not args.no_plots))
