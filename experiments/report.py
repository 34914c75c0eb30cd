"""Reporting: the paper's Table I, paired differences, JSON/CSV curves and PNG plots.

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
from pathlib import Path

import numpy as np

from experiments import files


def mean_std(x: np.ndarray, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Mean and sample standard deviation (``ddof = 1``; 0 for a single sample) along ``axis``."""
  x = np.asarray(x, np.float64)
  mean = x.mean(axis)
  return mean, (x.std(axis, ddof=1) if x.shape[axis] > 1 else np.zeros_like(mean))


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
