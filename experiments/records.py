"""What experiments write: one run record per training run, checkpoints, one results schema.

**Run record** (:func:`write_record`, :func:`read_record`): one JSON file per run,
``<out>/runs/<method>/lr<lr>_seed<seed>.json`` (:func:`record_path`), written atomically as
the run finishes, so a command rerun with the same ``--out`` trains only the runs without
one. It holds ``{"task": {"method", "lr", "seed", "iters"}, "record": {...}}`` where the
record (what :func:`experiments.engine.train` returns) has

* ``eval_iters``: the evaluation iterations, the last the final one;
* ``val``, ``test``: the metric on the validation and test split there (NaN after a
  divergence);
* ``train_loss``: the mean training loss since the previous evaluation point;
* ``factor_iters``: the iterations done when the recorded gradients were taken (0: at
  initialisation), and ``factors``: layer name (``name[i]`` for slice ``i`` of a stacked
  layer) -> the factor of eq. 9 of the gradient the factor sees there; ``norms`` (records
  written since the engine): the same layers' gradient norms;
* ``wall_s``: the run's wall time; a run resumed from a checkpoint adds the time spent up to
  that checkpoint (records written before checkpoints kept it count the time since
  resuming only).

NaN and inf are kept (JSON's ``NaN``/``Infinity`` tokens, which Python's ``json`` reads).

**Checkpoint** (:func:`save_checkpoint`, :func:`load_checkpoint`): every array of a run's
state and a tag naming the configuration that wrote it, in one ``.npz`` replaced atomically,
so a process killed at any point leaves the previous checkpoint or the new one; a checkpoint
of another configuration is refused (named, left in place).

**Results** (``results.json`` of a tuned comparison, :mod:`experiments.tuning`):
``{"workload", "metric", "lower_is_better", "iters", "grid_seeds", "eval_seeds", "sizes",
"protocol", "methods": {name: {"baseline", "grid": {repr(lr): [final validation per grid
seed]}, "diverged", "selected_lr", "coarse" (stage 1's grid, where run), "val", "test"
(per evaluation seed), "paired_test_diff", "mean_diff", "ci95", "p_wilcoxon", "mde", "wins",
"verdict", "iters_to_baseline_val", "reach", "wall_s", "level" (bases)}}, "runs",
"stage_seconds", "train_seconds", "environment", "hardware", "command", "seconds"}``
(:data:`METHOD_KEYS` are required of every method).
"""

from __future__ import annotations

import json
import math
import platform
import time
import zipfile
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from experiments import files
from experiments.cli import InputError

RECORD_KEYS = ("eval_iters", "val", "test", "train_loss", "factor_iters", "factors", "wall_s")
METHOD_KEYS = ("baseline", "selected_lr", "test", "paired_test_diff", "wins")


class RunTask(NamedTuple):
  """One training run: ``method`` at learning rate ``lr`` from seed ``seed``."""

  method: str
  lr: float
  seed: int
  iters: int


def plain(value: Any) -> Any:
  """``value`` with NumPy values as Python ones; NaN and inf are kept."""
  if isinstance(value, dict):
    return {str(k): plain(v) for k, v in value.items()}
  if isinstance(value, (list, tuple, np.ndarray)):
    return [plain(v) for v in value]
  if isinstance(value, (np.floating, float)):
    return float(value)
  if isinstance(value, np.integer):
    return int(value)
  if isinstance(value, np.bool_):
    return bool(value)
  return value


def write_json(path: Path, value: Any) -> None:
  """Writes ``value`` (:func:`plain`) as indented JSON, atomically, creating its folder."""
  Path(path).parent.mkdir(parents=True, exist_ok=True)
  files.write_json(path, plain(value))


def record_path(out: Path, task: RunTask) -> Path:
  return Path(out) / "runs" / task.method / f"lr{task.lr!r}_seed{task.seed}.json"


def checkpoint_path(out: Path, task: RunTask) -> Path:
  """Where the unfinished run of ``task`` keeps its checkpoint (removed when it finishes)."""
  return record_path(out, task).with_suffix(".ckpt.npz")


def write_record(out: Path, task: RunTask, record: dict) -> dict:
  """Writes ``record`` of ``task`` under ``out`` (module doc); returns it as stored."""
  record = plain(record)
  write_json(record_path(out, task), {"task": task._asdict(), "record": record})
  return record


def read_record(path: Path, task: RunTask) -> dict | None:
  """The run record of ``task`` stored at ``path``, ``None`` if there is none."""
  if not path.exists():
    return None
  try:
    stored = json.loads(path.read_text())
    record = stored["record"]
    missing = [k for k in RECORD_KEYS if k not in record]
    if missing:
      raise KeyError(", ".join(missing))
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise InputError(f"{path} is not a run record ({type(e).__name__}: {e}); delete it "
                     "to train that run again") from None
  if stored.get("task") != plain(task._asdict()):
    raise InputError(f"{path} holds the run {stored.get('task')}, not {task._asdict()}; "
                     "pass another --out or delete it")
  return record


def final(values: list[float]) -> float:
  """The last value of a record's curve (NaN for none)."""
  return float(values[-1]) if values else math.nan


def environment() -> dict[str, Any]:
  """Versions, backend and date of this process, for a results file."""
  import optax

  return {"python": platform.python_version(), "jax": jax.__version__,
          "optax": optax.__version__, "backend": jax.default_backend(),
          "machine": platform.machine(), "date_utc": time.strftime("%Y-%m-%d %H:%M",
                                                                    time.gmtime())}


def save_npz(path: Path, **arrays) -> None:
  """``np.savez(path, **arrays)`` atomically, creating the folder (one temporary name per
  destination: a killed writer's leftover is replaced by the next write)."""
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  with files.replacing(path, unique=False) as temporary:
    np.savez(temporary, **arrays)


def read_npz(path: Path, what: str, fix: str) -> dict[str, np.ndarray]:
  """All arrays of an .npz file; an unreadable file raises :class:`InputError` naming it,
  what it is and ``fix`` (how to proceed)."""
  try:
    with np.load(path) as f:
      return {k: f[k] for k in f.files}
  except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile) as e:
    raise InputError(f"{path}: corrupt {what} ({type(e).__name__}: {e}); left in place: "
                     f"{fix}") from None


def save_checkpoint(path: Path, state: Any, tag: str, **extra: np.ndarray) -> None:
  """Writes every array of ``state`` (a pytree), ``extra`` arrays and the ``tag`` of its
  configuration, atomically."""
  leaves = jax.device_get(jax.tree.leaves(state))
  save_npz(path, tag=np.array(tag), **extra, **{f"arr_{i}": a for i, a in enumerate(leaves)})


def load_checkpoint(path: Path, like: Any, tag: str) -> tuple[Any, dict[str, np.ndarray]]:
  """Restores a checkpoint of the configuration ``tag`` into the structure of ``like``;
  returns the state and the checkpoint's other arrays."""
  fix = "delete it to start this run afresh, or rerun the command that wrote it"
  saved = read_npz(path, "checkpoint", fix)
  leaves, treedef = jax.tree.flatten(like)
  loaded = [saved.pop(f"arr_{i}", None) for i in range(len(leaves))]
  saved_tag = str(saved.pop("tag", "untagged"))
  if saved_tag != tag or any(a is None or a.shape != b.shape for a, b in zip(loaded, leaves)):
    raise InputError(f"{path}: checkpoint of another configuration ({saved_tag}, not {tag}); "
                     f"left in place: {fix}")
  state = jax.tree.unflatten(treedef, [jnp.asarray(a, b.dtype) for a, b in zip(loaded, leaves)])
  return state, saved
