"""Vanishing gradients: do layer-specific rates speed up the shallow layers of a deep MLP?

Network: a multilayer perceptron on Fashion-MNIST, ``784 -> width x depth -> 10`` with
sigmoid (default) or tanh hidden units and Caffe's Xavier fill (``U(-a, a)``,
``a = sqrt(3 / fan_in)``, biases 0), i.e. ``depth + 1`` weight layers; softmax cross-entropy,
batch 64, inputs ``x / 256``. A sigmoid's derivative is at most 1/4, so the backpropagated
gradient shrinks layer by layer towards the input: the paper's motivating case.

Each layer ``l`` (a kernel and its bias, ``layers="module"``) gets
``t_l = t * f_l``, ``f_l = 1 + log(1 + 1/||g_l||_2)`` (Singh et al. 2015, eq. 9-10).
Recorded every ``--record-every`` iterations for every seed and layer:

* ``||g_l||``, the gradient norm the factor sees, and ``f_l`` (for the base method: the
  factor it *would* get);
* the relative distance from initialisation ``||W_l(k) - W_l(0)||_F / ||W_l(0)||_F``
  (kernels), the measure of how much a layer has learned;

and the training loss (minibatch) and test error every ``--eval-every`` iterations.

Methods (momentum 0.9, constant lr, no weight decay, paired seeds: same initialisation and
batch order): ``sgd`` and ``sgd+layer`` at ``--lr``, and ``sgd`` at the larger learning
rates of ``--baseline-lrs``, which answer whether the effect is just a larger global rate:
a global rate scales all layers alike, the factor does not.

Run: ``python -m studies.vanishing`` (5 seeds; run time in docs/studies.md). With
Xavier fill this network does not learn in 3000 iterations under any of the methods; the
second setting of docs/studies.md, ``--init-gain 4 --baseline-lrs 0.03 --out
results/studies/vanishing/gain4``, multiplies the Xavier bound by 4 (sigmoid slope 1/4 times
weight gain about 1 per layer), where gradients still shrink towards the input but SGD
learns, slowly.

References:
  Singh, De, Zhang, Goldstein, Taylor. "Layer-Specific Adaptive Learning Rates for Deep
  Networks." ICMLA 2015. arXiv:1510.04609.
  Glorot, Bengio. "Understanding the difficulty of training deep feedforward neural
  networks." AISTATS 2010 (vanishing gradients in deep sigmoid networks; Xavier fill).
  Xiao, Rasul, Vollgraf. "Fashion-MNIST." arXiv:1708.07747.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

import layerwise_optax as lo
from experiments import cli, data, report, train
from studies import optimizers, options, outputs, stats

ACTIVATIONS = {"sigmoid": jax.nn.sigmoid, "tanh": jnp.tanh}


@dataclasses.dataclass(frozen=True)
class Setup:
  depth: int = 10
  width: int = 128
  activation: str = "sigmoid"
  batch: int = 64
  iters: int = 3000
  record_every: int = 20
  eval_every: int = 500
  init_gain: float = 1.0


def layer_names(setup: Setup) -> list[str]:
  return [f"dense{i}" for i in range(setup.depth + 1)]


def init_params(setup: Setup, seed: int) -> dict:
  """Xavier-uniform kernels, zero biases (numpy, so every method starts identically)."""
  rng = np.random.default_rng(seed)
  sizes = [784] + [setup.width] * setup.depth + [10]
  params = {}
  for name, fan_in, fan_out in zip(layer_names(setup), sizes[:-1], sizes[1:]):
    a = setup.init_gain * np.sqrt(3.0 / fan_in)
    params[name] = {"kernel": rng.uniform(-a, a, (fan_in, fan_out)).astype(np.float32),
                    "bias": np.zeros(fan_out, np.float32)}
  return params


def forward(setup: Setup, params: dict, x: jax.Array) -> jax.Array:
  act = ACTIVATIONS[setup.activation]
  names = layer_names(setup)
  for name in names[:-1]:
    x = act(x @ params[name]["kernel"] + params[name]["bias"])
  return x @ params[names[-1]]["kernel"] + params[names[-1]]["bias"]


def loss_fn(setup, params, x, y):
  logits = forward(setup, params, x)
  return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))


def make_chunk(setup: Setup, method: str, train_x, train_y):
  """``eval_every`` steps of one run (a scan of scans); records every ``record_every``."""
  names = layer_names(setup)

  def run(params, opt, init_kernels, order, lr):
    tx = optimizers.make_optimizer(method, lr)

    def step(carry, idx):
      params, opt = carry
      loss, grads = jax.value_and_grad(lambda p: loss_fn(setup, p, train_x[idx],
                                                         train_y[idx]))(params)
      updates, opt = tx.update(grads, opt, params)
      lf = lo.layer_factors(grads)  # the library's norms and factors, layers="module"
      norms = jnp.stack([lf[n].norm for n in names])
      factors = jnp.stack([lf[n].factor for n in names])
      return (optax.apply_updates(params, updates), opt), (loss, norms, factors)

    def record(carry, idxs):
      carry, (loss, norms, factors) = jax.lax.scan(step, carry, idxs)
      dist = jnp.stack([jnp.linalg.norm(carry[0][n]["kernel"] - init_kernels[n])
                        / jnp.linalg.norm(init_kernels[n]) for n in names])
      return carry, (loss.mean(), norms[0], factors[0], dist)

    idxs = order.reshape(-1, setup.record_every, setup.batch)
    (params, opt), recs = jax.lax.scan(record, (params, opt), idxs)
    return params, opt, recs

  return run


def test_error(setup, params, test_x, test_y):
  return jnp.mean(jnp.argmax(forward(setup, params, test_x), -1) != test_y)


def load_fashion_mnist(n_train: int | None = None, n_test: int | None = None):
  """Fashion-MNIST as float32 ``(N, 784)`` in [0, 1) (Caffe's ``x / 256``) and int labels,
  the first ``n_train``/``n_test`` examples, read with the harness's checked reader."""
  dataset = data.load_dataset("fashion_mnist")
  train_x = data.preprocess(dataset.train_images[:n_train]).reshape(-1, 784)
  test_x = data.preprocess(dataset.test_images[:n_test]).reshape(-1, 784)
  return train_x, dataset.train_labels[:n_train], test_x, dataset.test_labels[:n_test]


def run_method(setup: Setup, method: str, lrs: list[float], seeds: int, arrays):
  """All learning rates x seeds of one method, vmapped; returns numpy histories."""
  train_x, train_y, test_x, test_y = (jnp.asarray(a) for a in arrays)
  params0 = jax.tree.map(lambda *a: np.stack(a), *[init_params(setup, s) for s in range(seeds)])
  # The harness's minibatch order; seeds offset so they differ from the LeNet runs'.
  orders = np.stack([train.make_order(10_000 + s, len(train_y), setup.iters,
                                                 setup.batch)
                     for s in range(seeds)])
  lr_arr = jnp.asarray(lrs, jnp.float32)
  tx0 = optimizers.make_optimizer(method, 0.0)
  kernels0 = {n: params0[n]["kernel"] for n in layer_names(setup)}
  # Leading axes: (lr, seed).
  tile = lambda a: jnp.broadcast_to(a, (len(lrs),) + a.shape)
  params = jax.tree.map(tile, params0)
  opt = jax.vmap(jax.vmap(tx0.init))(params)

  run = make_chunk(setup, method, train_x, train_y)
  chunk = jax.jit(jax.vmap(jax.vmap(run, (0, 0, 0, 0, None)), (0, 0, None, None, 0)),
                  donate_argnums=(0, 1))
  err_fn = jax.jit(jax.vmap(jax.vmap(lambda p: test_error(setup, p, test_x, test_y))))
  recs, errors = [], [np.asarray(err_fn(params))]
  for start in range(0, setup.iters, setup.eval_every):
    order = jnp.asarray(orders[:, start:start + setup.eval_every])
    params, opt, rec = chunk(params, opt, kernels0, order, lr_arr)
    recs.append(jax.device_get(rec))
    errors.append(np.asarray(err_fn(params)))
  loss, norms, factors, dist = (np.concatenate(parts, axis=2) for parts in zip(*recs))
  return {"train_loss": loss, "grad_norm": norms, "factor": factors, "distance": dist,
          "test_error": np.stack(errors, axis=-1)}  # (lr, seed, time[, layer])


def window_mean(x: np.ndarray, frac: float = 0.1) -> np.ndarray:
  """Mean over the last ``frac`` of the time axis (axis 2)."""
  k = max(1, int(round(x.shape[2] * frac)))
  return x[:, :, -k:].mean(2)


def early_checkpoint(setup: Setup) -> int:
  """Index of the record at ~5% of training, where the layer profile is tabulated early."""
  return max(0, setup.iters // setup.record_every // 20 - 1)


def summary_heading(setup: Setup, seeds: int) -> tuple[str, list[str]]:
  """The summary table's caption and column names. The norm is written ``‖g‖``: a ``|``
  would end a Markdown table cell."""
  fill = "Xavier fill" if setup.init_gain == 1 else (
      f"Xavier fill x {setup.init_gain:g} (`--init-gain {setup.init_gain:g}`)")
  caption = (f"MLP 784-{setup.width}x{setup.depth}-10, {setup.activation}, {fill}, batch "
             f"{setup.batch}, momentum 0.9, {setup.iters} iterations, {seeds} seeds "
             "(mean ± std). ‖g‖: geometric mean over seeds and training.")
  t_early = (early_checkpoint(setup) + 1) * setup.record_every
  header = ["run", "‖g‖ layer 1", f"‖g‖ layer {setup.depth + 1}",
            f"layer-1 distance @ {t_early}", f"layer-1 distance @ {setup.iters}",
            f"distance layer 1 / layer {setup.depth}", "train loss (last 10%)", "test error %"]
  return caption, header


def analyse(setup: Setup, runs: dict, seeds: int):
  names = layer_names(setup)
  # Checkpoints at which the layer profile is tabulated: ~5% and 100% of training.
  early = early_checkpoint(setup)
  out = {"layers": names, "runs": {}}
  rows_profile, rows_summary = [], []
  for label, r in runs.items():
    f = r["factor"]
    geo_norm = 10 ** np.log10(r["grad_norm"][0]).mean((0, 1))  # geometric mean, seeds x time
    out["runs"][label] = {
        "grad_norm_mean_over_seeds": r["grad_norm"][0].mean(0),
        "factor_mean_over_seeds": f[0].mean(0),
        "distance_mean_over_seeds": r["distance"][0].mean(0),
        "distance_std_over_seeds": report.mean_std(r["distance"][0])[1],
        "train_loss_mean_over_seeds": r["train_loss"][0].mean(0),
        "test_error_per_seed": r["test_error"][0],
        "final_distance_per_seed": r["distance"][0, :, -1],
    }
    d_early = r["distance"][0, :, early]
    d_final = r["distance"][0, :, -1]
    ratio_final = d_final[:, 0] / d_final[:, -2]  # first hidden / last hidden layer
    fac_mean = f[0].mean((0, 1))  # over seeds and time
    rows_profile.append([label] + [f"{stats.fmt(fac_mean[i], 3)} / "
                                   f"{stats.fmt(d_final[:, i].mean(), 2)}"
                                   for i in range(len(names))])
    err = r["test_error"][0, :, -1]
    m_err, s_err = report.mean_std(err)
    m_ratio, s_ratio = report.mean_std(ratio_final)
    rows_summary.append([
        label, stats.fmt(geo_norm[0], 2), stats.fmt(geo_norm[-1], 2),
        f"{stats.fmt(d_early[:, 0].mean(), 2)}", f"{stats.fmt(d_final[:, 0].mean(), 2)}",
        f"{stats.fmt(m_ratio, 3)} ± {stats.fmt(s_ratio, 2)}" if seeds > 1
        else stats.fmt(m_ratio, 3),
        f"{stats.fmt(window_mean(r['train_loss'])[0].mean(), 3)}",
        f"{100 * m_err:.2f} ± {100 * s_err:.2f}"])
    out["runs"][label]["summary"] = {
        "distance_first_layer_early": d_early[:, 0], "distance_first_layer_final": d_final[:, 0],
        "first_over_last_hidden_distance_final": ratio_final, "test_error_final": err}

  base, lay = next(k for k in runs if k.startswith("sgd @")), next(
      k for k in runs if k.startswith("sgd+layer"))
  diff = runs[base]["test_error"][0, :, -1] - runs[lay]["test_error"][0, :, -1]
  out["paired_test_error_base_minus_layer"] = diff
  caption, header = summary_heading(setup, seeds)
  table = "\n\n".join([
      caption,
      stats.md_table(header, rows_summary),
      "Per layer (input first): mean factor over training / relative distance from init "
      f"at {setup.iters} (mean over seeds):",
      stats.md_table(["run"] + names, rows_profile),
      f"Paired test-error difference {base} minus {lay} (percentage points, per seed): "
      + ", ".join(f"{100 * d:+.2f}" for d in diff)
      + f"; mean {100 * diff.mean():+.2f}.",
  ])
  return out, table


def plot(out_dir: Path, setup: Setup, runs: dict, results: dict):
  plt = report.pyplot()
  names = layer_names(setup)
  t = setup.record_every * np.arange(setup.iters // setup.record_every)
  cmap = plt.get_cmap("viridis")
  colors = [cmap(i / max(1, len(names) - 1)) for i in range(len(names))]
  labels = list(runs)
  fig, axes = plt.subplots(3, len(labels), figsize=(4.2 * len(labels), 10), sharey="row",
                           squeeze=False)
  for j, label in enumerate(labels):
    r = results["runs"][label]
    for i, name in enumerate(names):
      kw = dict(color=colors[i], lw=1, label=name if j == 0 else None)
      axes[0, j].plot(t, r["grad_norm_mean_over_seeds"][:, i], **kw)
      axes[1, j].plot(t, r["factor_mean_over_seeds"][:, i], **kw)
      axes[2, j].plot(t + setup.record_every, r["distance_mean_over_seeds"][:, i], **kw)
    axes[0, j].set(title=label, yscale="log")
    axes[2, j].set(xlabel="iteration", yscale="log")
  axes[0, 0].set(ylabel="||g_l|| (mean over seeds)")
  axes[1, 0].set(ylabel="1 + log(1 + 1/||g_l||)\n(base: what it would be)")
  axes[2, 0].set(ylabel="||W_l - W_l(0)|| / ||W_l(0)||")
  axes[0, 0].legend(fontsize=6, ncol=2)
  for ax in axes.flat:
    ax.grid(alpha=0.3)
  report.save_figure(fig, out_dir / "layers_over_time.png", dpi=110)

  fig, axes = plt.subplots(1, 3, figsize=(15, 4))
  x = np.arange(1, len(names) + 1)
  for label in labels:
    r = results["runs"][label]
    d = r["distance_mean_over_seeds"][-1]
    sd = r["distance_std_over_seeds"][-1] if np.ndim(r["distance_std_over_seeds"]) else 0
    axes[0].errorbar(x, d, yerr=sd, marker="o", capsize=2, label=label)
    axes[1].plot(t, r["train_loss_mean_over_seeds"], label=label)
    err = np.asarray(r["test_error_per_seed"])
    te = setup.eval_every * np.arange(err.shape[-1])
    axes[2].plot(te, 100 * err.mean(0), marker=".", label=label)
  axes[0].set(xlabel="layer (1 = input side)", ylabel="distance from init at the end",
              yscale="log", title="how far each layer moved (mean ± std over seeds)")
  axes[1].set(xlabel="iteration", ylabel="training loss (minibatch, mean over seeds)")
  axes[2].set(xlabel="iteration", ylabel="test error % (mean over seeds)")
  for ax in axes:
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  report.save_figure(fig, out_dir / "summary.png", dpi=110)


@cli.reports_errors
def main(argv=None, arrays=None):
  parser = options.study_parser(__doc__, seeds=5, iters=3000, name="vanishing")
  parser.add_argument("--depth", type=cli.positive_int, default=10, help="hidden layers")
  parser.add_argument("--width", type=cli.positive_int, default=128)
  parser.add_argument("--activation", choices=sorted(ACTIVATIONS), default="sigmoid")
  parser.add_argument("--init-gain", type=float, default=1.0,
                      help="multiplies the Xavier bound of every kernel")
  parser.add_argument("--lr", type=float, default=0.01)
  parser.add_argument("--baseline-lrs", type=cli.floats, default=[0.1],
                      help="extra learning rates for plain sgd")
  parser.add_argument("--record-every", type=cli.positive_int, default=20)
  parser.add_argument("--eval-every", type=cli.positive_int, default=500)
  parser.add_argument("--n-train", type=cli.positive_int, default=None,
                      help="use the first N training images")
  parser.add_argument("--n-test", type=cli.positive_int, default=None)
  args = parser.parse_args(argv)
  if args.iters % args.eval_every or args.eval_every % args.record_every:
    parser.error("--iters must be a multiple of --eval-every, and that of --record-every")
  cli.writable_folder(args.out)
  setup = Setup(args.depth, args.width, args.activation, 64, args.iters, args.record_every,
                args.eval_every, args.init_gain)
  elapsed = outputs.timer()
  if arrays is None:
    arrays = load_fashion_mnist(args.n_train, args.n_test)
  base = run_method(setup, "sgd", [args.lr] + args.baseline_lrs, args.seeds, arrays)
  layer = run_method(setup, "sgd+layer", [args.lr], args.seeds, arrays)
  runs = {f"sgd @ {lr:g}": {k: v[i:i + 1] for k, v in base.items()}
          for i, lr in enumerate([args.lr] + args.baseline_lrs)}
  runs = {f"sgd @ {args.lr:g}": runs.pop(f"sgd @ {args.lr:g}"),
          f"sgd+layer @ {args.lr:g}": layer, **runs}
  results, table = analyse(setup, runs, args.seeds)
  results.update(setup=dataclasses.asdict(setup), seeds=args.seeds, lr=args.lr,
                 baseline_lrs=args.baseline_lrs, n_train=len(arrays[1]), n_test=len(arrays[3]))
  outputs.finish("vanishing", args, argv, results, table, elapsed,
                lambda: plot(args.out, setup, runs, results))
  return results, runs


if __name__ == "__main__":
  main()
