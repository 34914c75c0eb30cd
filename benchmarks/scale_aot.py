"""Ahead-of-time compiled optimizer steps on simulated meshes: memory and collectives.

No array is allocated: the step (``update`` + ``optax.apply_updates``, jit, donated;
:func:`benchmarks.methods.optimizer_step`) is lowered for ``jax.ShapeDtypeStruct``
parameters, optimizer state and gradients that carry a ``NamedSharding``, and compiled for
``N`` simulated CPU devices. For each of this library's optimizers and optax's counterpart
it reads ``compiled.memory_analysis()`` (argument, output and temporary bytes of one
device's program) and the collectives of the compiled HLO (kind, count and bytes of their
results, after XLA's combiners).

What the layer factor may add. Each layer's sum of squares is a reduction over the layer's
shards, so a sharded step needs one cross-device sum of a few floats per layer; XLA's
all-reduce combiner merges them. The checks printed for every pair:

* temporaries (``temp``): ours minus optax's at most 1024 floats per layer (O(layers), not
  O(parameters));
* ``all-reduce``: beyond optax's at most one all-reduce, of at most one float per layer;
* ``no gather``: no all-gather and no other collective beyond optax's (parameters and
  gradients stay sharded).

Shardings of the transformer-shaped trees (:func:`benchmarks.trees.transformer_tree`):

* ``fsdp``: a 1-D mesh of all ``N`` devices; each array split along its first axis that
  ``N`` divides (replicated if none does).
* ``tp``: a ``(data, model)`` mesh, ``model = 8``; attention and MLP kernels split along
  their output (query, key, value, mlp_in, with their biases) or input (out, mlp_out)
  axis over ``model``, embeddings along the model dimension, the rest replicated.

jax fixes its device count when it starts, so each device count runs in its own
subprocess (``--worker``) with ``jax_num_cpu_devices`` set before the backend starts.

Usage (from the repository root)::

  python -m benchmarks.scale_aot                      # the committed run (results/scale/)
  python -m benchmarks.scale_aot --devices 8 --sizes tiny --out /tmp/scale
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import layerwise_optax as lo
from benchmarks import trees as trees_lib
from benchmarks.methods import LR, MOMENTUM, optimizer_step
from experiments import cli, files

# name -> (blocks, model dimension, vocabulary) of transformer_tree.
# Wide and shallow, so that the compile (whose time grows with the number of arrays) of the
# committed run fits in about 10 minutes on 2 cores: 1B 132 arrays, 8B 164 arrays.
SIZES = {"small": (1, 512, 1024), "1B": (8, 3072, 32768), "8B": (10, 8192, 32768)}
DTYPES = {"bfloat16": jnp.bfloat16, "float32": jnp.float32}
SHARDINGS = ("fsdp", "tp")
TP = 8  # devices of the model axis of the tp mesh
COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all",
               "collective-permute")
TEMP_FLOATS_PER_LAYER = 1024  # what "O(layers)" is checked as (4 KiB per layer)


def pairs() -> list[tuple[str, optax.GradientTransformation, str]]:
  """(name, optimizer, the optax baseline's name); the baselines pair with themselves."""
  adagrad = optax.adagrad(LR)
  return [
      ("optax sgd", optax.sgd(LR, MOMENTUM), "optax sgd"),
      ("lo.sgd", lo.sgd(LR, MOMENTUM), "optax sgd"),
      ("lo.sgd keep_stats", lo.sgd(LR, MOMENTUM, keep_stats=True), "optax sgd"),
      ("chain(scale_by_layerwise_lr, optax.sgd)",
       optax.chain(lo.scale_by_layerwise_lr(), optax.sgd(LR, MOMENTUM)), "optax sgd"),
      ("optax nesterov", optax.sgd(LR, MOMENTUM, nesterov=True), "optax nesterov"),
      ("lo.sgd nesterov", lo.sgd(LR, MOMENTUM, nesterov=True), "optax nesterov"),
      ("optax adagrad", adagrad, "optax adagrad"),
      ("lo.adagrad", lo.adagrad(LR), "optax adagrad"),
      ("with_layerwise_lr(optax.adagrad)", lo.with_layerwise_lr(adagrad), "optax adagrad"),
  ]


def _tp_spec(path: tuple[str, ...], ndim: int) -> jax.sharding.PartitionSpec:
  """Megatron-style tensor parallelism over ``model`` (column then row parallel)."""
  P = jax.sharding.PartitionSpec
  layer, leaf = path[-2], path[-1]
  if layer in ("query", "key", "value", "mlp_in"):
    return P(None, "model") if leaf == "kernel" else P("model")
  if layer in ("out", "mlp_out") and leaf == "kernel":
    return P("model", None)
  if leaf == "embedding":
    return P(None, "model")
  return P(*([None] * ndim))


def _fsdp_spec(shape: tuple[int, ...], devices: int) -> jax.sharding.PartitionSpec:
  """The first axis the device count divides, over ``fsdp``; replicated if none."""
  P = jax.sharding.PartitionSpec
  for axis, size in enumerate(shape):
    if size % devices == 0:
      return P(*([None] * axis), "fsdp")
  return P(*([None] * len(shape)))


def sharded_shapes(shapes: Any, sharding: str, devices: int) -> Any:
  """``shapes`` with a ``NamedSharding`` of the ``sharding`` layout on ``devices``."""
  auto = jax.sharding.AxisType.Auto  # shardings propagated by XLA, as in a plain jit
  if sharding == "fsdp":
    mesh = jax.make_mesh((devices,), ("fsdp",), axis_types=(auto,))
  else:
    mesh = jax.make_mesh((devices // TP, TP), ("data", "model"), axis_types=(auto, auto))

  def place(path, x):
    names = tuple(str(getattr(k, "key", k)) for k in path)
    spec = (_fsdp_spec(x.shape, devices) if sharding == "fsdp"
            else _tp_spec(names, len(x.shape)))
    return jax.ShapeDtypeStruct(x.shape, x.dtype,
                                sharding=jax.sharding.NamedSharding(mesh, spec))
  return jax.tree_util.tree_map_with_path(place, shapes)


def _dict_keys(path) -> tuple[str, ...]:
  return tuple(str(k.key) for k in path if isinstance(k, jax.tree_util.DictKey))


def abstract_state(tx: optax.GradientTransformation, params: Any) -> Any:
  """The optimizer state's shapes: a leaf whose dict-key path ends with a parameter's path
  and has its shape (momentum traces, sums of squares) is sharded as that parameter, the
  rest (counts, per-layer statistics) replicated."""
  by_path = {_dict_keys(path): p
             for path, p in jax.tree_util.tree_flatten_with_path(params)[0]}
  mesh = jax.tree.leaves(params)[0].sharding.mesh
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())

  def place(path, leaf):
    keys = _dict_keys(path)
    matches = [by_path[keys[i:]] for i in range(len(keys)) if keys[i:] in by_path]
    sharding = (matches[0].sharding if matches and matches[0].shape == leaf.shape
                else replicated)
    return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding)
  return jax.tree_util.tree_map_with_path(place, jax.eval_shape(tx.init, params))


_OP = re.compile(r"=\s+(.+?)\s+(" + "|".join(COLLECTIVES) + r")(?:-start)?\(")
_ARRAY = re.compile(r"\b(pred|s8|u8|s16|u16|s32|u32|s64|u64|bf16|f16|f32|f64)\[([\d,]*)\]")
_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "bf16": 2, "f16": 2, "s32": 4,
          "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8}


def collectives(hlo_text: str) -> dict[str, dict[str, int]]:
  """``{kind: {"count", "bytes", "elements"}}`` of the collectives in optimized HLO text
  (an async ``-start``/``-done`` pair counts once, by its start)."""
  out: dict[str, dict[str, int]] = {}
  for match in _OP.finditer(hlo_text):
    result, kind = match.groups()
    entry = out.setdefault(kind, {"count": 0, "bytes": 0, "elements": 0})
    entry["count"] += 1
    for dtype, dims in _ARRAY.findall(result):
      elements = int(np.prod([int(d) for d in dims.split(",") if d]))
      entry["elements"] += elements
      entry["bytes"] += elements * _BYTES[dtype]
  return out


def compile_step(tx: optax.GradientTransformation, params: Any) -> dict[str, Any]:
  """Memory and collectives of ``tx``'s AOT-compiled step for sharded abstract ``params``."""
  state = abstract_state(tx, params)
  t0 = time.perf_counter()
  compiled = optimizer_step(tx).lower(params, state, params).compile()
  seconds = time.perf_counter() - t0
  memory = compiled.memory_analysis()
  return dict(argument_bytes=int(memory.argument_size_in_bytes),
              output_bytes=int(memory.output_size_in_bytes),
              temp_bytes=int(memory.temp_size_in_bytes),
              alias_bytes=int(memory.alias_size_in_bytes),
              collectives=collectives(compiled.as_text()), compile_s=seconds)


def check(row: dict, base: dict) -> dict[str, Any]:
  """The targets of the module docstring for ``row`` against its optax ``base``."""
  extra_temp = row["temp_bytes"] - base["temp_bytes"]
  extra = {}
  for kind in set(row["collectives"]) | set(base["collectives"]):
    mine = row["collectives"].get(kind, {"count": 0, "elements": 0})
    theirs = base["collectives"].get(kind, {"count": 0, "elements": 0})
    extra[kind] = (mine["count"] - theirs["count"], mine["elements"] - theirs["elements"])
  reduce_count, reduce_elements = extra.pop("all-reduce", (0, 0))
  return dict(extra_temp_bytes=extra_temp,
              temp_ok=extra_temp <= 4 * TEMP_FLOATS_PER_LAYER * row["layers"],
              extra_all_reduces=reduce_count, extra_all_reduce_elements=reduce_elements,
              all_reduce_ok=reduce_count <= 1 and reduce_elements <= row["layers"],
              no_gather_ok=("all-gather" not in row["collectives"]
                            and all(count <= 0 for count, _ in extra.values())))


def worker(devices: int, args: argparse.Namespace) -> list[dict]:
  """Every (size, dtype, sharding, optimizer) of ``args`` on ``devices`` simulated devices."""
  if len(jax.devices()) != devices:
    raise cli.InputError(f"jax started with {len(jax.devices())} devices, not {devices}; "
                         "run without --worker")
  rows = []
  for size in args.sizes:
    for dtype in args.dtypes:
      shapes = trees_lib.transformer_tree(*SIZES[size], dtype=DTYPES[dtype])
      layers = len(lo.make_plan(shapes).names)
      arrays = len(jax.tree.leaves(shapes))
      for sharding in args.shardings:
        params = sharded_shapes(shapes, sharding, devices)
        sharded = sum(not x.sharding.is_fully_replicated for x in jax.tree.leaves(params))
        by_name = {}
        for name, tx, base in (p for p in pairs() if p[0] in args.methods):
          row = dict(devices=devices, size=size, dtype=dtype, sharding=sharding, method=name,
                     baseline=base, params=trees_lib.n_params(shapes), layers=layers,
                     arrays=arrays, sharded_arrays=sharded)
          row |= compile_step(tx, params)
          if base != name:
            row |= check(row, by_name[base])
          by_name[name] = row
          rows.append(row)
          print(f"# {devices} devices {size} {dtype} {sharding} {name}: "
                f"{row['compile_s']:.1f} s", flush=True)
  return rows


def _gib(b: int) -> str:
  return f"{b / 2**30:.3f}"


def _collective_text(row: dict) -> str:
  parts = [f"{k} {v['count']}x {v['bytes']:,} B" for k, v in sorted(row["collectives"].items())]
  return ", ".join(parts) or "none"


TARGETS = ("temp_ok", "all_reduce_ok", "no_gather_ok")


def table(rows: list[dict]) -> list[str]:
  """Markdown: one line per compiled step; the targets as yes/NO (temporaries, all-reduce,
  no gather)."""
  out = ["| devices | size | dtype | sharding | layers (arrays, sharded) | method | "
         "argument GiB | output GiB | temp KiB | extra temp B/layer | collectives | "
         "extra all-reduces (floats) | temp, all-reduce, no gather |", "|---" * 13 + "|"]
  for r in rows:
    if r["baseline"] == r["method"]:
      extra = extra_reduce = "-"
      met = "baseline"
    else:
      extra = f"{r['extra_temp_bytes'] / r['layers']:.0f}"
      extra_reduce = f"{r['extra_all_reduces']} ({r['extra_all_reduce_elements']})"
      met = ", ".join("yes" if r[key] else "NO" for key in TARGETS)
    out.append(f"| {r['devices']} | {r['size']} | {r['dtype']} | {r['sharding']} | "
               f"{r['layers']} ({r['arrays']}, {r['sharded_arrays']}) | {r['method']} | "
               f"{_gib(r['argument_bytes'])} | {_gib(r['output_bytes'])} | "
               f"{r['temp_bytes'] / 2**10:.1f} | {extra} | {_collective_text(r)} | "
               f"{extra_reduce} | {met} |")
  return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  parser = cli.Parser(prog="python -m benchmarks.scale_aot",
                      description=__doc__.split("\n")[0])
  parser.add_argument("--devices", type=cli.positive_ints, default=(64, 512),
                      help="comma-separated simulated device counts, multiples of 8 "
                           "(default 64,512)")
  parser.add_argument("--sizes", default="1B,8B",
                      help=f"comma-separated tree sizes of {', '.join(SIZES)} (default 1B,8B)")
  parser.add_argument("--dtypes", default="bfloat16",
                      help="comma-separated dtypes of bfloat16, float32 (default bfloat16)")
  parser.add_argument("--shardings", default=",".join(SHARDINGS),
                      help=f"comma-separated layouts of {', '.join(SHARDINGS)} (default all)")
  parser.add_argument("--methods", default=None,
                      help="comma-separated optimizer names (default all; each needs its "
                           "optax baseline)")
  parser.add_argument("--out", default="results/scale",
                      help="folder for scale_aot.md and scale_aot.json (default results/scale)")
  parser.add_argument("--worker", type=cli.positive_int, default=None, help=argparse.SUPPRESS)
  parser.add_argument("--worker-json", default=None, help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  args.sizes = [s for s in args.sizes.split(",") if s]
  args.dtypes = [d for d in args.dtypes.split(",") if d]
  args.shardings = [d for d in args.shardings.split(",") if d]
  known = {name: base for name, _, base in pairs()}
  args.methods = list(known) if args.methods is None else split_names(args.methods)
  unknown = ([s for s in args.sizes if s not in SIZES]
             + [d for d in args.dtypes if d not in DTYPES]
             + [s for s in args.shardings if s not in SHARDINGS]
             + [m for m in args.methods if m not in known])
  if unknown:
    parser.error(f"unknown size, dtype, sharding or method {', '.join(map(repr, unknown))}; "
                 f"sizes: {', '.join(SIZES)}; dtypes: {', '.join(DTYPES)}; shardings: "
                 f"{', '.join(SHARDINGS)}; methods: {', '.join(known)}")
  missing = sorted({known[m] for m in args.methods} - set(args.methods))
  if missing:
    parser.error(f"--methods lacks the baselines {', '.join(missing)}; add them")
  if any(n % TP for n in args.devices):
    parser.error(f"--devices {args.devices}: give device counts that are multiples of {TP}")
  return args


def split_names(text: str) -> list[str]:
  """Comma-separated names; a comma inside parentheses belongs to the name, as in
  ``chain(scale_by_layerwise_lr, optax.sgd)``."""
  return [name.strip() for name in re.split(r",(?![^()]*\))", text) if name.strip()]


def run_device_count(devices: int, args: argparse.Namespace) -> list[dict]:
  """One subprocess with ``devices`` simulated CPU devices; its rows."""
  with tempfile.TemporaryDirectory() as tmp:
    rows_path = Path(tmp) / "rows.json"
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    command = [sys.executable, "-m", "benchmarks.scale_aot", "--worker", str(devices),
               "--worker-json", str(rows_path), "--sizes", ",".join(args.sizes),
               "--dtypes", ",".join(args.dtypes), "--shardings", ",".join(args.shardings),
               "--methods", ",".join(args.methods)]
    proc = subprocess.run(command, env=env)
    if proc.returncode:
      raise cli.InputError(f"the {devices}-device compile failed (exit {proc.returncode}); "
                           "its error is printed above")
    return json.loads(rows_path.read_text())


@cli.reports_errors
def main(argv: list[str] | None = None) -> int:
  args = parse_args(argv)
  if args.worker:
    jax.config.update("jax_num_cpu_devices", args.worker)
    files.write_json(args.worker_json, worker(args.worker, args))
    return 0
  out = Path(args.out)
  cli.writable_folder(out)
  t0 = time.perf_counter()
  rows = [row for n in args.devices for row in run_device_count(n, args)]
  wall = time.perf_counter() - t0
  command = shlex.join(["python", "-m", "benchmarks.scale_aot",
                        *(sys.argv[1:] if argv is None else argv)])
  missed = {key: sum(not r[key] for r in rows if r["baseline"] != r["method"])
            for key in TARGETS}
  lines = ["# Optimizer steps compiled ahead of time on simulated CPU meshes",
           "", f"Command: `{command}`; jax {jax.__version__}, optax "
           f"{optax.__version__}; 2-core AMD EPYC VM, shared; wall time {wall:.0f} s (all "
           "compiles, one subprocess per device count).", "", *table(rows), "",
           "Steps that miss a target: " + ", ".join(f"{k} {v}" for k, v in missed.items())]
  files.write_text(out / "scale_aot.md", "\n".join(lines) + "\n")
  files.write_json(out / "scale_aot.json", {"command": command, "wall_s": wall,
                                            "jax": jax.__version__, "rows": rows})
  print("\n".join(lines))
  return 0


if __name__ == "__main__":
  sys.exit(main())
