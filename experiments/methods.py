"""The methods: every optimizer an experiment can name, in one registry.

A method name is a base update rule, optionally with a suffix, or a peer:

* bases (:data:`BASES`): ``sgd`` (heavy ball), ``nag`` (Nesterov), ``adagrad``, ``adam``
  (weight decay added to the gradient first, Caffe's order) and ``adamw`` (decoupled weight
  decay, Loshchilov & Hutter);
* ``+layer``: the factor of eq. 9 per layer, ``f_l = 1 + log(1 + 1/||g_l||)``;
* ``+relative``: ``f_l / sum_k (n_k / N) f_k`` in its place, with ``n_k`` the parameters of
  layer ``k`` and ``N`` their total (the library's ``relative=True``): the parameter-weighted
  mean factor is 1 at every step, so only the redistribution across layers remains, without
  the factor's global boost;
* ``+uniform``: that mean, ``sum_k (n_k / N) f_k``, on every layer (the library's
  ``uniform=True``): the global boost, following the gradients, without the redistribution
  (``+layer``'s factor is ``+uniform``'s times ``+relative``'s);
* peers (:data:`PEERS`): ``optax.lars`` and ``optax.lamb`` (layer-wise trust ratios as optax
  ships them), ``lars`` and ``lamb`` (the library's, as their users run them: no ratio and
  no decay for 1-D arrays, one ratio per slice of a stacked block).

Adding a method is one entry in :data:`BASES` or :data:`PEERS`; :func:`names` lists every
name and :func:`build` builds any of them from a :class:`Recipe` (what a workload fixes: the
learning rate or schedule, momentum, weight decay, per-array multipliers, grouping).

For every parameter blob Caffe computes, in this order,

    g <- g + wd * decay_mult * w                              (weight decay first)
    t_l = lr_k * lr_mult * f_l,   f_l = 1 + log(1 + 1/||g_l||)  ("+layer" only; else f_l = 1)

and then its update rule (``local_rate = t_l``):

* SGD:      ``h = mu h + t_l g;  w -= h``                          (paper eq. 10)
* NAG:      ``h' = mu h + t_l g; w -= (1 + mu) h' - mu h``
* AdaGrad:  ``G += g^2;  w -= t_l g / (sqrt(G) + delta)``          (paper eq. 12)
* Adam:     ``w -= t_l m_hat / (sqrt(v_hat) + eps)``               (the extra pair)

Here, with optax: the factor comes from :func:`layerwise_optax.scale_by_layerwise_lr`
chained before ``optax.sgd`` for SGD/NAG (the factor enters the momentum history, as in
Caffe), and from :func:`layerwise_optax.with_layerwise_lr` around AdaGrad, Adam and AdamW
(the factor, taken from the raw decayed gradient, multiplies the preconditioned step; the
history holds unscaled gradients). ``lr_mult`` is a constant per-array scale applied next to
the factor; since every rule is linear in ``t_l`` this equals Caffe's ``local_rate``.

AdaGrad uses ``optax.adagrad(initial_accumulator_value=0, eps=delta**2)``:
``g / sqrt(G + delta^2)`` in place of Caffe's ``g / (sqrt(G) + delta)``. Both start from an
empty history and differ only where ``sqrt(G)`` is about ``delta = 1e-8``, i.e. never for a
parameter that has seen a gradient; optax's default ``G_0 = 0.1`` would instead damp the first
steps of every parameter.

The peers: ``optax.lars`` takes the weight decay in the gradient (so it sits inside the trust
ratio ``||w|| / ||g + wd w||``, as in You et al.) and its own decay 0; ``optax.lamb`` takes
the decoupled decay (``Recipe.weight_decay`` and ``decay_mask``), b1, b2 and its own eps.

Every :func:`build` returns an :class:`Optimizer`: the transformation and the one that gives
the gradient the factor sees (the weight decay added to the gradient; ``optax.identity()``
where there is none), which the engine records the factors of.

References:
  Singh et al., ICMLA 2015, arXiv:1510.04609, eqs. 9, 10, 12.
  Caffe's ``SGDSolver::Regularize`` / ``ComputeUpdateValue`` (sgd, nesterov, adagrad, adam).
  Loshchilov, Hutter, "Decoupled Weight Decay Regularization", ICLR 2019 (AdamW).
  You, Gitman, Ginsburg, "Large Batch Training of Convolutional Networks", arXiv:1708.03888
  (LARS); You et al., "Large Batch Optimization for Deep Learning", ICLR 2020 (LAMB).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

import layerwise_optax as lo

from .configs import EXTRA_METHODS, METHODS, Schedule, Solver

# The suffixes of a base: the factor of eq. 9 and its two parts, the layer-relative form (the
# factors divided by their mean weighted by each layer's parameter count, the library's
# ``relative=True``) and the layer-uniform one (that mean on every layer, ``uniform=True``).
SUFFIXES = ("layer", "relative", "uniform")


@dataclasses.dataclass(frozen=True)
class Recipe:
  """What a workload fixes for every method it runs.

  ``lr``: a number, a traced scalar or an optax schedule (iteration -> rate). ``weight_decay``
  is added to the gradient (``g + wd * decay_mult * w``) by sgd, nag, adagrad, adam and
  optax.lars, and decoupled (``decay_mask`` selects the arrays) by adamw and optax.lamb.
  ``decay_mult`` and ``lr_mult`` are per-array trees of Caffe's multipliers (``None``: 1
  everywhere). ``layers``, ``stacked`` and ``keep_stats`` mean what they mean in
  :func:`layerwise_optax.with_layerwise_lr`.
  """

  lr: Any
  momentum: float = 0.9
  weight_decay: float = 0.0
  decay_mult: Any = None
  lr_mult: Any = None
  b1: float = 0.9
  b2: float = 0.999
  eps: float = 1e-8
  decay_mask: Any = None
  layers: Any = "module"
  stacked: Any = None
  keep_stats: bool = False


class Optimizer(NamedTuple):
  """A method's optimizer and the transformation that gives the gradient its factor sees
  (the weight decay it adds to the gradient; ``optax.identity()`` where it adds none)."""

  tx: optax.GradientTransformation
  seen: optax.GradientTransformation


class Base(NamedTuple):
  """A base update rule: ``rule(recipe)`` is applied after the decayed gradient
  (``coupled_decay``) and, with a suffix, the factor enters before it (``factor_first``,
  into a momentum history) or multiplies its step (around it)."""

  rule: Callable[[Recipe], optax.GradientTransformation]
  coupled_decay: bool = True
  factor_first: bool = False


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


def decay_by_mult(weight_decay: float, decay_mult: Any = None) -> optax.GradientTransformation:
  """``g + weight_decay * decay_mult * w`` per array (Caffe's L2 regularisation);
  ``decay_mult`` ``None`` is 1 for every array."""
  def update_fn(updates, state, params):
    mults = jax.tree.map(lambda _: 1.0, updates) if decay_mult is None else decay_mult
    new = jax.tree.map(lambda g, w, m: g + (weight_decay * m) * w if m else g,
                       updates, params, mults)
    return new, state
  return optax.GradientTransformation(lambda _: optax.EmptyState(), update_fn)


def scale_by_mult(lr_mult: Any) -> optax.GradientTransformation:
  """Multiplies each array's update by its constant ``lr_mult`` (``None``: unchanged)."""
  def update_fn(updates, state, params=None):
    del params
    if lr_mult is None:
      return updates, state
    return jax.tree.map(lambda u, m: u if m == 1 else u * jnp.asarray(m, u.dtype),
                        updates, lr_mult), state
  return optax.GradientTransformation(lambda _: optax.EmptyState(), update_fn)


def _momentum(nesterov: bool) -> Callable[[Recipe], optax.GradientTransformation]:
  def rule(r: Recipe) -> optax.GradientTransformation:
    return optax.chain(scale_by_mult(r.lr_mult),
                       optax.sgd(r.lr, r.momentum or None, nesterov=nesterov))
  return rule


def _adagrad(r: Recipe) -> optax.GradientTransformation:
  return optax.chain(optax.adagrad(r.lr, initial_accumulator_value=0.0, eps=1e-16),
                     scale_by_mult(r.lr_mult))


def _adam(r: Recipe) -> optax.GradientTransformation:
  return optax.chain(optax.adam(r.lr, b1=r.b1, b2=r.b2, eps=r.eps), scale_by_mult(r.lr_mult))


def _adamw(r: Recipe) -> optax.GradientTransformation:
  return optax.adamw(r.lr, b1=r.b1, b2=r.b2, eps=r.eps, weight_decay=r.weight_decay,
                     mask=r.decay_mask)


# Base name -> its update rule. One entry adds a base, with its +layer and +relative.
BASES: dict[str, Base] = {
    "sgd": Base(_momentum(nesterov=False), factor_first=True),
    "nag": Base(_momentum(nesterov=True), factor_first=True),
    "adagrad": Base(_adagrad),
    "adam": Base(_adam),
    "adamw": Base(_adamw, coupled_decay=False),
}
# The bases of the paper's Caffe protocols (a solver each in experiments.configs).
CAFFE_BASES = ("sgd", "nag", "adagrad", "adam")


def _optax_lars(r: Recipe) -> Optimizer:
  decay = decay_by_mult(r.weight_decay, r.decay_mult)
  return Optimizer(optax.chain(decay, optax.lars(r.lr)), decay)


def _optax_lamb(r: Recipe) -> Optimizer:
  return Optimizer(optax.lamb(r.lr, b1=r.b1, b2=r.b2, weight_decay=r.weight_decay,
                              mask=r.decay_mask), optax.identity())


def matrices(r: Recipe) -> Callable[[Any], Any]:
  """The mask of the arrays with more than one dimension per layer: a stacked array
  (``r.stacked``: top-level names) counts one dimension less (its slices are the layers)."""
  names = {r.stacked} if isinstance(r.stacked, str) else set(r.stacked or ())

  def mask(params: Any) -> Any:
    def keep(path, leaf) -> bool:
      stacked = bool(path) and getattr(path[0], "key", None) in names
      return leaf.ndim - stacked > 1
    return jax.tree_util.tree_map_with_path(keep, params)
  return mask


def _lars(r: Recipe) -> Optimizer:
  return Optimizer(lo.lars(r.lr, weight_decay=r.weight_decay, weight_decay_mask=matrices(r),
                           trust_ratio_mask=matrices(r), momentum=r.momentum,
                           stacked=r.stacked), optax.identity())


def _lamb(r: Recipe) -> Optimizer:
  return Optimizer(lo.lamb(r.lr, b1=r.b1, b2=r.b2, weight_decay=r.weight_decay,
                           mask=r.decay_mask if r.decay_mask is not None else matrices(r),
                           trust_ratio_mask=matrices(r), stacked=r.stacked), optax.identity())


# Peer name -> its builder. One entry adds a peer. ``optax.lars``/``optax.lamb`` as optax
# ships them (the committed comparisons); ``lars``/``lamb`` as their users run them: the
# library's trust ratios, one per array (one per slice of a stacked array), with 1-D arrays
# (biases, normalisation) neither decayed nor given a ratio (:func:`matrices`; ``lamb`` decays
# ``decay_mask`` where the recipe has one).
PEERS: dict[str, Callable[[Recipe], Optimizer]] = {
    "optax.lars": _optax_lars,
    "optax.lamb": _optax_lamb,
    "lars": _lars,
    "lamb": _lamb,
}


def layer_factor(r: Recipe, around: optax.GradientTransformation | None = None, **part: bool):
  """``+layer`` (``+relative`` with ``relative=True``, ``+uniform`` with ``uniform=True``):
  the factor of eq. 9 chained before a momentum rule (``around`` None) or multiplying the
  step of ``around``."""
  if around is None:
    return lo.scale_by_layerwise_lr(r.layers, r.stacked, keep_stats=r.keep_stats, **part)
  return lo.with_layerwise_lr(around, r.layers, r.stacked, keep_stats=r.keep_stats, **part)


# Suffix -> how it wraps a base. One entry adds a suffix to every base.
WRAPPERS = {"layer": layer_factor,
            "relative": functools.partial(layer_factor, relative=True),
            "uniform": functools.partial(layer_factor, uniform=True)}


def names(bases: Any = None) -> list[str]:
  """Every method name: each base (of ``bases``, default :data:`BASES`), with each suffix,
  then the peers (only with the default bases)."""
  chosen = list(BASES) if bases is None else list(bases)
  return ([f"{b}{s}" for b in chosen for s in ("", *(f"+{x}" for x in SUFFIXES))]
          + (list(PEERS) if bases is None else []))


def build(method: str, recipe: Recipe) -> Optimizer:
  """The :class:`Optimizer` of ``method`` (module doc) under ``recipe``."""
  if method in PEERS:
    return PEERS[method](recipe)
  base, suffix = method_suffix(method, tuple(BASES))
  spec = BASES[base]
  seen = (decay_by_mult(recipe.weight_decay, recipe.decay_mult) if spec.coupled_decay
          else optax.identity())
  rule = spec.rule(recipe)
  if not suffix:
    tx = optax.chain(seen, rule)
  elif spec.factor_first:
    tx = optax.chain(seen, WRAPPERS[suffix](recipe), rule)
  else:
    tx = optax.chain(seen, WRAPPERS[suffix](recipe, rule))
  return Optimizer(tx, seen)


def method_suffix(method: str, bases: tuple[str, ...] = CAFFE_BASES) -> tuple[str, str]:
  """'nag+relative' -> ('nag', 'relative'), 'sgd' -> ('sgd', ''); ``bases`` are the base
  methods a caller accepts. The suffixes are those of :data:`SUFFIXES` with bases of
  :data:`BASES`, only ``layer`` with others (the studies' ``gd``)."""
  suffixes = SUFFIXES if set(bases) <= set(BASES) else ("layer",)
  base, _, suffix = method.partition("+")
  if (suffix and suffix not in suffixes) or base not in bases:
    raise ValueError(f"unknown method {method!r}; use one of {', '.join(bases)}, "
                     f"optionally with {' or '.join('+' + s for s in suffixes)}")
  return base, suffix


def split_method(method: str, bases: tuple[str, ...] = CAFFE_BASES) -> tuple[str, bool]:
  """'nag+layer' -> ('nag', True): the base and whether a layer factor (``+layer`` or one
  of its parts, see :func:`method_suffix`) scales its steps."""
  base, suffix = method_suffix(method, bases)
  return base, bool(suffix)


def method_list(spec: str, bases: tuple[str, ...] = CAFFE_BASES,
                peers: bool = False) -> list[str]:
  """A ``--methods`` value: comma-separated names (of ``bases`` with their suffixes, and
  with ``peers`` of :data:`PEERS`), or 'paper' (the six methods of Table I) or 'all' (those
  and adam, adam+layer). Raises ``ValueError`` for an unknown name."""
  if spec == "paper":
    chosen = list(METHODS)
  elif spec == "all":
    chosen = list(METHODS + EXTRA_METHODS)
  else:
    chosen = [m.strip() for m in spec.split(",") if m.strip()]
  if not chosen:
    raise ValueError("no method given")
  for name in chosen:
    if not (peers and name in PEERS):
      split_method(name, bases)
  return chosen


def method_names(bases: tuple[str, ...] = CAFFE_BASES, peers: bool = False):
  """An argparse type for a ``--methods`` option: :func:`method_list` over ``bases`` (and
  the peers)."""
  def parse(spec: str) -> list[str]:
    try:
      return method_list(spec, bases, peers)
    except ValueError as e:
      raise argparse.ArgumentTypeError(str(e)) from None
  return parse


def caffe_recipe(solver: Solver, lr_mult: Any = None, decay_mult: Any = None,
                 layers: Any = "module", keep_stats: bool = False) -> Recipe:
  """The :class:`Recipe` of a Caffe solver: its schedule, momentum and weight decay."""
  return Recipe(schedule_fn(solver.base_lr, solver.schedule), solver.momentum,
                solver.weight_decay, decay_mult, lr_mult, layers=layers, keep_stats=keep_stats)


@dataclasses.dataclass(frozen=True)
class CaffeOptimizer:
  """``(method, lr, iters, params) -> Optimizer``: ``method`` under a Caffe protocol's solver
  (:data:`experiments.configs.PROTOCOLS`) with base learning rate ``lr`` and ``model``'s
  ``lr_mult``/``decay_mult``; a base without a solver there takes SGD's schedule and weight
  decay. Hashable and picklable, the engine's ``Setup.optimizer`` of the Caffe protocols."""

  protocol: str
  model: Any
  layers: Any = "module"
  keep_stats: bool = False

  def __call__(self, method: str, lr: Any, iters: int, params: Any) -> Optimizer:
    del iters  # Caffe's schedules do not depend on the run's length
    from experiments import configs, models

    solvers = configs.PROTOCOLS[self.protocol].solvers
    solver = dataclasses.replace(solvers.get(method.partition("+")[0], solvers["sgd"]),
                                 base_lr=lr)
    lr_mult, decay_mult = models.param_mults(self.model, params)
    return build(method, caffe_recipe(solver, lr_mult, decay_mult, self.layers,
                                      self.keep_stats))


def make_optimizer(method: str, solver: Solver, lr_mult: Any, decay_mult: Any,
                   layers: Any = "module",
                   keep_stats: bool = False) -> optax.GradientTransformation:
  """The optax optimizer for ``method`` under ``solver`` (Caffe order, see module doc).

  ``keep_stats``: a "+layer" optimizer keeps each layer's last norm and factor in its state
  (``optax.tree_utils.tree_get(state, "layer_stats")``); the others are unchanged.
  """
  return build(method, caffe_recipe(solver, lr_mult, decay_mult, layers, keep_stats)).tx
