"""Readers of experiments/data.py on small generated files (downloads: test_downloads.py)."""

import gzip
import hashlib
import pickle

import numpy as np
import pytest

from experiments import data
from tests.generated_data import cifar_records, idx_bytes, write_idx_folder


@pytest.mark.parametrize("gz", [True, False])
def test_idx_roundtrip(tmp_path, gz):
  arrays = write_idx_folder(tmp_path, gz=gz)
  ds = data.load_dataset("mnist", tmp_path, count=(12, 5))
  assert ds.train_images.shape == (12, 28, 28, 1) and ds.test_images.shape == (5, 28, 28, 1)
  np.testing.assert_array_equal(ds.train_images[..., 0], arrays["train"][0])
  np.testing.assert_array_equal(ds.test_labels, arrays["test"][1])
  assert ds.train_labels.dtype == np.int32


def test_idx_truncated(tmp_path):
  x = np.zeros((4, 28, 28), np.uint8)
  raw = idx_bytes(x, 2051)
  with pytest.raises(ValueError, match=r"truncated: 3000 bytes, expected 3152"):
    data.parse_idx(raw[:3000], "f", 2051, 4, (28, 28))
  # A truncated gzip stream is reported too.
  path = tmp_path / "t10k-images-idx3-ubyte.gz"
  path.write_bytes(gzip.compress(raw)[:-20])
  with pytest.raises(ValueError, match="corrupt or truncated gzip"):
    data._read_maybe_gzip(path)


def test_idx_wrong_magic_count_shape():
  x = np.zeros((4, 28, 28), np.uint8)
  with pytest.raises(ValueError, match="wrong magic number 0x00000801, expected 0x00000803"):
    data.parse_idx(idx_bytes(x, 2049), "f", 2051, 4, (28, 28))
  with pytest.raises(ValueError, match="wrong count 4, expected 60000"):
    data.parse_idx(idx_bytes(x, 2051), "f", 2051, 60000, (28, 28))
  with pytest.raises(ValueError, match=r"wrong item shape \(28, 28\), expected \(32, 32\)"):
    data.parse_idx(idx_bytes(x, 2051), "f", 2051, 4, (32, 32))
  with pytest.raises(ValueError, match="trailing bytes"):
    data.parse_idx(idx_bytes(x, 2051) + b"\0", "f", 2051, 4, (28, 28))


def test_idx_wrong_count_in_folder(tmp_path):
  write_idx_folder(tmp_path, n_train=12, n_test=5)
  with pytest.raises(ValueError, match="wrong count 12, expected 60000"):
    data.load_dataset("mnist", tmp_path)


def test_idx_checksum_mismatch(tmp_path, monkeypatch):
  write_idx_folder(tmp_path, gz=False)
  # With the generated files' own hashes registered the folder loads; one wrong hash fails.
  for stem in [name for split in data.IDX_FILES.values() for name in split[:2]]:
    monkeypatch.setitem(data.CONTENT_SHA256, f"fashion_mnist/{stem}",
                        hashlib.sha256((tmp_path / stem).read_bytes()).hexdigest())
  assert data.read_idx_split(tmp_path, "test", "fashion_mnist", 5)[0].shape[0] == 5
  monkeypatch.setitem(data.CONTENT_SHA256, "fashion_mnist/t10k-labels-idx1-ubyte", "0" * 64)
  with pytest.raises(ValueError, match="t10k-labels-idx1-ubyte: sha256 mismatch"):
    data.read_idx_split(tmp_path, "test", "fashion_mnist", 5)
  # Smaller files than the published ones (count given) are read without the hashes.
  assert data.load_dataset("fashion_mnist", tmp_path, count=(12, 5)).train_images.shape[0] == 12


def test_missing_data_says_how_to_get_it(tmp_path):
  with pytest.raises(data.InputError, match="apt-get install dataset-fashion-mnist"):
    data.load_dataset("fashion_mnist", tmp_path / "nothing")


@pytest.mark.skipif(not (data.DEBIAN_FASHION_MNIST / "t10k-labels-idx1-ubyte.gz").exists(),
                    reason="Debian's dataset-fashion-mnist is not installed")
def test_debian_fashion_mnist_matches_known_hashes():
  x, y = data.read_idx_split(data.DEBIAN_FASHION_MNIST, "test", "fashion_mnist")
  assert x.shape == (10000, 28, 28, 1) and np.bincount(y).tolist() == [1000] * 10


def test_cifar_binary(tmp_path):
  x, y = cifar_records(6)
  raw = np.concatenate([y[:, None], x.reshape(6, -1)], 1).tobytes()
  images, labels = data.parse_cifar10_binary(raw, "b", 6)
  np.testing.assert_array_equal(images, x.transpose(0, 2, 3, 1))
  np.testing.assert_array_equal(labels, y)
  with pytest.raises(ValueError, match=r"truncated: 18437 bytes, expected 6 records"):
    data.parse_cifar10_binary(raw[:-1], "b", 6)
  with pytest.raises(ValueError, match="wrong size"):
    data.parse_cifar10_binary(raw, "b", 5)
  bad = bytearray(raw)
  bad[0] = 10
  with pytest.raises(ValueError, match="label 10 out of range"):
    data.parse_cifar10_binary(bytes(bad), "b", 6)
  # A whole extracted folder.
  folder = tmp_path / "cifar-10-batches-bin"
  folder.mkdir()
  for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
    (folder / name).write_bytes(raw)
  ds = data.load_dataset("cifar10", tmp_path, count=(30, 6))
  assert ds.train_images.shape == (30, 32, 32, 3) and ds.test_labels.shape == (6,)


def test_cifar_python(tmp_path):
  x, y = cifar_records(4)
  good = pickle.dumps({b"data": x.reshape(4, -1), b"labels": y.tolist()})
  images, labels = data.parse_cifar10_python(good, "p", 4)
  np.testing.assert_array_equal(images, x.transpose(0, 2, 3, 1))
  np.testing.assert_array_equal(labels, y)
  with pytest.raises(ValueError, match=r"wrong data shape \(4, 3072\)"):
    data.parse_cifar10_python(good, "p", 5)
  short = pickle.dumps({b"data": x.reshape(4, -1), b"labels": y.tolist()[:3]})
  with pytest.raises(ValueError, match="wrong count 3 labels, expected 4"):
    data.parse_cifar10_python(short, "p", 4)
  with pytest.raises(ValueError, match="not a readable CIFAR-10 python batch"):
    data.parse_cifar10_python(good[:-10], "p", 4)
  # Pickles that would build other objects are refused.
  evil = pickle.dumps({b"data": __import__("collections").OrderedDict(), b"labels": []})
  with pytest.raises(ValueError, match="refusing to load collections.OrderedDict"):
    data.parse_cifar10_python(evil, "p", 4)


def test_preprocess():
  x = np.array([[0, 128, 255]], np.uint8)
  np.testing.assert_array_equal(data.preprocess(x), np.array([[0, 0.5, 255 / 256]], np.float32))
  np.testing.assert_array_equal(data.preprocess(x, np.array([1.0, 1.0, 1.0])),
                                np.array([[-1, 127, 254]], np.float32))
