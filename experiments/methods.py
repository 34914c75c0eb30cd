"""Optimizers for each method of the paper, built the way Caffe's solvers apply them.

For every parameter blob Caffe computes, in this order,

    g <- g + wd * decay_mult * w                              (weight decay first)
    t_l = lr_k * lr_mult * f_l,   f_l = 1 + log(1 + 1/||g_l||)  ("+layer" only; else f_l = 1)

and then its update rule (``local_rate = t_l``):

* SGD:      ``h = mu h + t_l g;  w -= h``                          (paper eq. 10)
* NAG:      ``h' = mu h + t_l g; w -= (1 + mu) h' - mu h``
* AdaGrad:  ``G += g^2;  w -= t_l g / (sqrt(G) + delta)``          (paper eq. 12)
* Adam:     ``w -= t_l m_hat / (sqrt(v_hat) + eps)``               (the extra pair)

"+relative" (the ablation of :mod:`experiments.relative`) uses ``r_l = f_l / mean_k f_k``
in place of ``f_l``, with the same placements.

Here, with optax: the factor comes from :func:`layerwise_optax.scale_by_layerwise_lr`
chained before ``optax.sgd`` for SGD/NAG (the factor enters the momentum history, as in
Caffe), and from :func:`layerwise_optax.with_layerwise_lr` around AdaGrad and Adam (the
factor, taken from the raw decayed gradient, multiplies the preconditioned step; the history
holds unscaled gradients). ``lr_mult`` is a constant per-array scale applied next to the
factor; since every rule is linear in ``t_l`` this equals Caffe's ``local_rate``.

AdaGrad uses ``optax.adagrad(initial_accumulator_value=0, eps=delta**2)``:
``g / sqrt(G + delta^2)`` in place of Caffe's ``g / (sqrt(G) + delta)``. Both start from an
empty history and differ only where ``sqrt(G)`` is about ``delta = 1e-8``, i.e. never for a
parameter that has seen a gradient; optax's default ``G_0 = 0.1`` would instead damp the first
steps of every parameter.

References:
  Singh et al., ICMLA 2015, arXiv:1510.04609, eqs. 9, 10, 12.
  Caffe's ``SGDSolver::Regularize`` / ``ComputeUpdateValue`` (sgd, nesterov, adagrad, adam).
"""

from __future__ import annotations

import argparse
from typing import Any

import jax
import jax.numpy as jnp
import optax

import layerwise_optax as lo

from . import relative
from .configs import EXTRA_METHODS, METHODS, Schedule, Solver

# The base update rules of the paper's harness.
BASES = ("sgd", "nag", "adagrad", "adam")
# The suffixes :func:`make_optimizer` builds: the factor of eq. 9, or its layer-relative form.
SUFFIXES = ("layer", "relative")


def schedule_fn(base_lr: float, schedule: Schedule) -> optax.Schedule:
  """Caffe's lr policy at iteration ``k`` (0-based, as Caffe's ``iter_``)."""
  if schedule.policy == "fixed":
    return optax.constant_schedule(base_lr)
  if schedule.policy == "inv":
    return lambda k: base_lr * (1.0 + schedule.gamma * k) ** (-schedule.power)
  if schedule.policy == "multistep":
    return optax.piecewise_constant_schedule(
        base_lr, {s: schedule.gamma for s in schedule.steps})
  raise ValueError(f"unknown lr policy {schedule.policy!r}")


def decay_by_mult(weight_decay: float, decay_mult: Any) -> optax.GradientTransformation:
  """``g + weight_decay * decay_mult * w`` per array (Caffe's L2 regularisation)."""
  def update_fn(updates, state, params):
    new = jax.tree.map(lambda g, w, m: g + (weight_decay * m) * w if m else g,
                       updates, params, decay_mult)
    return new, state
  return optax.GradientTransformation(lambda _: optax.EmptyState(), update_fn)


def scale_by_mult(lr_mult: Any) -> optax.GradientTransformation:
  """Multiplies each array's update by its constant ``lr_mult``."""
  def update_fn(updates, state, params=None):
    del params
    return jax.tree.map(lambda u, m: u if m == 1 else u * jnp.asarray(m, u.dtype),
                        updates, lr_mult), state
  return optax.GradientTransformation(lambda _: optax.EmptyState(), update_fn)


def method_suffix(method: str, bases: tuple[str, ...] = BASES) -> tuple[str, str]:
  """'nag+relative' -> ('nag', 'relative'), 'sgd' -> ('sgd', ''); ``bases`` are the base
  methods a caller accepts. The suffixes are those of :data:`SUFFIXES` with the harness's
  own ``BASES`` (which :func:`make_optimizer` builds), only ``layer`` with other bases."""
  suffixes = SUFFIXES if bases == BASES else ("layer",)
  base, _, suffix = method.partition("+")
  if (suffix and suffix not in suffixes) or base not in bases:
    raise ValueError(f"unknown method {method!r}; use one of {', '.join(bases)}, "
                     f"optionally with {' or '.join('+' + s for s in suffixes)}")
  return base, suffix


def split_method(method: str, bases: tuple[str, ...] = BASES) -> tuple[str, bool]:
  """'nag+layer' -> ('nag', True): the base and whether a layer factor (``+layer`` or
  ``+relative``, see :func:`method_suffix`) scales its steps."""
  base, suffix = method_suffix(method, bases)
  return base, bool(suffix)


def method_list(spec: str, bases: tuple[str, ...] = BASES) -> list[str]:
  """A ``--methods`` value: comma-separated names, or 'paper' (the six methods of Table I)
  or 'all' (those and adam, adam+layer). Raises ``ValueError`` for an unknown name."""
  if spec == "paper":
    names = list(METHODS)
  elif spec == "all":
    names = list(METHODS + EXTRA_METHODS)
  else:
    names = [m.strip() for m in spec.split(",") if m.strip()]
  if not names:
    raise ValueError("no method given")
  for name in names:
    split_method(name, bases)
  return names


def method_names(bases: tuple[str, ...] = BASES):
  """An argparse type for a ``--methods`` option: :func:`method_list` over ``bases``."""
  def parse(spec: str) -> list[str]:
    try:
      return method_list(spec, bases)
    except ValueError as e:
      raise argparse.ArgumentTypeError(str(e)) from None
  return parse


def make_optimizer(method: str, solver: Solver, lr_mult: Any, decay_mult: Any,
                   layers: Any = "module",
                   keep_stats: bool = False) -> optax.GradientTransformation:
  """The optax optimizer for ``method`` under ``solver`` (Caffe order, see module doc).

  ``keep_stats``: a "+layer" optimizer keeps each layer's last norm and factor in its state
  (``optax.tree_utils.tree_get(state, "layer_stats")``); the others are unchanged.
  """
  base, suffix = method_suffix(method)
  lr = schedule_fn(solver.base_lr, solver.schedule)
  decay = decay_by_mult(solver.weight_decay, decay_mult)
  mult = scale_by_mult(lr_mult)
  if base in ("sgd", "nag"):
    chained = {"": [], "layer": [lo.scale_by_layerwise_lr(layers, keep_stats=keep_stats)],
               "relative": [relative.scale_by_relative_layerwise_lr(layers)]}[suffix]
    mu = solver.momentum or None
    return optax.chain(decay, *chained, mult, optax.sgd(lr, mu, nesterov=base == "nag"))
  if base == "adagrad":
    inner = optax.chain(optax.adagrad(lr, initial_accumulator_value=0.0, eps=1e-16), mult)
  else:
    inner = optax.chain(optax.adam(lr, b1=0.9, b2=0.999, eps=1e-8), mult)
  if suffix == "layer":
    return optax.chain(decay, lo.with_layerwise_lr(inner, layers, keep_stats=keep_stats))
  if suffix == "relative":
    return optax.chain(decay, relative.with_relative_layerwise_lr(inner, layers))
  return optax.chain(decay, inner)
