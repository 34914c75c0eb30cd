r"""The tuning protocol of the tuned comparisons (:mod:`experiments.tuned`, docs/evidence.md).

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

Every run is one run record (:mod:`experiments.records`) under
``out/runs/<method>/lr<lr>_seed<s>.json``, written atomically as it finishes; a rerun with the
same ``--out`` trains only the missing runs, and a run stopped midway resumes from its
checkpoint. The results follow the schema of :mod:`experiments.records`.

References:
  Nado, Gilmer, Shallue, Anil, Dahl. "A Large Batch Optimizer Reality Check: Traditional,
  Generic Optimizers Suffice Across Batch Sizes." arXiv:2102.06356, 2021.
  Dahl et al. "Benchmarking Neural Network Training Algorithms" (MLCommons AlgoPerf),
  arXiv:2306.07179, 2023: the external tuning ruleset.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from experiments import cli, engine, pool, records
from experiments.records import RunTask, final, read_record, record_path

SELECTION = "mean final validation metric over grid seeds"


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
      train = functools.partial(engine.train_resuming, train=self.workload.train, out=self.out)
      pool.run_tasks(train, missing, self.workers, self.workload.load_data, dataset=self.dataset,
                     on_result=self.store, progress=bar.update)

  def store(self, task: RunTask, record: dict) -> None:
    self.records[task] = records.write_record(self.out, task, record)


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
      "environment": records.environment(),
      "command": command or f"python -m experiments.tuned {workload.name}",
      "seconds": time.perf_counter() - start}
  records.write_json(out / "results.json", results)
  return results
