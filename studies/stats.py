"""Summary statistics and table cells of the studies.

Times to a threshold are ``inf`` where a run never reached it; :func:`median_iqr` orders
``inf`` after every finite value, so a median of runs that mostly did not arrive is ``inf``.
Mean and standard deviation over seeds: :func:`experiments.report.mean_std`.
"""

from __future__ import annotations

from typing import Any

import numpy as np


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


def fmt(x: float, digits: int = 3) -> str:
  """``x`` to ``digits`` significant digits; '-' for None, NaN or inf."""
  if x is None or not np.isfinite(x):
    return "-"
  return f"{x:.{digits}g}"


def md_table(header: list[str], rows: list[list[Any]]) -> str:
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
  return "\n".join(lines)
