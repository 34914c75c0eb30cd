"""experiments/verdict.py on synthetic results.json files: the rule and the summary in words."""

import json
from pathlib import Path

import pytest

from experiments import cli, records, report, stats, tuning, verdict


def method(baseline, diffs, lr=0.01, base_test=1.0):
  sign_wins = sum(1 for d in diffs if d < 0)
  return {"baseline": baseline, "selected_lr": lr, "test": [base_test + d for d in diffs],
          "paired_test_diff": diffs, "wins": sign_wins}


def write(folder, name, methods):
  results = {"workload": name, "metric": "error (%)", "lower_is_better": True, "iters": 300,
             "protocol": {"seeds": 5}, "methods": methods}
  (folder / name).mkdir(parents=True)
  (folder / name / "results.json").write_text(json.dumps(results))


def test_judge_rule():
  assert verdict.judge([-0.2, -0.2, -0.2, -0.2, 0.1], True) == "better"  # 4 of 5 wins
  assert verdict.judge([-0.2, -0.2, -0.2, 0.1, 0.1], True) == "no difference"  # 3 of 5
  assert verdict.judge([-0.1, -0.1, -0.1, -0.1, 1.0], True) == "no difference"  # mean worse
  assert verdict.judge([0.1, 0.1, 0.1, 0.1, -0.1], True) == "worse"
  assert verdict.judge([0.1, 0.1, 0.1, 0.1, -0.1], False) == "better"  # higher is better


def test_verdict_table_and_words(tmp_path):
  zero = [0.0] * 5
  write(tmp_path, "charlm", {
      "adamw": method("adamw", zero, 3e-3),
      "adamw+layer": method("adamw", [0.05] * 5),
      "adamw+relative": method("adamw", [-0.01] * 5),
      "optax.lamb": method("adamw", [0.02] * 5)})
  write(tmp_path, "lenet", {
      "sgd": method("sgd", zero),
      "sgd+layer": method("sgd", [-0.2, -0.2, -0.2, -0.2, 0.1], 0.00316),
      "sgd+relative": method("sgd", [-0.1, 0.1, -0.1, 0.1, -0.05])})
  text = verdict.main(["--results", str(tmp_path)])
  assert (tmp_path / "verdict.md").read_text() == text
  lines = text.splitlines()
  table = [line for line in lines if line.startswith("| lenet") or line.startswith("| charlm")]
  assert [line.split(" | ")[2] for line in table] == [
      "sgd", "sgd+layer", "sgd+relative", "adamw", "adamw+layer", "adamw+relative",
      "optax.lamb"]  # lenet first, in the order of WORKLOADS
  assert table[1] == ("| lenet | sgd | sgd+layer | 0.00316 | 0.86 ± 0.13 | -0.14 ± 0.13 | "
                      "4/5 | better |")
  assert table[2].endswith("| 3/5 | no difference |")  # wins 3 of 5
  assert table[4].endswith("| 0/5 | worse |") and table[6].endswith("| 0/5 | worse |")
  assert ("- **lenet, sgd**: sgd+layer better than tuned sgd, but sgd+relative is no different "
          "from tuned sgd: the gain came with the factor's global boost of the step, not the "
          "redistribution across layers.") in lines
  assert ("- **charlm, adamw**: adamw+layer worse than tuned adamw while adamw+relative is "
          "better: the redistribution helps only without the boost; peers: optax.lamb "
          "worse.") in lines
  assert lines[-1] == "Not run yet: resnet."


def test_errors_name_the_file(tmp_path, capsys):
  with pytest.raises(SystemExit) as exited:
    verdict.main(["--results", str(tmp_path / "none")])
  assert exited.value.code == 1
  assert capsys.readouterr().err == (
      f"error: no folder {tmp_path / 'none'}; run python -m experiments.tuned lenet (or "
      "resnet, charlm) first, or pass its --out's folder as --results\n")
  assert verdict.main(["--results", str(tmp_path)]).endswith(
      "\n\nNo workload has been run yet (lenet, resnet, charlm).\n")
  write(tmp_path, "lenet", {"sgd": {"baseline": "sgd"}})
  with pytest.raises(cli.InputError, match=r"lenet/results.json is not .*'sgd lacks "
                                           r"paired_test_diff, selected_lr, test, wins'\)"):
    verdict.load(tmp_path)


def test_committed_verdict_is_that_of_the_committed_results():
  folder = Path("results/evidence")
  assert (folder / "verdict.md").read_text() == verdict.verdict(verdict.load(folder), folder)


COMMITTED = Path("results/evidence")


@pytest.mark.parametrize("workload", ["lenet", "resnet", "charlm"])
def test_committed_selections_recompute_from_their_grids(workload):
  results = json.loads((COMMITTED / workload / "results.json").read_text())
  for name, method in results["methods"].items():
    rates = sorted(float(lr) for lr in method["grid"])
    selected = tuning.select_lr(method["grid"], results["lower_is_better"])
    assert selected == method["selected_lr"], name
    assert len(rates) >= 5 and rates[0] < selected < rates[-1], name  # bracketed
    assert len(method["test"]) == results["protocol"]["seeds"] == 5, name


def test_committed_grids_reach_the_divergence_edge_except_adamw_on_charlm():
  # docs/evidence.md ("Grid coverage") names the grids whose largest rate did not diverge.
  not_reached = {(workload, name)
                 for workload in ("lenet", "resnet", "charlm")
                 for name, method in json.loads(
                     (COMMITTED / workload / "results.json").read_text())["methods"].items()
                 if not method["diverged"]}
  assert not_reached == {("charlm", "adamw"), ("charlm", "adamw+layer"),
                         ("charlm", "adamw+relative")}


def test_mean_pm_std_rounds_to_the_std():
  assert stats.mean_pm_std([14.0, 16.3]) == "15.2 ± 1.6"
  assert stats.mean_pm_std([1.0, 1.1409]) == "1.07 ± 0.10"  # 0.0996 rounds up a digit
  assert stats.mean_pm_std([100.0, 300.0, 500.0]) == "300 ± 200"
  assert stats.mean_pm_std([1.0, 1.0]) == "1 ± 0"
  assert stats.mean_pm_std([0.1, float("nan")]) == "nan ± nan"
  assert stats.mean_pm_std([0.1, 0.1 + 3e-16]) == "0.1 ± 2.159e-16"  # rounding noise


@pytest.mark.parametrize("workload", ["lenet", "resnet", "charlm"])
def test_committed_table_is_rendered_from_the_committed_results(workload):
  results = json.loads((COMMITTED / workload / "results.json").read_text())
  assert (COMMITTED / workload / "table.md").read_text() == report.tuned_table(results)


def test_factor_table_from_the_run_records(tmp_path):
  methods = {"sgd": method("sgd", [0.0] * 2), "sgd+layer": method("sgd", [-0.1] * 2)}
  results = {"workload": "lenet", "metric": "error (%)", "lower_is_better": True, "iters": 10,
             "protocol": {"seeds": 2}, "methods": methods}
  # Two layers, three recorded gradients; seed 1's last point is NaN (a diverged run).
  factors = {0: {"a": [1.0, 2.0, 2.0], "b": [3.0, 2.0, 4.0]},
             1: {"a": [1.5, 1.0, float("nan")], "b": [1.5, 3.0, float("nan")]}}
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
