"""One pool of single-threaded worker processes for independent training runs.

``python -m experiments.paper --workers N``, the tuned comparisons and the LeNet studies train
their runs through :func:`run_tasks`: with one worker in the calling process, otherwise in
``N`` spawned processes, each loading the dataset once and running XLA:CPU single-threaded
(two such processes on two cores train LeNet faster than one process using both, see the
README). The XLA flag is set in each worker before its first computation, never in the calling
process. Workers report progress (iterations done) through a queue; results come back as tasks
finish, in any order. :func:`run_records` is the pool of engine runs with run records: what is
recorded under ``--out`` is read, the rest is trained and recorded as it finishes.
"""

from __future__ import annotations

import concurrent.futures
import functools
import multiprocessing
import os
import queue as queue_lib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from experiments import engine, processes, records

# XLA:CPU without its intra-op thread pool (one core per worker process).
SINGLE_THREAD_XLA = "--xla_cpu_multi_thread_eigen=false"

_WORKER: dict[str, Any] = {}  # in a worker process: its dataset and progress queue


def _start_worker(load_dataset: Callable[[], Any], progress_queue, parent: int) -> None:
  processes.die_with_parent(parent)  # never an orphan that trains on
  flags = os.environ.get("XLA_FLAGS", "")
  os.environ["XLA_FLAGS"] = f"{flags} {SINGLE_THREAD_XLA}".strip()
  _WORKER.update(dataset=load_dataset(), progress=progress_queue.put)


def _run_in_worker(task_fn: Callable, task: Any) -> Any:
  return task_fn(_WORKER["dataset"], task, _WORKER["progress"])


def run_tasks(task_fn: Callable[[Any, Any, Callable[[int], None]], Any], tasks: Iterable,
              workers: int, load_dataset: Callable[[], Any], dataset: Any = None,
              on_result: Callable[[Any, Any], None] = lambda task, result: None,
              progress: Callable[[int], None] = lambda n: None) -> None:
  """Calls ``task_fn(dataset, task, progress)`` for every task; ``on_result(task, result)``
  as each finishes.

  ``load_dataset`` (picklable, e.g. a ``functools.partial``) gives each worker its dataset;
  with ``workers == 1`` the tasks run here on ``dataset`` (or ``load_dataset()``). An
  exception in a task, or here (e.g. a signal, :class:`experiments.cli.Interrupted`),
  cancels the rest, ends the workers at once and is raised here; a worker also dies with
  this process if it is killed outright.
  """
  tasks = list(tasks)
  if workers <= 1 or len(tasks) <= 1:
    dataset = load_dataset() if dataset is None else dataset
    for task in tasks:
      on_result(task, task_fn(dataset, task, progress))
    return
  context = multiprocessing.get_context("spawn")
  progress_queue = context.Queue()
  others = set(multiprocessing.active_children())  # started before the pool, not its own
  with concurrent.futures.ProcessPoolExecutor(
      workers, mp_context=context, initializer=_start_worker,
      initargs=(load_dataset, progress_queue, os.getpid())) as pool:
    futures = {pool.submit(_run_in_worker, task_fn, task): task for task in tasks}
    pending = set(futures)
    try:
      while pending:
        done, pending = concurrent.futures.wait(
            pending, timeout=0.5, return_when=concurrent.futures.FIRST_COMPLETED)
        _drain(progress_queue, progress)
        for future in done:
          on_result(futures[future], future.result())
    except BaseException:  # e.g. cli.Interrupted: stop the runs under way, not after them
      workers = set(multiprocessing.active_children()) - others
      for worker in workers:
        worker.terminate()
      for worker in workers:
        worker.join()
      pool.shutdown(cancel_futures=True)
      raise
  _drain(progress_queue, progress)


def _drain(progress_queue, progress: Callable[[int], None]) -> None:
  while True:
    try:
      progress(progress_queue.get_nowait())
    except queue_lib.Empty:
      return


def run_records(train: Callable, tasks: Iterable[records.RunTask], out: Path, workers: int,
                load_dataset: Callable[[], Any], dataset: Any = None,
                on_record: Callable[[records.RunTask, dict], None] = lambda task, record: None,
                progress: Callable[[int], None] = lambda n: None
                ) -> dict[records.RunTask, dict]:
  """The run record of every task (:mod:`experiments.records`): read from ``out/runs``, or
  trained by ``train`` (:func:`experiments.engine.train` bound to a setup; resuming from the
  task's checkpoint there) in ``workers`` processes and written there as each finishes
  (``on_record`` is called then). Arguments as :func:`run_tasks`."""
  done = {task: records.read_record(records.record_path(out, task), task)
          for task in dict.fromkeys(tasks)}

  def store(task: records.RunTask, record: dict) -> None:
    done[task] = records.write_record(out, task, record)
    on_record(task, done[task])

  run_tasks(functools.partial(engine.train_resuming, train=train, out=out),
            [task for task, record in done.items() if record is None], workers, load_dataset,
            dataset, store, progress)
  return done
