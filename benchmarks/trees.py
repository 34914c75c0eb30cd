"""The parameter trees the optimizer step is timed on (shapes only, ``jax.ShapeDtypeStruct``).

Flax-style nesting, so ``layers="module"`` groups each kernel with its bias.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def big_tree(n: int = 4, size: int = 4096, dtype: Any = jnp.float32) -> dict:
  """``n`` arrays of ``size x size``, one layer each."""
  return {f"dense_{i}": {"kernel": jax.ShapeDtypeStruct((size, size), dtype)}
          for i in range(n)}


def resnet50_tree(dtype: Any = jnp.float32) -> dict:
  """ResNet-50 (v1.5, ImageNet): 161 arrays, 25,557,032 parameters."""
  s = lambda *shape: jax.ShapeDtypeStruct(shape, dtype)
  bn = lambda c: {"scale": s(c), "bias": s(c)}
  tree: dict = {"conv_init": {"kernel": s(7, 7, 3, 64)}, "bn_init": bn(64)}
  cin = 64
  for stage, (blocks, width) in enumerate(zip((3, 4, 6, 3), (64, 128, 256, 512))):
    for b in range(blocks):
      blk = {"conv_0": {"kernel": s(1, 1, cin, width)}, "bn_0": bn(width),
             "conv_1": {"kernel": s(3, 3, width, width)}, "bn_1": bn(width),
             "conv_2": {"kernel": s(1, 1, width, 4 * width)}, "bn_2": bn(4 * width)}
      if b == 0:
        blk["proj_conv"] = {"kernel": s(1, 1, cin, 4 * width)}
        blk["proj_bn"] = bn(4 * width)
      tree[f"stage{stage}_block{b}"] = blk
      cin = 4 * width
  tree["head"] = {"kernel": s(2048, 1000), "bias": s(1000)}
  return tree


def transformer_tree(blocks: int = 24, d: int = 384, vocab: int = 8192,
                     dtype: Any = jnp.float32) -> dict:
  """Pre-LN transformer: 16 arrays per block (q, k, v, o, two MLP layers, two layer norms)."""
  s = lambda *shape: jax.ShapeDtypeStruct(shape, dtype)
  dense = lambda i, o: {"kernel": s(i, o), "bias": s(o)}
  ln = lambda: {"scale": s(d), "bias": s(d)}
  tree: dict = {"embed": {"embedding": s(vocab, d)}, "pos_embed": {"embedding": s(512, d)}}
  for b in range(blocks):
    tree[f"block_{b}"] = {
        "ln_0": ln(), "query": dense(d, d), "key": dense(d, d), "value": dense(d, d),
        "out": dense(d, d), "ln_1": ln(), "mlp_in": dense(d, 4 * d), "mlp_out": dense(4 * d, d)}
  tree["ln_final"] = ln()
  return tree


def lenet_tree(dtype: Any = jnp.float32) -> dict:
  """Caffe's MNIST LeNet: 8 arrays, 431,080 parameters."""
  s = lambda *shape: jax.ShapeDtypeStruct(shape, dtype)
  return {"conv1": {"kernel": s(5, 5, 1, 20), "bias": s(20)},
          "conv2": {"kernel": s(5, 5, 20, 50), "bias": s(50)},
          "ip1": {"kernel": s(800, 500), "bias": s(500)},
          "ip2": {"kernel": s(500, 10), "bias": s(10)}}


def trees(quick: bool) -> dict[str, dict]:
  """The benchmarked trees by name; ``quick`` uses tiny ones (and no ResNet-50: its 161
  arrays cost more compile time than a smoke run has; ``--hlo`` still compiles it)."""
  if quick:
    return {"4x256^2 f32": big_tree(4, 256), "transformer x1": transformer_tree(1, 64, 512),
            "LeNet": lenet_tree(), "4x256^2 bf16": big_tree(4, 256, jnp.bfloat16)}
  return {"4x4096^2 f32": big_tree(), "ResNet-50": resnet50_tree(),
          "transformer x24": transformer_tree(), "LeNet": lenet_tree(),
          "4x4096^2 bf16": big_tree(dtype=jnp.bfloat16)}


def materialise(shapes: Any, seed: int, scale: float = 1.0) -> Any:
  """Random normal arrays of the given shapes (on device)."""
  leaves, treedef = jax.tree.flatten(shapes)
  keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
  return jax.tree.unflatten(treedef, [
      (scale * jax.random.normal(k, x.shape, jnp.float32)).astype(x.dtype)
      for k, x in zip(keys, leaves)])


def n_params(tree: Any) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))

