"""Multi-device checks on 8 simulated CPU devices, run by ``tests/test_sharding.py``, and
those marked ``across_processes`` on 2 processes of 4 devices, run by
``tests/test_multiprocess.py``.

The device count is fixed when jax starts, so ``test_sharding.py`` runs this module in a
subprocess with ``XLA_FLAGS=--xla_force_host_platform_device_count=8``. By hand::

  XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu \
    python -m pytest -q tests/_multidevice_checks.py

With ``MULTIDEVICE_PROCESSES=2``, ``MULTIDEVICE_PROCESS_ID=I`` and
``MULTIDEVICE_COORDINATOR=127.0.0.1:PORT`` this module joins JAX's multi-controller runtime
as process I, with 4 local devices (gloo collectives); ``test_multiprocess.py`` runs it so
in two processes, ``-m across_processes``: the same tests in the same order, so their
collectives meet. The meshes then alternate the processes' devices, so every split axis
spans both processes, and arrays are compared whole (gathered).

Every check compares with the same optimizer on one device and the whole arrays. The trees
are tiny and the cases few: each 8-device compilation costs about a second on a busy CPU.
"""

from __future__ import annotations

import functools
import os
import re

import jax
import numpy as np
import optax
import pytest
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import layerwise_optax as lo
from experiments import processes as launcher
from tests import commands, reference

if (processes := int(os.environ.get("MULTIDEVICE_PROCESSES", "1"))) > 1:  # before any backend
  jax.config.update("jax_num_cpu_devices", 8 // processes)
  host, _, port = os.environ["MULTIDEVICE_COORDINATOR"].rpartition(":")
  launcher.join(int(os.environ["MULTIDEVICE_PROCESS_ID"]), processes, (host, int(port)),
                int(commands.limit()))

pytestmark = pytest.mark.skipif(jax.device_count() < 8, reason="fewer than 8 devices")
across_processes = pytest.mark.across_processes

shard_map = getattr(jax, "shard_map", None)
if shard_map is None:  # older jax
  from jax.experimental.shard_map import shard_map

RTOL, ATOL = 2e-6, 1e-7
ALL = ("data", "model")  # FSDP: split over both axes of the 2 x 4 mesh
N_BLOCKS = 4  # stacked layers in 'blocks': the largest per-layer reduction result
GRAD_SEEDS = (1, 2)  # two steps, so the optimizer state is used

# Layouts over a ('data': 2, 'model': 4) mesh, by parameter.
LAYOUTS = {
    "fsdp": {"Dense_0": {"kernel": P(ALL), "bias": P(ALL)},
             "Dense_1": {"kernel": P(ALL), "bias": P(ALL)},
             "blocks": {"kernel": P(None, ALL)}},
    # Column-parallel Dense_0, row-parallel Dense_1 (its bias replicated), as in Megatron.
    "tp": {"Dense_0": {"kernel": P(None, "model"), "bias": P("model")},
           "Dense_1": {"kernel": P("model", None), "bias": P()},
           "blocks": {"kernel": P(None, None, "model")}},
    "dp": {"Dense_0": {"kernel": P(), "bias": P()},
           "Dense_1": {"kernel": P(), "bias": P()},
           "blocks": {"kernel": P()}},
}

OPTIMIZERS = {  # eq. 10 (factor before momentum) and eq. 12 (factor after AdaGrad)
    # A tree without the stacked 'blocks' takes stacked=None (an unmatched prefix raises).
    "sgd": lambda axis_name=None, stacked="blocks": lo.sgd(
        0.1, momentum=0.9, stacked=stacked, axis_name=axis_name),
    "adagrad": lambda axis_name=None, stacked="blocks": lo.adagrad(
        0.1, stacked=stacked, axis_name=axis_name),
}


def make_params(seed=0, blocks=True):
  rng = np.random.default_rng(seed)  # numpy: jax.random would compile for every shape
  normal = lambda *shape: rng.standard_normal(shape, dtype=np.float32)
  tree = {"Dense_0": {"kernel": normal(16, 32), "bias": normal(32)},
          "Dense_1": {"kernel": normal(32, 16), "bias": normal(16)},
          "blocks": {"kernel": normal(N_BLOCKS, 16, 16)}}
  if not blocks:
    del tree["blocks"]
  return tree


def make_grads(seed, blocks=True):
  # Small, unequal norms, so the factors (and a per-shard norm) differ visibly.
  scales = {"Dense_0": 0.05, "Dense_1": 0.5, "blocks": 0.01}
  return {name: jax.tree.map(lambda x, s=scales[name]: s * x, sub)
          for name, sub in make_params(seed, blocks).items()}


def opt_step(tx):
  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), updates, state
  return step


def run_steps(step, params, state, grads_seq):
  for g in grads_seq:
    # One step at a time: on XLA:CPU the simulated devices share a thread pool, where
    # collectives of overlapping steps have been seen to stall on a loaded machine.
    params, updates, state = jax.block_until_ready(step(params, state, g))
  return params, updates, state


@functools.cache
def one_device_run(opt, blocks=True):
  """(params, last updates) of the optimizer on one device, on the whole arrays."""
  tx = OPTIMIZERS[opt](stacked="blocks" if blocks else None)
  params = make_params(blocks=blocks)
  grads_seq = [make_grads(s, blocks) for s in GRAD_SEEDS]
  out = run_steps(jax.jit(opt_step(tx)), params, jax.jit(tx.init)(params), grads_seq)
  return jax.device_get(out[:2])


def numpy_norms(grads):
  """Whole-layer norms in float64: one per module, one per slice of the stacked 'blocks'."""
  norms = {}
  for name, sub in grads.items():
    sq = [np.square(np.asarray(x, np.float64)) for x in jax.tree.leaves(sub)]
    norms[name] = (np.sqrt(sq[0].sum(axis=(1, 2))) if name == "blocks"
                   else np.sqrt(sum(s.sum() for s in sq)))
  return norms


def mesh_devices():
  """The first 8 devices; with several processes, alternately each process's."""
  by_process: dict[int, list] = {}
  for device in jax.devices()[:8]:
    by_process.setdefault(device.process_index, []).append(device)
  return [device for group in zip(*by_process.values()) for device in group]


def host(tree):
  """numpy copies of the whole arrays, also of those spread over several processes."""
  return jax.tree.map(
      lambda x: multihost_utils.process_allgather(x, tiled=True)
      if isinstance(x, jax.Array) and not x.is_fully_addressable else np.asarray(x), tree)


def assert_trees_close(actual, expected, rtol=RTOL, atol=ATOL):
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=rtol, atol=atol),
               host(actual), host(expected))


def max_rel_diff(actual, expected):
  pairs = zip(jax.tree.leaves(host(actual)), jax.tree.leaves(host(expected)))
  return max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))) / np.max(np.abs(b)))
             for a, b in pairs)


def assert_sharding(array, sharding):
  assert array.sharding.is_equivalent_to(sharding, array.ndim), (array.sharding, sharding)


_COLLECTIVE = re.compile(
    r"=\s*(?P<shape>\S.*?)\s+(?P<op>all-reduce|all-gather|reduce-scatter|all-to-all"
    r"|ragged-all-to-all|collective-permute|collective-broadcast)(?:-start)?\(")


def collectives(hlo_text):
  """(op, largest result in elements) for each collective in compiled HLO text."""
  found = []
  for m in _COLLECTIVE.finditer(hlo_text):
    dims = re.findall(r"\[([\d,]*)\]", m.group("shape"))
    sizes = [int(np.prod([int(d) for d in s.split(",") if d])) for s in dims]
    found.append((m.group("op"), max(sizes, default=1)))
  return found


def test_collective_parser():
  text = ("%all-reduce.4 = (f32[], f32[4]{0}) all-reduce(%a, %b), channel_id=1\n"
          "%all-gather = f32[64,32]{1,0} all-gather(%c), dimensions={0}\n"
          "%ags = (f32[8]{0}, f32[64]{0}) all-gather-start(%d)\n"
          "%agd = f32[64]{0} all-gather-done(%ags)\n")
  assert collectives(text) == [("all-reduce", 4), ("all-gather", 2048), ("all-gather", 64)]


# --- jax.jit over NamedSharding: reductions are global, no axis_name --------------------

# Auto axes are Mesh(...)'s default, Explicit axes jax.make_mesh's (jax >= 0.7).
JIT_CASES = [pytest.param("fsdp", "sgd", AxisType.Auto, marks=across_processes),
             ("fsdp", "adagrad", AxisType.Auto),
             pytest.param("tp", "sgd", AxisType.Auto, marks=across_processes),
             pytest.param("tp", "adagrad", AxisType.Auto, marks=across_processes),
             ("dp", "sgd", AxisType.Auto), ("fsdp", "adagrad", AxisType.Explicit)]


@pytest.mark.parametrize("layout,opt,axis_type", JIT_CASES)
def test_jit_sharded_update(layout, opt, axis_type):
  """Same updates as one device, every sharding kept, only per-layer scalars all-reduced."""
  mesh = Mesh(np.array(mesh_devices()).reshape(2, 4), ALL, axis_types=(axis_type,) * 2)
  if jax.process_count() > 1:  # the 'model' axis (tensor parallel) spans the processes
    assert all(len({d.process_index for d in row}) > 1 for row in mesh.devices), mesh
  shardings = jax.tree.map(lambda s: NamedSharding(mesh, s), LAYOUTS[layout])
  params = jax.device_put(make_params(), shardings)
  grads_seq = [jax.device_put(make_grads(s), shardings) for s in GRAD_SEEDS]
  tx = OPTIMIZERS[opt]()
  with jax.set_mesh(mesh):
    state = tx.init(params)
    step = jax.jit(opt_step(tx)).lower(params, state, grads_seq[0]).compile()
    new_params, updates, new_state = run_steps(step, params, state, grads_seq)

  want_params, want_updates = one_device_run(opt)
  assert_trees_close(updates, want_updates)
  assert_trees_close(new_params, want_params)
  for out in (new_params, updates):
    jax.tree.map(assert_sharding, out, shardings)
  for new, old in zip(jax.tree.leaves(new_state), jax.tree.leaves(state)):
    if old.ndim:  # momentum / squared-gradient history shard like the parameters
      assert_sharding(new, old.sharding)

  found = collectives(step.as_text())
  if layout == "dp":
    assert found == [], found  # replicated parameters: no communication at all
  else:
    assert found, "expected the per-layer sums of squares to be all-reduced"
    assert {op for op, _ in found} == {"all-reduce"}, found  # no all-gather of parameters
    assert max(size for _, size in found) <= N_BLOCKS, found


def _mlp_loss(params, x, y):
  h = jax.numpy.tanh(x @ params["Dense_0"]["kernel"] + params["Dense_0"]["bias"])
  out = h @ params["Dense_1"]["kernel"] + params["Dense_1"]["bias"]
  return jax.numpy.mean(jax.numpy.square(out - y))


@pytest.mark.parametrize("layout", ["dp", "fsdp"])
def test_jit_train_step(layout):
  """Whole training steps, global batch of 64 split over 8 devices: same losses, params."""
  tx = lo.sgd(0.1, momentum=0.9)

  def train_step(params, state, x, y):
    loss, grads = jax.value_and_grad(_mlp_loss)(params, x, y)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state, loss

  rng = np.random.default_rng(7)
  batches = [tuple(rng.standard_normal((2, 64, 16), dtype=np.float32)) for _ in range(3)]

  def train(params, batches):
    state, losses = tx.init(params), []
    step = jax.jit(train_step).lower(params, state, *batches[0]).compile()
    for x, y in batches:
      params, state, loss = jax.block_until_ready(step(params, state, x, y))
      losses.append(loss)
    return params, np.asarray(losses), step

  params = make_params(blocks=False)
  want_params, want_losses, _ = train(params, batches)

  mesh = Mesh(np.array(jax.devices()[:8]), ("batch",), axis_types=(AxisType.Auto,))
  spec = P() if layout == "dp" else P("batch")
  shardings = jax.tree.map(lambda _: NamedSharding(mesh, spec), params)
  params = jax.device_put(params, shardings)
  batches = jax.device_put(batches, NamedSharding(mesh, P("batch")))
  got_params, got_losses, step = train(params, batches)

  np.testing.assert_allclose(got_losses, want_losses, rtol=RTOL)
  assert_trees_close(got_params, want_params)
  jax.tree.map(assert_sharding, got_params, shardings)
  if layout == "dp":  # the gradient mean is the only communication
    assert {op for op, _ in collectives(step.as_text())} == {"all-reduce"}


# --- shard_map: code sees local blocks, so norms need axis_name -------------------------

SHARD_MAP_MESHES = {  # name: (axis sizes, axis names, axis to split over = axis_name)
    "1d": ((8,), ("x",), "x"),
    "2d": ((2, 4), ALL, ALL),
}


def fsdp_specs(axis):
  return {"Dense_0": {"kernel": P(axis), "bias": P(axis)},
          "Dense_1": {"kernel": P(axis), "bias": P(axis)},
          "blocks": {"kernel": P(None, axis)}}


def state_specs(state, params, specs):
  """Specs of an optimizer state: a parameter-shaped leaf shards like its parameter."""
  by_shape = {p.shape: s for p, s in zip(jax.tree.leaves(params), jax.tree.leaves(specs))}
  return jax.tree.map(lambda x: by_shape[x.shape] if x.ndim else P(), state)


def shard_map_run(opt, mesh_kind, with_axis_name):
  """Two FSDP steps inside shard_map, every array split over the whole mesh."""
  sizes, names, axis = SHARD_MAP_MESHES[mesh_kind]
  mesh = Mesh(np.array(mesh_devices()).reshape(sizes), names,
              axis_types=(AxisType.Explicit,) * len(names))
  specs = fsdp_specs(axis)
  shardings = jax.tree.map(lambda s: NamedSharding(mesh, s), specs)
  params = jax.device_put(make_params(), shardings)
  grads_seq = [jax.device_put(make_grads(s), shardings) for s in GRAD_SEEDS]
  tx = OPTIMIZERS[opt](axis if with_axis_name else None)
  with jax.set_mesh(mesh):
    state = tx.init(params)
    st_specs = state_specs(state, params, specs)
    step = jax.jit(shard_map(opt_step(tx), mesh=mesh, in_specs=(specs, st_specs, specs),
                             out_specs=(specs, specs, st_specs)))
    return host(run_steps(step, params, state, grads_seq)[:2])


@across_processes
@pytest.mark.parametrize("opt,mesh_kind", [("sgd", "1d"), ("adagrad", "2d")])
def test_shard_map_with_axis_name(opt, mesh_kind):
  """With axis_name (a name or a tuple of names) the updates are the single-device ones."""
  assert_trees_close(shard_map_run(opt, mesh_kind, True), one_device_run(opt))


def test_shard_map_without_axis_name_differs():
  """Without axis_name each device scales by its own block's norm: a different result.

  Each block holds 1/8 of the layer, so its norm is about 1/sqrt(8) of the layer's and its
  factor larger; the blocks of one layer also get different factors.
  """
  _, got_updates = shard_map_run("sgd", "1d", False)
  assert max_rel_diff(got_updates, one_device_run("sgd")[1]) > 0.05
  # layer_factors without axis_name: device i reports the norms of its own blocks.
  norms = host(_shard_map_norms(None))
  grads = make_grads(GRAD_SEEDS[-1])
  for i in range(8):
    block = jax.tree.map(lambda x, i=i: np.split(x, 8, axis=1 if x.ndim == 3 else 0)[i], grads)
    assert_trees_close({k: v[i] for k, v in norms.items()}, numpy_norms(block), rtol=1e-5)


def _shard_map_norms(local_axis_name):
  mesh = Mesh(np.array(mesh_devices()), ("x",), axis_types=(AxisType.Explicit,))
  specs = fsdp_specs("x")
  grads = jax.device_put(make_grads(GRAD_SEEDS[-1]),
                         jax.tree.map(lambda s: NamedSharding(mesh, s), specs))

  def norms(g):
    factors = lo.layer_factors(g, stacked="blocks", axis_name=local_axis_name)
    out = {k: v.norm for k, v in factors.items()}
    return out if local_axis_name else jax.tree.map(lambda n: n[None], out)

  out_specs = P() if local_axis_name else P("x")
  with jax.set_mesh(mesh):
    return jax.jit(shard_map(norms, mesh=mesh, in_specs=(specs,), out_specs=out_specs))(grads)


@across_processes
def test_shard_map_layer_factors():
  """layer_factors with axis_name: whole-layer norms, the same on every device."""
  norms = host(_shard_map_norms("x"))
  assert_trees_close(norms, numpy_norms(make_grads(GRAD_SEEDS[-1])), rtol=1e-5)


def test_shard_map_replicated_params():
  """Replicated parameters and gradients (data parallel, after the gradient mean) need no
  axis_name inside shard_map; passing one sums identical copies: norms sqrt(8) too large.
  """
  params, grads = make_params(blocks=False), make_grads(1, blocks=False)
  want_norms = numpy_norms(grads)
  want_updates = {k: jax.tree.map(lambda g, k=k: -0.1 * reference.factor(want_norms[k]) * g,
                                  sub) for k, sub in grads.items()}
  mesh = jax.make_mesh((8,), ("batch",), axis_types=(AxisType.Explicit,))
  params, grads = jax.device_put((params, grads), NamedSharding(mesh, P()))

  def local(params, grads):
    out = []
    for axis_name in (None, "batch"):
      tx = lo.sgd(0.1, axis_name=axis_name)
      factors = lo.layer_factors(grads, axis_name=axis_name)
      out.append((tx.update(grads, tx.init(params))[0], {k: v.norm for k, v in factors.items()}))
    return out

  with jax.set_mesh(mesh):
    (updates, norms), (_, norms_psummed) = jax.jit(shard_map(
        local, mesh=mesh, in_specs=P(), out_specs=P()))(params, grads)
  assert_trees_close(updates, want_updates)
  assert_trees_close(norms, want_norms)
  assert_trees_close(norms_psummed, {k: n * np.sqrt(8) for k, n in want_norms.items()})


# --- pmap with sharded parameters: each device holds a slice of every array -------------

@pytest.mark.skipif(not hasattr(jax, "pmap"), reason="jax.pmap removed in this jax")
def test_pmap_sharded_params():
  """With axis_name the single-device updates; without it, different ones."""
  split = lambda t: jax.tree.map(lambda a: a.reshape((8, a.shape[0] // 8) + a.shape[1:]), t)
  merge = lambda t: jax.tree.map(lambda a: np.asarray(a).reshape((-1,) + a.shape[2:]), t)
  params = split(make_params(blocks=False))
  grads_seq = [split(make_grads(s, blocks=False)) for s in GRAD_SEEDS]
  want = one_device_run("sgd", blocks=False)
  for axis_name in ("i", None):
    tx = OPTIMIZERS["sgd"](axis_name, stacked=None)
    state = jax.tree.map(np.zeros_like, tx.init(params))  # momentum: zeros, split like params
    got = merge(run_steps(jax.pmap(opt_step(tx), axis_name="i"), params, state, grads_seq)[:2])
    if axis_name:
      assert_trees_close(got, want)
    else:
      assert max_rel_diff(got[1], want[1]) > 0.05
