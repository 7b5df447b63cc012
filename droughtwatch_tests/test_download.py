"""Resumable, verified archive download against a real local HTTP server, then unpacking."""

from __future__ import annotations

import hashlib
import io
import logging
import re
import socket
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import BinaryIO

import pytest

from droughtwatch_assets.adapters.download import (
    BENCHMARK_URL,
    DownloadError,
    benchmark_key,
    download_archive,
    iter_benchmark_members,
    unpack_archive,
)

SHARD_MEMBER = "droughtwatch_data/train/part-r-00012"


def build_archive(sample: bytes, *, top_folder: bool = True) -> bytes:
    """A small benchmark-shaped zip: one real shard plus the strays a loader must skip."""
    prefix = "droughtwatch_data/" if top_folder else ""
    buf = io.BytesIO()
    # Stored, not deflated: a flipped byte then fails the member's CRC, not the inflater.
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as archive:
        archive.writestr(f"{prefix}train/", b"")
        archive.writestr(f"{prefix}train/part-r-00012", sample)
        archive.writestr(f"{prefix}train/_SUCCESS", b"")
        archive.writestr(f"{prefix}train/part-r-00001.gstmp", b"half an upload")
        archive.writestr(f"{prefix}README.txt", b"Drought Watch benchmark")
        archive.writestr(f"{prefix}val/", b"")
    return buf.getvalue()


@pytest.fixture(scope="module")
def sample_bytes(sample_shard_path: Path) -> bytes:
    return sample_shard_path.read_bytes()


@pytest.fixture(scope="module")
def archive_bytes(sample_bytes: bytes) -> bytes:
    return build_archive(sample_bytes)


@dataclass
class ServerState:
    payload: bytes = b""
    mode: str = "normal"  # normal | drop_first | drop_always | ignore_range | missing
    drop_after: int = 0
    requests: list[dict[str, str]] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)


class ArchiveHandler(BaseHTTPRequestHandler):
    state: ServerState

    def log_message(self, format: str, *args: object) -> None:  # keep pytest output clean
        pass

    def do_GET(self) -> None:
        state = self.server.state  # type: ignore[attr-defined]
        state.requests.append(dict(self.headers.items()))
        if state.mode == "missing":
            return self._reply(404, b"not here", {})
        body, total = state.payload, len(state.payload)
        start = 0
        requested = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
        if requested and state.mode not in ("ignore_range", "drop_always"):
            start = int(requested.group(1))
            if start >= total:
                return self._reply(416, b"", {"Content-Range": f"bytes */{total}"})
            headers = {"Content-Range": f"bytes {start}-{total - 1}/{total}"}
            return self._reply(206, body[start:], headers)
        dropping = state.mode == "drop_always" or (
            state.mode == "drop_first" and len(state.requests) == 1
        )
        if dropping:
            # Announce the whole body, send part of it, hang up: a dropped connection.
            self.send_response(200)
            self.send_header("Content-Length", str(total))
            self.end_headers()
            self.wfile.write(body[: state.drop_after])
            self.wfile.flush()
            self.close_connection = True
            state.statuses.append(200)
            return None
        return self._reply(200, body, {})

    def do_HEAD(self) -> None:
        self.send_error(405)

    def _reply(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.server.state.statuses.append(status)  # type: ignore[attr-defined]
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def server(archive_bytes: bytes) -> Iterator[tuple[str, ServerState]]:
    """A real HTTP server on 127.0.0.1 serving the test archive at /dw.zip."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), ArchiveHandler)
    httpd.daemon_threads = True
    httpd.state = ServerState(payload=archive_bytes)  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/dw.zip", httpd.state  # type: ignore[attr-defined]
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def fetch(url: str, dest: Path, **kwargs) -> Path:
    kwargs.setdefault("progress", False)
    kwargs.setdefault("backoff", 0)
    kwargs.setdefault("timeout", 10)
    return download_archive(url, dest, **kwargs)


def part_of(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part")


def test_benchmark_url_is_the_public_archive() -> None:
    assert BENCHMARK_URL.endswith("/wandb_datasets/dw_train_86K_val_10K.zip")
    assert BENCHMARK_URL.startswith("https://storage.googleapis.com/")


def test_download_writes_verified_archive(server, tmp_path: Path, archive_bytes: bytes) -> None:
    url, state = server
    dest = tmp_path / "dw.zip"
    digest = hashlib.sha256(archive_bytes).hexdigest()
    assert fetch(url, dest, expected_sha256=digest) == dest
    assert dest.read_bytes() == archive_bytes
    assert not part_of(dest).exists()
    assert state.statuses == [200]


def test_existing_verified_dest_is_not_downloaded_again(
    server, tmp_path: Path, archive_bytes: bytes
) -> None:
    url, state = server
    dest = tmp_path / "dw.zip"
    dest.write_bytes(archive_bytes)
    assert fetch(url, dest) == dest
    assert state.requests == []


def test_existing_corrupt_dest_is_replaced(server, tmp_path: Path, archive_bytes: bytes) -> None:
    url, state = server
    dest = tmp_path / "dw.zip"
    dest.write_bytes(archive_bytes[:100])
    fetch(url, dest)
    assert dest.read_bytes() == archive_bytes
    assert len(state.requests) == 1


def test_dropped_connection_resumes_with_range(
    server, tmp_path: Path, archive_bytes: bytes
) -> None:
    url, state = server
    state.mode, state.drop_after = "drop_first", 5000
    dest = tmp_path / "dw.zip"
    fetch(url, dest, chunk_size=1024)
    assert len(state.requests) == 2
    assert "Range" not in state.requests[0]
    assert state.requests[1]["Range"] == "bytes=5000-"
    assert state.statuses == [200, 206]
    assert dest.read_bytes() == archive_bytes
    assert not part_of(dest).exists()


def test_existing_part_file_is_resumed(server, tmp_path: Path, archive_bytes: bytes) -> None:
    url, state = server
    dest = tmp_path / "dw.zip"
    part_of(dest).write_bytes(archive_bytes[:7777])
    fetch(url, dest)
    assert state.requests[0]["Range"] == "bytes=7777-"
    assert dest.read_bytes() == archive_bytes


def test_complete_part_file_gets_416_and_is_verified(
    server, tmp_path: Path, archive_bytes: bytes
) -> None:
    url, state = server
    dest = tmp_path / "dw.zip"
    part_of(dest).write_bytes(archive_bytes)
    fetch(url, dest)
    assert state.statuses == [416]
    assert dest.read_bytes() == archive_bytes


def test_server_ignoring_range_restarts_from_zero(
    server, tmp_path: Path, archive_bytes: bytes
) -> None:
    url, state = server
    state.mode = "ignore_range"
    dest = tmp_path / "dw.zip"
    # Wrong bytes in the partial file: appending to them would give a corrupt archive.
    part_of(dest).write_bytes(b"\xff" * 3000)
    fetch(url, dest)
    assert state.requests[0]["Range"] == "bytes=3000-"
    assert state.statuses == [200]
    assert dest.read_bytes() == archive_bytes


def test_corrupt_download_names_member_and_leaves_nothing(
    server, tmp_path: Path, archive_bytes: bytes
) -> None:
    url, state = server
    with zipfile.ZipFile(io.BytesIO(archive_bytes)) as archive:
        info = archive.getinfo(SHARD_MEMBER)
    data_start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    corrupt = bytearray(archive_bytes)
    corrupt[data_start + 1000] ^= 0xFF
    state.payload = bytes(corrupt)
    dest = tmp_path / "dw.zip"
    with pytest.raises(DownloadError) as caught:
        fetch(url, dest)
    message = str(caught.value)
    assert url in message
    assert SHARD_MEMBER in message and "corrupt" in message
    assert "CRC" in message
    assert not dest.exists() and not part_of(dest).exists()


def test_checksum_mismatch_is_reported_and_part_deleted(server, tmp_path: Path) -> None:
    url, _ = server
    dest = tmp_path / "dw.zip"
    with pytest.raises(DownloadError, match="sha256 mismatch: expected 0{64}") as caught:
        fetch(url, dest, expected_sha256="0" * 64)
    assert "deleted" in str(caught.value)
    assert not dest.exists() and not part_of(dest).exists()


def test_missing_archive_reports_http_status(server, tmp_path: Path) -> None:
    url, state = server
    state.mode = "missing"
    dest = tmp_path / "dw.zip"
    with pytest.raises(DownloadError, match="HTTP 404") as caught:
        fetch(url, dest)
    assert caught.value.url == url
    assert len(state.requests) == 1  # a 404 is final, not retried
    assert not dest.exists()


def test_gives_up_after_retries_and_keeps_part(server, tmp_path: Path) -> None:
    url, state = server
    state.mode, state.drop_after = "drop_always", 4000
    # The server drops every reply, ranged or not.
    dest = tmp_path / "dw.zip"
    with pytest.raises(DownloadError, match="giving up after 2 retries") as caught:
        fetch(url, dest, retries=2)
    assert "connection dropped" in str(caught.value)
    assert len(state.requests) == 3
    assert part_of(dest).exists()  # a good prefix is worth resuming later
    assert not dest.exists()


def test_unreachable_server_is_a_download_error(tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/dw.zip"
    with pytest.raises(DownloadError, match="cannot reach server"):
        fetch(url, tmp_path / "dw.zip", retries=1)


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("droughtwatch_data/train/part-r-00012", "train/part-r-00012"),
        ("droughtwatch_data/val/part-r-00000", "val/part-r-00000"),
        ("train/part-r-00003", "train/part-r-00003"),
        ("droughtwatch_data/train/part-r-00001.gstmp", None),
        ("droughtwatch_data/train/_SUCCESS", None),
        ("droughtwatch_data/test/part-r-00000", None),
        ("droughtwatch_data/README.txt", None),
        ("other/train/part-r-00000", None),
        ("droughtwatch_data/train/nested/part-r-00000", None),
    ],
)
def test_benchmark_key(name: str, key: str | None) -> None:
    assert benchmark_key(name) == key


@pytest.mark.parametrize("top_folder", [True, False])
def test_unpack_streams_only_shards(
    tmp_path: Path, sample_bytes: bytes, top_folder: bool, caplog: pytest.LogCaptureFixture
) -> None:
    zip_path = tmp_path / "dw.zip"
    zip_path.write_bytes(build_archive(sample_bytes, top_folder=top_folder))
    stored: dict[str, bytes] = {}

    def put(key: str, fileobj: BinaryIO) -> None:
        stored[key] = fileobj.read()

    with caplog.at_level(logging.INFO, logger="droughtwatch_assets.adapters.download"):
        keys = unpack_archive(zip_path, put, progress=False)
    assert keys == ["train/part-r-00012"]
    assert list(stored) == keys
    assert stored["train/part-r-00012"] == sample_bytes
    skipped = caplog.text
    for stray in ("_SUCCESS", "part-r-00001.gstmp", "README.txt"):
        assert stray in skipped


def test_iter_members_gives_zip_info(tmp_path: Path, sample_bytes: bytes) -> None:
    zip_path = tmp_path / "dw.zip"
    zip_path.write_bytes(build_archive(sample_bytes))
    members = list(iter_benchmark_members(zip_path))
    assert [key for key, _ in members] == ["train/part-r-00012"]
    assert members[0][1].filename == SHARD_MEMBER
    assert members[0][1].file_size == len(sample_bytes)


def test_downloaded_archive_unpacks_to_sample(server, tmp_path: Path, sample_bytes: bytes) -> None:
    url, _ = server
    zip_path = fetch(url, tmp_path / "dw.zip")
    out = tmp_path / "root"

    def put(key: str, fileobj: BinaryIO) -> None:
        target = out / key
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(fileobj.read())

    assert unpack_archive(zip_path, put, progress=False) == ["train/part-r-00012"]
    assert (out / "train" / "part-r-00012").read_bytes() == sample_bytes
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [
        "train/part-r-00012"
    ]


def test_cli_download_unpacks_into_an_s3_data_root(
    server, tmp_path: Path, sample_bytes: bytes, moto_endpoint: str, s3_bucket: str, monkeypatch
) -> None:
    """`droughtwatch download` end to end: local HTTP server -> archive -> S3 data root (moto)."""
    from droughtwatch_assets.adapters.storage import open_store
    from droughtwatch_assets.cli import main

    url, _ = server
    monkeypatch.setenv("DROUGHTWATCH_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DROUGHTWATCH_S3_ENDPOINT_URL", moto_endpoint)
    monkeypatch.setenv("DROUGHTWATCH_DATA_ROOT", f"s3://{s3_bucket}/data")
    assert main(["download", "--url", url]) == 0
    store = open_store(f"s3://{s3_bucket}/data", endpoint_url=moto_endpoint)
    assert [info.key for info in store.list("")] == ["train/part-r-00012"]
    assert store.read_bytes("train/part-r-00012") == sample_bytes
    assert (tmp_path / "home" / "downloads" / "dw.zip").is_file()
