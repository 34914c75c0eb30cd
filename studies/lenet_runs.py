"""LeNet runs for the studies, from the paper harness: trained, or reused from the main run.

The studies that train LeNet (lr_sensitivity, grouping) use the harness's MNIST protocol
(Caffe's ``lenet_solver``) on Fashion-MNIST. A configuration ``(method, base_lr, layers)``
that the main comparison (``python -m examples.reproduce``) already ran is read from its
``runs/*.npz`` and cut to the study's length; the rest are trained through the worker pool
of :mod:`experiments.pool`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path
from typing import Any

from experiments import configs, data, methods, pool, train

PROTOCOL = configs.MNIST


def with_base_lr(protocol: configs.Protocol, method: str,
                 base_lr: float | None) -> configs.Protocol:
  """``protocol`` with the base learning rate of ``method``'s solver replaced (schedule,
  momentum and weight decay stay the protocol's)."""
  if base_lr is None:
    return protocol
  base, _ = methods.split_method(method)
  solver = dataclasses.replace(protocol.solvers[base], base_lr=base_lr)
  return dataclasses.replace(protocol, solvers={**protocol.solvers, base: solver})


def load_main_runs(folder: Path | None, protocol: configs.Protocol, method: str,
                   base_lr: float | None, layers: Any, seeds: int, iters: int) -> dict | None:
  """Seeds ``0..seeds-1`` of ``method`` from an ``examples.reproduce`` output folder, cut to
  ``iters``.

  Only runs of the protocol's own learning rate with ``layers="module"`` qualify (what
  ``examples.reproduce`` records by default; its ``results.json`` config is checked when
  present). A run of more iterations is cut: the schedule does not depend on the run's
  length, so its first ``iters`` iterations are those of a shorter run. ``None`` if anything
  is missing.
  """
  base, _ = methods.split_method(method)
  if folder is None or layers != "module" or (
      base_lr is not None and base_lr != protocol.solvers[base].base_lr):
    return None
  folder = Path(folder)
  config = folder / "results.json"
  if config.exists():
    cfg = json.loads(config.read_text()).get("config", {})
    if cfg.get("layers", "module") != "module" or cfg.get("protocol", protocol.name) != \
        protocol.name:
      return None
  runs = []
  wanted = list(train.eval_points(protocol, iters))
  for seed in range(seeds):
    path = folder / "runs" / f"{method}_seed{seed}.npz"
    if not path.exists():
      return None
    run = train.load_run(path)
    stored = list(train.eval_points(protocol, len(run["train_loss"])))
    if len(run["train_loss"]) < iters or not set(wanted) <= set(stored) or \
        len(run["test_error"]) != len(stored):
      return None
    keep = [stored.index(k) for k in wanted]
    run["test_error"] = run["test_error"][keep]
    for k in ("train_loss", "grad_norm", "factor", "effective_lr"):
      run[k] = run[k][:iters]
    runs.append(run)
  out = train.stack_runs(runs)
  out.update(method=method, iters=iters, eval_iters=wanted,
             layer_names=list(train.layer_names(protocol, layers)), source=str(folder / "runs"))
  return out


def train_runs(protocol: configs.Protocol, dataset: data.Dataset | None, configs_: dict,
               seeds: int, iters: int, workers: int = 1, reuse: Path | None = None,
               log=print) -> dict:
  """Each configuration ``{key: (method, base_lr or None, layers)}`` for seeds
  ``0..seeds-1``: ``{key: curves}`` with a leading seed axis (``test_error`` at
  ``eval_iters``, ``train_loss``, ``grad_norm``, ``factor``, ``effective_lr``), plus
  ``source``: the reused folder or ``"trained"``.

  Configurations found in ``reuse`` (see :func:`load_main_runs`) are loaded, not trained.
  The others run in ``workers`` processes (each loading Fashion-MNIST), or here on
  ``dataset`` (loaded when ``None``) with one worker.
  """
  out, specs, keys = {}, [], {}
  for key, (method, base_lr, layers) in configs_.items():
    loaded = load_main_runs(reuse, protocol, method, base_lr, layers, seeds, iters)
    if loaded is not None:
      out[key] = loaded
      log(f"{key}: reused {loaded['source']} (seeds 0-{seeds - 1}, {iters} iterations)")
      continue
    for seed in range(seeds):
      spec = train.RunSpec(with_base_lr(protocol, method, base_lr), method, seed, iters, layers)
      specs.append(spec)
      keys[id(spec)] = key  # a protocol (with its solver dict) is not hashable
  done: dict = {key: {} for key in keys.values()}

  def collect(spec: train.RunSpec, run: dict) -> None:
    key = keys[id(spec)]
    done[key][spec.seed] = run
    log(f"{key} seed {spec.seed}: test error {100 * run['test_error'][-1]:.2f}% "
        f"({run['wall_s']:.0f} s)")

  pool.run_tasks(train.run_spec, specs, workers,
                 functools.partial(data.load_dataset, "fashion_mnist"), dataset, collect)
  for key, runs in done.items():
    runs = [runs[s] for s in range(seeds)]
    out[key] = train.stack_runs(runs)
    out[key].update(method=configs_[key][0], iters=iters, eval_iters=runs[0]["eval_iters"],
                    layer_names=runs[0]["layer_names"], source="trained")
  return {key: out[key] for key in configs_}
