"""Grouping: one factor per module (kernel + bias) or one per array? The Table I protocol.

``f_l = 1 + log(1 + 1/||g_l||_2)`` (Singh et al. 2015, eq. 9) needs a notion of layer.
``layers="module"`` (this library's default) takes one norm per innermost module, e.g.
LeNet's ``conv1`` kernel and bias together (4 layers); ``layers="array"`` takes one per
array, Caffe's per-blob granularity (8 arrays). A bias's gradient is much smaller than its
kernel's, so under ``"array"`` the biases get larger factors than the kernels.

Protocol: the paper's Table I (MNIST LeNet, Caffe ``lenet_solver``; here on
Fashion-MNIST, :mod:`.lenet`): each base method of ``--methods`` (default SGD, NAG and
AdaGrad) alone and with the factor under both groupings. Same seeds for every method
(paired); test error at the protocol's evaluation points up to ``--iters``.

Run: ``python -m experiments.studies.grouping --out results/studies/grouping`` (3 seeds x
2,000 iterations, the paper's length: 9 configurations, 54,000 LeNet steps; run times in
docs/studies.md).

References:
  Singh, De, Zhang, Goldstein, Taylor. "Layer-Specific Adaptive Learning Rates for Deep
  Networks." ICMLA 2015. arXiv:1510.04609. Table I.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from experiments import cli, methods, report, stats
from experiments.studies import common, lenet

GROUPINGS = ("module", "array")


def run_all(args, bases, dataset=None, log=print):
  """{label: curves} for each base method, alone and +layer under each grouping."""
  configs = {}
  for b in bases:
    configs[b] = (b, None, "module")
    for g in GROUPINGS:
      configs[f"{b}+layer ({g})"] = (b + "+layer", None, g)
  runs = lenet.train_configs(configs, args, dataset, log)
  for label, (method, _, layers) in configs.items():
    runs[label]["grouping"] = layers if method.endswith("+layer") else None
  return runs


def _pm(x, sign: str = "") -> str:
  """'mean ± std' over seeds, in percentage points."""
  mean, sd = stats.mean_std(x)
  return f"{100 * mean:{sign}.2f} ± {100 * sd:.2f}"


def analyse(runs, bases, seeds, iters, dataset="fashion_mnist"):
  first = next(iter(runs.values()))
  evals = list(first["eval_iters"])
  out = {"eval_iters": evals, "runs": {}, "paired": {}}
  rows, rows_f = [], []
  for label, r in runs.items():
    err = np.asarray(r["test_error"])  # (seed, eval)
    out["runs"][label] = {"test_error": err, "layer_names": r["layer_names"],
                          "grouping": r["grouping"],
                          "mean_factor_per_layer": r["factor"].mean((0, 1)),
                          "mean_grad_norm_per_layer": r["grad_norm"].mean((0, 1))}
    rows.append([label] + [_pm(err[:, i]) for i in range(len(evals))])
    if r["grouping"]:
      rows_f.append([label, ", ".join(
          f"{n}: {stats.number(f, 3, '-')}"
          for n, f in zip(r["layer_names"], r["factor"].mean((0, 1))))])
  rows_p = []
  for b in bases:
    base = runs[b]["test_error"][:, -1]
    mod, arr = (runs[f"{b}+layer ({g})"]["test_error"][:, -1] for g in GROUPINGS)
    d = {"base - module": base - mod, "base - array": base - arr, "array - module": arr - mod}
    out["paired"][b] = d
    rows_p.append([b] + [f"{_pm(x, '+')} ({int(np.sum(x > 0))}/{len(x)} seeds > 0)"
                         for x in d.values()])
  table = "\n\n".join([
      f"LeNet, {common.dataset_title(dataset)}, Table I protocol (Caffe lenet_solver); test "
      f"error (%), mean ± std over {seeds} seeds, at the evaluation iterations up to {iters}.",
      stats.markdown_table(["method"] + [f"iter {k}" for k in evals], rows),
      f"Paired differences at iteration {evals[-1]} (percentage points; > 0: the second "
      "named has lower error):",
      stats.markdown_table(["base", "base - module", "base - array", "array - module"], rows_p),
      "Mean factor per layer (seeds and iterations):",
      stats.markdown_table(["method", "factors"], rows_f),
  ])
  return out, table


def plot(out_dir: Path, runs, results):
  plt = report.pyplot()
  fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
  labels = list(runs)
  for i, label in enumerate(labels):
    err = 100 * np.asarray(results["runs"][label]["test_error"])[:, -1]
    color = f"C{labels.index(label) % 3}"
    axes[0].bar(i, err.mean(), color=color, alpha=0.35 + 0.3 * (i % 3 > 0))
    axes[0].plot(np.full(len(err), i), err, "k.", ms=4)
  axes[0].set_xticks(range(len(labels)), labels, rotation=40, ha="right", fontsize=8)
  low = min(100 * np.asarray(r["test_error"])[:, -1].min() for r in results["runs"].values())
  axes[0].set(ylabel=f"test error % at iteration {results['eval_iters'][-1]}",
              ylim=(max(0, low - 2), None), title="bars: mean; dots: seeds")
  for label in labels:
    r = results["runs"][label]
    if r["grouping"] is None:
      continue
    names = list(r["layer_names"])
    ls = "-" if r["grouping"] == "module" else ":"
    axes[1].plot(range(len(names)), r["mean_factor_per_layer"], marker="o", ls=ls, label=label)
    if r["grouping"] == "array":
      axes[1].set_xticks(range(len(names)), names, rotation=40, ha="right", fontsize=7)
  axes[1].set(ylabel="mean factor over training", title="factor per layer (module: one "
              "per kernel+bias, plotted at the first indices)")
  axes[1].legend(fontsize=7)
  for ax in axes:
    ax.grid(alpha=0.3)
  report.save_figure(fig, out_dir / "grouping.png", dpi=120)


@cli.reports_errors
def main(argv=None, dataset=None):
  parser = common.parser(__doc__, "grouping", seeds=3, iters=2000, methods_="sgd,nag,adagrad",
                         images=True)
  args = parser.parse_args(argv)
  bases = args.methods
  if any(b not in methods.BASES for b in bases):
    parser.error("--methods takes base methods here (each runs alone and +layer under both "
                 f"groupings): {', '.join(methods.BASES)}")
  common.claim(args.out, {"study": "grouping", "dataset": args.dataset,
                          "data_dir": args.data_dir, "protocol": lenet.PROTOCOL.name})
  elapsed = common.timer()
  runs = run_all(args, bases, dataset)
  results, table = analyse(runs, bases, args.seeds, args.iters, args.dataset)
  results.update(seeds=args.seeds, iters=args.iters, protocol=lenet.PROTOCOL.name,
                 dataset=args.dataset)
  common.finish("grouping", args, argv, results, table, elapsed,
                sum(r["wall_s"] for r in runs.values()),
                lambda: plot(args.out, runs, results))
  return results


if __name__ == "__main__":
  main()
