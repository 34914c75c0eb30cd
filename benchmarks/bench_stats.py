"""What logging the per-layer norms and factors costs per optimizer step.

Three steps of each optimizer (``update`` + ``optax.apply_updates``, jit, parameters and
state donated), timed in interleaved repetitions through shared buffers
(:mod:`benchmarks.timing`):

* ``plain``: ``keep_stats=False``, the baseline of the ratios;
* ``keep_stats``: the same optimizer with ``keep_stats=True``; the state carries the last
  ``{layer: LayerFactor(norm, factor)}``, taken from the sums of squares the factor
  computes anyway;
* ``beside``: the plain step and ``layerwise_optax.layer_factors(grads)`` in the same jitted
  step, returned with it (what logging costs without ``keep_stats``: XLA may or may not
  share the second pass over the gradients with the first); for the factor's optimizers.

``plain A/A`` (a second, separately compiled plain SGD step) gives the run's noise floor.
Optimizers: ``lo.sgd`` (heavy ball and Nesterov), ``lo.adagrad``,
``lo.with_layerwise_lr(optax.adam)``, and the trust ratios' ``lo.lars`` and ``lo.lamb`` (their
statistics: each layer's parameter norm, update norm and ratio). Target: ``keep_stats`` at
most 1.02x ``plain`` on the large trees.

Usage (from the repository root)::

  python -m benchmarks.bench_stats                 # the committed run (results/bench/stats.*)
  python -m benchmarks.bench_stats --quick --out /tmp/stats   # tiny trees, a smoke run
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import optax

import layerwise_optax as lo
from benchmarks import trees as trees_lib
from benchmarks.bench_step import machine
from benchmarks.methods import LR, MOMENTUM, optimizer_step
from benchmarks.timing import SharedBuffers, fit_reps, paired_ratio, time_interleaved
from experiments import cli, files

TARGET = 1.02  # keep_stats / plain
LARGE_TREES = ("4x4096^2 f32", "ResNet-50", "transformer x24")
DEFAULTS = {False: {"reps": 41, "budget": 20.0}, True: {"reps": 5, "budget": 1.0}}  # by --quick


def optimizers(keep_stats: bool) -> dict[str, optax.GradientTransformation]:
  """The compared optimizers by family name."""
  return {
      "sgd": lo.sgd(LR, MOMENTUM, keep_stats=keep_stats),
      "nesterov": lo.sgd(LR, MOMENTUM, nesterov=True, keep_stats=keep_stats),
      "adagrad": lo.adagrad(LR, keep_stats=keep_stats),
      "adam": lo.with_layerwise_lr(optax.adam(LR), keep_stats=keep_stats),
      "lars": lo.lars(LR, momentum=MOMENTUM, keep_stats=keep_stats),
      "lamb": lo.lamb(LR, keep_stats=keep_stats),
  }


FACTOR_FAMILIES = ("sgd", "nesterov", "adagrad", "adam")  # those with a "beside" variant


def beside_step(tx: optax.GradientTransformation) -> Callable:
  """``optimizer_step`` plus ``layer_factors`` of the gradients, returned with it."""
  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state, lo.layer_factors(grads)
  return jax.jit(step, donate_argnums=(0, 1))


def bench_tree(tree_name: str, shapes: Any, reps: int, budget_s: float) -> list[dict]:
  """One row per (family, variant) on one tree, with its ratio to the family's plain step."""
  grads = trees_lib.materialise(shapes, seed=1, scale=1e-2)
  buffers = SharedBuffers(trees_lib.materialise(shapes, seed=0))
  plain, kept = optimizers(False), optimizers(True)
  variants = {}
  for family in plain:
    variants[(family, "plain")] = (optimizer_step(plain[family]), plain[family])
    variants[(family, "keep_stats")] = (optimizer_step(kept[family]), kept[family])
    if family in FACTOR_FAMILIES:
      variants[(family, "beside")] = (beside_step(plain[family]), plain[family])
  variants[("sgd", "plain A/A")] = (optimizer_step(plain["sgd"]), plain["sgd"])
  runners = {}
  for (family, variant), (step, tx) in variants.items():
    runners[f"{family} {variant}"] = buffers.runner(step, tx, family, grads)
    runners[f"{family} {variant}"]()  # compiles
  reps = fit_reps(runners, reps, budget_s)
  times = time_interleaved(runners, reps)
  rows = []
  for family, variant in variants:
    name = f"{family} {variant}"
    base = f"{family} plain"
    ratio = None if name == base else paired_ratio(times[name], times[base])
    rows.append(dict(tree=tree_name, family=family, variant=variant, reps=reps,
                     median_ms=1e3 * statistics.median(times[name]), ratio=ratio,
                     target=TARGET if variant == "keep_stats" and tree_name in LARGE_TREES
                     else None, times_ms=[1e3 * t for t in times[name]]))
  return rows


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  parser = cli.Parser(prog="python -m benchmarks.bench_stats",
                      description=__doc__.split("\n")[0])
  parser.add_argument("--trees", default=None,
                      help=f"comma-separated tree names (default {','.join(LARGE_TREES)}; "
                           "quick: the tiny trees)")
  parser.add_argument("--out", default="results/bench",
                      help="folder for stats.md and stats.json (default results/bench)")
  parser.add_argument("--quick", action="store_true", help="tiny trees, few repetitions")
  parser.add_argument("--reps", type=cli.positive_int, default=None,
                      help="most repetitions per tree (default 41; quick 5)")
  parser.add_argument("--budget", type=cli.nonnegative_float, default=None,
                      help="seconds of timing per tree (default 20; quick 1)")
  args = parser.parse_args(argv)
  for name, value in DEFAULTS[args.quick].items():
    if getattr(args, name) is None:
      setattr(args, name, value)
  known = trees_lib.trees(args.quick)
  default = list(known) if args.quick else list(LARGE_TREES)
  args.trees = default if args.trees is None else [t for t in args.trees.split(",") if t]
  unknown = [t for t in args.trees if t not in known]
  if unknown:
    parser.error(f"unknown tree {', '.join(map(repr, unknown))}; trees: {', '.join(known)}")
  return args


def table(rows: list[dict]) -> list[str]:
  out = ["| tree | optimizer | plain ms | keep_stats / plain | beside / plain | "
         "target | met |", "|---" * 7 + "|"]
  by_key = {(r["tree"], r["family"], r["variant"]): r for r in rows}
  for r in rows:
    if r["variant"] != "plain":
      continue
    kept = by_key[(r["tree"], r["family"], "keep_stats")]
    beside = by_key.get((r["tree"], r["family"], "beside"))
    beside_ratio = "-" if beside is None else f"{beside['ratio']:.3f}"
    target = kept["target"]
    met = "-" if target is None else ("yes" if kept["ratio"] <= target else "NO")
    out.append(f"| {r['tree']} | {r['family']} | {r['median_ms']:.2f} | "
               f"{kept['ratio']:.3f} | {beside_ratio} | "
               f"{'-' if target is None else f'{target:.2f}'} | {met} |")
  return out


@cli.reports_errors
def main(argv: list[str] | None = None) -> int:
  args = parse_args(argv)
  out = cli.writable_folder(Path(args.out))
  command = shlex.join(["python", "-m", "benchmarks.bench_stats",
                        *(sys.argv[1:] if argv is None else argv)])
  print(f"# bench_stats: {machine()}", flush=True)
  rows: list[dict] = []
  known = trees_lib.trees(args.quick)
  t0 = time.perf_counter()
  for tree_name in args.trees:
    rows += bench_tree(tree_name, known[tree_name], args.reps, args.budget)
    print(f"# {tree_name}: {trees_lib.n_params(known[tree_name]):,} parameters, "
          f"{rows[-1]['reps']} reps", flush=True)
  aa = [abs(r["ratio"] - 1) for r in rows if r["variant"] == "plain A/A"]
  missed = [f"{r['tree']}/{r['family']}" for r in rows
            if r["target"] and r["ratio"] > r["target"]]
  lines = ["# Cost of keeping the per-layer statistics", "",
           f"Command: `{command}`; {machine()}; wall time "
           f"{time.perf_counter() - t0:.0f} s. Ratios: median over repetitions of the paired "
           "ratio to the plain step (keep_stats=False) of the same optimizer in the same run.",
           "", *table(rows), "",
           f"Noise floor (plain A/A, largest distance from 1): {max(aa):.3f}; "
           f"targets missed: {len(missed)}" + (f" ({', '.join(missed)})" if missed else "")]
  print("\n".join(lines))
  files.write_text(out / "stats.md", "\n".join(lines) + "\n")
  files.write_json(out / "stats.json", {"command": command, "machine": machine(),
                                        "rows": rows})
  return 0


if __name__ == "__main__":
  sys.exit(main())
