"""A small residual network with batch normalisation for 28x28x1 images (Flax linen).

``ResNet``: a 3x3 stem convolution, three stages of basic blocks (He et al. 2016: two 3x3
convolutions, each followed by batch normalisation, ReLU after the first and after the sum
with the shortcut), global average pooling and a dense classifier. The stages have widths
``widths`` and halve the resolution at the first block of stages two and three
(28 -> 14 -> 7); where a block changes shape its shortcut is a strided 1x1 convolution with
batch normalisation (option B of the paper), elsewhere the identity.

Batch normalisation uses the minibatch statistics in training and the running averages
(``batch_stats``, momentum ``bn_momentum``) in evaluation. Convolutions have no bias (the
normalisation's shift takes its place) and He-normal initialisation,
``N(0, 2 / fan_in)``; the classifier is initialised the same way with a zero bias.

With ``layers="module"`` every convolution, every batch normalisation (scale and shift
together) and the classifier is a layer of its own for the factor of eq. 9.

References:
  He, Zhang, Ren, Sun, "Deep Residual Learning for Image Recognition", CVPR 2016.
  Ioffe, Szegedy, "Batch Normalization", ICML 2015.
"""

from __future__ import annotations

import flax.linen as nn
import jax

he_normal = nn.initializers.variance_scaling(2.0, "fan_in", "normal")


class BasicBlock(nn.Module):
  """conv3x3-BN-ReLU-conv3x3-BN, plus the shortcut, then ReLU."""

  features: int
  stride: int = 1
  bn_momentum: float = 0.9

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    def norm(name):
      return nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum, name=name)

    def conv(kernel, stride, name):
      return nn.Conv(self.features, (kernel, kernel), (stride, stride),
                     padding=[(kernel // 2, kernel // 2)] * 2, use_bias=False,
                     kernel_init=he_normal, name=name)

    y = nn.relu(norm("bn1")(conv(3, self.stride, "conv1")(x)))
    y = norm("bn2")(conv(3, 1, "conv2")(y))
    shortcut = x
    if self.stride != 1 or x.shape[-1] != self.features:
      shortcut = norm("shortcut_bn")(conv(1, self.stride, "shortcut_conv")(x))
    return nn.relu(y + shortcut)


class ResNet(nn.Module):
  """Stem, ``len(widths)`` stages of ``blocks_per_stage`` basic blocks, pooling, classifier."""

  num_classes: int = 10
  widths: tuple[int, ...] = (16, 32, 64)
  blocks_per_stage: int = 1
  bn_momentum: float = 0.9
  input_shape = (28, 28, 1)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    x = nn.Conv(self.widths[0], (3, 3), padding=[(1, 1)] * 2, use_bias=False,
                kernel_init=he_normal, name="stem_conv")(x)
    x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum,
                             name="stem_bn")(x))
    for stage, width in enumerate(self.widths):
      for block in range(self.blocks_per_stage):
        stride = 2 if stage > 0 and block == 0 else 1
        x = BasicBlock(width, stride, self.bn_momentum, name=f"stage{stage + 1}_block{block + 1}")(
            x, train)
    x = x.mean(axis=(1, 2))
    return nn.Dense(self.num_classes, kernel_init=he_normal, name="classifier")(x)
