"""Learning-rate sensitivity: test error against base learning rate, SGD against SGD+layer.

The paper says the layer-specific method is less sensitive to the choice of learning rate.
Protocol: LeNet on Fashion-MNIST with Caffe's ``lenet_solver`` (batch 64, momentum 0.9,
weight decay 5e-4, ``inv`` schedule ``lr_k = lr (1 + 1e-4 k)^-0.75``, biases at twice the
rate), from the harness in ``experiments/``; only the base learning rate ``lr`` changes,
over a log grid (default 0.001 ... 0.1, the paper's 0.01 in the middle). Every method sees
the same seeds (initialisation and batch order), so per-seed differences are paired.

With ``f_l = 1 + log(1 + 1/||g_l||)`` (Singh et al. 2015, eq. 9) the +layer method steps
with ``lr_k * f_l``; the study also records the mean factor, so each +layer point can be
placed at its *effective* learning rate ``lr * mean(f)``. If the +layer curve, shifted
that way, lies on the SGD curve, the method behaves like a larger global learning rate;
if it is flatter, it is genuinely less sensitive.

Sensitivity is summarised per method by the best error over the grid, the mean and worst
error over the grid, and how many grid points come within 1 percentage point of the best.

Run: ``python -m studies.lr_sensitivity`` (3 seeds x 500 iterations x 5 rates x 2 methods
in two single-threaded processes, run time in docs/studies.md; the paper's protocol is 10
seeds x 2,000 iterations). The runs at the protocol's own rate (0.01) are taken from
``results/fashion_mnist/runs`` when ``python -m examples.reproduce`` has left them there
(``--no-reuse`` trains them too).

References:
  Singh, De, Zhang, Goldstein, Taylor. "Layer-Specific Adaptive Learning Rates for Deep
  Networks." ICMLA 2015. arXiv:1510.04609.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from experiments import cli, report
from experiments.methods import method_names
from studies import lenet_runs, options, outputs, stats


def sweep(protocol, dataset, methods, lrs, seeds, iters, workers=1, reuse=None, log=print):
  """{method: {lr: harness curves}} over the grid (``layers="module"``)."""
  configs = {f"{m} @ {lr:g}": (m, lr, "module") for m in methods for lr in lrs}
  runs = lenet_runs.train_runs(protocol, dataset, configs, seeds, iters, workers=workers,
                           reuse=reuse, log=log)
  return {m: {lr: runs[f"{m} @ {lr:g}"] for lr in lrs} for m in methods}


def analyse(runs, methods, lrs, seeds, iters):
  out = {"lrs": lrs, "methods": {}}
  rows, rows_sum = [], []
  for m in methods:
    err = np.array([runs[m][lr]["test_error"][:, -1] for lr in lrs])  # (lr, seed)
    err = np.where(np.isfinite(err), err, 0.9)  # a NaN run scores as chance
    mean = err.mean(1)
    factor = np.array([runs[m][lr]["factor"].mean() for lr in lrs])
    loss = np.array([np.nanmean(runs[m][lr]["train_loss"][:, -max(1, iters // 10):])
                     for lr in lrs])
    best = int(np.argmin(mean))
    within = int(np.sum(mean <= mean[best] + 0.01))
    out["methods"][m] = {
        "test_error": err, "mean_factor": factor, "final_train_loss": loss,
        "effective_lr": np.asarray(lrs) * (factor if m.endswith("+layer") else 1.0),
        "best_lr": lrs[best], "best_error": mean[best], "grid_mean_error": mean.mean(),
        "worst_error": mean.max(), "lrs_within_1pp_of_best": within,
        "eval_iters": runs[m][lrs[0]]["eval_iters"],
        "test_error_curves": np.array([runs[m][lr]["test_error"] for lr in lrs]),
    }
    _, sd = report.mean_std(err, axis=1)
    rows.append([m] + [f"{100 * a:.2f} ± {100 * b:.2f}" for a, b in zip(mean, sd)])
    rows_sum.append([m, f"{lrs[best]:g}", f"{100 * mean[best]:.2f}",
                     f"{100 * mean.mean():.2f}", f"{100 * mean.max():.2f}",
                     f"{within}/{len(lrs)}",
                     ", ".join(stats.fmt(f, 3) for f in factor)
                     if m.endswith("+layer") else "1"])
  pairs = [(b, b + "+layer") for b in ("sgd", "nag") if b in methods and b + "+layer" in methods]
  out["paired"] = {}
  for b, lay in pairs:
    d = out["methods"][b]["test_error"] - out["methods"][lay]["test_error"]
    out["paired"][lay] = d
    rows.append([f"{b} - {lay} (paired)"] + [
        f"{100 * a:+.2f} ± {100 * b:.2f}" for a, b in zip(*report.mean_std(d, axis=1))])
  table = "\n\n".join([
      f"LeNet, Fashion-MNIST, Caffe lenet_solver ('inv' schedule, momentum 0.9, wd 5e-4); "
      f"test error (%) after {iters} iterations, mean ± std over {seeds} seeds.",
      stats.md_table(["method"] + [f"lr {x:g}" for x in lrs], rows),
      "Sensitivity: best lr, error there, mean and worst error over the grid (%), grid "
      "points within 1 point of the best, mean factor at each lr:",
      stats.md_table(["method", "best lr", "best", "grid mean", "worst", "within 1 pt",
                       "mean factor"], rows_sum),
  ])
  return out, table


def plot(out_dir: Path, methods, lrs, results):
  plt = report.pyplot()
  fig, axes = plt.subplots(1, 2, figsize=(11, 4))
  for m in methods:
    r = results["methods"][m]
    err = 100 * np.asarray(r["test_error"])
    _, sd = report.mean_std(err, axis=1)
    ls = "-" if m.endswith("+layer") else "--"
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
def main(argv=None, protocol=None, dataset=None):
  parser = options.lenet_parser(__doc__, seeds=3, iters=500, name="lr_sensitivity")
  parser.add_argument("--lrs", type=cli.floats, default=[0.001, 0.003, 0.01, 0.03, 0.1])
  parser.add_argument("--methods", default="sgd,sgd+layer", type=method_names())
  args = parser.parse_args(argv)
  methods = args.methods
  cli.writable_folder(args.out)
  elapsed = outputs.timer()
  protocol = protocol or lenet_runs.PROTOCOL
  runs = sweep(protocol, dataset, methods, args.lrs, args.seeds, args.iters, args.workers,
               args.reuse)
  results, table = analyse(runs, methods, args.lrs, args.seeds, args.iters)
  results.update(seeds=args.seeds, iters=args.iters, protocol=protocol.name,
                 sources={f"{m} @ {lr:g}": runs[m][lr]["source"] for m in methods
                          for lr in args.lrs})
  outputs.finish("lr_sensitivity", args, argv, results, table, elapsed,
                lambda: plot(args.out, methods, args.lrs, results))
  return results


if __name__ == "__main__":
  main()
