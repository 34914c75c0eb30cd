"""One verdict table across the tuned comparisons: ``python -m experiments.verdict``.

Reads every ``<results>/<workload>/results.json`` present (``--results``, default
``runs/tuned``, where :mod:`experiments.tuned` writes; the committed ones are in
``results/evidence``) and writes ``<results>/verdict.md``: per workload and base method (a
method that is its own baseline), the tuned base, the tuned ``+layer`` (factor of eq. 9), the
tuned ``+relative`` (the factors divided by their mean over layers) and the layer-wise peers
compared with that base (``optax.lars``, ``optax.lamb``), each with its final test metric
(mean ± std over the paired seeds) and its paired difference to the base (mean ± std,
wins/seeds).

The rule, per method against its tuned base (``d_s`` = method minus base on seed ``s``,
``n`` seeds, ``need = ceil(0.8 n)``, 4 of 5):

* **better** if the mean of ``d_s`` favours the method and it wins on at least ``need`` seeds;
* **worse** if the mean favours the base and the base wins on at least ``need`` seeds;
* **no difference** otherwise.

The summary per workload and base separates the two things the factor does: if ``+layer`` is
better and ``+relative`` (redistribution only, mean factor 1) is not, the gain came with the
factor's global boost of the step; if ``+relative`` is better too, the redistribution across
layers carries it.

Last, a table of how far from uniform the factors were (:func:`factor_rows`), read from the
base methods' run records at their selected rates.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from experiments import cli, files, report, tuned
from experiments.records import METHOD_KEYS
from experiments.stats import mean_pm_std

WORKLOADS = tuple(tuned.WORKLOADS)
SHARE_TO_WIN = 0.8
RELATION = {"better": "better than", "worse": "worse than", "no difference": "no different from"}


def judge(diffs: list[float], lower_is_better: bool) -> str:
  """'better', 'worse' or 'no difference' for paired differences (method minus base)."""
  sign = 1 if lower_is_better else -1
  need = math.ceil(SHARE_TO_WIN * len(diffs))
  mean = float(np.mean(diffs)) * sign
  wins = sum(1 for d in diffs if sign * d < 0)
  losses = sum(1 for d in diffs if sign * d > 0)
  if mean < 0 and wins >= need:
    return "better"
  if mean > 0 and losses >= need:
    return "worse"
  return "no difference"


def compared(results: dict, base: str) -> list[str]:
  """The base, then its +layer and +relative, then the other methods compared with it."""
  methods = results["methods"]
  own = [m for m in (base, f"{base}+layer", f"{base}+relative") if m in methods]
  return own + [m for m, r in methods.items() if r["baseline"] == base and m not in own]


def summary(results: dict, base: str) -> str:
  """The verdict in words for ``base`` on one workload."""
  lower = results["lower_is_better"]
  verdicts = {m: judge(results["methods"][m]["paired_test_diff"], lower)
              for m in compared(results, base)[1:]}
  layer, relative = verdicts.get(f"{base}+layer"), verdicts.get(f"{base}+relative")
  if layer is None:
    words = f"no {base}+layer run"
  elif layer == "better" and relative == "better":
    words = (f"{base}+layer better than tuned {base}, and so is {base}+relative: the "
             "redistribution across layers carries the gain")
  elif layer == "better":
    words = (f"{base}+layer better than tuned {base}, but {base}+relative is "
             f"{RELATION.get(relative, 'not run against')} tuned {base}: the gain came with the "
             "factor's global boost of the step, not the redistribution across layers")
  elif relative == "better":
    words = (f"{base}+layer {RELATION[layer]} tuned {base} while {base}+relative is better: "
             "the redistribution helps only without the boost")
  else:
    words = (f"{base}+layer {RELATION[layer]} tuned {base}; {base}+relative "
             f"{RELATION.get(relative, 'not run against')} tuned {base}")
  peers = [f"{m} {v}" for m, v in verdicts.items()
           if m not in (f"{base}+layer", f"{base}+relative")]
  return words + (f"; peers: {', '.join(peers)}" if peers else "") + "."


def rows(results: dict) -> tuple[list[str], list[str]]:
  """The table rows and the summary lines of one workload."""
  lines, sentences = [], []
  methods = results["methods"]
  for base in [m for m, r in methods.items() if r["baseline"] == m]:
    for method in compared(results, base):
      r = methods[method]
      own = method == base
      diff = "—" if own else mean_pm_std(r["paired_test_diff"])
      wins = "—" if own else f"{r['wins']}/{len(r['paired_test_diff'])}"
      verdict = "(tuned base)" if own else judge(r["paired_test_diff"],
                                                 results["lower_is_better"])
      lines.append(f"| {results['workload']} | {base} | {method} | {r['selected_lr']:.3g} | "
                   f"{mean_pm_std(r['test'])} | {diff} | {wins} | {verdict} |")
    sentences.append(f"- **{results['workload']}, {base}**: {summary(results, base)}")
  return lines, sentences


def factor_rows(folder: Path, all_results: list[dict]) -> list[str]:
  """How far from uniform the factors are: per workload and base method, each layer's
  factor ``f_l`` in the runs at the selected rate (all seeds), its range across layers at
  the first and at the last recorded gradient, and max_l f_l / min_l f_l averaged over the
  recorded gradients and seeds. Workloads whose run records are absent are left out."""
  rows = []
  for results in all_results:
    for base in [m for m, r in results["methods"].items() if r["baseline"] == m]:
      try:
        records = report.selected_records(folder / results["workload"], results, base)
      except FileNotFoundError:
        continue
      # (seeds, layers, points); a diverged run's NaN factors are left out of the ranges.
      factors = np.array([[values for values in r["factors"].values()] for r in records],
                         np.float64)
      first, last = factors[:, :, 0], factors[:, :, -1]
      spread = np.nanmean(factors.max(axis=1) / factors.min(axis=1))
      rows.append(f"| {results['workload']} | {base} | {factors.shape[1]} | "
                  f"{np.nanmin(first):.2f}-{np.nanmax(first):.2f} | "
                  f"{np.nanmin(last):.2f}-{np.nanmax(last):.2f} | {spread:.2f} |")
  if not rows:
    return []
  return ["", "Layer factors: each layer's f_l in the base method's runs at its selected "
          "learning rate (all seeds); the range across layers at the first and the last "
          "recorded gradient, and max/min across layers averaged over training. A ratio "
          "near 1 means the factor acts as one global multiplier.", "",
          "| workload | base | layers | f_l at the first gradient | at the last | "
          "max/min across layers |", "|---|---|---|---|---|---|", *rows]


def verdict(all_results: list[dict], folder: Path | None = None) -> str:
  """verdict.md's text for the workloads' results (with the factor table when ``folder``
  holds their run records)."""
  table = ["| workload | base | method | selected lr | test metric | paired diff vs base | "
           "wins | verdict |", "|---|---|---|---|---|---|---|---|"]
  sentences, metrics = [], []
  for results in all_results:
    lines, said = rows(results)
    table += lines
    sentences += said
    direction = "lower" if results["lower_is_better"] else "higher"
    metrics.append(f"{results['workload']}: {results['metric']}, {direction} is better, "
                   f"{results['protocol']['seeds']} seeds, {results['iters']} iterations")
  present = {r["workload"] for r in all_results}
  missing = [w for w in WORKLOADS if w not in present]
  head = ["Each method's learning rate tuned on held-out validation data, then rerun on "
          "paired seeds; the test metric is the final one, mean ± std over seeds. Paired "
          "difference: method minus the tuned base, per seed. Verdict: *better* when the mean "
          "paired difference favours the method and it wins on at least 80% of the seeds "
          "(4 of 5), *worse* when the same holds for the base, *no difference* otherwise.", "",
          "Metrics: " + "; ".join(metrics) + ".", ""]
  if not all_results:
    return "\n".join(head[:-2] + [f"No workload has been run yet ({', '.join(missing)})."]) + "\n"
  tail = ["", *sentences, *(factor_rows(folder, all_results) if folder else [])]
  if missing:
    tail += ["", f"Not run yet: {', '.join(missing)}."]
  return "\n".join(head + table + tail) + "\n"


def load(folder: Path) -> list[dict]:
  """Every ``<folder>/<workload>/results.json``, in the order of :data:`WORKLOADS`, then by
  name; an unreadable one raises :class:`~experiments.cli.InputError` naming it."""
  paths = sorted(folder.glob("*/results.json"),
                 key=lambda p: (WORKLOADS.index(p.parent.name)
                                if p.parent.name in WORKLOADS else len(WORKLOADS), p.parent.name))
  loaded = []
  for path in paths:
    try:
      results = json.loads(path.read_text())
      for method, r in results["methods"].items():
        missing = sorted(set(METHOD_KEYS) - set(r))
        if missing:
          raise KeyError(f"{method} lacks {', '.join(missing)}")
    except (OSError, ValueError, KeyError, TypeError) as e:
      raise cli.InputError(f"{path} is not a tuned comparison's results.json "
                           f"({type(e).__name__}: {e}); rerun its workload") from None
    loaded.append(results)
  return loaded


@cli.reports_errors
def main(argv=None) -> str:
  parser = cli.Parser(prog="python -m experiments.verdict",
                      description=__doc__.split("\n\n")[0])
  parser.add_argument("--results", type=Path, default=Path("runs/tuned"),
                      help="folder of the workloads' outputs (default %(default)s)")
  parser.add_argument("--out", type=Path, default=None,
                      help="the verdict file (default RESULTS/verdict.md)")
  args = parser.parse_args(argv)
  if not args.results.is_dir():
    raise cli.InputError(f"no folder {args.results}; run python -m experiments.tuned lenet "
                         "(or resnet, charlm) first, or pass its --out's folder as --results")
  out = args.out or args.results / "verdict.md"
  cli.writable_folder(out.parent, "--out")
  all_results = load(args.results)
  text = verdict(all_results, args.results)
  files.write_text(out, text)
  print(text)
  return text


if __name__ == "__main__":
  main()
