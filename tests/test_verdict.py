"""experiments/verdict.py on synthetic results.json files: the interval rule and the summary in
words; the committed results (results/evidence, where present) recomputed from their JSON."""

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from experiments import cli, records, report, stats, tuning, verdict

SEEDS = list(range(100, 110))
# Ten paired differences each: the interval of BETTER excludes 0 (mean -0.2), that of NOISE
# does not (mean 0.01), WORSE is 0.05 on every seed.
BETTER = [-0.2, -0.3, -0.1, -0.25, -0.15, -0.2, -0.3, -0.1, -0.2, -0.2]
NOISE = [0.1, -0.1, 0.2, -0.2, 0.05, -0.05, 0.1, -0.1, 0.0, 0.1]
WORSE = [0.05] * 10


def method(baseline, diffs, lr=0.01, base_test=1.0):
  test = [base_test + d for d in diffs]
  result = stats.paired(test, [base_test] * len(diffs), True)
  return {"baseline": baseline, "selected_lr": lr, "test": test, "paired_test_diff": diffs,
          "wins": result.wins, "ci95": list(result.ci95), "p_wilcoxon": result.p_wilcoxon,
          "mde": result.mde, "verdict": result.verdict,
          "iters_to_baseline_val": [100.0] * len(diffs)}


def write(folder, name, methods):
  results = {"workload": name, "metric": "error (%)", "lower_is_better": True, "iters": 300,
             "grid_seeds": [0, 1, 2], "eval_seeds": SEEDS, "protocol": {"seeds": 10},
             "methods": methods}
  (folder / name).mkdir(parents=True)
  (folder / name / "results.json").write_text(json.dumps(results))


def test_verdict_table_and_words(tmp_path):
  zero = [0.0] * 10
  write(tmp_path, "charlm", {
      "adamw": method("adamw", zero, 3e-3),
      "adamw+layer": method("adamw", WORSE),
      "adamw+relative": method("adamw", NOISE),
      "lamb": method("adamw", WORSE)})
  write(tmp_path, "lenet", {
      "sgd": method("sgd", zero),
      "sgd+layer": method("sgd", BETTER, 0.00316),
      "sgd+relative": method("sgd", NOISE)})
  text = verdict.main(["--results", str(tmp_path)])
  assert (tmp_path / "verdict.md").read_text() == text
  lines = text.splitlines()
  table = [line.split(" | ") for line in lines
           if line.startswith("| lenet") or line.startswith("| charlm")]
  assert [row[2] for row in table] == [
      "sgd", "sgd+layer", "sgd+relative", "adamw", "adamw+layer", "adamw+relative",
      "lamb"]  # lenet first, in the order of WORKLOADS
  # BETTER: mean -0.2, std sqrt(0.045 / 9), t(0.975, 9) = 2.262: -0.2 -+ 0.0506.
  better = stats.paired([1 + d for d in BETTER], [1.0] * 10, True)
  assert better.ci95 == pytest.approx((-0.2506, -0.1494), abs=1e-4)
  assert table[1] == ["| lenet", "sgd", "sgd+layer", "0.00316", "0.800 ± 0.071", "-0.200 ± 0.071",
                      "[-0.251, -0.149]", stats.number(better.p_wilcoxon, 2),
                      stats.number(better.mde, 2), "10/10", "better",
                      "100 [100, 100] (10/10) |"]
  noise = stats.paired([1 + d for d in NOISE], [1.0] * 10, True)
  assert table[2][-2] == f"no difference detected (detectable effect {noise.mde:.2g})"
  assert table[0][5:] == ["—"] * 5 + ["(tuned base)", "100 [100, 100] (10/10) |"]
  assert table[4][-2] == "worse" and table[6][-2] == "worse"
  summary = next(line for line in lines if line.startswith("- **lenet, sgd**"))
  assert summary == (
      "- **lenet, sgd**: sgd+layer better against tuned sgd (mean difference -0.200, 95% CI "
      "[-0.251, -0.149]); sgd+relative no difference detected (detectable effect "
      f"{noise.mde:.2g}) against tuned sgd (mean difference +0.01, 95% CI "
      f"{stats.interval_text(*noise.ci95, 2)}). sgd+relative is not: the gain of sgd+layer is "
      "not shown to come from the redistribution across layers.")
  charlm = next(line for line in lines if line.startswith("- **charlm, adamw**"))
  assert "lamb worse against tuned adamw" in charlm and "carries" not in charlm
  assert "10 evaluation seeds, 300 iterations" in text
  assert lines[-1] == "Not run yet: resnet."


def test_gain_attributed_to_the_redistribution_only_when_both_are_better(tmp_path):
  write(tmp_path, "lenet", {"sgd": method("sgd", [0.0] * 10),
                            "sgd+layer": method("sgd", BETTER),
                            "sgd+relative": method("sgd", BETTER)})
  [results] = verdict.load(tmp_path)
  assert verdict.summary(results, "sgd").endswith(
      "sgd+relative (mean factor 1 over parameters) is better too: the redistribution across "
      "layers carries a gain.")


def test_gain_put_down_to_the_mean_factor_only_when_uniform_is_better(tmp_path):
  write(tmp_path, "lenet", {"adagrad": method("adagrad", [0.0] * 10),
                            "adagrad+layer": method("adagrad", BETTER),
                            "adagrad+relative": method("adagrad", NOISE),
                            "adagrad+uniform": method("adagrad", BETTER)})
  [results] = verdict.load(tmp_path)
  assert verdict.compared(results, "adagrad") == ["adagrad", "adagrad+layer",
                                                  "adagrad+relative", "adagrad+uniform"]
  words = verdict.summary(results, "adagrad")
  assert words.endswith("adagrad+relative is not: the gain of adagrad+layer is not shown to "
                        "come from the redistribution across layers; adagrad+uniform is "
                        "better: the gain comes with the factors' parameter-weighted mean, "
                        "one multiplier for every layer.")
  results["methods"]["adagrad+uniform"] = method("adagrad", NOISE)
  assert verdict.summary(results, "adagrad").endswith("redistribution across layers.")
  results["methods"]["adagrad+relative"] = method("adagrad", WORSE)
  results["methods"]["adagrad+uniform"] = method("adagrad", BETTER)
  assert verdict.summary(results, "adagrad").endswith(
      "adagrad+relative is worse: the redistribution across layers alone does harm, so the "
      "gain of adagrad+layer does not come from it; adagrad+uniform is better: the gain comes "
      "with the factors' parameter-weighted mean, one multiplier for every layer.")


def test_errors_name_the_file(tmp_path, capsys):
  with pytest.raises(SystemExit) as exited:
    verdict.main(["--results", str(tmp_path / "none")])
  assert exited.value.code == 1
  assert capsys.readouterr().err == (
      f"error: no folder {tmp_path / 'none'}; run python -m experiments.tuned lenet (or "
      "resnet, charlm) first, or pass its --out's folder as --results\n")
  assert verdict.main(["--results", str(tmp_path)]).endswith(
      "\n\nNo workload has been run yet (lenet, resnet, charlm).\n")
  write(tmp_path, "lenet", {"sgd": {"baseline": "sgd", "ci95": [0, 0]}})
  with pytest.raises(cli.InputError, match=r"lenet/results.json is not .*'sgd lacks "
                                           r"iters_to_baseline_val, mde, p_wilcoxon, "
                                           r"paired_test_diff, selected_lr, test, verdict, "
                                           r"wins'\)"):
    verdict.load(tmp_path)


COMMITTED = Path("results/evidence")
PRESENT = sorted(p.parent.name for p in COMMITTED.glob("*/results.json"))


@pytest.mark.parametrize("workload", PRESENT)
def test_committed_results_recompute_from_their_json(workload):
  results = json.loads((COMMITTED / workload / "results.json").read_text())
  assert not set(results["grid_seeds"]) & set(results["eval_seeds"])
  assert len(results["eval_seeds"]) >= 10 and len(results["grid_seeds"]) >= 3
  for name, method in results["methods"].items():
    rates = sorted(float(lr) for lr in method["grid"])
    selected = tuning.select_lr(method["grid"], results["lower_is_better"])
    assert selected == method["selected_lr"], name
    assert rates[0] < selected < rates[-1], name  # bracketed
    assert max(b / a for a, b in zip(rates, rates[1:])) <= 2 * (1 + 1e-12), name
    assert all(len(v) == len(results["grid_seeds"]) for v in method["grid"].values()), name
    assert len(method["test"]) == len(results["eval_seeds"]), name
    again = report.comparison(results, name)
    assert method["ci95"] == pytest.approx(list(again.ci95), nan_ok=True), name
    assert method["mde"] == pytest.approx(again.mde, nan_ok=True), name
    assert (method["p_wilcoxon"], method["verdict"]) == (again.p_wilcoxon, again.verdict), name
  assert (COMMITTED / workload / "table.md").read_text() == report.tuned_table(results)


@pytest.mark.skipif(not PRESENT, reason="no committed results yet")
def test_committed_verdict_is_that_of_the_committed_results():
  assert (COMMITTED / "verdict.md").read_text() == verdict.verdict(verdict.load(COMMITTED),
                                                                     COMMITTED)


def test_mean_pm_std_rounds_to_the_std():
  assert stats.mean_pm_std([14.0, 16.3]) == "15.2 ± 1.6"
  assert stats.mean_pm_std([1.0, 1.1409]) == "1.07 ± 0.10"  # 0.0996 rounds up a digit
  assert stats.mean_pm_std([100.0, 300.0, 500.0]) == "300 ± 200"
  assert stats.mean_pm_std([1.0, 1.0]) == "1 ± 0"
  assert stats.mean_pm_std([0.1, float("nan")]) == "nan ± nan"
  assert stats.mean_pm_std([0.1, 0.1 + 3e-16]) == "0.1 ± 2.159e-16"  # rounding noise


def test_factor_table_from_the_run_records(tmp_path):
  methods = {"sgd": method("sgd", [0.0] * 2), "sgd+layer": method("sgd", [-0.1] * 2)}
  results = {"workload": "lenet", "metric": "error (%)", "lower_is_better": True, "iters": 10,
             "eval_seeds": [100, 101], "methods": methods}
  # Two layers, three recorded gradients; seed 101's last point is NaN (a diverged run).
  factors = {100: {"a": [1.0, 2.0, 2.0], "b": [3.0, 2.0, 4.0]},
             101: {"a": [1.5, 1.0, float("nan")], "b": [1.5, 3.0, float("nan")]}}
  for seed, layers in factors.items():
    task = records.RunTask("sgd", 0.01, seed, 10)
    records.write_record(tmp_path / "lenet", task,
                         {key: [] for key in records.RECORD_KEYS} | {"factors": layers})
  rows = verdict.factor_rows(tmp_path, [results])
  # first: 1, 3, 1.5, 1.5; last: 2, 4; max/min: 3, 1, 2, 1, 3 (NaN column left out) -> 2.
  assert rows[-1] == "| lenet | sgd | 2 | 1.00-3.00 | 2.00-4.00 | 2.00 |"
  assert len([row for row in rows if row.startswith("| lenet")]) == 1  # sgd+layer: no base
  assert verdict.factor_rows(tmp_path / "elsewhere", [results]) == []


def test_unwritable_out_is_one_line(tmp_path, capsys):
  with pytest.raises(SystemExit) as exited:
    verdict.main(["--results", str(tmp_path), "--out", "/proc/x/verdict.md"])
  assert exited.value.code == 1
  err = capsys.readouterr().err
  assert err.startswith("error: cannot write to /proc/x") and err.count("\n") == 1


def mean_test_curve(workload: str, name: str) -> tuple[list[int], np.ndarray]:
  """Evaluation iterations and the mean test curve of ``name``'s evaluation runs."""
  results = json.loads((COMMITTED / workload / "results.json").read_text())
  runs = report.selected_records(COMMITTED / workload, results, name)
  return runs[0]["eval_iters"], np.mean([run["test"] for run in runs], axis=0)


@pytest.mark.skipif("lenet" not in PRESENT, reason="no committed LeNet results")
def test_docs_account_for_adagrad_missing_its_level_as_its_runs_show():
  iters, sgd = mean_test_curve("lenet", "sgd")
  _, adagrad = mean_test_curve("lenet", "adagrad")
  assert (adagrad > sgd).all()  # trails at every evaluation point
  assert adagrad[-2] > adagrad[-1]  # still falling at the end
  docs = " ".join(Path("docs/evidence.md").read_text().split())
  claim = (f"by {adagrad[0] - sgd[0]:.2f} points at iteration {iters[0]}, "
           f"{adagrad[-1] - sgd[-1]:.2f} at {iters[-1]:,}) and is still falling at the end "
           f"({adagrad[-3]:.2f}% at iteration {iters[-3]:,})")
  assert claim in docs
  level = json.loads((COMMITTED / "lenet" / "results.json").read_text())["methods"]["adagrad"][
      "level"]
  assert not level["met"] and f"misses SGD's by {adagrad[-1] - level['value']:.2f} points" in docs


def numbers(text: str) -> list[str]:
  """The numbers written in ``text``, without sign or thousands separators."""
  return [n.replace(",", "") for n in re.findall(r"\d+(?:,\d{3})*(?:\.\d+)?", text)]


def in_nats(bits: str) -> str:
  """A number of bits written in nats, to as many decimals."""
  decimals = len(bits.partition(".")[2])
  return f"{float(bits) * math.log(2):.{decimals}f}"


@pytest.mark.skipif(not PRESENT, reason="no committed results yet")
def test_readme_verdict_prose_has_only_committed_numbers():
  """Every number in the README's paragraph on the tuned comparisons (beside its table) is
  one of verdict.md or of a workload's table.md (levels, sizes, search), so a number
  mistyped or left from earlier results fails."""
  readme = Path("README.md").read_text()
  start = readme.index("**Against tuned baselines**")
  paragraph = readme[start:readme.index("[Evidence](docs/evidence.md)", start)]
  prose = "\n".join(line for line in paragraph.splitlines() if not line.startswith("|"))
  verdict_text = (COMMITTED / "verdict.md").read_text()
  committed = set(numbers(verdict_text))
  for workload in PRESENT:
    table = (COMMITTED / workload / "table.md").read_text()
    committed |= set(numbers(table))
    if json.loads((COMMITTED / workload / "results.json").read_text())["metric"] == (
        "bits per character"):  # also stated in nats: bits x ln 2, to as many decimals
      lines = [line for line in verdict_text.splitlines() if workload in line]
      committed |= {in_nats(n) for n in numbers("\n".join([table, *lines]))}
  assert [n for n in numbers(prose) if n not in committed] == []
