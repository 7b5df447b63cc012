"""Fetch the public Drought Watch benchmark archive (resumable, verified) and unpack its shards.

Stdlib HTTP and zip only; where the shards go is the caller's business (a `put` callback).
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import re
import time
import zipfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath
from typing import BinaryIO
from urllib.error import HTTPError, URLError
from urllib.request import Request, urlopen

from tqdm import tqdm

logger = logging.getLogger(__name__)

BENCHMARK_URL = "https://storage.googleapis.com/wandb_datasets/dw_train_86K_val_10K.zip"
ARCHIVE_TOP_FOLDER = "droughtwatch_data"
SPLITS = ("train", "val")

# Server-side trouble worth another try; any other HTTP status is final.
_RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


class DownloadError(RuntimeError):
    """A download that cannot complete or does not verify; names the URL and the reason."""

    def __init__(self, url: str, reason: str) -> None:
        self.url = url
        self.reason = reason
        super().__init__(f"download of {url} failed: {reason}")


class _Interrupted(Exception):
    """The connection ended early; the partial file is good and can be resumed."""


def download_archive(
    url: str,
    dest: Path,
    *,
    expected_sha256: str | None = None,
    chunk_size: int = 1 << 20,
    progress: bool = True,
    timeout: float = 60,
    retries: int = 3,
    backoff: float = 1.0,
) -> Path:
    """Download `url` to `dest`, resuming `dest.part` and verifying before the final rename.

    Verification: byte count against the server's size, the zip directory and every member's
    CRC, and `expected_sha256` when given. A dropped connection is resumed with a Range request
    up to `retries` times (waiting `backoff` x attempt seconds). A file that fails verification
    is deleted, since resuming it cannot give a good archive. An existing `dest` that verifies
    is returned untouched.
    """
    dest = Path(dest)
    part = dest.with_suffix(dest.suffix + ".part")
    if dest.exists():
        problem = _archive_problem(dest, expected_sha256)
        if problem is None:
            logger.info("%s already present and verified", dest)
            return dest
        logger.warning("%s exists but does not verify (%s); downloading again", dest, problem)
    dest.parent.mkdir(parents=True, exist_ok=True)

    failures = 0
    while True:
        try:
            _fetch_into(url, part, chunk_size=chunk_size, progress=progress, timeout=timeout)
            break
        except (_Interrupted, http.client.HTTPException, TimeoutError, ConnectionError) as exc:
            reason = f"connection dropped ({exc or type(exc).__name__})"
        except HTTPError as exc:
            if exc.code not in _RETRYABLE_STATUS:
                raise DownloadError(url, f"HTTP {exc.code} {exc.reason}") from exc
            reason = f"HTTP {exc.code} {exc.reason}"
        except URLError as exc:
            reason = f"cannot reach server ({exc.reason})"
        failures += 1
        if failures > retries:
            kept = f"; kept {part} to resume later" if part.exists() else ""
            raise DownloadError(url, f"{reason}, giving up after {retries} retries{kept}")
        have = part.stat().st_size if part.exists() else 0
        logger.warning("%s: %s; retry %d of %d from byte %d", url, reason, failures, retries, have)
        time.sleep(backoff * failures)

    problem = _archive_problem(part, expected_sha256)
    if problem is not None:
        part.unlink(missing_ok=True)
        raise DownloadError(
            url, f"{problem}; deleted {part} (it cannot be resumed into a good file)"
        )
    part.replace(dest)  # atomic on one filesystem: dest is either absent or complete
    return dest


def _fetch_into(url: str, part: Path, *, chunk_size: int, progress: bool, timeout: float) -> None:
    """Bring `part` up to the full size of `url`, resuming what it already holds."""
    offset = part.stat().st_size if part.exists() else 0
    request = Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
    try:
        response = urlopen(request, timeout=timeout)
    except HTTPError as exc:
        if exc.code == 416 and offset:
            _check_range_not_satisfiable(url, part, offset, exc.headers.get("Content-Range"))
            return
        raise

    with response:
        if response.status == 206 and offset:
            total = _resumed_total(url, part, offset, response.headers.get("Content-Range"))
            mode = "ab"
        elif response.status == 200:
            if offset:
                logger.info("%s ignored the Range request; restarting from byte 0", url)
            offset, mode = 0, "wb"
            length = response.headers.get("Content-Length")
            total = int(length) if length is not None else None
        else:
            raise DownloadError(url, f"unexpected HTTP {response.status} {response.reason}")

        with (
            part.open(mode) as out,
            tqdm(
                total=total,
                initial=offset,
                unit="B",
                unit_scale=True,
                desc=part.name,
                disable=not progress,
            ) as bar,
        ):
            while chunk := response.read(chunk_size):
                out.write(chunk)
                bar.update(len(chunk))

    size = part.stat().st_size
    if total is not None and size < total:
        # urllib returns b"" rather than raising when the peer closes early.
        raise _Interrupted(f"got {size} of {total} bytes")
    if total is not None and size > total:
        part.unlink()
        raise DownloadError(url, f"size mismatch: wrote {size} bytes, server announced {total}")


def _resumed_total(url: str, part: Path, offset: int, content_range: str | None) -> int | None:
    match = _CONTENT_RANGE.fullmatch((content_range or "").strip())
    if match is None or int(match.group(1)) != offset:
        # Appending a range that does not start where the file ends would corrupt it.
        part.unlink()
        raise _Interrupted(
            f"206 reply with Content-Range {content_range!r} does not resume at byte {offset}; "
            "restarting from zero"
        )
    return None if match.group(3) == "*" else int(match.group(3))


def _check_range_not_satisfiable(
    url: str, part: Path, offset: int, content_range: str | None
) -> None:
    """416 to `bytes=offset-`: the file is complete, unless the server says it is shorter."""
    match = re.fullmatch(r"bytes \*/(\d+)", (content_range or "").strip())
    if match is not None and int(match.group(1)) != offset:
        part.unlink()
        raise DownloadError(
            url,
            f"size mismatch: partial file {part} has {offset} bytes but the server's file has "
            f"{match.group(1)}; deleted it",
        )


def _archive_problem(path: Path, expected_sha256: str | None) -> str | None:
    """Why `path` is not a good archive (corrupt zip, bad member CRC, checksum), or None."""
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                try:
                    with archive.open(info) as member:
                        # Reading to the end makes zipfile compare the member's CRC.
                        while member.read(1 << 20):
                            pass
                except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as exc:
                    return f"corrupt zip member {info.filename!r}: {exc}"
    except zipfile.BadZipFile as exc:
        return f"not a readable zip archive ({exc})"
    if expected_sha256 is not None:
        digest = hashlib.sha256()
        with path.open("rb") as fh:
            while block := fh.read(1 << 20):
                digest.update(block)
        if digest.hexdigest() != expected_sha256.lower():
            return f"sha256 mismatch: expected {expected_sha256.lower()}, got {digest.hexdigest()}"
    return None


def benchmark_key(member_name: str) -> str | None:
    """`droughtwatch_data/train/part-r-00012` (or `train/part-r-00012`) -> `train/part-r-00012`.

    None for anything a benchmark loader would not read: other folders, names not starting
    with `part-`, and `*gstmp` upload leftovers.
    """
    parts = PurePosixPath(member_name).parts
    if parts[:1] == (ARCHIVE_TOP_FOLDER,):
        parts = parts[1:]
    if len(parts) != 2 or parts[0] not in SPLITS:
        return None
    name = parts[1]
    if not name.startswith("part-") or name.endswith("gstmp"):
        return None
    return f"{parts[0]}/{name}"


def iter_benchmark_members(zip_path: Path) -> Iterator[tuple[str, zipfile.ZipInfo]]:
    """Yield (key, member info) for every train/val shard in the archive, logging each skip."""
    with zipfile.ZipFile(zip_path) as archive:
        members = archive.infolist()
    seen: set[str] = set()
    for info in members:
        if info.is_dir():
            continue
        key = benchmark_key(info.filename)
        if key is None:
            logger.info("skipping %s: not a train/val part- shard", info.filename)
            continue
        if key in seen:
            logger.info("skipping %s: a member already gave key %s", info.filename, key)
            continue
        seen.add(key)
        yield key, info


def unpack_archive(
    zip_path: Path, put: Callable[[str, BinaryIO], None], *, progress: bool = True
) -> list[str]:
    """Stream every benchmark shard through `put(key, fileobj)`; return the keys written.

    `put` stores the stream wherever it likes (a local folder, S3). zipfile checks each
    member's CRC when `put` reads it to the end.
    """
    members = list(iter_benchmark_members(zip_path))
    written: list[str] = []
    with (
        zipfile.ZipFile(zip_path) as archive,
        tqdm(
            total=sum(info.file_size for _, info in members),
            unit="B",
            unit_scale=True,
            desc="unpack",
            disable=not progress,
        ) as bar,
    ):
        for key, info in members:
            with archive.open(info) as member:
                put(key, member)
            written.append(key)
            bar.update(info.file_size)
    return written
