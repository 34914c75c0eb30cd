"""Property tests against a NumPy float64 reference of eq. 9 (hypothesis).

Two profiles, chosen by the environment variable ``LAYERWISE_OPTAX_PROPERTIES``: ``ci`` (the
default, ``make test``) draws the same 25 cases per structure and dtype in every run, 1,050
in all; ``thorough`` (``make test-thorough``) draws 250 new random cases per structure and
dtype, 10,500 in all, and prints how to reproduce a failure.

Each case draws the values of a fixed tree structure: per array a kind (finite, all zero,
with a NaN or an inf), a magnitude from 1e-45 to 1e30, a spread of magnitudes within the
array, exact zeros, and ``norm_eps``. The structures cover every kind of ``layers`` spec,
stacked layers, ``None`` leaves and ``optax.masked``; the dtypes are float16, bfloat16,
float32, float64, complex64 and a mix. One jitted step per structure and dtype serves all
its cases, so the run compiles about 40 small programs.

The reference sums the squares in the compute dtype's precision (float32, or float64 for
float64 leaves) as the library documents, and comes in two variants: subnormal numbers
flushed to zero (XLA on CPU and GPU) or kept (IEEE); each layer must match one of them.
"""

from __future__ import annotations

import functools
import os
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import layerwise_optax as lo
from tests import reference

try:  # jax >= 0.8; the floor (0.5.3) has it under jax.experimental
  from jax import enable_x64
except ImportError:
  from jax.experimental import enable_x64

SDS = jax.ShapeDtypeStruct


def _leaf(*shape):
  return SDS(shape, jnp.float32)


class Structure(NamedTuple):
  template: object  # the tree, with ShapeDtypeStruct leaves
  layers: object
  stacked: object
  mask: dict | None
  expected: dict  # layer name -> (paths of its arrays, stacked), written out by hand


STRUCTURES = {
    "module": Structure(
        {"Dense_0": {"kernel": _leaf(3, 2), "bias": _leaf(2)}, "Dense_1": {"kernel": _leaf(2)}},
        "module", None, None,
        {"Dense_0": ([("Dense_0", "kernel"), ("Dense_0", "bias")], False),
         "Dense_1": ([("Dense_1", "kernel")], False)}),
    "array": Structure(
        {"conv": {"w": _leaf(2, 2), "b": _leaf(2)}, "scale": _leaf()},
        "array", None, None,
        {"conv/w": ([("conv", "w")], False), "conv/b": ([("conv", "b")], False),
         "scale": ([("scale",)], False)}),
    "label tree": Structure(
        {"a": {"w": _leaf(3)}, "b": {"w": _leaf(2), "v": _leaf(1)}, "c": {"w": _leaf(2)}},
        {"a": "x", "b": "x", "c": 0}, None, None,
        {"x": ([("a", "w"), ("b", "w"), ("b", "v")], False), "0": ([("c", "w")], False)}),
    "callable, stacked predicate": Structure(
        {"enc": {"l0": {"w": _leaf(2, 2)}, "l1": {"w": _leaf(2, 3)}}, "dec": {"w": _leaf(3)}},
        lambda path, leaf: path[0].key, lambda name: name == "enc", None,
        {"enc": ([("enc", "l0", "w"), ("enc", "l1", "w")], True), "dec": ([("dec", "w")], False)}),
    "stacked prefix": Structure(
        {"blocks": {"Dense_0": {"kernel": _leaf(3, 2, 2), "bias": _leaf(3, 2)}},
         "head": {"kernel": _leaf(2)}},
        "module", "blocks", None,
        {"blocks/Dense_0": ([("blocks", "Dense_0", "kernel"), ("blocks", "Dense_0", "bias")], True),
         "head": ([("head", "kernel")], False)}),
    "two stacks": Structure(
        {"enc": {"layers": {"attn": {"w": _leaf(2, 3)}}},
         "dec": {"layers": {"mlp": {"w": _leaf(4, 2, 1)}}, "out": {"w": _leaf(2)}}},
        "module", ["enc/layers", "dec/layers"], None,
        {"enc/layers/attn": ([("enc", "layers", "attn", "w")], True),
         "dec/layers/mlp": ([("dec", "layers", "mlp", "w")], True),
         "dec/out": ([("dec", "out", "w")], False)}),
    "None and masked": Structure(
        {"a": {"w": _leaf(3), "frozen": None}, "b": None, "c": {"w": _leaf(2)},
         "d": {"w": _leaf(2)}},
        "module", None, {"a": True, "b": True, "c": True, "d": False},
        {"a": ([("a", "w")], False), "c": ([("c", "w")], False)}),
}

MIXED = (jnp.bfloat16, np.float32, np.float16)
DTYPES = {"float16": np.float16, "bfloat16": jnp.bfloat16, "float32": np.float32,
          "float64": np.float64, "complex64": np.complex64, "mixed": None}
# Cases per structure and dtype (7 x 6 of them): 25 derandomised (1,050) or 250 random (10,500).
PROFILES = {
    "ci": settings(max_examples=25, derandomize=True, database=None, deadline=None,
                   suppress_health_check=[HealthCheck.too_slow]),
    "thorough": settings(max_examples=250, derandomize=False, database=None, deadline=None,
                         print_blob=True, suppress_health_check=[HealthCheck.too_slow]),
}
PROFILE = os.environ.get("LAYERWISE_OPTAX_PROPERTIES", "ci")
if PROFILE not in PROFILES:
  raise ValueError(f"LAYERWISE_OPTAX_PROPERTIES={PROFILE!r}: choose one of {sorted(PROFILES)}.")


def _paths(template):
  flat = jax.tree_util.tree_flatten_with_path(template)[0]
  return [tuple(getattr(k, "key", getattr(k, "idx", None)) for k in p) for p, _ in flat]


def _dtypes(structure, dtype_name):
  n = len(jax.tree.leaves(structure.template))
  if dtype_name == "mixed":
    return [MIXED[i % len(MIXED)] for i in range(n)]
  return [DTYPES[dtype_name]] * n


def _unmasked(tree, mask):
  return tree if mask is None else {k: v for k, v in tree.items() if mask[k]}


@functools.cache
def _step(structure_name, dtype_name, x64):
  """One compiled step per structure and dtype: the updates of both placements, the kept
  statistics and those of ``layer_factors``."""
  del dtype_name, x64  # part of the cache key: a new dtype is a new program
  s = STRUCTURES[structure_name]

  def step(tree, norm_eps):
    scale = lo.scale_by_layerwise_lr(s.layers, s.stacked, norm_eps, keep_stats=True)
    wrapped = lo.with_layerwise_lr(optax.identity(), s.layers, s.stacked, norm_eps)
    if s.mask is not None:
      scale, wrapped = optax.masked(scale, s.mask), optax.masked(wrapped, s.mask)
    out, state = scale.update(tree, scale.init(tree))
    out_wrapped, _ = wrapped.update(tree, wrapped.init(tree))
    kept = optax.tree_utils.tree_get(state, "layer_stats")
    stats = lo.layer_factors(_unmasked(tree, s.mask), s.layers, s.stacked, norm_eps)
    return out, out_wrapped, kept, stats

  return jax.jit(step)


KINDS = ["finite"] * 7 + ["zero", "nan", "inf", "-inf"]


@st.composite
def cases(draw, n_leaves):
  leaves = [(draw(st.sampled_from(KINDS)), draw(st.floats(-45, 30)), draw(st.floats(0, 12)),
             draw(st.booleans())) for _ in range(n_leaves)]
  return leaves, draw(st.sampled_from([0.0, 1e-8, 1e-3, 1.0])), draw(st.integers(0, 2**32 - 1))


def _real(rng, shape, exponent, spread, some_zeros):
  x = rng.uniform(-1, 1, shape) * 10.0 ** (exponent - rng.uniform(0, spread, shape))
  return np.array(np.where(rng.random(shape) < 0.3, 0.0, x) if some_zeros else x)


def _values(template, dtypes, leaf_specs, seed):
  """The drawn arrays in their dtypes (NumPy), overflowing to inf where the dtype does."""
  rng = np.random.default_rng(seed)
  out = []
  for sds, dtype, (kind, *magnitudes) in zip(jax.tree.leaves(template), dtypes, leaf_specs):
    x = _real(rng, sds.shape, *magnitudes)
    if np.dtype(dtype).kind == "c":
      x = np.array(x + 1j * _real(rng, sds.shape, *magnitudes))
    if kind == "zero":
      x = np.zeros_like(x)
    elif kind != "finite" and x.size:
      x.flat[rng.integers(x.size)] = {"nan": np.nan, "inf": np.inf, "-inf": -np.inf}[kind]
    with np.errstate(over="ignore"):
      out.append(np.asarray(x).astype(dtype))
  return out


def _compute(x, flush):
  """``x`` in its compute dtype (float32, or float64 for float64 leaves), as real parts."""
  c = np.float64 if x.dtype in (np.float64, np.complex128) else np.float32
  parts = [x.real, x.imag] if np.iscomplexobj(x) else [x]
  parts = [np.asarray(p, np.float64).astype(c) for p in parts]
  if flush:
    parts = [np.where(np.abs(p) < np.finfo(c).tiny, c(0), p) for p in parts]
  return c, parts


def _reference_layer(leaves, idx, stacked, norm_eps, flush):
  """NumPy float64 eq. 9 for one layer: (norm, factor, per array its exact update(s))."""
  total, c = 0.0, np.float32
  for i in idx:
    c_i, parts = _compute(leaves[i], flush)
    c = np.float64 if c_i is np.float64 else c
    with np.errstate(over="ignore"):
      squares = [np.square(p) for p in parts]  # in the compute dtype, as the library
    if flush:
      squares = [np.where(sq < np.finfo(c_i).tiny, c_i(0), sq) for sq in squares]
    sq = functools.reduce(np.add, squares).astype(np.float64)
    total = total + np.sum(sq, axis=tuple(range(1, sq.ndim)) if stacked else None)
  total = np.asarray(total, np.float64)
  if c is np.float32:
    total = np.where(total > np.finfo(np.float32).max, np.inf, total)
  with np.errstate(divide="ignore", invalid="ignore"):
    factor = np.where(total > 0, reference.factor(np.sqrt(total) + norm_eps), 1.0)
    norm = np.where(total > 0, np.sqrt(total), total)
  updates = []
  for i in idx:
    x = leaves[i]
    _, parts = _compute(x, flush)
    f = factor.reshape(factor.shape + (1,) * (x.ndim - factor.ndim))
    with np.errstate(over="ignore", invalid="ignore"):
      if len(parts) == 2:
        # JAX before 0.11 multiplies as NumPy does, by the factor as a complex number (inf+0.5j
        # becomes inf+nanj), newer JAX part by part (inf+0.5f j): either is exact.
        by_parts = np.empty(x.shape, np.complex128)
        by_parts.real, by_parts.imag = parts[0] * f, parts[1] * f
        exact = [(parts[0] + 1j * parts[1]) * f, by_parts]
      else:
        exact = [parts[0] * f]
      updates.append([np.asarray(e).astype(x.dtype) for e in exact])
  return norm, factor, updates


def _close(actual, expected, rtol, atol):
  a, e = np.asarray(actual).astype(np.complex128), np.asarray(expected).astype(np.complex128)
  same_nan = np.isnan(a) == np.isnan(e)
  finite = np.isfinite(e)
  return bool(np.all(same_nan) and np.all(a[~finite & ~np.isnan(e)] == e[~finite & ~np.isnan(e)])
              and np.all(np.abs(a[finite] - e[finite]) <= rtol * np.abs(e[finite]) + atol))


def _factor_bound(c, norm_eps):
  """The largest factor in dtype ``c``: that of the smallest positive sum, rounded up."""
  smallest = np.finfo(c).smallest_subnormal
  return reference.factor(np.sqrt(np.float64(smallest)) + norm_eps) * (1 + 4 * np.finfo(c).eps)


def _check_case(structure_name, dtype_name, case):
  s = STRUCTURES[structure_name]
  leaf_specs, norm_eps, seed = case
  dtypes = _dtypes(s, dtype_name)
  leaves = _values(s.template, dtypes, leaf_specs, seed)
  treedef = jax.tree.structure(s.template)
  tree = jax.tree.unflatten(treedef, [jnp.asarray(x) for x in leaves])
  out, out_wrapped, kept, stats = _step(structure_name, dtype_name, dtype_name == "float64")(
      tree, norm_eps)

  # Structure and dtypes kept; both placements agree; kept stats are layer_factors'.
  assert jax.tree.structure(out) == treedef
  out_leaves = [np.asarray(u) for u in jax.tree.leaves(out)]
  assert [u.dtype for u in out_leaves] == [x.dtype for x in leaves]
  for a, b in zip(out_leaves, jax.tree.leaves(out_wrapped)):
    # Bit-equal; compared as raw bytes since NumPy 1.25 tests bfloat16 NaN as unequal.
    assert a.tobytes() == np.asarray(b).tobytes()
  assert set(kept) == set(stats) == set(s.expected)

  index = {p: i for i, p in enumerate(_paths(s.template))}
  in_layer = set()
  for name, (paths, stacked) in s.expected.items():
    idx = [index[p] for p in paths]
    in_layer.update(idx)
    norm, factor = np.asarray(stats[name].norm), np.asarray(stats[name].factor)
    np.testing.assert_array_equal(np.asarray(kept[name].norm), norm)
    np.testing.assert_array_equal(np.asarray(kept[name].factor), factor)
    c = np.float64 if any(leaves[i].dtype in (np.float64, np.complex128) for i in idx) \
        else np.float32
    assert factor.dtype == norm.dtype == c
    assert factor.shape == (leaves[idx[0]].shape[:1] if stacked else ())
    # The factor is in [1, its bound]; finite in, finite out; zero in, zero out.
    assert np.all(factor >= 1) and np.all(factor <= _factor_bound(c, norm_eps)), factor
    for i in idx:
      x, u = leaves[i], out_leaves[i]
      if np.all(np.isfinite(x)):
        assert np.all(np.isfinite(u)), (x, u)
      np.testing.assert_array_equal(u[x == 0], 0)
    # Equal to the NumPy float64 reference (subnormals flushed or kept) to float tolerance.
    rtol_f = 1e-12 if c is np.float64 else 2e-5
    failures = []
    for flush in (True, False):
      ref_norm, ref_factor, ref_updates = _reference_layer(leaves, idx, stacked, norm_eps, flush)
      ok = _close(factor, ref_factor, rtol_f, 0.0)
      measurable = ref_norm < (np.finfo(c).max ** 0.5) / 2  # not at float32's overflow edge
      ok = ok and _close(norm[measurable], ref_norm[measurable], rtol_f, 0.0)
      for i, ref in zip(idx, ref_updates):
        info = jnp.finfo(leaves[i].dtype)  # NumPy's finfo lacks bfloat16 before 2.x
        ok = ok and any(_close(out_leaves[i], exact, float(info.eps) + rtol_f,
                               float(info.tiny) * _factor_bound(c, norm_eps)) for exact in ref)
      if ok:
        break
      failures.append(f"flush={flush}: factor {factor} vs {ref_factor}, norm {norm} vs {ref_norm}")
    else:
      raise AssertionError(f"layer {name}: " + "; ".join(failures))

  # Arrays outside every layer (masked out) pass through unchanged.
  for i, (x, u) in enumerate(zip(leaves, out_leaves)):
    if i not in in_layer:
      assert np.asarray(u).tobytes() == np.asarray(x).tobytes()  # bit-equal


@pytest.mark.parametrize("dtype_name", DTYPES)
@pytest.mark.parametrize("structure_name", STRUCTURES)
def test_properties_against_a_float64_reference(structure_name, dtype_name):
  n_leaves = len(jax.tree.leaves(STRUCTURES[structure_name].template))

  @PROFILES[PROFILE]
  @given(cases(n_leaves))
  def check(case):
    _check_case(structure_name, dtype_name, case)

  if dtype_name == "float64":
    with enable_x64(True):
      check()
  else:
    check()


def test_subnormal_gradients_are_flushed_like_optax():
  g = {"w": jnp.asarray([1e-45, -1e-39, 2e-38, 3.0], jnp.float32)}
  ours = lo.sgd(1.0)
  theirs = optax.sgd(1.0)
  u_ours, _ = ours.update(g, ours.init(g))
  u_theirs, _ = theirs.update(g, theirs.init(g))
  flushed = np.asarray(u_theirs["w"]) == 0
  np.testing.assert_array_equal(flushed, [True, True, False, False])
  np.testing.assert_array_equal(np.asarray(u_ours["w"])[flushed], 0.0)
  assert np.all(np.isfinite(np.asarray(u_ours["w"])))


def test_profiles_ci_repeats_its_cases_and_thorough_draws_ten_thousand():
  n_tests = len(STRUCTURES) * len(DTYPES)
  ci, thorough = PROFILES["ci"], PROFILES["thorough"]
  assert ci.derandomize and ci.max_examples * n_tests == 1_050
  assert not thorough.derandomize and thorough.max_examples * n_tests >= 10_000
