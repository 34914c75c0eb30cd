"""LeNet with layer-specific learning rates on a device mesh: data parallel and FSDP, on one
process or several.

Trains the paper's LeNet (``experiments``: Fashion-MNIST, the MNIST protocol, batch 64,
``sgd+layer`` by default) with the harness's own training step
(:func:`experiments.engine.make_step`) once on one device and once on an N-device
mesh, from the same initial parameters on the same global batches. The optimizer code is
the same in both runs: under ``jax.jit`` with sharded arrays every norm is the whole
layer's, so no ``axis_name`` is needed.

* ``--mode dp``: parameters and optimizer state replicated, each batch split over devices.
* ``--mode fsdp``: each array split along its largest axis divisible by N (arrays with none
  stay replicated), the optimizer state like its parameter, the batch as in dp. The step
  gathers the parameters for the layer computations (``with_sharding_constraint``); the
  optimizer update, state included, runs on each device's slice.

What is checked (exit status 1 if not, with one line on stderr):

* **Each step**, from the mesh's own parameters and optimizer state: the step on one device
  gives the same parameter update, optimizer state, loss, layer norms and factors, to
  ``--step-tol`` (relative; default 1e-4 in float32, 1e-10 with ``--x64``). Both sides start
  from the same numbers, so only the order of the sums inside one step differs: this holds
  on any machine. Matrix products run at full precision (``jax_default_matmul_precision``
  ``highest``), so an accelerator's reduced-precision default does not enter.
* Every parameter and optimizer-state array keeps its sharding.
* **The trajectories**, one device and mesh each running freely from the same start: with
  ``--x64`` they must agree to ``--tol`` (default 1e-10, relative). In float32 the
  difference is printed, not judged (unless ``--tol`` is given): training amplifies the
  last-bit differences of another summation order, so after ~70 iterations the curves drift
  apart by an amount that depends on the machine.

Without N accelerators, ``--devices N`` simulates N CPU devices (``jax_num_cpu_devices``,
set before jax starts a backend). ``--processes P`` runs the mesh over P local processes of
N/P devices each, with JAX's multi-controller runtime (``jax.distributed``, a coordinator
on 127.0.0.1, gloo collectives between the CPU devices): this command starts the P
processes, process 0 prints the report, and if one of them fails the others are stopped
with one line saying which (the launcher: ``experiments/processes.py``); a signal to the
command (Ctrl-C, SIGTERM) stops them all with one line, and they die with it. On several
hosts, run one process per host with ``--process-id I --coordinator HOST0:PORT`` (see
docs/scale_out.md)::

  python -m examples.train_mesh --devices 8 --mode both --iters 100 [--x64]
  python -m examples.train_mesh --devices 8 --processes 2 --methods sgd+layer,adagrad+layer

Needs Fashion-MNIST in /usr/share/datasets/fashion-mnist (Debian's dataset-fashion-mnist)
or ``--data-dir`` (``--download`` fetches it there); ``--synthetic`` uses random images.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import sys
import time
from typing import Any, NamedTuple, NoReturn

import jax
import numpy as np
import optax
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from experiments import cli, configs, data, engine, files, methods, models, paper, records
from experiments import processes as launcher
from experiments.stats import relative_difference as relative

PROG = "train_mesh"
MODULE = "examples.train_mesh"
PROTOCOL = configs.MNIST


def parse_args(argv=None) -> argparse.Namespace:
  p = cli.Parser(prog=f"python -m {MODULE}", description=__doc__.split("\n\n")[0])
  p.add_argument("--devices", type=cli.positive_int, default=8,
                 help="mesh size N, over all processes (simulated CPU devices if there are "
                      "fewer accelerators)")
  p.add_argument("--mode", choices=("dp", "fsdp", "both"), default="both")
  p.add_argument("--iters", type=cli.positive_int, default=100)
  p.add_argument("--methods", default="sgd+layer",
                 help="comma-separated methods of experiments, e.g. sgd+layer,nag+layer")
  p.add_argument("--batch", type=cli.positive_int, default=None,
                 help="global batch size (default: the MNIST protocol's 64), a multiple of N")
  p.add_argument("--synthetic", action="store_true",
                 help="random 28x28 images and labels instead of Fashion-MNIST")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--data-dir", default=None)
  p.add_argument("--download", action="store_true",
                 help="fetch Fashion-MNIST into --data-dir (or data/) if it is not there")
  p.add_argument("--print-every", type=cli.positive_int, default=10)
  p.add_argument("--x64", action="store_true", help="train in float64")
  p.add_argument("--step-tol", type=float, default=None,
                 help="largest relative difference of one step allowed (default 1e-4, "
                      "1e-10 with --x64)")
  p.add_argument("--tol", type=float, default=None,
                 help="largest relative loss difference of the free-running trajectories "
                      "allowed (default: 1e-10 with --x64; not judged in float32)")
  p.add_argument("--json", default=None,
                 help="also write the results (step differences, both loss curves) here")
  launcher.add_arguments(p)
  args = p.parse_args(argv)
  try:
    args.methods = methods.method_list(args.methods)
  except ValueError as e:
    p.error(str(e))
  args.batch = args.batch or PROTOCOL.batch_size
  if args.batch % args.devices:
    p.error(f"the global batch {args.batch} does not split over {args.devices} devices; "
            "pass a --batch that is a multiple of --devices")
  if args.devices % args.processes:
    p.error(f"{args.devices} devices do not split over {args.processes} processes")
  if args.seed < 0:
    p.error(f"--seed must be >= 0, not {args.seed}")
  for name in ("step_tol", "tol"):
    if getattr(args, name) is not None and not getattr(args, name) > 0:
      p.error(f"--{name.replace('_', '-')} must be > 0")
  launcher.check_arguments(p, args)
  if args.json is not None and (problem := cli.unwritable(args.json)):
    p.error(f"cannot write --json {args.json} ({problem})")
  return args


# --- the runtime, the data, the two layouts ---------------------------------------------

def fail(message: str, status: int = 1) -> NoReturn:
  print(f"{PROG}: {message}", file=sys.stderr)
  sys.exit(status)


def start_runtime(args: argparse.Namespace) -> list:
  """Configures jax (devices, precision, several processes); returns the mesh's devices."""
  local = args.devices // args.processes
  jax.config.update("jax_num_cpu_devices", local)
  jax.config.update("jax_enable_x64", args.x64)
  jax.config.update("jax_default_matmul_precision", "highest")
  if args.processes > 1:
    launcher.join(args.process_id, args.processes, args.coordinator, args.timeout)
  devices = jax.devices()
  if len(devices) != args.devices:  # e.g. one GPU: use the simulated CPU devices
    devices = jax.devices("cpu")
  if len(devices) < args.devices or (args.processes > 1 and len(devices) != args.devices):
    fail(f"asked for {args.devices} devices, found {len(devices)}; pass --devices "
         f"{len(devices)}")
  return devices[: args.devices]


def load_images(args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray]:
  if args.synthetic:
    rng = np.random.default_rng(args.seed)
    images = rng.integers(0, 256, (max(1024, args.batch), 28, 28, 1), dtype=np.uint8)
    return images, rng.integers(0, 10, len(images)).astype(np.int32)
  try:
    dataset = data.load_dataset("fashion_mnist", args.data_dir, args.download)
  except (FileNotFoundError, ValueError) as e:
    fail(f"{e} (or pass --synthetic)")
  return dataset.train_images, dataset.train_labels


class TrainState(NamedTuple):
  """The engine's carry of one run with its iteration count, minibatch table and factor
  rows (:func:`experiments.engine.start`)."""

  step: Any  # scalar int32: iterations done
  carry: engine.Carry
  order: Any  # (iters, batch) int32 minibatch indices
  slot: Any  # (iters,) int32 factor row of each iteration


class Problem(NamedTuple):
  """One method's run: the engine's setup, initial state and optimizer, on the host."""

  setup: engine.Setup
  method: str
  lr: np.ndarray  # the protocol's base learning rate, in the run's precision
  tx: optax.GradientTransformation
  state: TrainState  # numpy leaves
  train_x: np.ndarray  # only the images the batches use
  train_y: np.ndarray


def make_problem(args: argparse.Namespace, method: str, images, labels) -> Problem:
  """The engine's setup and initial state (seed ``args.seed``) of the paper's protocol,
  every iteration's factors recorded, over the used images only: the batches of
  ``engine.make_order`` on the whole training set, renumbered."""
  order = engine.make_order(args.seed, len(images), args.iters, args.batch)
  used, renumbered = np.unique(order, return_inverse=True)
  x = data.preprocess(images[used], None)
  subset = data.ImageData(x, labels[used], x[:1], labels[used][:1], x[:1], labels[used][:1])
  model = models.MODELS[PROTOCOL.model](num_classes=10)
  setup = engine.Setup(model, engine.Images(args.batch),
                       methods.CaffeOptimizer(PROTOCOL.name, model, keep_stats=True),
                       eval_points=(), factor_points=args.iters)
  task = records.RunTask(method, paper.base_lr(PROTOCOL, method), args.seed, args.iters)
  run = engine.compile_run(setup, method, args.iters, setup.data.example(subset))
  carry, _, slot = engine.start(setup, run, subset, task)
  dtype = np.float64 if args.x64 else np.float32
  state = TrainState(np.int32(0), carry, renumbered.reshape(order.shape).astype(np.int32), slot)
  host = jax.tree.map(lambda a: np.asarray(a, dtype) if np.issubdtype(a.dtype, np.floating)
                      else np.asarray(a), jax.device_get(state))
  tx = setup.optimizer(method, task.lr, args.iters, carry.params).tx
  return Problem(setup, method, np.asarray(task.lr, dtype), tx, host, subset.train_x.astype(dtype),
                 subset.train_y)


class MeshModel(NamedTuple):
  """The model as the mesh runs it: the batch split over the devices and, for FSDP, the
  parameters gathered before the layer computations (gradients flow back to the slices)."""

  model: Any
  batch: NamedSharding
  gather: NamedSharding | None

  def apply(self, variables, x, **kwargs):
    x = jax.lax.with_sharding_constraint(x, self.batch)
    if self.gather is not None:
      variables = jax.lax.with_sharding_constraint(variables, self.gather)
    return self.model.apply(variables, x, **kwargs)


def jit_train_one(model, problem: Problem):
  """The engine's training step with ``model``: one iteration, donated."""
  step_fn = engine.make_step(dataclasses.replace(problem.setup, model=model), problem.method,
                             len(problem.state.order))

  def train_one(state: TrainState, train_x, train_y) -> TrainState:
    carry = step_fn(state.step, state.carry, state.order, state.slot, (train_x, train_y),
                    problem.lr)
    return state._replace(step=state.step + 1, carry=carry)
  return jax.jit(train_one, donate_argnums=0)


def fsdp_spec(shape: tuple[int, ...], n: int) -> P:
  """Split along the largest axis divisible by ``n``; replicated if there is none."""
  for axis in sorted(range(len(shape)), key=lambda a: -shape[a]):
    if shape[axis] % n == 0:
      return P(*[("data" if a == axis else None) for a in range(len(shape))])
  return P()


def state_shardings(problem: Problem, mesh: Mesh, mode: str) -> TrainState:
  """Shardings of the whole training state: parameters by ``mode``, each optimizer-state
  array like its parameter, everything else (histories, batch table) replicated."""
  replicated = NamedSharding(mesh, P())
  n = mesh.devices.size
  params = jax.tree.map(lambda a: NamedSharding(
      mesh, fsdp_spec(a.shape, n) if mode == "fsdp" else P()), problem.state.carry.params)
  opt_state = optax.tree_utils.tree_map_params(
      problem.tx, lambda _, s: s, problem.state.carry.opt_state, params,
      transform_non_params=lambda _: replicated)
  everything = jax.tree.map(lambda _: replicated, problem.state)
  return everything._replace(carry=everything.carry._replace(params=params,
                                                             opt_state=opt_state))


def put(tree, shardings):
  """Global arrays from the same host values on every process."""
  return jax.tree.map(
      lambda a, s: jax.make_array_from_callback(a.shape, s, lambda index: a[index]),
      tree, shardings)


def to_host(tree, replicated: NamedSharding):
  """Whole arrays as numpy on every process (a collective when several processes run)."""
  if jax.process_count() == 1:
    return jax.device_get(tree)
  tree = jax.jit(lambda t: t, out_shardings=replicated)(tree)  # every array on every device
  return jax.tree.map(lambda a: np.asarray(a.addressable_data(0)), tree)


# --- the runs and the comparison --------------------------------------------------------

class StepDiffs(NamedTuple):
  """Largest relative differences of one step, mesh against one device."""

  update: float  # ||p_mesh - p_one|| / ||p_one - p_before||, per parameter array
  opt_state: float  # ||s_mesh - s_one|| / ||s_one||, per optimizer-state array
  loss: float
  norm: float  # per layer
  factor: float  # per layer


def step_diffs(before: engine.Carry, mesh: engine.Carry, one: engine.Carry,
               k: int) -> StepDiffs:
  largest = lambda values: max(values, default=0.0)
  return StepDiffs(
      largest(relative(m, o, o - b) for m, o, b in zip(
          jax.tree.leaves(mesh.params), jax.tree.leaves(one.params),
          jax.tree.leaves(before.params))),
      largest(relative(m, o) for m, o in zip(jax.tree.leaves(mesh.opt_state),
                                             jax.tree.leaves(one.opt_state))),
      relative(mesh.losses[k], one.losses[k]),
      largest(relative(m, o) for m, o in zip(mesh.norms[k], one.norms[k])),
      largest(relative(m, o) for m, o in zip(mesh.factors[k], one.factors[k])))


def train_one_device(problem: Problem, step, device) -> TrainState:
  """Free-running on one device from the initial state; returns the final state (numpy)."""
  state = jax.device_put(problem.state, device)
  x, y = jax.device_put((problem.train_x, problem.train_y), device)
  for _ in range(len(problem.state.order)):
    state = step(state, x, y)
  return jax.device_get(state)


class MeshRun(NamedTuple):
  final: TrainState  # numpy
  diffs: list[StepDiffs]  # per step
  kept: bool  # parameters and optimizer state kept their shardings
  seconds: float


def train_mesh(problem: Problem, shardings, step, reference, args) -> MeshRun:
  """Trains on the mesh; after each step, runs the one-device step from the mesh's state
  before it (``reference(state) -> state``) and compares."""
  state = put(problem.state, shardings)
  x, y = put((problem.train_x, problem.train_y), (shardings.order, shardings.order))
  diffs, start, before = [], time.perf_counter(), problem.state
  for k in range(args.iters):
    state = jax.block_until_ready(step(state, x, y))
    if k == 0:
      launcher.fault_drill(args.fail_process)
    after = to_host(state, shardings.order)
    diffs.append(step_diffs(before.carry, after.carry, reference(before).carry, k))
    before = after
  seconds = time.perf_counter() - start
  kept = all(a.sharding.is_equivalent_to(s, a.ndim) for a, s in zip(
      jax.tree.leaves((state.carry.params, state.carry.opt_state)),
      jax.tree.leaves((shardings.carry.params, shardings.carry.opt_state))))
  return MeshRun(before, diffs, kept, seconds)


def describe_layout(params, shardings) -> tuple[str, float]:
  """The split arrays ('ip1/kernel P('data', None)') and the fraction of parameters split."""
  split, split_size, total = [], 0, 0
  for (path, a), s in zip(jax.tree_util.tree_leaves_with_path(params),
                          jax.tree.leaves(shardings)):
    total += a.size
    if s.spec != P():
      split.append(f"{'/'.join(str(k.key) for k in path)} {s.spec}")
      split_size += a.size
  return ", ".join(split) or "none", split_size / total


def summarize(method: str, mode: str, problem: Problem, shardings, run: MeshRun,
              ref: TrainState) -> dict:
  """One layout's results: layout, shardings kept, largest step differences, both curves."""
  split, fraction = describe_layout(problem.state.carry.params, shardings.carry.params)
  param_diff = max(float(np.max(np.abs(a - b))) for a, b in zip(
      jax.tree.leaves(run.final.carry.params), jax.tree.leaves(ref.carry.params)))
  return {"method": method, "mode": mode, "split": split, "split_fraction": fraction,
          "kept": run.kept, "seconds": run.seconds,
          "step": {name: max(getattr(d, name) for d in run.diffs)
                   for name in StepDiffs._fields},
          "loss_one_device": ref.carry.losses.tolist(),
          "loss_mesh": run.final.carry.losses.tolist(),
          "final_param_diff": param_diff}


def print_summary(args: argparse.Namespace, summary: dict) -> None:
  ref_loss, loss = np.array(summary["loss_one_device"]), np.array(summary["loss_mesh"])
  diff = np.abs(loss - ref_loss)
  print(f"\n{summary['method']}, {summary['mode']} on {args.devices} devices "
        f"({summary['seconds']:.1f} s); split arrays: {summary['split']} "
        f"({summary['split_fraction']:.0%} of the parameters)")
  print(f"  shardings kept (parameters and optimizer state): {summary['kept']}")
  print(f"  one step from the mesh's state, largest relative difference to one device over "
        f"{args.iters} steps:")
  print("    " + "   ".join(f"{name} {value:.1e}" for name, value in summary["step"].items()))
  judged = "judged" if trajectory_tol(args) else "reported, not judged"
  print(f"  free-running trajectories from the same start ({judged}):")
  print("   iter   loss (1 device)   loss (mesh)    |difference|")
  for k in sorted(set(range(0, args.iters, args.print_every)) | {args.iters - 1}):
    print(f"  {k + 1:5d}   {ref_loss[k]:.7f}       {loss[k]:.7f}     {diff[k]:.2e}")
  print(f"  max |loss difference| over {args.iters} iterations: {diff.max():.2e} "
        f"(relative {np.max(diff / ref_loss):.2e}); max |parameter difference| at the end: "
        f"{summary['final_param_diff']:.2e}")


def trajectory_tol(args: argparse.Namespace) -> float | None:
  return args.tol if args.tol is not None else (1e-10 if args.x64 else None)


def failed_checks(args: argparse.Namespace, summary: dict) -> list[str]:
  where = f"{summary['method']} {summary['mode']}"
  step_diff = max(summary["step"].values())
  step_tol = args.step_tol or (1e-10 if args.x64 else 1e-4)
  ref_loss, loss = np.array(summary["loss_one_device"]), np.array(summary["loss_mesh"])
  trajectory_diff, tol = float(np.max(np.abs(loss - ref_loss) / ref_loss)), trajectory_tol(args)
  failures = []
  if step_diff > step_tol:
    failures.append(f"{where}: one step differs from one device's by {step_diff:.1e} "
                    f"(relative) > --step-tol {step_tol:g}")
  if not summary["kept"]:
    failures.append(f"{where}: a parameter or optimizer-state array lost its sharding")
  if tol is not None and trajectory_diff > tol:
    failures.append(f"{where}: the mesh's loss curve differs from one device's by "
                    f"{trajectory_diff:.1e} (relative) > --tol {tol:g}")
  return failures


def compare(args, method: str, images, labels, devices) -> list[dict]:
  """Both layouts of one method against one device; their summaries, printed by process 0.

  Every process computes the one-device runs too, so that all reach each collective
  together: gloo gives up on a peer that is 30 s late to its first collective.
  """
  problem = make_problem(args, method, images, labels)
  one = jax.local_devices(backend=devices[0].platform)[0]
  one_step = jit_train_one(problem.setup.model, problem)
  reference = lambda state: jax.device_get(one_step(
      jax.device_put(state, one), *jax.device_put((problem.train_x, problem.train_y), one)))
  ref = train_one_device(problem, one_step, one)
  mesh = Mesh(np.array(devices), ("data",), axis_types=(AxisType.Auto,))
  summaries = []
  for mode in ("dp", "fsdp") if args.mode == "both" else (args.mode,):
    gather = NamedSharding(mesh, P()) if mode == "fsdp" else None
    model = MeshModel(problem.setup.model, NamedSharding(mesh, P("data")), gather)
    shardings = state_shardings(problem, mesh, mode)
    run = train_mesh(problem, shardings, jit_train_one(model, problem),
                     reference, args)
    summaries.append(summarize(method, mode, problem, shardings, run, ref))
    if jax.process_index() == 0:
      print_summary(args, summaries[-1])
  return summaries


def print_header(args: argparse.Namespace, devices: list) -> None:
  if jax.process_index() == 0:
    print(f"{args.iters} iterations, global batch {args.batch} ({args.batch // args.devices} "
          f"per device), {'float64' if args.x64 else 'float32'}, "
          f"{'synthetic data' if args.synthetic else 'Fashion-MNIST'}; mesh of "
          f"{args.devices} {devices[0].platform} devices in {args.processes} process(es)")


def write_json(path: str, argv: list[str], summaries: list[dict]) -> None:
  """The command and every layout's summary, written atomically."""
  try:
    files.write_json(path, {"command": f"python -m {MODULE} " + " ".join(argv),
                            "runs": summaries})
  except OSError as e:
    fail(f"cannot write {path} ({e.strerror}); pass another --json")


def main(argv: list[str] | None = None) -> int:
  argv = sys.argv[1:] if argv is None else list(argv)
  args = parse_args(argv)
  launches = launcher.launches(args)
  # The launcher ends its processes on SIGTERM too; a process it started dies by SIGTERM.
  cli.handle_signals((signal.SIGINT, signal.SIGTERM) if launches else (signal.SIGINT,))
  try:
    images, labels = load_images(args)  # checked by the launcher too, before any process
    if launches:
      return launcher.launch(MODULE, PROG, argv, args)
    return run(args, argv, images, labels)
  except cli.Interrupted as e:
    if launches:
      fail(str(e), e.status)
    print(f"{PROG}: process {args.process_id} of {args.processes} {e}", file=sys.stderr,
          flush=True)
    os._exit(e.status)  # no shutdown of the runtime, which would wait for the others
  except launcher.ProcessError as e:
    fail(str(e), e.status)


def run(args: argparse.Namespace, argv: list[str], images, labels) -> int:
  """Every method and layout against one device, on this process's part of the mesh."""
  devices = start_runtime(args)
  print_header(args, devices)
  summaries = [summary for method in args.methods
               for summary in compare(args, method, images, labels, devices)]
  if args.json and jax.process_index() == 0:
    write_json(args.json, argv, summaries)
  failures = [failure for summary in summaries for failure in failed_checks(args, summary)]
  if failures:
    fail("; ".join(failures))
  return 0


if __name__ == "__main__":
  sys.exit(main())
