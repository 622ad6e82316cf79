"""Downloads: from a loopback HTTP server, sha256-checked; a bad checksum removes the partial file."""

from __future__ import annotations

import functools
import hashlib
import http.server
import threading
from pathlib import Path

import pytest
from conftest import DATA_DIR, FAST, needs_mnist

from dlcli.base.errors import UserError
from dlcli.data.download import find_or_download


@pytest.fixture
def server(tmp_path: Path):
    """Serve tmp_path/www on 127.0.0.1 (a free port) for the duration of a test."""
    www = tmp_path / "www"
    www.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(www))
    handler.log_message = lambda *a: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield www, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_download_verifies_sha256_and_keeps_the_file(server, tmp_path):
    www, url = server
    (www / "a.bin").write_bytes(b"hello world")
    digest = hashlib.sha256(b"hello world").hexdigest()
    got = find_or_download("toy", tmp_path / "root", ("toy",), {"a.bin": digest}, url, allow_download=True)
    assert got["a.bin"] == tmp_path / "root" / "toy" / "a.bin" and got["a.bin"].read_bytes() == b"hello world"
    # Second call: found locally, nothing fetched.
    (www / "a.bin").unlink()
    assert find_or_download("toy", tmp_path / "root", ("toy",), {"a.bin": digest}, url, True)["a.bin"].is_file()


def test_download_with_wrong_sha256_is_refused_and_removed(server, tmp_path):
    www, url = server
    (www / "a.bin").write_bytes(b"tampered")
    with pytest.raises(UserError, match="sha256"):
        find_or_download("toy", tmp_path / "root", ("toy",), {"a.bin": "0" * 64}, url, allow_download=True)
    assert not list((tmp_path / "root" / "toy").glob("*")), "no partial or bad file may stay behind"


def test_local_file_with_wrong_sha256_is_an_error(tmp_path):
    (tmp_path / "toy").mkdir()
    (tmp_path / "toy" / "a.bin").write_bytes(b"x")
    with pytest.raises(UserError, match="wrong sha256"):
        find_or_download("toy", tmp_path, ("toy",), {"a.bin": "0" * 64}, "http://127.0.0.1:9", False)


@needs_mnist
def test_mnist_downloads_from_a_mirror_then_trains(server, dl):
    www, url = server
    for f in (DATA_DIR / "mnist").glob("*.gz"):
        (www / f.name).write_bytes(f.read_bytes())
    res = dl.ok("train", "model=mlp", "dataset=mnist", "dataset.root=data", f"dataset.url={url}",
                "dataset.subset=600", "trainer.epochs=1", *FAST)
    assert len(list((dl.cwd / "data" / "mnist").glob("*.gz"))) == 4
    assert "test/acc" in res.stdout
