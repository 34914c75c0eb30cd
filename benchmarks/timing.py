"""Timing: interleaved repetitions, paired ratios, and buffers every method streams through.

Within each repetition every method of a tree runs once, in a shuffled order, so slow phases
of a shared machine hit all methods alike; a ratio is the median over repetitions of
(ours / optax) within the same repetition. Every method of a tree streams through the same
memory (:class:`SharedBuffers`): with separate buffers per method, where a method's buffers
lay in memory decided its speed (docs/performance.md).
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import optax


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


