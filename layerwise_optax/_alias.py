"""Ready-made optimizers in optax's alias style: SGD/Nesterov (eq. 10), AdaGrad (eq. 12), and
LARS and LAMB with trust ratios on the layer plan.

SGD and AdaGrad start with a weight-decay slot (its state is ``optax.EmptyState()`` whatever
the coefficient), so the state has the same structure with and without weight decay, and
under ``optax.inject_hyperparams``, where every numeric argument becomes an array. LARS and
LAMB are optax's chains with :func:`scale_by_trust_ratio` in place of optax's.

References:
  Singh, De, Zhang, Goldstein, Taylor. "Layer-Specific Adaptive Learning Rates for Deep
  Networks." ICMLA 2015. arXiv:1510.04609.
"""

from __future__ import annotations

from collections.abc import Hashable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.typing import ArrayLike, DTypeLike

from layerwise_optax._factor import concrete_value
from layerwise_optax._grouping import LayersSpec, StackedSpec
from layerwise_optax._transform import scale_by_layerwise_lr, with_layerwise_lr
from layerwise_optax._trust_ratio import MaskOrFn, scale_by_trust_ratio


def _weight_decay(weight_decay: ArrayLike) -> optax.GradientTransformation:
  """``g + weight_decay * w``; a Python 0 is ``optax.identity()``, with no read of ``w``.

  Under ``inject_hyperparams`` the coefficient is an array whose value the trace cannot see,
  so it always applies (and needs ``params``); both forms have the state ``EmptyState()``.
  """
  value = concrete_value(weight_decay)
  if value is None:
    return optax.add_decayed_weights(jnp.asarray(weight_decay))
  if value.ndim != 0 or not value >= 0:
    raise ValueError(f"weight_decay must be a scalar >= 0; got {weight_decay!r}.")
  if isinstance(weight_decay, (int, float, np.number)) and value == 0:
    return optax.identity()
  return optax.add_decayed_weights(weight_decay if isinstance(weight_decay, jax.Array)
                                   else float(value))


def sgd(learning_rate: optax.ScalarOrSchedule, momentum: ArrayLike | None = None,
        nesterov: bool = False, weight_decay: ArrayLike = 0.0, layers: LayersSpec = "module",
        stacked: StackedSpec = None, norm_eps: ArrayLike = 0.0,
        axis_name: Hashable | None = None, accumulator_dtype: DTypeLike | None = None,
        keep_stats: bool = False) -> optax.GradientTransformationExtraArgs:
  r"""SGD, heavy-ball or Nesterov momentum with layer-specific learning rates (eq. 10).

  In Caffe's order, with learning rate :math:`\alpha`, momentum :math:`\mu` and weight decay
  :math:`\lambda`:

  .. math::
    \begin{align*}
      g &\leftarrow g + \lambda w \\
      f_l &= 1 + \log\left(1 + \frac{1}{\lVert g_l \rVert_2 + \epsilon}\right) \\
      m_l &\leftarrow f_l g_l + \mu m_l \\
      w_l &\leftarrow w_l - \alpha m_l \quad
        \text{(Nesterov: } w_l - \alpha (f_l g_l + \mu m_l)\text{)}
    \end{align*}

  that is ``optax.chain(add_decayed_weights, scale_by_layerwise_lr, optax.sgd)``, which
  equals Caffe's ``h = mu*h + t_l*g`` for a constant learning rate.

  Args:
    learning_rate: :math:`\alpha`, a scalar or an optax schedule.
    momentum: :math:`\mu`; ``None`` for plain SGD.
    nesterov: Nesterov momentum; needs ``momentum`` (``optax.sgd`` silently drops it).
    weight_decay: :math:`\lambda`, the L2 coefficient added to the gradient before the
      factor, as Caffe does; a nonzero value needs ``params`` in ``update``, and so does
      any value under ``optax.inject_hyperparams``.
    layers: the grouping, see :func:`scale_by_layerwise_lr`.
    stacked: the stacked layers, see :func:`scale_by_layerwise_lr`.
    norm_eps: :math:`\epsilon`, see :func:`scale_by_layerwise_lr`.
    axis_name: the mapped axis to sum over, see :func:`scale_by_layerwise_lr`.
    accumulator_dtype: dtype of the momentum buffer, as in ``optax.sgd``.
    keep_stats: keep the last step's ``{layer name: LayerFactor(norm, factor)}`` of the
      decayed gradients in the state; read them with :func:`layer_stats`.

  Returns:
    An ``optax.GradientTransformationExtraArgs``; its state is the chain's tuple
    ``(weight decay, layer-wise factor, optax.sgd)``.

  Examples:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> import optax
    >>> import layerwise_optax as lo
    >>> def f(x): return jnp.sum(x ** 2)
    >>> solver = lo.sgd(learning_rate=0.003, momentum=0.9)
    >>> params = jnp.array([1.0, 2.0, 3.0])
    >>> print(f"Objective function: {f(params):.2E}")
    Objective function: 1.40E+01
    >>> opt_state = solver.init(params)
    >>> for _ in range(5):
    ...   grad = jax.grad(f)(params)
    ...   updates, opt_state = solver.update(grad, opt_state, params)
    ...   params = optax.apply_updates(params, updates)
    ...   print(f"Objective function: {f(params):.2E}")
    Objective function: 1.38E+01
    Objective function: 1.35E+01
    Objective function: 1.30E+01
    Objective function: 1.24E+01
    Objective function: 1.17E+01

  References:
    Singh et al., "Layer-Specific Adaptive Learning Rates for Deep Networks", ICMLA 2015,
    arXiv:1510.04609, eq. 10.
  """
  if nesterov and momentum is None:
    raise ValueError("nesterov=True needs a momentum (e.g. momentum=0.9); optax.sgd would "
                     "silently run plain SGD.")
  return optax.chain(
      _weight_decay(weight_decay),
      scale_by_layerwise_lr(layers, stacked, norm_eps, axis_name, keep_stats),
      optax.sgd(learning_rate, momentum, nesterov, accumulator_dtype),
  )


def adagrad(learning_rate: optax.ScalarOrSchedule, initial_accumulator_value: ArrayLike = 0.1,
            eps: ArrayLike = 1e-7, weight_decay: ArrayLike = 0.0, layers: LayersSpec = "module",
            stacked: StackedSpec = None, norm_eps: ArrayLike = 0.0,
            axis_name: Hashable | None = None,
            keep_stats: bool = False) -> optax.GradientTransformationExtraArgs:
  r"""AdaGrad with layer-specific learning rates, the paper's eq. 12.

  With learning rate :math:`\alpha`, weight decay :math:`\lambda` and history :math:`G`
  (from ``initial_accumulator_value``):

  .. math::
    \begin{align*}
      g &\leftarrow g + \lambda w \\
      G &\leftarrow G + g^2 \\
      w_l &\leftarrow w_l - \alpha f_l \frac{g_l}{\sqrt{G_l + \delta}}, \qquad
      f_l = 1 + \log\left(1 + \frac{1}{\lVert g_l \rVert_2 + \epsilon}\right)
    \end{align*}

  that is :func:`with_layerwise_lr` around ``optax.adagrad``, whose
  ``initial_accumulator_value`` and ``eps`` (:math:`\delta`, inside the square root) it
  keeps; the history holds the unscaled gradients. Caffe's AdaGrad starts the history at 0
  and adds its delta outside the square root; ``initial_accumulator_value=0`` and
  ``eps=delta**2`` come close.

  Args:
    learning_rate: :math:`\alpha`, a scalar or an optax schedule.
    initial_accumulator_value: the history's start value, as in ``optax.adagrad``.
    eps: :math:`\delta`, as in ``optax.adagrad``.
    weight_decay: :math:`\lambda`, the L2 coefficient added to the gradient first (Caffe's
      order); the factor and the history both see the decayed gradient. A nonzero value
      needs ``params`` in ``update``, and so does any value under
      ``optax.inject_hyperparams``.
    layers: the grouping, see :func:`scale_by_layerwise_lr`.
    stacked: the stacked layers, see :func:`scale_by_layerwise_lr`.
    norm_eps: :math:`\epsilon`, see :func:`scale_by_layerwise_lr`.
    axis_name: the mapped axis to sum over, see :func:`scale_by_layerwise_lr`.
    keep_stats: keep the last step's ``{layer name: LayerFactor(norm, factor)}`` of the
      decayed gradients in the state; read them with :func:`layer_stats`.

  Returns:
    An ``optax.GradientTransformationExtraArgs``; its state is the chain's tuple
    ``(weight decay, optax.adagrad's state)``, the latter inside a
    :class:`WithLayerwiseLrState` with ``keep_stats``.

  Examples:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> import optax
    >>> import layerwise_optax as lo
    >>> solver = lo.adagrad(learning_rate=0.1)
    >>> x, y = jnp.array([[1.0, 2.0], [3.0, 4.0]]), jnp.array([1.0, -1.0])
    >>> def loss(p): return jnp.mean((x @ p["w"] + p["b"] - y) ** 2)
    >>> params = {"w": jnp.zeros(2), "b": jnp.zeros(1)}
    >>> opt_state = solver.init(params)
    >>> for step in range(4):
    ...   value, grad = jax.value_and_grad(loss)(params)
    ...   updates, opt_state = solver.update(grad, opt_state, params)
    ...   params = optax.apply_updates(params, updates)
    ...   print(f"step {step}: loss {value:.4f}")
    step 0: loss 1.0000
    step 1: loss 0.9655
    step 2: loss 0.8249
    step 3: loss 0.7245

  References:
    Singh et al., "Layer-Specific Adaptive Learning Rates for Deep Networks", ICMLA 2015,
    arXiv:1510.04609, eq. 12. Duchi, Hazan, Singer, "Adaptive Subgradient Methods for Online
    Learning and Stochastic Optimization", JMLR 12, 2011.
  """
  inner = optax.adagrad(learning_rate, initial_accumulator_value, eps)
  return optax.chain(
      _weight_decay(weight_decay),
      with_layerwise_lr(inner, layers, stacked, norm_eps, axis_name, keep_stats),
  )


def lars(learning_rate: optax.ScalarOrSchedule, weight_decay: optax.ScalarOrSchedule = 0.0,
         weight_decay_mask: MaskOrFn = True, trust_coefficient: ArrayLike = 0.001,
         eps: ArrayLike = 0.0, trust_ratio_mask: MaskOrFn = True, momentum: ArrayLike = 0.9,
         nesterov: bool = False, *, layers: LayersSpec = "array", stacked: StackedSpec = None,
         axis_name: Hashable | None = None, max_ratio: ArrayLike | None = None,
         keep_stats: bool = False) -> optax.GradientTransformationExtraArgs:
  r"""LARS with trust ratios per layer, per scanned block or per shard.

  ``optax.lars``'s chain with its arguments and defaults, its trust ratio taken on the layer
  plan (:func:`scale_by_trust_ratio`). With learning rate :math:`\alpha`, weight decay
  :math:`\lambda`, trust coefficient :math:`c` and momentum :math:`\mu`:

  .. math::
    \begin{align*}
      u &\leftarrow g + \lambda w \\
      r_l &= \frac{c \, \lVert w_l \rVert_2}{\lVert u_l \rVert_2 + \epsilon}
        \quad (1 \text{ where either norm is } 0) \\
      m &\leftarrow \alpha \, r_l u_l + \mu m, \qquad w \leftarrow w - m
    \end{align*}

  With ``layers="array"`` (the default), nothing stacked and no ``max_ratio`` it equals
  ``optax.lars`` with the same arguments, masks included.

  Args:
    learning_rate: :math:`\alpha`, a scalar or an optax schedule.
    weight_decay: :math:`\lambda`, as in ``optax.lars`` (added to the gradient first).
    weight_decay_mask: the arrays that decay, as in ``optax.lars``.
    trust_coefficient: :math:`c`, as in ``optax.lars``.
    eps: :math:`\epsilon`, added to the update norm, as in ``optax.lars``.
    trust_ratio_mask: the arrays that get a trust ratio (``False``: ratio 1), as in
      ``optax.lars``; often the 1-D arrays (biases, normalisation scales) are left out.
    momentum: :math:`\mu`, as in ``optax.lars``.
    nesterov: Nesterov momentum, as in ``optax.lars``.
    layers: what forms a layer, see :func:`scale_by_trust_ratio` (one per array by default).
    stacked: the stacked layers, one ratio per slice, see :func:`scale_by_trust_ratio`.
    axis_name: the mapped axis to sum the squares over, see :func:`scale_by_trust_ratio`.
    max_ratio: an upper clip of the ratio, see :func:`scale_by_trust_ratio`.
    keep_stats: keep each layer's norms and ratio in the state, see
      :func:`scale_by_trust_ratio`.

  Returns:
    An ``optax.GradientTransformationExtraArgs``; ``update`` needs ``params``.

  Examples:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> import optax
    >>> import layerwise_optax as lo
    >>> def f(p): return jnp.sum(p["w"] ** 2) + jnp.sum(p["b"] ** 2)
    >>> params = {"w": jnp.array([1.0, 2.0, 3.0]), "b": jnp.array([0.5])}
    >>> solver = lo.lars(learning_rate=0.1, trust_coefficient=0.1,
    ...                  trust_ratio_mask={"w": True, "b": False})
    >>> state = solver.init(params)
    >>> for _ in range(3):
    ...   updates, state = solver.update(jax.grad(f)(params), state, params)
    ...   params = optax.apply_updates(params, updates)
    ...   print(f"{f(params):.4f}")
    13.8814
    13.2554
    12.4869

  References:
    You, Gitman, Ginsburg, "Large Batch Training of Convolutional Networks",
    arXiv:1708.03888, 2017, algorithm 1.
  """
  return optax.chain(
      optax.add_decayed_weights(weight_decay, mask=weight_decay_mask),
      scale_by_trust_ratio(trust_coefficient=trust_coefficient, eps=eps, max_ratio=max_ratio,
                           mask=trust_ratio_mask, layers=layers, stacked=stacked,
                           axis_name=axis_name, keep_stats=keep_stats),
      optax.scale_by_learning_rate(learning_rate),
      optax.trace(decay=momentum, nesterov=nesterov),
  )


def lamb(learning_rate: optax.ScalarOrSchedule, b1: ArrayLike = 0.9, b2: ArrayLike = 0.999,
         eps: ArrayLike = 1e-6, eps_root: ArrayLike = 0.0,
         weight_decay: optax.ScalarOrSchedule = 0.0, mask: MaskOrFn = None, *,
         trust_ratio_mask: MaskOrFn = True, layers: LayersSpec = "array",
         stacked: StackedSpec = None, axis_name: Hashable | None = None,
         max_ratio: ArrayLike | None = None,
         keep_stats: bool = False) -> optax.GradientTransformationExtraArgs:
  r"""LAMB with trust ratios per layer, per scanned block or per shard, and a trust-ratio mask.

  ``optax.lamb``'s chain with its arguments and defaults, its trust ratio taken on the layer
  plan (:func:`scale_by_trust_ratio`), with the mask optax's LAMB lacks. With Adam's
  direction :math:`a = \hat m / (\sqrt{\hat v + \epsilon_{root}} + \epsilon)`:

  .. math::
    \begin{align*}
      u &\leftarrow a + \lambda w \\
      r_l &= \min\left(\frac{\lVert w_l \rVert_2}{\lVert u_l \rVert_2}, r_{\max}\right)
        \quad (1 \text{ where either norm is } 0) \\
      w &\leftarrow w - \alpha \, r_l u_l
    \end{align*}

  With ``layers="array"`` (the default), nothing stacked, no ``max_ratio`` and no
  ``trust_ratio_mask`` it equals ``optax.lamb`` with the same arguments, ``mask`` included.

  Args:
    learning_rate: :math:`\alpha`, a scalar or an optax schedule.
    b1: Adam's first-moment decay, as in ``optax.lamb``.
    b2: Adam's second-moment decay, as in ``optax.lamb``.
    eps: Adam's :math:`\epsilon` outside the square root, as in ``optax.lamb``.
    eps_root: Adam's :math:`\epsilon_{root}` inside it, as in ``optax.lamb``.
    weight_decay: :math:`\lambda`, decoupled (added to Adam's direction), as in
      ``optax.lamb``.
    mask: the arrays that decay, as in ``optax.lamb``.
    trust_ratio_mask: the arrays that get a trust ratio (``False``: ratio 1); TensorFlow's
      LAMB leaves layer and batch norms out, solo-learn and vissl biases and batch norms.
    layers: what forms a layer, see :func:`scale_by_trust_ratio` (one per array by default).
    stacked: the stacked layers, one ratio per slice, see :func:`scale_by_trust_ratio`.
    axis_name: the mapped axis to sum the squares over, see :func:`scale_by_trust_ratio`.
    max_ratio: :math:`r_{\max}`, an upper clip of the ratio (the paper's :math:`\phi`).
    keep_stats: keep each layer's norms and ratio in the state, see
      :func:`scale_by_trust_ratio`.

  Returns:
    An ``optax.GradientTransformationExtraArgs``; ``update`` needs ``params``.

  Examples:
    >>> import jax.numpy as jnp
    >>> import layerwise_optax as lo
    >>> params = {"blocks": {"w": jnp.array([[1.0, 2.0], [0.1, 0.2]])},  # 2 scanned blocks
    ...           "head": {"b": jnp.zeros(2)}}
    >>> grads = {"blocks": {"w": jnp.array([[0.5, -0.5], [0.5, -0.5]])},
    ...          "head": {"b": jnp.ones(2)}}
    >>> solver = lo.lamb(learning_rate=0.01, stacked="blocks", keep_stats=True)
    >>> updates, state = solver.update(grads, solver.init(params), params)
    >>> ratios = lo.trust_ratio_stats(state).ratios  # block 0, block 1, the zero bias
    >>> print([f"{r:.4f}" for r in ratios])
    ['1.5812', '0.1581', '1.0000']
    >>> print(updates["blocks"]["w"])  # Adam's step (about 1 per entry) times each ratio
    [[-0.01581139  0.01581139]
     [-0.00158114  0.00158114]]

  References:
    You et al., "Large Batch Optimization for Deep Learning: Training BERT in 76 minutes",
    ICLR 2020, arXiv:1904.00962, algorithm 2.
  """
  return optax.chain(
      optax.scale_by_adam(b1=b1, b2=b2, eps=eps, eps_root=eps_root),
      optax.add_decayed_weights(weight_decay, mask=mask),
      scale_by_trust_ratio(max_ratio=max_ratio, mask=trust_ratio_mask, layers=layers,
                           stacked=stacked, axis_name=axis_name, keep_stats=keep_stats),
      optax.scale_by_learning_rate(learning_rate),
  )
