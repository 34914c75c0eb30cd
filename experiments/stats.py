"""The statistics of every experiment: summaries, paired comparisons, times to a target, and
how their numbers are written.

**Summaries.** Mean and sample standard deviation ``s = sqrt(sum (x_i - x̄)² / (n - 1))``
(:func:`mean_std`); median and quartiles (:func:`median_iqr`), where ``inf`` (a run that never
reached a threshold) orders after every finite value.

**Paired comparison** (:func:`paired`). Methods run on the same ``n`` evaluation seeds (same
initialisation and batch order per seed); ``d_i = method_i - base_i``:

* mean ``d̄`` and ``s = std(d, ddof=1)``;
* 95% Student t interval ``d̄ ± t(0.975, n-1) · s/√n`` (Student 1908);
* two-sided Wilcoxon signed-rank p (Wilcoxon 1945), a check that does not assume normal
  differences. Zero differences are dropped (Wilcoxon's convention), the others ranked by
  ``|d_i|`` with tied magnitudes given their mean rank, and ``W+`` (the sum of the positive
  differences' ranks) is compared with its exact distribution under the null hypothesis that
  each sign is + or - with probability 1/2, given the observed ranks:
  ``p = min(1, 2 · min(P(W+ <= w), P(W+ >= w)))``. The distribution of the ``2^m`` sign
  choices is built by convolution over the ranks (doubled, so that mean ranks are integers),
  ``O(m³)``; without ties it is the exact distribution of scipy's ``method="exact"``, with
  ties it is the exact permutation distribution (no normal approximation at any ``n``);
* minimum detectable effect at 80% power of the two-sided 5% t test, by the usual
  approximation of the noncentral t power (Cohen 1988, ch. 2):
  ``mde = (t(0.975, n-1) + t(0.80, n-1)) · s/√n``: a true mean difference of this size is
  found about 80% of the time (the noncentral t gives 0.79 at n = 5, 0.80 at n = 10), a
  smaller one may well be missed;
* wins: seeds where the method is strictly better than the base;
* verdict: ``"better"`` or ``"worse"`` only when the interval excludes 0 (the side given by
  ``lower_is_better``), else ``"no difference detected"``, stated with the detectable effect
  (:func:`verdict_text`).

Edge cases, deliberately:

* Fewer than 2 usable pairs: the spread is unknown, so ``std``, ``ci95`` and ``mde`` are NaN
  and the verdict is "no difference detected" (no data: ``mean`` NaN, ``p_wilcoxon`` 1).
* Zero variance (every ``d_i`` equal, ``n >= 2``): the interval collapses to ``[d̄, d̄]`` and
  ``mde`` is 0, the limit of the formulas; ``d̄ = 0`` (identical runs) gives "no difference
  detected" and ``p = 1``, a constant ``d̄ != 0`` gives its direction (Wilcoxon ``p = 2/2^n``).
* Diverged runs (NaN or ±inf values): a non-finite value counts as worse than every finite
  one. Mean, std, interval, p and detectable effect use only the seeds where both values are
  finite; ``diverged`` counts the seeds where the method and where the base diverged; wins
  count on every seed. "better" additionally requires that the method never diverged where the
  base did not, "worse" that the base never diverged where the method did not; a divergence on
  one side only that the interval does not already agree with gives the verdict
  ``"diverged"``, which a reader must look at.

**Iterations to a target** (:func:`reach`), e.g. to the tuned base's final validation value,
per seed, ``inf`` where a seed never reached it. Reported: how many seeds reached it, the median
(``inf`` when half or more did not), and a distribution-free interval for the median from order
statistics ``[x_(j), x_(n+1-j)]``, whose coverage is ``P(j <= B <= n-j) = 1 - 2 P(B <= j-1)``
for ``B ~ Binomial(n, 1/2)`` (the number of seeds below the true median), with the largest
``j`` whose coverage is at least the level (David & Nagaraja 2003, sec. 7.1). It needs only
the order of the values, so unreached seeds (``inf``, the largest) are used as they are: an
upper end ``inf`` says the median may lie beyond the run. With ties (evaluation points on a
grid) the coverage is at least the one stated. Below 6 seeds no interval reaches 95%: the
interval is then ``[min, max]`` and ``coverage`` (always the exact one of the interval
reported) is below the level.

**Numbers.** A ``mean ± std`` is written with the std to 2 significant digits and the mean to
the same decimal place (:func:`mean_pm_std`), so that no digit is printed that the noise
makes meaningless.

The protocol (tuned rate per method on grid seeds, fresh paired evaluation seeds, verdicts
from intervals) follows Nado et al. 2021.

References:
  Student, "The probable error of a mean", Biometrika 6(1), 1908.
  F. Wilcoxon, "Individual comparisons by ranking methods", Biometrics Bulletin 1(6), 1945.
  J. Cohen, Statistical Power Analysis for the Behavioral Sciences, 2nd ed., 1988.
  H. A. David and H. N. Nagaraja, Order Statistics, 3rd ed., Wiley, 2003.
  Z. Nado et al., "A Large Batch Optimizer Reality Check: Traditional, Generic Optimizers
  Suffice Across Batch Sizes", arXiv:2102.06356, 2021.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

BETTER, WORSE = "better", "worse"
NO_DIFFERENCE = "no difference detected"
DIVERGED = "diverged"
CONFIDENCE = 0.95
POWER = 0.80


# --- summaries -------------------------------------------------------------------------------


def relative_difference(got: Any, want: Any, scale: Any = None) -> float:
  """``||got - want||_2 / ||scale||_2`` (``scale`` defaults to ``want``), in float64; 0 when
  both norms are 0 and inf when only the scale's is. With ``scale`` the change a step made,
  two parameter updates are compared relative to the step, not to the parameters."""
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  diff = np.linalg.norm(got - want)
  size = np.linalg.norm(want if scale is None else scale)
  return float(diff / size) if size > 0 else (0.0 if diff == 0 else float("inf"))


def mean_std(x: Any, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Mean and sample standard deviation (``ddof = 1``; 0 for a single sample) along
  ``axis``; NaN and inf propagate."""
  x = np.asarray(x, np.float64)
  mean = x.mean(axis)
  return mean, (x.std(axis, ddof=1) if x.shape[axis] > 1 else np.zeros_like(mean))


def _quantiles(x: np.ndarray, q: Sequence[float]) -> np.ndarray:
  """Linear-interpolation quantiles with NaN and inf ordered after every finite value; a
  quantile that touches such a value is ``inf``."""
  big = 1e300
  values = np.quantile(np.where(np.isfinite(x), x, big), q)
  return np.where(values >= 1e299, np.inf, values)


def median_iqr(x: Any) -> tuple[float, float, float]:
  """``(median, first quartile, third quartile)`` (linear interpolation); ``inf`` or NaN
  (never reached, diverged) counts as larger than every finite value, and a quantile that
  falls among such values is ``inf``; NaNs for no values."""
  x = np.asarray(x, np.float64).ravel()
  if not x.size:
    return math.nan, math.nan, math.nan
  q1, median, q3 = (float(v) for v in _quantiles(x, [0.25, 0.5, 0.75]))
  return median, q1, q3


# --- paired comparison -----------------------------------------------------------------------


@dataclass(frozen=True)
class Paired:
  """A method against its base on paired seeds (:func:`paired`): ``d_i = method_i -
  base_i``. ``mean``, ``std``, ``ci95``, ``p_wilcoxon`` and ``mde`` are over the seeds where
  both are finite; ``wins`` over all ``n`` seeds; ``diverged = (method, base)`` seeds with a
  non-finite value."""

  n: int
  mean: float
  std: float
  ci95: tuple[float, float]
  p_wilcoxon: float
  mde: float
  wins: int
  verdict: str
  diverged: tuple[int, int] = (0, 0)

  def as_json(self) -> dict[str, Any]:
    """The fields a results file keeps per method: ``ci95`` as ``[low, high]``."""
    return {"n": self.n, "mean": self.mean, "std": self.std, "ci95": list(self.ci95),
            "p_wilcoxon": self.p_wilcoxon, "mde": self.mde, "wins": self.wins,
            "verdict": self.verdict, "diverged": list(self.diverged)}


def t_quantile(probability: float, dof: int) -> float:
  """The ``probability`` quantile of Student's t with ``dof`` degrees of freedom."""
  from scipy import stats as scipy_stats  # here: importing scipy.stats takes ~1.4 s

  return float(scipy_stats.t.ppf(probability, dof))


def t_interval(d: Any, confidence: float = CONFIDENCE) -> tuple[float, float]:
  """``d̄ ± t((1 + confidence)/2, n-1) · s/√n``; NaNs below 2 values."""
  d = np.asarray(d, np.float64)
  if d.size < 2:
    return math.nan, math.nan
  mean, half = float(d.mean()), (t_quantile((1 + confidence) / 2, d.size - 1)
                                 * float(d.std(ddof=1)) / math.sqrt(d.size))
  return mean - half, mean + half


def detectable_effect(std: float, n: int, confidence: float = CONFIDENCE,
                      power: float = POWER) -> float:
  """Minimum detectable mean difference ``(t((1 + confidence)/2, n-1) + t(power, n-1)) ·
  std/√n`` of the two-sided paired t test; NaN below 2 values."""
  if n < 2:
    return math.nan
  return ((t_quantile((1 + confidence) / 2, n - 1) + t_quantile(power, n - 1))
          * std / math.sqrt(n))


def wilcoxon_p(d: Any) -> float:
  """Two-sided Wilcoxon signed-rank p of the differences ``d`` (all finite): zeros dropped,
  mean ranks for tied magnitudes, exact null distribution given the ranks (module
  docstring); 1 when no difference is nonzero."""
  d = np.asarray(d, np.float64)
  d = d[d != 0]
  if not d.size:
    return 1.0
  from scipy import stats as scipy_stats

  doubled = np.rint(2 * scipy_stats.rankdata(np.abs(d))).astype(np.int64)  # mean ranks x 2
  pmf = np.zeros(int(doubled.sum()) + 1)
  pmf[0] = 1.0
  for rank in doubled:  # each rank joins W+ (sign +) or not (sign -), probability 1/2 each
    pmf[rank:] = 0.5 * pmf[rank:] + 0.5 * pmf[:-rank]
    pmf[:rank] *= 0.5
  observed = int(doubled[d > 0].sum())
  below, above = pmf[:observed + 1].sum(), pmf[observed:].sum()
  return float(min(1.0, 2 * min(below, above)))


def paired(method_values: Any, base_values: Any, lower_is_better: bool) -> Paired:
  """The paired comparison of ``method_values`` with ``base_values`` (one value per seed,
  same seeds in the same order); the rules for few seeds, zero variance and diverged runs are
  in the module docstring. Raises ValueError when the two lengths differ."""
  method = np.asarray(method_values, np.float64).ravel()
  base = np.asarray(base_values, np.float64).ravel()
  if method.shape != base.shape:
    raise ValueError(f"paired values need one value per seed on both sides, got "
                     f"{method.size} for the method and {base.size} for the base")
  sign = 1.0 if lower_is_better else -1.0  # sign * d < 0: the method is better
  method_ok, base_ok = np.isfinite(method), np.isfinite(base)
  both = method_ok & base_ok
  d = (method - base)[both]
  wins = int(np.sum(sign * d < 0) + np.sum(method_ok & ~base_ok))
  n = d.size
  mean = float(d.mean()) if n else math.nan
  std = float(d.std(ddof=1)) if n > 1 else math.nan
  low, high = t_interval(d)
  oriented = (sign * low, sign * high)  # negative: the method's side (NaN compares false)
  favoured, disfavoured = max(oriented) < 0, min(oriented) > 0
  method_only, base_only = int(np.sum(~method_ok & base_ok)), int(np.sum(method_ok & ~base_ok))
  if favoured and not method_only:
    verdict = BETTER
  elif disfavoured and not base_only:
    verdict = WORSE
  elif method_only or base_only:
    verdict = DIVERGED
  else:
    verdict = NO_DIFFERENCE
  return Paired(n=int(method.size), mean=mean, std=std, ci95=(low, high),
                p_wilcoxon=wilcoxon_p(d), mde=detectable_effect(std, n), wins=wins,
                verdict=verdict, diverged=(int(np.sum(~method_ok)), int(np.sum(~base_ok))))


# --- iterations to a target ------------------------------------------------------------------


@dataclass(frozen=True)
class Reach:
  """Iterations to a target over ``n`` seeds (:func:`reach`): ``reached`` seeds got there;
  ``interval`` covers the median with probability ``coverage``."""

  n: int
  reached: int
  median: float
  interval: tuple[float, float]
  coverage: float

  def as_json(self) -> dict[str, Any]:
    return {"n": self.n, "reached": self.reached, "median": self.median,
            "interval": list(self.interval), "coverage": self.coverage}


def median_interval(n: int, level: float = CONFIDENCE) -> tuple[int, float]:
  """The order statistic ``j`` (1-based) of the interval ``[x_(j), x_(n+1-j)]`` for the
  median: the largest ``j`` whose coverage ``1 - 2 P(B <= j-1)``, ``B ~ Binomial(n, 1/2)``,
  is at least ``level`` (``j = 1`` when none is), and that coverage."""
  def coverage(j: int) -> float:
    return 1 - 2 * sum(math.comb(n, i) for i in range(j)) / 2**n

  j = 1
  while j + 1 <= (n + 1) // 2 and coverage(j + 1) >= level:
    j += 1
  return j, coverage(j)


def reach(iterations: Any, level: float = CONFIDENCE) -> Reach:
  """Summary of per-seed iterations to a target, ``inf`` (or NaN) where a seed never reached
  it: count reached, median, order-statistic interval for the median (module docstring)."""
  x = np.asarray(iterations, np.float64).ravel()
  x = np.where(np.isfinite(x), x, np.inf)
  if not x.size:
    return Reach(0, 0, math.nan, (math.nan, math.nan), math.nan)
  ordered = np.sort(x)
  j, coverage = median_interval(x.size, level)
  median = float(_quantiles(x, [0.5])[0])
  return Reach(n=int(x.size), reached=int(np.isfinite(x).sum()), median=median,
               interval=(float(ordered[j - 1]), float(ordered[x.size - j])), coverage=coverage)


# --- numbers and tables ----------------------------------------------------------------------


def number(value: float | None, digits: int = 4, missing: str | None = None) -> str:
  """``value`` to ``digits`` significant digits; a non-finite value (or None) is spelled out
  (``nan``, ``inf``) or, when ``missing`` is given, written as ``missing``."""
  if value is None or not math.isfinite(value):
    return missing if missing is not None else str(value)
  return f"{value:.{digits}g}"


def std_decimals(std: float) -> int | None:
  """Decimal places that give ``std`` 2 significant digits (after rounding: 0.0996 needs 2,
  as it is written 0.10), never fewer than 0 (123.4 is written 123); None for a std that is 0
  or not finite."""
  if not math.isfinite(std) or std <= 0:
    return None
  decimals = max(0, 1 - math.floor(math.log10(std)))
  if round(std, decimals) >= 10 ** (2 - decimals):  # rounding carried a digit
    decimals = max(0, decimals - 1)
  return decimals


def pm(mean: float, std: float, signed: bool = False) -> str:
  """``mean ± std``: the std to 2 significant digits and the mean to the same decimal place
  (``15.16 ± 1.275`` is written ``15.2 ± 1.3``); 4 significant digits each when the std is
  0, not finite or below 1e-4 of the mean (rounding noise). ``signed``: the mean with its
  sign (``+0.27``)."""
  plus = "+" if signed else ""
  decimals = std_decimals(std)
  if decimals is None or not math.isfinite(mean) or std <= 1e-4 * abs(mean):
    head = f"{mean:{plus}.4g}" if math.isfinite(mean) else str(mean)
    return f"{head} ± {number(std)}"
  return f"{mean:{plus}.{decimals}f} ± {std:.{decimals}f}"


def mean_pm_std(values: Any, signed: bool = False) -> str:
  """:func:`pm` of the values' mean and sample std."""
  mean, std = (float(v) for v in mean_std(np.asarray(values, np.float64).ravel()))
  return pm(mean, std, signed)


def interval_text(low: float, high: float, decimals: int | None) -> str:
  """``[low, high]`` with signs, to ``decimals`` places (4 significant digits when None);
  ``∞`` for an infinite end; ``—`` when an end is NaN (no interval)."""
  if math.isnan(low) or math.isnan(high):
    return "—"

  def end(x: float) -> str:
    if math.isinf(x):
      return "∞" if x > 0 else "-∞"
    return f"{x:+.{decimals}f}" if decimals is not None else f"{x:+.4g}"

  return f"[{end(low)}, {end(high)}]"


def verdict_text(result: Paired, digits: int = 2) -> str:
  """The verdict in words: ``better``, ``worse``, ``no difference detected (detectable
  effect 0.61)``, or ``diverged (method 1/10, base 0/10 seeds)``."""
  if result.verdict == NO_DIFFERENCE:
    effect = (f"detectable effect {number(result.mde, digits)}" if math.isfinite(result.mde)
              else "fewer than 2 seeds, no detectable effect")
    return f"{NO_DIFFERENCE} ({effect})"
  if result.verdict == DIVERGED:
    method, base = result.diverged
    return f"{DIVERGED} (method {method}/{result.n}, base {base}/{result.n} seeds)"
  return result.verdict


def paired_cells(result: Paired) -> dict[str, str]:
  """The table cells of a paired comparison: ``diff`` (mean ± std of ``d``, signed),
  ``ci95`` (to the same decimals), ``p`` (2 significant digits), ``mde``, ``wins``
  (``wins/n``) and ``verdict`` (:func:`verdict_text`)."""
  return {"diff": pm(result.mean, result.std, signed=True),
          "ci95": interval_text(*result.ci95, std_decimals(result.std)),
          "p": number(result.p_wilcoxon, 2), "mde": number(result.mde, 2, missing="—"),
          "wins": f"{result.wins}/{result.n}", "verdict": verdict_text(result)}


def reach_text(result: Reach) -> str:
  """``median [low, high] (reached/n)``, e.g. ``1200 [800, ∞] (7/10)``; ``∞`` for seeds or
  bounds that never reached the target."""
  def value(x: float) -> str:
    return "∞" if math.isinf(x) else number(x, 4, missing="—")

  low, high = result.interval
  return f"{value(result.median)} [{value(low)}, {value(high)}] ({result.reached}/{result.n})"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
  """A markdown table (no trailing newline): the header, a rule, one line per row."""
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
  return "\n".join(lines)
