"""One object-store interface over a local folder and S3, for the data root and the lake.

Keys are '/'-separated, relative to the store root, and listed in S3's UTF-8 byte order.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import shutil
import stat
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# boto3 itself (0.15 s to import) only when an S3 store makes its client: the command line and
# the ingest workers on a local data root never need it.
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    ReadTimeoutError,
)

MAX_KEY_BYTES = 1024  # S3's limit; enforced locally too so both stores accept the same keys
_COPY_BUFFER = 1 << 20
_S3_PAGE = 1000


@dataclass(frozen=True)
class ObjectInfo:
    """One stored object: its key, size in bytes and a version that changes on every rewrite."""

    key: str
    size: int
    version: str


class StorageError(RuntimeError):
    """A store operation failed; the message names the URI and what went wrong."""


class ObjectNotFound(StorageError, KeyError):
    """The key does not exist in the store."""

    def __str__(self) -> str:
        # KeyError.__str__ would repr() the message and wrap it in quotes.
        return str(self.args[0]) if self.args else ""


def validate_key(key: str) -> str:
    """Return `key` if it is a safe object key, else raise ValueError saying why.

    Refused: empty, absolute, backslashes, control characters, empty / '.' / '..' segments,
    a trailing '/', segments starting with '.' (hidden files are not objects: local listings
    skip them, so allowing them would make stores disagree), and keys over 1024 UTF-8 bytes.
    """
    if not isinstance(key, str):
        raise ValueError(f"invalid storage key {key!r}: must be a str, got {type(key).__name__}")
    reason = _key_problem(key)
    if reason is not None:
        raise ValueError(f"invalid storage key {key!r}: {reason}")
    return key


def _key_problem(key: str) -> str | None:
    if not key:
        return "empty key"
    if key.startswith("/"):
        return "absolute keys are not allowed (leading '/')"
    if "\\" in key:
        return "backslashes are not allowed"
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in key):
        return "control characters are not allowed"
    if key.endswith("/"):
        return "trailing '/' is not allowed (keys name objects, not folders)"
    try:
        encoded = key.encode("utf-8")
    except UnicodeEncodeError:
        return "not encodable as UTF-8"
    if len(encoded) > MAX_KEY_BYTES:
        return f"longer than {MAX_KEY_BYTES} UTF-8 bytes"
    for segment in key.split("/"):
        if segment == "":
            return "empty path segment ('//')"
        if segment in (".", ".."):
            return f"'{segment}' path segments are not allowed"
        if segment.startswith("."):
            return f"segment {segment!r} starts with '.' (hidden names are not objects)"
    return None


def _validate_prefix(prefix: str) -> str:
    """A listing prefix is '' or a key, maybe ending in '/'; its last segment may be partial."""
    if prefix == "":
        return prefix
    validate_key(prefix[:-1] if prefix.endswith("/") else prefix)
    return prefix


def _split_prefix(prefix: str) -> tuple[str, str]:
    """'a/b/c' -> ('a/b/', 'c'): the folder to scan and the name prefix to match inside it."""
    head, sep, tail = prefix.rpartition("/")
    return head + sep, tail


class Store(ABC):
    """An object store rooted at `uri`; every method validates its key with `validate_key`."""

    uri: str

    @abstractmethod
    def url(self, key: str) -> str:
        """Full location of `key` for messages and metadata."""

    @abstractmethod
    def read_bytes(self, key: str) -> bytes:
        """The object's content; ObjectNotFound when missing."""

    def read_view(self, key: str) -> bytes | memoryview:
        """The object's content for a reader that may use only part of it (an Arrow file whose
        reader takes a few columns): memory-mapped where the store allows, so only the pages
        read are loaded; else ``read_bytes``. The view stays valid after the object is
        replaced (the old file stays mapped)."""
        return self.read_bytes(key)

    @abstractmethod
    def write_bytes(self, key: str, data: bytes | memoryview) -> ObjectInfo:
        """Store `data` atomically: readers see the old object or the whole new one."""

    @abstractmethod
    def upload_file(self, key: str, path: str | os.PathLike[str]) -> ObjectInfo:
        """Store the file at `path` atomically, streaming it rather than reading it whole."""

    @abstractmethod
    def info(self, key: str) -> ObjectInfo | None:
        """The object's info, or None when it does not exist."""

    def exists(self, key: str) -> bool:
        return self.info(key) is not None

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove the object; a missing key is not an error."""

    @abstractmethod
    def list(
        self, prefix: str = "", *, start_after: str | None = None, limit: int | None = None
    ) -> Iterator[ObjectInfo]:
        """Objects whose key starts with `prefix` and is > `start_after`, in UTF-8 byte order.

        Lazy, and its cost grows with what is returned, not with the size of the store.
        """

    @abstractmethod
    def list_prefixes(self, prefix: str = "", *, start_after: str | None = None) -> list[str]:
        """Immediate sub-folders under `prefix` that hold objects, as keys ending in '/'."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.uri!r})"


class LocalStore(Store):
    """Objects as files under a local folder (created on first write).

    Names starting with '.' are not objects (temp files of in-flight writes are named that
    way). Directory symlinks are not followed while listing. A key cannot be both an object
    and a folder here ('a' and 'a/b'), unlike S3.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = os.path.abspath(os.fspath(root))
        self.uri = self.root

    def _path(self, key: str) -> str:
        return os.path.join(self.root, *validate_key(key).split("/"))

    def url(self, key: str) -> str:
        return self._path(key)

    def _error(self, what: str, key: str, exc: OSError) -> StorageError:
        return StorageError(f"local store {self.uri}: {what} {key!r} failed: {exc}")

    def read_bytes(self, key: str) -> bytes:
        path = self._path(key)
        try:
            with open(path, "rb") as f:
                return f.read()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError) as e:
            raise ObjectNotFound(f"no object {key!r} in {self.uri}") from e
        except OSError as e:
            raise self._error("read", key, e) from e

    def read_view(self, key: str) -> bytes | memoryview:
        path = self._path(key)
        try:
            with open(path, "rb") as f:
                if os.fstat(f.fileno()).st_size == 0:
                    return b""  # an empty file cannot be mapped
                return memoryview(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ))
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError) as e:
            raise ObjectNotFound(f"no object {key!r} in {self.uri}") from e
        except OSError as e:
            raise self._error("read", key, e) from e

    def write_bytes(self, key: str, data: bytes | memoryview) -> ObjectInfo:
        path = self._path(key)
        return self._atomic_write(key, path, lambda f: f.write(data))

    def upload_file(self, key: str, path: str | os.PathLike[str]) -> ObjectInfo:
        dest = self._path(key)
        # Opened outside the wrapper: a missing source is the caller's FileNotFoundError.
        with open(path, "rb") as src:
            return self._atomic_write(key, dest, lambda f: shutil.copyfileobj(src, f, _COPY_BUFFER))

    def _atomic_write(self, key: str, path: str, write: Any) -> ObjectInfo:
        directory, name = os.path.split(path)
        tmp = os.path.join(directory, f".{name}.tmp-{uuid.uuid4().hex}")
        try:
            os.makedirs(directory, exist_ok=True)
            # Atomic by rename: readers see the old object or the new one, never a part. No
            # fsync: durability of the newest writes across a power cut is the filesystem's
            # (ext4 flushes a file replaced by rename), and fsync cost about 7 % of ingest time.
            with open(tmp, "wb") as f:
                write(f)
            self._ensure_new_version(tmp, path)
            os.replace(tmp, path)
            st = os.stat(path)
        except BaseException as e:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            if isinstance(e, OSError):
                raise self._error("write", key, e) from e
            raise
        return ObjectInfo(key, st.st_size, _local_version(st))

    @staticmethod
    def _ensure_new_version(tmp: str, path: str) -> None:
        # On coarse-timestamp filesystems a same-size rewrite could keep size and mtime_ns,
        # hiding the change from anyone comparing versions; bump mtime past the old one.
        try:
            old = os.stat(path)
        except OSError:
            return
        new = os.stat(tmp)
        if old.st_size == new.st_size and new.st_mtime_ns <= old.st_mtime_ns:
            os.utime(tmp, ns=(new.st_atime_ns, old.st_mtime_ns + 1))

    def info(self, key: str) -> ObjectInfo | None:
        path = self._path(key)
        try:
            st = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as e:
            raise self._error("stat", key, e) from e
        if not stat.S_ISREG(st.st_mode):
            return None
        return ObjectInfo(key, st.st_size, _local_version(st))

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            os.unlink(path)
        except (FileNotFoundError, NotADirectoryError):
            return
        except OSError as e:
            raise self._error("delete", key, e) from e
        # S3 has no empty folders; remove the ones this delete left so list_prefixes agrees.
        parent = os.path.dirname(path)
        while parent != self.root and parent.startswith(self.root + os.sep):
            try:
                os.rmdir(parent)
            except OSError:
                break
            parent = os.path.dirname(parent)

    def _scan(self, key_dir: str, name_prefix: str) -> list[tuple[str, bool]]:
        """Sorted (name + '/' for folders, is_dir) of the listable entries of `key_dir`."""
        path = os.path.join(self.root, *key_dir.split("/")[:-1]) if key_dir else self.root
        try:
            with os.scandir(path) as it:
                entries = []
                for entry in it:
                    name = entry.name
                    if not name.startswith(name_prefix) or _key_problem(name) is not None:
                        continue
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            entries.append((name + "/", True))
                        elif entry.is_file():
                            entries.append((name, False))
                    except OSError:
                        continue  # vanished or unreadable mid-scan: not an object now
        except (FileNotFoundError, NotADirectoryError):
            return []
        except OSError as e:
            raise StorageError(f"local store {self.uri}: listing {path} failed: {e}") from e
        # Sorting name + '/' for folders gives the global key order: 'a-b/x' < 'a/x'.
        # Python compares str by code point, which is the same order as UTF-8 bytes.
        entries.sort()
        return entries

    def _walk(
        self, key_dir: str, name_prefix: str, start_after: str | None
    ) -> Iterator[ObjectInfo]:
        for sort_name, is_dir in self._scan(key_dir, name_prefix):
            key = key_dir + sort_name
            if is_dir:
                # Everything under key sorts before start_after unless start_after is inside it.
                if (
                    start_after is not None
                    and key < start_after
                    and not start_after.startswith(key)
                ):
                    continue
                yield from self._walk(key, "", start_after)
                continue
            if start_after is not None and key <= start_after:
                continue
            try:
                st = os.stat(os.path.join(self.root, *key.split("/")))
            except OSError:
                continue  # deleted between scan and stat
            yield ObjectInfo(key, st.st_size, _local_version(st))

    def list(
        self, prefix: str = "", *, start_after: str | None = None, limit: int | None = None
    ) -> Iterator[ObjectInfo]:
        key_dir, name_prefix = _split_prefix(_validate_prefix(prefix))
        if limit is not None and limit <= 0:
            return
        for count, item in enumerate(self._walk(key_dir, name_prefix, start_after), start=1):
            yield item
            if limit is not None and count >= limit:
                return

    def list_prefixes(self, prefix: str = "", *, start_after: str | None = None) -> list[str]:
        key_dir, name_prefix = _split_prefix(_validate_prefix(prefix))
        found = []
        for sort_name, is_dir in self._scan(key_dir, name_prefix):
            sub = key_dir + sort_name
            if not is_dir or (start_after is not None and sub <= start_after):
                continue
            # Like S3, a folder counts only when it holds an object; stops at the first one.
            if next(self._walk(sub, "", None), None) is not None:
                found.append(sub)
        return found


def _local_version(st: os.stat_result) -> str:
    return f"{st.st_size}-{st.st_mtime_ns}"


def _s3_client(endpoint_url: str | None) -> Any:
    import boto3
    from botocore.config import Config

    config = Config(
        retries={"max_attempts": 5, "mode": "standard"}, connect_timeout=5, read_timeout=60
    )
    # A fresh session per client: boto3's default session is not thread-safe to build from.
    return boto3.session.Session().client("s3", endpoint_url=endpoint_url, config=config)


class S3Store(Store):
    """Objects in an S3 bucket under `prefix`; PutObject and completed uploads are atomic.

    The boto3 client is created on first use and dropped when pickled, so the store can be
    sent to worker processes; a client passed in is not pickled (the copy builds its own from
    `endpoint_url`).
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        client: Any = None,
    ) -> None:
        if not bucket or "/" in bucket:
            raise ValueError(f"invalid S3 bucket name {bucket!r}")
        prefix = prefix.strip("/")
        if prefix:
            validate_key(prefix)
        self.bucket = bucket
        self.prefix = prefix
        self.endpoint_url = endpoint_url
        self._root = prefix + "/" if prefix else ""
        self._client = client
        self._bucket_checked = False
        self.uri = f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = _s3_client(self.endpoint_url)
        return self._client

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_client"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def _full(self, key: str) -> str:
        return self._root + validate_key(key)

    def url(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._full(key)}"

    def _where(self) -> str:
        endpoint = self.endpoint_url or getattr(
            getattr(self._client, "meta", None), "endpoint_url", None
        )
        return f"{self.uri} (endpoint {endpoint})" if endpoint else self.uri

    def _translate(self, exc: Exception, what: str, key: str | None = None) -> StorageError:
        target = self.url(key) if key is not None else self.uri
        if isinstance(exc, ClientError):
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            message = error.get("Message", "") or str(exc)
            if code in ("NoSuchKey", "404") and key is not None:
                return ObjectNotFound(f"no object at {target}")
            if code == "NoSuchBucket":
                return StorageError(f"{what} {target}: bucket {self.bucket!r} does not exist")
            if code in ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
                return StorageError(f"{what} {target}: access denied ({code}: {message})")
            return StorageError(f"{what} {target} failed: {code}: {message}")
        if isinstance(exc, EndpointConnectionError | ConnectTimeoutError):
            return StorageError(
                f"{what} {target}: S3 endpoint unreachable ({self._where()}): {exc}"
            )
        if isinstance(exc, ReadTimeoutError):
            return StorageError(f"{what} {target}: S3 endpoint timed out ({self._where()}): {exc}")
        if isinstance(exc, NoCredentialsError):
            return StorageError(f"{what} {target}: no AWS credentials found: {exc}")
        return StorageError(f"{what} {target} failed: {exc}")

    def read_bytes(self, key: str) -> bytes:
        full = self._full(key)
        try:
            return self.client.get_object(Bucket=self.bucket, Key=full)["Body"].read()
        except (ClientError, BotoCoreError) as e:
            raise self._translate(e, "reading", key) from e

    def write_bytes(self, key: str, data: bytes | memoryview) -> ObjectInfo:
        full = self._full(key)
        body = bytes(data) if isinstance(data, memoryview) else data
        try:
            response = self.client.put_object(Bucket=self.bucket, Key=full, Body=body)
        except (ClientError, BotoCoreError) as e:
            raise self._translate(e, "writing", key) from e
        return ObjectInfo(key, len(body), _etag(response["ETag"]))

    def upload_file(self, key: str, path: str | os.PathLike[str]) -> ObjectInfo:
        full = self._full(key)
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"cannot upload {path} to {self.url(key)}: no such file")
        client = self.client
        from boto3.exceptions import S3UploadFailedError  # imported with the client's boto3

        try:
            client.upload_file(path, self.bucket, full)
        except (ClientError, BotoCoreError) as e:
            raise self._translate(e, "uploading to", key) from e
        except S3UploadFailedError as e:
            raise StorageError(f"uploading {path} to {self.url(key)} failed: {e}") from e
        info = self.info(key)
        if info is None:
            raise StorageError(f"uploaded {path} to {self.url(key)} but it is not there")
        return info

    def info(self, key: str) -> ObjectInfo | None:
        full = self._full(key)
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=full)
        except ClientError as e:
            if str(e.response.get("Error", {}).get("Code")) in ("404", "NoSuchKey"):
                # HEAD answers 404 for a missing bucket too; make sure that is not the case.
                self._check_bucket()
                return None
            raise self._translate(e, "reading info of", key) from e
        except BotoCoreError as e:
            raise self._translate(e, "reading info of", key) from e
        self._bucket_checked = True
        return ObjectInfo(key, int(head["ContentLength"]), _etag(head["ETag"]))

    def _check_bucket(self) -> None:
        if self._bucket_checked:
            return
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError as e:
            if str(e.response.get("Error", {}).get("Code")) in ("404", "NoSuchBucket"):
                raise StorageError(f"{self.uri}: bucket {self.bucket!r} does not exist") from e
            raise self._translate(e, "checking bucket of") from e
        except BotoCoreError as e:
            raise self._translate(e, "checking bucket of") from e
        self._bucket_checked = True

    def delete(self, key: str) -> None:
        full = self._full(key)
        try:
            self.client.delete_object(Bucket=self.bucket, Key=full)
        except (ClientError, BotoCoreError) as e:
            raise self._translate(e, "deleting", key) from e

    def _pages(self, prefix: str, start_after: str | None, **extra: Any) -> Iterator[dict]:
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": self._root + prefix, **extra}
        if start_after is not None:
            kwargs["StartAfter"] = self._root + start_after
        while True:
            try:
                response = self.client.list_objects_v2(**kwargs)
            except (ClientError, BotoCoreError) as e:
                raise self._translate(e, "listing") from e
            self._bucket_checked = True
            yield response
            if not response.get("IsTruncated"):
                return
            kwargs["ContinuationToken"] = response["NextContinuationToken"]

    def list(
        self, prefix: str = "", *, start_after: str | None = None, limit: int | None = None
    ) -> Iterator[ObjectInfo]:
        _validate_prefix(prefix)
        if limit is not None and limit <= 0:
            return
        page = _S3_PAGE if limit is None else min(_S3_PAGE, limit)
        count = 0
        for response in self._pages(prefix, start_after, MaxKeys=page):
            for obj in response.get("Contents", []):
                key = obj["Key"][len(self._root) :]
                # Folder markers ('x/') and keys the local store could not hold are skipped.
                if _key_problem(key) is not None:
                    continue
                yield ObjectInfo(key, int(obj["Size"]), _etag(obj["ETag"]))
                count += 1
                if limit is not None and count >= limit:
                    return

    def list_prefixes(self, prefix: str = "", *, start_after: str | None = None) -> list[str]:
        _validate_prefix(prefix)
        found = []
        for response in self._pages(prefix, start_after, Delimiter="/"):
            for common in response.get("CommonPrefixes", []):
                sub = common["Prefix"][len(self._root) :]
                if _key_problem(sub[:-1]) is not None:
                    continue
                if start_after is None or sub > start_after:
                    found.append(sub)
        return sorted(found)


def _etag(raw: str) -> str:
    return raw.strip('"')


def open_store(uri: str, *, endpoint_url: str | None = None) -> Store:
    """'s3://bucket/prefix' -> S3Store, anything else -> LocalStore on the resolved path.

    Without `endpoint_url` (Settings.s3_endpoint_url), boto3's own resolution applies (AWS, or
    AWS_ENDPOINT_URL_S3).
    """
    if uri.startswith("s3://"):
        bucket, _, prefix = uri[len("s3://") :].partition("/")
        if not bucket:
            raise ValueError(f"S3 URI {uri!r} has no bucket (expected s3://bucket/prefix)")
        return S3Store(bucket, prefix, endpoint_url=endpoint_url or None)
    return LocalStore(Path(uri).expanduser().resolve())
