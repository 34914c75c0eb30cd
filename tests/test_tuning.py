"""The tuning protocol (experiments/tuning.py) on a fake workload whose final validation metric
is analytic: offset + 0.005 (lattice steps from the best)^2 + seed noise, non-finite above a
rate. Lattice: 0.01 * sqrt(2)^k."""

import dataclasses
import functools
import json
import math
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from experiments import cli, engine, methods, records, report, stats, tuned, tuning

STEP = math.log(2 ** 0.5)
COARSE, ITERS = 8, 20
# method -> (best lattice position k, offset, rates above which the loss is non-finite,
# the seed noise's multiplier)
SHAPES = {"mid": (0.0, 0.2, 0.05, 1), "up": (7.2, 0.1, 0.2, 2), "low": (-13.29, 0.3, 3.0, 3)}
CALLS: list[records.RunTask] = []
OUT: list[Path] = []  # the output folder of the run under test


def noise(method: str, seed: int) -> float:
  return 0.01 * (seed * SHAPES[method][3] % 5)


def final_val(method: str, lr: float, seed: int) -> float:
  best, offset, _, _ = SHAPES[method]
  return offset + 0.005 * (math.log(lr / 0.01) / STEP - best) ** 2 + noise(method, seed)


def fake_train(dataset, task, progress, checkpoint=None):
  folder = OUT[0] / "coarse" if task.iters == COARSE else OUT[0]
  assert dataset == "data" and checkpoint == records.checkpoint_path(folder, task)
  CALLS.append(task)
  eval_iters = [task.iters * j // 4 for j in range(1, 5)]
  progress(task.iters)
  if task.lr > SHAPES[task.method][2]:
    bad = math.inf if task.lr < 1 else math.nan
    val, loss = [math.nan] * 3 + [bad], [1.0] + [math.nan] * 3
  else:
    final = final_val(task.method, task.lr, task.seed)
    val = [final + 0.2 * (1 - k / task.iters) for k in eval_iters]
    loss = list(val)
  return {"eval_iters": eval_iters, "val": val, "test": [v + 0.5 for v in val],
          "train_loss": loss, "factor_iters": [1, task.iters],
          "factors": {"conv": [1.5, 2.0 + task.seed], "dense": [1.1, 1.2]}, "wall_s": 0.25}


def fake_workload(**changes) -> tuning.Workload:
  workload = tuning.Workload(
      name="fake", metric="loss", lower_is_better=True, methods=dict.fromkeys(SHAPES, 0.01),
      baseline={"mid": "mid", "low": "mid", "up": "mid"}, train=fake_train,
      load_data=functools.partial(str, "data"), iters=ITERS, diverged_at=5.0,
      sizes={"model": "analytic"}, coarse_iters=COARSE, coarse_points=5, fine_span=2,
      eval_seeds=(100, 101, 102, 103),
      reference={"split": "test", "value": 0.8, "source": "made up"})
  return dataclasses.replace(workload, **changes)


def rates(ks):
  return [repr(tuning.grid_lr(0.01, 2 ** 0.5, k)) for k in ks]


@pytest.fixture(autouse=True)
def out(tmp_path):
  OUT[:] = [tmp_path]


@pytest.fixture
def results(tmp_path):
  CALLS.clear()
  return tuning.run(fake_workload(), tmp_path, workers=1, log=lambda line: None)


def test_coarse_stage_brackets_then_the_grid_refines(results):
  methods = results["methods"]
  # Coarse: every 2nd lattice point from -4..4, one seed; grown below while the best is the
  # lowest, above while it is the highest or the highest has not diverged, 4 at most a side.
  assert list(methods["mid"]["coarse"]["grid"]) == rates(range(-4, 7, 2))  # 6 diverged
  assert list(methods["up"]["coarse"]["grid"]) == rates(range(-4, 11, 2))  # 10 diverged
  assert list(methods["low"]["coarse"]["grid"]) == rates(range(-12, 13, 2))  # both caps
  assert methods["up"]["coarse"]["diverged"] == rates([10])
  assert [methods[m]["coarse"]["selected_lr"] for m in ("mid", "up", "low")] == [
      tuning.grid_lr(0.01, 2 ** 0.5, k) for k in (0, 8, -12)]
  # Grid: every lattice point within 2 steps of the coarse best, the three grid seeds; the
  # point between up's best (7) and its diverged neighbour (9, above 0.2) is on it.
  assert list(methods["mid"]["grid"]) == rates(range(-2, 3))
  assert list(methods["up"]["grid"]) == rates(range(6, 11))
  assert list(methods["low"]["grid"]) == rates(range(-14, -9))
  assert methods["up"]["diverged"] == rates([9, 10]) and methods["mid"]["diverged"] == []
  assert [methods[m]["selected_lr"] for m in ("mid", "up", "low")] == [
      tuning.grid_lr(0.01, 2 ** 0.5, k) for k in (0, 7, -13)]
  assert all(len(values) == 3 for m in methods.values() for values in m["grid"].values())
  coarse = [t for t in CALLS if t.iters == COARSE]
  assert len(coarse) == 6 + 8 + 13 and {t.seed for t in coarse} == {0}
  assert len(CALLS) == len(coarse) + 3 * 5 * 3 + 3 * 4
  assert results["runs"] == {"coarse": 27, "grid": 45, "evaluation": 12}
  assert results["stage_seconds"] == {"coarse": 27 * 0.25, "grid": 45 * 0.25,
                                      "evaluation": 12 * 0.25}


def test_selection_and_intervals_recomputed_from_results_json(results, tmp_path):
  stored = json.loads((tmp_path / "results.json").read_text())
  assert stored["grid_seeds"] == [0, 1, 2] and stored["eval_seeds"] == [100, 101, 102, 103]
  assert stored["iters"] == ITERS
  assert [s["stage"] for s in stored["protocol"]["stages"]] == ["coarse", "grid", "evaluation"]
  assert stored["protocol"]["stages"][0]["iters"] == COARSE
  assert stored["protocol"]["lattice"] == {"anchor": 0.01, "ratio": 2 ** 0.5}
  for name, method in stored["methods"].items():
    assert tuning.select_lr(method["grid"], True) == method["selected_lr"]
    rates_ = sorted(float(lr) for lr in method["grid"])
    assert rates_[0] < method["selected_lr"] < rates_[-1]  # bracketed
    assert max(b / a for a, b in zip(rates_, rates_[1:])) <= 2 ** 0.5 * (1 + 1e-12)
    base = stored["methods"][method["baseline"]]
    again = stats.paired(method["test"], base["test"], True)
    assert method["ci95"] == pytest.approx(list(again.ci95), nan_ok=True), name
    assert (method["p_wilcoxon"], method["verdict"]) == (again.p_wilcoxon, again.verdict)
    assert method["mde"] == pytest.approx(again.mde, nan_ok=True)
    assert method["reach"] == stats.reach(method["iters_to_baseline_val"]).as_json()
  assert math.isinf(stored["methods"]["up"]["grid"][rates([10])[0]][0])  # inf kept
  assert stored["train_seconds"] == pytest.approx(0.25 * len(CALLS))
  assert stored["hardware"]["cores"] >= 1 and stored["hardware"]["cpu"]


def test_paired_statistics_closed_form(results):
  methods = results["methods"]
  # Test = final validation + 0.5; per seed 100..103 the noise of up is 0.01 * (2 s mod 5)
  # = 0, 0.02, 0.04, 0.01, that of mid 0, 0.01, 0.02, 0.03.
  up_offset = 0.1 + 0.005 * 0.2 ** 2
  assert methods["up"]["test"] == pytest.approx([up_offset + 0.5 + n
                                                 for n in (0, 0.02, 0.04, 0.01)])
  d = np.array([0, 0.02, 0.04, 0.01]) - np.array([0, 0.01, 0.02, 0.03]) + up_offset - 0.2
  assert methods["up"]["paired_test_diff"] == pytest.approx(list(d))
  half = 3.182446305284263 * d.std(ddof=1) / 2  # t(0.975, 3) s / sqrt(4)
  assert methods["up"]["ci95"] == pytest.approx([d.mean() - half, d.mean() + half])
  assert methods["up"]["verdict"] == "better" and methods["up"]["wins"] == 4
  assert methods["up"]["p_wilcoxon"] == pytest.approx(0.125)  # 2 / 2^4: every sign negative
  assert methods["mid"]["paired_test_diff"] == [0.0] * 4
  assert methods["mid"]["verdict"] == "no difference detected"
  assert methods["mid"]["level"] == {"split": "test", "value": 0.8, "source": "made up",
                                     "mean": pytest.approx(0.715), "met": True}
  assert "level" not in methods["up"]


def test_iterations_to_the_base_validation_value(results):
  # The base's mean final validation value is 0.215; curves are final + 0.2 (1 - k/20) at
  # k = 5, 10, 15, 20: up (final 0.1002 + 0, 0.02, 0.04, 0.01) is there at 10 where its final
  # value is at most 0.115, else at 15.
  methods = results["methods"]
  assert methods["up"]["iters_to_baseline_val"] == [10.0, 15.0, 15.0, 10.0]
  assert methods["up"]["reach"]["median"] == 12.5 and methods["up"]["reach"]["reached"] == 4
  assert methods["mid"]["iters_to_baseline_val"] == [20.0, 20.0, math.inf, math.inf]
  assert methods["low"]["iters_to_baseline_val"] == [math.inf] * 4


def test_select_lr_ties_and_non_finite():
  assert tuning.select_lr({"0.1": [1.0, 3.0], "0.01": [2.0, 2.0], "1.0": [0.5]}, True) == 1.0
  assert tuning.select_lr({"0.1": [1.0, 3.0], "0.01": [2.0, 2.0]}, True) == 0.01
  assert tuning.select_lr({0.1: [math.nan], 1.0: [math.inf], 0.01: [9.0]}, True) == 0.01
  assert tuning.select_lr({0.1: [0.0, math.nan], 1.0: [-9.0]}, False) == 1.0
  assert tuning.select_lr({0.1: [3.0], 1.0: [-math.inf]}, False) == 0.1


def test_single_stage_grows_up_to_divergence(tmp_path):
  CALLS.clear()
  results = tuning.run(fake_workload(coarse_iters=0), tmp_path, workers=1,
                       log=lambda line: None)
  assert "coarse" not in results["methods"]["mid"] and results["runs"]["coarse"] == 0
  # mid starts at -2..2; 0.01 * sqrt2^k diverges above 0.05 from k = 5 on.
  assert list(results["methods"]["mid"]["grid"]) == rates(range(-2, 6))
  assert results["methods"]["mid"]["selected_lr"] == 0.01
  # low's best (-13.3) lies beyond the 8 points the grid may add below -2: not bracketed.
  assert list(results["methods"]["low"]["grid"])[0] == rates([-10])[0]
  assert [results["methods"][m]["bracketed"] for m in ("mid", "up", "low")] == [
      True, True, False]
  assert report.tuned_rows(results)[2][3].endswith(", best on the edge")


def test_overlapping_seeds_and_coarse_lattice_are_refused(tmp_path):
  with pytest.raises(cli.UsageError, match=r"grid and evaluation seeds share \[2\]"):
    tuning.run(fake_workload(eval_seeds=(2, 3)), tmp_path, workers=1)
  with pytest.raises(cli.UsageError, match="lattice ratio 3.0 is not in"):
    tuning.run(fake_workload(ratio=3.0), tmp_path, workers=1)


def test_resume_trains_nothing_new(results, tmp_path):
  before = len(CALLS)
  again = tuning.run(fake_workload(), tmp_path, workers=1, log=lambda line: None)
  assert len(CALLS) == before
  assert json.dumps(again["methods"]) == json.dumps(results["methods"])


def test_corrupt_record_is_one_line_naming_the_file(results, tmp_path):
  path = records.record_path(tmp_path, records.RunTask(
      "up", results["methods"]["up"]["selected_lr"], 101, ITERS))
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
                     "adam": 0.1}
  assert baseline == {"nag+layer": "nag", "optax.lars": "nag", "adam+relative": "adam",
                      "nag": "nag", "adam": "adam"}
  with pytest.raises(cli.UsageError, match="unknown method nope; use some of sgd, sgd[+]layer"):
    tuned.choose_methods(entry, "nag,nope", log=lambda line: None)


def test_default_workloads():
  lenet, resnet, charlm = (tuned.WORKLOADS[w] for w in ("lenet", "resnet", "charlm"))
  assert list(lenet.methods) == ["sgd", "sgd+layer", "sgd+relative", "adagrad",
                                 "adagrad+layer", "adagrad+relative", "adagrad+uniform", "lars"]
  assert list(resnet.methods) == ["nag", "nag+layer", "nag+relative", "lars"]
  assert list(charlm.methods) == ["adamw", "adamw+layer", "adamw+relative", "lamb"]
  assert (lenet.peer_baseline, resnet.peer_baseline, charlm.peer_baseline) == (
      "sgd", "nag", "adamw")
  assert lenet.iters == 2000 and charlm.iters == 2000
  assert resnet.iters * 64 >= 2 * 55_000 > (resnet.iters - 1) * 64  # two epochs
  assert charlm.reference["value"] == pytest.approx(2.0 / math.log(2))  # 2 nats in bits
  assert engine.eval_iters(2000, tuned.EVAL_POINTS) == list(range(200, 2001, 200))


def test_report_writes_table_and_figures(results, tmp_path, capsys):
  print(report.write_tuned(tmp_path, results))
  table = (tmp_path / "table.md").read_text()
  assert table in capsys.readouterr().out
  assert all((tmp_path / name).stat().st_size > 10_000
             for name in ("tuning.png", "test_curves.png", "factors.png"))
  rows = {line.split(" | ")[0].strip("| "): line.split(" | ") for line in table.splitlines()
          if line.startswith("| ") and not line.startswith("| method")}
  up = results["methods"]["up"]
  cells = stats.paired_cells(stats.paired(up["test"], results["methods"]["mid"]["test"], True))
  assert rows["up"][1:] == ["mid", "0.113", "5 (2)", report.mean_pm_std(up["val"]),
                            report.mean_pm_std(up["test"]), cells["diff"], cells["ci95"],
                            cells["p"], cells["mde"], "4/4", "better", "12.5 [10, 15] (4/4) |"]
  assert rows["mid"][6:12] == ["—"] * 5 + ["(tuned base)"]
  assert "Level of the tuned base: mid: test 0.715 against 0.8 (met; made up)." in table
  assert "coarse: 27 runs of 8 iterations, seeds 0; grid: 45 runs of 20" in table
  assert "Sizes: model: analytic." in table


def test_relative_keeps_the_parameter_weighted_mean_factor_at_one():
  # Layers of 12 and 2 parameters; two steps with different gradients, plain SGD at rate 1:
  # the update is -r_l g_l, and sum_l n_l r_l / N must be 1 at every step.
  params = {"a": {"kernel": jnp.ones((3, 4))}, "b": {"kernel": jnp.ones((2,))}}
  tx = methods.build("sgd+relative", methods.Recipe(1.0, momentum=0.0)).tx
  state = tx.init(params)
  for scale_a, scale_b in ((0.1, 2.0), (3.0, 0.01)):
    grads = {"a": {"kernel": jnp.full((3, 4), scale_a)}, "b": {"kernel": jnp.full((2,), scale_b)}}
    updates, state = tx.update(grads, state, params)
    r = {k: -np.asarray(updates[k]["kernel"]) / np.asarray(grads[k]["kernel"]) for k in grads}
    assert np.ptp(r["a"]) == pytest.approx(0, abs=1e-6)  # one factor per layer
    assert (r["a"].sum() + r["b"].sum()) / 14 == pytest.approx(1.0, rel=1e-6)
    assert r["a"][0, 0] != pytest.approx(r["b"][0], rel=1e-3)  # and they differ


def test_uniform_gives_every_layer_the_weighted_mean_of_the_factors():
  # AdaGrad's placement (the factor scales the step): adagrad+uniform's step is
  # adagrad's times one factor, sum_l n_l f_l / N, and adagrad+layer's is that times r_l.
  params = {"a": {"kernel": jnp.ones((3, 4))}, "b": {"kernel": jnp.ones((2,))}}
  grads = {"a": {"kernel": jnp.full((3, 4), 0.1)}, "b": {"kernel": jnp.full((2,), 2.0)}}
  steps = {}
  for name in ("adagrad", "adagrad+uniform", "adagrad+layer"):
    tx = methods.build(name, methods.Recipe(0.1)).tx
    updates, _ = tx.update(grads, tx.init(params), params)
    steps[name] = {k: np.asarray(updates[k]["kernel"]).ravel()[0] for k in grads}
  f = {"a": 1 + np.log(1 + 1 / np.sqrt(12 * 0.1 ** 2)), "b": 1 + np.log(1 + 1 / np.sqrt(8.0))}
  mean = (12 * f["a"] + 2 * f["b"]) / 14
  for k in grads:
    assert steps["adagrad+uniform"][k] / steps["adagrad"][k] == pytest.approx(mean, rel=1e-5)
    assert steps["adagrad+layer"][k] / steps["adagrad"][k] == pytest.approx(f[k], rel=1e-5)


def test_one_step_span_grows_beside_an_edge_best(tmp_path):
  CALLS.clear()
  results = tuning.run(fake_workload(fine_span=1), tmp_path, workers=1, log=lambda line: None)
  # up: coarse best 8, grid 7..9, best 7 on the edge: 6 added, then 7 is inside.
  assert list(results["methods"]["up"]["grid"]) == rates(range(6, 10))
  assert list(results["methods"]["mid"]["grid"]) == rates(range(-1, 2))
  assert results["methods"]["up"]["selected_lr"] == tuning.grid_lr(0.01, 2 ** 0.5, 7)
  assert tuning.Workload.fine_span == 1  # the default
