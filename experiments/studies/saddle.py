"""Saddle escape: a deep linear network started near the origin, SGD/NAG against +layer.

Task (online teacher-student regression). Inputs ``x ~ N(0, I_n)``, targets ``y = A x`` with
a rank-``r`` teacher ``A = U V^T`` (:func:`experiments.data.teacher`: orthonormal ``U``,
``V``, ``r`` unit singular values). The student is :class:`experiments.models.DeepLinear`,
``W_D ... W_1`` (``D`` square ``n x n`` layers, one array each), initialised near the
origin with entries ``N(0, (s / sqrt(n))^2)``, so each layer's gain is about ``s`` and the
product about ``s^D``. Each step draws a fresh minibatch (:class:`Regression`, the seed's
stream); the population loss is exact,

    L(W) = E ||W_D...W_1 x - A x||^2 / 2 = ||W_D...W_1 - A||_F^2 / 2,

and the zero network's loss is ``L_0 = ||A||_F^2 / 2 = r / 2``. The origin is a saddle of
order ``D``: the gradient of layer ``i`` is a product of the other ``D - 1`` layers,
``O(s^(D-1))``, so gradient descent leaves it after a plateau whose length grows like
``s^-(D-2)`` (Saxe et al. 2014). The factor ``f = 1 + log(1 + 1/||g_l||)`` is largest
exactly there, which is the paper's claim that the method escapes "high-error,
low-curvature saddle points" faster.

Every run is an engine run (:mod:`experiments.engine`, the steps between two evaluation
points fused into one compiled loop) whose metric is ``L / L_0``, evaluated every
``--record-every`` iterations. Measured per seed (20 by default; initialisation and
minibatches depend on the seed only, so methods and learning rates are paired; one teacher
for all): the first evaluation iteration at which ``L / L_0`` is below 0.5 ("escape", half
the teacher's modes learned) and below 0.05 ("converged"), with ``--iters`` as the cap (not
reached = inf); the final loss (the mean over the last 10% of the evaluation points);
divergence (a final loss above 10 or not finite: the engine stops a run whose training loss
is not finite).

Fairness: the factor is a learning-rate boost that grows as gradients shrink, so the study
sweeps the base learning rate of *every* method over the same log grid and reports
best-against-best, besides the comparison at a common base learning rate (by default the
grid's largest at which no seed of any method diverged). A second sweep over the initial
scale ``s``, each method at its best learning rate, shows how the gain depends on how flat
the saddle is.

Run: ``python -m experiments.studies.saddle --out results/studies/saddle`` (run time in
docs/studies.md). Besides ``table.md`` it writes ``summary.md``, the headline table of
docs/studies.md (:func:`summary_table`).

References:
  Singh, De, Zhang, Goldstein, Taylor. "Layer-Specific Adaptive Learning Rates for Deep
  Networks." ICMLA 2015. arXiv:1510.04609.
  Saxe, McClelland, Ganguli. "Exact solutions to the nonlinear dynamics of learning in deep
  linear neural networks." ICLR 2014. arXiv:1312.6120.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from experiments import cli, data, engine, files, models, records, report, stats
from experiments.studies import common

THRESHOLDS = (0.5, 0.05)  # L / L_0: escape, converged
DIVERGED_ABOVE = 10.0  # a final L / L_0 above this (or not finite) is a divergence
FACTOR_POINTS = 100  # evenly spaced iterations at which a run records norms and factors


@dataclasses.dataclass(frozen=True)
class Regression:
  """The engine's data kind of online regression against a :class:`experiments.data.Teacher`:
  ``batch`` fresh inputs ``x ~ N(0, I)`` per step (seed ``s``'s stream, numpy
  ``default_rng(s)``), targets ``A x``, loss ``mean ||out - A x||^2 / 2``; the score of a
  split is the exact population loss relative to the zero network's, ``||P - A||_F^2 /
  ||A||_F^2``, with ``P`` the network's map (its output on the identity is ``P^T``)."""

  batch: int
  metric = "L / L_0"

  def example(self, dataset: data.Teacher) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct((1, dataset.matrix.shape[0]), jnp.float32)

  def on_device(self, dataset: data.Teacher) -> tuple[tuple, tuple, tuple]:
    teacher = (jnp.asarray(dataset.matrix),)
    return teacher, teacher, teacher

  def order(self, dataset: data.Teacher, seed: int, iters: int) -> np.ndarray:
    """(iters, batch, width): every step's inputs."""
    width = dataset.matrix.shape[0]
    return np.random.default_rng(seed).standard_normal(
        (iters, self.batch, width)).astype(np.float32)

  def batch_at(self, train: tuple, row: jax.Array) -> tuple[jax.Array, jax.Array]:
    return row, row @ train[0].T

  @staticmethod
  def loss(out: jax.Array, targets: jax.Array) -> jax.Array:
    return 0.5 * jnp.mean(jnp.sum(jnp.square(out - targets), axis=-1))

  def score(self, apply, split: tuple) -> jax.Array:
    teacher = split[0]
    mapped = apply(jnp.eye(teacher.shape[0]))  # row i: P e_i, i.e. P^T
    return jnp.sum(jnp.square(mapped - teacher.T)) / jnp.sum(jnp.square(teacher))


def make_setup(settings: dict, scale: float) -> engine.Setup:
  """The deep linear network of ``settings`` started at per-layer gain ``scale``."""
  model = models.DeepLinear(settings["width"], settings["depth"], scale)
  every = settings["record_every"]
  return engine.Setup(model, Regression(settings["batch"]), common.constant_lr,
                      eval_points=settings["iters"] // every, factor_points=FACTOR_POINTS,
                      check_every=every, fused=True)


def first_below(values: list[float], eval_iters: list[int], threshold: float) -> float:
  """The first evaluation iteration with a value below ``threshold``; inf if none."""
  return next((float(k) for k, v in zip(eval_iters, values) if v < threshold), math.inf)


def measure(runs: list[list[dict]]) -> dict:
  """Arrays over (config, seed) of the records ``runs[config][seed]``."""
  def each(fn):
    return np.array([[fn(r) for r in config] for config in runs], np.float64)
  final = each(lambda r: np.mean(r["val"][-max(1, len(r["val"]) // 10):]))
  return {"escape": each(lambda r: first_below(r["val"], r["eval_iters"], THRESHOLDS[0])),
          "converge": each(lambda r: first_below(r["val"], r["eval_iters"], THRESHOLDS[1])),
          "final_loss": final, "diverged": ~np.isfinite(final) | (final > DIVERGED_ABOVE),
          "loss_curve": each(lambda r: r["val"]),
          "factors": np.array([[np.array(list(r["factors"].values())).T for r in config]
                               for config in runs])}


def best_lr_index(res: dict) -> int:
  """The lr with the smallest median convergence time among those where no seed diverged."""
  score = [stats.median_iqr(c)[0] if not d.any() else np.inf
           for c, d in zip(res["converge"], res["diverged"])]
  return int(np.argmin(score))


def pick_base_lr(sweep: dict, lrs: list[float]) -> float:
  """The largest lr of the grid at which no seed of any method diverged."""
  stable = [i for i in range(len(lrs)) if not any(r["diverged"][i].any()
                                                  for r in sweep.values())]
  return lrs[max(stable)] if stable else lrs[0]


def summarise(x) -> str:
  median, q1, q3 = stats.median_iqr(x)
  return " ".join([stats.number(median, 4, "-"),
                   f"[{stats.number(q1, 4, '-')}, {stats.number(q3, 4, '-')}]"])


def paired_speedup(base: np.ndarray, layer: np.ndarray) -> tuple[float, float, float]:
  """Median and quartiles over seeds of base iterations / layer iterations (both reached)."""
  ok = np.isfinite(base) & np.isfinite(layer)
  if not ok.any():
    return np.nan, np.nan, np.nan
  return stats.median_iqr(base[ok] / layer[ok])


def layered_pairs(names: list[str]) -> list[tuple[str, str]]:
  """(base, base+suffix) pairs among ``names``."""
  return [(m.partition("+")[0], m) for m in names if "+" in m and m.partition("+")[0] in names]


def summary_table(results: dict) -> str:
  """The headline table of docs/studies.md from ``results.json``: each method's escape and
  convergence at the common lr, its best lr and convergence there (median [quartiles])."""
  lrs, base_lr = results["lrs"], results["base_lr"]
  i_base = lrs.index(base_lr)
  rows = []
  for m, r in results["methods"].items():
    best = lrs.index(r["best_lr"])
    rows.append([m, summarise(r["escape"][i_base]), summarise(r["converge"][i_base]),
                 f"{r['best_lr']:g}", summarise(r["converge"][best])])
  return stats.markdown_table(
      ["method", f"escape, lr {base_lr:g}", f"converged, lr {base_lr:g}", "best lr",
       "converged at best lr"], rows)


def analyse(settings: dict, methods_, lrs, scales, base_lr, sweep, scale_sweep):
  n = next(iter(sweep.values()))["converge"].shape[1]
  out = {"base_lr": base_lr, "init_scale": settings["init_scale"], "lrs": lrs,
         "init_scales": scales, "methods": {}}
  i_base = lrs.index(base_lr)
  fmt = lambda x: stats.number(x, 4, "-")
  rows_base, rows_sweep, rows_best, rows_scale = [], [], [], []
  for m in methods_:
    r = sweep[m]
    conv_med = [stats.median_iqr(r["converge"][i])[0] for i in range(len(lrs))]
    best = best_lr_index(r)
    out["methods"][m] = {
        "escape": r["escape"], "converge": r["converge"], "final_loss": r["final_loss"],
        "diverged": r["diverged"].tolist(), "best_lr": lrs[best],
        "scale_sweep": {k: np.asarray(scale_sweep[m][k]).tolist()
                        for k in ("escape", "converge", "diverged")},
        "scale_sweep_lr": lrs[best],
        "median_loss_curve_base_lr": np.median(r["loss_curve"][i_base], 0),
        "median_factor_curve_base_lr": np.median(r["factors"][i_base], 0),
    }
    rows_base.append([m, summarise(r["escape"][i_base]), summarise(r["converge"][i_base]),
                      f"{np.isfinite(r['converge'][i_base]).sum()}/{n}",
                      stats.number(np.median(r["final_loss"][i_base]), 2, "-")])
    rows_sweep.append([m] + [
        f"{fmt(c)} ({np.isfinite(r['converge'][i]).sum()}/{n}"
        + (f"; {r['diverged'][i].sum()} div.)" if r["diverged"][i].any() else ")")
        for i, c in enumerate(conv_med)])
    rows_best.append([m, lrs[best], summarise(r["converge"][best]),
                      f"{np.isfinite(r['converge'][best]).sum()}/{n}"])
    rows_scale.append([m, lrs[best]] + [
        f"{fmt(stats.median_iqr(scale_sweep[m]['escape'][j])[0])} / "
        f"{fmt(stats.median_iqr(scale_sweep[m]['converge'][j])[0])} "
        f"({np.isfinite(scale_sweep[m]['converge'][j]).sum()}/{n})"
        for j in range(len(scales))])

  rows_pair = []
  out["paired"] = {}
  for b, lay in layered_pairs(list(methods_)):
    same = paired_speedup(sweep[b]["converge"][i_base], sweep[lay]["converge"][i_base])
    esc = paired_speedup(sweep[b]["escape"][i_base], sweep[lay]["escape"][i_base])
    bb = lrs.index(out["methods"][b]["best_lr"])
    bl = lrs.index(out["methods"][lay]["best_lr"])
    best = paired_speedup(sweep[b]["converge"][bb], sweep[lay]["converge"][bl])
    out["paired"][lay] = {"escape_same_lr": esc, "converge_same_lr": same,
                          "converge_best_vs_best": best}
    rows_pair.append([f"{b} / {lay}", *[
        f"{stats.number(x[0], 3, '-')} [{stats.number(x[1], 3, '-')}, "
        f"{stats.number(x[2], 3, '-')}]" for x in (esc, same, best)]])

  table = "\n\n".join([
      f"Deep linear net: depth {settings['depth']}, width {settings['width']}, teacher rank "
      f"{settings['rank']}, batch {settings['batch']}, init scale {settings['init_scale']}, "
      f"{n} seeds, cap {settings['iters']} iterations, loss evaluated every "
      f"{settings['record_every']}. Iterations until L/L_0 < 0.5 (escape) and < 0.05 "
      "(converged): median [quartiles]; not reached counts as infinite (-).",
      f"**At a common lr {base_lr}** (the grid's largest at which no seed of any method "
      "diverged):",
      stats.markdown_table(["method", "escape", "converged", "reached", "final loss/L_0"],
                           rows_base),
      "**Learning-rate sweep**: median iterations to converge (seeds reaching it; seeds "
      "diverged by the end, i.e. final loss > 10 L_0 or not finite):",
      stats.markdown_table(["method"] + [f"lr {x:g}" for x in lrs], rows_sweep),
      "**Each method at its own best lr** (smallest median, no seed diverged):",
      stats.markdown_table(["method", "best lr", "converged", "reached"], rows_best),
      "**Paired speed-up** (per-seed iterations base / +layer, median [quartiles], seeds "
      "where both reached the threshold):",
      stats.markdown_table(["pair", "escape, same lr", "converged, same lr",
                            "converged, each at best lr"], rows_pair),
      "**Initial scale** s (per-layer gain at init), each method at its best lr: median "
      "iterations to escape / to converge (seeds converged):",
      stats.markdown_table(["method", "lr"] + [f"s = {s:g}" for s in scales], rows_scale),
  ])
  return out, table


def plot(out_dir: Path, settings: dict, methods_, lrs, base_lr, sweep, results, eval_iters,
         factor_iters):
  plt = report.pyplot()
  i_base = lrs.index(base_lr)
  colors = {}
  style = lambda m: dict(color=colors.setdefault(m.partition("+")[0], f"C{len(colors)}"),
                         ls="-" if "+" in m else "--")
  fig, axes = plt.subplots(1, 2, figsize=(11, 4))
  for m in methods_:
    for ax, key in zip(axes, ("escape", "converge")):
      x = np.sort(sweep[m][key][i_base])
      x = x[np.isfinite(x)]
      n = sweep[m][key].shape[1]
      ax.step(np.concatenate([[0], x]), np.arange(len(x) + 1) / n, where="post", label=m,
              **style(m))
  for ax, thr in zip(axes, THRESHOLDS):
    ax.set(xlabel="iterations", ylabel="fraction of seeds", xscale="log",
           title=f"L/L_0 < {thr} at lr {base_lr}")
    ax.grid(alpha=0.3)
  axes[0].legend()
  report.save_figure(fig, out_dir / "ecdf.png", dpi=120)

  cap = settings["iters"]
  fig, ax = plt.subplots(figsize=(6, 4))
  for m in methods_:
    med, q1, q3 = np.array([stats.median_iqr(sweep[m]["converge"][i])
                            for i in range(len(lrs))]).T
    clip = lambda v: np.where(np.isfinite(v), v, cap * 1.15)
    ax.plot(lrs, clip(med), marker="o", label=m, **style(m))
    ax.fill_between(lrs, clip(q1), clip(q3), alpha=0.12, color=style(m)["color"])
  ax.axhline(cap, color="gray", lw=0.8)
  ax.text(lrs[0], cap * 1.02, "cap (above: not reached / diverged)", fontsize=7)
  ax.set(xscale="log", yscale="log", xlabel="base learning rate",
         ylabel="iterations to L/L_0 < 0.05", title="median and quartiles over seeds")
  ax.grid(alpha=0.3)
  ax.legend()
  report.save_figure(fig, out_dir / "lr_sweep.png", dpi=120)

  fig, axes = plt.subplots(1, 2, figsize=(11, 4))
  for m in methods_:
    r = results["methods"][m]
    axes[0].plot(eval_iters, r["median_loss_curve_base_lr"], label=m, **style(m))
    axes[1].plot(np.maximum(factor_iters, 1), r["median_factor_curve_base_lr"].mean(-1),
                 label=m, **style(m))
  axes[0].set(yscale="log", xscale="log", xlabel="iteration", ylabel="L / L_0",
              title=f"median over seeds, lr {base_lr}")
  axes[1].set(xscale="log", xlabel="iteration",
              ylabel="mean over layers of 1 + log(1 + 1/||g_l||)",
              title="factor (for the base methods: what it would be)")
  for ax in axes:
    ax.grid(alpha=0.3)
    ax.legend()
  report.save_figure(fig, out_dir / "curves.png", dpi=120)


class Runner:
  """Reads or trains (method, lr, seed) runs at one initial scale (scales other than the
  default under ``--out/scale<s>``)."""

  def __init__(self, args, settings: dict):
    self.args, self.settings = args, settings
    self.load = functools.partial(data.teacher, settings["width"], settings["rank"])
    self.dataset = self.load() if args.workers == 1 else None
    self.wall_s: dict = {}  # (folder, task) -> the run's wall time

  def measure(self, method: str, lrs: list[float], scale: float) -> tuple[dict, dict]:
    out = self.args.out if scale == self.settings["init_scale"] else (
        self.args.out / f"scale{scale:g}")
    tasks = [[records.RunTask(method, lr, seed, self.args.iters)
              for seed in range(self.args.seeds)] for lr in lrs]
    done = common.run_all(make_setup(self.settings, scale), [t for ts in tasks for t in ts],
                          out, self.load, self.args.workers, self.dataset)
    runs = [[done[t] for t in ts] for ts in tasks]
    self.wall_s.update({(out, task): r["wall_s"] for task, r in done.items()})
    return measure(runs), runs[0][0]


@cli.reports_errors
def main(argv=None):
  parser = common.parser(__doc__, "saddle", seeds=20, iters=8000,
                         methods_="sgd,sgd+layer,nag,nag+layer")
  parser.add_argument("--depth", type=cli.positive_int, default=6)
  parser.add_argument("--width", type=cli.positive_int, default=16)
  parser.add_argument("--rank", type=cli.positive_int, default=4)
  parser.add_argument("--batch", type=cli.positive_int, default=16)
  parser.add_argument("--init-scale", type=cli.positive_float, default=0.3,
                      help="per-layer gain s at init")
  parser.add_argument("--init-scales", type=common.rates, default=[0.2, 0.3, 0.5],
                      help="second sweep over s, each method at its best lr")
  parser.add_argument("--lrs", type=common.rates, default=[0.002, 0.005, 0.01, 0.02, 0.05, 0.1])
  parser.add_argument("--base-lr", type=cli.positive_float, default=None,
                      help="common lr (one of --lrs); default: the largest at which no seed of "
                      "any method diverged")
  parser.add_argument("--record-every", type=cli.positive_int, default=10,
                      help="iterations between evaluations of the loss")
  args = parser.parse_args(argv)
  if 2 * args.rank > args.width:
    parser.error("--rank must be at most half of --width (the teacher's two factors)")
  if args.base_lr is not None and args.base_lr not in args.lrs:
    parser.error(f"--base-lr {args.base_lr} must be one of --lrs")
  if args.iters % args.record_every:
    parser.error("--iters must be a multiple of --record-every")
  settings = {"depth": args.depth, "width": args.width, "rank": args.rank, "batch": args.batch,
              "iters": args.iters, "record_every": args.record_every,
              "init_scale": args.init_scale}
  common.claim(args.out, {"study": "saddle", **settings})
  elapsed = common.timer()
  runner = Runner(args, settings)
  sweep, first = {}, {}
  for m in args.methods:
    sweep[m], first = runner.measure(m, args.lrs, args.init_scale)
  base_lr = args.base_lr if args.base_lr is not None else pick_base_lr(sweep, args.lrs)
  scale_sweep = {}
  for m in args.methods:
    lr = args.lrs[best_lr_index(sweep[m])]
    per_scale = [runner.measure(m, [lr], s)[0] for s in args.init_scales]
    scale_sweep[m] = {k: np.concatenate([r[k] for r in per_scale])
                      for k in ("escape", "converge", "diverged")}
  results, table = analyse(settings, args.methods, args.lrs, args.init_scales, base_lr, sweep,
                           scale_sweep)
  results.update(settings=settings, seeds=args.seeds, thresholds=THRESHOLDS)
  files.write_text(args.out / "summary.md", summary_table(records.plain(results)) + "\n")
  common.finish("saddle", args, argv, results, table, elapsed, sum(runner.wall_s.values()),
                lambda: plot(args.out, settings, args.methods, args.lrs, base_lr, sweep,
                             results, first["eval_iters"], first["factor_iters"]))
  return results


if __name__ == "__main__":
  main()
