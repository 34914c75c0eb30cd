"""The README's tables are copies of committed tables, and stay so: the paired Fashion-MNIST
table of ``results/fashion_mnist/table.md`` and the benchmark summary
``results/bench/summary.md``, which must itself be what ``benchmarks/summary.py`` makes of
the committed ``results/bench/cpu.json``. Every Markdown table of the README, the docs and
the committed results has as many cells in each row as in its header (a ``|`` inside a cell,
as in ``||g||``, breaks a table)."""

import json
import re
from pathlib import Path

import pytest

from benchmarks import summary

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
# README tables that point at commands and pages rather than copy results.
NAVIGATION_HEADERS = ("| what | command |", "| page | what it covers |")
UNESCAPED_PIPE = re.compile(r"(?<!\\)\|")


def tables(text: str) -> list[list[str]]:
  """The Markdown tables of ``text``, each as its lines (header, separator, rows)."""
  found, current = [], []
  for line in text.splitlines() + [""]:
    if line.startswith("|"):
      current.append(line.rstrip())
    elif current:
      found.append(current)
      current = []
  return found


def cell_counts(table: list[str]) -> list[int]:
  return [len(UNESCAPED_PIPE.split(line.strip()[1:-1])) for line in table]


def committed_tables() -> list[list[str]]:
  files = sorted((ROOT / "results").rglob("*.md"))
  return [table for path in files for table in tables(path.read_text())]


def test_tables_are_found():
  paired = tables("text\n\n| a | b |\n|---|---|\n| 1 | 2 |\nafter\n| c |\n")
  assert paired == [["| a | b |", "|---|---|", "| 1 | 2 |"], ["| c |"]]


def test_readme_has_the_committed_paired_table():
  committed = tables((ROOT / "results" / "fashion_mnist" / "table.md").read_text())
  paired = [table for table in committed if table[0].startswith("| pair |")]
  assert len(paired) == 1 and len(paired[0]) == 5  # header, separator, 3 pairs
  assert paired[0] in tables(README.read_text())


def test_readme_has_the_committed_bench_summary():
  (bench_table,) = tables((ROOT / "results" / "bench" / "summary.md").read_text())
  assert bench_table in tables(README.read_text())


def test_every_readme_results_table_is_a_committed_table():
  committed = committed_tables()
  copies = [table for table in tables(README.read_text())
            if table[0] not in NAVIGATION_HEADERS]
  assert len(copies) >= 2
  for table in copies:
    assert table in committed, f"README table not in results/: {table[0]}"


def test_committed_bench_summary_is_made_from_the_committed_run():
  bench = json.loads((ROOT / "results" / "bench" / "cpu.json").read_text())
  assert summary.summary_table(bench) == (ROOT / "results" / "bench" / "summary.md").read_text()


def _row(tree, method, ratio, state=8, base_state=8, recompiles=0):
  return {"tree": tree, "method": method, "ratio": ratio, "state_bytes": state,
          "base_state_bytes": base_state, "recompiles": recompiles}


def test_summary_table_places_each_ratio_and_counts_added_state():
  bench = {"machine": "test box", "rows": [
      _row("big", "optax sgd", None, base_state=None),
      _row("big", "ours sgd", 1.234),
      _row("big", "ours adagrad eq.12", 1.005, state=24, base_state=16, recompiles=2),
      _row("train", "optax A/A", 0.996, state=None, base_state=None)]}
  lines = summary.summary_table(bench).splitlines()
  assert lines[0] == "Step time, ours / optax (median over repetitions): test box."
  assert lines[2] == "| tree | SGD | AdaGrad (eq. 12) | A/A control |"  # timed columns only
  assert lines[4] == "| big | 1.23 | 1.00 |  |"
  assert lines[5] == "| train |  |  | 1.00 |"
  assert lines[-1] == ("State bytes added over optax, all trees: 8. "
                       "Recompiles after the first step, all trees: 2.")


def test_summary_command_writes_the_table(tmp_path, capsys):
  run = tmp_path / "cpu.json"
  run.write_text(json.dumps({"machine": "m", "rows": [_row("t", "ours nesterov", 2.0)]}))
  table = summary.main(["--json", str(run), "--out", str(tmp_path / "summary.md")])
  assert (tmp_path / "summary.md").read_text() == table == capsys.readouterr().out
  assert "| t | 2.00 |" in table


def test_cell_count_check_catches_a_pipe_in_a_cell():
  broken = ["| run | ||g|| layer 1 |", "|---|---|", "| sgd | 0.5 |"]
  assert len(set(cell_counts(broken))) > 1
  assert len(set(cell_counts(["| run | ‖g‖ layer 1 |", "|---|---|", "| sgd | 0.5 |"]))) == 1
  assert cell_counts([r"| a \| b | c |"]) == [2]


MARKDOWN_FILES = ["README.md", *sorted(
    path.relative_to(ROOT).as_posix()
    for path in [*(ROOT / "docs").glob("*.md"), *(ROOT / "results").rglob("*.md")])]


@pytest.mark.parametrize("name", MARKDOWN_FILES)
def test_every_table_row_has_the_header_cell_count(name):
  for table in tables((ROOT / name).read_text()):
    counts = cell_counts(table)
    assert counts == [counts[0]] * len(counts), f"{name}: {table[0]}"


def test_performance_docs_stats_table_has_the_committed_ratios():
  rows = json.loads((ROOT / "results" / "bench" / "stats.json").read_text())["rows"]
  ratio = {(r["tree"], r["family"], r["variant"]): r["ratio"] for r in rows}
  ms = {(r["tree"], r["family"]): r["median_ms"] for r in rows if r["variant"] == "plain"}
  trees = {"4x4096² float32": "4x4096^2 f32", "ResNet-50": "ResNet-50",
           "transformer x24": "transformer x24"}
  families = {"`lo.sgd`": "sgd", "`lo.sgd` Nesterov": "nesterov", "`lo.adagrad`": "adagrad",
              "`with_layerwise_lr(optax.adam)`": "adam", "`lo.lars`": "lars",
              "`lo.lamb`": "lamb"}
  text = (ROOT / "docs" / "performance.md").read_text()
  [table] = [t for t in tables(text) if t[0].startswith("| tree | optimizer | plain ms |")]
  assert len(table) == 2 + len(ms)
  for line in table[2:]:
    tree, family, plain, kept, beside = (c.strip() for c in line.strip("|").split("|"))
    key = (trees[tree], families[family])
    assert plain == f"{ms[key]:.2f}"
    assert kept == f"{ratio[(*key, 'keep_stats')]:.3f}"
    expected_beside = ratio.get((*key, "beside"))
    assert beside == ("-" if expected_beside is None else f"{expected_beside:.3f}")


def _span(values, digits):
  return f"{min(values):.{digits}f}-{max(values):.{digits}f}"


def test_performance_docs_trust_ratio_prose_has_the_committed_ratios():
  rows = json.loads((ROOT / "results" / "bench" / "cpu.json").read_text())["rows"]
  ratio = {(r["tree"], r["method"]): r["ratio"] for r in rows if r["ratio"] is not None}
  large = ("4x4096^2 f32", "ResNet-50", "transformer x24")
  lars = [ratio[(tree, "ours lars")] for tree in large]
  optax_lars = [ratio[(tree, "optax lars")] for tree in large]
  lamb = [ratio[(tree, "ours lamb")] for tree in (*large, "4x4096^2 bf16")]
  norm = [ratio[(tree, "norm pass only")] for tree in large]
  text = (ROOT / "docs" / "performance.md").read_text()
  section = text[text.index("## Trust ratios"):text.index("## Not done yet")]
  assert f"**{_span(lars, 2)}x** a momentum-SGD step" in section
  assert f"**{_span(optax_lars, 1)}x**" in section
  faster = [o / ours for o, ours in zip(optax_lars, lars)]
  assert f"{_span(faster, 1)}x faster than `optax.lars`" in section
  assert f"**{_span(lamb, 2)}x** `optax.lamb`" in section
  assert f"{_span(norm, 2)}x of an SGD step" in section
  floor = [1 + 2 * n for n in norm]
  assert f"1 + 2 x norm pass: {_span(floor, 2)}x" in section


def test_scale_out_docs_table_has_the_committed_figures():
  rows = json.loads((ROOT / "results" / "scale" / "scale_aot.json").read_text())["rows"]
  text = (ROOT / "docs" / "scale_out.md").read_text()
  [table] = [t for t in tables(text) if t[0].startswith("| devices | size | sharding |")]
  assert len(table) == 2 + 8
  for line in table[2:]:
    devices, size, sharding, _, buffers, temp, nesterov, reduce = (
        c.strip() for c in line.strip("|").split("|"))
    layout = [r for r in rows if (str(r["devices"]), r["size"]) == (devices, size)
              and r["sharding"] == sharding.split()[0].lower()]
    bf16 = [r for r in layout if r["dtype"] == "bfloat16"]
    assert buffers == (f"{bf16[0]['argument_bytes'] / 2**30:.3f} / "
                       f"{bf16[0]['output_bytes'] / 2**30:.3f}")
    others = [r["extra_temp_bytes"] / 1024 for r in layout
              if r["method"] != r["baseline"] and "nesterov" not in r["method"]]
    assert temp == f"{min(others):.1f}-{max(others):.1f}"
    [nesterov_bf16] = [r for r in bf16 if r["method"] == "lo.sgd nesterov"]
    [nesterov_f32] = [r for r in layout if r["method"] == "lo.sgd nesterov"
                      and r["dtype"] == "float32"]
    assert nesterov == (f"{nesterov_bf16['extra_temp_bytes'] / 2**20:.1f} MiB / "
                        f"{nesterov_f32['extra_temp_bytes'] / 1024:.1f} KiB")
    assert {f"1 of {r['extra_all_reduce_elements']} floats" for r in layout
            if r["method"] != r["baseline"]} == {reduce}
