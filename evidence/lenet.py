"""LeNet on Fashion-MNIST: the paper's methods against tuned baselines, each with its
learning rate tuned on a held-out validation split.

Protocol: Caffe's ``lenet_solver`` (:data:`examples.paper.configs.MNIST`): batch 64,
momentum 0.9 (SGD, NAG), weight decay 5e-4 added to the gradient first, the "inv" schedule
``lr_k = lr (1 + 1e-4 k)^-0.75``, biases at twice the rate; optimizers built by
:func:`examples.paper.methods.make_optimizer`. Only the base learning rate ``lr`` is tuned,
on a grid centred at the protocol's own value (0.01 for every base). "+layer" scales each
layer's step by ``f_l = 1 + ln(1 + 1/||g_l||_2)`` (eq. 9), "+relative" by ``f_l / mean_k
f_k`` (only the redistribution across layers); both are compared with their base method.

Data: the last ``--val-size`` training images are the validation split (selection), the
official test set is reported; error (%) measured at evenly spaced evaluation points
(:mod:`evidence.images`). Run sizes are in ``Workload.sizes`` (results.json "sizes").

Sizes: 300 iterations of batch 64 (19,200 images, about 0.35 epoch of the 55,000 training
images), validation (the last 5,000 training images) and test (10,000) error at iterations
100, 200 and 300, factors at 50 iterations. On a 2-core AMD EPYC VM one single-threaded
worker trains LeNet at 42 it/s when the VM is otherwise idle and evaluates 10,000 images in
0.33 s; two workers side by side, with other processes running, made 16 it/s each and 1.3 s
per 10,000 images. A run then takes 9-25 s, and the protocol's ~11 runs for each of 9
methods 8-20 minutes with ``--workers 2``.

Run: ``python -m evidence.lenet`` (outputs in results/evidence/lenet/).

References:
  Singh et al., "Layer-Specific Adaptive Learning Rates for Deep Networks", ICMLA 2015,
  arXiv:1510.04609, section IV.
  LeCun, Bottou, Bengio, Haffner, "Gradient-based learning applied to document
  recognition", Proc. IEEE 1998 (LeNet); BVLC Caffe's lenet_solver.prototxt.
"""

from __future__ import annotations

import dataclasses

from evidence import images, tuning
from experiments import cli, configs, methods
from experiments import models as harness_models

PROTOCOL = configs.MNIST
ITERS = 300
METHODS = {f"{base}{suffix}": PROTOCOL.solvers[base].base_lr
           for base in ("sgd", "nag", "adagrad") for suffix in ("", "+layer", "+relative")}
MODEL = harness_models.LeNet()


def optimizer(method: str, lr: float, iters: int, params) -> images.Optimizer:
  """``method`` under ``lenet_solver`` with base learning rate ``lr`` (Caffe's order:
  weight decay into the gradient, then the factor, then the update rule)."""
  del iters  # the "inv" schedule does not depend on the run's length
  base, _ = methods.split_method(method)
  solver = dataclasses.replace(PROTOCOL.solvers[base], base_lr=lr)
  lr_mult, decay_mult = harness_models.param_mults(MODEL, params)
  return images.Optimizer(methods.make_optimizer(method, solver, lr_mult, decay_mult),
                          methods.decay_by_mult(solver.weight_decay, decay_mult))


SETUP = images.ImageSetup(model=MODEL, optimizer=optimizer, batch=64, eval_points=3)


def workload(parser, args) -> tuning.Workload:
  setup = SETUP
  return tuning.Workload(
      name="lenet", metric="error (%)", lower_is_better=True, methods=METHODS,
      baseline={m: methods.split_method(m)[0] for m in METHODS},
      train=images.make_train(setup), load_data=images.data_loader(parser, args),
      iters=args.iters, diverged_at=80.0,
      sizes=images.sizes(setup, args, solver="Caffe lenet_solver (inv, momentum 0.9, "
                         "wd 5e-4, bias lr x2)"))


@cli.reports_errors
def main(argv=None) -> None:
  parser = tuning.parser("lenet", __doc__, iters=ITERS)
  images.add_data_options(parser, val_size=5000)
  args = parser.parse_args(argv)
  tuning.main(workload(parser, args), args)


if __name__ == "__main__":
  main()
