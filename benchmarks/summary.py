"""The short table of a ``bench_step --json`` run: one row per tree, one ratio per method.

A cell is the ratio of median step times, ours / optax (``ratio`` in the JSON rows, as
``bench_step`` computed it), to two decimals; empty where the run did not time that method
on that tree. A column no tree has (a method the run did not know) is left out.
Below the table: the state bytes added over optax and the recompiles, summed over every
tree. The README copies this table; ``tests/test_readme_tables.py`` checks both the copy and
that the committed ``results/bench/summary.md`` is what this module makes of
``results/bench/cpu.json``.

Usage (from the repository root)::

  python -m benchmarks.summary    # results/bench/cpu.json -> results/bench/summary.md
  python -m benchmarks.summary --json runs/bench/cpu.json --out runs/bench/summary.md
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from experiments import cli, files

RESULTS = Path(__file__).resolve().parent.parent / "results" / "bench"
# Column title -> the method row of bench_step that fills it.
COLUMNS = {
    "SGD": "ours sgd", "Nesterov": "ours nesterov", "AdaGrad (eq. 12)": "ours adagrad eq.12",
    "optax.lars / sgd": "optax lars", "lars / sgd": "ours lars",
    "lamb / optax.lamb": "ours lamb", "A/A control": "optax A/A",
    "norm pass alone": "norm pass only",
}


def summary_table(bench: dict[str, Any]) -> str:
  """The Markdown summary of one ``bench_step --json`` result."""
  ratios: dict[str, dict[str, float]] = {}
  added_state = recompiles = 0
  for row in bench["rows"]:
    tree_ratios = ratios.setdefault(row["tree"], {})
    if row.get("ratio") is not None:
      tree_ratios[row["method"]] = row["ratio"]
    if row["method"].startswith("ours") and row.get("base_state_bytes") is not None:
      added_state += row["state_bytes"] - row["base_state_bytes"]
    recompiles += row["recompiles"]
  timed = {method for tree_ratios in ratios.values() for method in tree_ratios}
  columns = {title: method for title, method in COLUMNS.items() if method in timed}
  lines = [
      f"Step time, ours / optax (median over repetitions): {bench['machine']}.", "",
      "| tree | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
  for tree, tree_ratios in ratios.items():
    cells = [f"{tree_ratios[method]:.2f}" if method in tree_ratios else ""
             for method in columns.values()]
    lines.append(f"| {tree} | " + " | ".join(cells) + " |")
  lines += ["", f"State bytes added over optax, all trees: {added_state}. "
            f"Recompiles after the first step, all trees: {recompiles}."]
  return "\n".join(lines) + "\n"


@cli.reports_errors
def main(argv: list[str] | None = None) -> str:
  parser = cli.Parser(prog="python -m benchmarks.summary",
                      description=__doc__.splitlines()[0])
  parser.add_argument("--json", type=Path, default=RESULTS / "cpu.json",
                      help="the output of bench_step --json")
  parser.add_argument("--out", type=Path, default=RESULTS / "summary.md",
                      help="the Markdown file to write")
  args = parser.parse_args(argv)
  try:
    bench = json.loads(args.json.read_text())
    table = summary_table(bench)
  except OSError as e:
    raise cli.InputError(f"cannot read {args.json} ({e.strerror}); pass --json the file "
                         "python -m benchmarks.bench_step --json wrote") from None
  except (ValueError, KeyError, TypeError) as e:
    raise cli.InputError(f"{args.json} is not a bench_step --json result ({e!r}); rerun "
                         "python -m benchmarks.bench_step --json") from None
  try:
    files.write_text(args.out, table)
  except OSError as e:
    raise cli.InputError(f"cannot write {args.out} ({e.strerror}); pass another --out") from None
  print(table, end="")
  return table


if __name__ == "__main__":
  main()
