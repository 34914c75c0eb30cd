"""What a tuned comparison reports, from its ``results.json`` and run records.

* ``table.md``: per method its selected learning rate, grid size, final validation and test
  metric (mean ± sample std over seeds), the paired test difference to its baseline
  (method minus baseline per seed, mean ± std, and wins/seeds), and the median over seeds of
  the iterations to reach the tuned baseline's mean final validation metric; the run's sizes
  and wall time below.
* ``tuning.png``: mean final validation metric against learning rate, per method; diverged
  points marked, the selected one ringed.
* ``test_curves.png``: test metric against iteration at the selected rate, mean ± std band.
* ``factors.png``: each layer's factor of eq. 9 over training in the base methods' runs at
  their selected rate (mean over seeds); flat, equal lines would mean a uniform factor, which
  a global learning rate could replace.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from evidence import tuning
from experiments.report import mean_std, pyplot, save_figure


def number(value: float) -> str:
  """A metric value for the tables: 4 significant digits; nan and inf spelled out."""
  return f"{value:.4g}" if math.isfinite(value) else str(value)


def mean_pm_std(values: list[float]) -> str:
  """``mean ± std``: the std to 2 significant digits and the mean to the same decimal place
  (``15.16 ± 1.275`` is written ``15.2 ± 1.3``); 4 significant digits each when the std is
  0 or below 1e-4 of the mean (rounding noise)."""
  mean, std = (float(v) for v in mean_std(np.asarray(values, np.float64)))
  if not (math.isfinite(mean) and math.isfinite(std)) or std <= 1e-4 * abs(mean):
    return f"{number(mean)} ± {number(std)}"
  decimals = max(0, 1 - math.floor(math.log10(std)))
  if round(std, decimals) >= 10 ** (2 - decimals):  # rounding carried a digit: 0.0996 -> 0.10
    decimals = max(0, decimals - 1)
  return f"{mean:.{decimals}f} ± {std:.{decimals}f}"


def reached(iters: list[float]) -> str:
  """Median iterations to the baseline's value and how many seeds reach it."""
  hits = sum(1 for k in iters if math.isfinite(k))
  median = float(np.median(iters))
  return f"{number(median) if math.isfinite(median) else 'not reached'} ({hits}/{len(iters)})"


def table(results: dict) -> str:
  direction = "lower" if results["lower_is_better"] else "higher"
  seeds = results["protocol"]["seeds"]
  lines = [f"# {results['workload']}: tuned comparison", "",
           f"{results['metric']} ({direction} is better) after {results['iters']} iterations, "
           f"mean ± std over {seeds} paired seeds at each method's selected learning rate "
           f"({results['protocol']['selection']}; {results['protocol']['grid_seeds']} grid "
           "seed(s)). Paired difference: method minus baseline, per seed; wins: seeds where "
           "the method is better. Iterations: median over seeds to reach the baseline's mean "
           "final validation value (seeds that reach it).", "",
           "| method | baseline | selected lr | grid points (diverged) | validation | test | "
           "paired test diff | wins | iterations to baseline val |",
           "|---|---|---|---|---|---|---|---|---|"]
  for method, r in results["methods"].items():
    own = r["baseline"] == method
    diff = "—" if own else mean_pm_std(r["paired_test_diff"])
    wins = "—" if own else f"{r['wins']}/{len(r['paired_test_diff'])}"
    lines.append(f"| {method} | {r['baseline']} | {r['selected_lr']:.3g} | "
                 f"{len(r['grid'])} ({len(r['diverged'])}) | {mean_pm_std(r['val'])} | "
                 f"{mean_pm_std(r['test'])} | {diff} | {wins} | "
                 f"{reached(r['iters_to_baseline_val'])} |")
  sizes = "; ".join(f"{k}: {v}" for k, v in results["sizes"].items())
  environment = results["environment"]
  lines += ["", f"Sizes: {sizes}.", "",
            f"Wall time: {results['seconds']:.0f} s for this command, "
            f"{results['train_seconds']:.0f} s of training in all runs "
            f"({environment.get('backend')}, jax {environment.get('jax')}). "
            f"Command: `{results['command']}`."]
  return "\n".join(lines) + "\n"


def selected_records(out: Path, results: dict, method: str) -> list[dict]:
  """The run records of ``method`` at its selected rate, seeds 0..seeds-1."""
  r = results["methods"][method]
  records = []
  for seed in range(results["protocol"]["seeds"]):
    task = tuning.RunTask(method, r["selected_lr"], seed, results["iters"])
    record = tuning.read_record(tuning.record_path(out, task), task)
    if record is None:
      raise FileNotFoundError(tuning.record_path(out, task))
    records.append(record)
  return records


def _finish(fig, ax, path: Path, xlabel: str, ylabel: str, title: str) -> None:
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  ax.set_title(title)
  ax.legend(fontsize=8)
  save_figure(fig, path)


def plot_tuning(path: Path, results: dict) -> None:
  plt = pyplot()
  fig, ax = plt.subplots(figsize=(7, 4.5))
  finite = [v for r in results["methods"].values() for lr, values in r["grid"].items()
            if lr not in r["diverged"] for v in [float(np.mean(values))] if math.isfinite(v)]
  top = max(finite) if finite else 1.0
  bottom = min(finite) if finite else 0.0
  ceiling = top + 0.1 * (top - bottom or 1.0)
  for method, r in results["methods"].items():
    lrs = np.array([float(lr) for lr in r["grid"]])
    values = np.array([float(np.mean(v)) for v in r["grid"].values()])
    bad = np.array([lr in r["diverged"] for lr in r["grid"]])
    shown = np.where(np.isfinite(values), np.minimum(values, ceiling), ceiling)
    line, = ax.plot(lrs[~bad], values[~bad], "o-", ms=4, label=method)
    ax.plot(lrs[bad], shown[bad], "x", color=line.get_color(), ms=8)
    best = float(np.mean(r["grid"][repr(r["selected_lr"])]))
    ax.plot([r["selected_lr"]], [min(best, ceiling)], "o", ms=12, mfc="none",
            color=line.get_color())
  ax.set_xscale("log")
  ax.set_ylim(bottom - 0.05 * (ceiling - bottom or 1.0), ceiling + 0.05 * (ceiling - bottom or 1.0))
  _finish(fig, ax, path, "learning rate", f"final validation {results['metric']}",
          f"{results['workload']}: grids (x diverged, drawn at the top; ring selected)")


def plot_test_curves(path: Path, out: Path, results: dict) -> None:
  plt = pyplot()
  fig, ax = plt.subplots(figsize=(7, 4.5))
  for method in results["methods"]:
    records = selected_records(out, results, method)
    iters = records[0]["eval_iters"]
    mean, std = mean_std(np.array([r["test"] for r in records], np.float64))
    line, = ax.plot(iters, mean, label=method)
    ax.fill_between(iters, mean - std, mean + std, color=line.get_color(), alpha=0.2)
  _finish(fig, ax, path, "iteration", f"test {results['metric']}",
          f"{results['workload']}: at the selected learning rates, mean ± std over seeds")


def plot_factors(path: Path, out: Path, results: dict) -> None:
  plt = pyplot()
  bases = [m for m, r in results["methods"].items() if r["baseline"] == m]
  fig, axes = plt.subplots(1, len(bases), figsize=(5 * len(bases), 4), squeeze=False)
  for ax, method in zip(axes[0], bases):
    records = selected_records(out, results, method)
    names = list(records[0]["factors"])
    colors = plt.cm.viridis(np.linspace(0, 1, len(names)))
    for name, color in zip(names, colors):
      mean = np.mean([r["factors"][name] for r in records], axis=0)
      ax.plot(records[0]["factor_iters"], mean, color=color, lw=1,
              label=name if len(names) <= 12 else None)
    ax.set_title(f"{method} at lr {results['methods'][method]['selected_lr']:.3g}", fontsize=9)
    ax.set_xlabel("iteration")
    ax.set_ylabel("factor 1 + ln(1 + 1/||g_l||)")
    if len(names) <= 12:
      ax.legend(fontsize=6)
  fig.suptitle(f"{results['workload']}: per-layer factors (eq. 9), mean over seeds", fontsize=10)
  save_figure(fig, path)


def write(out: Path, results: dict, plots: bool = True) -> str:
  """Writes ``table.md`` (and the figures unless ``plots`` is false); returns the table."""
  out = Path(out)
  text = table(results)
  tuning.write_text(out / "table.md", text)
  if plots:
    plot_tuning(out / "tuning.png", results)
    plot_test_curves(out / "test_curves.png", out, results)
    plot_factors(out / "factors.png", out, results)
  return text
