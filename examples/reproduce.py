"""Reproduces the comparisons of Singh et al. (2015): base optimizers against their layer versions.

    python examples/reproduce.py --dataset fashion_mnist --seeds 10 --iters 2000 \\
        --out results/fashion_mnist

Runs seed-major (seed 0 of every method, then seed 1, ...) so that after each seed the
report under ``--out`` (table.md, results.json, test_error.csv, test_error.png,
effective_lr.png) covers every seed finished so far, paired across methods. Finished runs
are kept in ``--out/runs`` and an interrupted run resumes from ``--out/ckpt``: rerunning the
same command continues where it stopped.

``--workers N`` trains the seeds in N single-threaded worker processes (seed k goes to worker
k mod N) and then writes the report for all of them: on XLA:CPU two single-threaded
processes train LeNet about 25% faster than one process using both cores.

References:
  Singh et al., "Layer-Specific Adaptive Learning Rates for Deep Networks", ICMLA 2015,
  arXiv:1510.04609.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from paper import configs, data, report, train  # noqa: E402


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
  p.add_argument("--workers", type=int, default=1,
                 help="train the seeds in N single-threaded processes, then report")
  p.add_argument("--worker-seeds", default=None, help=argparse.SUPPRESS)
  p.add_argument("--progress-file", default=None, help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  if args.workers < 1 or args.seeds < 1 or args.iters < 1:
    p.error("--workers, --seeds and --iters must be at least 1")
  return args


def run_workers(args: argparse.Namespace, argv: list[str], seeds: list[int], n_runs: int,
                out: Path) -> None:
  """Trains ``seeds`` in ``args.workers`` child processes; one progress bar for all."""
  progress_dir = out / "progress"
  progress_dir.mkdir(parents=True, exist_ok=True)
  flags = os.environ.get("XLA_FLAGS", "") + " " + train.SINGLE_THREAD_XLA
  env = dict(os.environ, XLA_FLAGS=flags)
  procs = []
  for w in range(args.workers):
    mine = seeds[w::args.workers]
    if not mine:
      continue
    pfile = progress_dir / f"worker{w}.txt"
    pfile.write_text("0")
    cmd = [sys.executable, __file__, *argv, "--workers", "1", "--no-progress", "--no-plots",
           "--worker-seeds", ",".join(map(str, mine)), "--progress-file", str(pfile)]
    log = open(progress_dir / f"worker{w}.log", "w")
    procs.append((subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT), log,
                  pfile))
  bar = None
  if not args.no_progress:
    from tqdm import tqdm
    bar = tqdm(total=n_runs * args.iters, unit="it", smoothing=0.05,
               desc=f"{len(procs)} workers")
  while any(p.poll() is None for p, _, _ in procs):
    time.sleep(1.0)
    if bar is not None:
      done = sum(int(f.read_text() or 0) for _, _, f in procs if f.exists())
      bar.update(done - bar.n)
  if bar is not None:
    bar.close()
  for _, log, _ in procs:
    log.close()
  failed = [i for i, (p, _, _) in enumerate(procs) if p.returncode]
  if failed:
    sys.exit(f"worker(s) {failed} failed; see {progress_dir}/worker*.log")


def method_list(spec: str) -> list[str]:
  if spec == "paper":
    return list(configs.METHODS)
  if spec == "all":
    return list(configs.METHODS + configs.EXTRA_METHODS)
  return [m.strip() for m in spec.split(",") if m.strip()]


def main(argv=None) -> dict:
  args = parse_args(argv)
  protocol = configs.PROTOCOLS[args.protocol or configs.DEFAULT_PROTOCOL[args.dataset]]
  methods = method_list(args.methods)
  seeds = list(range(args.first_seed, args.first_seed + args.seeds))
  if args.worker_seeds:
    seeds = [int(k) for k in args.worker_seeds.split(",")]
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
  t0 = time.perf_counter()
  if args.workers > 1:
    argv_list = list(sys.argv[1:] if argv is None else argv)
    run_workers(args, argv_list, seeds, len(seeds) * len(methods), out)
  runners: dict[str, train.Runner] = {}
  counter = {"n": 0}

  def count(n: int) -> None:  # a worker's progress, read by its parent
    counter["n"] += n
    if counter["n"] % 50 == 0:
      Path(args.progress_file).write_text(str(counter["n"]))
  done: dict[str, list[dict]] = {m: [] for m in methods}
  bar = None
  if not args.no_progress and args.workers == 1:  # workers: their bar was shown above
    from tqdm import tqdm
    bar = tqdm(total=len(seeds) * len(methods) * args.iters, unit="it", smoothing=0.05)
  md = ""
  eval_iters = list(train.eval_points(protocol, args.iters))
  names = list(train.layer_names(protocol, args.layers, dataset.num_classes))
  for seed in seeds:
    trained = False
    for m in methods:
      path = out / "runs" / f"{m}_seed{seed}.npz"
      if path.exists():
        done[m].append(train.load_run(path))
        if bar is not None:
          bar.update(args.iters)
        if args.progress_file:
          count(args.iters)
        continue
      if m not in runners:
        runners[m] = train.Runner(protocol, m, dataset, args.iters, args.layers,
                                  batch_size=args.batch_size)
      if bar is not None:
        bar.set_description(f"seed {seed} {m}")
      ckpt = out / "ckpt" / f"{m}_seed{seed}.npz"
      progress = bar.update if bar is not None else (count if args.progress_file else None)
      r = runners[m].run(seed, ckpt, args.checkpoint_every, progress=progress)
      path.parent.mkdir(parents=True, exist_ok=True)
      train.save_run(path, r)
      ckpt.unlink(missing_ok=True)
      done[m].append(train.load_run(path))
      trained = True
      if args.progress_file:
        Path(args.progress_file).write_text(str(counter["n"]))
    if args.worker_seeds:
      continue  # the parent process writes the report
    if not trained and seed != seeds[-1]:
      continue  # runs loaded from disk: one report once they are all in
    results = {m: train.stack_runs(done[m]) | {"eval_iters": eval_iters, "layer_names": names}
               for m in methods}
    config["seeds_done"] = [r["seed"] for r in done[methods[0]]]
    config["wall_s"] = round(time.perf_counter() - t0, 1)
    md = report.write_report(out, results, config, plots=not args.no_plots)
  if bar is not None:
    bar.close()
  if args.worker_seeds:
    return {}
  print(md)
  print(f"wrote {out}/table.md, results.json, test_error.csv"
        + ("" if args.no_plots else ", test_error.png, effective_lr.png"))
  (out / "timing.json").write_text(json.dumps({"wall_s": config["wall_s"], "runs": {
      m: [round(float(r["wall_s"]), 1) for r in done[m]] for m in methods}}, indent=1))
  return results


if __name__ == "__main__":
  main()
