"""The layer-specific learning-rate factor of Singh et al. (2015), eq. 9.

For layer ``l`` with gradient ``g_l`` the learning rate becomes ``t_l = t * f_l`` with

    f_l = 1 + log(1 + 1 / (||g_l||_2 + eps))            (natural log; eps = 0 in the paper)

``f_l >= 1``; it tends to 1 for large norms and grows without bound (logarithmically) as the
norm shrinks: f(5) = 1.18, f(1) = 1.693, f(1e-3) = 7.91, f(1e-8) = 19.42.

Numerics:

* Sums of squares, norms and factors are computed in float32 at least (float64 for float64
  leaves; complex leaves contribute ``re^2 + im^2``), whatever the leaf dtype: a bfloat16 or
  float16 sum of squares loses precision or overflows.
* A layer whose sum of squares is exactly zero gets factor 1: its gradient is zero, so its
  scaled gradient is zero too (never ``0 * inf = NaN``). Gradients through the guard are
  finite (the "double where" of ``optax.safe_norm``). In float32 a layer whose entries are all
  below about 1e-19 in magnitude has squares that underflow to zero and is treated the same.
* A sum of squares that overflows to inf (entries above about 1e19 in float32) gives
  ``1/inf = 0`` and factor 1, which is also the exact factor rounded to float32.
* float32 subnormal entries (below 1.2e-38) are flushed to zero by XLA on CPU and GPU, as
  in any XLA computation (``optax.sgd`` flushes them too): their scaled update is 0.
* NaN in a layer makes its factor 1 and leaves the NaN in the update, so
  ``optax.apply_if_finite`` still sees it; the layer's reported norm is NaN as well.

References:
  Singh, De, Zhang, Goldstein, Taylor. "Layer-Specific Adaptive Learning Rates for Deep
  Networks." ICMLA 2015. arXiv:1510.04609.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike, DTypeLike

from layerwise_optax._grouping import LayerPlan


def concrete_value(x: ArrayLike) -> np.ndarray | None:
  """``x`` as a NumPy array, or ``None`` for a traced value (``inject_hyperparams``, ``jit``)."""
  try:
    return np.asarray(x)
  except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
    return None


def compute_dtype(dtype: DTypeLike) -> np.dtype:
  """float32 at least; float64 stays float64; complex maps to its real dtype."""
  real = jnp.finfo(dtype).dtype if jnp.issubdtype(dtype, jnp.inexact) else jnp.float32
  return jnp.promote_types(real, jnp.float32)


def _sum_of_squares(leaf: ArrayLike, stacked: bool) -> jax.Array:
  x = jnp.asarray(leaf)
  dt = compute_dtype(x.dtype)
  sq = (jnp.square(x.real.astype(dt)) + jnp.square(x.imag.astype(dt))
        if jnp.iscomplexobj(x) else jnp.square(x.astype(dt)))
  axes = tuple(range(1, x.ndim)) if stacked else None
  return jnp.sum(sq, axis=axes)


def layer_sums_of_squares(leaves: Sequence[ArrayLike], plan: LayerPlan,
                          axis_name: Hashable | None = None) -> list[jax.Array]:
  """Each layer's squared L2 norm (a vector over the stacking axis for stacked layers).

  With ``axis_name`` the per-layer sums are ``psum``-ed over that mapped axis, giving the
  norm of the whole layer inside ``shard_map``/``pmap`` with sharded parameters.
  """
  # One reduction per leaf, never a concatenation of leaves: under ``jit`` with sharded
  # parameters, stacking arrays of different layouts would move gradient data between
  # devices (an all-to-all); per-leaf sums only all-reduce one float per layer.
  sums: list[jax.Array | None] = [None] * len(plan.names)
  for leaf, layer in zip(leaves, plan.leaf_layer):
    s = _sum_of_squares(leaf, plan.stacked[layer])
    previous = sums[layer]
    sums[layer] = s if previous is None else previous + s
  out = [s for s in sums if s is not None]
  if axis_name is not None and out:
    out = list(jax.lax.psum(out, axis_name))
  return out


def layer_sums_like(leaves: Sequence[ArrayLike | jax.ShapeDtypeStruct],
                    plan: LayerPlan) -> list[jax.ShapeDtypeStruct]:
  """The shapes and dtypes :func:`layer_sums_of_squares` returns, from (abstract) leaves."""
  return jax.eval_shape(lambda xs: layer_sums_of_squares(xs, plan), list(leaves))


def factor_from_sum_of_squares(sum_sq: jax.Array, eps: ArrayLike = 0.0) -> jax.Array:
  """``1 + log1p(1 / (sqrt(sum_sq) + eps))``, and 1 where ``sum_sq`` is 0 or NaN."""
  positive = sum_sq > 0
  safe = jnp.where(positive, sum_sq, jnp.ones_like(sum_sq))
  factor = 1 + jnp.log1p(1 / (jnp.sqrt(safe) + jnp.asarray(eps, sum_sq.dtype)))
  return jnp.where(positive, factor, jnp.ones_like(factor))


def _per_layer(fn: Callable[[jax.Array], jax.Array],
               sums: Sequence[jax.Array]) -> list[jax.Array]:
  """``fn`` of every layer's sums as one vector operation, split back per layer.

  The layers' sums are concatenated, so many small layers cost one small fused computation
  instead of one per layer.
  """
  sums = list(sums)
  if len(sums) < 2 or len({s.dtype for s in sums}) != 1:
    return [fn(s) for s in sums]
  flat = fn(jnp.concatenate([jnp.ravel(s) for s in sums]))
  out, start = [], 0
  for s in sums:
    out.append(flat[start:start + s.size].reshape(s.shape))
    start += s.size
  return out


def factors_from_sums_of_squares(sums: Sequence[jax.Array],
                                 eps: ArrayLike = 0.0) -> list[jax.Array]:
  """:func:`factor_from_sum_of_squares` of every layer, as one vector operation."""
  return _per_layer(lambda s: factor_from_sum_of_squares(s, eps), sums)


def norm_from_sum_of_squares(sum_sq: jax.Array) -> jax.Array:
  """``sqrt(sum_sq)`` with a finite gradient at 0; NaN stays NaN."""
  positive = sum_sq > 0
  zero_or_nan = jnp.where(jnp.isnan(sum_sq), sum_sq, jnp.zeros_like(sum_sq))
  return jnp.where(positive, jnp.sqrt(jnp.where(positive, sum_sq, 1.0)), zero_or_nan)


def norms_from_sums_of_squares(sums: Sequence[jax.Array]) -> list[jax.Array]:
  """:func:`norm_from_sum_of_squares` of every layer, as one vector operation."""
  return _per_layer(norm_from_sum_of_squares, sums)


def scale_leaves(leaves: Sequence[ArrayLike], plan: LayerPlan,
                 factors: Sequence[jax.Array]) -> list[jax.Array]:
  """Multiplies each leaf by its layer's factor, returning it in its own dtype."""
  out = []
  for leaf, layer in zip(leaves, plan.leaf_layer):
    x = jnp.asarray(leaf)
    f = factors[layer]
    if plan.stacked[layer]:
      f = f.reshape(f.shape + (1,) * (x.ndim - 1))
    dt = compute_dtype(x.dtype)
    scaled = x * f if jnp.iscomplexobj(x) else x.astype(dt) * f.astype(dt)
    out.append(scaled.astype(x.dtype))
  return out
