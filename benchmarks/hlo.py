"""What XLA emits for one optimizer step: kernel, fusion and reduction counts of its HLO."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import optax

from benchmarks.methods import optimizer_step

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


