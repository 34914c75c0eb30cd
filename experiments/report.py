"""Reporting: every table and figure of the experiments.

**The paper's protocol** (:mod:`experiments.paper`): Table I, paired differences, JSON/CSV
curves, test-error and effective-learning-rate plots.

**Tuned comparisons** (:mod:`experiments.tuned`): ``table.md`` per workload
(:func:`tuned_table`: per method the selected rate, validation and test metric over the
evaluation seeds, and against its base the paired difference with its 95% t interval,
Wilcoxon p, detectable effect and verdict, recomputed from the per-seed values by
:func:`experiments.stats.paired`, and the iterations to the base's validation value with the
median's interval), ``tuning.png`` (mean final validation metric against learning rate per
method, diverged points marked, the selected one ringed), ``test_curves.png`` (test metric
against iteration at the selected rate, mean ± std band) and ``factors.png`` (each layer's
factor of eq. 9 over training in the base methods' runs at their selected rate, mean over
seeds; flat, equal lines would mean a uniform factor, which a global learning rate could
replace); :func:`write_tuned` writes them.

Numbers: :func:`experiments.stats.mean_pm_std` (the std to 2 significant digits, the mean to
its decimal place).

Table I form: one row per method, one column per evaluation iteration, each cell the mean
test error over seeds ``± `` its sample standard deviation (``ddof = 1``), in percent.

Paired differences: for each base method and seed ``s``, ``d_s = err(base+layer, s) -
err(base, s)`` (same initialisation and minibatches, see ``train.py``); reported as mean ±
std over seeds and the number of seeds where the layer version has the lower error.

References:
  Singh et al., ICMLA 2015, arXiv:1510.04609, Table I (MNIST, first 2,000 iterations).
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import numpy as np

from experiments import files, records, stats
from experiments.stats import mean_pm_std, mean_std


def pyplot():
  """``matplotlib.pyplot`` on the file-only Agg backend (imported on first use)."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot

  return matplotlib.pyplot


def save_figure(fig, path: Path, dpi: int = 110) -> None:
  """Lays out ``fig``, writes it to ``path`` (atomically) and closes it."""
  fig.tight_layout()
  with files.replacing(path) as temporary:
    fig.savefig(temporary, dpi=dpi)
  pyplot().close(fig)


def markdown_table(results: dict[str, dict], eval_iters: list[int]) -> str:
  """Mean ± std test error (%) per method (rows) and iteration (columns)."""
  n = {len(r["seeds"]) for r in results.values()}
  head = "| method | " + " | ".join(f"iter {k}" for k in eval_iters) + " |"
  lines = [f"Test error (%), mean ± std over {'/'.join(map(str, sorted(n)))} seeds.", "",
           head, "|---" * (len(eval_iters) + 1) + "|"]
  for method, r in results.items():
    mean, std = mean_std(100 * r["test_error"])
    cells = " | ".join(f"{m:.2f} ± {s:.2f}" for m, s in zip(mean, std))
    lines.append(f"| {method} | {cells} |")
  return "\n".join(lines) + "\n"


def paired_table(results: dict[str, dict], eval_iters: list[int]) -> str:
  """Per base method: mean ± std of the per-seed difference (layer - base), and wins."""
  lines = ["Paired difference, layer version minus base, in test-error points (%); "
           "negative favours the layer version; (wins/seeds) counts seeds where it is lower.",
           "", "| pair | " + " | ".join(f"iter {k}" for k in eval_iters) + " |",
           "|---" * (len(eval_iters) + 1) + "|"]
  for method, r in results.items():
    layer = results.get(method + "+layer")
    if "+" in method or layer is None:
      continue
    common = sorted(set(r["seeds"]) & set(layer["seeds"]))
    a = r["test_error"][[r["seeds"].index(s) for s in common]]
    b = layer["test_error"][[layer["seeds"].index(s) for s in common]]
    d = 100 * (b - a)
    mean, std = mean_std(d)
    wins = (d < 0).sum(0)
    cells = " | ".join(f"{m:+.2f} ± {s:.2f} ({w}/{len(common)})"
                       for m, s, w in zip(mean, std, wins))
    lines.append(f"| {method}+layer − {method} | {cells} |")
  return "\n".join(lines) + "\n"


def _subsample(x: np.ndarray, every: int) -> np.ndarray:
  """Means over consecutive windows of ``every`` iterations (axis 1)."""
  n = x.shape[1] // every * every
  return x[:, :n].reshape((x.shape[0], n // every, every) + x.shape[2:]).mean(2)


def write_json(path: Path, results: dict[str, dict], config: dict, every: int = 10) -> None:
  """Every curve: test errors per seed, and losses/norms/factors/lrs averaged per ``every``."""
  out = {"config": config, "curve_every": every, "methods": {}}
  for method, r in results.items():
    out["methods"][method] = {
        "seeds": list(r["seeds"]), "eval_iters": list(r["eval_iters"]),
        "layer_names": list(r["layer_names"]),
        "test_error": np.round(r["test_error"], 6).tolist(),
        **{k: np.round(_subsample(r[k], every), 7).tolist()
           for k in ("train_loss", "grad_norm", "factor", "effective_lr")},
    }
  files.write_json(path, out)


def write_csv(path: Path, results: dict[str, dict]) -> None:
  """Long-form test-error curves: method, seed, iteration, test_error."""
  text = io.StringIO()
  rows = csv.writer(text)
  rows.writerow(["method", "seed", "iteration", "test_error"])
  for method, r in results.items():
    for i, seed in enumerate(r["seeds"]):
      for k, err in zip(r["eval_iters"], r["test_error"][i]):
        rows.writerow([method, seed, k, f"{err:.6f}"])
  files.write_text(path, text.getvalue())


def plot_test_error(path: Path, results: dict[str, dict], title: str) -> None:
  """One panel per base method: base and +layer test error, mean with a ±1 std band."""
  plt = pyplot()
  bases = [m for m in results if "+" not in m]
  fig, axes = plt.subplots(1, len(bases), figsize=(4.2 * len(bases), 3.6), squeeze=False)
  for ax, base in zip(axes[0], bases):
    for method, color in ((base, "tab:blue"), (base + "+layer", "tab:red")):
      if method not in results:
        continue
      r = results[method]
      mean, std = mean_std(100 * r["test_error"])
      ax.plot(r["eval_iters"], mean, "o-", color=color, label=f"{method} (n={len(r['seeds'])})")
      ax.fill_between(r["eval_iters"], mean - std, mean + std, color=color, alpha=0.2)
    ax.set_xscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel("test error (%)")
    ax.set_title(base.upper())
    ax.grid(alpha=0.3, which="both")
    ax.legend()
  fig.suptitle(title)
  save_figure(fig, path, dpi=110)


def plot_effective_lr(path: Path, results: dict[str, dict], title: str) -> None:
  """Each layer's effective learning rate ``lr_k * f_l`` (mean over seeds), per +layer method."""
  plt = pyplot()
  layered = [m for m in results if m.endswith("+layer")]
  if not layered:
    return
  fig, axes = plt.subplots(1, len(layered), figsize=(4.2 * len(layered), 3.6), squeeze=False)
  for ax, method in zip(axes[0], layered):
    r = results[method]
    eff = _subsample(r["effective_lr"], 10).mean(0)
    base_lr = eff / _subsample(r["factor"], 10).mean(0)
    its = (np.arange(eff.shape[0]) + 0.5) * 10
    for j, name in enumerate(r["layer_names"]):
      ax.plot(its, eff[:, j], label=name.split("/")[-1] if "/" in name else name)
    ax.plot(its, base_lr[:, 0], "k--", label="base lr")
    ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel("effective learning rate")
    ax.set_title(method)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
  fig.suptitle(title)
  save_figure(fig, path, dpi=110)


def write_report(out: Path, results: dict[str, dict], config: dict, plots: bool = True) -> str:
  """Writes table.md, results.json, test_error.csv and the PNGs under ``out``; returns
  the markdown."""
  out = Path(out)
  out.mkdir(parents=True, exist_ok=True)
  eval_iters = next(iter(results.values()))["eval_iters"]
  md = markdown_table(results, eval_iters) + "\n" + paired_table(results, eval_iters)
  files.write_text(out / "table.md", md)
  write_json(out / "results.json", results, config)
  write_csv(out / "test_error.csv", results)
  if plots:
    title = f"{config.get('dataset', '')}, {config.get('protocol', '')} protocol"
    plot_test_error(out / "test_error.png", results, title)
    plot_effective_lr(out / "effective_lr.png", results, title)
  return md


# --- tuned comparisons -------------------------------------------------------------------------


def comparison(results: dict, method: str) -> stats.Paired:
  """``method``'s paired comparison with its base, recomputed from the per-seed test values."""
  r = results["methods"][method]
  return stats.paired(r["test"], results["methods"][r["baseline"]]["test"],
                      results["lower_is_better"])


TUNED_HEADER = ("method", "baseline", "selected lr", "grid points (diverged)", "validation",
                "test", "paired diff", "95% CI", "p (Wilcoxon)", "detectable effect", "wins",
                "verdict", "iterations to base val")


def comparison_cells(results: dict, method: str) -> list[str]:
  """``method``'s cells from "paired diff" to "iterations to base val" (the last seven of
  :data:`TUNED_HEADER`); a tuned base has dashes for the comparison with itself."""
  r = results["methods"][method]
  cells = stats.paired_cells(comparison(results, method))
  paired = (["—"] * 5 + ["(tuned base)"] if r["baseline"] == method else
            [cells[k] for k in ("diff", "ci95", "p", "mde", "wins", "verdict")])
  return [*paired, stats.reach_text(stats.reach(r["iters_to_baseline_val"]))]


def tuned_rows(results: dict) -> list[list[str]]:
  """One row of :data:`TUNED_HEADER` per method."""
  return [[method, r["baseline"], f"{r['selected_lr']:.3g}",
           f"{len(r['grid'])} ({len(r['diverged'])})"
           + ("" if r.get("bracketed", True) else ", best on the edge"),
           mean_pm_std(r["val"]), mean_pm_std(r["test"]), *comparison_cells(results, method)]
          for method, r in results["methods"].items()]


def _seconds(values: list[float]) -> str:
  return f"{np.median(values):.0f} s" if values else "—"


def tuned_table(results: dict) -> str:
  """``table.md`` of a tuned comparison's results (module doc)."""
  direction = "lower" if results["lower_is_better"] else "higher"
  seeds, grid_seeds = results["eval_seeds"], results["grid_seeds"]
  stages = results["protocol"]["stages"]
  lines = [f"# {results['workload']}: tuned comparison", "",
           f"{results['metric']} ({direction} is better) after {results['iters']} iterations, "
           f"mean ± std over the {len(seeds)} evaluation seeds ({seeds[0]}-{seeds[-1]}) at "
           f"each method's selected learning rate ({results['protocol']['selection']}: "
           f"{len(grid_seeds)} grid seeds, {grid_seeds[0]}-{grid_seeds[-1]}). Paired diff: "
           "method minus its base per seed, mean ± std; 95% CI: the t interval of the mean; "
           "detectable effect: the mean difference found with 80% power; verdict: better or "
           "worse only when the interval excludes 0. Iterations: median over seeds to reach "
           "the base's mean final validation value [95% interval of the median] (seeds that "
           "reach it).", "",
           stats.markdown_table(TUNED_HEADER, tuned_rows(results)), "",
           "Search: " + "; ".join(
               f"{st['stage']}: {results['runs'].get(st['stage'], 0)} runs of {st['iters']} "
               f"iterations, seeds {', '.join(map(str, st['seeds']))}" for st in stages)
           + f"; lattice lr = {results['protocol']['lattice']['anchor']:g} x "
             f"{results['protocol']['lattice']['ratio']:.4g}^k."]
  levels = [f"{m}: {r['level']['split']} {r['level']['mean']:.4g} against "
            f"{r['level']['value']:.4g} ({'met' if r['level']['met'] else 'missed'}; "
            f"{r['level']['source']})" for m, r in results["methods"].items() if "level" in r]
  if levels:
    lines += ["", "Level of the tuned base: " + "; ".join(levels) + "."]
  sizes = "; ".join(f"{k}: {v}" for k, v in results["sizes"].items() if k != "reference")
  environment, hardware = results["environment"], results["hardware"]
  per_run = [w for r in results["methods"].values() for w in r["wall_s"]]
  lines += ["", f"Sizes: {sizes}.", "",
            f"Wall time: {results['seconds']:.0f} s for this command, "
            f"{results['train_seconds']:.0f} s of training in all runs ("
            + ", ".join(f"{k} {v:.0f} s" for k, v in results["stage_seconds"].items())
            + f"), median {_seconds(per_run)} per evaluation run; {hardware['cpu']}, "
            f"{hardware['cores']} cores ({environment.get('backend')}, jax "
            f"{environment.get('jax')}). Command: `{results['command']}`."]
  return "\n".join(lines) + "\n"


def selected_records(out: Path, results: dict, method: str) -> list[dict]:
  """The run records of ``method`` at its selected rate, one per evaluation seed."""
  r = results["methods"][method]
  found = []
  for seed in results["eval_seeds"]:
    task = records.RunTask(method, r["selected_lr"], seed, results["iters"])
    record = records.read_record(records.record_path(out, task), task)
    if record is None:
      raise FileNotFoundError(records.record_path(out, task))
    found.append(record)
  return found


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
    runs = selected_records(out, results, method)
    iters = runs[0]["eval_iters"]
    mean, std = mean_std(np.array([r["test"] for r in runs], np.float64))
    line, = ax.plot(iters, mean, label=method)
    ax.fill_between(iters, mean - std, mean + std, color=line.get_color(), alpha=0.2)
  _finish(fig, ax, path, "iteration", f"test {results['metric']}",
          f"{results['workload']}: at the selected learning rates, mean ± std over seeds")


def plot_factors(path: Path, out: Path, results: dict) -> None:
  plt = pyplot()
  bases = [m for m, r in results["methods"].items() if r["baseline"] == m]
  fig, axes = plt.subplots(1, len(bases), figsize=(5 * len(bases), 4), squeeze=False)
  for ax, method in zip(axes[0], bases):
    runs = selected_records(out, results, method)
    names = list(runs[0]["factors"])
    colors = plt.cm.viridis(np.linspace(0, 1, len(names)))
    for name, color in zip(names, colors):
      mean = np.mean([r["factors"][name] for r in runs], axis=0)
      ax.plot(runs[0]["factor_iters"], mean, color=color, lw=1,
              label=name if len(names) <= 12 else None)
    ax.set_title(f"{method} at lr {results['methods'][method]['selected_lr']:.3g}", fontsize=9)
    ax.set_xlabel("iteration")
    ax.set_ylabel("factor 1 + ln(1 + 1/||g_l||)")
    if len(names) <= 12:
      ax.legend(fontsize=6)
  fig.suptitle(f"{results['workload']}: per-layer factors (eq. 9), mean over seeds", fontsize=10)
  save_figure(fig, path)


def write_tuned(out: Path, results: dict, plots: bool = True) -> str:
  """Writes a tuned comparison's ``table.md`` (and the figures unless ``plots`` is false);
  returns the table."""
  out = Path(out)
  text = tuned_table(results)
  files.write_text(out / "table.md", text)
  if plots:
    plot_tuning(out / "tuning.png", results)
    plot_test_curves(out / "test_curves.png", out, results)
    plot_factors(out / "factors.png", out, results)
  return text
