"""The paper's update rules step by step against NumPy transcriptions of Caffe's solvers.

Caffe (local_rate = t * f_l; the solvers are described in docs/protocols.md):
  SGD:      g += wd*w; h = mu*h + t*f_l*g; w -= h                              (eq. 10)
  Nesterov: g += wd*w; h_old = h; h = mu*h + t*f_l*g; w -= (1+mu)*h - mu*h_old
  AdaGrad:  g += wd*w; G += g^2; w -= t*f_l * g / sqrt(G + eps)                (eq. 12,
            optax's parameterisation: G_0 = initial_accumulator_value, eps inside the root)
with f_l = 1 + ln(1 + 1/||g_l||) from the (decayed) raw gradient.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import layerwise_optax as lo
from tests import reference

LR, MU, WD, STEPS = 0.05, 0.9, 5e-4, 12
SHAPES = {"conv": {"kernel": (3, 2), "bias": (2,)}, "dense": {"kernel": (4,)}}


def _init():
  rng = np.random.default_rng(0)
  return {m: {k: rng.normal(size=s) for k, s in d.items()} for m, d in SHAPES.items()}


def _grad(w, k):
  """A deterministic gradient with very different scales per layer (small for 'conv')."""
  scale = {"conv": 1e-2, "dense": 3.0}
  return {m: {p: scale[m] * (np.cos(v + k) + 0.5 * v) for p, v in d.items()}
          for m, d in w.items()}


class Run(NamedTuple):
  weights: dict
  history: dict  # Caffe's h: SGD's momentum history, AdaGrad's G
  norms: list  # per step, each layer's norm of the decayed gradient


def _caffe_run(rule, steps=STEPS, g0=0.1, eps=1e-7):
  w = _init()
  h = {m: {p: (np.full_like(v, g0) if rule == "adagrad" else np.zeros_like(v))
           for p, v in d.items()} for m, d in w.items()}
  norms = []
  for k in range(steps):
    g = _grad(w, k)
    norms.append({})
    for m in w:
      gd = {p: g[m][p] + WD * w[m][p] for p in w[m]}
      norms[-1][m] = np.sqrt(sum(np.sum(v ** 2) for v in gd.values()))
      rate = LR * reference.layer_factor(gd.values())
      for p in w[m]:
        if rule == "sgd":
          h[m][p] = MU * h[m][p] + rate * gd[p]
          w[m][p] = w[m][p] - h[m][p]
        elif rule == "nesterov":
          h_old = h[m][p]
          h[m][p] = MU * h[m][p] + rate * gd[p]
          w[m][p] = w[m][p] - ((1 + MU) * h[m][p] - MU * h_old)
        else:
          h[m][p] = h[m][p] + gd[p] ** 2
          w[m][p] = w[m][p] - rate * gd[p] / np.sqrt(h[m][p] + eps)
  return Run(w, h, norms)


def _caffe(rule, steps=STEPS, g0=0.1, eps=1e-7):
  return _caffe_run(rule, steps, g0, eps).weights


def _optax_run(tx, steps=STEPS):
  """The weights, the final state and each step's kept statistics (if any)."""
  w = {m: {p: jnp.asarray(v, jnp.float32) for p, v in d.items()} for m, d in _init().items()}
  state = tx.init(w)
  stats = []
  for k in range(steps):
    g = {m: {p: jnp.asarray(v, jnp.float32) for p, v in d.items()}
         for m, d in _grad({m: {p: np.asarray(v, np.float64) for p, v in d.items()}
                            for m, d in w.items()}, k).items()}
    updates, state = tx.update(g, state, w)
    w = optax.apply_updates(w, updates)
    if optax.tree_utils.tree_get(state, "layer_stats") is not None:
      stats.append(dict(lo.layer_stats(state)))
  return w, state, stats


def _optax(tx, steps=STEPS):
  return _optax_run(tx, steps)[0]


def _assert_trees_close(a, b, rtol=2e-5, atol=1e-6):
  for m in a:
    for p in a[m]:
      np.testing.assert_allclose(np.asarray(a[m][p]), b[m][p], rtol=rtol, atol=atol)


@pytest.mark.parametrize("nesterov", [False, True])
def test_eq10_chained_before_optax_sgd_matches_caffe(nesterov):
  tx = optax.chain(optax.add_decayed_weights(WD), lo.scale_by_layerwise_lr(),
                   optax.sgd(LR, momentum=MU, nesterov=nesterov))
  expected = _caffe("nesterov" if nesterov else "sgd")
  _assert_trees_close(_optax(tx), expected)
  _assert_trees_close(_optax(lo.sgd(LR, momentum=MU, nesterov=nesterov, weight_decay=WD)),
                      expected)


@pytest.mark.parametrize("nesterov", [False, True])
def test_eq10_momentum_history_is_caffes_over_the_learning_rate(nesterov):
  # optax's trace accumulates the scaled gradients, h / t = mu * h / t + f_l * g; its step
  # multiplies by -t. Read from the state, not only the weights.
  expected = _caffe_run("nesterov" if nesterov else "sgd")
  for tx in (lo.sgd(LR, momentum=MU, nesterov=nesterov, weight_decay=WD, keep_stats=True),
             optax.chain(optax.add_decayed_weights(WD), lo.scale_by_layerwise_lr(),
                         optax.sgd(LR, momentum=MU, nesterov=nesterov))):
    _, state, _ = _optax_run(tx)
    trace = optax.tree_utils.tree_get(state, "trace")
    _assert_trees_close(trace, {m: {p: v / LR for p, v in d.items()}
                                for m, d in expected.history.items()})


@pytest.mark.parametrize("rule", ["sgd", "nesterov", "adagrad"])
def test_kept_stats_are_each_steps_norm_and_factor_of_the_decayed_gradient(rule):
  tx = (lo.adagrad(LR, weight_decay=WD, keep_stats=True) if rule == "adagrad" else
        lo.sgd(LR, momentum=MU, nesterov=rule == "nesterov", weight_decay=WD, keep_stats=True))
  _, _, stats = _optax_run(tx)
  expected = _caffe_run(rule).norms
  assert len(stats) == len(expected) == STEPS
  for got, norms in zip(stats, expected):
    assert list(got) == list(norms)
    for m, norm in norms.items():
      np.testing.assert_allclose(got[m].norm, norm, rtol=2e-5)
      np.testing.assert_allclose(got[m].factor, reference.factor(norm), rtol=2e-5)


def test_eq12_history_is_the_initial_value_plus_the_squared_raw_gradients():
  # G_k = G_0 + sum_j (g_j + wd w_j)^2: eps enters the root only, never the history, so
  # swapping initial_accumulator_value and eps is seen in the state.
  g0, eps = 0.3, 1e-3
  expected = _caffe_run("adagrad", g0=g0, eps=eps)
  for tx in (lo.adagrad(LR, initial_accumulator_value=g0, eps=eps, weight_decay=WD),
             optax.chain(optax.add_decayed_weights(WD),
                         lo.with_layerwise_lr(optax.adagrad(LR, g0, eps)))):
    w, state, _ = _optax_run(tx)
    _assert_trees_close(optax.tree_utils.tree_get(state, "sum_of_squares"), expected.history)
    _assert_trees_close(w, expected.weights)
  _, one_step, _ = _optax_run(lo.adagrad(LR, initial_accumulator_value=g0, eps=eps,
                                         weight_decay=WD), steps=1)
  first = _caffe_run("adagrad", steps=1, g0=g0, eps=eps).history
  _assert_trees_close(optax.tree_utils.tree_get(one_step, "sum_of_squares"), first)
  swapped = lo.adagrad(LR, initial_accumulator_value=eps, eps=g0, weight_decay=WD)
  with pytest.raises(AssertionError):
    _assert_trees_close(optax.tree_utils.tree_get(_optax_run(swapped)[1], "sum_of_squares"),
                        expected.history)


def test_eq10_differs_from_plain_sgd():
  plain = _optax(optax.chain(optax.add_decayed_weights(WD), optax.sgd(LR, momentum=MU)))
  ours = _caffe("sgd")
  with pytest.raises(AssertionError):
    _assert_trees_close(plain, ours)


def test_eq12_adagrad_matches_raw_gradient_history():
  expected = _caffe("adagrad")
  _assert_trees_close(_optax(lo.adagrad(LR, weight_decay=WD)), expected)
  wrapped = optax.chain(optax.add_decayed_weights(WD), lo.with_layerwise_lr(optax.adagrad(LR)))
  _assert_trees_close(_optax(wrapped), expected)


def test_chaining_before_adagrad_cancels_most_of_the_factor():
  """For a constant gradient g (norm n, factor f), after k steps:

  plain:    u = g / sqrt(G0 + k g^2 + eps)
  eq. 12:   u = f * plain                              (the factor survives whole)
  chained:  u = f g / sqrt(G0 + k f^2 g^2 + eps)       (the history absorbs f)
  """
  g0, eps, k, gi = 0.1, 1e-7, 200, 0.05
  g = jnp.full((4,), gi)  # norm 0.1, f = 1 + ln 11 = 3.398
  f = reference.factor(0.1)

  def last_update(tx):
    state = tx.init(g)
    update = jax.jit(tx.update)
    for _ in range(k):
      u, state = update(g, state)
    return float(u[0])

  plain = last_update(optax.adagrad(1.0))
  faithful = last_update(lo.with_layerwise_lr(optax.adagrad(1.0)))
  chained = last_update(optax.chain(lo.scale_by_layerwise_lr(), optax.adagrad(1.0)))
  np.testing.assert_allclose(faithful / plain, f, rtol=1e-5)
  closed = f * np.sqrt(g0 + k * gi**2 + eps) / np.sqrt(g0 + k * (f * gi) ** 2 + eps)
  np.testing.assert_allclose(chained / plain, closed, rtol=1e-4)
  assert chained / plain < 1.1 < 3.3 < faithful / plain  # 1.09 of 3.40 survives at k = 200


def test_wrapper_scales_adam_step_by_the_raw_gradient_factor():
  g = {"a": {"w": jnp.array([3.0, 4.0])}, "b": {"w": jnp.array([0.03, 0.04])}}
  adam_u, _ = optax.adam(1e-3).update(g, optax.adam(1e-3).init(g))
  tx = lo.with_layerwise_lr(optax.adam(1e-3))
  ours, _ = tx.update(g, tx.init(g))
  np.testing.assert_allclose(ours["a"]["w"], adam_u["a"]["w"] * reference.factor(5.0), rtol=1e-6)
  np.testing.assert_allclose(ours["b"]["w"], adam_u["b"]["w"] * reference.factor(0.05), rtol=1e-6)


def test_nesterov_without_momentum_is_an_error():
  with pytest.raises(ValueError, match="nesterov=True needs a momentum"):
    lo.sgd(0.1, nesterov=True)


def test_schedule_as_learning_rate_follows_caffe_inv_policy():
  inv = lambda k: 0.01 * (1 + 1e-4 * k) ** -0.75
  tx = lo.sgd(inv)
  g = {"l": {"w": jnp.array([3.0, 4.0])}}
  state = tx.init(g)
  for k in range(3):
    u, state = tx.update(g, state)
    np.testing.assert_allclose(u["l"]["w"], -inv(k) * reference.factor(5.0) * g["l"]["w"],
                               rtol=1e-6)


def test_negative_weight_decay_is_rejected():
  with pytest.raises(ValueError, match="weight_decay"):
    lo.sgd(0.1, weight_decay=-1e-4)
