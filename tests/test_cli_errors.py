"""Every command answers --help, and bad input with one stderr line and a non-zero exit.

The commands: the experiments' front-ends, the benchmarks, the mesh example and the quick start;
the bad input: unknown names, numbers out of range (zero, negative, NaN), unwritable outputs,
missing or damaged data, an offline ``--download``, corrupt run records and checkpoints.

Usage errors exit 2, problems found while running (files, downloads, checkpoints) exit 1;
never a traceback. The commands' ``main`` functions are called in-process (fast); one
subprocess checks the ``python -m`` form itself.
"""

import gzip
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks import bench_stats, bench_step, scale_aot, summary
from experiments import data, paper, records, tuned, verdict
from experiments.studies import grouping, lr_sensitivity, saddle, vanishing
from tests import commands
from tests.generated_data import idx_bytes, write_idx_folder
from tests.test_downloads import closed_port, set_remote

COMMANDS = {"experiments.paper": paper.main, "experiments.tuned": tuned.main,
            "experiments.verdict": verdict.main, "experiments.studies.saddle": saddle.main,
            "experiments.studies.vanishing": vanishing.main,
            "experiments.studies.lr_sensitivity": lr_sensitivity.main,
            "experiments.studies.grouping": grouping.main, "benchmarks.bench_step": bench_step.main}


def one_line_error(main, argv, capsys) -> tuple[int, str]:
  """(exit status, the stderr line) of a failing command; asserts it is one line."""
  with pytest.raises(SystemExit) as exit_info:
    main(argv)
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and err.endswith("\n") and "Traceback" not in err, err
  return exit_info.value.code, err.strip()


@pytest.mark.parametrize("module", sorted(COMMANDS))
def test_help(module, capsys):
  with pytest.raises(SystemExit) as exit_info:
    COMMANDS[module](["--help"])
  assert exit_info.value.code == 0
  assert capsys.readouterr().out.startswith(f"usage: python -m {module} ")


def test_a_usage_error_found_after_parsing_reads_like_argparse(capsys):
  """A bad value only a registry can judge (exit 2) is worded as argparse words its own."""
  code, err = one_line_error(tuned.main, ["lenet", "--methods", "sgd,foo"], capsys)
  assert code == 2 and err.startswith("python -m experiments.tuned: error: unknown method foo; "
                                      "use some of sgd, "), err
  assert err.endswith(" (see --help)"), err


def test_python_dash_m_runs_from_the_repository_root():
  root = Path(__file__).resolve().parents[1]
  done = subprocess.run([sys.executable, "-m", "experiments.paper", "--seeds", "0"], cwd=root,
                        capture_output=True, text=True, timeout=120)
  assert done.returncode == 2 and done.stdout == ""
  assert done.stderr == ("python -m experiments.paper: error: argument --seeds: 0 must be at "
                         "least 1 (see --help)\n")


@pytest.mark.parametrize("module, argv, message", [
    ("experiments.paper", ["--dataset", "imagenet"], "argument --dataset: invalid choice"),
    ("experiments.paper", ["--protocol", "alexnet"], "argument --protocol: invalid choice"),
    ("experiments.paper", ["--protocol", "cifar10_quick"], "protocol cifar10_quick is for "
                                                            "cifar10, not fashion_mnist"),
    ("experiments.paper", ["--methods", "sgd,rmsprop"], "unknown method 'rmsprop'"),
    ("experiments.tuned", ["lenet", "--iters", "0"], "argument --iters: 0 must be at least 1"),
    ("experiments.tuned", ["mlp"], "argument WORKLOAD: invalid choice: 'mlp'"),
    ("experiments.tuned", ["charlm", "--eval-tokens", "-3"], "-3 must be at least 1"),
    ("experiments.paper", ["--seeds", "0"], "argument --seeds: 0 must be at least 1"),
    ("experiments.paper", ["--iters", "-5"], "argument --iters: -5 must be at least 1"),
    ("experiments.paper", ["--batch-size", "0"], "argument --batch-size: 0 must be"),
    ("experiments.paper", ["--first-seed", "-1"], "--first-seed -1 must be at least 0"),
    ("experiments.paper", ["--split-sizes", "64"], "--split-sizes takes two numbers"),
    ("experiments.studies.saddle", ["--seeds", "0"], "argument --seeds: 0 must be at least 1"),
    ("experiments.studies.saddle", ["--methods", "gd"], "unknown method 'gd'; use one of sgd"),
    ("experiments.studies.saddle", ["--lrs", "0.1,x"], "'x' is not a number"),
    ("experiments.studies.saddle", ["--lrs=-1,nan"], "-1 must be a finite number above 0"),
    ("experiments.studies.saddle", ["--lrs=0.1,nan"], "nan must be a finite number above 0"),
    ("experiments.studies.saddle", ["--base-lr=-1"], "-1 must be a finite number above 0"),
    ("experiments.studies.saddle", ["--base-lr", "0.3"], "--base-lr 0.3 must be one of --lrs"),
    ("experiments.studies.saddle", ["--rank", "9"], "--rank must be at most half of --width"),
    ("experiments.studies.vanishing", ["--iters", "0"], "argument --iters: 0 must be at least 1"),
    ("experiments.studies.vanishing", ["--iters", "710"],
     "--iters must be a multiple of --record-every"),
    ("experiments.studies.vanishing", ["--lr", "0"], "0 must be a finite number above 0"),
    ("experiments.studies.vanishing", ["--dataset", "teacher"], "invalid choice: 'teacher'"),
    ("experiments.studies.lr_sensitivity", ["--methods", "sgd+lars"],
     "unknown method 'sgd+lars'"),
    ("experiments.studies.lr_sensitivity", ["--lrs", "0.01,inf"], "inf must be a finite"),
    ("experiments.studies.grouping", ["--methods", "sgd+layer"],
     "--methods takes base methods"),
    ("experiments.studies.grouping", ["--workers", "0"],
     "argument --workers: 0 must be at least 1"),
    ("benchmarks.bench_step", ["--reps", "0"], "argument --reps: 0 must be at least 1"),
    ("benchmarks.bench_step", ["--trees", "LeNet,VGG"], "unknown tree or network 'VGG'"),
    ("benchmarks.bench_step", ["--budget", "-1"], "-1 must be a finite number of at least 0"),
    ("benchmarks.bench_step", ["--budget", "nan"], "nan must be a finite number of at least 0"),
])
def test_usage_errors(module, argv, message, capsys):
  code, err = one_line_error(COMMANDS[module], argv, capsys)
  prog = f"python -m {module}" + (f" {argv[0]}" if module == "experiments.tuned"
                                   and argv[0] in tuned.WORKLOADS else "")
  assert code == 2 and err.startswith(f"{prog}: error: ") and message in err
  assert err.endswith("(see --help)")


@pytest.mark.parametrize("module", ["experiments.paper", "experiments.studies.saddle",
                                    "experiments.studies.vanishing",
                                    "experiments.studies.lr_sensitivity",
                                    "experiments.studies.grouping"])
def test_unwritable_out(module, tmp_path, capsys):
  blocker = tmp_path / "file"
  blocker.write_text("not a folder")
  code, err = one_line_error(COMMANDS[module], ["--out", str(blocker / "out")], capsys)
  assert code == 1 and err.startswith(f"error: cannot write to {blocker / 'out'} (")
  assert err.endswith("pass another --out")


def test_unwritable_bench_json(tmp_path, capsys):
  (tmp_path / "file").write_text("")
  code, err = one_line_error(bench_step.main, ["--json", str(tmp_path / "file" / "x.json")],
                             capsys)
  assert code == 1 and err.startswith("error: cannot write to ")


def mnist_folder(folder: Path) -> Path:
  write_idx_folder(folder, n_train=64, n_test=20)
  return folder


def damage(folder: Path, how: str) -> Path:
  """Damages the test-images file of an IDX folder; returns its path."""
  path = folder / "t10k-images-idx3-ubyte.gz"
  raw = gzip.decompress(path.read_bytes())
  if how == "corrupt":
    path.write_bytes(b"\x1f\x8b" + b"not gzip at all")
  elif how == "truncated":
    path.write_bytes(gzip.compress(raw[:-100]))
  elif how == "wrong magic":
    path.write_bytes(gzip.compress(idx_bytes(np.zeros((20, 28, 28)), data.LABEL_MAGIC)))
  elif how == "wrong count":
    path.write_bytes(gzip.compress(idx_bytes(np.zeros((19, 28, 28)), data.IMAGE_MAGIC)))
  return path


def reproduce_argv(folder: Path, out: Path, *extra: str) -> list[str]:
  return ["--dataset", "mnist", "--data-dir", str(folder), "--split-sizes", "64,20",
          "--methods", "sgd", "--seeds", "1", "--iters", "3", "--batch-size", "8",
          "--out", str(out), "--no-progress", "--no-plots", *extra]


@pytest.mark.parametrize("how, message", [
    ("corrupt", "corrupt or truncated gzip file"),
    ("truncated", "truncated: 15596 bytes, expected 15696"),
    ("wrong magic", "wrong magic number 0x00000801, expected 0x00000803"),
    ("wrong count", "wrong count 19, expected 20 (--split-sizes TRAIN,TEST"),
])
def test_bad_data_files(tmp_path, capsys, how, message):
  path = damage(mnist_folder(tmp_path / "idx"), how)
  code, err = one_line_error(paper.main, reproduce_argv(tmp_path / "idx", tmp_path / "out"),
                             capsys)
  assert code == 1 and err.startswith(f"error: {path}") and message in err


def test_full_size_count_without_split_sizes(tmp_path, capsys):
  mnist_folder(tmp_path / "idx")
  argv = reproduce_argv(tmp_path / "idx", tmp_path / "out")
  del argv[4:6]  # no --split-sizes: the files must hold the dataset's 60,000 / 10,000
  code, err = one_line_error(paper.main, argv, capsys)
  assert code == 1 and "wrong count 64, expected 60000" in err


def test_missing_data_folder(tmp_path, capsys):
  code, err = one_line_error(paper.main,
                             reproduce_argv(tmp_path / "none", tmp_path / "out"), capsys)
  assert code == 1 and err.startswith("error: MNIST not found: pass --data-dir")
  assert err.endswith(f"(looked in {tmp_path / 'none'})")


@pytest.fixture(scope="module")
def other_checkpoint(tmp_path_factory):
  """A checkpoint that another configuration wrote."""
  folder = mnist_folder(tmp_path_factory.mktemp("idx"))
  path = folder.parent / "other.npz"
  records.save_checkpoint(path, {"params": np.zeros(3)}, "a run of 5 iterations")
  return folder, path


@pytest.mark.parametrize("kind", ["corrupt checkpoint", "other checkpoint", "corrupt run"])
def test_bad_checkpoint_or_run_is_named_and_kept(tmp_path, capsys, other_checkpoint, kind):
  folder, other = other_checkpoint
  out = tmp_path / "out"
  task = records.RunTask("sgd", 0.01, 0, 3)
  path = (records.record_path if kind == "corrupt run" else records.checkpoint_path)(out, task)
  path.parent.mkdir(parents=True)
  content = {"other checkpoint": other.read_bytes(), "corrupt run": b'{"task": ',
             "corrupt checkpoint": b"PK\x03\x04 truncated"}[kind]
  path.write_bytes(content)
  code, err = one_line_error(paper.main, reproduce_argv(folder, out), capsys)
  assert code == 1 and err.startswith(f"error: {path}")
  if kind == "other checkpoint":
    assert "checkpoint of another configuration (a run of 5 iterations, not " in err
  if kind == "corrupt checkpoint":
    assert "corrupt checkpoint" in err
  if kind == "corrupt run":
    assert "is not a run record" in err and "delete it to train that run again" in err
  else:
    assert "left in place: delete it to" in err
  assert path.read_bytes() == content


@pytest.mark.parametrize("argv, message", [
    (["--batch-size", "100000000"], "--batch-size 100000000 is more than the 64 training"),
])
def test_run_time_usage_errors(tmp_path, capsys, argv, message):
  code, err = one_line_error(paper.main, reproduce_argv(mnist_folder(tmp_path / "idx"),
                                                        tmp_path / "out") + argv, capsys)
  assert code == 2 and message in err


def test_download_into_an_unwritable_folder(tmp_path, capsys):
  code, err = one_line_error(paper.main, ["--dataset", "mnist", "--download", "--data-dir",
                                          "/proc/x", "--out", str(tmp_path)], capsys)
  assert code == 1 and err.startswith("error: /proc/x: cannot read or write there")


MORE_COMMANDS = {"benchmarks.bench_stats": bench_stats.main, "benchmarks.summary": summary.main,
                 "benchmarks.scale_aot": scale_aot.main}
EVERY_COMMAND = {**COMMANDS, **MORE_COMMANDS}


@pytest.mark.parametrize("module, argv", [
    ("experiments.paper", ["--methods", "sgd,foo"]),
    ("experiments.tuned", ["lenet", "--methods", "foo"]),
    ("experiments.tuned", ["resnet", "--methods", "foo"]),
    ("experiments.tuned", ["charlm", "--methods", "foo"]),
    ("experiments.studies.vanishing", ["--methods", "foo"]),
    ("experiments.studies.lr_sensitivity", ["--methods", "foo"]),
    ("experiments.studies.saddle", ["--methods", "foo"]),
    ("experiments.studies.grouping", ["--methods", "foo"]),
    ("benchmarks.scale_aot", ["--methods", "foo"]),
])
def test_unknown_method_is_a_usage_error_everywhere(module, argv, capsys):
  code, err = one_line_error(EVERY_COMMAND[module], argv, capsys)
  assert code == 2 and "unknown" in err and ("'foo'" in err or " foo;" in err), err


@pytest.mark.parametrize("module, argv, message", [
    ("benchmarks.bench_stats", ["--budget", "nan"], "nan must be a finite number of at least 0"),
    ("benchmarks.bench_stats", ["--reps", "-2"], "argument --reps: -2 must be at least 1"),
    ("benchmarks.bench_stats", ["--trees", "VGG"], "unknown tree 'VGG'"),
    ("benchmarks.scale_aot", ["--devices", "0"], "argument --devices: 0 must be at least 1"),
    ("benchmarks.scale_aot", ["--sizes", "3Q"], "unknown size, dtype, sharding or method '3Q'"),
    ("benchmarks.summary", ["--bogus"], "unrecognized arguments: --bogus"),
    ("experiments.verdict", ["--bogus"], "unrecognized arguments: --bogus"),
    ("experiments.tuned", ["lenet", "--seeds", "nan"], "'nan' is not an integer"),
    ("experiments.tuned", ["resnet", "--workers", "-1"], "-1 must be at least 1"),
    ("experiments.studies.lr_sensitivity", ["--dataset", "imagenet"],
     "invalid choice: 'imagenet'"),
])
def test_usage_errors_of_the_other_commands(module, argv, message, capsys):
  code, err = one_line_error(EVERY_COMMAND[module], argv, capsys)
  prog = f"python -m {module}" + (f" {argv[0]}" if module == "experiments.tuned" else "")
  assert code == 2 and err.startswith(f"{prog}: error: ") and message in err, err


@pytest.mark.parametrize("module, argv", [
    ("experiments.tuned", ["lenet", "--out", "/proc/x/out"]),
    ("experiments.verdict", ["--out", "/proc/x/verdict.md"]),
    ("benchmarks.bench_stats", ["--out", "/proc/x"]),
    ("benchmarks.summary", ["--out", "/proc/x/summary.md"]),
    ("benchmarks.scale_aot", ["--out", "/proc/x"]),
])
def test_unwritable_outputs_of_the_other_commands(module, argv, capsys):
  code, err = one_line_error(EVERY_COMMAND[module], argv, capsys)
  assert code in (1, 2) and "cannot write" in err and "/proc/x" in err


@pytest.mark.parametrize("module, argv", [
    ("experiments.tuned", ["lenet", "--data-dir", "{none}"]),
    ("experiments.studies.vanishing", ["--data-dir", "{none}"]),
    ("experiments.studies.lr_sensitivity", ["--dataset", "mnist", "--data-dir", "{none}"]),
])
def test_missing_data_of_the_other_commands(module, argv, tmp_path, capsys):
  none = str(tmp_path / "none")
  argv = [none if arg == "{none}" else arg for arg in argv]
  code, err = one_line_error(EVERY_COMMAND[module], argv + ["--out", str(tmp_path / "out")],
                             capsys)
  assert code == 1 and "not found" in err and none in err


@pytest.mark.parametrize("module, argv", [
    ("experiments.tuned", ["lenet", "--dataset", "mnist"]),
    ("experiments.studies.vanishing", ["--dataset", "mnist"]),
    ("experiments.studies.lr_sensitivity", ["--dataset", "mnist"]),
])
def test_offline_download_of_the_other_commands(module, argv, tmp_path, monkeypatch, capsys):
  url = f"http://127.0.0.1:{closed_port()}/"
  set_remote(monkeypatch, "mnist", {name: remote._replace(url=url + name)
                                    for name, remote in data.DATASETS["mnist"].remote.items()})
  code, err = one_line_error(EVERY_COMMAND[module], argv + [
      "--download", "--data-dir", str(tmp_path / "d"), "--out", str(tmp_path / "out")], capsys)
  assert code == 1 and err.startswith(f"error: could not fetch {url}")


@pytest.mark.parametrize("content", ["", '{"rows": [', "[1, 2]"])
def test_summary_of_a_missing_or_truncated_json(tmp_path, capsys, content):
  path = tmp_path / "cpu.json"
  if content:
    path.write_text(content)
  code, err = one_line_error(summary.main, ["--json", str(path), "--out",
                                            str(tmp_path / "s.md")], capsys)
  assert code == 1 and err.startswith(f"error: {'cannot read ' if not content else ''}")
  assert str(path) in err


def test_verdict_without_results(tmp_path, capsys):
  code, err = one_line_error(verdict.main, ["--results", str(tmp_path / "none")], capsys)
  assert code == 1 and err.startswith(f"error: no folder {tmp_path / 'none'}")


@pytest.mark.parametrize("kind", ["truncated run", "truncated checkpoint"])
def test_a_study_names_a_damaged_resume_file(tmp_path, capsys, kind):
  out = tmp_path / "out"
  task = records.RunTask("sgd", 0.1, 0, 10)
  path = (records.record_path if kind == "truncated run" else records.checkpoint_path)(out, task)
  path.parent.mkdir(parents=True)
  content = b'{"task": {"method": "sg' if kind == "truncated run" else b"PK\x03\x04\x14\x00"
  path.write_bytes(content)
  code, err = one_line_error(saddle.main, [
      "--methods", "sgd", "--lrs", "0.1", "--base-lr", "0.1", "--init-scales", "0.3",
      "--seeds", "1", "--iters", "10", "--record-every", "10", "--out", str(out), "--no-plots"],
      capsys)
  assert code == 1 and err.startswith(f"error: {path}") and "delete it to" in err
  assert path.read_bytes() == content


@pytest.mark.parametrize("module, argv", [
    ("experiments.tuned", ["lenet", "--dataset", "mnist"]),
    ("experiments.studies.vanishing", ["--dataset", "mnist"]),
])
def test_download_into_an_unwritable_folder_everywhere(module, argv, tmp_path, capsys):
  code, err = one_line_error(EVERY_COMMAND[module], argv + [
      "--download", "--data-dir", "/proc/x", "--out", str(tmp_path)], capsys)
  assert code == 1 and "/proc/x: cannot read or write there" in err


def one_line(code: int | None, err: str) -> str:
  """The stderr line of a failing command; asserts it is one line, with no traceback."""
  assert err.count("\n") == 1 and err.endswith("\n") and "Traceback" not in err, (code, err)
  return err.strip()


def test_the_quick_start_bad_input():
  """``python -m examples.quickstart``: usage errors (exit 2, one line)."""
  cases = [(["--bogus"], "unrecognized arguments: --bogus"),
           (["--steps", "0"], "'0' must be a whole number of at least 1"),
           (["--steps", "nan"], "'nan' must be a whole number")]
  results = commands.run_each("examples.quickstart", [argv for argv, _ in cases])
  for (_, message), (code, err) in zip(cases, results, strict=True):
    line = one_line(code, err)
    assert code == 2 and line.startswith("python examples/quickstart.py: error: "), line
    assert message in line and line.endswith(" (see --help)"), line


def test_quickstart_bogus_option_as_a_script():
  done = commands.run(commands.python("examples/quickstart.py", "--bogus"))
  assert done.returncode == 2 and done.stdout == ""
  assert done.stderr == ("python examples/quickstart.py: error: unrecognized arguments: --bogus "
                         "(see --help)\n")


def test_the_mesh_example_bad_input(tmp_path):
  """``python -m examples.train_mesh``: usage errors (exit 2), unwritable output, missing
  data, a download into an unwritable folder and an offline download (exit 1), each one line.
  The offline download goes through a proxy on a closed port."""
  prog, none = "python -m examples.train_mesh", str(tmp_path / "none")
  url = next(iter(data.DATASETS["fashion_mnist"].remote.values())).url
  cases = [
      (["--method", "foo"], 2, lambda e: "unknown" in e and ("'foo'" in e or " foo;" in e)),
      (["--iters", "0"], 2, lambda e: e.startswith(f"{prog}: error: ")
       and "argument --iters: 0 must be at least 1" in e),
      (["--bogus"], 2, lambda e: e.startswith(f"{prog}: error: ")
       and "unrecognized arguments: --bogus" in e),
      (["--json", "/proc/x/mesh.json"], 2, lambda e: "cannot write" in e and "/proc/x" in e),
      (["--data-dir", none], 1, lambda e: "not found" in e and none in e),
      (["--download", "--data-dir", "/proc/x"], 1,
       lambda e: "/proc/x: cannot read or write there" in e),
      (["--download", "--data-dir", str(tmp_path / "d")], 1,
       lambda e: e.startswith(f"train_mesh: could not fetch {url}")
       and e.endswith("(or pass --synthetic)")),
  ]
  proxy = f"http://127.0.0.1:{closed_port()}"
  env = commands.cpu_env(http_proxy=proxy, https_proxy=proxy, HTTP_PROXY=proxy,
                         HTTPS_PROXY=proxy, no_proxy="", NO_PROXY="")
  results = commands.run_each("examples.train_mesh", [argv for argv, _, _ in cases], env=env)
  for (argv, want, check), (code, err) in zip(cases, results, strict=True):
    assert code == want and check(one_line(code, err)), (argv, code, err)
