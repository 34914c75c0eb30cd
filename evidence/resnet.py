"""A small ResNet with batch normalisation on Fashion-MNIST: the layer methods against tuned
SGD/NAG and optax's LARS, each with its learning rate tuned on a held-out validation split.

Model: :class:`evidence.models.ResNet` (stem, three stages of one basic block each, widths
``--widths``, batch normalisation, global average pooling). Every method has the same
schedule, batch, iterations and weight decay:

* schedule ``lr_k = lr * s_k``: linear warm-up from 0 over the first 5% of the iterations,
  then cosine decay to 0 at the last (``optax.warmup_cosine_decay_schedule``);
* weight decay 5e-4 on every parameter (batch-normalisation scales and shifts included),
  added to the gradient before anything else, as in the Caffe protocol of the LeNet
  workload; the factor of eq. 9 is taken of this decayed gradient.
* "sgd", "nag": momentum 0.9 (optax's trace), built by
  :func:`examples.paper.methods.make_optimizer` at unit learning rate and scaled by
  ``lr * s_k`` afterwards (the same as ``optax.sgd(schedule, 0.9)``, whose learning rate also
  multiplies the momentum trace); "+layer" scales each layer's gradient by
  ``f_l = 1 + ln(1 + 1/||g_l||_2)`` before the momentum, "+relative" by ``f_l / mean_k f_k``.
* "optax.lars": ``optax.lars(lr * s_k)`` with its defaults otherwise (trust coefficient
  1e-3, momentum 0.9, its own weight decay 0 because the decay is already in the gradient,
  which also puts it inside the trust ratio ``||w|| / ||g + wd w||`` as in You et al.).

Learning-rate grids are centred at 0.1 for SGD and NAG (with or without a factor) and at 10
for LARS, whose trust ratio scales the step by 1e-3 ||w|| / ||g|| (single 600-iteration
probes on the validation split: LARS at 1 reached 36% error, at 10 13%; SGD at 0.1 14%).

Baselines for the paired differences: X+layer and X+relative against X, optax.lars against
sgd. Error (%) on the validation split selects, on the test set is reported
(:mod:`evidence.images`). Run sizes are in ``Workload.sizes`` (results.json "sizes").

Sizes: widths 8/16/32 (19,810 parameters, 19 layers), 300 iterations of batch 64 (19,200
images, about 0.35 epoch of the 55,000 training images), validation (the last 5,000 training
images) and test (10,000) error at iterations 150 and 300, factors at 50 iterations. On a
2-core AMD EPYC VM one single-threaded worker trains it at 47 it/s when the VM is otherwise
idle (widths 16/32/64 measured at half the speed of 8/16/32, 13.5 against 27 it/s) and
evaluates 10,000 images in 0.93 s; two workers side by side, with other processes running,
made 17 it/s each and 3-3.7 s per 10,000 images. A run then takes 8-28 s, and the
protocol's ~11 runs for each of 7 methods 6-18 minutes with ``--workers 2``.

Run: ``python -m evidence.resnet`` (outputs in results/evidence/resnet/).

References:
  He, Zhang, Ren, Sun, "Deep Residual Learning for Image Recognition", CVPR 2016.
  You, Gitman, Ginsburg, "Large Batch Training of Convolutional Networks", arXiv:1708.03888
  (LARS).
  Loshchilov, Hutter, "SGDR: Stochastic Gradient Descent with Warm Restarts", ICLR 2017
  (cosine decay).
  Singh et al., "Layer-Specific Adaptive Learning Rates for Deep Networks", ICMLA 2015,
  arXiv:1510.04609, eq. 9.
"""

from __future__ import annotations

import jax
import optax

from evidence import images, tuning
from experiments import cli, configs, methods
from experiments.resnet import ResNet

ITERS = 300
WEIGHT_DECAY = 5e-4
MOMENTUM = 0.9
WARMUP = 0.05  # fraction of the iterations
METHODS = {"sgd": 0.1, "sgd+layer": 0.1, "sgd+relative": 0.1, "nag": 0.1, "nag+layer": 0.1,
           "nag+relative": 0.1, "optax.lars": 10.0}
BASELINE = {"optax.lars": "sgd"} | {m: m.partition("+")[0] for m in METHODS if m != "optax.lars"}


def schedule(lr, iters: int) -> optax.Schedule:
  """``lr`` times a linear warm-up over the first ``WARMUP`` of ``iters`` and a cosine decay
  to 0 at the end (``lr`` may be a traced scalar)."""
  warmup = max(1, round(WARMUP * iters))
  unit = optax.warmup_cosine_decay_schedule(0.0, 1.0, warmup, max(iters, warmup + 1))
  return lambda k: lr * unit(k)


def optimizer(method: str, lr: float, iters: int, params) -> images.Optimizer:
  """``method`` with learning rate ``lr`` under the workload's schedule and weight decay."""
  ones = jax.tree.map(lambda _: 1.0, params)
  decay = methods.decay_by_mult(WEIGHT_DECAY, ones)
  if method == "optax.lars":
    return images.Optimizer(optax.chain(decay, optax.lars(schedule(lr, iters))), decay)
  unit = configs.Solver(1.0, configs.Schedule("fixed"), MOMENTUM, WEIGHT_DECAY)
  tx = optax.chain(methods.make_optimizer(method, unit, ones, ones),
                   optax.scale_by_schedule(schedule(lr, iters)))
  return images.Optimizer(tx, decay)


def setup(widths: tuple[int, ...], batch: int) -> images.ImageSetup:
  return images.ImageSetup(model=ResNet(widths=widths), optimizer=optimizer, batch=batch,
                           eval_points=2)


def workload(parser, args) -> tuning.Workload:
  run_setup = setup(tuple(args.widths), args.batch)
  return tuning.Workload(
      name="resnet", metric="error (%)", lower_is_better=True, methods=METHODS,
      baseline=BASELINE, train=images.make_train(run_setup),
      load_data=images.data_loader(parser, args), iters=args.iters, diverged_at=80.0,
      sizes=images.sizes(run_setup, args, widths=list(args.widths), blocks_per_stage=1,
                         schedule=f"linear warm-up {WARMUP:.0%}, cosine to 0",
                         weight_decay=WEIGHT_DECAY, momentum=MOMENTUM))


@cli.reports_errors
def main(argv=None) -> None:
  parser = tuning.parser("resnet", __doc__, iters=ITERS)
  images.add_data_options(parser, val_size=5000)
  parser.add_argument("--widths", type=cli.positive_ints, default=(8, 16, 32),
                      help="channels of the three stages")
  parser.add_argument("--batch", type=cli.positive_int, default=64)
  args = parser.parse_args(argv)
  if len(args.widths) != 3:
    parser.error("--widths takes three numbers, e.g. 8,16,32")
  tuning.main(workload(parser, args), args)


if __name__ == "__main__":
  main()
