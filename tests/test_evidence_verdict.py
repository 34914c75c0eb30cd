"""evidence/verdict.py on synthetic results.json files: the rule and the summary in words."""

import json
from pathlib import Path

import pytest

from evidence import verdict
from examples.paper import cli


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
  assert table[1] == ("| lenet | sgd | sgd+layer | 0.00316 | 0.86 ± 0.1342 | -0.14 ± 0.1342 | "
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
      f"error: no folder {tmp_path / 'none'}; run python -m evidence.lenet (or resnet, "
      "charlm) first, or pass its --out as --results\n")
  assert verdict.main(["--results", str(tmp_path)]).endswith(
      "\n\nNo workload has been run yet (lenet, resnet, charlm).\n")
  write(tmp_path, "lenet", {"sgd": {"baseline": "sgd"}})
  with pytest.raises(cli.InputError, match=r"lenet/results.json is not .*'sgd lacks "
                                           r"paired_test_diff, selected_lr, test, wins'\)"):
    verdict.load(tmp_path)


def test_committed_verdict_is_that_of_the_committed_results():
  folder = Path("results/evidence")
  assert (folder / "verdict.md").read_text() == verdict.verdict(verdict.load(folder))
