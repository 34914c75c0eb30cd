"""The paper's training protocols, with Caffe's solver settings.

MNIST protocol (``lenet_solver.prototxt``): batch 64, input / 256, base_lr 0.01, momentum 0.9,
weight decay 5e-4, "inv" policy ``lr_k = base_lr * (1 + gamma * k) ** -power`` with
``gamma = 1e-4``, ``power = 0.75``; the paper reports the first 2,000 iterations (we evaluate
on the full test set at 100, 200, 500, 1000, 2000). Caffe ships no LeNet Nesterov, AdaGrad or
Adam solver; this harness keeps the LeNet solver and changes only the update rule:

* NAG: the same lr, momentum 0.9 and schedule as SGD (a paired comparison with SGD; Caffe's
  autoencoder example uses momentum 0.95 for a different network).
* AdaGrad: base_lr 0.01, no momentum, wd 5e-4, as in Caffe's AdaGrad example, with the same
  "inv" decay; delta 1e-8.
* Adam (extra pair): ``lenet_solver_adam.prototxt``'s base_lr 1e-3, betas 0.9/0.999,
  delta 1e-8, fixed lr; wd 5e-4 as in the other methods.

CIFAR-10 protocols (``cifar10_quick_solver``, ``cifar10_full_solver``): batch 100, mean
image subtracted; multistep schedules. AlexNet: batch 256, lr 0.01 / 10 every 100k.

References:
  Singh et al., ICMLA 2015, arXiv:1510.04609, section IV; BVLC Caffe solver prototxts.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Schedule:
  """Caffe's lr policies: 'fixed', 'inv' (gamma, power), 'multistep' (gamma, steps)."""

  policy: str = "fixed"
  gamma: float = 0.0
  power: float = 0.0
  steps: tuple[int, ...] = ()


@dataclasses.dataclass(frozen=True)
class Solver:
  base_lr: float
  schedule: Schedule
  momentum: float = 0.0
  weight_decay: float = 0.0


@dataclasses.dataclass(frozen=True)
class Protocol:
  name: str
  model: str
  batch_size: int
  eval_iters: tuple[int, ...]
  solvers: dict[str, Solver]  # base method ("sgd", "nag", "adagrad", "adam") -> settings
  datasets: tuple[str, ...]  # the datasets it is defined for


def solvers(base_lr: float, schedule: Schedule, weight_decay: float,
            adam_lr: float) -> dict[str, Solver]:
  """One protocol's solvers: SGD and NAG with momentum 0.9, AdaGrad without, all under
  ``schedule``; Adam at a fixed ``adam_lr``; the same weight decay for all."""
  return {
      "sgd": Solver(base_lr, schedule, momentum=0.9, weight_decay=weight_decay),
      "nag": Solver(base_lr, schedule, momentum=0.9, weight_decay=weight_decay),
      "adagrad": Solver(base_lr, schedule, weight_decay=weight_decay),
      "adam": Solver(adam_lr, Schedule("fixed"), weight_decay=weight_decay),
  }


MNIST = Protocol(
    name="mnist", model="lenet", batch_size=64,
    eval_iters=(100, 200, 500, 1000, 2000),
    solvers=solvers(0.01, Schedule("inv", gamma=1e-4, power=0.75), 5e-4, adam_lr=1e-3),
    datasets=("fashion_mnist", "mnist"))

CIFAR10_QUICK = Protocol(
    name="cifar10_quick", model="cifar10_quick", batch_size=100,
    eval_iters=(500, 1000, 2000, 4000, 5000),
    solvers=solvers(1e-3, Schedule("multistep", gamma=0.1, steps=(4000,)), 4e-3,
                    adam_lr=1e-3),
    datasets=("cifar10",))

CIFAR10_FULL = Protocol(
    name="cifar10_full", model="cifar10_full", batch_size=100,
    eval_iters=(5000, 10000, 20000, 40000, 60000, 65000, 70000),
    solvers=solvers(1e-3, Schedule("multistep", gamma=0.1, steps=(60000, 65000)), 4e-3,
                    adam_lr=1e-3),
    datasets=("cifar10",))

ALEXNET = Protocol(
    name="alexnet", model="alexnet", batch_size=256,
    eval_iters=(50000, 100000, 200000, 300000, 450000),
    solvers=solvers(0.01, Schedule("multistep", gamma=0.1,
                                   steps=(100000, 200000, 300000, 400000)), 5e-4,
                    adam_lr=1e-4),
    datasets=("imagenet",))

PROTOCOLS = {p.name: p for p in (MNIST, CIFAR10_QUICK, CIFAR10_FULL, ALEXNET)}

# Dataset -> its default protocol.
DEFAULT_PROTOCOL = {"fashion_mnist": "mnist", "mnist": "mnist", "cifar10": "cifar10_full"}

METHODS = ("sgd", "sgd+layer", "nag", "nag+layer", "adagrad", "adagrad+layer")
EXTRA_METHODS = ("adam", "adam+layer")
