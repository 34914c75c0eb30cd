"""Networks for the full training-step overhead: the paper harness's LeNet and cifar10_full.

The Flax definitions are ``experiments/models.py`` (Caffe's layer shapes, fillers, pooling
and cifar10_full's local response normalisation): 431,080 and 89,578 parameters.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from experiments import models as paper_models

# Batch sizes of the paper's protocols (Caffe's lenet_solver and cifar10_full_solver).
BATCH = {"lenet": 64, "cifar10_full": 100}


def training_setup(name: str, seed: int = 0, batch: int | None = None):
  """(model, params, (x, y)) for ``'lenet'`` (batch 64, 28x28x1) or ``'cifar10_full'`` (100)."""
  model = {"lenet": paper_models.LeNet, "cifar10_full": paper_models.Cifar10Full}[name]()
  shape = (batch or BATCH[name],) + tuple(model.input_shape)
  kx, ky, kp = jax.random.split(jax.random.PRNGKey(seed), 3)
  x = jax.random.normal(kx, shape, jnp.float32)
  y = jax.random.randint(ky, (shape[0],), 0, 10)
  params = model.init(kp, x[:1])["params"]
  return model, params, (x, y)
