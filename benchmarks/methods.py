"""The compared methods: optax's optimizers against this library's, and the norm pass alone.

Each is a :class:`Method` with the optimizer, the baseline its ratio is taken against and its
step factory (``update`` + ``optax.apply_updates`` under ``jax.jit``, parameters and state
donated).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

import layerwise_optax as lo

LR = 0.01
MOMENTUM = 0.9


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
      # The trust-ratio aliases: LARS against momentum SGD (as optax.lars above), LAMB
      # against optax.lamb; one ratio per array, as optax's.
      Method("ours lars", lo.lars(LR, momentum=MOMENTUM), "optax sgd"),
      Method("optax lamb", optax.lamb(LR), None),
      Method("ours lamb", lo.lamb(LR), "optax lamb"),
      Method("optax A/A", optax.sgd(LR, MOMENTUM), "optax sgd"),
      Method("norm pass only", optax.identity(), "optax sgd", norm_pass_step),
  ]


def target(name: str, tree_name: str) -> float | None:
  """The overhead targets: SGD/Nesterov 1.10x (1.30x on LeNet), eq. 12 AdaGrad 1.25x; LARS
  1.45x momentum SGD (the extra reads of the parameters and the updates), LAMB below
  optax.lamb."""
  if name in ("ours sgd", "ours nesterov"):
    return 1.30 if tree_name == "LeNet" else 1.10
  if name == "ours adagrad eq.12":
    return 1.25
  if name == "ours lars":
    return 1.45
  if name == "ours lamb":
    return 1.0
  return None


def state_bytes(tx: optax.GradientTransformation, shapes: Any) -> int:
  """Bytes of the optimizer state for parameters of these shapes (abstract init)."""
  return sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize
             for x in jax.tree.leaves(jax.eval_shape(tx.init, shapes)))

