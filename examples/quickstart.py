"""Quick start: a Flax training loop with layer-specific learning rates (runs in seconds).

Run ``python examples/quickstart.py [--steps N]``.
"""

import argparse

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

import layerwise_optax as lo


class MLP(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Dense(64)(x))
    return nn.Dense(10)(x)


def train(steps: int = 100) -> float:
  """Trains the MLP for ``steps`` steps; returns the final loss."""
  x = jax.random.normal(jax.random.key(0), (256, 32))
  y = jnp.argmax(x[:, :10], axis=-1)
  model = MLP()
  tx = optax.chain(
      optax.add_decayed_weights(5e-4),             # Caffe's order: decay first,
      lo.scale_by_layerwise_lr(),                  # then t_l = t * (1 + log(1 + 1/||g_l||)),
      optax.sgd(0.01, momentum=0.9),               # then h = mu*h + t_l*g.
  )
  # The same optimizer as one alias: lo.sgd(0.01, momentum=0.9, weight_decay=5e-4)
  state = train_state.TrainState.create(apply_fn=model.apply,
                                        params=model.init(jax.random.key(1), x), tx=tx)

  @jax.jit
  def train_step(state):
    def loss_fn(params):
      logits = state.apply_fn(params, x)
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    factors = lo.layer_factors(grads)  # {'params/Dense_0': (norm, factor), ...}
    return state.apply_gradients(grads=grads), loss, factors

  for step in range(steps):
    state, loss, factors = train_step(state)
    if step % 25 == 0:
      print(f"step {step:3d}  loss {loss:.4f}  " + "  ".join(
          f"{name}: x{f.factor:.2f}" for name, f in factors.items()))
  print(f"final loss {loss:.4f}")
  return float(loss)


def steps_count(text: str) -> int:
  """argparse type: a whole number of at least 1."""
  if not text.isdigit() or int(text) < 1:
    raise argparse.ArgumentTypeError(f"{text!r} must be a whole number of at least 1")
  return int(text)


class OneLineErrors(argparse.ArgumentParser):
  def error(self, message: str):
    self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def main(argv: list[str] | None = None) -> float:
  parser = OneLineErrors(prog="python examples/quickstart.py", description=__doc__)
  parser.add_argument("--steps", type=steps_count, default=100, help="training steps (100)")
  return train(parser.parse_args(argv).steps)


if __name__ == "__main__":
  main()
