"""LeNet with layer-specific learning rates on a device mesh: data parallel and FSDP.

Trains the paper's LeNet on Fashion-MNIST (the MNIST protocol of ``examples/paper``: batch 64,
``sgd+layer`` by default) once on one device and once on an N-device mesh with the same
initial parameters and the same global batches, and prints both loss curves and their
largest difference. The optimizer code is the same in both runs: under ``jax.jit`` with
sharded arrays every norm is the whole layer's, so no ``axis_name`` is needed.

* ``--mode dp``: parameters and optimizer state replicated, each batch split over devices.
* ``--mode fsdp``: each array split along its largest axis divisible by N (arrays with none
  stay replicated), the optimizer state like its parameter, and the batch split as in dp.
  The step all-gathers the parameters for the forward and backward passes
  (``with_sharding_constraint``); the optimizer update, state included, runs on each
  device's slice.

Without N accelerators, ``--devices N`` simulates N CPU devices (it sets
``XLA_FLAGS=--xla_force_host_platform_device_count=N`` before jax starts)::

  python examples/train_mesh.py --devices 8 --mode both --iters 100 [--x64]

In float32 the curves agree to about 1e-6 for the first ~70 iterations, then drift apart
slowly (2e-3 relative by iteration 100 on 8 devices, measured): the mesh sums the gradient
over devices in another order, and training amplifies last-bit differences. ``--x64``
trains in float64, where such differences stay far smaller.

Exits with status 1 if a mesh loss differs from one device's by more than ``--tol``
(relative), or if a parameter or optimizer-state array lost its sharding.

Needs Fashion-MNIST in /usr/share/datasets/fashion-mnist (Debian's dataset-fashion-mnist)
or ``--data-dir`` (see ``examples/paper/data.py``); ``--synthetic`` uses random images.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the examples/paper harness


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--devices", type=int, default=8, help="mesh size N (simulated on CPU)")
  p.add_argument("--mode", choices=("dp", "fsdp", "both"), default="both")
  p.add_argument("--iters", type=int, default=100)
  p.add_argument("--method", default="sgd+layer", help="a method of examples/paper")
  p.add_argument("--batch", type=int, default=None,
                 help="global batch size (default: the MNIST protocol's 64); split over the "
                      "devices, so a multiple of N")
  p.add_argument("--synthetic", action="store_true",
                 help="random 28x28 images and labels instead of Fashion-MNIST (no files "
                      "needed; for tests)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--data-dir", default=None)
  p.add_argument("--print-every", type=int, default=10)
  p.add_argument("--x64", action="store_true",
                 help="train in float64, where rounding differences stay far below the "
                      "method's effects")
  p.add_argument("--tol", type=float, default=None,
                 help="exit with status 1 if a loss differs from one device's by more than "
                      "this, relatively (default 1e-10 with --x64, 1e-2 in float32)")
  return p.parse_args(argv)


def simulate_devices(n: int) -> None:
  """Asks XLA for n host devices; only takes effect before jax is imported."""
  flags = os.environ.get("XLA_FLAGS", "")
  if "xla_force_host_platform_device_count" not in flags:
    os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={n}".strip()


def main(argv=None):
  args = parse_args(argv)
  simulate_devices(args.devices)

  import jax
  import numpy as np

  jax.config.update("jax_enable_x64", args.x64)
  dtype = np.float64 if args.x64 else np.float32
  import optax
  from jax.sharding import AxisType, Mesh, NamedSharding
  from jax.sharding import PartitionSpec as P
  from paper import configs, data, methods, models, train

  devices = jax.devices()
  if len(devices) < args.devices:  # e.g. one GPU: use the simulated CPU devices
    devices = jax.devices("cpu")
  if len(devices) < args.devices:
    sys.exit(f"asked for {args.devices} devices, found {len(devices)}: set XLA_FLAGS before "
             "jax is imported, or pass a smaller --devices")
  devices = devices[: args.devices]
  n = len(devices)
  protocol = configs.MNIST
  batch = args.batch or protocol.batch_size
  if batch % n:
    sys.exit(f"the global batch {batch} does not split over {n} devices")

  if args.synthetic:
    rng = np.random.default_rng(args.seed)
    images = rng.integers(0, 256, (max(1024, batch), 28, 28, 1), dtype=np.uint8)
    labels = rng.integers(0, 10, len(images)).astype(np.int32)
  else:
    ds = data.load_dataset("fashion_mnist", args.data_dir)
    images, labels = ds.train_images, ds.train_labels
  train_x = data.preprocess(images).astype(dtype)
  train_y = labels.astype(np.int32)
  order = train.make_order(args.seed, len(train_x), args.iters, batch)

  model = models.LeNet()
  # On the host: each run places (and donates) its own copy.
  params0 = jax.device_get(model.init(jax.random.key(args.seed), train_x[:1])["params"])
  params0 = jax.tree.map(lambda a: a.astype(dtype), params0)
  lr_mult, decay_mult = models.param_mults(model, params0)
  base = methods.split_method(args.method)[0]
  tx = methods.make_optimizer(args.method, protocol.solvers[base], lr_mult, decay_mult)

  def make_step(gather):
    def train_step(params, opt_state, x, y):
      def loss_fn(p):
        return train.cross_entropy(model.apply({"params": gather(p)}, x), y)
      loss, grads = jax.value_and_grad(loss_fn)(params)
      updates, opt_state = tx.update(grads, opt_state, params)
      return optax.apply_updates(params, updates), opt_state, loss
    return jax.jit(train_step, donate_argnums=(0, 1))

  def run(params, put_batch, gather=lambda p: p):
    """Trains from ``params`` (already placed); returns the losses and final arrays."""
    opt_state = tx.init(params)
    step = make_step(gather)
    losses, start = [], time.perf_counter()
    # Synchronous steps, inputs ready first, on simulated CPU devices only: they share one
    # thread pool, and a collective whose participants wait on queued work there can stall.
    sync = jax.block_until_ready if devices[0].platform == "cpu" else (lambda x: x)
    for idx in order:
      x, y = sync(put_batch(train_x[idx], train_y[idx]))
      params, opt_state, loss = step(params, opt_state, x, y)
      losses.append(sync(loss))
    losses = np.asarray(jax.device_get(losses))
    return losses, params, opt_state, time.perf_counter() - start

  one = devices[0]
  ref_losses, ref_params, _, secs = run(jax.device_put(params0, one),
                                        lambda x, y: jax.device_put((x, y), one))
  print(f"1 device: {args.iters} iterations of {args.method}, global batch {batch} "
        f"({batch // n} per device on the mesh), {'float64' if args.x64 else 'float32'}, "
        f"{'synthetic data' if args.synthetic else 'Fashion-MNIST'}, {secs:.1f} s")

  mesh = Mesh(np.array(devices), ("data",), axis_types=(AxisType.Auto,))
  batch_sharding = NamedSharding(mesh, P("data"))

  def fsdp_spec(shape):
    for axis in sorted(range(len(shape)), key=lambda a: -shape[a]):
      if shape[axis] % n == 0:
        return P(*[("data" if a == axis else None) for a in range(len(shape))])
    return P()

  replicated = NamedSharding(mesh, P())
  gather_all = lambda p: jax.lax.with_sharding_constraint(p, replicated)
  modes = ("dp", "fsdp") if args.mode == "both" else (args.mode,)
  worst, lost = 0.0, []
  for mode in modes:
    specs = jax.tree.map(lambda x, m=mode: fsdp_spec(x.shape) if m == "fsdp" else P(), params0)
    shardings = jax.tree.map(lambda s: NamedSharding(mesh, s), specs)
    losses, params, opt_state, secs = run(
        jax.device_put(params0, shardings),
        lambda x, y: jax.device_put((x, y), batch_sharding),
        gather_all if mode == "fsdp" else (lambda p: p))

    kept = all(p.sharding.is_equivalent_to(s, p.ndim)
               for p, s in zip(jax.tree.leaves(params), jax.tree.leaves(shardings)))
    moments = optax.tree_utils.tree_map_params(
        tx, lambda m, s: m.sharding.is_equivalent_to(s, m.ndim), opt_state, shardings,
        transform_non_params=lambda _: True)
    split = [f"{'/'.join(str(k.key) for k in path)} {spec}"
             for path, spec in jax.tree_util.tree_leaves_with_path(
                 specs, is_leaf=lambda s: isinstance(s, P)) if spec != P()]
    sizes = [(x.size, s != P()) for x, s in zip(jax.tree.leaves(params0), jax.tree.leaves(
        specs, is_leaf=lambda s: isinstance(s, P)))]
    frac = sum(size for size, is_split in sizes if is_split) / sum(size for size, _ in sizes)
    diff = np.abs(losses - ref_losses)
    param_diff = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
                     for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ref_params)))
    worst = max(worst, float(np.max(diff / ref_losses)))
    if not (kept and all(jax.tree.leaves(moments))):
      lost.append(mode)
    print(f"\n{mode} on {n} devices ({secs:.1f} s); split arrays: {', '.join(split) or 'none'}"
          f" ({frac:.0%} of the parameters)")
    print(f"  parameter shardings kept: {kept}; optimizer state sharded like its parameter: "
          f"{all(jax.tree.leaves(moments))}")
    print("   iter   loss (1 device)   loss (mesh)    |difference|")
    for k in sorted(set(range(0, args.iters, args.print_every)) | {args.iters - 1}):
      print(f"  {k + 1:5d}   {ref_losses[k]:.7f}       {losses[k]:.7f}     {diff[k]:.2e}")
    print(f"  max |loss difference| over {args.iters} iterations: {diff.max():.2e} "
          f"(relative {np.max(diff / ref_losses):.2e}); max |parameter difference| at the "
          f"end: {param_diff:.2e}")
  if not args.x64:
    print("\nfloat32: the mesh sums the gradient over devices in another order, which changes "
          "last bits; training amplifies such differences over the iterations (--x64 keeps "
          "them far smaller).")
  tol = args.tol if args.tol is not None else (1e-10 if args.x64 else 1e-2)
  if lost:
    sys.exit(f"{', '.join(lost)}: a parameter or optimizer-state array lost its sharding")
  if worst > tol:
    sys.exit(f"a mesh loss differs from one device's by {worst:.2e} (relative) > {tol:g}")


if __name__ == "__main__":
  main()
