"""Small generated data files in the datasets' formats (IDX, CIFAR-10 python), for tests.

Sizes are the caller's (a few images), never the datasets' 60,000: commands read them with
``--split-sizes TRAIN,TEST``.
"""

import gzip
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np

from experiments import data


def idx_bytes(array: np.ndarray, magic: int) -> bytes:
  header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape)
  return header + array.astype(np.uint8).tobytes()


def write_idx_folder(folder: Path, n_train: int = 12, n_test: int = 5, gz: bool = True,
                     seed: int = 0) -> dict:
  """The four MNIST-format files of random images; returns ``{split: (images, labels)}``."""
  rng = np.random.default_rng(seed)
  folder = Path(folder)
  folder.mkdir(parents=True, exist_ok=True)
  arrays = {}
  for split, n in (("train", n_train), ("test", n_test)):
    images_stem, labels_stem, _ = data.IDX_FILES[split]
    x = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    y = rng.integers(0, 10, (n,), dtype=np.uint8)
    for stem, arr, magic in ((images_stem, x, data.IMAGE_MAGIC), (labels_stem, y,
                                                                 data.LABEL_MAGIC)):
      raw = idx_bytes(arr, magic)
      if gz:
        (folder / f"{stem}.gz").write_bytes(gzip.compress(raw))
      else:
        (folder / stem).write_bytes(raw)
    arrays[split] = (x, y)
  return arrays


def learnable_dataset(n_train: int = 64, n_test: int = 20, seed: int = 0) -> data.Dataset:
  """An in-memory MNIST-shaped dataset a few steps of training can learn: a class-dependent
  bright square on dark noise."""
  rng = np.random.default_rng(seed)
  y = rng.integers(0, 10, n_train + n_test).astype(np.int32)
  x = rng.integers(0, 60, (n_train + n_test, 28, 28, 1), dtype=np.uint8)
  for i, c in enumerate(y):
    x[i, 2 * c:2 * c + 8, 4:12] = 250
  return data.Dataset(x[:n_train], y[:n_train], x[n_train:], y[n_train:], 10)


def cifar_records(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  rng = np.random.default_rng(seed)
  x = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
  y = rng.integers(0, 10, (n,), dtype=np.uint8)
  return x, y


def write_cifar_python_archive(path: Path, per_file: int = 4) -> Path:
  """A cifar-10-python.tar.gz holding ``cifar-10-batches-py/`` with six batches of
  ``per_file`` records each."""
  staging = Path(path).parent / "cifar-staging" / data.CIFAR_FOLDER
  staging.mkdir(parents=True)
  for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
    x, y = cifar_records(per_file, seed=i)
    (staging / name).write_bytes(pickle.dumps({b"data": x.reshape(per_file, -1),
                                               b"labels": y.tolist()}))
  with tarfile.open(path, "w:gz") as tar:
    tar.add(staging, arcname=data.CIFAR_FOLDER)
  return Path(path)
