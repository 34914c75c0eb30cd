"""Optimizer-step cost of the layer-wise factor against optax, on one machine, in one run.

Each measured step is ``update`` plus ``optax.apply_updates`` under ``jax.jit`` with the
parameters and optimizer state donated. Within each repetition every method of a tree runs
once, in a shuffled order, so slow phases of a shared machine hit all methods alike; a
ratio is the median over repetitions of (ours / optax) within the same repetition.

Every method of a tree streams through the same memory: the parameters, and the
optimizer states of each family (momentum, AdaGrad), live in one set of buffers that each
donated step hands on to the next. With separate buffers per method the position of a
method's buffers in memory decided its speed on this VM: a second, identical
``optax.sgd`` allocated last ran 1.2-1.4x slower than the first on the 4x4096^2 tree, and
1.00x when allocated second. ``optax A/A`` (a second, separately compiled ``optax.sgd``)
checks this: its distance from 1.00 is the noise floor of the run. ``norm pass only``
times the per-layer sums of squares alone: one extra read of the gradients, the least
any layer-wise factor must add to the update (see docs/performance.md).

Usage (from the repository root)::

  python benchmarks/bench_step.py            # default run, ~8 minutes on 2 CPU cores
  python benchmarks/bench_step.py --quick    # tiny trees, a few repetitions (< 1 minute)
  python benchmarks/bench_step.py --json out.json --hlo   # + fusion counts, raw times

The number of repetitions of a tree is as many as fit in ``--budget`` seconds (at least 5,
at most ``--reps``), so a slow tree (LARS on ResNet-50) does not stretch the run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import re
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import layerwise_optax as lo  # noqa: E402

LR = 0.01
MOMENTUM = 0.9

# ---------------------------------------------------------------------------------------------
# Parameter trees (shapes only; Flax-style nesting, so layers="module" groups kernel and bias).


def big_tree(n: int = 4, size: int = 4096, dtype: Any = jnp.float32) -> dict:
  """``n`` arrays of ``size x size``, one layer each."""
  return {f"dense_{i}": {"kernel": jax.ShapeDtypeStruct((size, size), dtype)}
          for i in range(n)}


def resnet50_tree(dtype: Any = jnp.float32) -> dict:
  """ResNet-50 (v1.5, ImageNet): 161 arrays, 25,557,032 parameters."""
  s = lambda *shape: jax.ShapeDtypeStruct(shape, dtype)
  bn = lambda c: {"scale": s(c), "bias": s(c)}
  tree: dict = {"conv_init": {"kernel": s(7, 7, 3, 64)}, "bn_init": bn(64)}
  cin = 64
  for stage, (blocks, width) in enumerate(zip((3, 4, 6, 3), (64, 128, 256, 512))):
    for b in range(blocks):
      blk = {"conv_0": {"kernel": s(1, 1, cin, width)}, "bn_0": bn(width),
             "conv_1": {"kernel": s(3, 3, width, width)}, "bn_1": bn(width),
             "conv_2": {"kernel": s(1, 1, width, 4 * width)}, "bn_2": bn(4 * width)}
      if b == 0:
        blk["proj_conv"] = {"kernel": s(1, 1, cin, 4 * width)}
        blk["proj_bn"] = bn(4 * width)
      tree[f"stage{stage}_block{b}"] = blk
      cin = 4 * width
  tree["head"] = {"kernel": s(2048, 1000), "bias": s(1000)}
  return tree


def transformer_tree(blocks: int = 24, d: int = 384, vocab: int = 8192,
                     dtype: Any = jnp.float32) -> dict:
  """Pre-LN transformer: 16 arrays per block (q, k, v, o, two MLP layers, two layer norms)."""
  s = lambda *shape: jax.ShapeDtypeStruct(shape, dtype)
  dense = lambda i, o: {"kernel": s(i, o), "bias": s(o)}
  ln = lambda: {"scale": s(d), "bias": s(d)}
  tree: dict = {"embed": {"embedding": s(vocab, d)}, "pos_embed": {"embedding": s(512, d)}}
  for b in range(blocks):
    tree[f"block_{b}"] = {
        "ln_0": ln(), "query": dense(d, d), "key": dense(d, d), "value": dense(d, d),
        "out": dense(d, d), "ln_1": ln(), "mlp_in": dense(d, 4 * d), "mlp_out": dense(4 * d, d)}
  tree["ln_final"] = ln()
  return tree


def lenet_tree(dtype: Any = jnp.float32) -> dict:
  """Caffe's MNIST LeNet: 8 arrays, 431,080 parameters."""
  s = lambda *shape: jax.ShapeDtypeStruct(shape, dtype)
  return {"conv1": {"kernel": s(5, 5, 1, 20), "bias": s(20)},
          "conv2": {"kernel": s(5, 5, 20, 50), "bias": s(50)},
          "ip1": {"kernel": s(800, 500), "bias": s(500)},
          "ip2": {"kernel": s(500, 10), "bias": s(10)}}


def trees(quick: bool) -> dict[str, dict]:
  """The benchmarked trees by name; ``quick`` uses tiny ones (and no ResNet-50: its 161
  arrays cost more compile time than a smoke run has; ``--hlo`` still compiles it)."""
  if quick:
    return {"4x256^2 f32": big_tree(4, 256), "transformer x1": transformer_tree(1, 64, 512),
            "LeNet": lenet_tree(), "4x256^2 bf16": big_tree(4, 256, jnp.bfloat16)}
  return {"4x4096^2 f32": big_tree(), "ResNet-50": resnet50_tree(),
          "transformer x24": transformer_tree(), "LeNet": lenet_tree(),
          "4x4096^2 bf16": big_tree(dtype=jnp.bfloat16)}


def materialise(shapes: Any, seed: int, scale: float = 1.0) -> Any:
  """Random normal arrays of the given shapes (on device)."""
  leaves, treedef = jax.tree.flatten(shapes)
  keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
  return jax.tree.unflatten(treedef, [
      (scale * jax.random.normal(k, x.shape, jnp.float32)).astype(x.dtype)
      for k, x in zip(keys, leaves)])


def n_params(tree: Any) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


# ---------------------------------------------------------------------------------------------
# Methods.

def optimizer_step(tx: optax.GradientTransformation) -> Callable:
  """``jit(update + apply_updates)`` with parameters and state donated."""
  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state
  return jax.jit(step, donate_argnums=(0, 1))


def norm_pass_step(tx: optax.GradientTransformation) -> Callable:
  """Only the layer-wise factor's extra work: each layer's norm, no update (``tx`` unused).

  One read of the gradients, so its time over ``optax.sgd``'s step is the memory-bound
  floor of the factor's overhead. Same signature and donation as :func:`optimizer_step`."""
  del tx

  def step(params, state, grads):
    norms = jnp.stack([f.norm for f in lo.layer_factors(grads).values()])
    return params, state, norms
  return jax.jit(step, donate_argnums=(0, 1))


class Method(NamedTuple):
  name: str
  tx: optax.GradientTransformation
  baseline: str | None  # the method its ratio is taken against
  make_step: Callable[[optax.GradientTransformation], Callable] = optimizer_step


def methods() -> list[Method]:
  return [
      Method("optax sgd", optax.sgd(LR, MOMENTUM), None),
      Method("ours sgd", lo.sgd(LR, MOMENTUM), "optax sgd"),
      Method("optax nesterov", optax.sgd(LR, MOMENTUM, nesterov=True), None),
      Method("ours nesterov", lo.sgd(LR, MOMENTUM, nesterov=True), "optax nesterov"),
      Method("optax adagrad", optax.adagrad(LR), None),
      Method("ours adagrad eq.12", lo.adagrad(LR), "optax adagrad"),
      Method("optax lars", optax.lars(LR, momentum=MOMENTUM), "optax sgd"),
      Method("optax A/A", optax.sgd(LR, MOMENTUM), "optax sgd"),
      Method("norm pass only", optax.identity(), "optax sgd", norm_pass_step),
  ]


def target(name: str, tree_name: str) -> float | None:
  """The issue's targets: SGD/Nesterov 1.10x (1.30x on LeNet), eq. 12 AdaGrad 1.25x."""
  if name in ("ours sgd", "ours nesterov"):
    return 1.30 if tree_name == "LeNet" else 1.10
  if name == "ours adagrad eq.12":
    return 1.25
  return None


def state_bytes(tx: optax.GradientTransformation, shapes: Any) -> int:
  """Bytes of the optimizer state for parameters of these shapes (abstract init)."""
  return sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize
             for x in jax.tree.leaves(jax.eval_shape(tx.init, shapes)))


# ---------------------------------------------------------------------------------------------
# Compile accounting.

_COMPILE_EVENTS = ("/jax/core/compile/backend_compile_duration",
                   "/jax/core/compile/jaxpr_trace_duration",
                   "/jax/core/compile/jaxpr_to_mlir_module_duration")
_events: list[tuple[str, float]] = []


def _listener(event: str, duration: float, **_: Any) -> None:
  if event in _COMPILE_EVENTS:
    _events.append((event, duration))


jax.monitoring.register_event_duration_secs_listener(_listener)


@contextlib.contextmanager
def compile_log():
  """Collects (event, seconds) of tracing, lowering and XLA compiles inside the block."""
  start = len(_events)
  out: list[tuple[str, float]] = []
  yield out
  out.extend(_events[start:])


def n_compiles(log: list[tuple[str, float]]) -> int:
  return sum(e == _COMPILE_EVENTS[0] for e, _ in log)


# ---------------------------------------------------------------------------------------------
# Timing.

def time_interleaved(runners: dict[str, Callable[[], None]], reps: int,
                     seed: int = 0) -> dict[str, list]:
  """Seconds per call of each runner; every repetition calls each once, in a shuffled order."""
  names = list(runners)
  times: dict[str, list[float]] = {n: [] for n in names}
  rng = random.Random(seed)
  for _ in range(reps):
    for n in rng.sample(names, len(names)):
      t0 = time.perf_counter()
      runners[n]()
      times[n].append(time.perf_counter() - t0)
  return times


def paired_ratio(times: list[float], base_times: list[float]) -> float:
  """Median over repetitions of the ratio of two methods' times in the same repetition."""
  return statistics.median(t / b for t, b in zip(times, base_times))


class SharedBuffers:
  """Parameter-sized buffers that every method of a tree streams through in turn.

  ``params`` holds the parameters' leaves; ``states[family]`` the parameter-shaped leaves
  of one optimizer family's state (momentum traces, AdaGrad sums), in parameter order.
  Each donated step writes its outputs into the buffers it read (XLA aliases donated
  inputs), and the runner puts them back here for the next method."""

  def __init__(self, params: Any):
    self.params_def = jax.tree.structure(params)
    self.params = jax.tree.leaves(params)
    self.states: dict[str, list] = {}

  def runner(self, step: Callable, tx: optax.GradientTransformation, family: str,
             grads: Any) -> Callable:
    """A closure that runs one donated step of ``tx`` on the shared buffers."""
    own, state_def = jax.tree.flatten(tx.init(jax.tree.unflatten(self.params_def,
                                                                  self.params)))
    shapes = [(p.shape, p.dtype) for p in self.params]
    slots, k = [], 0  # indices of the state leaves that are parameter-shaped, in order
    for i, leaf in enumerate(own):
      if k < len(shapes) and (leaf.shape, leaf.dtype) == shapes[k]:
        slots.append(i)
        k += 1
    pool = self.states.setdefault(family, [own[i] for i in slots]) if slots else []
    if [(own[i].shape, own[i].dtype) for i in slots] != [(p.shape, p.dtype) for p in pool]:
      raise ValueError(f"{family}: state shapes differ within the family")

    def run():
      for i, buf in zip(slots, pool):
        own[i] = buf
      out = step(jax.tree.unflatten(self.params_def, self.params),
                 jax.tree.unflatten(state_def, own), grads)
      jax.block_until_ready(out)
      self.params[:] = jax.tree.leaves(out[0])
      own[:] = jax.tree.leaves(out[1])
      pool[:] = [own[i] for i in slots]
    return run


def fit_reps(runners: dict[str, Callable[[], None]], reps: int, budget_s: float) -> int:
  """Repetitions that fit in ``budget_s`` (one warm repetition measured), within [5, reps]."""
  t0 = time.perf_counter()
  for run in runners.values():
    run()
  per_rep = time.perf_counter() - t0
  return max(5, min(reps, int(budget_s / max(per_rep, 1e-9))))


def bench_tree(tree_name: str, shapes: Any, reps: int, budget_s: float = 1e9) -> list[dict]:
  """Optimizer-step rows for one tree."""
  grads = materialise(shapes, seed=1, scale=1e-2)
  buffers = SharedBuffers(materialise(shapes, seed=0))
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

def _load_models():
  """benchmarks/models.py, loaded by path (``benchmarks`` is not a package)."""
  import importlib.util
  name = "_bench_step_models"
  if name not in sys.modules:
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "models.py")
    spec = importlib.util.spec_from_file_location(name, path)
    sys.modules[name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sys.modules[name])
  return sys.modules[name]


def bench_training(model_name: str, reps: int, budget_s: float = 1e9,
                   batch: int | None = None) -> list[dict]:
  """Full training steps (forward, backward, update; jit, donated) of a paper network at
  its protocol's batch size (LeNet 64, cifar10_full 100): ours / optax of the whole step."""
  training_setup = _load_models().training_setup  # flax only needed here

  model, params0, (x, y) = training_setup(model_name, batch=batch)

  def loss_fn(params, x, y):
    logits = model.apply({"params": params}, x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  pairs = [("optax sgd", optax.sgd(LR, MOMENTUM), None),
           ("ours sgd", lo.sgd(LR, MOMENTUM), "optax sgd"),
           ("optax adagrad", optax.adagrad(LR), None),
           ("ours adagrad eq.12", lo.adagrad(LR), "optax adagrad"),
           ("optax A/A", optax.sgd(LR, MOMENTUM), "optax sgd")]
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

_TRIVIAL = {"parameter", "constant", "tuple", "get-tuple-element", "bitcast"}


def optimized_hlo(tx: optax.GradientTransformation, shapes: Any,
                  make_step: Callable = optimizer_step) -> str:
  """The optimized HLO text of one step (by default update + apply_updates)."""
  state = jax.eval_shape(tx.init, shapes)
  return make_step(tx).lower(shapes, state, shapes).compile().as_text()


def hlo_summary(tx: optax.GradientTransformation, shapes: Any,
                make_step: Callable = optimizer_step) -> dict[str, int]:
  """What one optimized step launches: each non-trivial op of the entry computation is one
  kernel (XLA:CPU: one thunk; GPU: one launch, before any horizontal fusion).

  ``kernels``: non-trivial entry ops; ``fusions``; ``reductions``: fusions whose body
  reduces (XLA loop reductions and YNNPACK ``__ynn_fusion`` custom fusions);
  ``scalar``: kernels whose result has at most one element and do not reduce (per-layer
  bookkeeping, e.g. adding a kernel's and a bias's sums); ``full_size``: kernels whose
  result has as many elements as some parameter array with more than 1024 elements.
  """
  text = optimized_hlo(tx, shapes, make_step)
  entry = text[text.index("\nENTRY"):]
  comps = dict(re.findall(r"^%?(\S+) \(.*?\{\n(.*?)\n\}", text, flags=re.M | re.S))
  big = {int(np.prod(x.shape)) for x in jax.tree.leaves(shapes) if np.prod(x.shape) > 1024}
  counts = dict(kernels=0, fusions=0, reductions=0, scalar=0, full_size=0)
  for m in re.finditer(r"^\s+%\S+ = (\S+?)(?:\{[\d,]*\})? ([\w-]+)\((.*)$", entry, flags=re.M):
    shape, op, rest = m.groups()
    if op in _TRIVIAL:
      continue
    counts["kernels"] += 1
    dims = re.findall(r"\[([\d,]*)\]", shape)
    size = int(np.prod([int(d) for d in dims[0].split(",") if d])) if dims else 1
    body = ""
    if op == "fusion":
      counts["fusions"] += 1
      called = re.search(r"calls=%?([\w.-]+)", rest)
      body = comps.get(called.group(1), "") if called else ""
    reduces = bool(re.search(r" (reduce|reduce-window)\(", body)) or op in ("reduce",
                                                                           "reduce-window")
    counts["reductions"] += reduces
    counts["scalar"] += size <= 1 and not reduces
    counts["full_size"] += size in big
  return counts


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


def main(argv: list[str] | None = None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--quick", action="store_true", help="tiny trees, few repetitions (<1 min)")
  ap.add_argument("--reps", type=int, default=None,
                  help="most repetitions per tree (default 41; quick 5)")
  ap.add_argument("--budget", type=float, default=None,
                  help="seconds of timing per tree or network (default 25; quick 1)")
  ap.add_argument("--trees", default=None,
                  help="comma-separated subset of tree names ('' for none)")
  ap.add_argument("--train-models", default=None,
                  help="networks for the training-step overhead (default lenet,cifar10_full; "
                       "quick lenet)")
  ap.add_argument("--no-train", action="store_true", help="skip the training-step overhead")
  ap.add_argument("--hlo", action="store_true",
                  help="also count the kernels of one step on the ResNet-50 tree and on one "
                       "bfloat16 1024x1024 array")
  ap.add_argument("--json", default=None, help="write all rows (with raw times) here")
  args = ap.parse_args(argv)
  reps = args.reps or (5 if args.quick else 41)
  budget = args.budget if args.budget is not None else (1.0 if args.quick else 25.0)

  print(f"# bench_step: {machine()}")
  print(f"# up to {reps} reps within {budget:.0f} s per tree, quick={args.quick}; ratio = "
        "ours / optax of median step times; update + apply_updates, jit, donated")
  rows: list[dict] = []
  all_trees = trees(args.quick)
  chosen = list(all_trees) if args.trees is None else [t for t in args.trees.split(",") if t]
  for tree_name in chosen:
    shapes = all_trees[tree_name]
    t0 = time.perf_counter()
    rows += bench_tree(tree_name, shapes, reps, budget)
    print(f"# {tree_name}: {len(jax.tree.leaves(shapes))} arrays, {n_params(shapes):,} "
          f"parameters, {rows[-1]['reps']} reps, {time.perf_counter() - t0:.0f} s", flush=True)
  models = args.train_models or ("lenet" if args.quick else "lenet,cifar10_full")
  if not args.no_train:
    for model_name in models.split(","):
      t0 = time.perf_counter()
      rows += bench_training(model_name, reps, budget, batch=8 if args.quick else None)
      print(f"# {model_name} training: {rows[-1]['reps']} reps, "
            f"{time.perf_counter() - t0:.0f} s", flush=True)
  print("\n".join(table(rows)))
  hlo = {}
  if args.hlo:
    for key, title, shapes in (
        ("resnet50", "the ResNet-50 tree (161 arrays)", resnet50_tree()),
        ("bf16_1024", "one bfloat16 1024x1024 array", big_tree(1, 1024, jnp.bfloat16))):
      print(f"\n# Kernels of one optimized step on {title}, "
            f"backend {jax.default_backend()}:")
      hlo[key] = hlo_report(shapes)
      print("\n".join(hlo[key]))
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"machine": machine(), "reps": reps, "budget_s": budget, "rows": rows,
                 "hlo": hlo}, f, indent=1)
  s = summary(rows)
  print(f"# targets missed: {s['missed']}; added state: {s['added_state']}; "
        f"recompiles: {s['recompiled']}; A/A noise floor: {s['aa']}")
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
