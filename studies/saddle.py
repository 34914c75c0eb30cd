"""Saddle escape: a deep linear network started near the origin, SGD/NAG against +layer.

Task (online teacher-student regression). Inputs ``x ~ N(0, I_n)``, targets ``y = A x`` with
a rank-``r`` teacher ``A = U V^T`` (orthonormal ``U``, ``V``: ``r`` unit singular values).
The student is a deep linear network ``W_D ... W_1`` (``D`` square ``n x n`` layers, each
a one-array layer ``{'w': W_i}``), initialised near the origin with entries
``N(0, (s / sqrt(n))^2)``, so each layer's gain is about ``s`` and the product about
``s^D``. Each step draws a fresh minibatch; the population loss is exact,

    L(W) = E ||W_D...W_1 x - A x||^2 / 2 = ||W_D...W_1 - A||_F^2 / 2,

and ``L(0) = r / 2``. The origin is a saddle of order ``D``: the gradient of layer ``i`` is a
product of the other ``D - 1`` layers, ``O(s^(D-1))``, so gradient descent leaves it after a
plateau whose length grows like ``s^-(D-2)`` (Saxe et al. 2014). The factor
``f = 1 + log(1 + 1/||g_l||)`` is largest exactly there, which is the paper's claim that the
method escapes "high-error, low-curvature saddle points" faster.

Measured per seed (20 by default; teacher, initialisation and minibatches depend on the seed
only, so methods and learning rates are paired): iterations until ``L / L(0)`` first falls
below 0.5 ("escape", half the teacher's modes learned) and below 0.05 ("converged"), with
``--iters`` as the cap (not reached = inf); the final loss; divergence.

Fairness: the factor is a learning-rate boost that grows as gradients
shrink, so the study sweeps the base learning rate of *every* method over the same log grid
and reports best-against-best, besides the comparison at a common base learning rate (by
default the grid's largest at which no seed of any method diverged). A second sweep over the
initial scale ``s``, each method at its best learning rate, shows how the gain depends on
how flat the saddle is.

Run: ``python -m studies.saddle`` (run time in docs/studies.md).

References:
  Singh, De, Zhang, Goldstein, Taylor. "Layer-Specific Adaptive Learning Rates for Deep
  Networks." ICMLA 2015. arXiv:1510.04609.
  Saxe, McClelland, Ganguli. "Exact solutions to the nonlinear dynamics of learning in deep
  linear neural networks." ICLR 2014. arXiv:1312.6120.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

import layerwise_optax as lo
from experiments import cli, report
from experiments.methods import method_names, split_method
from studies import optimizers, options, outputs, stats

THRESHOLDS = (0.5, 0.05)  # loss / L(0): escape, converged


@dataclasses.dataclass(frozen=True)
class Task:
  """Sizes of one saddle run."""

  depth: int = 6  # D, the number of square layers
  width: int = 16  # n, each layer is n x n
  rank: int = 4  # r, the teacher's rank; L(0) = r / 2
  batch: int = 16  # fresh Gaussian inputs per step
  iters: int = 8000  # the cap on iterations
  record_every: int = 10  # loss and factors are recorded every this many steps


def init(task: Task, seed: int):
  """Teacher and unit-scale student layers of one seed (numpy, independent of the method)."""
  rng = np.random.default_rng(seed)
  q, _ = np.linalg.qr(rng.standard_normal((task.width, task.width)))
  teacher = q[:, :task.rank] @ q[:, task.rank:2 * task.rank].T
  layers = rng.standard_normal((task.depth, task.width, task.width)) / np.sqrt(task.width)
  return teacher.astype(np.float32), layers.astype(np.float32)


def product(params):
  p = None
  for i in range(len(params)):
    w = params[f"layer{i}"]["w"]
    p = w if p is None else w @ p
  return p


def population_loss(params, teacher):
  return 0.5 * jnp.sum(jnp.square(product(params) - teacher))


def batch_loss(params, teacher, x):
  h = x
  for i in range(len(params)):
    h = h @ params[f"layer{i}"]["w"].T
  return 0.5 * jnp.mean(jnp.sum(jnp.square(h - x @ teacher.T), axis=-1))


def run_one(task: Task, method: str, lr, scale, teacher, layers, kd):
  """One run: first iterations below each threshold, recorded losses and layer norms."""
  params = {f"layer{i}": {"w": scale * layers[i]} for i in range(task.depth)}
  tx = optimizers.make_optimizer(method, lr)
  loss0 = population_loss(params, teacher)
  thresholds = jnp.asarray(THRESHOLDS)

  def step(carry, t):
    params, opt, hit = carry
    x = jax.random.normal(jax.random.fold_in(kd, t), (task.batch, task.width))
    grads = jax.grad(batch_loss)(params, teacher, x)
    updates, opt = tx.update(grads, opt, params)
    params = optax.apply_updates(params, updates)
    rel = population_loss(params, teacher) / loss0
    hit = jnp.where((hit < 0) & (rel < thresholds), t + 1, hit)
    stats = lo.layer_factors(grads)  # the library's norms and factors, one per layer
    norms = jnp.stack([stats[f"layer{i}"].norm for i in range(task.depth)])
    factors = jnp.stack([stats[f"layer{i}"].factor for i in range(task.depth)])
    return (params, opt, hit), (rel, norms, factors)

  def chunk(carry, c):
    ts = c * task.record_every + jnp.arange(task.record_every)
    carry, (rel, norms, factors) = jax.lax.scan(step, carry, ts)
    return carry, (rel[-1], norms[0], factors[0])  # loss after the chunk; norms at its start

  n_chunks = task.iters // task.record_every
  carry = (params, tx.init(params), -jnp.ones(len(THRESHOLDS), jnp.int32))
  (_, _, hit), (rel, norms, factors) = jax.lax.scan(chunk, carry, jnp.arange(n_chunks))
  return hit, rel, norms, factors


def run_method(task: Task, method: str, configs: list[tuple[float, float]], seeds: int):
  """All (lr, scale) configs x seeds of one method in one compiled, vmapped call."""
  lrs = jnp.asarray([c[0] for c in configs], jnp.float32)
  scales = jnp.asarray([c[1] for c in configs], jnp.float32)
  teachers, layers = map(np.stack, zip(*[init(task, s) for s in range(seeds)]))
  # Minibatch streams from JAX's "rbg" generator: quick to compile under vmap, and seed s
  # draws the same stream whatever the number of seeds or configs beside it.
  keys = jax.vmap(lambda s: jax.random.key(s, impl="rbg"))(jnp.arange(seeds))
  per_seed = jax.vmap(lambda lr, s, t, w, k: run_one(task, method, lr, s, t, w, k),
                      (None, None, 0, 0, 0))
  fn = jax.jit(jax.vmap(per_seed, (0, 0, None, None, None)))
  hit, rel, norms, factors = jax.device_get(fn(lrs, scales, teachers, layers, keys))
  hit = np.where(hit > 0, hit, np.inf).astype(np.float64)  # (configs, seeds, thresholds)
  final = np.asarray(rel[..., -max(1, rel.shape[-1] // 10):], np.float64).mean(-1)
  diverged = ~np.isfinite(final) | (final > 10)
  return {"escape": hit[..., 0], "converge": hit[..., 1], "final_loss": final,
          "diverged": diverged, "loss_curve": np.asarray(rel), "grad_norms": np.asarray(norms),
          "factors": np.asarray(factors)}


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


def summarise(x: np.ndarray) -> str:
  med, lo, hi = stats.median_iqr(x)
  return f"{stats.fmt(med, 4)} [{stats.fmt(lo, 4)}, {stats.fmt(hi, 4)}]"


def paired_speedup(base: np.ndarray, layer: np.ndarray) -> tuple[float, float, float]:
  """Median and quartiles over seeds of base iterations / layer iterations (both reached)."""
  ok = np.isfinite(base) & np.isfinite(layer)
  if not ok.any():
    return np.nan, np.nan, np.nan
  return stats.median_iqr(base[ok] / layer[ok])


def analyse(task: Task, methods, lrs, scales, base_lr, default_scale, sweep, scale_sweep):
  n = next(iter(sweep.values()))["converge"].shape[1]
  out = {"base_lr": base_lr, "init_scale": default_scale, "lrs": lrs, "init_scales": scales,
         "methods": {}}
  i_base = lrs.index(base_lr)
  rows_base, rows_sweep, rows_best, rows_scale = [], [], [], []
  for m in methods:
    r = sweep[m]
    conv_med = [stats.median_iqr(r["converge"][i])[0] for i in range(len(lrs))]
    best = best_lr_index(r)
    out["methods"][m] = {
        "escape": r["escape"], "converge": r["converge"], "final_loss": r["final_loss"],
        "diverged": r["diverged"], "best_lr": lrs[best],
        "scale_sweep": {k: scale_sweep[m][k] for k in ("escape", "converge", "diverged")},
        "scale_sweep_lr": lrs[best],
        "median_loss_curve_base_lr": np.median(r["loss_curve"][i_base], 0),
        "median_factor_curve_base_lr": np.median(r["factors"][i_base], 0),
    }
    rows_base.append([m, summarise(r["escape"][i_base]), summarise(r["converge"][i_base]),
                      f"{np.isfinite(r['converge'][i_base]).sum()}/{n}",
                      stats.fmt(np.median(r["final_loss"][i_base]), 2)])
    rows_sweep.append([m] + [
        f"{stats.fmt(c, 4)} ({np.isfinite(r['converge'][i]).sum()}/{n}"
        + (f"; {r['diverged'][i].sum()} div.)" if r["diverged"][i].any() else ")")
        for i, c in enumerate(conv_med)])
    rows_best.append([m, lrs[best], summarise(r["converge"][best]),
                      f"{np.isfinite(r['converge'][best]).sum()}/{n}"])
    rows_scale.append([m, lrs[best]] + [
        f"{stats.fmt(stats.median_iqr(scale_sweep[m]['escape'][j])[0], 4)} / "
        f"{stats.fmt(stats.median_iqr(scale_sweep[m]['converge'][j])[0], 4)} "
        f"({np.isfinite(scale_sweep[m]['converge'][j]).sum()}/{n})"
        for j in range(len(scales))])

  pairs = [(b, b + "+layer") for b in ("gd", "sgd", "nag")
           if b in methods and b + "+layer" in methods]
  rows_pair = []
  out["paired"] = {}
  for b, lay in pairs:
    same = paired_speedup(sweep[b]["converge"][i_base], sweep[lay]["converge"][i_base])
    esc = paired_speedup(sweep[b]["escape"][i_base], sweep[lay]["escape"][i_base])
    bb = lrs.index(out["methods"][b]["best_lr"])
    bl = lrs.index(out["methods"][lay]["best_lr"])
    best = paired_speedup(sweep[b]["converge"][bb], sweep[lay]["converge"][bl])
    out["paired"][lay] = {"escape_same_lr": esc, "converge_same_lr": same,
                          "converge_best_vs_best": best}
    rows_pair.append([f"{b} / {lay}", *[f"{stats.fmt(x[0])} [{stats.fmt(x[1])}, "
                                        f"{stats.fmt(x[2])}]" for x in (esc, same, best)]])

  table = "\n\n".join([
      f"Deep linear net: depth {task.depth}, width {task.width}, teacher rank {task.rank}, "
      f"batch {task.batch}, init scale {default_scale}, {n} seeds, cap {task.iters} "
      "iterations. Iterations until loss/L(0) < 0.5 (escape) and < 0.05 (converged): "
      "median [quartiles]; not reached counts as infinite (-).",
      f"**At a common lr {base_lr}** (the grid's largest at which no seed of any method "
      "diverged):",
      stats.md_table(["method", "escape", "converged", "reached", "final loss/L(0)"],
                      rows_base),
      "**Learning-rate sweep**: median iterations to converge (seeds reaching it; seeds "
      "diverged by the end, i.e. final loss > 10 L(0) or not finite):",
      stats.md_table(["method"] + [f"lr {x:g}" for x in lrs], rows_sweep),
      "**Each method at its own best lr** (smallest median, no seed diverged):",
      stats.md_table(["method", "best lr", "converged", "reached"], rows_best),
      "**Paired speed-up** (per-seed iterations base / +layer, median [quartiles], seeds "
      "where both reached the threshold):",
      stats.md_table(["pair", "escape, same lr", "converged, same lr",
                       "converged, each at best lr"], rows_pair),
      "**Initial scale** s (per-layer gain at init), each method at its best lr: median "
      "iterations to escape / to converge (seeds converged):",
      stats.md_table(["method", "lr"] + [f"s = {s:g}" for s in scales], rows_scale),
  ])
  return out, table


def plot(out_dir: Path, task: Task, methods, lrs, base_lr, sweep, results):
  plt = report.pyplot()
  i_base = lrs.index(base_lr)
  colors = {"gd": "C2", "sgd": "C0", "nag": "C1"}
  style = lambda m: dict(color=colors[split_method(m, optimizers.BASES)[0]],
                         ls="-" if split_method(m, optimizers.BASES)[1] else "--")
  fig, axes = plt.subplots(1, 2, figsize=(11, 4))
  for m in methods:
    for ax, key in zip(axes, ("escape", "converge")):
      x = np.sort(sweep[m][key][i_base])
      x = x[np.isfinite(x)]
      n = sweep[m][key].shape[1]
      ax.step(np.concatenate([[0], x]), np.arange(len(x) + 1) / n, where="post", label=m,
              **style(m))
  for ax, thr in zip(axes, THRESHOLDS):
    ax.set(xlabel="iterations", ylabel="fraction of seeds", xscale="log",
           title=f"loss/L(0) < {thr} at lr {base_lr}")
    ax.grid(alpha=0.3)
  axes[0].legend()
  report.save_figure(fig, out_dir / "ecdf.png", dpi=120)

  fig, ax = plt.subplots(figsize=(6, 4))
  for m in methods:
    med, lo, hi = np.array([stats.median_iqr(sweep[m]["converge"][i])
                            for i in range(len(lrs))]).T
    clip = lambda v, cap=task.iters * 1.15: np.where(np.isfinite(v), v, cap)
    ax.plot(lrs, clip(med), marker="o", label=m, **style(m))
    ax.fill_between(lrs, clip(lo), clip(hi), alpha=0.12, color=style(m)["color"])
  ax.axhline(task.iters, color="gray", lw=0.8)
  ax.text(lrs[0], task.iters * 1.02, "cap (above: not reached / diverged)", fontsize=7)
  ax.set(xscale="log", yscale="log", xlabel="base learning rate",
         ylabel="iterations to loss/L(0) < 0.05", title="median and quartiles over seeds")
  ax.grid(alpha=0.3)
  ax.legend()
  report.save_figure(fig, out_dir / "lr_sweep.png", dpi=120)

  fig, axes = plt.subplots(1, 2, figsize=(11, 4))
  t = task.record_every * np.arange(1, task.iters // task.record_every + 1)
  for m in methods:
    r = results["methods"][m]
    axes[0].plot(t, r["median_loss_curve_base_lr"], label=m, **style(m))
    axes[1].plot(t - task.record_every, r["median_factor_curve_base_lr"].mean(-1), label=m,
                 **style(m))
  axes[0].set(yscale="log", xscale="log", xlabel="iteration", ylabel="loss / L(0)",
              title=f"median over seeds, lr {base_lr}")
  axes[1].set(xscale="log", xlabel="iteration",
              ylabel="mean over layers of 1 + log(1 + 1/||g_l||)",
              title="factor (for the base methods: what it would be)")
  for ax in axes:
    ax.grid(alpha=0.3)
    ax.legend()
  report.save_figure(fig, out_dir / "curves.png", dpi=120)


@cli.reports_errors
def main(argv=None):
  parser = options.study_parser(__doc__, seeds=20, iters=8000, name="saddle")
  parser.add_argument("--depth", type=cli.positive_int, default=6)
  parser.add_argument("--width", type=cli.positive_int, default=16)
  parser.add_argument("--rank", type=cli.positive_int, default=4)
  parser.add_argument("--batch", type=cli.positive_int, default=16)
  parser.add_argument("--init-scale", type=float, default=0.3, help="per-layer gain s at init")
  parser.add_argument("--init-scales", type=cli.floats, default=[0.2, 0.3, 0.5],
                      help="second sweep over s, each method at its best lr")
  parser.add_argument("--lrs", type=cli.floats, default=[0.002, 0.005, 0.01, 0.02, 0.05, 0.1])
  parser.add_argument("--base-lr", type=float, default=None,
                      help="common lr (one of --lrs); default: the largest at which no seed of "
                      "any method diverged")
  parser.add_argument("--methods", default="sgd,sgd+layer,nag,nag+layer",
                      type=method_names(optimizers.BASES))
  parser.add_argument("--record-every", type=cli.positive_int, default=10)
  args = parser.parse_args(argv)
  if 2 * args.rank > args.width:
    parser.error("--rank must be at most half of --width (the teacher's two factors)")
  if args.base_lr is not None and args.base_lr not in args.lrs:
    parser.error(f"--base-lr {args.base_lr} must be one of --lrs")
  task = Task(args.depth, args.width, args.rank, args.batch, args.iters, args.record_every)
  cli.writable_folder(args.out)
  elapsed = outputs.timer()

  sweep = {m: run_method(task, m, [(lr, args.init_scale) for lr in args.lrs], args.seeds)
           for m in args.methods}
  base_lr = args.base_lr if args.base_lr is not None else pick_base_lr(sweep, args.lrs)
  scale_sweep = {m: run_method(task, m, [(args.lrs[best_lr_index(sweep[m])], s)
                                         for s in args.init_scales], args.seeds)
                 for m in args.methods}
  results, table = analyse(task, args.methods, args.lrs, args.init_scales, base_lr,
                           args.init_scale, sweep, scale_sweep)
  results.update(task=dataclasses.asdict(task), seeds=args.seeds, thresholds=THRESHOLDS)
  outputs.finish("saddle", args, argv, results, table, elapsed,
                lambda: plot(args.out, task, args.methods, args.lrs, base_lr, sweep, results))
  return results


if __name__ == "__main__":
  main()
