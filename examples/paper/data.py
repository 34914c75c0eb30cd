"""Dataset readers (IDX for MNIST/Fashion-MNIST, CIFAR-10 binary and python), checked downloads.

Every reader checks what it reads and raises ``ValueError`` naming the problem:

* IDX (LeCun et al.): a big-endian header ``0x00 0x00 <type 0x08 = uint8> <ndim>`` followed by
  ``ndim`` uint32 sizes and the data; images have magic 2051 (``0x00000803``, 3 dims), labels
  2049 (``0x00000801``, 1 dim). The file must be exactly header + prod(sizes) bytes, and the
  count must be the one the split should have. ``.gz`` files are read through gzip.
* CIFAR-10 binary: records of 1 label byte + 3072 pixel bytes (3x32x32, channel-major),
  10,000 records per batch file, labels < 10.
* CIFAR-10 python: pickled dicts with ``data`` (10000 x 3072 uint8) and ``labels``. They are
  unpickled with a restricted unpickler that only builds numpy arrays, never arbitrary objects.

Checksums: :data:`CONTENT_SHA256` holds the sha256 of the *uncompressed* content of the files
we could verify here (Fashion-MNIST, hashed from Debian's ``dataset-fashion-mnist``, whose
re-gzipped archives differ byte-wise from Zalando's but hold the same IDX bytes). Content
hashes stay valid whatever compression a mirror uses. For other files a caller passes its own
``sha256=`` to :func:`download`; unknown files are read without a hash check.

:func:`download` streams a URL to a temporary file in the target folder, verifies its sha256
and only then renames it into place (``os.replace``, atomic on POSIX), so a failed or
corrupt download never leaves a partial file under the final name.

References:
  LeCun, Cortes, Burges, "The MNIST database", http://yann.lecun.com/exdb/mnist/ (IDX format).
  Xiao, Rasul, Vollgraf, "Fashion-MNIST", arXiv:1708.07747.
  Krizhevsky, "Learning Multiple Layers of Features from Tiny Images", 2009 (CIFAR-10).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import shutil
import struct
import tempfile
import urllib.request
from pathlib import Path
from typing import NamedTuple

import numpy as np

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
IDX_URLS = {
    "fashion_mnist": "https://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "mnist": "https://ossci-datasets.s3.amazonaws.com/mnist/",
}
CIFAR10_URLS = {
    "binary": "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",
    "python": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
}
IMAGE_MAGIC, LABEL_MAGIC = 2051, 2049
CIFAR_RECORD = 1 + 3 * 32 * 32
CIFAR_PER_FILE = 10000


class Dataset(NamedTuple):
  """uint8 NHWC images and int32 labels of both splits."""

  train_images: np.ndarray
  train_labels: np.ndarray
  test_images: np.ndarray
  test_labels: np.ndarray
  num_classes: int


def sha256_bytes(data: bytes) -> str:
  return hashlib.sha256(data).hexdigest()


def _read_maybe_gzip(path: Path) -> bytes:
  raw = Path(path).read_bytes()
  if raw[:2] == b"\x1f\x8b":
    try:
      return gzip.decompress(raw)
    except (OSError, EOFError) as e:
      raise ValueError(f"{path}: corrupt or truncated gzip file ({e})") from None
  return raw


def check_sha256(data: bytes, expected: str | None, what: str) -> None:
  if expected is not None and sha256_bytes(data) != expected:
    raise ValueError(f"{what}: sha256 mismatch: got {sha256_bytes(data)}, expected {expected}")


def parse_idx(data: bytes, what: str, magic: int, count: int | None = None,
              shape: tuple[int, ...] | None = None) -> np.ndarray:
  """Parses IDX bytes; checks magic, count, item shape and the exact length."""
  if len(data) < 4:
    raise ValueError(f"{what}: truncated: {len(data)} bytes, no IDX header")
  got_magic = struct.unpack(">I", data[:4])[0]
  if got_magic != magic:
    raise ValueError(f"{what}: wrong magic number {got_magic:#010x}, expected {magic:#010x}")
  ndim = data[3]
  header = 4 + 4 * ndim
  if len(data) < header:
    raise ValueError(f"{what}: truncated header ({len(data)} bytes)")
  dims = struct.unpack(f">{ndim}I", data[4:header])
  size = int(np.prod(dims, dtype=np.int64))
  if len(data) != header + size:
    kind = "truncated" if len(data) < header + size else "has trailing bytes"
    raise ValueError(f"{what}: {kind}: {len(data)} bytes, expected {header + size} for "
                     f"shape {dims}")
  if count is not None and dims[0] != count:
    raise ValueError(f"{what}: wrong count {dims[0]}, expected {count}")
  if shape is not None and tuple(dims[1:]) != tuple(shape):
    raise ValueError(f"{what}: wrong item shape {tuple(dims[1:])}, expected {shape}")
  return np.frombuffer(data, np.uint8, offset=header).reshape(dims)


def _find(folder: Path, stem: str) -> Path:
  for name in (stem + ".gz", stem):
    if (folder / name).exists():
      return folder / name
  raise FileNotFoundError(f"{folder}: neither {stem}.gz nor {stem} found")


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
      check_sha256(data, CONTENT_SHA256.get(f"{key}/{stem}"), str(path))
    out.append(parse_idx(data, str(path), magic, n, shape))
  images, labels = out
  if labels.size and labels.max() >= 10:
    raise ValueError(f"{folder}: label {labels.max()} out of range [0, 10)")
  return images[..., None], labels.astype(np.int32)


def parse_cifar10_binary(data: bytes, what: str,
                         count: int = CIFAR_PER_FILE) -> tuple[np.ndarray, np.ndarray]:
  """One CIFAR-10 binary batch: (count, 32, 32, 3) uint8 images and labels."""
  if len(data) != count * CIFAR_RECORD:
    kind = "truncated" if len(data) < count * CIFAR_RECORD else "wrong size"
    raise ValueError(f"{what}: {kind}: {len(data)} bytes, expected {count} records of "
                     f"{CIFAR_RECORD} bytes ({count * CIFAR_RECORD})")
  rec = np.frombuffer(data, np.uint8).reshape(count, CIFAR_RECORD)
  labels = rec[:, 0].astype(np.int32)
  if labels.max() >= 10:
    raise ValueError(f"{what}: label {labels.max()} out of range [0, 10)")
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
    raise ValueError(f"{what}: not a readable CIFAR-10 python batch ({e})") from None
  if not isinstance(d, dict) or b"data" not in d or b"labels" not in d:
    raise ValueError(f"{what}: missing 'data' or 'labels'")
  x, y = np.asarray(d[b"data"]), np.asarray(d[b"labels"], np.int32)
  if x.dtype != np.uint8 or x.shape != (count, 3072):
    raise ValueError(f"{what}: wrong data shape {x.shape} ({x.dtype}), expected "
                     f"({count}, 3072) uint8")
  if y.shape != (count,):
    raise ValueError(f"{what}: wrong count {y.shape[0]} labels, expected {count}")
  if y.max() >= 10 or y.min() < 0:
    raise ValueError(f"{what}: label out of range [0, 10)")
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
    raise FileNotFoundError(f"{folder}: no CIFAR-10 test_batch(.bin); extract "
                            f"cifar-10-binary.tar.gz or cifar-10-python.tar.gz there")
  parts = [parse((folder / f"data_batch_{i}{ext}").read_bytes(), f"data_batch_{i}{ext}", count)
           for i in range(1, 6)]
  test = parse((folder / f"test_batch{ext}").read_bytes(), f"test_batch{ext}", count)
  return Dataset(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
                 test[0], test[1], 10)


def download(url: str, dest: Path, sha256: str | None = None, opener=urllib.request.urlopen,
             gunzipped_sha256: bool = False) -> Path:
  """Fetches ``url`` to ``dest`` atomically, verifying ``sha256`` first when given.

  With ``gunzipped_sha256`` the hash is of the decompressed content (see
  :data:`CONTENT_SHA256`). On any failure the temporary file is removed and ``dest`` is left
  as it was.
  """
  dest = Path(dest)
  dest.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=dest.name + ".", suffix=".part", dir=dest.parent)
  try:
    with os.fdopen(fd, "wb") as f, opener(url) as response:
      shutil.copyfileobj(response, f)
    if sha256 is not None:
      data = Path(tmp).read_bytes()
      check_sha256(gzip.decompress(data) if gunzipped_sha256 else data, sha256, url)
    os.replace(tmp, dest)
  except BaseException:
    Path(tmp).unlink(missing_ok=True)
    raise
  return dest


def download_idx(name: str, folder: Path, opener=urllib.request.urlopen) -> Path:
  """Downloads the four gzipped IDX files of ``name`` (needs a network)."""
  for split in ("train", "test"):
    for stem in IDX_FILES[split][:2]:
      if not (Path(folder) / f"{stem}.gz").exists():
        download(IDX_URLS[name] + stem + ".gz", Path(folder) / f"{stem}.gz",
                 CONTENT_SHA256.get(f"{name}/{stem}"), opener, gunzipped_sha256=True)
  return Path(folder)


def data_help(name: str) -> str:
  if name == "fashion_mnist":
    return ("Fashion-MNIST not found. On Debian/Ubuntu: `sudo apt-get install "
            "dataset-fashion-mnist` (files in /usr/share/datasets/fashion-mnist); or pass "
            "--download (needs a network) or --data-dir with the four *-ubyte.gz files from "
            "https://github.com/zalandoresearch/fashion-mnist.")
  if name == "mnist":
    return ("MNIST not found: pass --data-dir with the four *-ubyte(.gz) files, or --download "
            "(needs a network).")
  return (f"{name}: pass --data-dir with the extracted cifar-10-batches-bin or "
          "cifar-10-batches-py folder (https://www.cs.toronto.edu/~kriz/cifar.html).")


def load_dataset(name: str, data_dir: str | Path | None = None, download_missing: bool = False,
                 count: tuple[int, int] | None = None) -> Dataset:
  """Loads ``name`` ('fashion_mnist', 'mnist', 'cifar10') with all checks.

  ``data_dir`` defaults to Debian's ``/usr/share/datasets/fashion-mnist`` for Fashion-MNIST
  where that package is installed, else to ``data/NAME`` (where ``--download`` writes).
  ``count`` = (train, test) sizes for small generated files (tests); for CIFAR-10 every
  batch file then holds ``count[1]`` records. Raises
  ``FileNotFoundError`` with instructions when the files are missing.
  """
  if name in ("fashion_mnist", "mnist"):
    folder = Path(data_dir) if data_dir else Path("data") / name
    if not data_dir and name == "fashion_mnist" and (DEBIAN_FASHION_MNIST / (
        IDX_FILES["test"][0] + ".gz")).exists():
      folder = DEBIAN_FASHION_MNIST  # offline default; downloads go to ./data instead
    try:
      _find(folder, IDX_FILES["test"][0])
    except FileNotFoundError:
      if not download_missing:
        raise FileNotFoundError(data_help(name)) from None
      download_idx(name, folder)
    n_train, n_test = count if count else (None, None)
    train = read_idx_split(folder, "train", name, n_train)
    test = read_idx_split(folder, "test", name, n_test)
    return Dataset(train[0], train[1], test[0], test[1], 10)
  if name == "cifar10":
    if not data_dir:
      raise FileNotFoundError(data_help(name))
    return read_cifar10(Path(data_dir), count[1] if count else CIFAR_PER_FILE)
  raise ValueError(f"unknown dataset {name!r}; use fashion_mnist, mnist or cifar10")


def preprocess(images: np.ndarray, mean_image: np.ndarray | None = None) -> np.ndarray:
  """Caffe's input transform: ``x / 256`` (MNIST protocol, ``scale: 0.00390625``), or
  ``x - mean_image`` (CIFAR-10, raw 0..255 pixels minus the training mean)."""
  if mean_image is None:
    return images.astype(np.float32) * np.float32(1 / 256)
  return images.astype(np.float32) - mean_image.astype(np.float32)
