"""The paper's networks in Flax, layer for layer as Caffe shipped them.

* ``LeNet`` (``examples/mnist/lenet_train_test.prototxt``): 431,080 parameters.
* ``Cifar10Quick`` and ``Cifar10Full`` (``examples/cifar10/``): 145,578 and 89,578.
* ``AlexNet`` (``models/bvlc_alexnet``, with its two-group convolutions): 60,965,224.

:data:`MODELS` also names the studies' deep ``MLP`` and ``DeepLinear`` network, and the small
batch-norm ResNet (:mod:`experiments.resnet`) and the char transformer
(:mod:`experiments.transformer`) of the tuned comparisons.

Caffe details kept:

* Fillers. Xavier: ``U(-a, a)`` with ``a = sqrt(3 / fan_in)``, ``fan_in = C_in * k_h * k_w``;
  gaussian with the prototxt's std; constant biases.
* Pooling rounds the output size up, ``ceil((H + 2p - k) / s) + 1``; an average-pooling
  window clipped at the border divides by the number of inputs it covers.
* Local response normalisation, ``y = x * (k + alpha / n * sum_{window} x^2)^(-beta)``
  (``k = 1``): across ``n`` neighbouring channels (AlexNet), or within a channel over an
  ``n x n`` zero-padded spatial window with ``alpha / n^2`` (cifar10_full).
* Per-parameter ``lr_mult`` and ``decay_mult`` (:func:`param_mults`): biases learn at twice
  the base rate; cifar10_full's ``ip1`` weights decay 250 times harder; AlexNet's biases
  do not decay.

Layouts are NHWC (Flax) instead of Caffe's NCHW; only the flattening order before the first
fully connected layer differs, a fixed permutation of its inputs.

References:
  Jia et al., "Caffe: Convolutional Architecture for Fast Feature Embedding", 2014; the BVLC
  prototxt files named above.
  Krizhevsky, Sutskever, Hinton, "ImageNet Classification with Deep Convolutional Neural
  Networks", NeurIPS 2012 (LRN, grouped convolutions).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from experiments.resnet import ResNet
from experiments.transformer import CharTransformer

xavier = nn.initializers.variance_scaling(1.0, "fan_in", "uniform")


def gaussian(std: float) -> Callable:
  return nn.initializers.normal(std)


def _ceil_pad(size: int, window: int, stride: int) -> tuple[int, int]:
  """Right padding that makes a VALID pooling produce Caffe's ceil-rounded output size."""
  out = math.ceil((size - window) / stride) + 1
  return (0, max(0, (out - 1) * stride + window - size))


def caffe_pool(x: jax.Array, kind: str, window: int = 3, stride: int = 2) -> jax.Array:
  """Caffe's MAX or AVE pooling (no padding, ceil rounding) on NHWC input."""
  pads = ((0, 0), _ceil_pad(x.shape[1], window, stride), _ceil_pad(x.shape[2], window, stride),
          (0, 0))
  dims, strides = (1, window, window, 1), (1, stride, stride, 1)
  if kind == "max":
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, dims, strides, pads)
  total = jax.lax.reduce_window(x, 0.0, jax.lax.add, dims, strides, pads)
  ones = jnp.ones((1,) + x.shape[1:3] + (1,), x.dtype)
  count = jax.lax.reduce_window(ones, 0.0, jax.lax.add, dims, strides, pads)
  return total / count


def lrn(x: jax.Array, size: int, alpha: float, beta: float, region: str = "across",
        k: float = 1.0) -> jax.Array:
  """Caffe's LRN layer on NHWC input (``region`` 'across' or 'within' channels)."""
  half = (size - 1) // 2
  sq = jnp.square(x)
  if region == "across":
    window, pads, scale = (1, 1, 1, size), ((0, 0),) * 3 + ((half, size - 1 - half),), size
  else:
    window = (1, size, size, 1)
    pads = ((0, 0), (half, size - 1 - half), (half, size - 1 - half), (0, 0))
    scale = size * size
  total = jax.lax.reduce_window(sq, 0.0, jax.lax.add, window, (1, 1, 1, 1), pads)
  return x * (k + alpha / scale * total) ** (-beta)


def _conv(features, kernel, std=None, stride=1, pad=0, groups=1, bias=0.0, name=None):
  return nn.Conv(features, (kernel, kernel), (stride, stride), padding=[(pad, pad)] * 2,
                 feature_group_count=groups, name=name,
                 kernel_init=xavier if std is None else gaussian(std),
                 bias_init=nn.initializers.constant(bias))


def _dense(features, std=None, bias=0.0, name=None):
  return nn.Dense(features, name=name, kernel_init=xavier if std is None else gaussian(std),
                  bias_init=nn.initializers.constant(bias))


def _flatten(x):
  return x.reshape(x.shape[0], -1)


class LeNet(nn.Module):
  """conv1 20@5x5 - max 2/2 - conv2 50@5x5 - max 2/2 - ip1 500 - ReLU - ip2 (Xavier)."""

  num_classes: int = 10
  input_shape = (28, 28, 1)
  mults = {"conv1": (2, 1), "conv2": (2, 1), "ip1": (2, 1), "ip2": (2, 1)}

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = _conv(20, 5, name="conv1")(x)
    x = caffe_pool(x, "max", 2, 2)
    x = _conv(50, 5, name="conv2")(x)
    x = caffe_pool(x, "max", 2, 2)
    x = nn.relu(_dense(500, name="ip1")(_flatten(x)))
    return _dense(self.num_classes, name="ip2")(x)


class Cifar10Quick(nn.Module):
  """cifar10_quick: three 5x5 convs (max, ave, ave pools), ip1 64, ip2 10."""

  num_classes: int = 10
  input_shape = (32, 32, 3)
  mults = {n: (2, 1) for n in ("conv1", "conv2", "conv3", "ip1", "ip2")}

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.relu(caffe_pool(_conv(32, 5, 1e-4, pad=2, name="conv1")(x), "max"))
    x = caffe_pool(nn.relu(_conv(32, 5, 0.01, pad=2, name="conv2")(x)), "ave")
    x = caffe_pool(nn.relu(_conv(64, 5, 0.01, pad=2, name="conv3")(x)), "ave")
    x = _dense(64, 0.1, name="ip1")(_flatten(x))
    return _dense(self.num_classes, 0.1, name="ip2")(x)


class Cifar10Full(nn.Module):
  """cifar10_full: cifar10_quick's convs with within-channel LRN and a single ip1 10."""

  num_classes: int = 10
  input_shape = (32, 32, 3)
  # ip1: weights decay_mult 250, bias decay_mult 0; conv3's bias has lr_mult 1.
  mults = {"conv1": (2, 1), "conv2": (2, 1), "conv3": (1, 1), "ip1": (2, 0, 250)}

  @nn.compact
  def __call__(self, x, train: bool = False):
    def norm(x):
      return lrn(x, 3, 5e-5, 0.75, "within")
    x = norm(nn.relu(caffe_pool(_conv(32, 5, 1e-4, pad=2, name="conv1")(x), "max")))
    x = norm(caffe_pool(nn.relu(_conv(32, 5, 0.01, pad=2, name="conv2")(x)), "ave"))
    x = caffe_pool(nn.relu(_conv(64, 5, 0.01, pad=2, name="conv3")(x)), "ave")
    return _dense(self.num_classes, 0.01, name="ip1")(_flatten(x))


class AlexNet(nn.Module):
  """bvlc_alexnet: 5 convs (conv2/4/5 in two groups), LRN after conv1/2, fc6/fc7 dropout."""

  num_classes: int = 1000
  dropout: float = 0.5
  fc_width: int = 4096  # fc6/fc7; smaller only to keep tests light
  input_shape = (227, 227, 3)
  mults = {n: (2, 0) for n in ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7",
                                "fc8")}

  @nn.compact
  def __call__(self, x, train: bool = False):
    def norm(x):
      return lrn(x, 5, 1e-4, 0.75, "across")
    x = caffe_pool(norm(nn.relu(_conv(96, 11, 0.01, stride=4, name="conv1")(x))), "max")
    x = _conv(256, 5, 0.01, pad=2, groups=2, bias=0.1, name="conv2")(x)
    x = caffe_pool(norm(nn.relu(x)), "max")
    x = nn.relu(_conv(384, 3, 0.01, pad=1, name="conv3")(x))
    x = nn.relu(_conv(384, 3, 0.01, pad=1, groups=2, bias=0.1, name="conv4")(x))
    x = nn.relu(_conv(256, 3, 0.01, pad=1, groups=2, bias=0.1, name="conv5")(x))
    x = _flatten(caffe_pool(x, "max"))
    for name in ("fc6", "fc7"):
      x = nn.relu(_dense(self.fc_width, 0.005, bias=0.1, name=name)(x))
      x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return _dense(self.num_classes, 0.01, name="fc8")(x)



ACTIVATIONS = {"sigmoid": nn.sigmoid, "tanh": jnp.tanh}


class MLP(nn.Module):
  """``784 -> width x depth -> num_classes``: ``depth`` hidden layers of ``activation`` units
  (``dense0`` ... ``dense{depth}``), Caffe's Xavier fill with its bound times ``init_gain``
  (``U(-a, a)``, ``a = init_gain * sqrt(3 / fan_in)``), zero biases (Glorot & Bengio 2010:
  the deep sigmoid net whose gradients vanish towards the input)."""

  num_classes: int = 10
  depth: int = 10
  width: int = 128
  activation: str = "sigmoid"
  init_gain: float = 1.0
  input_shape = (28, 28, 1)

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train
    fill = nn.initializers.variance_scaling(self.init_gain ** 2, "fan_in", "uniform")
    x = _flatten(x)
    for i in range(self.depth):
      x = ACTIVATIONS[self.activation](nn.Dense(self.width, kernel_init=fill,
                                                name=f"dense{i}")(x))
    return nn.Dense(self.num_classes, kernel_init=fill, name=f"dense{self.depth}")(x)


class DeepLinear(nn.Module):
  """``x -> W_D ... W_1 x``: ``depth`` square bias-free layers ``layer0`` ... (each one array,
  ``kernel = W_i^T``) with entries ``N(0, (init_scale / sqrt(width))^2)``, so each layer's
  gain is about ``init_scale`` (Saxe et al. 2014: near the origin, a saddle of order
  ``depth``)."""

  width: int = 16
  depth: int = 6
  init_scale: float = 0.3
  num_classes: int = 0  # unused: the output has ``width`` values

  @property
  def input_shape(self) -> tuple[int]:
    return (self.width,)

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train
    fill = nn.initializers.normal(self.init_scale / math.sqrt(self.width))
    for i in range(self.depth):
      x = nn.Dense(self.width, use_bias=False, kernel_init=fill, name=f"layer{i}")(x)
    return x


# Model name -> its Flax module class. One entry adds a model; every model is called
# ``model.apply(variables, x, train=...)``.
MODELS: dict[str, type[nn.Module]] = {
    "lenet": LeNet, "cifar10_quick": Cifar10Quick, "cifar10_full": Cifar10Full,
    "alexnet": AlexNet, "resnet": ResNet, "char_transformer": CharTransformer, "mlp": MLP,
    "deep_linear": DeepLinear}


def param_mults(model: nn.Module, params: Any) -> tuple[Any, Any]:
  """Trees of Caffe's ``lr_mult`` and ``decay_mult`` for ``params`` (same structure).

  ``model.mults[layer]`` is ``(bias lr_mult, bias decay_mult[, weight decay_mult])``; weights
  always have ``lr_mult`` 1 and, unless given, ``decay_mult`` 1.
  """
  def pick(path, _):
    layer, kind = path[-2].key, path[-1].key
    spec = model.mults[layer]
    if kind == "bias":
      return float(spec[0]), float(spec[1])
    return 1.0, float(spec[2]) if len(spec) > 2 else 1.0

  pairs = jax.tree_util.tree_map_with_path(pick, params)
  is_pair = lambda x: isinstance(x, tuple)
  return (jax.tree.map(lambda p: p[0], pairs, is_leaf=is_pair),
          jax.tree.map(lambda p: p[1], pairs, is_leaf=is_pair))


def count_params(params: Any) -> int:
  return sum(math.prod(x.shape) for x in jax.tree.leaves(params))


def abstract_params(model: nn.Module, batch: int = 1) -> Any:
  """Parameter shapes without allocating them (``jax.eval_shape``)."""
  x = jax.ShapeDtypeStruct((batch,) + model.input_shape, jnp.float32)
  return jax.eval_shape(lambda x: model.init(jax.random.key(0), x), x)["params"]
