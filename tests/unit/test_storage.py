"""vlmdata.storage: the same contract on a local root and on S3 (moto's server)."""

from __future__ import annotations

import errno
import io
import os
from pathlib import Path

import pytest

from vlmdata import storage as storage_module
from vlmdata.storage import DiskFullError, LocalStorage, S3Options, S3Storage, StorageError, open_storage


def _temp_files(folder: Path) -> list[str]:
    """Leftovers of an atomic write (the temporary files are hidden and end in .vlmdata-tmp)."""
    return [p.name for p in folder.rglob("*") if p.name.endswith(".vlmdata-tmp")] if folder.exists() else []


class _FailingStream:
    """Hands out ``good`` bytes, then fails the way a dropped source connection does."""

    def __init__(self, good: int = 300_000):
        self.left = good
        self.read_calls = 0

    def read(self, size: int = -1) -> bytes:
        self.read_calls += 1
        if self.left <= 0:
            raise _SourceBroke("source died half-way")
        n = self.left if size is None or size < 0 else min(size, self.left)
        self.left -= n
        return b"z" * n


class _SourceBroke(Exception):
    pass


# ---------------------------------------------------------------- round trips


def test_bytes_round_trip(storage):
    storage.write_bytes("data/a/b.bin", b"\x00hello\xff")
    assert storage.read_bytes("data/a/b.bin") == b"\x00hello\xff"
    assert storage.size("data/a/b.bin") == 7
    assert storage.exists("data/a/b.bin")


def test_overwrite_replaces_content(storage):
    storage.write_bytes("k.txt", b"first version, longer")
    storage.write_bytes("k.txt", b"second")
    assert storage.read_bytes("k.txt") == b"second"
    assert storage.size("k.txt") == 6


def test_write_stream_returns_byte_count(storage):
    data = os.urandom(3 * (1 << 20) + 17)  # more than one copy chunk
    assert storage.write_stream("big/blob", io.BytesIO(data)) == len(data)
    assert storage.read_bytes("big/blob") == data


def test_empty_object(storage):
    storage.write_bytes("empty", b"")
    assert storage.size("empty") == 0
    assert storage.exists("empty")
    assert storage.read_bytes("empty") == b""


def test_json_round_trip_and_default(storage):
    obj = {"name": "coco", "sizes": [1, 2, 3], "note": "ünïcode", "nested": {"ok": True}}
    storage.write_json("_vlmdata/sources/x/manifest.json", obj)
    assert storage.read_json("_vlmdata/sources/x/manifest.json") == obj
    assert storage.read_json("_vlmdata/missing.json", default={"empty": 1}) == {"empty": 1}
    assert storage.read_json("_vlmdata/missing.json", default=None) is None
    # The default is only for missing keys: an existing object is read, not defaulted.
    assert storage.read_json("_vlmdata/sources/x/manifest.json", default=None) == obj


def test_read_json_without_default_of_missing_key_raises(storage):
    with pytest.raises(FileNotFoundError):
        storage.read_json("nothing/here.json")


def test_size_of_missing_key_is_none(storage):
    assert storage.size("no/such/key.jpg") is None
    assert not storage.exists("no/such/key.jpg")


def test_open_read_of_missing_key_raises_file_not_found(storage):
    with pytest.raises(FileNotFoundError):
        storage.read_bytes("no/such/key.jpg")


# ---------------------------------------------------------------- listing and deleting


def test_list_of_a_folder(storage):
    storage.write_bytes("data/coco/a.jpg", b"1")
    storage.write_bytes("data/coco/sub/b.jpg", b"22")
    storage.write_bytes("data/cocoa/not-in-coco.jpg", b"333")  # shares the prefix text, not the folder
    storage.write_bytes("data/other.jpg", b"4444")
    assert dict(storage.list("data/coco")) == {"data/coco/a.jpg": 1, "data/coco/sub/b.jpg": 2}
    # A trailing slash names the same folder.
    assert dict(storage.list("data/coco/")) == {"data/coco/a.jpg": 1, "data/coco/sub/b.jpg": 2}


def test_list_of_missing_folder_is_empty(storage):
    assert list(storage.list("never/written")) == []
    assert list(storage.list_stamped("never/written")) == []
    storage.write_bytes("a-file", b"x")
    assert list(storage.list("a-file")) == []  # a file is not a folder


def test_a_listed_stamp_changes_when_a_file_is_written_again_even_with_the_same_size(storage):
    storage.write_bytes("data/coco/a.jpg", b"first")
    storage.write_bytes("data/coco/sub/b.jpg", b"22")
    before = {key: (size, stamp) for key, size, stamp in storage.list_stamped("data/coco")}
    assert {key: size for key, (size, _stamp) in before.items()} == dict(storage.list("data/coco")) == {"data/coco/a.jpg": 5, "data/coco/sub/b.jpg": 2}
    assert {key: (size, stamp) for key, size, stamp in storage.list_stamped("data/coco")} == before  # nothing written: the same
    storage.write_bytes("data/coco/a.jpg", b"again")  # at once: on a coarse file clock, within one tick
    after = {key: (size, stamp) for key, size, stamp in storage.list_stamped("data/coco")}
    assert after["data/coco/a.jpg"][0] == 5 and after["data/coco/a.jpg"][1] != before["data/coco/a.jpg"][1]
    assert after["data/coco/sub/b.jpg"] == before["data/coco/sub/b.jpg"]


def test_delete_a_file(storage):
    storage.write_bytes("d/keep.txt", b"k")
    storage.write_bytes("d/gone.txt", b"g")
    storage.delete("d/gone.txt")
    assert storage.size("d/gone.txt") is None
    assert storage.read_bytes("d/keep.txt") == b"k"
    storage.delete("d/gone.txt")  # deleting what is not there is not an error


def test_delete_a_folder(storage):
    storage.write_bytes("d/x/1", b"1")
    storage.write_bytes("d/x/y/2", b"2")
    storage.write_bytes("d/xx", b"sibling with the same prefix text")
    storage.delete("d/x")
    assert list(storage.list("d/x")) == []
    assert storage.size("d/x/1") is None
    assert storage.read_bytes("d/xx") == b"sibling with the same prefix text"


# ---------------------------------------------------------------- put_file


def test_put_file_moves_the_local_file(storage, tmp_path):
    local = tmp_path / "download.bin"
    local.write_bytes(b"verified bytes")
    storage.put_file(local, "data/src/download.bin")
    assert not local.exists()
    assert storage.read_bytes("data/src/download.bin") == b"verified bytes"
    assert dict(storage.list("data/src")) == {"data/src/download.bin": 14}


def test_put_file_across_file_systems_copies_then_removes(tmp_path, monkeypatch):
    """A staging folder on another device: the rename fails with EXDEV, the copy still lands atomically."""
    store = LocalStorage(tmp_path / "root")
    local = tmp_path / "staged.bin"
    local.write_bytes(b"x" * 1000)
    real_replace = os.replace

    def cross_device(src, dst):
        if Path(src) == local:
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        return real_replace(src, dst)

    monkeypatch.setattr(storage_module.os, "replace", cross_device)
    store.put_file(local, "data/f.bin")
    assert not local.exists()
    assert store.read_bytes("data/f.bin") == b"x" * 1000
    assert _temp_files(store.root) == []


# ---------------------------------------------------------------- atomic writes


def test_failed_write_stream_leaves_no_object(storage, tmp_path):
    with pytest.raises(_SourceBroke):
        storage.write_stream("data/half.bin", _FailingStream())
    assert storage.size("data/half.bin") is None
    assert list(storage.list("data")) == []
    if isinstance(storage, LocalStorage):
        assert _temp_files(storage.root) == []


def test_failed_write_stream_keeps_the_old_object(storage):
    storage.write_bytes("data/obj.bin", b"old and complete")
    with pytest.raises(_SourceBroke):
        storage.write_stream("data/obj.bin", _FailingStream())
    assert storage.read_bytes("data/obj.bin") == b"old and complete"
    if isinstance(storage, LocalStorage):
        assert sorted(p.name for p in (storage.root / "data").iterdir()) == ["obj.bin"]


def test_local_temp_files_are_not_listed(tmp_path):
    store = LocalStorage(tmp_path / "root")
    store.write_bytes("f/real", b"1")
    (store.root / "f" / ".real.abc.vlmdata-tmp").write_bytes(b"partial")
    assert dict(store.list("f")) == {"f/real": 1}


def test_disk_full_raises_disk_full_error_and_keeps_nothing(tmp_path, monkeypatch):
    store = LocalStorage(tmp_path / "root")

    def no_space(src, dst, length=0):
        dst.write(src.read(1000))  # some bytes made it to disk before the device filled up
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(storage_module.shutil, "copyfileobj", no_space)
    with pytest.raises(StorageError, match=r"no space left .* \(nothing partial was kept\)") as info:  # a caller's storage handler sees it
        store.write_bytes("data/full/x.bin", b"y" * 5000)
    assert type(info.value) is DiskFullError
    assert store.size("data/full/x.bin") is None
    assert _temp_files(store.root) == []
    assert list((store.root / "data" / "full").iterdir()) == []


def test_other_os_errors_are_not_reported_as_disk_full(tmp_path, monkeypatch):
    store = LocalStorage(tmp_path / "root")

    def io_error(src, dst, length=0):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(storage_module.shutil, "copyfileobj", io_error)
    with pytest.raises(OSError) as info:
        store.write_bytes("data/x.bin", b"y")
    assert not isinstance(info.value, DiskFullError)
    assert info.value.errno == errno.EIO
    assert _temp_files(store.root) == []


# ---------------------------------------------------------------- keys


@pytest.mark.parametrize("key", ["../x", "a/../../x", "a/../b", "/abs", "/etc/passwd", ""])
def test_invalid_keys_raise_storage_error(storage, key):
    with pytest.raises(StorageError):
        storage.write_bytes(key, b"evil")
    with pytest.raises(StorageError):
        storage.size(key)
    with pytest.raises(StorageError):
        storage.read_bytes(key)
    with pytest.raises(StorageError):
        storage.delete(key)


def test_invalid_key_writes_nothing_outside_the_root(tmp_path):
    store = LocalStorage(tmp_path / "root")
    with pytest.raises(StorageError):
        store.write_bytes("../escaped.txt", b"evil")
    assert not (tmp_path / "escaped.txt").exists()


def test_s3_keys_live_under_the_prefix(s3_endpoint, s3_bucket, tmp_path):
    import boto3

    store = S3Storage(f"s3://{s3_bucket}/some/prefix/", S3Options(endpoint_url=s3_endpoint), staging=tmp_path)
    assert store.url == f"s3://{s3_bucket}/some/prefix"
    store.write_bytes("data/x.txt", b"hi")
    keys = [o["Key"] for o in boto3.client("s3", endpoint_url=s3_endpoint).list_objects_v2(Bucket=s3_bucket)["Contents"]]
    assert keys == ["some/prefix/data/x.txt"]
    assert dict(store.list("data")) == {"data/x.txt": 2}


# ---------------------------------------------------------------- links


def test_link_is_relative_and_resolves(tmp_path):
    store = LocalStorage(tmp_path / "root")
    store.write_bytes("data/coco/train2017/1.jpg", b"jpeg")
    store.link("data/llava/coco/train2017", "data/coco/train2017")
    link = store.root / "data/llava/coco/train2017"
    assert link.is_symlink()
    assert not os.path.isabs(os.readlink(link))
    assert link.resolve() == (store.root / "data/coco/train2017").resolve()
    assert store.read_bytes("data/llava/coco/train2017/1.jpg") == b"jpeg"


def test_link_survives_moving_the_root(tmp_path):
    store = LocalStorage(tmp_path / "root")
    store.write_bytes("data/a/f.txt", b"moved")
    store.link("views/a", "data/a")
    (tmp_path / "root").rename(tmp_path / "elsewhere")
    assert LocalStorage(tmp_path / "elsewhere").read_bytes("views/a/f.txt") == b"moved"


def test_link_refuses_to_replace_a_real_file(tmp_path):
    store = LocalStorage(tmp_path / "root")
    store.write_bytes("data/real.jpg", b"real data")
    store.write_bytes("data/target.jpg", b"target")
    with pytest.raises(StorageError, match="not a link"):
        store.link("data/real.jpg", "data/target.jpg")
    assert not (store.root / "data/real.jpg").is_symlink()
    assert store.read_bytes("data/real.jpg") == b"real data"


def test_link_refuses_to_replace_a_real_folder(tmp_path):
    store = LocalStorage(tmp_path / "root")
    store.write_bytes("data/folder/inside.jpg", b"real data")
    store.write_bytes("data/target/other.jpg", b"target")
    with pytest.raises(StorageError):
        store.link("data/folder", "data/target")
    assert store.read_bytes("data/folder/inside.jpg") == b"real data"


def test_link_is_idempotent(tmp_path):
    store = LocalStorage(tmp_path / "root")
    store.write_bytes("data/t/f", b"1")
    store.link("v/t", "data/t")
    link = store.root / "v/t"
    before = os.lstat(link)
    store.link("v/t", "data/t")
    after = os.lstat(link)
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)  # left untouched
    assert sorted(p.name for p in link.parent.iterdir()) == ["t"]  # no temp link left beside it


def test_link_retargets_an_existing_link(tmp_path):
    store = LocalStorage(tmp_path / "root")
    store.write_bytes("data/old/f", b"old")
    store.write_bytes("data/new/f", b"new")
    store.link("v/x", "data/old")
    store.link("v/x", "data/new")
    assert store.read_bytes("v/x/f") == b"new"


def test_link_rejects_invalid_keys(tmp_path):
    store = LocalStorage(tmp_path / "root")
    with pytest.raises(StorageError):
        store.link("v/x", "../outside")
    with pytest.raises(StorageError):
        store.link("/abs/link", "data/x")


def test_s3_has_no_links(storage):
    if isinstance(storage, LocalStorage):
        assert storage.supports_links
    else:
        assert not storage.supports_links
        with pytest.raises(StorageError):
            storage.link("a", "b")


# ---------------------------------------------------------------- open_storage and misc


def test_open_storage_local(tmp_path):
    store = open_storage(tmp_path / "here")
    assert isinstance(store, LocalStorage)
    assert store.root == (tmp_path / "here").resolve()
    assert open_storage(str(tmp_path / "here")).root == store.root


def test_open_storage_s3(s3_endpoint):
    store = open_storage("s3://bucket/some/prefix", S3Options(endpoint_url=s3_endpoint))
    assert isinstance(store, S3Storage)
    assert (store.bucket, store.prefix) == ("bucket", "some/prefix")
    assert store.options.endpoint_url == s3_endpoint


@pytest.mark.parametrize("url", ["http://x", "https://bucket/x", "gs://bucket/x"])
def test_open_storage_rejects_other_schemes(url):
    with pytest.raises(StorageError, match="unsupported"):
        open_storage(url)


def test_s3_url_must_name_a_bucket():
    with pytest.raises(StorageError):
        S3Storage("s3:///prefix")


def test_spec_reopens_the_same_storage(storage):
    storage.write_bytes("data/s.txt", b"same")
    again = open_storage(*storage.spec)
    assert again.read_bytes("data/s.txt") == b"same"


def test_free_bytes_and_staging(storage):
    staging = storage.staging_dir()
    assert staging.is_dir()
    if isinstance(storage, LocalStorage):
        assert storage.free_bytes() > 0
        assert storage.local_path("data/x") == storage.root / "data/x"
    else:
        assert storage.free_bytes() is None
        assert storage.local_path("data/x") is None


def test_move_renames_an_object(storage):
    storage.write_bytes("data/a/x.jpg", b"broken")
    storage.move("data/a/x.jpg", "_vlmdata/quarantine/s/data/a/x.jpg")
    assert not storage.exists("data/a/x.jpg")
    assert storage.read_bytes("_vlmdata/quarantine/s/data/a/x.jpg") == b"broken"
