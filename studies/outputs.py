"""What every study writes: ``results.json`` (every number, per seed), ``table.md`` (the
headline table, with the wall time and backend) and its figures, under ``--out``, each written
atomically (``experiments/files.py``)."""

from __future__ import annotations

import math
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from experiments import files


def environment() -> dict[str, Any]:
  import jax
  import optax

  return {"python": platform.python_version(), "jax": jax.__version__,
          "optax": optax.__version__, "backend": jax.default_backend(),
          "machine": platform.machine(), "date_utc": time.strftime("%Y-%m-%d %H:%M",
                                                                    time.gmtime())}


def jsonable(x: Any) -> Any:
  """``x`` with numpy values as Python ones; inf/NaN (not reached) as ``None``."""
  if isinstance(x, dict):
    return {str(k): jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [jsonable(v) for v in x]
  if isinstance(x, np.ndarray):
    return jsonable(x.tolist())
  if isinstance(x, (np.floating, float)):
    x = float(x)
    return x if math.isfinite(x) else None
  if isinstance(x, np.integer):
    return int(x)
  if isinstance(x, Path):
    return str(x)
  return x


def timer() -> Any:
  """A function returning the seconds since this call."""
  start = time.perf_counter()
  return lambda: time.perf_counter() - start


def finish(name: str, args: Any, argv: list[str] | None, results: dict, table: str,
           elapsed: Any, plot: Any = None) -> str:
  """Adds timing, environment and command to ``results``; writes results.json, table.md
  and (unless ``--no-plots``) the figures; prints and returns the table."""
  results.update(seconds=elapsed(), environment=environment(),
                 command=f"python -m studies.{name} " + " ".join(
                     sys.argv[1:] if argv is None else argv))
  table += f"\n\nWall time: {elapsed():.0f} s ({results['environment']['backend']}).\n"
  args.out.mkdir(parents=True, exist_ok=True)
  files.write_json(args.out / "results.json", jsonable(results))
  files.write_text(args.out / "table.md", table.rstrip() + "\n")
  if plot is not None and not args.no_plots:
    plot()
  print(table)
  return table
