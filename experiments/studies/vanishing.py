"""Vanishing gradients: do layer-specific rates speed up the shallow layers of a deep MLP?

Network: :class:`experiments.models.MLP` on Fashion-MNIST, ``784 -> width x depth -> 10``
with sigmoid (default) or tanh hidden units and Caffe's Xavier fill (``U(-a, a)``,
``a = sqrt(3 / fan_in)``, biases 0), i.e. ``depth + 1`` weight layers; softmax
cross-entropy, batch 64, inputs ``x / 256``. A sigmoid's derivative is at most 1/4, so the
backpropagated gradient shrinks layer by layer towards the input: the paper's motivating
case.

Each layer ``l`` (a kernel and its bias, ``layers="module"``) gets ``t_l = t * f_l``,
``f_l = 1 + log(1 + 1/||g_l||_2)`` (Singh et al. 2015, eq. 9-10). Every run is an engine
run (:mod:`experiments.engine`) evaluated every ``--record-every`` iterations, where it
records the test error, the mean training loss since the previous point and, for every
layer, the relative distance from initialisation ``||W_l(k) - W_l(0)||_F / ||W_l(0)||_F``
(kernels; the engine's ``probe``), the measure of how much a layer has learned; and, just
before each of those points, ``||g_l||`` (the gradient norm the factor sees) and ``f_l``
(for the base method: the factor it *would* get).

Methods (momentum 0.9, constant lr, no weight decay, paired seeds: same initialisation and
batch order): the two of ``--methods`` (default ``sgd`` and ``sgd+layer``) at ``--lr``, and
the first at the larger learning rates of ``--baseline-lrs``, which answer whether the
effect is just a larger global rate: a global rate scales all layers alike, the factor does
not.

Run: ``python -m experiments.studies.vanishing --out results/studies/vanishing`` (5 seeds;
run time in docs/studies.md). With Xavier fill this network does not learn in 3000
iterations under any of the methods; the second setting of docs/studies.md,
``--init-gain 4 --baseline-lrs 0.03 --out results/studies/vanishing/gain4``, multiplies the
Xavier bound by 4 (sigmoid slope 1/4 times weight gain about 1 per layer), where gradients
still shrink towards the input but SGD learns, slowly.

References:
  Singh, De, Zhang, Goldstein, Taylor. "Layer-Specific Adaptive Learning Rates for Deep
  Networks." ICMLA 2015. arXiv:1510.04609.
  Glorot, Bengio. "Understanding the difficulty of training deep feedforward neural
  networks." AISTATS 2010 (vanishing gradients in deep sigmoid networks; Xavier fill).
  Xiao, Rasul, Vollgraf. "Fashion-MNIST." arXiv:1708.07747.
"""

from __future__ import annotations

from pathlib import Path

import jax.numpy as jnp
import numpy as np

from experiments import cli, engine, models, records, report, stats
from experiments.studies import common

BATCH = 64


def distances(params: dict, initial: dict) -> dict:
  """Each layer's relative distance from initialisation, ``||W - W(0)||_F / ||W(0)||_F`` of
  its kernel (the engine's ``probe``)."""
  return {name: jnp.linalg.norm(params[name]["kernel"] - initial[name]["kernel"])
          / jnp.linalg.norm(initial[name]["kernel"]) for name in params}


def make_setup(settings: dict, iters: int) -> engine.Setup:
  """The MLP of ``settings`` (depth, width, activation, init_gain, record_every) on the
  engine: evaluated every ``record_every`` iterations, factors just before."""
  model = models.MLP(depth=settings["depth"], width=settings["width"],
                     activation=settings["activation"], init_gain=settings["init_gain"])
  return engine.Setup(model, engine.Images(BATCH), common.constant_lr,
                      eval_points=iters // settings["record_every"], factor_points=None,
                      probe=distances)


def layer_names(settings: dict) -> list[str]:
  return [f"dense{i}" for i in range(settings["depth"] + 1)]


def curves(records_: list[dict], names: list[str]) -> dict:
  """A configuration's runs as arrays with a leading seed axis: ``test_error`` (a fraction)
  and ``train_loss`` at the evaluation points, ``distance`` there per layer, ``grad_norm``
  and ``factor`` per layer at the factor iterations."""
  def per_layer(key: str) -> np.ndarray:
    return np.array([[r[key][n] for n in names] for r in records_], np.float64).transpose(0, 2, 1)
  return {"test_error": np.array([r["test"] for r in records_]) / 100,
          "train_loss": np.array([r["train_loss"] for r in records_]),
          "distance": per_layer("probes"), "grad_norm": per_layer("norms"),
          "factor": per_layer("factors"), "eval_iters": records_[0]["eval_iters"],
          "factor_iters": records_[0]["factor_iters"]}


def window_mean(x: np.ndarray, frac: float = 0.1) -> np.ndarray:
  """Mean over the last ``frac`` of the time axis (axis 1)."""
  k = max(1, int(round(x.shape[1] * frac)))
  return x[:, -k:].mean(1)


def early_point(points: int) -> int:
  """Index of the evaluation point at ~5% of training, where the layer profile is
  tabulated early."""
  return max(0, points // 20 - 1)


def summary_heading(settings: dict, seeds: int, iters: int) -> tuple[str, list[str]]:
  """The summary table's caption and column names. The norm is written ``‖g‖``: a ``|``
  would end a Markdown table cell."""
  gain = settings["init_gain"]
  fill = "Xavier fill" if gain == 1 else f"Xavier fill x {gain:g} (`--init-gain {gain:g}`)"
  caption = (f"MLP 784-{settings['width']}x{settings['depth']}-10, {settings['activation']}, "
             f"{fill}, batch {BATCH}, momentum 0.9, {iters} iterations, {seeds} seeds "
             "(mean ± std). ‖g‖: geometric mean over seeds and training.")
  points = iters // settings["record_every"]
  t_early = engine.eval_iters(iters, points)[early_point(points)]
  depth = settings["depth"]
  header = ["run", "‖g‖ layer 1", f"‖g‖ layer {depth + 1}", f"layer-1 distance @ {t_early}",
            f"layer-1 distance @ {iters}", f"distance layer 1 / layer {depth}",
            "train loss (last 10%)", "test error %"]
  return caption, header


def analyse(settings: dict, runs: dict, seeds: int, iters: int):
  names = layer_names(settings)
  out = {"layers": names, "runs": {}}
  rows_profile, rows_summary = [], []
  fmt = lambda x, digits: stats.number(x, digits, "-")
  for label, r in runs.items():
    early = early_point(len(r["eval_iters"]))
    geo_norm = 10 ** np.log10(r["grad_norm"]).mean((0, 1))  # geometric mean, seeds x time
    d_early, d_final = r["distance"][:, early], r["distance"][:, -1]
    ratio_final = d_final[:, 0] / d_final[:, -2]  # first hidden / last hidden layer
    err = r["test_error"][:, -1]
    out["runs"][label] = {
        "eval_iters": r["eval_iters"], "factor_iters": r["factor_iters"],
        "grad_norm_mean_over_seeds": r["grad_norm"].mean(0),
        "factor_mean_over_seeds": r["factor"].mean(0),
        "distance_mean_over_seeds": r["distance"].mean(0),
        "distance_std_over_seeds": stats.mean_std(r["distance"])[1],
        "train_loss_mean_over_seeds": r["train_loss"].mean(0),
        "test_error_per_seed": r["test_error"], "final_distance_per_seed": d_final,
        "summary": {"distance_first_layer_early": d_early[:, 0],
                    "distance_first_layer_final": d_final[:, 0],
                    "first_over_last_hidden_distance_final": ratio_final,
                    "test_error_final": err}}
    fac_mean = r["factor"].mean((0, 1))  # over seeds and time
    rows_profile.append([label] + [f"{fmt(fac_mean[i], 3)} / {fmt(d_final[:, i].mean(), 2)}"
                                   for i in range(len(names))])
    m_err, s_err = stats.mean_std(err)
    m_ratio, s_ratio = stats.mean_std(ratio_final)
    rows_summary.append([
        label, fmt(geo_norm[0], 2), fmt(geo_norm[-1], 2), fmt(d_early[:, 0].mean(), 2),
        fmt(d_final[:, 0].mean(), 2),
        f"{fmt(m_ratio, 3)} ± {fmt(s_ratio, 2)}" if seeds > 1 else fmt(m_ratio, 3),
        fmt(window_mean(r["train_loss"]).mean(), 3), f"{100 * m_err:.2f} ± {100 * s_err:.2f}"])

  base, layer = list(runs)[:2]
  diff = runs[base]["test_error"][:, -1] - runs[layer]["test_error"][:, -1]
  out["paired_test_error_base_minus_layer"] = diff
  caption, header = summary_heading(settings, seeds, iters)
  table = "\n\n".join([
      caption,
      stats.markdown_table(header, rows_summary),
      "Per layer (input first): mean factor over training / relative distance from init "
      f"at {iters} (mean over seeds):",
      stats.markdown_table(["run"] + names, rows_profile),
      f"Paired test-error difference {base} minus {layer} (percentage points, per seed): "
      + ", ".join(f"{100 * d:+.2f}" for d in diff) + f"; mean {100 * diff.mean():+.2f}.",
  ])
  return out, table


def plot(out_dir: Path, settings: dict, results: dict):
  plt = report.pyplot()
  names = layer_names(settings)
  cmap = plt.get_cmap("viridis")
  colors = [cmap(i / max(1, len(names) - 1)) for i in range(len(names))]
  labels = list(results["runs"])
  fig, axes = plt.subplots(3, len(labels), figsize=(4.2 * len(labels), 10), sharey="row",
                           squeeze=False)
  for j, label in enumerate(labels):
    r = results["runs"][label]
    for i, name in enumerate(names):
      kw = dict(color=colors[i], lw=1, label=name if j == 0 else None)
      axes[0, j].plot(r["factor_iters"], r["grad_norm_mean_over_seeds"][:, i], **kw)
      axes[1, j].plot(r["factor_iters"], r["factor_mean_over_seeds"][:, i], **kw)
      axes[2, j].plot(r["eval_iters"], r["distance_mean_over_seeds"][:, i], **kw)
    axes[0, j].set(title=label, yscale="log")
    axes[2, j].set(xlabel="iteration", yscale="log")
  axes[0, 0].set(ylabel="||g_l|| (mean over seeds)")
  axes[1, 0].set(ylabel="1 + log(1 + 1/||g_l||)\n(base: what it would be)")
  axes[2, 0].set(ylabel="||W_l - W_l(0)|| / ||W_l(0)||")
  axes[0, 0].legend(fontsize=6, ncol=2)
  for ax in axes.flat:
    ax.grid(alpha=0.3)
  report.save_figure(fig, out_dir / "layers_over_time.png", dpi=110)

  fig, axes = plt.subplots(1, 3, figsize=(15, 4))
  x = np.arange(1, len(names) + 1)
  for label in labels:
    r = results["runs"][label]
    axes[0].errorbar(x, r["distance_mean_over_seeds"][-1], yerr=r["distance_std_over_seeds"][-1],
                     marker="o", capsize=2, label=label)
    axes[1].plot(r["eval_iters"], r["train_loss_mean_over_seeds"], label=label)
    axes[2].plot(r["eval_iters"], 100 * np.asarray(r["test_error_per_seed"]).mean(0),
                 label=label)
  for ax in axes:
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  axes[0].set(xlabel="layer (1 = input side)", ylabel="distance from init at the end",
              yscale="log", title="how far each layer moved (mean ± std over seeds)")
  axes[1].set(xlabel="iteration", ylabel="training loss (mean over seeds)")
  axes[2].set(xlabel="iteration", ylabel="test error % (mean over seeds)")
  report.save_figure(fig, out_dir / "summary.png", dpi=110)


@cli.reports_errors
def main(argv=None, dataset=None):
  parser = common.parser(__doc__, "vanishing", seeds=5, iters=3000, methods_="sgd,sgd+layer",
                         images=True)
  parser.add_argument("--depth", type=cli.positive_int, default=10, help="hidden layers")
  parser.add_argument("--width", type=cli.positive_int, default=128)
  parser.add_argument("--activation", choices=sorted(models.ACTIVATIONS), default="sigmoid")
  parser.add_argument("--init-gain", type=cli.positive_float, default=1.0,
                      help="multiplies the Xavier bound of every kernel")
  parser.add_argument("--lr", type=cli.positive_float, default=0.01)
  parser.add_argument("--baseline-lrs", type=common.rates, default=[0.1],
                      help="larger learning rates for the first method")
  parser.add_argument("--record-every", type=cli.positive_int, default=20,
                      help="iterations between evaluation points")
  args = parser.parse_args(argv)
  if len(args.methods) != 2:
    parser.error("--methods takes two methods: a base and the method compared with it")
  if args.iters % args.record_every:
    parser.error("--iters must be a multiple of --record-every")
  settings = {"depth": args.depth, "width": args.width, "activation": args.activation,
              "init_gain": args.init_gain, "record_every": args.record_every}
  common.claim(args.out, {"study": "vanishing", "dataset": args.dataset,
                          "data_dir": args.data_dir, **settings})
  elapsed = common.timer()
  load, dataset = common.images(args, dataset)
  base, other = args.methods
  configs = {f"{m} @ {lr:g}": (m, lr) for m, lr in
             [(base, args.lr), (other, args.lr), *((base, lr) for lr in args.baseline_lrs)]}
  tasks = {label: [records.RunTask(m, lr, seed, args.iters) for seed in range(args.seeds)]
           for label, (m, lr) in configs.items()}
  done = common.run_all(make_setup(settings, args.iters), [t for ts in tasks.values() for t in ts],
                        args.out, load, args.workers, dataset)
  names = layer_names(settings)
  runs = {label: curves([done[t] for t in ts], names) for label, ts in tasks.items()}
  results, table = analyse(settings, runs, args.seeds, args.iters)
  results.update(settings=settings, seeds=args.seeds, iters=args.iters, methods=args.methods,
                 lr=args.lr, baseline_lrs=args.baseline_lrs, dataset=args.dataset)
  common.finish("vanishing", args, argv, results, table, elapsed,
                sum(r["wall_s"] for r in done.values()),
                lambda: plot(args.out, settings, results))
  return results, runs


if __name__ == "__main__":
  main()
