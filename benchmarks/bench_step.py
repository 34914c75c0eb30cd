"""Optimizer-step cost of the layer-wise factor against optax, on one machine, in one run.

Each measured step is ``update`` plus ``optax.apply_updates`` under ``jax.jit`` with the
parameters and optimizer state donated (:mod:`benchmarks.methods`), timed in interleaved
repetitions through shared buffers (:mod:`benchmarks.timing`). ``optax A/A`` (a second,
separately compiled ``optax.sgd``) measures the noise floor of the run: its distance from
1.00. ``norm pass only`` times the per-layer sums of squares alone: one extra read of the
gradients, the least any layer-wise factor must add to the update (see docs/performance.md,
which also gives the run times of these commands).

Usage (from the repository root)::

  python -m benchmarks.bench_step            # the default run
  python -m benchmarks.bench_step --quick    # tiny trees, a few repetitions
  python -m benchmarks.bench_step --json out.json --hlo   # + fusion counts, raw times

The number of repetitions of a tree is as many as fit in ``--budget`` seconds (at least 5,
at most ``--reps``), so a slow tree (LARS on ResNet-50) does not stretch the run.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import re
import statistics
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import optax

from benchmarks import trees as trees_lib
from benchmarks.compiles import compile_log, n_compiles
from benchmarks.hlo import hlo_summary
from benchmarks.methods import methods, state_bytes, target
from benchmarks.timing import SharedBuffers, fit_reps, paired_ratio, time_interleaved
from experiments import cli, files


def bench_tree(tree_name: str, shapes: Any, reps: int, budget_s: float = 1e9) -> list[dict]:
  """Optimizer-step rows for one tree."""
  grads = trees_lib.materialise(shapes, seed=1, scale=1e-2)
  buffers = SharedBuffers(trees_lib.materialise(shapes, seed=0))
  runners, rows = {}, {}
  for name, tx, base, make_step in methods():
    step = make_step(tx)
    family = base or name  # a method shares its baseline's state buffers
    runners[name] = buffers.runner(step, tx, family, grads)
    with compile_log() as log:
      t0 = time.perf_counter()
      runners[name]()
      first = time.perf_counter() - t0
    rows[name] = dict(tree=tree_name, method=name, baseline=base,
                      compile_s=sum(d for _, d in log), first_call_s=first,
                      state_bytes=state_bytes(tx, shapes), step=step,
                      target=target(name, tree_name))
  with compile_log() as log:
    reps = fit_reps(runners, reps, budget_s)
    times = time_interleaved(runners, reps)
  return _finish_rows(rows, times, n_compiles(log), reps)


def _finish_rows(rows: dict[str, dict], times: dict[str, list], recompiles: int,
                 reps: int) -> list[dict]:
  """Adds medians, raw times, compile counts and paired ratios to each row."""
  for name, row in rows.items():
    row["median_ms"] = 1e3 * statistics.median(times[name])
    row["times_ms"] = [1e3 * t for t in times[name]]
    row["cache_size"] = row.pop("step")._cache_size()
    row["recompiles"] = recompiles
    row["reps"] = reps
  for name, row in rows.items():
    base = row["baseline"]
    row["ratio"] = paired_ratio(times[name], times[base]) if base else None
    if "state_bytes" in row:
      row["base_state_bytes"] = rows[base]["state_bytes"] if base else None
  return list(rows.values())


# ---------------------------------------------------------------------------------------------
# Full training step (forward, backward, update) on the paper's small networks.

def bench_training(model_name: str, reps: int, budget_s: float = 1e9,
                   batch: int | None = None) -> list[dict]:
  """Full training steps (forward, backward, update; jit, donated) of a paper network at
  its protocol's batch size (LeNet 64, cifar10_full 100): ours / optax of the whole step."""
  from benchmarks.models import training_setup  # flax only needed here

  model, params0, (x, y) = training_setup(model_name, batch=batch)

  def loss_fn(params, x, y):
    logits = model.apply({"params": params}, x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  compared = ("optax sgd", "ours sgd", "optax adagrad", "ours adagrad eq.12", "optax A/A")
  pairs = [(m.name, m.tx, m.baseline) for m in methods() if m.name in compared]
  buffers = SharedBuffers(params0)
  runners, rows = {}, {}
  for name, tx, base in pairs:
    def step(params, state, batch, tx=tx):
      loss, grads = jax.value_and_grad(loss_fn)(params, *batch)
      updates, state = tx.update(grads, state, params)
      return optax.apply_updates(params, updates), state, loss
    step = jax.jit(step, donate_argnums=(0, 1))
    runners[name] = buffers.runner(step, tx, base or name, (x, y))
    with compile_log() as log:
      runners[name]()
    rows[name] = dict(tree=f"{model_name} train step (batch {x.shape[0]})", method=name,
                      baseline=base,
                      compile_s=sum(d for _, d in log), step=step,
                      target=1.02 if base and name.startswith("ours") else None)
  with compile_log() as log:
    reps = fit_reps(runners, reps, budget_s)
    times = time_interleaved(runners, reps)
  return _finish_rows(rows, times, n_compiles(log), reps)


# ---------------------------------------------------------------------------------------------
# What XLA emits.



def hlo_report(shapes: Any) -> list[str]:
  """A markdown table of :func:`hlo_summary` for every method on ``shapes``."""
  keys = ("kernels", "fusions", "reductions", "scalar", "full_size")
  lines = ["| method | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
  for name, tx, _, make_step in methods():
    if name == "optax A/A":
      continue
    h = hlo_summary(tx, shapes, make_step)
    lines.append(f"| {name} | " + " | ".join(str(h[k]) for k in keys) + " |")
  return lines


# ---------------------------------------------------------------------------------------------
# Report.

def machine() -> str:
  cpu = platform.processor() or platform.machine()
  with contextlib.suppress(OSError):
    with open("/proc/cpuinfo") as f:
      m = re.search(r"model name\s*:\s*(.*)", f.read())
      cpu = m.group(1) if m else cpu
  import jaxlib
  return (f"{cpu}, {os.cpu_count()} cores, jax {jax.__version__}, jaxlib "
          f"{jaxlib.__version__}, optax {optax.__version__}, backend "
          f"{jax.default_backend()} ({jax.devices()[0].device_kind})")


def _mb(b: int | None) -> str:
  return "-" if b is None else f"{b / 2**20:.1f}"


def table(rows: list[dict]) -> list[str]:
  """One line per compared pair: ours (or LARS, or the A/A copy) against its optax baseline."""
  out = ["| tree | method vs baseline | ms | baseline ms | ratio | target | met | "
         "state MiB (baseline) | compile s (baseline) | recompiles | reps |",
         "|---" * 11 + "|"]
  by_key = {(r["tree"], r["method"]): r for r in rows}
  for r in rows:
    if not r["baseline"]:
      continue
    b = by_key[(r["tree"], r["baseline"])]
    tgt = r.get("target")
    met = "-" if tgt is None else ("yes" if r["ratio"] <= tgt else "NO")
    sb = r.get("state_bytes")
    state = "-" if sb is None else f"{_mb(sb)} ({_mb(r.get('base_state_bytes'))})"
    out.append(
        f"| {r['tree']} | {r['method']} vs {b['method']} | {r['median_ms']:.2f} | "
        f"{b['median_ms']:.2f} | {r['ratio']:.3f} | {'-' if tgt is None else f'{tgt:.2f}'} | "
        f"{met} | {state} | {r['compile_s']:.2f} ({b['compile_s']:.2f}) | "
        f"{r['recompiles']} (cache {r['cache_size']}) | {r['reps']} |")
  return out


MODELS = ("lenet", "cifar10_full")  # networks of the training-step overhead


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  parser = cli.Parser(prog="python -m benchmarks.bench_step",
                      description=__doc__.split("\n")[0])
  parser.add_argument("--quick", action="store_true", help="tiny trees, few repetitions")
  parser.add_argument("--reps", type=cli.positive_int, default=None,
                      help="most repetitions per tree (default 41; quick 5)")
  parser.add_argument("--budget", type=cli.nonnegative_float, default=None,
                      help="seconds of timing per tree or network (default 25; quick 1)")
  parser.add_argument("--trees", default=None,
                      help="comma-separated subset of tree names ('' for none)")
  parser.add_argument("--train-models", default=None,
                      help="networks for the training-step overhead (default lenet,cifar10_full; "
                           "quick lenet)")
  parser.add_argument("--no-train", action="store_true", help="skip the training-step overhead")
  parser.add_argument("--hlo", action="store_true",
                      help="also count the kernels of one step on the ResNet-50 tree and on one "
                           "bfloat16 1024x1024 array")
  parser.add_argument("--json", default=None, help="write all rows (with raw times) here")
  args = parser.parse_args(argv)
  args.reps = args.reps or (5 if args.quick else 41)
  args.budget = args.budget if args.budget is not None else (1.0 if args.quick else 25.0)
  known = trees_lib.trees(args.quick)
  args.trees = list(known) if args.trees is None else [t for t in args.trees.split(",") if t]
  unknown = [t for t in args.trees if t not in known]
  models = args.train_models or ("lenet" if args.quick else ",".join(MODELS))
  args.train_models = [] if args.no_train else models.split(",")
  unknown += [m for m in args.train_models if m not in MODELS]
  if unknown:
    parser.error(f"unknown tree or network {', '.join(map(repr, unknown))}; trees: "
                 f"{', '.join(known)}; networks: {', '.join(MODELS)}")
  return args


def run_trees(args: argparse.Namespace) -> list[dict]:
  rows: list[dict] = []
  all_trees = trees_lib.trees(args.quick)
  for tree_name in args.trees:
    shapes = all_trees[tree_name]
    t0 = time.perf_counter()
    rows += bench_tree(tree_name, shapes, args.reps, args.budget)
    print(f"# {tree_name}: {len(jax.tree.leaves(shapes))} arrays, "
          f"{trees_lib.n_params(shapes):,} parameters, {rows[-1]['reps']} reps, "
          f"{time.perf_counter() - t0:.0f} s", flush=True)
  for model_name in args.train_models:
    t0 = time.perf_counter()
    rows += bench_training(model_name, args.reps, args.budget, batch=8 if args.quick else None)
    print(f"# {model_name} training: {rows[-1]['reps']} reps, "
          f"{time.perf_counter() - t0:.0f} s", flush=True)
  return rows


def run_hlo() -> dict[str, list[str]]:
  """Kernel counts of one step on the ResNet-50 tree and on one bfloat16 array, printed."""
  hlo = {}
  for key, title, shapes in (
      ("resnet50", "the ResNet-50 tree (161 arrays)", trees_lib.resnet50_tree()),
      ("bf16_1024", "one bfloat16 1024x1024 array", trees_lib.big_tree(1, 1024, jnp.bfloat16))):
    print(f"\n# Kernels of one optimized step on {title}, backend {jax.default_backend()}:")
    hlo[key] = hlo_report(shapes)
    print("\n".join(hlo[key]))
  return hlo


@cli.reports_errors
def main(argv: list[str] | None = None) -> int:
  args = parse_args(argv)
  if args.json:
    cli.writable_folder(os.path.dirname(os.path.abspath(args.json)))
  print(f"# bench_step: {machine()}")
  print(f"# up to {args.reps} reps within {args.budget:.0f} s per tree, quick={args.quick}; "
        "ratio = ours / optax of median step times; update + apply_updates, jit, donated")
  rows = run_trees(args)
  print("\n".join(table(rows)))
  hlo = run_hlo() if args.hlo else {}
  if args.json:
    files.write_json(args.json, {"machine": machine(), "reps": args.reps,
                                 "budget_s": args.budget, "rows": rows, "hlo": hlo})
  totals = summary(rows)
  print(f"# targets missed: {totals['missed']}; added state: {totals['added_state']}; "
        f"recompiles: {totals['recompiled']}; A/A noise floor: {totals['aa']}")
  return 0


def summary(rows: list[dict]) -> dict[str, Any]:
  """Targets missed, methods with state beyond their baseline's, recompiling steps, and
  the largest distance of an A/A ratio from 1."""
  missed = [f"{r['tree']}/{r['method']}" for r in rows
            if r.get("target") and r["ratio"] > r["target"]]
  extra = [r for r in rows if r.get("base_state_bytes") is not None
           and r["method"].startswith("ours") and r["state_bytes"] != r["base_state_bytes"]]
  recompiled = [r for r in rows if r["recompiles"] or r["cache_size"] != 1]
  aa = [abs(r["ratio"] - 1) for r in rows if r["method"] == "optax A/A"]
  return dict(missed=len(missed), missed_rows=missed, added_state=len(extra),
              recompiled=len(recompiled), aa=f"{max(aa):.3f}" if aa else "-")


if __name__ == "__main__":
  sys.exit(main())
