"""Readers and downloads of examples/paper/data.py on small generated files."""

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
from paper import data


def idx_bytes(array: np.ndarray, magic: int) -> bytes:
  header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape)
  return header + array.astype(np.uint8).tobytes()


def write_idx_folder(folder, n_train=12, n_test=5, gz=True, seed=0):
  rng = np.random.default_rng(seed)
  folder.mkdir(parents=True, exist_ok=True)
  arrays = {}
  for split, n in (("train", n_train), ("test", n_test)):
    images_stem, labels_stem, _ = data.IDX_FILES[split]
    x = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    y = rng.integers(0, 10, (n,), dtype=np.uint8)
    for stem, arr, magic in ((images_stem, x, 2051), (labels_stem, y, 2049)):
      raw = idx_bytes(arr, magic)
      if gz:
        (folder / f"{stem}.gz").write_bytes(gzip.compress(raw))
      else:
        (folder / stem).write_bytes(raw)
    arrays[split] = (x, y)
  return arrays


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
                        data.sha256_bytes((tmp_path / stem).read_bytes()))
  assert data.load_dataset("fashion_mnist", tmp_path, count=(12, 5)).train_images.shape[0] == 12
  monkeypatch.setitem(data.CONTENT_SHA256, "fashion_mnist/t10k-labels-idx1-ubyte", "0" * 64)
  with pytest.raises(ValueError, match="t10k-labels-idx1-ubyte: sha256 mismatch"):
    data.load_dataset("fashion_mnist", tmp_path, count=(12, 5))


def test_missing_data_says_how_to_get_it(tmp_path):
  with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
    data.load_dataset("fashion_mnist", tmp_path / "nothing")


def test_download_default_folder_is_local_not_debian(tmp_path, monkeypatch):
  """Without --data-dir and without Debian's package, --download writes ./data/NAME."""
  monkeypatch.chdir(tmp_path)
  monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", tmp_path / "not-installed")
  seen = []

  def fake_download(name, folder, opener=None):
    seen.append(Path(folder))
    write_idx_folder(Path(folder), n_train=12, n_test=5)
    return Path(folder)

  monkeypatch.setattr(data, "download_idx", fake_download)
  monkeypatch.setattr(data, "CONTENT_SHA256", {})
  ds = data.load_dataset("fashion_mnist", download_missing=True, count=(12, 5))
  assert seen == [Path("data") / "fashion_mnist"] and ds.test_images.shape == (5, 28, 28, 1)
  assert not (tmp_path / "not-installed").exists()


@pytest.mark.skipif(not (data.DEBIAN_FASHION_MNIST / "t10k-labels-idx1-ubyte.gz").exists(),
                    reason="Debian's dataset-fashion-mnist is not installed")
def test_debian_fashion_mnist_matches_known_hashes():
  x, y = data.read_idx_split(data.DEBIAN_FASHION_MNIST, "test", "fashion_mnist")
  assert x.shape == (10000, 28, 28, 1) and np.bincount(y).tolist() == [1000] * 10


def cifar_records(n, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
  y = rng.integers(0, 10, (n,), dtype=np.uint8)
  return x, y


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


def test_download_verifies_and_is_atomic(tmp_path):
  payload = b"hello world" * 100
  src = tmp_path / "src.bin"
  src.write_bytes(payload)
  dest = tmp_path / "out" / "file.bin"
  good = data.sha256_bytes(payload)
  data.download(src.as_uri(), dest, good)
  assert dest.read_bytes() == payload
  # A mismatch leaves neither the final nor a partial file, and keeps an existing file.
  dest2 = tmp_path / "out" / "other.bin"
  with pytest.raises(ValueError, match="sha256 mismatch"):
    data.download(src.as_uri(), dest2, "f" * 64)
  assert sorted(p.name for p in dest.parent.iterdir()) == ["file.bin"]
  with pytest.raises(ValueError, match="sha256 mismatch"):
    data.download(src.as_uri(), dest, "f" * 64)
  assert dest.read_bytes() == payload


def test_download_broken_connection_leaves_nothing(tmp_path):
  class Broken:
    def __enter__(self):
      return self

    def __exit__(self, *a):
      return False

    def read(self, n=-1):
      raise ConnectionResetError("peer reset")

  with pytest.raises(ConnectionResetError):
    data.download("https://example.invalid/x", tmp_path / "x.gz", opener=lambda url: Broken())
  assert list(tmp_path.iterdir()) == []


def test_download_idx_checks_content_hash(tmp_path, monkeypatch):
  src = tmp_path / "mirror"
  write_idx_folder(src)
  url = src.as_uri() + "/"
  monkeypatch.setitem(data.IDX_URLS, "mnist", url)
  data.download_idx("mnist", tmp_path / "got")
  assert len(list((tmp_path / "got").glob("*.gz"))) == 4
  monkeypatch.setitem(data.IDX_URLS, "fashion_mnist", url)
  with pytest.raises(ValueError, match="sha256 mismatch"):
    data.download_idx("fashion_mnist", tmp_path / "bad")
  assert list((tmp_path / "bad").iterdir()) == []


def test_preprocess():
  x = np.array([[0, 128, 255]], np.uint8)
  np.testing.assert_array_equal(data.preprocess(x), np.array([[0, 0.5, 255 / 256]], np.float32))
  np.testing.assert_array_equal(data.preprocess(x, np.array([1.0, 1.0, 1.0])),
                                np.array([[-1, 127, 254]], np.float32))
