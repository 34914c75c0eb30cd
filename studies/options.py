"""The command-line options every study shares (and those of the LeNet studies)."""

from __future__ import annotations

import argparse
from pathlib import Path

from experiments import cli

ROOT = Path(__file__).resolve().parent.parent
# The main comparison's output (python -m examples.reproduce --out results/fashion_mnist).
MAIN_RUN = ROOT / "results" / "fashion_mnist"


def study_parser(doc: str, seeds: int, iters: int, name: str) -> cli.Parser:
  """``--seeds``, ``--iters``, ``--out`` (default results/studies/NAME) and ``--no-plots``."""
  parser = cli.Parser(prog=f"python -m studies.{name}", description=doc.splitlines()[0],
                      formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  parser.add_argument("--seeds", type=cli.positive_int, default=seeds,
                      help="number of seeds (0..n-1)")
  parser.add_argument("--iters", type=cli.positive_int, default=iters,
                      help="training iterations per run")
  parser.add_argument("--out", type=Path, default=ROOT / "results" / "studies" / name,
                      help="output folder")
  parser.add_argument("--no-plots", action="store_true")
  return parser


def lenet_parser(doc: str, seeds: int, iters: int, name: str) -> cli.Parser:
  """:func:`study_parser` plus the options of the studies that train LeNet with the harness."""
  lenet = study_parser(doc, seeds, iters, name)
  lenet.add_argument("--workers", type=cli.positive_int, default=2,
                     help="single-threaded worker processes (1: train in this process)")
  lenet.add_argument("--reuse", type=Path, default=MAIN_RUN,
                     help="an examples.reproduce output folder whose runs/*.npz (layers='module') "
                     "replace training the same method, learning rate and seeds; ignored "
                     "where a run is missing")
  lenet.add_argument("--no-reuse", dest="reuse", action="store_const", const=None)
  return lenet
