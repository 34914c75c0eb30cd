"""What every study shares: its command line, its runs (run records of the engine) and its
outputs.

Options (the repository's convention, :mod:`experiments.cli`): ``--seeds``, ``--iters``,
``--methods``, ``--workers``, ``--out`` (default ``runs/studies/NAME``), ``--no-plots``, and
for the studies that read images ``--dataset``, ``--data-dir`` and ``--download``. Every run
is an engine run (:func:`experiments.engine.train`) whose record is kept under
``--out/runs`` (:mod:`experiments.records`): rerunning a command trains only the runs that
have no record, and an interrupted run resumes from its checkpoint. ``--out`` also keeps the
settings its runs were trained with (``settings.json``); a command with other settings
refuses it. :func:`finish` writes ``results.json`` (every number, per seed) and ``table.md``
(the headline tables, wall time and backend), then the figures, each atomically.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from experiments import cli, data, engine, files, methods, paper, pool, records


def rates(text: str) -> list[float]:
  """argparse type: comma-separated learning rates, each finite and above 0."""
  values = [cli.positive_float(part) for part in text.split(",") if part.strip()]
  if not values:
    raise argparse.ArgumentTypeError("no learning rate given")
  return values


def constant_lr(method: str, lr: Any, iters: int, params: Any) -> methods.Optimizer:
  """The engine's ``Setup.optimizer`` of the MLP and deep linear studies: ``method``
  (:func:`experiments.methods.build`) at a constant ``lr``, momentum 0.9 where the method has
  momentum, no weight decay."""
  del iters, params
  return methods.build(method, methods.Recipe(lr))


def parser(doc: str, name: str, *, seeds: int, iters: int, methods_: str,
           images: bool = False) -> cli.Parser:
  """The options every study takes (module doc); ``images``: those of the image data too.
  ``--methods`` takes any name of :mod:`experiments.methods`."""
  out = cli.Parser(prog=f"python -m experiments.studies.{name}",
                   description=doc.splitlines()[0],
                   formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  out.add_argument("--seeds", type=cli.positive_int, default=seeds, help="seeds 0..N-1")
  out.add_argument("--iters", type=cli.positive_int, default=iters,
                   help="training iterations per run")
  out.add_argument("--methods", default=methods_,
                   type=methods.method_names(tuple(methods.BASES), peers=True),
                   help=f"comma-separated, of {', '.join(methods.names())}")
  out.add_argument("--workers", type=cli.positive_int, default=1,
                   help="train in N single-threaded processes")
  out.add_argument("--out", type=Path, default=Path("runs/studies") / name,
                   help="output folder (run records, results.json, table.md, figures)")
  out.add_argument("--no-plots", action="store_true")
  if images:
    out.add_argument("--dataset", default="fashion_mnist", choices=paper.image_datasets())
    out.add_argument("--data-dir", default=None, help="default: the dataset's usual folder")
    out.add_argument("--download", action="store_true", help="fetch missing public files")
  return out


def images(args: argparse.Namespace, dataset: Any = None) -> tuple[Callable[[], Any], Any]:
  """The study's images (``x / 256``, no validation split): a picklable loader (for worker
  processes) and the images, loaded here (unless given) before any work starts, after
  ``--download`` has fetched what is missing."""
  if args.download:
    data.load_dataset(args.dataset, args.data_dir, True)
  load = functools.partial(data.load_held_out, args.dataset, args.data_dir, None, 0)
  return load, load() if dataset is None else dataset


def dataset_title(name: str) -> str:
  return {"fashion_mnist": "Fashion-MNIST", "mnist": "MNIST", "cifar10": "CIFAR-10"}.get(
      name, name)


def claim(out: Path, settings: dict) -> Path:
  """Makes ``out`` the folder of runs with ``settings`` (``settings.json``): a folder of
  runs with other settings is refused (their records would be taken for these)."""
  cli.writable_folder(out)
  path = out / "settings.json"
  settings = records.plain(settings)
  if path.exists():
    try:
      stored = json.loads(path.read_text())
    except ValueError as e:
      raise cli.InputError(f"{path} is not readable JSON ({e}); delete it") from None
    if stored != settings:
      changed = sorted(k for k in {*stored, *settings} if stored.get(k) != settings.get(k))
      raise cli.InputError(f"{out} holds runs of other settings ({', '.join(changed)}); pass "
                           "another --out or delete it")
  else:
    records.write_json(path, settings)
  return out


def run_all(setup: engine.Setup, tasks: Iterable[records.RunTask], out: Path,
            load: Callable[[], Any], workers: int = 1, dataset: Any = None,
            log: Callable[[str], None] = print) -> dict[records.RunTask, dict]:
  """The run record of every task (:func:`experiments.pool.run_records` of ``setup``'s
  engine runs), logging what is trained."""
  tasks = list(dict.fromkeys(tasks))
  missing = [t for t in tasks if not records.record_path(out, t).exists()]
  if missing:
    log(f"{out}: training {len(missing)} run{'s' * (len(missing) != 1)}")

  def report(task: records.RunTask, record: dict) -> None:
    log(f"{task.method} lr {task.lr:g} seed {task.seed}: {record['wall_s']:.0f} s")

  return pool.run_records(functools.partial(engine.train, setup=setup), tasks, out, workers,
                          load, dataset, report)


def timer() -> Callable[[], float]:
  """A function returning the seconds since this call."""
  began = time.perf_counter()
  return lambda: time.perf_counter() - began


def finish(name: str, args: argparse.Namespace, argv: list[str] | None, results: dict,
           table: str, elapsed: Callable[[], float], train_s: float,
           plot: Callable[[], None] | None = None) -> str:
  """Adds the command's wall time, the runs' (``train_s``: the sum of their records'
  ``wall_s``, whenever they were trained), environment and command to ``results``; writes
  ``results.json``, ``table.md`` and (unless ``--no-plots``) the figures under ``--out``;
  prints and returns the table."""
  results.update(seconds=elapsed(), train_seconds=train_s, environment=records.environment(),
                 command=f"python -m experiments.studies.{name} " + " ".join(
                     sys.argv[1:] if argv is None else argv))
  table = (f"{table.rstrip()}\n\nWall time: {elapsed():.0f} s; the runs took {train_s:.0f} s "
           f"in all ({results['environment']['backend']}).\n")
  records.write_json(args.out / "results.json", results)
  files.write_text(args.out / "table.md", table)
  if plot is not None and not args.no_plots:
    plot()
  print(table, end="")
  return table
