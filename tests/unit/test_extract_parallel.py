"""vlmdata.extract across processes: the same files, index and errors as one process, on both backends."""

from __future__ import annotations

import io
import math
import time
import zipfile

import pytest

from vlmdata import extract
from vlmdata.catalog import Extract
from vlmdata.extract import UnsafeArchive, extract_zip
from vlmdata.lease import LeaseLost, hold, valid_until
from vlmdata.replicas.data import jpeg_bytes
from vlmdata.storage import LocalStorage
from tests.unit.archive_helpers import WriteSpy, files_under, write_archive

FOLDER = "data/src/images"
SPEC = Extract(into=FOLDER)
COUNT = 40


@pytest.fixture(autouse=True)
def parallel_from_the_first_member(monkeypatch):
    """The thresholds keep small archives in one process: these tests want the parallel path."""
    monkeypatch.setattr(extract, "PARALLEL_MIN_MEMBERS", 1)


def _members() -> dict[str, bytes]:
    # Some stored, some deflated, in two folders: ranges cross folders.
    return {f"{'a' if n < COUNT // 2 else 'b'}/{n:04d}.jpg": jpeg_bytes(32, 24, seed=n) + bytes(n) for n in range(COUNT)}


def _zip(members: dict[str, bytes], corrupt: str | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for number, (name, body) in enumerate(members.items()):
            zf.writestr(name, body, compress_type=zipfile.ZIP_STORED if number % 3 == 0 or name == corrupt else zipfile.ZIP_DEFLATED)
    data = bytearray(buf.getvalue())
    if corrupt:
        info = zipfile.ZipFile(io.BytesIO(bytes(data))).getinfo(corrupt)
        start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
        data[start + len(members[corrupt]) // 2] ^= 0xFF  # one flipped byte: the CRC no longer matches
    return bytes(data)


def _contents(storage) -> dict[str, bytes]:
    return {key: storage.read_bytes(key) for key, _ in storage.list(FOLDER)}


def test_same_files_and_index_as_one_process(storage, tmp_path):
    archive = write_archive(tmp_path, _zip(_members()), "images.zip")
    parallel = extract_zip(archive, storage, FOLDER, SPEC, processes=2)
    files = _contents(storage)
    serial_root = LocalStorage(tmp_path / "serial")
    serial = extract_zip(archive, serial_root, FOLDER, SPEC, processes=1)
    assert parallel == serial  # the manifest's index: same rows, same (archive) order
    assert files == _contents(serial_root) == {f"{FOLDER}/{name}": body for name, body in _members().items()}


def test_corrupt_member_is_named_and_nothing_partial(storage, tmp_path):
    members = _members()
    broken = "b/0030.jpg"  # in the second range
    archive = write_archive(tmp_path, _zip(members, corrupt=broken), "images.zip")
    with pytest.raises(zipfile.BadZipFile) as parallel:
        extract_zip(archive, storage, FOLDER, SPEC, processes=2)
    with pytest.raises(zipfile.BadZipFile) as serial:
        extract_zip(archive, LocalStorage(tmp_path / "serial"), FOLDER, SPEC, processes=1)
    assert str(parallel.value) == str(serial.value)
    assert "images.zip" in str(parallel.value) and broken in str(parallel.value)
    written = _contents(storage)
    assert f"{FOLDER}/{broken}" not in written
    assert all(body == members[key[len(FOLDER) + 1:]] for key, body in written.items())  # whatever was written is whole
    if isinstance(storage, LocalStorage):
        assert not [name for name in files_under(storage.root) if name.endswith(".vlmdata-tmp")]


def test_hostile_member_writes_nothing_before_any_process_starts(storage, tmp_path, monkeypatch):
    archive = write_archive(tmp_path, _zip({**_members(), "../evil.jpg": b"evil"}), "images.zip")
    monkeypatch.setattr(extract, "_write_zip_parallel", lambda *a, **k: pytest.fail("vetting must refuse the archive first"))
    spy = WriteSpy(storage, monkeypatch)
    with pytest.raises(UnsafeArchive, match="evil"):
        extract_zip(archive, storage, FOLDER, SPEC, processes=2)
    assert spy.keys == [] and list(storage.list(FOLDER)) == []


def test_lost_lease_stops_the_workers_and_a_rerun_resumes(tmp_path):
    """The parent checks the lease every quarter second; here it is lost at the second check.
    The rerun skips what the first wrote (same inode and time stamp) and writes the rest."""
    members = {f"m/{n:05d}.bin": bytes([n % 251]) * 2000 for n in range(3000)}
    archive = write_archive(tmp_path, _zip(members), "big.zip")
    storage = LocalStorage(tmp_path / "root")
    checks = []

    def guard():
        checks.append(time.monotonic())
        if len(checks) >= 2:
            raise LeaseLost("lease taken over")

    with pytest.raises(LeaseLost, match="taken over"):
        extract_zip(archive, storage, FOLDER, SPEC, processes=2, guard=guard)
    assert not [name for name in files_under(storage.root) if name.endswith(".vlmdata-tmp")]
    first = {key: stamp for key, _, stamp in storage.list_stamped(FOLDER)}
    assert all(storage.read_bytes(key) == members[key[len(FOLDER) + 1:]] for key in first)
    storage.delete(f"{FOLDER}/m/00000.bin")  # as if the first run had not reached it
    first.pop(f"{FOLDER}/m/00000.bin", None)

    index = extract_zip(archive, storage, FOLDER, SPEC, processes=2)
    assert index == extract_zip(archive, LocalStorage(tmp_path / "serial"), FOLDER, SPEC, processes=1)
    after = {key: stamp for key, _, stamp in storage.list_stamped(FOLDER)}
    assert len(after) == len(members)
    assert {key: after[key] for key in first} == first  # present members were not written again
    assert storage.read_bytes(f"{FOLDER}/m/00000.bin") == members["m/00000.bin"]


def test_resume_with_everything_present_starts_no_process(tmp_path, monkeypatch):
    archive = write_archive(tmp_path, _zip(_members()), "images.zip")
    storage = LocalStorage(tmp_path / "root")
    index = extract_zip(archive, storage, FOLDER, SPEC, processes=2)
    monkeypatch.setattr(extract, "ProcessPoolExecutor", lambda *a, **k: pytest.fail("nothing to write: no worker process"))
    assert extract_zip(archive, storage, FOLDER, SPEC, processes=2) == index


def test_valid_until_follows_the_lease(tmp_path):
    storage = LocalStorage(tmp_path / "root")
    assert valid_until(lambda: None) == math.inf
    with hold(storage, "unit", ttl=40.0, wait=0) as lease:
        deadline = valid_until(lease.check)
        assert time.monotonic() < deadline <= time.monotonic() + 0.75 * 40.0


def test_workers_stop_when_the_lease_is_not_confirmed_in_time(tmp_path, monkeypatch):
    """A worker cannot call the lease's check: it stops by the deadline its parent published."""
    archive = write_archive(tmp_path, _zip(_members()), "images.zip")
    storage = LocalStorage(tmp_path / "root")
    monkeypatch.setattr(extract, "valid_until", lambda guard: time.monotonic() - 1.0)  # a lease already past its validity
    with pytest.raises(LeaseLost, match="not confirmed in time"):
        extract_zip(archive, storage, FOLDER, SPEC, processes=2)
    assert list(storage.list(FOLDER)) == []
