"""One verdict table across the tuned comparisons: ``python -m experiments.verdict``.

Reads every ``<results>/<workload>/results.json`` present (``--results``, default
``runs/tuned``, where :mod:`experiments.tuned` writes; the committed ones are in
``results/evidence``) and writes ``<results>/verdict.md``: per workload and base method (a
method that is its own baseline), the tuned base, the tuned ``+layer`` (factor of eq. 9), the
tuned ``+relative`` (the factors divided by their parameter-weighted mean, so the mean factor
over parameters is 1 at every step), the tuned ``+uniform`` (that mean on every layer) where
it was run, and the layer-wise peers compared with that base, each with its final test
metric (mean ± std over the evaluation seeds), its paired comparison with the base,
recomputed from the per-seed values (:func:`experiments.stats.paired`): mean difference, 95%
t interval, Wilcoxon p, detectable effect at 80% power, wins; and the paper's speed claim,
the iterations to reach the base's mean final validation value (:func:`experiments.stats.reach`).

The rule (``d_s`` = method minus base on evaluation seed ``s``): **better** or **worse** only
when the 95% interval of the mean ``d`` excludes 0; otherwise **no difference detected**,
stated with the effect the seeds could have detected; **diverged** when one side diverged on
seeds the interval cannot account for.

The summary per workload and base states each verdict and attributes a gain only as the
intervals allow: if ``+layer`` and ``+relative`` are both better, the redistribution across
layers carries a gain; if only ``+layer`` is, the redistribution alone was not shown to help
(``+relative``'s detectable effect says how small a gain could have been missed; if it is
worse, the redistribution alone does harm), and if
``+uniform`` is better too, the gain comes with the factors' common part: their
parameter-weighted mean, one multiplier for every layer that follows the gradients.

Last, a table of how far from uniform the factors were (:func:`factor_rows`), read from the
base methods' run records at their selected rates.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from experiments import cli, files, report, stats, tuned
from experiments.methods import SUFFIXES
from experiments.records import METHOD_KEYS
from experiments.stats import mean_pm_std

WORKLOADS = tuple(tuned.WORKLOADS)
# What a results.json of this protocol holds per method beyond the schema's core.
INTERVAL_KEYS = ("ci95", "p_wilcoxon", "mde", "verdict", "iters_to_baseline_val")


def compared(results: dict, base: str) -> list[str]:
  """The base, then its +layer, +relative and +uniform, then the other methods compared with
  it."""
  run = results["methods"]
  own = [m for m in (base, *(f"{base}+{s}" for s in SUFFIXES)) if m in run]
  return own + [m for m, r in run.items() if r["baseline"] == base and m not in own]


def stated(results: dict, method: str) -> str:
  """``method``'s verdict against its tuned base with the interval behind it."""
  result = report.comparison(results, method)
  base = results["methods"][method]["baseline"]
  low, high = result.ci95
  decimals = stats.std_decimals(result.std)
  return (f"{method} {stats.verdict_text(result)} against tuned {base} (mean difference "
          f"{stats.pm(result.mean, result.std, signed=True).split(' ± ')[0]}, 95% CI "
          f"{stats.interval_text(low, high, decimals)})")


def summary(results: dict, base: str) -> str:
  """The verdicts in words for ``base`` on one workload, attributing a gain only as the
  intervals allow (module doc)."""
  methods = compared(results, base)[1:]
  verdicts = {m: report.comparison(results, m).verdict for m in methods}
  layer, relative, uniform = (f"{base}+{s}" for s in ("layer", "relative", "uniform"))
  words = "; ".join(stated(results, m) for m in methods) or f"only tuned {base} was run"
  if verdicts.get(layer) != stats.BETTER or relative not in verdicts:
    return words + "."
  if verdicts[relative] == stats.BETTER:
    return (words + f". {relative} (mean factor 1 over parameters) is better too: the "
            "redistribution across layers carries a gain.")
  if verdicts[relative] == stats.WORSE:
    words += (f". {relative} is worse: the redistribution across layers alone does harm, "
              f"so the gain of {layer} does not come from it")
  else:
    words += (f". {relative} is not: the gain of {layer} is not shown to come from the "
              "redistribution across layers")
  if verdicts.get(uniform) == stats.BETTER:
    words += (f"; {uniform} is better: the gain comes with the factors' parameter-weighted "
              "mean, one multiplier for every layer")
  return words + "."


def rows(results: dict) -> tuple[list[list[str]], list[str]]:
  """The table rows and the summary lines of one workload."""
  lines, sentences = [], []
  methods = results["methods"]
  for base in [m for m, r in methods.items() if r["baseline"] == m]:
    for method in compared(results, base):
      r = methods[method]
      lines.append([results["workload"], base, method, f"{r['selected_lr']:.3g}",
                    mean_pm_std(r["test"]), *report.comparison_cells(results, method)])
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


HEADER = ("workload", "base", "method", "selected lr", "test metric", "paired diff vs base",
          "95% CI", "p (Wilcoxon)", "detectable effect", "wins", "verdict",
          "iterations to base val")


def verdict(all_results: list[dict], folder: Path | None = None) -> str:
  """verdict.md's text for the workloads' results (with the factor table when ``folder``
  holds their run records)."""
  table, sentences, metrics = [], [], []
  for results in all_results:
    lines, said = rows(results)
    table += lines
    sentences += said
    direction = "lower" if results["lower_is_better"] else "higher"
    metrics.append(f"{results['workload']}: {results['metric']}, {direction} is better, "
                   f"{len(results['eval_seeds'])} evaluation seeds, {results['iters']} "
                   "iterations")
  present = {r["workload"] for r in all_results}
  missing = [w for w in WORKLOADS if w not in present]
  head = ["Each method's learning rate selected on the mean final validation metric of the grid "
          "seeds, then rerun on evaluation seeds disjoint from them and shared by every "
          "method; the test metric is the final one, mean ± std over the evaluation seeds. "
          "Paired difference: method minus the tuned base, per seed, mean ± std; 95% CI: its "
          "t interval; p: Wilcoxon signed-rank; detectable effect: the mean difference found "
          "with 80% power. Verdict: *better* or *worse* only when the interval excludes 0, "
          "otherwise *no difference detected* with the effect the seeds could detect. "
          "Iterations to base val (the paper's speed claim): per seed the first evaluation "
          "point whose validation metric reaches the tuned base's mean final one; their median "
          "[95% interval of the median] (seeds that reach it; ∞: not reached).", "",
          "Metrics: " + "; ".join(metrics) + ".", ""]
  if not all_results:
    return "\n".join(head[:-2] + [f"No workload has been run yet ({', '.join(missing)})."]) + "\n"
  tail = ["", *sentences, *(factor_rows(folder, all_results) if folder else [])]
  if missing:
    tail += ["", f"Not run yet: {', '.join(missing)}."]
  return "\n".join(head + [stats.markdown_table(HEADER, table)] + tail) + "\n"


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
        missing = sorted(set(METHOD_KEYS + INTERVAL_KEYS) - set(r))
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
