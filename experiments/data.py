"""The datasets: a registry, checked readers (IDX for MNIST/Fashion-MNIST, CIFAR-10 binary
and python; the Shakespeare corpora in :mod:`experiments.shakespeare`) and checked downloads.

:data:`DATASETS` maps each name a command takes (``--dataset``) to its :class:`Source`:
``fashion_mnist``, ``mnist``, ``cifar10``, ``generated`` (small learnable images made in
memory, for tests and demos), ``shakespeare`` (the plays), ``tiny_shakespeare`` and
``teacher`` (a linear teacher for regression, made in memory). Adding a
dataset is one entry there; :func:`load_dataset` reads any of them.

Every reader checks what it reads and raises :class:`~experiments.cli.InputError` (a
``ValueError``) naming the file, the problem and what to do:

* IDX (LeCun et al.): a big-endian header ``0x00 0x00 <type 0x08 = uint8> <ndim>`` followed by
  ``ndim`` uint32 sizes and the data; images have magic 2051 (``0x00000803``, 3 dims), labels
  2049 (``0x00000801``, 1 dim). The file must be exactly header + prod(sizes) bytes, and the
  count must be the one the split should have. ``.gz`` files are read through gzip.
* CIFAR-10 binary: records of 1 label byte + 3072 pixel bytes (3x32x32, channel-major),
  10,000 records per batch file, labels < 10.
* CIFAR-10 python: pickled dicts with ``data`` (10000 x 3072 uint8) and ``labels``. They are
  unpickled with a restricted unpickler that only builds numpy arrays, never arbitrary objects.

Downloads (each :data:`DATASETS` entry's ``remote``): each file is checked against a published
or measured checksum before it is renamed into place. MNIST's gzipped files and the CIFAR-10
python archive carry the MD5 sums their publishers (and torchvision) list; Fashion-MNIST
carries the sha256 of the *uncompressed* IDX content (hashed from Debian's ``dataset-fashion-
mnist``, whose re-gzipped archives differ byte-wise from Zalando's but hold the same bytes),
which the reader also checks on every load of the full files. :func:`download` streams a URL
to a temporary file in the target folder, verifies it and only then renames it
(``os.replace``, atomic on POSIX); the CIFAR-10 archive is extracted into a temporary folder
renamed into place the same way. A failed or corrupt download leaves no file under the final
name and raises :class:`InputError`.

References:
  LeCun, Cortes, Burges, "The MNIST database", http://yann.lecun.com/exdb/mnist/ (IDX format).
  Xiao, Rasul, Vollgraf, "Fashion-MNIST", arXiv:1708.07747.
  Krizhevsky, "Learning Multiple Layers of Features from Tiny Images", 2009 (CIFAR-10).
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import io
import os
import pickle
import shutil
import struct
import tarfile
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from . import files
from .cli import InputError

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")

CONTENT_SHA256 = {
    # Fashion-MNIST (Xiao et al., 2017): sha256 of the gunzipped IDX files.
    "fashion_mnist/train-images-idx3-ubyte":
        "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "fashion_mnist/train-labels-idx1-ubyte":
        "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "fashion_mnist/t10k-images-idx3-ubyte":
        "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "fashion_mnist/t10k-labels-idx1-ubyte":
        "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}

IDX_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", 60000),
             "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", 10000)}
IMAGE_MAGIC, LABEL_MAGIC = 2051, 2049
CIFAR_RECORD = 1 + 3 * 32 * 32
CIFAR_PER_FILE = 10000
CIFAR_FOLDER = "cifar-10-batches-py"


class Remote(NamedTuple):
  """A downloadable file: its URL and checksum (``hashlib`` algorithm, hex digest), taken of
  the gunzipped content where ``of_content``."""

  url: str
  algorithm: str
  digest: str
  of_content: bool = False


class Dataset(NamedTuple):
  """uint8 NHWC images and int32 labels of both splits."""

  train_images: np.ndarray
  train_labels: np.ndarray
  test_images: np.ndarray
  test_labels: np.ndarray
  num_classes: int


def _read_maybe_gzip(path: Path) -> bytes:
  raw = Path(path).read_bytes()
  if raw[:2] == b"\x1f\x8b":
    try:
      return gzip.decompress(raw)
    except (OSError, EOFError) as e:
      raise InputError(f"{path}: corrupt or truncated gzip file ({e}); fetch it again") from None
  return raw


def check_digest(data: bytes, expected: str | None, what: str, algorithm: str = "sha256",
                 fix: str = "the file is corrupt or not the published one; fetch it again") -> None:
  """Raises :class:`InputError` unless ``data`` hashes to ``expected`` (``None``: no check)."""
  if expected is None:
    return
  got = hashlib.new(algorithm, data).hexdigest()
  if got != expected:
    raise InputError(f"{what}: {algorithm} mismatch: got {got}, expected {expected}; {fix}")


def parse_idx(data: bytes, what: str, magic: int, count: int | None = None,
              shape: tuple[int, ...] | None = None) -> np.ndarray:
  """Parses IDX bytes; checks magic, count, item shape and the exact length."""
  if len(data) < 4:
    raise InputError(f"{what}: truncated: {len(data)} bytes, no IDX header")
  got_magic = struct.unpack(">I", data[:4])[0]
  if got_magic != magic:
    raise InputError(f"{what}: wrong magic number {got_magic:#010x}, expected {magic:#010x}")
  ndim = data[3]
  header = 4 + 4 * ndim
  if len(data) < header:
    raise InputError(f"{what}: truncated header ({len(data)} bytes)")
  dims = struct.unpack(f">{ndim}I", data[4:header])
  size = int(np.prod(dims, dtype=np.int64))
  if len(data) != header + size:
    kind = "truncated" if len(data) < header + size else "has trailing bytes"
    raise InputError(f"{what}: {kind}: {len(data)} bytes, expected {header + size} for "
                     f"shape {dims}")
  if count is not None and dims[0] != count:
    raise InputError(f"{what}: wrong count {dims[0]}, expected {count} (--split-sizes "
                     "TRAIN,TEST gives the sizes of smaller files)")
  if shape is not None and tuple(dims[1:]) != tuple(shape):
    raise InputError(f"{what}: wrong item shape {tuple(dims[1:])}, expected {shape}")
  return np.frombuffer(data, np.uint8, offset=header).reshape(dims)


def _find(folder: Path, stem: str) -> Path:
  for name in (stem + ".gz", stem):
    if (folder / name).exists():
      return folder / name
  raise InputError(f"{folder}: neither {stem}.gz nor {stem} found")


def read_idx_split(folder: Path, split: str, key: str | None = None,
                   count: int | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Images (N, 28, 28, 1) and labels (N,) of ``split`` from an MNIST-format folder.

  ``key`` (e.g. 'fashion_mnist') selects the known content hashes; ``count`` overrides the
  split's standard size (60,000 / 10,000), e.g. for small generated files.
  """
  images_stem, labels_stem, n = IDX_FILES[split]
  n = n if count is None else count
  out = []
  for stem, magic, shape in ((images_stem, IMAGE_MAGIC, (28, 28)), (labels_stem, LABEL_MAGIC, ())):
    path = _find(Path(folder), stem)
    data = _read_maybe_gzip(path)
    if key is not None:
      check_digest(data, CONTENT_SHA256.get(f"{key}/{stem}"), str(path))
    out.append(parse_idx(data, str(path), magic, n, shape))
  images, labels = out
  if labels.size and labels.max() >= 10:
    raise InputError(f"{folder}: label {labels.max()} out of range [0, 10)")
  return images[..., None], labels.astype(np.int32)


def parse_cifar10_binary(data: bytes, what: str,
                         count: int = CIFAR_PER_FILE) -> tuple[np.ndarray, np.ndarray]:
  """One CIFAR-10 binary batch: (count, 32, 32, 3) uint8 images and labels."""
  if len(data) != count * CIFAR_RECORD:
    kind = "truncated" if len(data) < count * CIFAR_RECORD else "wrong size"
    raise InputError(f"{what}: {kind}: {len(data)} bytes, expected {count} records of "
                     f"{CIFAR_RECORD} bytes ({count * CIFAR_RECORD})")
  rec = np.frombuffer(data, np.uint8).reshape(count, CIFAR_RECORD)
  labels = rec[:, 0].astype(np.int32)
  if labels.max() >= 10:
    raise InputError(f"{what}: label {labels.max()} out of range [0, 10)")
  return rec[:, 1:].reshape(count, 3, 32, 32).transpose(0, 2, 3, 1), labels


class _ArrayUnpickler(pickle.Unpickler):
  """Builds only numpy arrays and builtin containers."""

  _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray",
                                                           "_reconstruct"),
              ("numpy", "ndarray"), ("numpy", "dtype"), ("builtins", "list")}

  def find_class(self, module, name):
    if (module, name) in self._ALLOWED:
      return super().find_class(module, name)
    raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR batch")


def parse_cifar10_python(data: bytes, what: str,
                         count: int = CIFAR_PER_FILE) -> tuple[np.ndarray, np.ndarray]:
  """One CIFAR-10 python batch (a pickled dict with ``data`` and ``labels``)."""
  try:
    d = _ArrayUnpickler(io.BytesIO(data), encoding="bytes").load()
  except (pickle.UnpicklingError, EOFError, ValueError) as e:
    raise InputError(f"{what}: not a readable CIFAR-10 python batch ({e})") from None
  if not isinstance(d, dict) or b"data" not in d or b"labels" not in d:
    raise InputError(f"{what}: missing 'data' or 'labels'")
  x, y = np.asarray(d[b"data"]), np.asarray(d[b"labels"], np.int32)
  if x.dtype != np.uint8 or x.shape != (count, 3072):
    raise InputError(f"{what}: wrong data shape {x.shape} ({x.dtype}), expected "
                     f"({count}, 3072) uint8")
  if y.shape != (count,):
    raise InputError(f"{what}: wrong count {y.shape[0]} labels, expected {count}")
  if y.max() >= 10 or y.min() < 0:
    raise InputError(f"{what}: label out of range [0, 10)")
  return x.reshape(count, 3, 32, 32).transpose(0, 2, 3, 1), y


def read_cifar10(folder: Path, count: int = CIFAR_PER_FILE) -> Dataset:
  """CIFAR-10 from an extracted ``cifar-10-batches-bin`` or ``cifar-10-batches-py`` folder."""
  folder = Path(folder)
  for sub in ("cifar-10-batches-bin", "cifar-10-batches-py"):
    if (folder / sub).is_dir():
      folder = folder / sub
  binary = (folder / "test_batch.bin").exists()
  parse, ext = (parse_cifar10_binary, ".bin") if binary else (parse_cifar10_python, "")
  if not (folder / f"test_batch{ext}").exists():
    raise InputError(f"{folder}: no CIFAR-10 test_batch(.bin); extract "
                     "cifar-10-binary.tar.gz or cifar-10-python.tar.gz there, or pass --download")
  def read(name):
    path = folder / name
    if not path.exists():
      raise InputError(f"{path}: missing; extract the whole CIFAR-10 archive there")
    return parse(path.read_bytes(), str(path), count)

  parts = [read(f"data_batch_{i}{ext}") for i in range(1, 6)]
  test = read(f"test_batch{ext}")
  return Dataset(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
                 test[0], test[1], 10)


def download(url: str, dest: Path, remote: Remote | None = None,
             opener=urllib.request.urlopen) -> Path:
  """Fetches ``url`` to ``dest`` atomically, verifying ``remote``'s checksum first.

  On any failure the temporary file is removed, ``dest`` is left as it was and (for a
  network or checksum failure) :class:`InputError` says so.
  """
  dest = Path(dest)
  dest.parent.mkdir(parents=True, exist_ok=True)
  with files.replacing(dest) as tmp:
    try:
      with open(tmp, "wb") as f, opener(url) as response:
        shutil.copyfileobj(response, f)
    except (urllib.error.URLError, OSError) as e:
      reason = getattr(e, "reason", None) or e
      raise InputError(f"could not fetch {url} ({reason}); check the network, or fetch the "
                       f"file by hand and pass --data-dir") from None
    if remote is not None:
      content = tmp.read_bytes()
      if remote.of_content:
        content = _read_maybe_gzip(tmp)
      check_digest(content, remote.digest, url, remote.algorithm,
                   "the download is corrupt or the file changed upstream; try again")
  return dest


def extract_folder(archive: Path, member: str, folder: Path) -> Path:
  """Extracts ``member`` (a folder) of a tar archive to ``folder/member``, atomically."""
  tmp = Path(tempfile.mkdtemp(prefix=member + ".", suffix=".part", dir=folder))
  try:
    try:
      with tarfile.open(archive) as tar:
        members = tar.getmembers()
        unsafe = [m.name for m in members if not (m.isfile() or m.isdir())
                  or m.name.startswith("/") or ".." in Path(m.name).parts]
        if unsafe:
          raise InputError(f"{archive}: refusing to extract {unsafe[0]!r} (a link or a path "
                           "outside the archive); delete it and download again")
        # Regular files and folders inside tmp only (and tarfile's own "data" filter where
        # this Python has it).
        safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        tar.extractall(tmp, members, **safe)
    except (tarfile.TarError, OSError, EOFError) as e:
      raise InputError(f"{archive}: unreadable archive ({e}); delete it and download "
                       "again") from None
    if not (tmp / member).is_dir():
      raise InputError(f"{archive}: holds no {member}/; delete it and download again")
    os.replace(tmp / member, folder / member)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return folder / member


def download_dataset(name: str, folder: Path, opener=urllib.request.urlopen) -> Path:
  """Downloads the missing files of ``name`` (its registry entry's ``remote``) into
  ``folder``; an archive whose entry names an ``extract`` folder is extracted there and then
  removed."""
  source = DATASETS[name]
  folder = Path(folder)
  extracted = source.extract is not None and (folder / source.extract).is_dir()
  for filename, remote in source.remote.items():
    if not (folder / filename).exists() and not extracted:
      download(remote.url, folder / filename, remote, opener)
  if source.extract is not None and not extracted:
    archive = folder / next(iter(source.remote))
    extract_folder(archive, source.extract, folder)
    archive.unlink()
  return folder


def preprocess(images: np.ndarray, mean_image: np.ndarray | None = None) -> np.ndarray:
  """Caffe's input transform: ``x / 256`` (MNIST protocol, ``scale: 0.00390625``), or
  ``x - mean_image`` (CIFAR-10, raw 0..255 pixels minus the training mean)."""
  if mean_image is None:
    return images.astype(np.float32) * np.float32(1 / 256)
  return images.astype(np.float32) - mean_image.astype(np.float32)


def _has_idx(folder: Path) -> bool:
  return any((folder / (IDX_FILES["test"][0] + ext)).exists() for ext in (".gz", ""))


def _has_cifar10(folder: Path) -> bool:
  return any((folder / sub / "test_batch").exists() or (folder / sub / "test_batch.bin").exists()
             for sub in (".", CIFAR_FOLDER, "cifar-10-batches-bin"))


def read_idx(folder: Path, sizes: tuple[int, int] | None, key: str | None) -> Dataset:
  """Both splits of an MNIST-format folder; the content hashes of ``key`` are checked for
  the full files (``sizes`` None), which only they match."""
  n_train, n_test = sizes or (None, None)
  key = key if sizes is None else None
  train = read_idx_split(folder, "train", key, n_train)
  test = read_idx_split(folder, "test", key, n_test)
  return Dataset(train[0], train[1], test[0], test[1], 10)


def generated_images(sizes: tuple[int, int] | None = None, seed: int = 0) -> Dataset:
  """MNIST-shaped images a few steps of training can learn (a class-dependent bright square
  on dark noise), ``sizes`` = (train, test) of them (default 64, 20); no files."""
  n_train, n_test = sizes or (64, 20)
  rng = np.random.default_rng(seed)
  y = rng.integers(0, 10, n_train + n_test).astype(np.int32)
  x = rng.integers(0, 60, (n_train + n_test, 28, 28, 1), dtype=np.uint8)
  for i, c in enumerate(y):
    x[i, 2 * c:2 * c + 8, 4:12] = 250
  return Dataset(x[:n_train], y[:n_train], x[n_train:], y[n_train:], 10)



class Teacher(NamedTuple):
  """A linear teacher ``y = A x``: inputs are drawn fresh (``x ~ N(0, I)``), so the data is
  the matrix ``A`` alone."""

  matrix: np.ndarray  # (width, width) float32


def teacher(width: int = 16, rank: int = 4, seed: int = 0) -> Teacher:
  """A rank-``rank`` teacher ``A = U V^T`` (orthonormal ``U``, ``V``: ``rank`` unit singular
  values, ``||A||_F^2 = rank``), from a QR factor of a Gaussian matrix."""
  if 2 * rank > width:
    raise InputError(f"a teacher of rank {rank} needs a width of at least {2 * rank} (its two "
                     f"factors), not {width}")
  q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((width, width)))
  return Teacher((q[:, :rank] @ q[:, rank:2 * rank].T).astype(np.float32))

def _read_idx(folder, sizes, download, key):
  del download
  return read_idx(folder, sizes, key)


def _read_cifar10(folder, sizes, download):
  del download
  return read_cifar10(folder, sizes[1] if sizes else CIFAR_PER_FILE)


def _read_generated(folder, sizes, download):
  del folder, download
  return generated_images(sizes)


def _read_plays(folder, sizes, download):
  del sizes
  from experiments import shakespeare
  return shakespeare.load("plays", folder, download)


def _read_tiny(folder, sizes, download):
  del sizes
  from experiments import shakespeare
  return shakespeare.load("tiny", folder, download)



def _read_teacher(folder, sizes, download):
  del folder, sizes, download
  return teacher()

def _anywhere(folder: Path) -> bool:
  del folder
  return True


class Source(NamedTuple):
  """One dataset of :data:`DATASETS`.

  ``kind``: ``"images"`` (``read`` gives a :class:`Dataset`), ``"text"`` (a
  :class:`experiments.shakespeare.CharData`) or ``"teacher"`` (a :class:`Teacher`).
  ``read(folder, sizes, download)``: the data in ``folder``; ``sizes`` = (train, test)
  counts of smaller files in the same format (tests), ``None`` for the published sizes.
  ``present(folder)``: whether the files are there (else :func:`load_dataset` downloads
  ``remote`` with ``--download`` or says ``help``). ``extract``: the folder a downloaded
  archive holds. ``folder``: a system-wide copy read when no ``--data-dir`` is given and it
  is installed (else ``data/<name>``).
  """

  kind: str
  read: Callable[[Path, tuple[int, int] | None, bool], Any]
  present: Callable[[Path], bool]
  help: str
  remote: dict[str, Remote]
  extract: str | None = None
  folder: Path | None = None


_MNIST = "https://ossci-datasets.s3.amazonaws.com/mnist/"
_FASHION = "https://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
# Dataset -> {file name in its folder: Remote}.
_REMOTE = {
    "mnist": {
        "train-images-idx3-ubyte.gz": Remote(_MNIST + "train-images-idx3-ubyte.gz", "md5",
                                             "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
        "train-labels-idx1-ubyte.gz": Remote(_MNIST + "train-labels-idx1-ubyte.gz", "md5",
                                             "d53e105ee54ea40749a09fcbcd1e9432"),
        "t10k-images-idx3-ubyte.gz": Remote(_MNIST + "t10k-images-idx3-ubyte.gz", "md5",
                                            "9fb629c4189551a2d022fa330f9573f3"),
        "t10k-labels-idx1-ubyte.gz": Remote(_MNIST + "t10k-labels-idx1-ubyte.gz", "md5",
                                            "ec29112dd5afa0611ce80d1b7f02629c"),
    },
    "fashion_mnist": {
        f"{stem}.gz": Remote(f"{_FASHION}{stem}.gz", "sha256",
                             CONTENT_SHA256[f"fashion_mnist/{stem}"], of_content=True)
        for stem in (name for split in IDX_FILES.values() for name in split[:2])
    },
    "cifar10": {
        "cifar-10-python.tar.gz": Remote("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                                         "md5", "c58f30108f718f92721af3b95e74349a"),
    },
}



# Dataset name -> its source. One entry adds a dataset to every command that takes --dataset.
DATASETS: dict[str, Source] = {
    "fashion_mnist": Source(
        "images", functools.partial(_read_idx, key="fashion_mnist"), _has_idx,
        "Fashion-MNIST not found. On Debian/Ubuntu: `sudo apt-get install "
        "dataset-fashion-mnist` (files in /usr/share/datasets/fashion-mnist); or pass "
        "--download (needs a network) or --data-dir with the four *-ubyte.gz files from "
        "https://github.com/zalandoresearch/fashion-mnist.",
        _REMOTE["fashion_mnist"], folder=DEBIAN_FASHION_MNIST),
    "mnist": Source(
        "images", functools.partial(_read_idx, key="mnist"), _has_idx,
        "MNIST not found: pass --data-dir with the four *-ubyte(.gz) files, or --download "
        "(needs a network).", _REMOTE["mnist"]),
    "cifar10": Source(
        "images", _read_cifar10, _has_cifar10,
        "CIFAR-10 not found: pass --download (needs a network) or --data-dir with the "
        "extracted cifar-10-batches-bin or cifar-10-batches-py folder "
        "(https://www.cs.toronto.edu/~kriz/cifar.html).", _REMOTE["cifar10"],
        extract=CIFAR_FOLDER),
    "generated": Source("images", _read_generated, _anywhere, "", {}),
    "shakespeare": Source("text", _read_plays, _anywhere, "", {}),
    "tiny_shakespeare": Source("text", _read_tiny, _anywhere, "", {}),
    "teacher": Source("teacher", _read_teacher, _anywhere, "", {}),
}


def default_folder(name: str) -> Path:
  """Where ``name`` is read without ``--data-dir``: its system-wide copy (Debian's
  Fashion-MNIST package) where it is installed, else ``data/NAME`` (where ``--download``
  writes; ``data/shakespeare`` for both corpora)."""
  source = DATASETS[name]
  if source.folder is not None and source.present(source.folder):
    return source.folder
  return Path("data") / ("shakespeare" if source.kind == "text" else name)


def load_dataset(name: str, data_dir: str | Path | None = None, download_missing: bool = False,
                 count: tuple[int, int] | None = None) -> Any:
  """Loads ``name`` (a key of :data:`DATASETS`) with all checks.

  ``data_dir`` defaults to :func:`default_folder`. ``count`` = (train, test) sizes for small
  generated files (tests); for CIFAR-10 every batch file then holds ``count[1]`` records.
  Missing files are downloaded with ``download_missing``; otherwise, and for every problem
  with the files, :class:`InputError` says what to do.
  """
  if name not in DATASETS:
    raise InputError(f"unknown dataset {name!r}; use {', '.join(DATASETS)}")
  source = DATASETS[name]
  folder = Path(data_dir) if data_dir else default_folder(name)
  try:
    if not source.present(folder):
      if not download_missing:
        raise InputError(source.help + (f" (looked in {folder})" if data_dir else ""))
      download_dataset(name, folder)
    return source.read(folder, count, download_missing)
  except OSError as e:
    raise InputError(f"{folder}: cannot read or write there ({e.strerror or e}); pass "
                     "another --data-dir") from None


class ImageData(NamedTuple):
  """Preprocessed float32 NHWC images and int32 labels of three splits."""

  train_x: np.ndarray
  train_y: np.ndarray
  val_x: np.ndarray
  val_y: np.ndarray
  test_x: np.ndarray
  test_y: np.ndarray


def held_out(dataset: Dataset, val_size: int, mean_image: bool = False) -> ImageData:
  """``dataset`` preprocessed (:func:`preprocess`: ``x / 256``, or with ``mean_image`` minus
  the training images' mean) with its last ``val_size`` training images as the validation
  split (the same for every seed and method; none for ``val_size`` 0)."""
  n_train = dataset.train_images.shape[0] - val_size
  if n_train < 1:
    raise InputError(f"--val-size {val_size} leaves no training images of "
                     f"{dataset.train_images.shape[0]}; pass a smaller --val-size")
  mean = dataset.train_images[:n_train].mean(0) if mean_image else None
  scaled = preprocess(dataset.train_images, mean)
  return ImageData(scaled[:n_train], dataset.train_labels[:n_train], scaled[n_train:],
                   dataset.train_labels[n_train:], preprocess(dataset.test_images, mean),
                   dataset.test_labels)


def load_held_out(name: str, data_dir: str | Path | None, sizes: tuple[int, int] | None,
                  val_size: int, mean_image: bool = False) -> ImageData:
  """:func:`load_dataset` then :func:`held_out` (picklable as a ``functools.partial``)."""
  return held_out(load_dataset(name, data_dir, False, sizes), val_size, mean_image)
