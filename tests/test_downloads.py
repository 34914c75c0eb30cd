"""``--download`` for every dataset it is offered for, against a local HTTP server.

The server (127.0.0.1, a free port) serves generated files in each dataset's published
format; the registry entries' ``remote`` (:data:`experiments.data.DATASETS`) point at it
with the files' own checksums.
"""

import functools
import gzip
import hashlib
import http.server
import socket
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest

from experiments import data, paper
from tests.generated_data import write_cifar_python_archive, write_idx_folder


@pytest.fixture
def server(tmp_path):
  """(folder served, base URL) of an HTTP server on 127.0.0.1."""
  root = tmp_path / "served"
  root.mkdir()
  handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
  handler.log_message = lambda *args: None
  httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
  thread = threading.Thread(target=httpd.serve_forever, daemon=True)
  thread.start()
  yield root, f"http://127.0.0.1:{httpd.server_address[1]}/"
  httpd.shutdown()
  httpd.server_close()


def digest(algorithm: str, raw: bytes) -> str:
  return hashlib.new(algorithm, raw).hexdigest()


def serve_idx(root: Path, url: str, name: str, monkeypatch) -> dict:
  """Generated IDX files under ``root/name``; the registry's remote files point at them as the real
  table does (MD5 of the .gz for MNIST, sha256 of the content for Fashion-MNIST)."""
  arrays = write_idx_folder(root / name, n_train=12, n_test=5)
  remote = {}
  for path in sorted((root / name).iterdir()):
    raw = path.read_bytes()
    if name == "mnist":
      remote[path.name] = data.Remote(f"{url}{name}/{path.name}", "md5", digest("md5", raw))
    else:
      content = digest("sha256", gzip.decompress(raw))
      remote[path.name] = data.Remote(f"{url}{name}/{path.name}", "sha256", content, True)
      monkeypatch.setitem(data.CONTENT_SHA256, f"{name}/{path.name[:-3]}", content)
  set_remote(monkeypatch, name, remote)
  return arrays


def set_remote(monkeypatch, name: str, remote: dict) -> None:
  """Points the download table of dataset ``name`` at ``remote`` for one test."""
  monkeypatch.setitem(data.DATASETS, name, data.DATASETS[name]._replace(remote=remote))


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_idx_download_verifies_and_loads(tmp_path, server, monkeypatch, name):
  root, url = server
  arrays = serve_idx(root, url, name, monkeypatch)
  ds = data.load_dataset(name, tmp_path / "got", download_missing=True, count=(12, 5))
  np.testing.assert_array_equal(ds.train_images[..., 0], arrays["train"][0])
  np.testing.assert_array_equal(ds.test_labels, arrays["test"][1])
  assert sorted(p.name for p in (tmp_path / "got").iterdir()) == sorted(data.DATASETS[name].remote)


def test_cifar10_download_extracts_atomically(tmp_path, server, monkeypatch):
  root, url = server
  archive = write_cifar_python_archive(root / "cifar-10-python.tar.gz", per_file=4)
  set_remote(monkeypatch, "cifar10", {archive.name: data.Remote(
      url + archive.name, "md5", digest("md5", archive.read_bytes()))})
  ds = data.load_dataset("cifar10", tmp_path / "got", download_missing=True, count=(20, 4))
  assert ds.train_images.shape == (20, 32, 32, 3) and ds.test_labels.shape == (4,)
  # The archive is removed once extracted; only the batch folder stays.
  assert [p.name for p in (tmp_path / "got").iterdir()] == [data.CIFAR_FOLDER]


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist", "cifar10"])
def test_checksum_mismatch_leaves_no_file(tmp_path, server, monkeypatch, name):
  root, url = server
  if name == "cifar10":
    archive = write_cifar_python_archive(root / "cifar-10-python.tar.gz")
    set_remote(monkeypatch, "cifar10", {archive.name: data.Remote(
        url + archive.name, "md5", "0" * 32)})
  else:
    serve_idx(root, url, name, monkeypatch)
    remote = data.DATASETS[name].remote
    first = next(iter(remote))
    set_remote(monkeypatch, name, {**remote, first: remote[first]._replace(digest="0" * 64)})
  with pytest.raises(data.InputError, match="mismatch: got [0-9a-f]+, expected 0+; the "
                                            "download is corrupt"):
    data.load_dataset(name, tmp_path / "got", download_missing=True)
  assert list((tmp_path / "got").iterdir()) == []


def closed_port() -> int:
  with socket.socket() as sock:
    sock.bind(("127.0.0.1", 0))
    return sock.getsockname()[1]


def test_offline_download_is_one_line(tmp_path, monkeypatch, capsys):
  """No network (nothing listens on the port): one stderr line and exit 1, no traceback."""
  url = f"http://127.0.0.1:{closed_port()}/"
  set_remote(monkeypatch, "mnist", {name: remote._replace(url=url + name)
                                    for name, remote in data.DATASETS["mnist"].remote.items()})
  with pytest.raises(SystemExit) as exit_info:
    paper.main(["--dataset", "mnist", "--download", "--data-dir", str(tmp_path / "d"),
                    "--out", str(tmp_path / "out"), "--no-progress"])
  err = capsys.readouterr().err
  assert exit_info.value.code == 1 and err.count("\n") == 1
  assert err.startswith(f"error: could not fetch {url}train-images-idx3-ubyte.gz (")
  assert "check the network" in err
  assert list((tmp_path / "d").iterdir()) == []


def test_archive_with_a_link_is_refused(tmp_path):
  (tmp_path / "staging" / data.CIFAR_FOLDER).mkdir(parents=True)
  (tmp_path / "staging" / data.CIFAR_FOLDER / "test_batch").symlink_to("/etc/passwd")
  archive = tmp_path / "evil.tar.gz"
  with tarfile.open(archive, "w:gz") as tar:
    tar.add(tmp_path / "staging" / data.CIFAR_FOLDER, arcname=data.CIFAR_FOLDER)
  (tmp_path / "got").mkdir()
  with pytest.raises(data.InputError, match="refusing to extract 'cifar-10-batches-py/"
                                            "test_batch' \\(a link"):
    data.extract_folder(archive, data.CIFAR_FOLDER, tmp_path / "got")
  assert list((tmp_path / "got").iterdir()) == []
