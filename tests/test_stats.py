"""experiments.stats: summaries, the paired comparison, times to a target, number formatting;
against closed forms, enumeration and scipy."""

import itertools
import math

import numpy as np
import pytest

from experiments import stats

# The per-seed differences of a 5-seed comparison (method minus base, test error points).
ISSUE_DIFFS = np.array([1.01, -1.41, 1.34, 0.62, 0.20])
T975_4, T80_4 = 2.7764451051977934, 0.9409645772351816  # Student t quantiles, 4 dof


@pytest.fixture(scope="module")
def scipy_stats():
  """scipy.stats, imported by the test process that runs these tests only (1.5 s)."""
  from scipy import stats as scipy_stats
  return scipy_stats


def test_mean_std_is_sample_std_and_zero_for_one_sample():
  mean, std = stats.mean_std([1.0, 2.0, 4.0])
  assert mean == pytest.approx(7 / 3)
  assert std == pytest.approx(math.sqrt(((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2 + (4 - 7 / 3) ** 2)
                                        / 2))
  mean, std = stats.mean_std([[1.0, 3.0], [3.0, 7.0]], axis=0)
  np.testing.assert_allclose(mean, [2.0, 5.0])
  np.testing.assert_allclose(std, [math.sqrt(2), math.sqrt(8)])
  assert stats.mean_std([5.0]) == (5.0, 0.0)


def test_median_iqr_orders_unreached_last():
  assert stats.median_iqr([4.0, 1.0, 3.0, 2.0]) == (2.5, 1.75, 3.25)
  assert stats.median_iqr([1.0, 2.0, 3.0, np.inf, np.inf]) == (3.0, 2.0, np.inf)
  assert stats.median_iqr([1.0, np.nan, np.inf]) == (np.inf, np.inf, np.inf)
  assert all(math.isnan(v) for v in stats.median_iqr([]))


def test_t_interval_and_detectable_effect_closed_form(scipy_stats):
  n, mean = 5, 0.352
  std = math.sqrt(sum((d - mean) ** 2 for d in ISSUE_DIFFS) / (n - 1))
  assert std == pytest.approx(1.0733918203526611)
  low, high = stats.t_interval(ISSUE_DIFFS)
  assert (low, high) == pytest.approx((mean - T975_4 * std / math.sqrt(n),
                                       mean + T975_4 * std / math.sqrt(n)))
  assert (low, high) == pytest.approx((-0.9807919792983, 1.6847919792983))
  reference = scipy_stats.ttest_1samp(ISSUE_DIFFS, 0.0).confidence_interval(0.95)
  assert (low, high) == pytest.approx((reference.low, reference.high))
  assert stats.detectable_effect(std, n) == pytest.approx((T975_4 + T80_4) * std / math.sqrt(5))
  assert math.isnan(stats.detectable_effect(1.0, 1))


@pytest.mark.parametrize("n", [5, 10, 20])
def test_detectable_effect_has_80_percent_power(n, scipy_stats):
  """At a true mean difference of ``mde``, the two-sided 5% t test rejects with probability
  ~0.8 (noncentral t, noncentrality mde / (s/√n))."""
  std = 0.7
  noncentrality = stats.detectable_effect(std, n) / (std / math.sqrt(n))
  critical = stats.t_quantile(0.975, n - 1)
  power = (1 - scipy_stats.nct.cdf(critical, n - 1, noncentrality)
           + scipy_stats.nct.cdf(-critical, n - 1, noncentrality))
  assert power == pytest.approx(0.80, abs=0.01)


def test_issue_differences_give_no_difference_detected(scipy_stats):
  result = stats.paired(12.0 + ISSUE_DIFFS, np.full(5, 12.0), lower_is_better=True)
  assert result.n == 5 and result.wins == 1 and result.diverged == (0, 0)
  assert result.mean == pytest.approx(0.352)
  assert result.ci95 == pytest.approx((-0.9807919792983, 1.6847919792983))
  # |d| ranks 3, 5, 4, 2, 1; W- = 5; subsets of {1..5} summing to <= 5: 10 of 32.
  assert result.p_wilcoxon == pytest.approx(2 * 10 / 32)
  assert result.mde == pytest.approx((T975_4 + T80_4) * 1.0733918203526611 / math.sqrt(5))
  assert result.verdict == stats.NO_DIFFERENCE
  assert stats.verdict_text(result) == "no difference detected (detectable effect 1.8)"
  assert stats.paired_cells(result) == {
      "diff": "+0.4 ± 1.1", "ci95": "[-1.0, +1.7]", "p": "0.62", "mde": "1.8", "wins": "1/5",
      "verdict": "no difference detected (detectable effect 1.8)"}
  assert result.as_json()["ci95"] == list(result.ci95)


def _enumerated_wilcoxon_p(d: list[float], scipy_stats) -> float:
  """Two-sided p by listing all 2^m sign choices of the nonzero |d| with mean ranks."""
  d = [x for x in d if x != 0]
  ranks = scipy_stats.rankdata(np.abs(d))
  observed = sum(r for r, x in zip(ranks, d) if x > 0)
  sums = [sum(r for r, s in zip(ranks, signs) if s) for signs in
          itertools.product([False, True], repeat=len(d))]
  below = sum(s <= observed + 1e-9 for s in sums) / len(sums)
  above = sum(s >= observed - 1e-9 for s in sums) / len(sums)
  return min(1.0, 2 * min(below, above))


@pytest.mark.parametrize("d", [[0.5, -0.5, 1.0, 2.0, -3.0, 0.0, 2.0],
                               [0.3, 0.1, -0.2, 0.4, 0.5, 0.6, -0.05, 0.7],
                               [1.0, 1.0, 1.0, -1.0]])
def test_wilcoxon_exact_by_enumeration_with_ties_and_zeros(d, scipy_stats):
  assert stats.wilcoxon_p(d) == pytest.approx(_enumerated_wilcoxon_p(d, scipy_stats), abs=1e-12)


def test_wilcoxon_tiny_case_by_hand():
  # d = (1, 2, -3): W+ = 3; sign sums over {1,2,3}: 0,1,2,3,3,4,5,6; P(W+ <= 3) = 5/8.
  assert stats.wilcoxon_p([1.0, 2.0, -3.0]) == 1.0
  # (1, 2, 3) all positive: P(W+ >= 6) = 1/8, p = 1/4.
  assert stats.wilcoxon_p([1.0, 2.0, 3.0]) == 0.25
  assert stats.wilcoxon_p([0.0, 0.0]) == 1.0


def test_wilcoxon_equals_scipy_exact_without_ties(scipy_stats):
  rng = np.random.default_rng(0)
  for n in range(1, 26):
    d = rng.normal(0.4, 1.0, n)
    assert stats.wilcoxon_p(d) == pytest.approx(
        scipy_stats.wilcoxon(d, method="exact")[1], abs=1e-12)


@pytest.mark.parametrize("lower_is_better", [True, False])
def test_verdict_both_directions(lower_is_better):
  base = np.array([10.0, 11.0, 12.0, 10.5, 11.5, 12.5, 10.2, 11.2, 12.2, 10.8])
  shift = np.array([0.5, 0.6, 0.4, 0.55, 0.45, 0.5, 0.62, 0.38, 0.5, 0.5])
  up = stats.paired(base + shift, base, lower_is_better)
  down = stats.paired(base - shift, base, lower_is_better)
  assert up.ci95[0] > 0 and down.ci95[1] < 0
  assert up.verdict == (stats.WORSE if lower_is_better else stats.BETTER)
  assert down.verdict == (stats.BETTER if lower_is_better else stats.WORSE)
  assert (up.wins, down.wins) == ((0, 10) if lower_is_better else (10, 0))
  assert up.p_wilcoxon == down.p_wilcoxon == pytest.approx(2 / 2**10)
  assert stats.verdict_text(up) in ("better", "worse")


def test_too_few_seeds_and_zero_variance():
  none = stats.paired([], [], True)
  assert none.n == 0 and math.isnan(none.mean) and none.p_wilcoxon == 1.0
  assert none.verdict == stats.NO_DIFFERENCE
  one = stats.paired([2.0], [1.0], True)
  assert one.mean == 1.0 and math.isnan(one.std) and math.isnan(one.mde)
  assert all(math.isnan(v) for v in one.ci95) and one.verdict == stats.NO_DIFFERENCE
  assert stats.verdict_text(one) == ("no difference detected (fewer than 2 seeds, "
                                     "no detectable effect)")
  assert stats.paired_cells(one)["ci95"] == "—" and stats.paired_cells(one)["mde"] == "—"
  same = stats.paired([1.0, 2.0, 3.0], [1.0, 2.0, 3.0], True)
  assert (same.mean, same.std, same.ci95, same.mde) == (0.0, 0.0, (0.0, 0.0), 0.0)
  assert same.verdict == stats.NO_DIFFERENCE and same.p_wilcoxon == 1.0
  constant = stats.paired([1.5, 2.5, 3.5, 4.5], [1.0, 2.0, 3.0, 4.0], True)
  assert constant.ci95 == (0.5, 0.5) and constant.mde == 0.0
  assert constant.verdict == stats.WORSE and constant.p_wilcoxon == 2 / 2**4


def test_diverged_runs():
  base = np.linspace(10.0, 11.0, 6)
  better = base - np.array([1.0, 1.1, 0.9, 1.05, 0.95, 1.0])
  # The base diverged on one seed: agrees with "better"; the finite seeds carry the numbers.
  result = stats.paired(better, np.where(np.arange(6) == 2, np.inf, base), True)
  assert result.verdict == stats.BETTER and result.diverged == (0, 1) and result.wins == 6
  assert result.mean == pytest.approx(-np.mean([1.0, 1.1, 1.05, 0.95, 1.0]))
  # The method diverged on a seed where the base did not: not "better".
  result = stats.paired(np.where(np.arange(6) == 0, np.nan, better), base, True)
  assert result.verdict == stats.DIVERGED and result.diverged == (1, 0) and result.wins == 5
  assert stats.verdict_text(result) == "diverged (method 1/6, base 0/6 seeds)"
  # Divergence on both sides of the same seed: left out, neutral.
  both = np.arange(6) == 3
  result = stats.paired(np.where(both, np.nan, better), np.where(both, np.nan, base), True)
  assert result.verdict == stats.BETTER and result.diverged == (1, 1) and result.wins == 5
  # Higher is better: a diverged base is still the loser.
  result = stats.paired([0.5, 0.6], [np.nan, 0.5], False)
  assert result.wins == 2 and result.verdict == stats.DIVERGED


def test_paired_rejects_unequal_lengths():
  with pytest.raises(ValueError, match="3 for the method and 2 for the base"):
    stats.paired([1.0, 2.0, 3.0], [1.0, 2.0], True)


def test_median_interval_coverage_is_binomial(scipy_stats):
  for n in range(1, 30):
    j, coverage = stats.median_interval(n)
    exact = scipy_stats.binom.cdf(n - j, n, 0.5) - scipy_stats.binom.cdf(j - 1, n, 0.5)
    assert coverage == pytest.approx(exact)
    if n >= 6:
      assert coverage >= 0.95
      wider = (scipy_stats.binom.cdf(n - j - 1, n, 0.5) - scipy_stats.binom.cdf(j, n, 0.5))
      assert j + 1 > (n + 1) // 2 or wider < 0.95  # j is the largest that reaches 95%
    else:
      assert j == 1 and coverage < 0.95
  assert stats.median_interval(10) == (2, 1 - 2 * 11 / 1024)


def test_reach_with_unreached_seeds():
  iterations = [100, 200, np.inf, 300, 150, 120, 400, 500, np.nan, 250]
  result = stats.reach(iterations)
  assert (result.n, result.reached, result.median) == (10, 8, 275.0)
  assert result.interval == (120.0, np.inf)  # 2nd and 9th of the ordered values
  assert result.coverage == pytest.approx(0.978515625)
  assert stats.reach_text(result) == "275 [120, ∞] (8/10)"
  assert result.as_json()["interval"] == [120.0, np.inf]
  never = stats.reach([np.inf] * 4)
  assert (never.reached, never.median, never.interval) == (0, np.inf, (np.inf, np.inf))
  small = stats.reach([30, 10, 20, 50, 40])
  assert small.interval == (10.0, 50.0) and small.coverage == pytest.approx(1 - 2 / 32)
  assert stats.reach([]).n == 0 and math.isnan(stats.reach([]).median)


def test_number_formatting():
  assert stats.number(15.1649) == "15.16"
  assert stats.number(math.inf) == "inf" and stats.number(math.nan) == "nan"
  assert stats.number(None, missing="-") == "-" and stats.number(0.012345, 3) == "0.0123"
  assert stats.pm(15.16, 1.275) == "15.2 ± 1.3"
  assert stats.pm(3.14159, 0.0996) == "3.14 ± 0.10"
  assert stats.pm(-0.4123, 0.0234, signed=True) == "-0.412 ± 0.023"
  assert stats.pm(0.27, 0.5, signed=True) == "+0.27 ± 0.50"
  assert stats.pm(1234.5, 123.4) == "1234 ± 123"
  assert stats.pm(12.3456, 0.0) == "12.35 ± 0"
  assert stats.pm(math.inf, math.nan) == "inf ± nan"
  assert stats.mean_pm_std([14.0, 15.0, 16.5]) == "15.2 ± 1.3"
  assert stats.interval_text(-0.98, 1.68, 1) == "[-1.0, +1.7]"
  assert stats.interval_text(0.5, math.inf, None) == "[+0.5, ∞]"


def test_markdown_table():
  assert stats.markdown_table(["a", "b"], [[1, "x"], [2.5, "y"]]) == (
      "| a | b |\n|---|---|\n| 1 | x |\n| 2.5 | y |")


def test_relative_difference():
  assert stats.relative_difference([3.0, 4.0], [3.0, 4.0]) == 0.0
  assert stats.relative_difference([3.0, 5.0], [3.0, 4.0]) == pytest.approx(1 / 5)
  # Parameter updates: the difference relative to the step, not to the parameters.
  assert stats.relative_difference([1.1], [1.2], scale=np.array([0.2])) == pytest.approx(0.5)
  assert stats.relative_difference([0.0], [0.0]) == 0.0
  assert stats.relative_difference([1e-30], [0.0]) == float("inf")
  assert stats.relative_difference(np.int32(3), np.int32(3)) == 0.0
  assert stats.relative_difference(np.int32(4), np.int32(3)) > 0
