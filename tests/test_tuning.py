"""The tuning protocol (experiments/tuning.py) on a fake workload whose final validation metric
is analytic: offset + (log10 lr - log10 best)^2 + seed noise, non-finite above a rate."""

import dataclasses
import functools
import json
import math
import re
from pathlib import Path

import pytest

from experiments import cli, engine, records, report, tuned, tuning

ROOT = Path(__file__).resolve().parents[1]

ITERS = 20
EVAL_ITERS = [5, 10, 15, 20]
# method -> (grid centre, best rate, offset, rates above which the loss is non-finite)
SHAPES = {"mid": (0.01, 0.01, 0.2, 0.05), "low": (1.0, 1e-3, 0.3, 3.0),
          "up": (1e-3, 0.1, 0.1, 0.2)}
CALLS: list[records.RunTask] = []


def fake_train(dataset, task, progress, checkpoint=None):
  assert dataset == "data" and checkpoint == records.checkpoint_path(OUT[0], task)
  CALLS.append(task)
  _, best, offset, limit = SHAPES[task.method]
  final = offset + (math.log10(task.lr) - math.log10(best)) ** 2 + 0.01 * task.seed
  progress(task.iters)
  if task.lr > limit:
    bad = math.inf if task.lr < 5 else math.nan
    val, loss = [math.nan] * 3 + [bad], [1.0] + [math.nan] * 3
  else:
    val = [final + 0.2 * (1 - k / task.iters) for k in EVAL_ITERS]
    loss = list(val)
  return {"eval_iters": EVAL_ITERS, "val": val, "test": [v + 0.5 for v in val],
          "train_loss": loss, "factor_iters": [1, ITERS],
          "factors": {"conv": [1.5, 2.0 + task.seed], "dense": [1.1, 1.2]}, "wall_s": 0.25}


def fake_workload(**changes) -> tuning.Workload:
  workload = tuning.Workload(
      name="fake", metric="loss", lower_is_better=True,
      methods={m: shape[0] for m, shape in SHAPES.items()},
      baseline={"mid": "mid", "low": "mid", "up": "mid"}, train=fake_train,
      load_data=functools.partial(str, "data"), iters=ITERS, diverged_at=5.0,
      sizes={"model": "analytic"}, seeds=2)
  return dataclasses.replace(workload, **changes)


def grid_rates(centre, ks):
  return [repr(tuning.grid_lr(centre, 10 ** 0.5, k)) for k in ks]


OUT: list[Path] = []  # the output folder of the run under test


@pytest.fixture(autouse=True)
def out(tmp_path):
  OUT[:] = [tmp_path]


@pytest.fixture
def results(tmp_path):
  CALLS.clear()
  return tuning.run(fake_workload(), tmp_path, workers=1, log=lambda line: None)


def test_grid_extends_down_to_the_cap_up_to_divergence(results):
  methods = results["methods"]
  assert list(methods["mid"]["grid"]) == grid_rates(0.01, range(-2, 3))  # the initial grid
  assert list(methods["low"]["grid"]) == grid_rates(1.0, range(-6, 3))  # 4 below, the cap
  assert list(methods["up"]["grid"]) == grid_rates(1e-3, range(-2, 6))  # 3 above
  assert methods["mid"]["selected_lr"] == pytest.approx(0.01)
  assert methods["low"]["selected_lr"] == pytest.approx(1e-3)  # still on the lowest point
  assert methods["up"]["selected_lr"] == pytest.approx(0.1)
  # Diverged: a non-finite loss, or a final value at/beyond diverged_at = 5.
  assert methods["up"]["diverged"] == grid_rates(1e-3, [-2, -1, 5])
  assert methods["low"]["diverged"] == grid_rates(1.0, [-1, 0, 1, 2])
  assert methods["mid"]["diverged"] == grid_rates(0.01, [2])
  # Grid: 5 + 9 + 8 points at one seed; then seed 1 at each selected rate.
  assert len(CALLS) == 5 + 9 + 8 + 3


def test_selection_recomputed_from_results_json(results, tmp_path):
  stored = json.loads((tmp_path / "results.json").read_text())
  for method in stored["methods"].values():
    assert tuning.select_lr(method["grid"], True) == method["selected_lr"]
  high = stored["methods"]["low"]["grid"]
  assert math.isinf(high[grid_rates(1.0, [1])[0]][0])  # inf and NaN kept, not dropped
  assert math.isnan(high[grid_rates(1.0, [2])[0]][0])
  assert stored["protocol"]["selection"] == tuning.SELECTION
  assert stored["train_seconds"] == pytest.approx(0.25 * len(CALLS))


def test_select_lr_ties_and_non_finite():
  assert tuning.select_lr({"0.1": [1.0, 3.0], "0.01": [2.0, 2.0], "1.0": [0.5]}, True) == 1.0
  assert tuning.select_lr({"0.1": [1.0, 3.0], "0.01": [2.0, 2.0]}, True) == 0.01
  assert tuning.select_lr({0.1: [math.nan], 1.0: [math.inf], 0.01: [9.0]}, True) == 0.01
  assert tuning.select_lr({0.1: [0.0, math.nan], 1.0: [-9.0]}, False) == 1.0
  assert tuning.select_lr({0.1: [3.0], 1.0: [-math.inf]}, False) == 0.1


def test_paired_differences_wins_and_iterations(results):
  methods = results["methods"]
  assert methods["up"]["test"] == pytest.approx([0.6, 0.61])
  assert methods["up"]["paired_test_diff"] == pytest.approx([-0.1, -0.1])
  assert methods["up"]["wins"] == 2
  assert methods["low"]["paired_test_diff"] == pytest.approx([0.1, 0.1])
  assert methods["low"]["wins"] == 0
  assert methods["mid"]["paired_test_diff"] == [0.0, 0.0] and methods["mid"]["wins"] == 0
  # The baseline's mean final validation value is 0.205.
  assert methods["up"]["iters_to_baseline_val"] == [10.0, 15.0]
  assert methods["mid"]["iters_to_baseline_val"] == [20.0, math.inf]
  assert methods["low"]["iters_to_baseline_val"] == [math.inf, math.inf]


def test_selected_rates_reuse_the_grid_seeds(tmp_path):
  CALLS.clear()
  tuning.run(fake_workload(grid_seeds=2, seeds=3), tmp_path, workers=1, log=lambda line: None)
  assert len(CALLS) == 2 * (5 + 9 + 8) + 3
  assert len(set(CALLS)) == len(CALLS)
  assert {task.seed for task in CALLS[-3:]} == {2}


def test_resume_trains_nothing_new(results, tmp_path):
  before = len(CALLS)
  again = tuning.run(fake_workload(), tmp_path, workers=1, log=lambda line: None)
  assert len(CALLS) == before
  assert json.dumps(again["methods"]) == json.dumps(results["methods"])


def test_corrupt_record_is_one_line_naming_the_file(results, tmp_path):
  path = records.record_path(tmp_path, records.RunTask("up", results["methods"]["up"]
                                                       ["selected_lr"], 1, ITERS))
  path.write_text('{"task": ')
  with pytest.raises(cli.InputError, match="is not a run record") as error:
    tuning.run(fake_workload(), tmp_path, workers=1, log=lambda line: None)
  assert str(path) in str(error.value) and "\n" not in str(error.value)
  other_length = records.RunTask("mid", 0.01, 0, ITERS + 1)  # its record is of ITERS
  with pytest.raises(cli.InputError, match="pass another --out or delete it"):
    records.read_record(records.record_path(tmp_path, other_length), other_length)


def test_methods_subset_adds_baselines():
  entry = tuned.WORKLOADS["resnet"]
  centres, baseline = tuned.choose_methods(entry, "nag+layer,optax.lars,adam+relative",
                                           log=lambda line: None)
  assert centres == {"nag+layer": 0.1, "optax.lars": 10.0, "adam+relative": 0.1, "nag": 0.1,
                     "sgd": 0.1, "adam": 0.1}
  assert baseline == {"nag+layer": "nag", "optax.lars": "sgd", "adam+relative": "adam",
                      "nag": "nag", "sgd": "sgd", "adam": "adam"}
  with pytest.raises(cli.UsageError, match="unknown method nope; use some of sgd, sgd[+]layer"):
    tuned.choose_methods(entry, "nag,nope", log=lambda line: None)


def test_report_writes_table_and_figures(tmp_path, capsys):
  CALLS.clear()
  results = tuning.run(fake_workload(seeds=4), tmp_path, workers=1, log=lambda line: None,
                       command="python -m experiments.tuned fake")
  print(report.write_tuned(tmp_path, results))
  stored = json.loads((tmp_path / "results.json").read_text())
  table = (tmp_path / "table.md").read_text()
  assert table in capsys.readouterr().out
  assert all((tmp_path / name).stat().st_size > 10_000
             for name in ("tuning.png", "test_curves.png", "factors.png"))
  rows = {line.split(" | ")[0].strip("| "): line for line in table.splitlines()
          if line.startswith("| ") and not line.startswith("| method")}
  up = stored["methods"]["up"]
  assert up["test"] == pytest.approx([0.6, 0.61, 0.62, 0.63])
  cells = [report.mean_pm_std(up[key]) for key in ("val", "test", "paired_test_diff")]
  assert rows["up"] == f"| up | mid | 0.1 | 8 (3) | {' | '.join(cells)} | 4/4 | 12.5 (4/4) |"
  assert report.mean_pm_std(up["test"]) == "0.615 ± 0.013"
  # The baseline's mean final validation value is 0.215: its seeds 0 and 1 reach it.
  assert rows["mid"].endswith("| 0.715 ± 0.013 | — | — | not reached (2/4) |")
  assert re.search(r"\| 0\.1 ± [0-9.e-]+ \| 0/4 \| not reached \(0/4\) \|$", rows["low"])
  assert "Sizes: model: analytic." in table
  assert stored["command"] == "python -m experiments.tuned fake"


def test_eval_iters_are_those_of_the_committed_runs():
  assert engine.eval_iters(6, 2) == [3, 6]
  assert engine.eval_iters(2, 5) == [1, 2]  # fewer points than asked when iters < points
  for workload, iters, points in (("lenet", 300, 3), ("charlm", 600, 5)):
    record = json.loads(next((ROOT / "results" / "evidence" / workload / "runs").rglob(
        "*.json")).read_text())
    assert record["record"]["eval_iters"] == engine.eval_iters(iters, points)
