"""Tests of the storage layer on a local folder and on a real S3 endpoint (moto server)."""

from __future__ import annotations

import os
import pickle
import socket
from pathlib import Path
from types import SimpleNamespace

import boto3
import botocore.endpoint
import pytest
from botocore.config import Config

from droughtwatch_assets.adapters import storage
from droughtwatch_assets.adapters.storage import (
    LocalStore,
    ObjectInfo,
    ObjectNotFound,
    S3Store,
    StorageError,
    Store,
    open_store,
    validate_key,
)


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    if request.param == "local":
        return LocalStore(tmp_path / "lake")
    endpoint = request.getfixturevalue("moto_endpoint")
    bucket = request.getfixturevalue("s3_bucket")
    return S3Store(bucket, "data/root", endpoint_url=endpoint)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def keys(items) -> list[str]:
    return [i.key for i in items]


# --- round trip -------------------------------------------------------------------------------


def test_write_read_info_exists_delete_round_trip(store: Store) -> None:
    assert store.info("2024-08-07/part-r-00000") is None
    assert not store.exists("2024-08-07/part-r-00000")

    written = store.write_bytes("2024-08-07/part-r-00000", b"hello shard")
    assert written.key == "2024-08-07/part-r-00000"
    assert written.size == 11
    assert store.read_bytes("2024-08-07/part-r-00000") == b"hello shard"
    assert store.info("2024-08-07/part-r-00000") == written
    assert store.exists("2024-08-07/part-r-00000")

    store.write_bytes("m.bin", memoryview(b"\x00\x01\x02"))
    assert store.read_bytes("m.bin") == b"\x00\x01\x02"

    store.delete("2024-08-07/part-r-00000")
    store.delete("2024-08-07/part-r-00000")  # a missing key is fine
    assert not store.exists("2024-08-07/part-r-00000")
    with pytest.raises(ObjectNotFound, match="2024-08-07/part-r-00000") as caught:
        store.read_bytes("2024-08-07/part-r-00000")
    assert isinstance(caught.value, KeyError) and isinstance(caught.value, StorageError)
    # The emptied folder is gone from the listing on both stores.
    assert store.list_prefixes() == []
    assert keys(store.list()) == ["m.bin"]


def test_read_view_gives_the_bytes_and_survives_a_rewrite(store: Store) -> None:
    store.write_bytes("a/part-r-00000", b"first content")
    view = store.read_view("a/part-r-00000")
    if isinstance(store, LocalStore):
        assert isinstance(view, memoryview)  # memory-mapped, not read
    store.write_bytes("a/part-r-00000", b"second, longer content")  # atomic replace
    assert bytes(view) == b"first content"  # the old object, still mapped
    assert bytes(store.read_view("a/part-r-00000")) == b"second, longer content"
    store.write_bytes("empty", b"")
    assert bytes(store.read_view("empty")) == b""
    with pytest.raises(ObjectNotFound, match="missing"):
        store.read_view("missing")


def test_version_changes_when_rewritten(store: Store) -> None:
    first = store.write_bytes("k/obj", b"version one")
    second = store.write_bytes("k/obj", b"version two, longer")
    assert first.version != second.version
    assert store.info("k/obj") == second
    # Same size, different content: still a new version.
    third = store.write_bytes("k/obj", b"version two, LONGER")
    assert third.version != second.version
    assert store.read_bytes("k/obj") == b"version two, LONGER"


def test_upload_file_streams_and_reports_info(store: Store, tmp_path: Path) -> None:
    source = tmp_path / "source.bin"
    payload = os.urandom(300_000)
    source.write_bytes(payload)
    info = store.upload_file("up/source.bin", source)
    assert info.size == len(payload)
    assert store.info("up/source.bin") == info
    assert store.read_bytes("up/source.bin") == payload
    with pytest.raises(FileNotFoundError):
        store.upload_file("up/missing", tmp_path / "missing.bin")


def test_url_names_the_full_location(tmp_path: Path) -> None:
    assert S3Store("b", "data/root").url("x/y") == "s3://b/data/root/x/y"
    assert S3Store("b").url("x") == "s3://b/x"
    assert S3Store("b", "data/root/").uri == "s3://b/data/root"
    assert LocalStore(tmp_path).url("x/y") == str(tmp_path / "x" / "y")


def test_s3_keys_are_relative_to_the_prefix(moto_endpoint: str, s3_bucket: str) -> None:
    store = S3Store(s3_bucket, "data/root", endpoint_url=moto_endpoint)
    store.write_bytes("a/b", b"x")
    raw = boto3.client("s3", endpoint_url=moto_endpoint)
    listed = raw.list_objects_v2(Bucket=s3_bucket)["Contents"]
    assert [o["Key"] for o in listed] == ["data/root/a/b"]
    raw.put_object(Bucket=s3_bucket, Key="data/rootless", Body=b"outside")
    assert keys(store.list()) == ["a/b"]


# --- listing ----------------------------------------------------------------------------------

ORDER_KEYS = ["a/x", "a-b/x", "a0", "a/b/c", "ab", "é/x", "z", "a/b-c", "b/c/d/e"]


def test_list_order_is_utf8_byte_order(store: Store) -> None:
    for key in ORDER_KEYS:
        store.write_bytes(key, key.encode())
    expected = sorted(ORDER_KEYS, key=lambda k: k.encode("utf-8"))
    assert expected.index("a-b/x") < expected.index("a/x")  # the case a per-folder sort gets wrong
    assert keys(store.list()) == expected
    for info in store.list():
        assert info == store.info(info.key)


def test_list_start_after_prefix_and_limit(store: Store) -> None:
    for key in ORDER_KEYS:
        store.write_bytes(key, b"1")
    ordered = sorted(ORDER_KEYS, key=lambda k: k.encode("utf-8"))
    for i, start in enumerate(ordered):
        assert keys(store.list(start_after=start)) == ordered[i + 1 :], start
    # start_after need not be a key, and may fall inside a folder.
    assert keys(store.list(start_after="a/b")) == [
        "a/b-c",
        "a/b/c",
        "a/x",
        "a0",
        "ab",
        "b/c/d/e",
        "z",
        "é/x",
    ]
    assert keys(store.list(start_after="a/b/")) == [
        "a/b/c",
        "a/x",
        "a0",
        "ab",
        "b/c/d/e",
        "z",
        "é/x",
    ]
    assert keys(store.list("a/")) == ["a/b-c", "a/b/c", "a/x"]
    assert keys(store.list("a")) == ["a-b/x", "a/b-c", "a/b/c", "a/x", "a0", "ab"]
    assert keys(store.list("a/b")) == ["a/b-c", "a/b/c"]
    assert keys(store.list("a/", start_after="a/b-c")) == ["a/b/c", "a/x"]
    assert keys(store.list(limit=3)) == ordered[:3]
    assert keys(store.list("a", start_after="a-b/x", limit=2)) == ["a/b-c", "a/b/c"]
    assert keys(store.list(limit=0)) == []
    assert keys(store.list("nothing/")) == []


def test_list_prefixes(store: Store) -> None:
    for key in ORDER_KEYS:
        store.write_bytes(key, b"1")
    assert store.list_prefixes() == ["a-b/", "a/", "b/", "é/"]
    assert store.list_prefixes("a/") == ["a/b/"]
    assert store.list_prefixes("b/") == ["b/c/"]
    assert store.list_prefixes("a") == ["a-b/", "a/"]
    assert store.list_prefixes(start_after="a/") == ["b/", "é/"]
    assert store.list_prefixes(start_after="a-b/x") == ["a/", "b/", "é/"]
    assert store.list_prefixes("z/") == []


def test_list_is_lazy_and_pages_on_s3(moto_endpoint: str, s3_bucket: str) -> None:
    store = S3Store(s3_bucket, endpoint_url=moto_endpoint)
    for i in range(5):
        store.write_bytes(f"k{i}", b"1")
    calls: list[dict] = []
    store.client.meta.events.register(
        "before-parameter-build.s3.ListObjectsV2", lambda params, **_: calls.append(dict(params))
    )
    it = store.list()
    assert calls == []  # nothing asked until iterated
    assert next(it).key == "k0"
    assert keys(store.list(limit=2)) == ["k0", "k1"]
    assert calls[-1]["MaxKeys"] == 2


def _dated_shards(n_folders: int = 40, per_folder: int = 50) -> list[str]:
    return [
        f"2024-{1 + d // 28:02d}-{1 + d % 28:02d}/part-r-{i:05d}"
        for d in range(n_folders)
        for i in range(per_folder)
    ]


def test_local_list_start_after_skips_earlier_folders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shard_keys = _dated_shards()
    root = tmp_path / "data"
    for key in shard_keys:
        (root / key).parent.mkdir(parents=True, exist_ok=True)
        (root / key).write_bytes(b"")
    store = LocalStore(root)
    folders = sorted({k.split("/")[0] for k in shard_keys})
    assert len(folders) == 40 and len(shard_keys) == 2000

    scanned: list[str] = []
    real_scandir = os.scandir

    def counting_scandir(path):
        scanned.append(os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", counting_scandir)
    last = f"{folders[-1]}/part-r-00045"
    assert keys(store.list(start_after=last)) == [
        f"{folders[-1]}/part-r-{i:05d}" for i in range(46, 50)
    ]
    assert scanned == [str(root), str(root / folders[-1])]

    scanned.clear()
    assert len(list(store.list(start_after=f"{folders[-2]}/"))) == 100
    assert scanned == [str(root), str(root / folders[-2]), str(root / folders[-1])]


def test_s3_list_start_after_does_not_page_through_earlier_keys(
    moto_endpoint: str, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 40 dated folders of 5 shards with pages of 50 keys: the same shape as 2,000 keys in pages
    # of 1,000, at a tenth of the moto round trips.
    monkeypatch.setattr(storage, "_S3_PAGE", 50)
    shard_keys = _dated_shards(n_folders=40, per_folder=5)
    raw = boto3.client("s3", endpoint_url=moto_endpoint)
    for key in shard_keys:
        raw.put_object(Bucket=s3_bucket, Key=f"raw/{key}", Body=b"")
    store = S3Store(s3_bucket, "raw", endpoint_url=moto_endpoint)
    calls: list[dict] = []
    store.client.meta.events.register(
        "before-parameter-build.s3.ListObjectsV2", lambda params, **_: calls.append(dict(params))
    )
    assert keys(store.list()) == shard_keys
    assert len(calls) == 4  # every page of 50
    calls.clear()
    last = shard_keys[-3]
    assert keys(store.list(start_after=last)) == shard_keys[-2:]
    assert len(calls) == 1 and calls[0]["StartAfter"] == f"raw/{last}"


def test_local_in_flight_temp_file_is_not_listed_and_is_removed_on_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = LocalStore(tmp_path)
    store.write_bytes("d/existing", b"old")
    seen_during_write: list[list[str]] = []
    on_disk_during_write: list[list[str]] = []

    def failing_replace(src, dst):
        on_disk_during_write.append(sorted(os.listdir(tmp_path / "d")))
        seen_during_write.append(keys(store.list()))
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(StorageError, match=r"write 'd/existing' failed.*No space left"):
        store.write_bytes("d/existing", b"new content")
    # The temp file was really there, hidden, while the write was in flight.
    assert len(on_disk_during_write[0]) == 2
    assert any(n.startswith(".existing.tmp-") for n in on_disk_during_write[0])
    assert seen_during_write == [["d/existing"]]
    # ... and afterwards it is gone and the old object is intact.
    assert os.listdir(tmp_path / "d") == ["existing"]
    assert store.read_bytes("d/existing") == b"old"


def test_local_temp_file_removed_when_the_data_cannot_be_written(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)

    class NotABuffer:
        pass

    # The temp file is created before the write fails.
    with pytest.raises(TypeError, match="bytes-like"):
        store.write_bytes("x/y", NotABuffer())  # type: ignore[arg-type]
    assert os.listdir(tmp_path / "x") == []
    assert not store.exists("x/y")


def test_local_hidden_and_foreign_files_are_not_objects(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.write_bytes("a/b", b"1")
    (tmp_path / ".hidden").write_bytes(b"")
    (tmp_path / "a" / ".b.tmp-123").write_bytes(b"")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "x").write_bytes(b"")
    (tmp_path / "empty").mkdir()
    assert keys(store.list()) == ["a/b"]
    assert store.list_prefixes() == ["a/"]  # an empty folder is not a prefix, as on S3


def test_local_store_creates_root_on_first_write(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "not" / "yet")
    assert list(store.list()) == []
    assert store.list_prefixes() == []
    assert not (tmp_path / "not").exists()
    store.write_bytes("k", b"v")
    assert (tmp_path / "not" / "yet" / "k").read_bytes() == b"v"


def test_local_version_format(tmp_path: Path) -> None:
    info = LocalStore(tmp_path).write_bytes("k", b"abc")
    st = os.stat(tmp_path / "k")
    assert info == ObjectInfo("k", 3, f"3-{st.st_mtime_ns}")


# --- keys -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("", "empty key"),
        ("/etc/passwd", "absolute"),
        ("a\\b", "backslash"),
        ("../x", "'..' path segments"),
        ("a/../../x", "'..' path segments"),
        ("a/./b", "'.' path segments"),
        (".", "'.' path segments"),
        ("a//b", "empty path segment"),
        ("a\nb", "control characters"),
        ("a\x00b", "control characters"),
        ("a/", "trailing '/'"),
        ("a/.hidden", "starts with '.'"),
        ("x" * 1025, "longer than 1024"),
        ("\udcff", "UTF-8"),
    ],
)
def test_validate_key_refusals(key: str, message: str) -> None:
    with pytest.raises(ValueError, match=r"invalid storage key .*" + _re(message)):
        validate_key(key)


def _re(text: str) -> str:
    import re

    return re.escape(text)


def test_validate_key_accepts_ordinary_keys() -> None:
    for key in ["a", "2024-08-07/part-r-00000", "lake/x.parquet", "é/ü", "a b/c..d"]:
        assert validate_key(key) == key


def test_every_store_method_refuses_escaping_keys(store: Store, tmp_path: Path) -> None:
    bad = "../escape"
    calls = [
        lambda: store.url(bad),
        lambda: store.read_bytes(bad),
        lambda: store.write_bytes(bad, b"x"),
        lambda: store.upload_file(bad, __file__),
        lambda: store.info(bad),
        lambda: store.exists(bad),
        lambda: store.delete(bad),
        lambda: list(store.list("../")),
        lambda: store.list_prefixes("a/../"),
    ]
    for call in calls:
        with pytest.raises(ValueError, match="invalid storage key"):
            call()
    assert not (tmp_path / "escape").exists()


# --- S3 errors --------------------------------------------------------------------------------


def test_s3_missing_bucket_is_a_storage_error_naming_the_uri(moto_endpoint: str) -> None:
    store = S3Store("no-such-bucket-here", "p", endpoint_url=moto_endpoint)
    for call in [
        lambda: store.read_bytes("k"),
        lambda: store.write_bytes("k", b"x"),
        lambda: store.info("k"),
        lambda: list(store.list()),
        lambda: store.list_prefixes(),
    ]:
        with pytest.raises(StorageError, match="s3://no-such-bucket-here/p.*does not exist"):
            call()


def test_s3_missing_key_is_object_not_found(store: Store) -> None:
    with pytest.raises(ObjectNotFound, match="missing/key"):
        store.read_bytes("missing/key")


def test_s3_unreachable_endpoint_is_a_storage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """The store gives up after the client's own retries and adds none of its own: attempts are
    counted, and botocore's backoff between them is recorded instead of slept."""
    endpoint = f"http://127.0.0.1:{free_port()}"
    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
        config=Config(retries={"max_attempts": 2, "mode": "standard"}, connect_timeout=1),
    )
    attempts: list[str] = []

    def count(event_name: str, **_) -> None:  # None: the request is still sent
        attempts.append(event_name)

    client.meta.events.register("before-send.s3", count)
    backoffs: list[float] = []
    # botocore sleeps between attempts with `time.sleep` in botocore.endpoint, nowhere else.
    monkeypatch.setattr(botocore.endpoint, "time", SimpleNamespace(sleep=backoffs.append))
    store = S3Store("bucket", "data", client=client)
    with pytest.raises(StorageError, match=r"s3://bucket/data/k.*unreachable.*127\.0\.0\.1"):
        store.read_bytes("k")
    # max_attempts=2 in standard mode: 3 attempts in all, 2 backoffs between them.
    assert attempts == ["before-send.s3.GetObject"] * 3 and len(backoffs) == 2
    attempts.clear()
    backoffs.clear()
    with pytest.raises(StorageError, match=r"listing s3://bucket/data: S3 endpoint unreachable"):
        list(store.list())
    assert attempts == ["before-send.s3.ListObjectsV2"] * 3 and len(backoffs) == 2


def test_s3_store_pickles_without_its_client(moto_endpoint: str, s3_bucket: str) -> None:
    store = S3Store(s3_bucket, "lake", endpoint_url=moto_endpoint)
    store.write_bytes("a", b"before pickling")
    assert store._client is not None
    copy = pickle.loads(pickle.dumps(store))
    assert copy._client is None  # rebuilt lazily in the worker
    assert copy.uri == store.uri == f"s3://{s3_bucket}/lake"
    assert copy.read_bytes("a") == b"before pickling"
    copy.write_bytes("b", b"after")
    assert keys(store.list()) == ["a", "b"]


def test_s3_client_is_configured_with_retries_and_timeouts() -> None:
    client = S3Store("b", endpoint_url="http://127.0.0.1:9").client
    config = client.meta.config
    # botocore stores max_attempts=5 (retries) as 6 attempts in all.
    assert config.retries == {"total_max_attempts": 6, "mode": "standard"}
    assert config.connect_timeout == 5 and config.read_timeout == 60


# --- open_store -------------------------------------------------------------------------------


def test_open_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DROUGHTWATCH_S3_ENDPOINT_URL", raising=False)
    s3 = open_store("s3://bucket/data/root")
    assert isinstance(s3, S3Store)
    assert (s3.bucket, s3.prefix, s3.endpoint_url) == ("bucket", "data/root", None)
    assert open_store("s3://bucket").prefix == ""
    assert open_store("s3://b/p", endpoint_url="http://e:1").endpoint_url == "http://e:1"
    # The variable is Settings' to read (Settings.s3_endpoint_url), never the store's own.
    monkeypatch.setenv("DROUGHTWATCH_S3_ENDPOINT_URL", "http://env:2")
    assert open_store("s3://b/p").endpoint_url is None
    assert open_store("s3://b/p", endpoint_url="http://e:1").endpoint_url == "http://e:1"
    with pytest.raises(ValueError, match="no bucket"):
        open_store("s3:///p")

    monkeypatch.chdir(tmp_path)
    local = open_store("lake/../lake2")
    assert isinstance(local, LocalStore)
    assert local.uri == str(tmp_path.resolve() / "lake2")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert open_store("~/x").uri == str(tmp_path.resolve() / "x")
