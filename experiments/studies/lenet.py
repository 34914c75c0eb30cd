"""LeNet runs of the studies: the paper's Table I protocol on the engine.

The LeNet studies (:mod:`.lr_sensitivity`, :mod:`.grouping`) train LeNet under Caffe's
``lenet_solver`` (:data:`experiments.configs.MNIST`: batch 64, momentum 0.9, weight decay
5e-4, the ``inv`` schedule, biases at twice the rate) with the setup of
:mod:`experiments.paper`: test error at the protocol's evaluation points, every iteration's
training loss, gradient norms and factors. A configuration is ``(method, base learning rate
or None for the protocol's, layers)``; every configuration runs seeds ``0..seeds-1`` (the
same initialisation and minibatches for every configuration: paired).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from experiments import configs, engine, paper, records
from experiments.studies import common

PROTOCOL = configs.MNIST


def setup(layers: Any, iters: int) -> engine.Setup:
  """:func:`experiments.paper.make_setup` of the protocol under ``layers`` grouping."""
  return paper.make_setup(argparse.Namespace(protocol=PROTOCOL, batch_size=None, layers=layers,
                                             iters=iters), num_classes=10)


def train_configs(configs_: dict[str, tuple[str, float | None, Any]], args: argparse.Namespace,
                  dataset: Any = None, log: Callable[[str], None] = print) -> dict[str, dict]:
  """``{key: curves}`` of each configuration ``{key: (method, lr, layers)}``, read or trained
  (:func:`.common.run_all`; the runs of a grouping other than ``"module"`` under
  ``--out/LAYERS``): :func:`experiments.paper.curves` stacked over seeds, with ``method``,
  ``eval_iters`` and ``layer_names``."""
  load, dataset = common.images(args, dataset)
  tasks = {key: [records.RunTask(method, paper.base_lr(PROTOCOL, method) if lr is None else lr,
                                 seed, args.iters) for seed in range(args.seeds)]
           for key, (method, lr, _) in configs_.items()}
  done: dict[Any, dict] = {}
  for layers in dict.fromkeys(layers for _, _, layers in configs_.values()):
    out = args.out if layers == "module" else args.out / str(layers)
    keys = [key for key, config in configs_.items() if config[2] == layers]
    got = common.run_all(setup(layers, args.iters), [t for k in keys for t in tasks[k]], out,
                         load, args.workers, dataset, log)
    done.update({(layers, task): record for task, record in got.items()})
  out = {}
  for key, (method, _, layers) in configs_.items():
    runs = [done[(layers, task)] for task in tasks[key]]
    out[key] = paper.stack_runs([paper.curves(PROTOCOL, task, record)
                                 for task, record in zip(tasks[key], runs)])
    out[key].update(method=method, eval_iters=runs[0]["eval_iters"],
                    layer_names=list(runs[0]["factors"]))
  return out
