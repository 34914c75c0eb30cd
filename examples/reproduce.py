"""Reproduces the comparisons of Singh et al. (2015): base optimizers against their layer versions.

    python examples/reproduce.py --dataset fashion_mnist --seeds 10 --iters 2000 \\
        --out results/fashion_mnist

Runs seed-major (seed 0 of every method, then seed 1, ...) so that after each seed the
report under ``--out`` (table.md, results.json, test_error.csv, test_error.png,
effective_lr.png) covers every seed finished so far, paired across methods. Finished runs
are kept in ``--out/runs`` and an interrupted run resumes from ``--out/ckpt``: rerunning the
same command continues where it stopped.

References:
  Singh et al., "Layer-Specific Adaptive Learning Rates for Deep Networks", ICMLA 2015,
  arXiv:1510.04609.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from paper import configs, data, report, train  # noqa: E402

RUN_KEYS = ("test_error", "train_loss", "grad_norm", "factor", "effective_lr")


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--dataset", default="fashion_mnist", choices=["fashion_mnist", "mnist",
                                                                "cifar10"])
  p.add_argument("--protocol", default=None, choices=sorted(configs.PROTOCOLS),
                 help="default: mnist for (fashion_)mnist, cifar10_full for cifar10")
  p.add_argument("--methods", default="paper",
                 help="comma-separated, e.g. sgd,sgd+layer; 'paper' = the six methods, "
                      "'all' = those plus adam,adam+layer")
  p.add_argument("--seeds", type=int, default=10, help="number of seeds (0..N-1)")
  p.add_argument("--first-seed", type=int, default=0)
  p.add_argument("--iters", type=int, default=2000)
  p.add_argument("--layers", default="module", choices=["module", "array"],
                 help="module: one factor per layer (weights+bias); array: per blob, Caffe's")
  p.add_argument("--batch-size", type=int, default=None, help="default: the protocol's")
  p.add_argument("--data-dir", default=None)
  p.add_argument("--download", action="store_true", help="fetch missing public files")
  p.add_argument("--out", default="runs/fashion_mnist")
  p.add_argument("--checkpoint-every", type=int, default=500)
  p.add_argument("--no-plots", action="store_true")
  p.add_argument("--no-progress", action="store_true")
  return p.parse_args(argv)


def method_list(spec: str) -> list[str]:
  if spec == "paper":
    return list(configs.METHODS)
  if spec == "all":
    return list(configs.METHODS + configs.EXTRA_METHODS)
  return [m.strip() for m in spec.split(",") if m.strip()]


def load_run(path: Path) -> dict:
  with np.load(path) as f:
    return {k: f[k] for k in f.files} | {"wall_s": float(f["wall_s"])}


def main(argv=None) -> dict:
  args = parse_args(argv)
  protocol = configs.PROTOCOLS[args.protocol or configs.DEFAULT_PROTOCOL[args.dataset]]
  methods = method_list(args.methods)
  seeds = list(range(args.first_seed, args.first_seed + args.seeds))
  out = Path(args.out)
  try:
    dataset = data.load_dataset(args.dataset, args.data_dir, args.download)
  except FileNotFoundError as e:
    sys.exit(str(e))
  config = {"dataset": args.dataset, "protocol": protocol.name, "methods": methods,
            "seeds_requested": seeds, "iters": args.iters, "layers": args.layers,
            "batch_size": args.batch_size or protocol.batch_size,
            "command": "python examples/reproduce.py " + " ".join(sys.argv[1:] if argv is None
                                                                  else argv)}
  runners: dict[str, train.Runner] = {}
  done: dict[str, list[dict]] = {m: [] for m in methods}
  bar = None
  if not args.no_progress:
    from tqdm import tqdm
    bar = tqdm(total=len(seeds) * len(methods) * args.iters, unit="it", smoothing=0.05)
  t0 = time.perf_counter()
  md = ""
  for seed in seeds:
    for m in methods:
      path = out / "runs" / f"{m}_seed{seed}.npz"
      if path.exists():
        done[m].append(load_run(path))
        if bar is not None:
          bar.update(args.iters)
        continue
      if m not in runners:
        runners[m] = train.Runner(protocol, m, dataset, args.iters, args.layers,
                                  batch_size=args.batch_size)
      if bar is not None:
        bar.set_description(f"seed {seed} {m}")
      ckpt = out / "ckpt" / f"{m}_seed{seed}.npz"
      r = runners[m].run(seed, ckpt, args.checkpoint_every,
                         progress=bar.update if bar is not None else None)
      path.parent.mkdir(parents=True, exist_ok=True)
      np.savez(path, seed=seed, wall_s=r["wall_s"], **{k: r[k] for k in RUN_KEYS})
      ckpt.unlink(missing_ok=True)
      done[m].append(load_run(path))
    runner = next(iter(runners.values()), None) or train.Runner(
        protocol, methods[0], dataset, args.iters, args.layers, batch_size=args.batch_size)
    results = {}
    for m in methods:
      stacked = train.stack_runs([r | {"seed": int(r["seed"])} for r in done[m]])
      names = runners[m].setup.layer_names if m in runners else runner.setup.layer_names
      results[m] = stacked | {"eval_iters": list(runner.eval_iters), "layer_names": names}
    config["seeds_done"] = [int(r["seed"]) for r in done[methods[0]]]
    config["wall_s"] = round(time.perf_counter() - t0, 1)
    md = report.write_report(out, results, config, plots=not args.no_plots)
  if bar is not None:
    bar.close()
  print(md)
  print(f"wrote {out}/table.md, results.json, test_error.csv"
        + ("" if args.no_plots else ", test_error.png, effective_lr.png"))
  (out / "timing.json").write_text(json.dumps({"wall_s": config["wall_s"], "runs": {
      m: [round(float(r["wall_s"]), 1) for r in done[m]] for m in methods}}, indent=1))
  return results


if __name__ == "__main__":
  main()
