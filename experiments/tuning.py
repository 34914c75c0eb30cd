r"""The tuning protocol of the tuned comparisons (:mod:`experiments.tuned`, docs/evidence.md).

**One lattice of learning rates per workload**, shared by every method:

    lr_k = anchor * ratio**k,   k an integer, ratio <= 2 (sqrt 2 by default),

so neighbouring rates are at most 2x apart and two methods tried at "the same" rate ran at
exactly the same one. A method starts at the lattice point nearest its centre.

**Stage 1, coarse** (skipped when ``coarse_iters`` is 0): runs of ``coarse_iters``
iterations, the first grid seed only, on every ``coarse_step``-th lattice point,
``coarse_points`` of them around the start. Round by round one point is added below while
the best value sits on the lowest point, and one above while it sits on the highest point or
the highest point has not diverged (at most ``max_extensions`` per side).

**Stage 2, grid** (the selection): full-length runs with every grid seed on each lattice
point within ``fine_span`` lattice steps of the coarse best (of the start without stage 1),
so that a point lies between the best and each of its coarse neighbours, a diverged one
included. Round by round one lattice point is added on the side where the best mean sits on
the edge (at most ``grid_extensions`` per side, 8 by default, as a coarse best from short
runs may sit a few lattice steps from the full-length one; without stage 1 also above while
the highest point has not diverged). The selected learning rate has the best mean final *validation*
metric over the grid seeds (NaN/inf count as the worst, ties go to the smaller rate).

**Stage 3, evaluation**: each method at its selected rate on the evaluation seeds, disjoint
from the grid seeds (the selection's luck cannot show up as an effect) and the same for every
method, so seed ``s`` of a method and of its base share initialisation and batch order.

A run *diverged* when its training loss became non-finite or its final validation metric is
at or beyond the workload's ``diverged_at`` in the bad direction.

Reported per method (:func:`experiments.stats.paired` against its base, ``d_s`` = method
minus base on evaluation seed ``s``): the final test metric per seed, ``d_s``, the mean, the
95% t interval ``ci95``, the Wilcoxon signed-rank ``p_wilcoxon``, the detectable effect
``mde`` at 80% power and the ``verdict`` (better/worse only when the interval excludes 0);
and per seed the first evaluation iteration whose validation metric reaches the tuned base's
mean final validation metric (inf when none does), with the median's order-statistic
interval (:func:`experiments.stats.reach`).

Every run is one run record (:mod:`experiments.records`): stage 1's under
``out/coarse/runs/<method>/``, the others under ``out/runs/<method>/``, written atomically as
each finishes; a rerun with the same ``--out`` trains only the missing runs, and a run stopped
midway resumes from its checkpoint. results.json follows :mod:`experiments.records`' schema
with the stages in ``protocol``, per-run and total wall time and the hardware.

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
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from experiments import cli, engine, pool, records, stats
from experiments.records import RunTask, final, read_record, record_path

SELECTION = "mean final validation metric over grid seeds, full-length runs"


@dataclasses.dataclass(frozen=True)
class Workload:
  """A model, data and metric, the methods compared on it and the protocol's sizes (module
  doc). ``methods``: method -> the rate it starts at (snapped to the lattice); ``reference``:
  the level a trained base reaches, ``{"split", "value", "source"}`` (empty: none)."""

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
  anchor: float = 0.01
  ratio: float = 2 ** 0.5
  coarse_iters: int = 0
  coarse_step: int = 2
  coarse_points: int = 7
  fine_span: int = 1
  grid_seeds: tuple[int, ...] = (0, 1, 2)
  eval_seeds: tuple[int, ...] = tuple(range(100, 110))
  max_extensions: int = 4
  grid_extensions: int = 8
  reference: dict = dataclasses.field(default_factory=dict)

  def lr(self, k: int) -> float:
    """The lattice's ``k``-th rate."""
    return grid_lr(self.anchor, self.ratio, k)

  def lattice_k(self, lr: float) -> int:
    """The lattice point nearest ``lr``."""
    return round(math.log(lr / self.anchor) / math.log(self.ratio))


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


def grid_lr(anchor: float, ratio: float, k: int) -> float:
  return float(anchor * ratio ** k)


def iters_to_reach(record: dict, target: float, lower_is_better: bool) -> float:
  """The first evaluation iteration whose validation metric is at least as good as
  ``target``; inf if none is."""
  for k, value in zip(record["eval_iters"], record["val"]):
    if math.isfinite(value) and (value <= target if lower_is_better else value >= target):
      return float(k)
  return math.inf


def hardware() -> dict[str, Any]:
  """The CPU model (/proc/cpuinfo), the cores this process may use and the load average."""
  model = "unknown"
  try:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("model name"):
        model = line.partition(":")[2].strip()
        break
  except OSError:
    pass
  cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  load = list(os.getloadavg()) if hasattr(os, "getloadavg") else []
  return {"cpu": model, "cores": cores, "load_average": load}


class _Runs:
  """The records of finished runs of ``iters`` iterations under ``out/runs``: read, or
  trained in pools of workers."""

  def __init__(self, workload: Workload, out: Path, iters: int, workers: int,
               log: Callable[[str], None]):
    self.workload, self.out, self.iters, self.workers, self.log = (workload, out, iters,
                                                                   workers, log)
    self.records: dict[RunTask, dict] = {}
    self.dataset = None

  def task(self, method: str, lr: float, seed: int) -> RunTask:
    return RunTask(method, lr, seed, self.iters)

  def get(self, method: str, lr: float, seed: int) -> dict:
    return self.records[self.task(method, lr, seed)]

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
    self.log(f"{title}: {len(missing)} run{'s' * (len(missing) != 1)} of {self.iters} "
             "iterations")
    if (self.workers <= 1 or len(missing) == 1) and self.dataset is None:
      self.dataset = self.workload.load_data()  # run_tasks trains here; load it once
    with tqdm(total=len(missing) * self.iters, unit="it", desc=title, smoothing=0.05) as bar:
      train = functools.partial(engine.train_resuming, train=self.workload.train, out=self.out)
      pool.run_tasks(train, missing, self.workers, self.workload.load_data, dataset=self.dataset,
                     on_result=self.store, progress=bar.update)

  def store(self, task: RunTask, record: dict) -> None:
    self.records[task] = records.write_record(self.out, task, record)


@dataclasses.dataclass
class _Span:
  """Lattice points ``low, low + step, ..., high`` and the points added below and above."""

  low: int
  high: int
  step: int = 1
  below: int = 0
  above: int = 0

  def ks(self) -> range:
    return range(self.low, self.high + 1, self.step)


def _grid(runs: _Runs, method: str, span: _Span, seeds: tuple[int, ...]) -> dict[float, list]:
  """lr -> the final validation metric per seed of ``method``'s runs on ``span``."""
  w = runs.workload
  return {w.lr(k): [final(runs.get(method, w.lr(k), s)["val"]) for s in seeds]
          for k in span.ks()}


def search(runs: _Runs, spans: dict[str, _Span], seeds: tuple[int, ...], title: str,
           until_diverged: bool, cap: int) -> dict[str, _Span]:
  """Grows each method's span round by round (module doc) until its best mean is inside it
  (and, with ``until_diverged``, its highest point diverged) or ``cap`` points
  were added on that side; returns the final spans."""
  w = runs.workload
  spans = {m: dataclasses.replace(s) for m, s in spans.items()}
  pending = list(spans)
  while pending:
    runs.ensure([runs.task(m, w.lr(k), seed) for m in pending for k in spans[m].ks()
                 for seed in seeds], title)
    grown = []
    for method in pending:
      span = spans[method]
      best = select_lr(_grid(runs, method, span, seeds), w.lower_is_better)
      top_diverged = any(diverged(runs.get(method, w.lr(span.high), s), w) for s in seeds)
      add_below = best == w.lr(span.low) and span.below < cap
      add_above = ((best == w.lr(span.high) or (until_diverged and not top_diverged))
                   and span.above < cap)
      if add_below or add_above:
        span.low -= span.step * add_below
        span.high += span.step * add_above
        span.below += add_below
        span.above += add_above
        grown.append(method)
    pending = grown
  return spans


def _grid_json(runs: _Runs, method: str, span: _Span, seeds: tuple[int, ...]) -> dict:
  """A stage's grid in results.json: values per seed, the diverged rates, the best rate."""
  w = runs.workload
  grid = _grid(runs, method, span, seeds)
  return {"grid": {repr(lr): values for lr, values in grid.items()},
          "diverged": [repr(w.lr(k)) for k in span.ks()
                       if any(diverged(runs.get(method, w.lr(k), s), w) for s in seeds)],
          "selected_lr": select_lr(grid, w.lower_is_better)}


def _compare(runs: _Runs, methods: dict[str, dict]) -> None:
  """Adds the evaluation seeds' results at the selected rates and the paired comparisons."""
  w = runs.workload
  finals = {m: [runs.get(m, r["selected_lr"], s) for s in w.eval_seeds]
            for m, r in methods.items()}
  for method, result in methods.items():
    result["val"] = [final(r["val"]) for r in finals[method]]
    result["test"] = [final(r["test"]) for r in finals[method]]
    result["wall_s"] = [r["wall_s"] for r in finals[method]]
  for method, result in methods.items():
    base = methods[result["baseline"]]
    result["paired_test_diff"] = [t - b for t, b in zip(result["test"], base["test"])]
    comparison = stats.paired(result["test"], base["test"], w.lower_is_better)
    result.update({"mean_diff": comparison.mean, "ci95": list(comparison.ci95),
                   "p_wilcoxon": comparison.p_wilcoxon, "mde": comparison.mde,
                   "wins": comparison.wins, "verdict": comparison.verdict,
                   "verdict_text": stats.verdict_text(comparison)})
    target = float(np.mean(base["val"]))
    result["iters_to_baseline_val"] = [iters_to_reach(r, target, w.lower_is_better)
                                       for r in finals[method]]
    result["reach"] = stats.reach(result["iters_to_baseline_val"]).as_json()
    if result["baseline"] == method and w.reference:
      value = float(np.mean(result[w.reference["split"]]))
      met = (value <= w.reference["value"] if w.lower_is_better
             else value >= w.reference["value"])
      result["level"] = {**w.reference, "mean": value, "met": bool(met)}


def check(workload: Workload) -> None:
  """Refuses a protocol that cannot stand: a method without a base among the methods,
  grid and evaluation seeds that overlap, a lattice coarser than 2x."""
  for method in workload.methods:
    baseline = workload.baseline.get(method)
    if baseline not in workload.methods:
      raise cli.InputError(f"method {method!r} is compared to {baseline!r}, which is not run; "
                           "give every method a baseline among the methods")
  shared = sorted(set(workload.grid_seeds) & set(workload.eval_seeds))
  if shared:
    raise cli.UsageError(f"grid and evaluation seeds share {shared}; keep them disjoint")
  if not 1 < workload.ratio <= 2:
    raise cli.UsageError(f"the lattice ratio {workload.ratio} is not in (1, 2]")


def run(workload: Workload, out: Path, workers: int = 2, log: Callable[[str], None] = print,
        command: str | None = None) -> dict:
  """Runs the protocol (module doc) for every method of ``workload``; reuses and writes the
  run records under ``out``; returns the results, also written to ``out/results.json``."""
  start_time = time.perf_counter()
  out = Path(out)
  check(workload)
  w = workload
  full = _Runs(w, out, w.iters, workers, log)
  starts = {m: w.lattice_k(lr) for m, lr in w.methods.items()}
  coarse, coarse_spans = None, {}
  if w.coarse_iters:
    coarse = _Runs(w, out / "coarse", w.coarse_iters, workers, log)
    half = w.coarse_points // 2 * w.coarse_step
    coarse_spans = search(coarse, {m: _Span(k - half, k + half, w.coarse_step)
                                   for m, k in starts.items()},
                          w.grid_seeds[:1], "coarse", until_diverged=True,
                          cap=w.max_extensions)
    starts = {m: w.lattice_k(_grid_json(coarse, m, s, w.grid_seeds[:1])["selected_lr"])
              for m, s in coarse_spans.items()}
  spans = search(full, {m: _Span(k - w.fine_span, k + w.fine_span) for m, k in starts.items()},
                 w.grid_seeds, "grid", until_diverged=coarse is None, cap=w.grid_extensions)
  methods = {}
  for method in w.methods:
    methods[method] = {"baseline": w.baseline[method],
                       **_grid_json(full, method, spans[method], w.grid_seeds)}
    rates = [float(lr) for lr in methods[method]["grid"]]
    methods[method]["bracketed"] = min(rates) < methods[method]["selected_lr"] < max(rates)
    if coarse is not None:
      methods[method]["coarse"] = _grid_json(coarse, method, coarse_spans[method],
                                             w.grid_seeds[:1])
  grid_runs = len(full.records)
  full.ensure([full.task(m, r["selected_lr"], s) for m, r in methods.items()
               for s in w.eval_seeds], "evaluation")
  _compare(full, methods)
  stage_runs = {"coarse": list(coarse.records.values()) if coarse else [],
                "grid": list(full.records.values())[:grid_runs],
                "evaluation": list(full.records.values())[grid_runs:]}
  stages = [{"stage": "grid", "iters": w.iters, "seeds": list(w.grid_seeds), "lattice_step": 1,
             "start": f"lattice points within {w.fine_span} steps of "
                      + ("the coarse best" if coarse else "the method's start"),
             "rule": "add a point beside the best while it is on an edge"
                     + ("" if coarse else " and above while the highest has not diverged"),
             "selection": SELECTION},
            {"stage": "evaluation", "iters": w.iters, "seeds": list(w.eval_seeds),
             "rule": "each method at its selected rate, paired with its base per seed"}]
  if coarse:
    stages.insert(0, {"stage": "coarse", "iters": w.coarse_iters,
                      "seeds": list(w.grid_seeds[:1]), "lattice_step": w.coarse_step,
                      "start": f"{w.coarse_points} points around the method's start",
                      "rule": "add a point below while the best is the lowest, above while "
                              "it is the highest or the highest has not diverged"})
  results = {
      "workload": w.name, "metric": w.metric, "lower_is_better": w.lower_is_better,
      "iters": w.iters, "grid_seeds": list(w.grid_seeds), "eval_seeds": list(w.eval_seeds),
      "sizes": w.sizes,
      "protocol": {"lattice": {"anchor": w.anchor, "ratio": w.ratio}, "stages": stages,
                   "max_extensions": w.max_extensions, "grid_extensions": w.grid_extensions,
                   "diverged_at": w.diverged_at,
                   "selection": SELECTION, "grid_seeds": len(w.grid_seeds),
                   "seeds": len(w.eval_seeds)},
      "methods": methods,
      "runs": {stage: len(rs) for stage, rs in stage_runs.items()},
      "stage_seconds": {stage: sum(r["wall_s"] for r in rs) for stage, rs in stage_runs.items()},
      "train_seconds": sum(r["wall_s"] for rs in stage_runs.values() for r in rs),
      "environment": records.environment(), "hardware": hardware(),
      "command": command or f"python -m experiments.tuned {w.name}",
      "seconds": time.perf_counter() - start_time}
  records.write_json(out / "results.json", results)
  return results


def pilot(workload: Workload, out: Path, runs: int, log: Callable[[str], None] = print) -> dict:
  """Times ``runs`` full-length runs of the first method at its start rate on the first
  evaluation seeds, one process, under ``out/pilot`` (for sizing a protocol); returns
  ``{"runs": [{"seed", "wall_s", "val", "test"}], "hardware"}``."""
  method, lr = next(iter(workload.methods.items()))
  timed = _Runs(workload, Path(out) / "pilot", workload.iters, 1, log)
  tasks = [timed.task(method, workload.lr(workload.lattice_k(lr)), s)
           for s in workload.eval_seeds[:runs]]
  timed.ensure(tasks, "pilot")
  return {"method": method, "lr": tasks[0].lr, "iters": workload.iters,
          "runs": [{"seed": t.seed, "wall_s": timed.records[t]["wall_s"],
                    "val": final(timed.records[t]["val"]),
                    "test": final(timed.records[t]["test"])} for t in tasks],
          "hardware": hardware()}
