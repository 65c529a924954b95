"""DatasetFetcher against a real HTTP server on 127.0.0.1 (Range support, dropped connections)."""

from __future__ import annotations

import io
import json
import os
import socket
import threading
import time
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from PIL import Image

import DatasetFetcher
from cli import run_cli

SEPTUPLETS = ["00001/0001", "00001/0002", "00002/0001"]


def png_bytes(seed: int) -> bytes:
    noise = np.random.default_rng(seed).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, format="PNG")
    return buffer.getvalue()


def vimeo_zip(top: str = "vimeo_test_clean", extra: dict[str, bytes] | None = None) -> bytes:
    """A small archive in the clean test set's layout (only sep_testlist.txt inside)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for n, entry in enumerate(SEPTUPLETS):
            for i in range(1, 8):
                archive.writestr(f"{top}/sequences/{entry}/im{i}.png", png_bytes(10 * n + i))
        archive.writestr(f"{top}/sep_testlist.txt", "\n".join(SEPTUPLETS[1:]) + "\n")
        for name, data in (extra or {}).items():
            archive.writestr(name, data)
    return buffer.getvalue()


class Server:
    """Serves ``files`` with HTTP Range; ``drop`` paths close the connection after half the body
    on their first request. Every request's path and Range header are logged."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.drop: set[str] = set()
        self.ignore_range = False
        self.log: list[tuple[str, str | None]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                server.log.append((self.path, self.headers.get("Range")))
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                start = 0
                ranged = self.headers.get("Range")
                if ranged and not server.ignore_range:
                    start = int(ranged.split("=")[1].split("-")[0])
                    if start >= len(body):
                        self.send_error(416)
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                if self.path in server.drop:
                    server.drop.discard(self.path)
                    self.wfile.write(body[start:start + (len(body) - start) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body[start:])

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_port}{path}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    srv = Server()
    yield srv
    srv.close()


def fetch(*argv: str) -> int:
    """Run the fetcher's command line; return its exit status."""
    with pytest.raises(SystemExit) as exit_info:
        run_cli(DatasetFetcher.main, ["--backoff", "0", "--timeout", "10", *argv])
    return exit_info.value.code


def error_lines(stderr: str) -> list[str]:
    """The ``error: ...`` lines (progress bars share stderr)."""
    return [line for line in stderr.replace("\r", "\n").splitlines() if line.startswith("error: ")]


def leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_dropped_connection_is_resumed_and_rerun_is_a_noop(server, tmp_path, capsys):
    body = vimeo_zip()
    server.files["/v.zip"] = body
    server.drop.add("/v.zip")
    out = tmp_path / "vimeo"
    assert fetch("--url", server.url("/v.zip"), "--output", str(out)) == 0
    # the first request was cut at half; the second asked for exactly the rest
    assert server.log == [("/v.zip", None), ("/v.zip", f"bytes={len(body) // 2}-")]
    assert (out / "sep_testlist.txt").read_text().split() == SEPTUPLETS[1:]
    assert (out / "sep_trainlist.txt").read_text().split() == SEPTUPLETS  # not in the archive
    with zipfile.ZipFile(io.BytesIO(body)) as archive:
        for entry in SEPTUPLETS:
            for i in range(1, 8):
                name = f"vimeo_test_clean/sequences/{entry}/im{i}.png"
                assert (out / "sequences" / entry / f"im{i}.png").read_bytes() == archive.read(name)
    assert leftovers(out) == [".fetch_complete.json", "sep_testlist.txt", "sep_trainlist.txt",
                              "sequences"]  # archive removed, no temporary folders
    assert json.loads((out / ".fetch_complete.json").read_text())["septuplets"] == 3

    capsys.readouterr()
    assert fetch("--url", server.url("/v.zip"), "--output", str(out)) == 0
    assert len(server.log) == 2  # nothing downloaded again
    assert "nothing to do" in capsys.readouterr().out


def test_partial_file_from_an_earlier_run_is_resumed(server, tmp_path):
    body = vimeo_zip()
    server.files["/v.zip"] = body
    out = tmp_path / "vimeo"
    out.mkdir()
    (out / "v.zip.part").write_bytes(body[:1000])
    assert fetch("--url", server.url("/v.zip"), "--output", str(out), "--size",
                 str(len(body)), "--keep_archive") == 0
    assert server.log == [("/v.zip", "bytes=1000-")]
    assert (out / "v.zip").read_bytes() == body


def test_server_ignoring_range_restarts_cleanly(server, tmp_path):
    body = vimeo_zip()
    server.files["/v.zip"] = body
    server.ignore_range = True
    out = tmp_path / "vimeo"
    out.mkdir()
    (out / "v.zip.part").write_bytes(b"garbage that a 200 reply must overwrite")
    assert fetch("--url", server.url("/v.zip"), "--output", str(out), "--keep_archive") == 0
    assert (out / "v.zip").read_bytes() == body


def test_corrupt_archive_fails_clearly_and_leaves_nothing(server, tmp_path, capsys):
    body = bytearray(vimeo_zip())
    middle = len(body) // 2
    body[middle:middle + 64] = bytes(64)  # inside a stored PNG: its CRC no longer matches
    server.files["/v.zip"] = bytes(body)
    out = tmp_path / "vimeo"
    assert fetch("--url", server.url("/v.zip"), "--output", str(out)) == 2
    stderr = capsys.readouterr().err
    err = error_lines(stderr)
    assert len(err) == 1 and "corrupt" in err[0] and "v.zip" in err[0]
    assert "Traceback" not in stderr
    assert leftovers(out) == []  # no half-extracted tree, no marker, bad archive deleted


def test_entry_escaping_the_folder_is_refused(server, tmp_path, capsys):
    server.files["/evil.zip"] = vimeo_zip(extra={"vimeo_test_clean/../../escaped.txt": b"x"})
    out = tmp_path / "a" / "vimeo"
    assert fetch("--url", server.url("/evil.zip"), "--output", str(out)) == 2
    err = capsys.readouterr().err
    assert "unsafe archive entry" in err and "escaped.txt" in err
    assert not list(tmp_path.rglob("escaped.txt"))
    assert leftovers(out) == []


def test_checksum_and_size_are_verified(server, tmp_path, capsys):
    import hashlib

    body = vimeo_zip()
    server.files["/v.zip"] = body
    out = tmp_path / "vimeo"
    assert fetch("--url", server.url("/v.zip"), "--output", str(out), "--sha256", "0" * 64) == 2
    assert "SHA-256 does not match" in capsys.readouterr().err
    assert leftovers(out) == []
    assert fetch("--url", server.url("/v.zip"), "--output", str(out),
                 "--size", str(len(body) + 10), "--retries", "0") == 2
    assert "failed" in capsys.readouterr().err
    good = hashlib.sha256(body).hexdigest()
    assert fetch("--url", server.url("/v.zip"), "--output", str(out), "--sha256", good) == 0


def test_renumber_makes_the_originals_flat_copy(server, tmp_path):
    server.files["/v.zip"] = vimeo_zip()
    out = tmp_path / "vimeo"
    assert fetch("--url", server.url("/v.zip"), "--output", str(out), "--renumber") == 0
    assert (out / "HR" / "sep_trainlist.txt").read_text().split() == ["1", "2", "3"]
    for n in range(1, len(SEPTUPLETS) + 1):
        assert sorted(os.listdir(out / "HR" / str(n))) == [f"im{i}.png" for i in range(1, 8)]
    assert (out / "HR" / "3" / "im5.png").read_bytes() == png_bytes(10 * 2 + 5)
    assert not (out / "sequences").exists()


def test_http_error_is_one_line_without_retrying(server, tmp_path, capsys):
    assert fetch("--url", server.url("/missing.zip"), "--output", str(tmp_path / "v")) == 2
    assert "HTTP 404" in capsys.readouterr().err
    assert len(server.log) == 1


def test_existing_foreign_folder_is_not_overwritten(server, tmp_path, capsys):
    server.files["/v.zip"] = vimeo_zip()
    out = tmp_path / "vimeo"
    (out / "sequences").mkdir(parents=True)
    assert fetch("--url", server.url("/v.zip"), "--output", str(out)) == 2
    assert "move it away" in capsys.readouterr().err
    assert server.log == []


@pytest.fixture
def sleeps(monkeypatch):
    """The backoff delays ``download`` waits, recorded instead of slept."""
    delays: list[float] = []
    monkeypatch.setattr(DatasetFetcher.time, "sleep", delays.append)
    return delays


def test_unresolvable_host_fails_at_once(monkeypatch, tmp_path, capsys, sleeps):
    lookups = []

    def no_dns(host, *args, **kwargs):  # what an offline resolver says; the network is never used
        lookups.append(host)
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    out = tmp_path / "v"
    start = time.monotonic()
    assert fetch("--url", "http://no-such-host.invalid/x.zip", "--output", str(out),
                 "--backoff", "30") == 2
    elapsed = time.monotonic() - start
    stderr = capsys.readouterr().err
    err = error_lines(stderr)
    assert len(err) == 1 and "Traceback" not in stderr
    assert "http://no-such-host.invalid/x.zip" in err[0]
    assert "cannot resolve host 'no-such-host.invalid'" in err[0] and "not retried" in err[0]
    assert lookups == ["no-such-host.invalid"]  # looked up once, never again
    assert sleeps == [] and elapsed < 2
    assert not (out / "x.zip").exists()


def test_refused_connection_fails_at_once(tmp_path, capsys, sleeps):
    with socket.socket() as probe:  # a loopback port that nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/x.zip"
    start = time.monotonic()
    assert fetch("--url", url, "--output", str(tmp_path / "v"), "--backoff", "30") == 2
    elapsed = time.monotonic() - start
    stderr = capsys.readouterr().err
    err = error_lines(stderr)
    assert len(err) == 1 and "Traceback" not in stderr
    assert url in err[0]
    assert f"connection refused by 127.0.0.1:{port}" in err[0] and "not retried" in err[0]
    assert sleeps == [] and elapsed < 2


def test_dropped_transfer_is_retried_after_backoff_and_resumed(server, tmp_path, capsys,
                                                               sleeps):
    body = vimeo_zip()
    server.files["/v.zip"] = body
    server.drop.add("/v.zip")
    out = tmp_path / "v"
    out.mkdir()
    assert fetch("--url", server.url("/v.zip"), "--output", str(out), "--backoff", "30",
                 "--keep_archive") == 0
    assert sleeps == [30]  # waited the backoff once, then resumed where the transfer stopped
    assert server.log == [("/v.zip", None), ("/v.zip", f"bytes={len(body) // 2}-")]
    assert (out / "v.zip").read_bytes() == body
    assert "retrying in 30 s" in capsys.readouterr().out  # tqdm.write prints to stdout


def test_short_transfer_backs_off_then_gives_up(server, tmp_path, capsys, sleeps):
    body = vimeo_zip()
    server.files["/v.zip"] = body
    out = tmp_path / "v"
    # the size is never reached: the first attempt makes progress (the backoff starts over),
    # then every attempt fails without progress, doubling the wait until it gives up
    assert fetch("--url", server.url("/v.zip"), "--output", str(out), "--size",
                 str(len(body) + 10), "--retries", "2", "--backoff", "30") == 2
    assert sleeps == [30, 30, 60]
    err = error_lines(capsys.readouterr().err)
    assert len(err) == 1 and "failed 3 times in a row" in err[0]
