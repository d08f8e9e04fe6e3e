"""Downloads against a real HTTP server on 127.0.0.1 that the tests control."""

from __future__ import annotations

import hashlib
import random
import re
import socket
import sys
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from tqdm import tqdm

from pixgen.errors import (
    ChecksumMismatch,
    DownloadError,
    ModelNotAvailable,
    PixgenError,
)
from pixgen.models import cache, downloads
from pixgen.models.downloads import FileSpec, download, sha256_file

DATA = random.Random(0).randbytes(300_000)
DATA_SHA = hashlib.sha256(DATA).hexdigest()
DROP_AT = 100_000


@dataclass
class Route:
    """How the test server answers one path."""

    data: bytes = DATA
    fail_status: list[int] = field(default_factory=list)  # statuses to send first, one per request
    drop_times: int = 0  # requests cut off after DROP_AT bytes of the body
    honour_range: bool = True
    html: bool = False
    send_length: bool = True


class Handler(BaseHTTPRequestHandler):
    """Serves the routes of its server and records every request's headers."""

    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # silence the default stderr log
        pass

    def do_GET(self):
        self.server.seen.append((self.path, dict(self.headers)))
        route = self.server.routes.get(self.path)
        if route is None:
            return self._plain(404, b"not found")
        if route.fail_status:
            return self._plain(route.fail_status.pop(0), b"server error")
        if route.html:
            return self._plain(200, b"<html><body>Please log in</body></html>", "text/html; charset=utf-8")
        start = _range_start(self.headers.get("Range")) if route.honour_range else 0
        if start >= len(route.data) and start:
            return self._plain(416, b"")
        body = route.data[start:]
        self.send_response(206 if start else 200)
        self.send_header("Content-Type", "application/octet-stream")
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(route.data) - 1}/{len(route.data)}")
        if route.send_length:
            self.send_header("Content-Length", str(len(body)))
        else:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if route.drop_times > 0:
            route.drop_times -= 1
            self.wfile.write(body[: DROP_AT - start])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return
        self.wfile.write(body)

    def _plain(self, status: int, body: bytes, content_type: str = "text/plain") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class QuietServer(ThreadingHTTPServer):
    """A threading server that ignores clients hanging up (the downloader does on errors)."""

    daemon_threads = True

    def handle_error(self, request, client_address):
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def _range_start(header: str | None) -> int:
    match = re.fullmatch(r"bytes=(\d+)-", header or "")
    return int(match.group(1)) if match else 0


class Server:
    """Handle on the running test server."""

    def __init__(self, httpd: ThreadingHTTPServer):
        self.httpd = httpd
        self.base = f"http://127.0.0.1:{httpd.server_address[1]}"

    def route(self, path: str, **kwargs) -> str:
        self.httpd.routes[path] = Route(**kwargs)
        return self.base + path

    @property
    def seen(self) -> list[tuple[str, dict[str, str]]]:
        return self.httpd.seen


@pytest.fixture(autouse=True)
def _no_proxy_no_offline(monkeypatch):
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.delenv("PIXGEN_OFFLINE", raising=False)


@pytest.fixture
def server():
    httpd = QuietServer(("127.0.0.1", 0), Handler)
    httpd.routes = {}
    httpd.seen = []
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield Server(httpd)
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


def fetch(spec: FileSpec, dest: Path, **kwargs) -> str:
    kwargs = {"progress": False, "retries": 3, "backoff": 0, "timeout": 5, **kwargs}
    return download(spec, dest, **kwargs)


def test_clean_download_returns_hash(server, tmp_path):
    url = server.route("/f.bin")
    dest = tmp_path / "sub" / "f.bin"
    assert fetch(FileSpec((url,), DATA_SHA, len(DATA)), dest) == DATA_SHA
    assert dest.read_bytes() == DATA
    assert sorted(p.name for p in dest.parent.iterdir()) == ["f.bin"]
    assert sha256_file(dest) == DATA_SHA


def test_unknown_hash_returns_computed_hash(server, tmp_path):
    url = server.route("/f.bin")
    assert fetch(FileSpec((url,)), tmp_path / "f.bin") == DATA_SHA


def test_dropped_connection_resumes_with_range(server, tmp_path):
    url = server.route("/f.bin", drop_times=1)
    dest = tmp_path / "f.bin"
    assert fetch(FileSpec((url,), DATA_SHA, len(DATA)), dest) == DATA_SHA
    assert dest.read_bytes() == DATA
    assert len(server.seen) == 2
    assert "Range" not in server.seen[0][1]
    assert server.seen[1][1]["Range"] == f"bytes={DROP_AT}-"


def test_server_ignoring_range_restarts_from_zero(server, tmp_path):
    url = server.route("/f.bin", honour_range=False)
    dest = tmp_path / "f.bin"
    downloads.part_path(dest).write_bytes(b"x" * 5000)
    assert fetch(FileSpec((url,), DATA_SHA, len(DATA)), dest) == DATA_SHA
    assert dest.read_bytes() == DATA
    assert server.seen[0][1]["Range"] == "bytes=5000-"


def test_stale_part_with_wrong_hash_is_redownloaded_once(server, tmp_path):
    url = server.route("/f.bin")
    dest = tmp_path / "f.bin"
    downloads.part_path(dest).write_bytes(b"x" * 5000)
    assert fetch(FileSpec((url,), DATA_SHA, len(DATA)), dest) == DATA_SHA
    assert dest.read_bytes() == DATA
    assert [headers.get("Range") for _, headers in server.seen] == ["bytes=5000-", None]


def test_complete_part_is_verified_without_network(server, tmp_path):
    url = server.route("/f.bin")
    dest = tmp_path / "f.bin"
    downloads.part_path(dest).write_bytes(DATA)
    assert fetch(FileSpec((url,), DATA_SHA, len(DATA)), dest) == DATA_SHA
    assert server.seen == [] and dest.read_bytes() == DATA


def test_part_past_the_end_416_starts_over(server, tmp_path):
    url = server.route("/f.bin")
    dest = tmp_path / "f.bin"
    downloads.part_path(dest).write_bytes(DATA + b"extra")
    assert fetch(FileSpec((url,)), dest) == DATA_SHA
    assert [headers.get("Range") for _, headers in server.seen] == [f"bytes={len(DATA) + 5}-", None]


def test_first_mirror_404_then_second_ok(server, tmp_path):
    missing = server.base + "/gone.bin"
    url = server.route("/f.bin")
    assert fetch(FileSpec((missing, url), DATA_SHA), tmp_path / "f.bin") == DATA_SHA
    assert [path for path, _ in server.seen] == ["/gone.bin", "/f.bin"]


def test_connection_refused_moves_to_next_mirror(server, tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}/f.bin"
    url = server.route("/f.bin")
    assert fetch(FileSpec((dead, url), DATA_SHA), tmp_path / "f.bin", retries=1) == DATA_SHA


def test_500_twice_then_ok(server, tmp_path):
    url = server.route("/f.bin", fail_status=[500, 503])
    assert fetch(FileSpec((url,), DATA_SHA), tmp_path / "f.bin") == DATA_SHA
    assert len(server.seen) == 3


def test_all_mirrors_failing_names_each_url_and_reason(server, tmp_path):
    broken = server.route("/broken.bin", fail_status=[500] * 10)
    missing = server.base + "/gone.bin"
    with pytest.raises(DownloadError) as info:
        fetch(FileSpec((broken, missing)), tmp_path / "f.bin", retries=1)
    message = str(info.value)
    assert broken in message and "HTTP 500" in message and "2 attempt(s)" in message
    assert missing in message and "HTTP 404" in message
    assert "\n" not in message
    assert len(server.seen) == 3


def test_wrong_hash_is_rejected_and_deleted(server, tmp_path):
    url = server.route("/f.bin")
    folder = tmp_path / "models"
    with pytest.raises(ChecksumMismatch) as info:
        fetch(FileSpec((url,), "0" * 64), folder / "f.bin")
    assert "0" * 64 in str(info.value) and DATA_SHA in str(info.value)
    assert "deleted" in str(info.value)
    assert list(folder.iterdir()) == []


def test_html_error_page_is_rejected(server, tmp_path):
    url = server.route("/f.bin", html=True)
    with pytest.raises(DownloadError, match="HTML"):
        fetch(FileSpec((url,)), tmp_path / "f.bin")
    assert list(tmp_path.iterdir()) == []
    assert len(server.seen) == 1  # not retried


def test_content_length_contradicting_size_is_rejected(server, tmp_path):
    url = server.route("/f.bin")
    with pytest.raises(DownloadError, match=f"{len(DATA)} bytes but {len(DATA) + 1}"):
        fetch(FileSpec((url,), size=len(DATA) + 1), tmp_path / "f.bin")
    assert list(tmp_path.iterdir()) == []


def test_body_longer_than_size_is_rejected(server, tmp_path):
    url = server.route("/f.bin", send_length=False)
    with pytest.raises(DownloadError, match=f"received {len(DATA)} bytes but 1000"):
        fetch(FileSpec((url,), size=1000), tmp_path / "f.bin")
    assert list(tmp_path.iterdir()) == []


def test_keyboard_interrupt_keeps_part_and_next_call_resumes(server, tmp_path, monkeypatch):
    class InterruptingBar(tqdm):
        def update(self, n=1):
            self.got = getattr(self, "got", 0) + n
            if self.got >= DROP_AT:
                raise KeyboardInterrupt

    url = server.route("/f.bin")
    dest = tmp_path / "f.bin"
    spec = FileSpec((url,), DATA_SHA, len(DATA))
    monkeypatch.setattr(downloads, "tqdm", InterruptingBar)
    with pytest.raises(KeyboardInterrupt):
        fetch(spec, dest)
    part = downloads.part_path(dest)
    kept = part.stat().st_size
    assert 0 < kept < len(DATA) and not dest.exists()
    monkeypatch.setattr(downloads, "tqdm", tqdm)
    assert fetch(spec, dest) == DATA_SHA
    assert server.seen[-1][1]["Range"] == f"bytes={kept}-"
    assert dest.read_bytes() == DATA and not part.exists()


def test_unwritable_destination_gives_clear_error(server, tmp_path):
    url = server.route("/f.bin")
    blocker = tmp_path / "afile"
    blocker.write_text("not a directory")
    with pytest.raises(DownloadError, match="download directory") as info:
        fetch(FileSpec((url,)), blocker / "sub" / "f.bin")
    assert str(blocker / "sub") in str(info.value)
    assert isinstance(info.value, PixgenError) and server.seen == []


def test_local_write_error_is_a_download_error(server, tmp_path):
    url = server.route("/f.bin")
    dest = tmp_path / "f.bin"
    downloads.part_path(dest).mkdir()  # the part file cannot be opened for writing
    with pytest.raises(DownloadError, match=r"Cannot write .*f\.bin\.part"):
        fetch(FileSpec((url,)), dest)


@pytest.mark.parametrize("via_env", [False, True])
def test_offline_raises_without_network(server, tmp_path, monkeypatch, via_env):
    url = server.route("/f.bin")
    if via_env:
        monkeypatch.setenv("PIXGEN_OFFLINE", "1")
    with pytest.raises(ModelNotAvailable, match="offline"):
        fetch(FileSpec((url,)), tmp_path / "f.bin", offline=not via_env)
    assert server.seen == [] and list(tmp_path.iterdir()) == []


def test_cache_dir_honours_pixgen_home(tmp_path, monkeypatch):
    monkeypatch.setenv("PIXGEN_HOME", str(tmp_path / "home"))
    assert cache.cache_dir() == tmp_path / "home"
    assert not (tmp_path / "home").exists()
    monkeypatch.delenv("PIXGEN_HOME")
    assert cache.cache_dir().name == "pixgen"


@pytest.mark.parametrize(("value", "expected"), [("1", True), ("TRUE", True), ("yes", True), ("0", False), ("", False)])
def test_is_offline(monkeypatch, value, expected):
    monkeypatch.setenv("PIXGEN_OFFLINE", value)
    assert cache.is_offline() is expected
