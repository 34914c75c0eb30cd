"""Shared pieces of the measured studies: optimizers, statistics, output files, plots.

Every study compares a base method with its layer-specific version, ``t_l = t * f_l`` with

    f_l = 1 + log(1 + 1/||g_l||_2)          (Singh et al. 2015, eq. 9)

under the same seed (same initialisation, same data order), so per-seed differences are
paired. Method names follow the paper: ``sgd`` is heavy-ball momentum 0.9 (Caffe's SGD),
``nag`` Nesterov momentum 0.9, ``gd`` plain SGD without momentum; ``+layer`` chains
:func:`layerwise_optax.scale_by_layerwise_lr` before the same ``optax.sgd``.

Each study writes ``results/studies/NAME/``: ``results.json`` (every number, per seed),
``table.md`` (the headline table) and PNG figures.

References:
  Singh, De, Zhang, Goldstein, Taylor. "Layer-Specific Adaptive Learning Rates for Deep
  Networks." ICMLA 2015. arXiv:1510.04609.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import json
import math
import multiprocessing
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
# `python studies/NAME.py` from anywhere: the package, and the paper harness as `paper`
# (examples/paper/, imported the way examples/reproduce.py and the tests import it).
for _path in (ROOT, ROOT / "examples"):
  if str(_path) not in sys.path:
    sys.path.insert(0, str(_path))

import optax  # noqa: E402
from paper import configs  # noqa: E402
from paper import data as data_lib  # noqa: E402
from paper import methods as methods_lib  # noqa: E402
from paper import train as train_lib  # noqa: E402
from paper.train import SINGLE_THREAD_XLA  # noqa: E402

import layerwise_optax as lw  # noqa: E402

MOMENTUM = 0.9


def split_study_method(method: str) -> tuple[str, bool]:
  """'nag+layer' -> ('nag', True)."""
  base, _, suffix = method.partition("+")
  if base not in ("gd", "sgd", "nag") or suffix not in ("", "layer"):
    raise ValueError(f"unknown method {method!r}; use gd, sgd or nag, optionally +layer")
  return base, suffix == "layer"


def make_optimizer(method: str, lr: Any, layers: Any = "module") -> optax.GradientTransformation:
  """The base optimizer, or the same one with the layer factor chained in front.

  ``lr`` may be a traced array, so one compiled run serves a whole learning-rate grid.
  """
  base, layer = split_study_method(method)
  momentum = None if base == "gd" else MOMENTUM
  nesterov = base == "nag"
  if layer:
    return lw.sgd(lr, momentum=momentum, nesterov=nesterov, layers=layers)
  return optax.sgd(lr, momentum=momentum, nesterov=nesterov)


def factor(norm: np.ndarray) -> np.ndarray:
  """Eq. 9 in numpy, for checks on recorded norms (1 where the norm is 0)."""
  norm = np.asarray(norm, np.float64)
  with np.errstate(divide="ignore"):
    return np.where(norm > 0, 1 + np.log1p(1 / norm), 1.0)


def parser(doc: str, seeds: int, iters: int, name: str) -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(description=doc.splitlines()[0],
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  p.add_argument("--seeds", type=int, default=seeds, help="number of seeds (0..n-1)")
  p.add_argument("--iters", type=int, default=iters, help="training iterations per run")
  p.add_argument("--out", type=Path, default=ROOT / "results" / "studies" / name,
                 help="output folder")
  return p


def lenet_parser(doc: str, seeds: int, iters: int, name: str) -> argparse.ArgumentParser:
  """``parser`` plus the options of the studies that train LeNet with the paper harness."""
  p = parser(doc, seeds, iters, name)
  p.add_argument("--workers", type=int, default=2,
                 help="single-threaded worker processes (1: train in this process)")
  p.add_argument("--reuse", type=Path, default=MAIN_RUN,
                 help="a reproduce.py output folder whose runs/*.npz (layers='module') "
                 "replace training the same method, learning rate and seeds; ignored "
                 "where a run is missing")
  p.add_argument("--no-reuse", dest="reuse", action="store_const", const=None)
  p.add_argument("--no-plots", action="store_true")
  return p


def finish(name: str, args: argparse.Namespace, argv: list[str] | None, results: dict,
           table: str, elapsed: Any, plot: Any = None) -> str:
  """Adds timing, environment and command to ``results``; writes the outputs and plots."""
  results.update(seconds=elapsed(), environment=environment(),
                 command=f"python studies/{name}.py " + " ".join(
                     sys.argv[1:] if argv is None else argv))
  table += f"\n\nWall time: {elapsed():.0f} s ({results['environment']['backend']}).\n"
  write_outputs(args.out, results, table)
  if plot is not None and not getattr(args, "no_plots", False):
    plot()
  print(table)
  return table


def floats(text: str) -> list[float]:
  return [float(x) for x in text.split(",") if x]


def environment() -> dict[str, Any]:
  import jax

  return {"python": platform.python_version(), "jax": jax.__version__,
          "optax": optax.__version__, "backend": jax.default_backend(),
          "machine": platform.machine(), "date_utc": time.strftime("%Y-%m-%d %H:%M",
                                                                    time.gmtime())}


def _jsonable(x: Any) -> Any:
  if isinstance(x, dict):
    return {str(k): _jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_jsonable(v) for v in x]
  if isinstance(x, np.ndarray):
    return _jsonable(x.tolist())
  if isinstance(x, (np.floating, float)):
    x = float(x)
    return x if math.isfinite(x) else None  # JSON has no inf/NaN; None = not reached
  if isinstance(x, np.integer):
    return int(x)
  if isinstance(x, Path):
    return str(x)
  return x


def write_outputs(out: Path, results: dict[str, Any], table: str) -> None:
  out.mkdir(parents=True, exist_ok=True)
  (out / "results.json").write_text(json.dumps(_jsonable(results), indent=1) + "\n")
  (out / "table.md").write_text(table.rstrip() + "\n")


def md_table(header: list[str], rows: list[list[Any]]) -> str:
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
  return "\n".join(lines)


def fmt(x: float, digits: int = 3) -> str:
  if x is None or not np.isfinite(x):
    return "-"
  return f"{x:.{digits}g}"


def median_iqr(x: np.ndarray) -> tuple[float, float, float]:
  """Median and quartiles (linear interpolation); ``inf`` (not reached) counts as larger
  than every finite value, and a quantile that falls among infinite values is ``inf``."""
  x = np.asarray(x, np.float64)
  if not x.size:
    return np.nan, np.nan, np.nan
  big = 1e300
  q = np.quantile(np.where(np.isfinite(x), x, big), [0.25, 0.5, 0.75])
  q = np.where(q >= 1e299, np.inf, q)  # touches an infinite value: not reached
  return float(q[1]), float(q[0]), float(q[2])


def mean_std(x: np.ndarray, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
  x = np.asarray(x, np.float64)
  return x.mean(axis), (x.std(axis, ddof=1) if x.shape[axis] > 1 else np.zeros_like(x.mean(axis)))


def plt():
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as pyplot

  return pyplot


def timer() -> Any:
  start = time.perf_counter()
  return lambda: time.perf_counter() - start


def load_fashion_mnist(n_train: int | None = None, n_test: int | None = None):
  """Fashion-MNIST as float32 ``(N, 784)`` in [0, 1) (Caffe's ``x / 256``) and int labels.

  Read with the checked IDX reader of ``examples/paper/data.py`` from Debian's
  ``/usr/share/datasets/fashion-mnist``; ``n_train``/``n_test`` keep the first examples.
  """
  ds = data_lib.load_dataset("fashion_mnist")
  xtr = data_lib.preprocess(ds.train_images[:n_train]).reshape(-1, 784)
  xte = data_lib.preprocess(ds.test_images[:n_test]).reshape(-1, 784)
  return (xtr, ds.train_labels[:n_train].astype(np.int32), xte,
          ds.test_labels[:n_test].astype(np.int32))


def lenet_protocol():
  """The harness's MNIST/LeNet protocol (Caffe's ``lenet_solver``), used on Fashion-MNIST."""
  return configs.MNIST


def load_dataset(name: str = "fashion_mnist"):
  return data_lib.load_dataset(name)


MAIN_RUN = ROOT / "results" / "fashion_mnist"


def with_base_lr(protocol, method: str, base_lr: float | None):
  """``protocol`` with the base learning rate of ``method``'s solver replaced (schedule,
  momentum and weight decay stay the protocol's)."""
  if base_lr is None:
    return protocol
  base, _ = methods_lib.split_method(method)
  solver = dataclasses.replace(protocol.solvers[base], base_lr=base_lr)
  return dataclasses.replace(protocol, solvers={**protocol.solvers, base: solver})


def eval_iters(protocol, iters: int) -> list[int]:
  """The harness's evaluation iterations of a run of ``iters`` (train.Runner's rule)."""
  return list(train_lib.eval_points(protocol, iters))


def load_main_runs(folder: Path | None, protocol, method: str, base_lr: float | None,
                   layers: Any, seeds: int, iters: int) -> dict | None:
  """Seeds ``0..seeds-1`` of ``method`` from a ``reproduce.py`` output folder, cut to ``iters``.

  Only runs of the protocol's own learning rate with ``layers="module"`` qualify (what
  ``reproduce.py`` records by default; its ``results.json`` config is checked when present).
  A run of more iterations is cut: the schedule does not depend on the run's length, so its
  first ``iters`` iterations are those of a shorter run. ``None`` if anything is missing.
  """
  base, _ = methods_lib.split_method(method)
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
  wanted = eval_iters(protocol, iters)
  for seed in range(seeds):
    path = folder / "runs" / f"{method}_seed{seed}.npz"
    if not path.exists():
      return None
    run = train_lib.load_run(path)
    stored = eval_iters(protocol, len(run["train_loss"]))
    if len(run["train_loss"]) < iters or not set(wanted) <= set(stored) or \
        len(run["test_error"]) != len(stored):
      return None
    keep = [stored.index(k) for k in wanted]
    run["test_error"] = run["test_error"][keep]
    for k in ("train_loss", "grad_norm", "factor", "effective_lr"):
      run[k] = run[k][:iters]
    runs.append(run)
  out = train_lib.stack_runs(runs)
  out.update(method=method, iters=iters, eval_iters=wanted,
             layer_names=list(train_lib.layer_names(protocol, layers)), source=str(folder / "runs"))
  return out


_RUNNERS: dict = {}
_DATASET: list = []


def _worker_init(dataset_name: str) -> None:
  _DATASET.append(load_dataset(dataset_name))


def _run_seed(protocol, method: str, layers: Any, iters: int, seed: int, dataset=None) -> dict:
  """One seed of one configuration; the compiled runner is kept for the next seed."""
  dataset = dataset if dataset is not None else _DATASET[0]
  key = (repr(protocol), method, str(layers), iters, id(dataset))
  if key not in _RUNNERS:
    _RUNNERS.clear()  # one compiled configuration at a time
    _RUNNERS[key] = train_lib.Runner(protocol, method, dataset, iters, layers)
  runner = _RUNNERS[key]
  run = runner.run(seed)
  run.pop("params")
  return run | {"eval_iters": list(runner.eval_iters),
                "layer_names": list(runner.setup.layer_names)}


def train_runs(protocol, dataset, configs: dict, seeds: int, iters: int, workers: int = 1,
               dataset_name: str = "fashion_mnist", reuse: Path | None = None,
               log=print) -> dict:
  """Trains each configuration ``{key: (method, base_lr or None, layers)}`` for seeds
  ``0..seeds-1`` with the harness of ``examples/paper/train.py``; returns ``{key: curves}``
  with a leading seed axis (``test_error`` at ``eval_iters``, ``train_loss``,
  ``grad_norm``, ``factor``, ``effective_lr``), plus ``source``: the reused folder or
  ``"trained"``.

  Configurations found in ``reuse`` (see :func:`load_main_runs`) are loaded, not trained.
  With ``workers > 1`` the seeds run in that many single-threaded processes (XLA's CPU
  thread pools off), each loading ``dataset_name`` itself; about 25% more throughput on
  two cores than one two-threaded process.
  """
  out, tasks = {}, []
  for key, (method, base_lr, layers) in configs.items():
    loaded = load_main_runs(reuse, protocol, method, base_lr, layers, seeds, iters)
    if loaded is not None:
      out[key] = loaded
      log(f"{key}: reused {loaded['source']} (seeds 0-{seeds - 1}, {iters} iterations)")
    else:
      tasks += [(key, with_base_lr(protocol, method, base_lr), method, layers, s)
                for s in range(seeds)]
  done: dict = {key: {} for key, *_ in tasks}

  def collect(task, run):
    key = task[0]
    done[key][task[-1]] = run
    log(f"{key} seed {task[-1]}: test error {100 * run['test_error'][-1]:.2f}% "
        f"({run['wall_s']:.0f} s)")

  if workers <= 1 or len(tasks) <= 1:
    for task in tasks:
      collect(task, _run_seed(*task[1:4], iters, task[4], dataset))
  else:
    old = os.environ.get("XLA_FLAGS")
    os.environ["XLA_FLAGS"] = ((old + " ") if old else "") + SINGLE_THREAD_XLA
    try:
      with concurrent.futures.ProcessPoolExecutor(
          workers, mp_context=multiprocessing.get_context("spawn"),
          initializer=_worker_init, initargs=(dataset_name,)) as pool:
        futures = {pool.submit(_run_seed, *task[1:4], iters, task[4]): task for task in tasks}
        for fut in concurrent.futures.as_completed(futures):
          collect(futures[fut], fut.result())
    finally:
      if old is None:
        os.environ.pop("XLA_FLAGS")
      else:
        os.environ["XLA_FLAGS"] = old
  for key, runs in done.items():
    runs = [runs[s] for s in range(seeds)]
    out[key] = train_lib.stack_runs(runs)
    out[key].update(method=configs[key][0], iters=iters, eval_iters=runs[0]["eval_iters"],
                    layer_names=runs[0]["layer_names"], source="trained")
  return {key: out[key] for key in configs}
