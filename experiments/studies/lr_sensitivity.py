"""Learning-rate sensitivity: test error against base learning rate, SGD against SGD+layer.

The paper says the layer-specific method is less sensitive to the choice of learning rate.
Protocol: LeNet on Fashion-MNIST with Caffe's ``lenet_solver`` (batch 64, momentum 0.9,
weight decay 5e-4, ``inv`` schedule ``lr_k = lr (1 + 1e-4 k)^-0.75``, biases at twice the
rate; :mod:`.lenet`); only the base learning rate ``lr`` changes, over a log grid (default
0.001 ... 0.1, the paper's 0.01 in the middle). Every method sees the same seeds
(initialisation and batch order), so per-seed differences are paired.

With ``f_l = 1 + log(1 + 1/||g_l||)`` (Singh et al. 2015, eq. 9) the +layer method steps
with ``lr_k * f_l``; the study also records the mean factor, so each +layer point can be
placed at its *effective* learning rate ``lr * mean(f)``. If the +layer curve, shifted
that way, lies on the SGD curve, the method behaves like a larger global learning rate;
if it is flatter, it is genuinely less sensitive.

Sensitivity is summarised per method by the best error over the grid, the mean and worst
error over the grid, and how many grid points come within 1 percentage point of the best.

Run: ``python -m experiments.studies.lr_sensitivity --workers 2 --out
results/studies/lr_sensitivity`` (3 seeds x 500 iterations x 5 rates x 2 methods; run time
in docs/studies.md; the paper's protocol is 10 seeds x 2,000 iterations).

References:
  Singh, De, Zhang, Goldstein, Taylor. "Layer-Specific Adaptive Learning Rates for Deep
  Networks." ICMLA 2015. arXiv:1510.04609.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from experiments import cli, report, stats
from experiments.studies import common, lenet


def sweep(args, methods, lrs, dataset=None, log=print):
  """{method: {lr: curves}} over the grid (``layers="module"``)."""
  configs = {f"{m} @ {lr:g}": (m, lr, "module") for m in methods for lr in lrs}
  runs = lenet.train_configs(configs, args, dataset, log)
  return {m: {lr: runs[f"{m} @ {lr:g}"] for lr in lrs} for m in methods}


def analyse(runs, methods, lrs, seeds, iters, dataset="fashion_mnist"):
  out = {"lrs": lrs, "methods": {}}
  rows, rows_sum = [], []
  for m in methods:
    err = np.array([runs[m][lr]["test_error"][:, -1] for lr in lrs])  # (lr, seed)
    diverged = ~np.isfinite(err)  # the engine stopped the run at a non-finite loss
    err = np.where(diverged, 0.9, err)  # a diverged run scores as chance
    mean = err.mean(1)
    # The mean factor while the runs lasted; the final training loss of those that did not
    # diverge (NaN if every seed did).
    factor = np.array([np.nanmean(runs[m][lr]["factor"]) for lr in lrs])
    loss = np.array([np.nanmean(np.where(d[:, None], np.nan,
                                         runs[m][lr]["train_loss"][:, -max(1, iters // 10):]))
                     if not d.all() else np.nan for lr, d in zip(lrs, diverged)])
    best = int(np.argmin(mean))
    within = int(np.sum(mean <= mean[best] + 0.01))
    layered = "+" in m
    out["methods"][m] = {
        "test_error": err, "mean_factor": factor, "final_train_loss": loss,
        "effective_lr": np.asarray(lrs) * (factor if layered else 1.0),
        "best_lr": lrs[best], "best_error": mean[best], "grid_mean_error": mean.mean(),
        "worst_error": mean.max(), "lrs_within_1pp_of_best": within,
        "eval_iters": runs[m][lrs[0]]["eval_iters"],
        "test_error_curves": np.array([runs[m][lr]["test_error"] for lr in lrs]),
    }
    _, sd = stats.mean_std(err, axis=1)
    rows.append([m] + [f"{100 * a:.2f} ± {100 * b:.2f}" for a, b in zip(mean, sd)])
    rows_sum.append([m, f"{lrs[best]:g}", f"{100 * mean[best]:.2f}",
                     f"{100 * mean.mean():.2f}", f"{100 * mean.max():.2f}",
                     f"{within}/{len(lrs)}",
                     ", ".join(stats.number(f, 3, "-") for f in factor) if layered else "1"])
  pairs = [(m.partition("+")[0], m) for m in methods
           if "+" in m and m.partition("+")[0] in methods]
  out["paired"] = {}
  for b, lay in pairs:
    d = out["methods"][b]["test_error"] - out["methods"][lay]["test_error"]
    out["paired"][lay] = d
    rows.append([f"{b} - {lay} (paired)"] + [
        f"{100 * a:+.2f} ± {100 * b:.2f}" for a, b in zip(*stats.mean_std(d, axis=1))])
  table = "\n\n".join([
      f"LeNet, {common.dataset_title(dataset)}, Caffe lenet_solver ('inv' schedule, momentum "
      f"0.9, wd 5e-4); test error (%) after {iters} iterations, mean ± std over {seeds} seeds.",
      stats.markdown_table(["method"] + [f"lr {x:g}" for x in lrs], rows),
      "Sensitivity: best lr, error there, mean and worst error over the grid (%), grid "
      "points within 1 point of the best, mean factor at each lr:",
      stats.markdown_table(["method", "best lr", "best", "grid mean", "worst", "within 1 pt",
                            "mean factor"], rows_sum),
  ])
  return out, table


def plot(out_dir: Path, methods, lrs, results):
  plt = report.pyplot()
  fig, axes = plt.subplots(1, 2, figsize=(11, 4))
  for m in methods:
    r = results["methods"][m]
    err = 100 * np.asarray(r["test_error"])
    _, sd = stats.mean_std(err, axis=1)
    ls = "-" if "+" in m else "--"
    axes[0].errorbar(lrs, err.mean(1), yerr=sd, marker="o", capsize=3, ls=ls, label=m)
    axes[1].errorbar(r["effective_lr"], err.mean(1), yerr=sd, marker="o", capsize=3, ls=ls,
                     label=m)
  axes[0].set(xlabel="base learning rate", title="against the base learning rate")
  axes[1].set(xlabel="effective learning rate (base x mean factor for +layer)",
              title="against the effective learning rate")
  for ax in axes:
    ax.set(xscale="log", ylabel="test error % (mean ± std over seeds)")
    ax.grid(alpha=0.3)
    ax.legend()
  report.save_figure(fig, out_dir / "lr_sensitivity.png", dpi=120)


@cli.reports_errors
def main(argv=None, dataset=None):
  parser = common.parser(__doc__, "lr_sensitivity", seeds=3, iters=500,
                         methods_="sgd,sgd+layer", images=True)
  parser.add_argument("--lrs", type=common.rates, default=[0.001, 0.003, 0.01, 0.03, 0.1],
                      help="base learning rates")
  args = parser.parse_args(argv)
  methods, lrs = args.methods, args.lrs
  common.claim(args.out, {"study": "lr_sensitivity", "dataset": args.dataset,
                          "data_dir": args.data_dir, "protocol": lenet.PROTOCOL.name})
  elapsed = common.timer()
  runs = sweep(args, methods, lrs, dataset)
  results, table = analyse(runs, methods, lrs, args.seeds, args.iters, args.dataset)
  results.update(seeds=args.seeds, iters=args.iters, protocol=lenet.PROTOCOL.name,
                 dataset=args.dataset)
  common.finish("lr_sensitivity", args, argv, results, table, elapsed,
                sum(r["wall_s"] for by_lr in runs.values() for r in by_lr.values()),
                lambda: plot(args.out, methods, lrs, results))
  return results


if __name__ == "__main__":
  main()
