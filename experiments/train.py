"""The per-seed training step of the paper's protocols as pure functions, for loops that
:mod:`experiments.engine` does not run: ``examples/train_mesh.py`` shards this step over a
device mesh and checks it against one device.

:func:`build_setup` gives a method's model, optimizer (Caffe order, ``keep_stats=True``),
recorder and data on device; :func:`init_state` the initial :class:`TrainState` (parameters
from ``jax.random.key(seed)``, the minibatch order of :func:`experiments.engine.make_order`,
the dropout key); :func:`make_train_step` the pure step ``(step, seed_state, order, key,
train_x, train_y) -> seed_state``, which records at iteration ``k`` each layer's gradient norm
(of the gradient the factor sees, after weight decay) and factor
``f_l = 1 + log(1 + 1/||g_l||)`` into on-device history buffers. The same seed gives the same
initialisation, batches and dropout keys as the engine's runs.

References:
  Singh et al., ICMLA 2015, arXiv:1510.04609, section IV.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

import layerwise_optax as lo

from . import data as data_lib
from . import methods as methods_lib
from . import models as models_lib
from .configs import Protocol
from .engine import cross_entropy, make_order  # make_order: the mesh example's batches


class SeedState(NamedTuple):
  """Everything one seed's run carries."""

  params: Any
  opt_state: Any
  loss: jax.Array  # (iters,)
  norm: jax.Array  # (iters, layers)
  factor: jax.Array  # (iters, layers)
  errors: jax.Array  # (len(eval_iters),)


class TrainState(NamedTuple):
  step: jax.Array  # scalar int32: iterations done
  seed: SeedState
  order: jax.Array  # (iters, batch) int32 minibatch indices
  key: jax.Array  # (2,) uint32 dropout key data




@dataclasses.dataclass
class Setup:
  """The static pieces of one run: model, optimizer, recorder and data on device."""

  model: Any
  tx: optax.GradientTransformation
  record: Any  # (grads, params, opt_state) -> (norms, factors), each (layers,)
  layer_names: tuple[str, ...]
  train_x: jax.Array
  train_y: jax.Array
  test_x: jax.Array
  test_y: jax.Array


@functools.cache
def jitted_init(model) -> Any:
  """``jax.jit(model.init)``, compiled once per model configuration (Flax modules are
  hashable), so the methods of a comparison share one compiled initialiser."""
  return jax.jit(model.init)


def make_recorder(solver, decay_mult: Any, layers: Any):
  """``(grads, params, opt_state=None) -> (norms, factors)``, each (layers,), of the
  gradient the factor sees (after decay), in the order of the layer names.

  An optimizer state that keeps its statistics (a "+layer" optimizer built with
  ``keep_stats=True``: ``optax.tree_utils.tree_get(opt_state, "layer_stats")``) is read,
  so the norms are not computed twice; otherwise (the base methods, which have no layer
  factor, or no state given) they are computed from the decayed gradients.
  """
  decay = methods_lib.decay_by_mult(solver.weight_decay, decay_mult)

  def record(grads, params, opt_state=None):
    stats = None if opt_state is None else optax.tree_utils.tree_get(opt_state, "layer_stats")
    if stats is None:
      decayed, _ = decay.update(grads, optax.EmptyState(), params)
      stats = lo.layer_factors(decayed, layers)
    names = lo.make_plan(grads, layers).names  # a state's dict comes back in sorted order
    return (jnp.stack([stats[name].norm for name in names]),
            jnp.stack([stats[name].factor for name in names]))
  return record


def make_train_step(model, tx, record):
  """The per-seed step ``(step, seed_state, order, key, train_x, train_y) -> seed_state``.

  ``order`` is the seed's (iters, batch) index table; the minibatch of iteration ``step`` is
  gathered on device. Pure and jittable; vmap it over seeds or shard it over devices.
  """
  def step_fn(step, s: SeedState, order, key, train_x, train_y):
    idx = order[step]
    x, y = train_x[idx], train_y[idx]
    rngs = {"dropout": jax.random.fold_in(key, step)}

    def loss_fn(p):
      return cross_entropy(model.apply({"params": p}, x, train=True, rngs=rngs), y)

    loss, grads = jax.value_and_grad(loss_fn)(s.params)
    updates, opt_state = tx.update(grads, s.opt_state, s.params)
    params = optax.apply_updates(s.params, updates)
    norm, factor = record(grads, s.params, opt_state)
    return s._replace(params=params, opt_state=opt_state, loss=s.loss.at[step].set(loss),
                      norm=s.norm.at[step].set(norm), factor=s.factor.at[step].set(factor))
  return step_fn


def build_setup(protocol: Protocol, method: str, dataset: data_lib.Dataset,
                layers: Any = "module", model_kwargs: dict | None = None) -> Setup:
  model = models_lib.MODELS[protocol.model](num_classes=dataset.num_classes,
                                             **(model_kwargs or {}))
  base, _ = methods_lib.split_method(method)
  solver = protocol.solvers[base]
  abstract = models_lib.abstract_params(model)
  lr_mult, decay_mult = models_lib.param_mults(model, abstract)
  tx = methods_lib.make_optimizer(method, solver, lr_mult, decay_mult, layers, keep_stats=True)
  names = lo.make_plan(abstract, layers).names
  mean = None if protocol.model == "lenet" else dataset.train_images.mean(0)
  return Setup(model, tx, make_recorder(solver, decay_mult, layers), names,
               jnp.asarray(data_lib.preprocess(dataset.train_images, mean)),
               jnp.asarray(dataset.train_labels),
               jnp.asarray(data_lib.preprocess(dataset.test_images, mean)),
               jnp.asarray(dataset.test_labels))


def init_state(setup: Setup, seed: int, iters: int, batch: int, n_eval: int) -> TrainState:
  """Initial parameters (Caffe fillers, key = seed), optimizer state and empty histories."""
  params = jitted_init(setup.model)(jax.random.key(seed), setup.train_x[:1])["params"]
  n_layers = len(setup.layer_names)
  s = SeedState(params, setup.tx.init(params), jnp.zeros(iters), jnp.zeros((iters, n_layers)),
                jnp.zeros((iters, n_layers)), jnp.full((n_eval,), jnp.nan))
  order = make_order(seed, setup.train_x.shape[0], iters, batch)
  key = jax.random.key_data(jax.random.fold_in(jax.random.key(seed), 1))
  return TrainState(jnp.zeros((), jnp.int32), s, jnp.asarray(order), key)
