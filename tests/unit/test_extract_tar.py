"""vlmdata.extract for tars: hostile tars write nothing; SA-1B-like tars land flat, JPEGs only, resumably."""

from __future__ import annotations

import gzip
import io
import tarfile
from pathlib import Path

import pytest

from vlmdata.replicas.data import jpeg_bytes, make_zip
from vlmdata.catalog import Extract
from vlmdata.extract import Limits, NotAnArchive, UnsafeArchive, extract_archive, extract_tar
from vlmdata.storage import LocalStorage
from tests.unit.archive_helpers import WriteSpy, files_under, write_archive

FOLDER = "data/sam/images"
SAM = Extract(into="sam/images", flatten=True, include=["*.jpg"])


def _tar(members: list[tuple], compression: str = "") -> bytes:
    """A tar from (name, data) files and (name, type, linkname) special entries, in order."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=f"w:{compression}", format=tarfile.GNU_FORMAT) as tf:
        for entry in members:
            info = tarfile.TarInfo(entry[0])
            info.mtime = 1_500_000_000
            if len(entry) == 2:
                info.size = len(entry[1])
                tf.addfile(info, io.BytesIO(entry[1]))
            else:
                info.type, info.linkname = entry[1], entry[2]
                info.mode = 0o755 if info.type == tarfile.DIRTYPE else 0o644
                tf.addfile(info)
    return buf.getvalue()


def _write(tmp_path: Path, data: bytes, name: str = "sa_000000.tar") -> Path:
    return write_archive(tmp_path, data, name)


def _sa1b_members(first: int, count: int, prefix: str = "") -> list[tuple[str, bytes]]:
    """Like an SA-1B tar: sa_<n>.jpg and its sa_<n>.json masks, side by side."""
    members = []
    for n in range(first, first + count):
        members.append((f"{prefix}sa_{n}.jpg", jpeg_bytes(seed=n)))
        members.append((f"{prefix}sa_{n}.json", b'{"annotations": [], "image": {"image_id": %d}}' % n))
    return members


# ---------------------------------------------------------------- hostile tars

GOOD_FIRST = [("sa_1.jpg", jpeg_bytes(seed=1)), ("sa_2.jpg", jpeg_bytes(seed=2))]

HOSTILE = {
    "traversal": ([("../evil.jpg", b"evil")], r"'\.\.'"),
    "nested traversal": ([("a/../../evil.jpg", b"evil")], r"'\.\.'"),
    "absolute": ([("/etc/evil.jpg", b"evil")], "absolute path"),
    "drive letter": ([("C:/evil.jpg", b"evil")], "absolute path"),
    "backslash": ([("a\\..\\..\\evil.jpg", b"evil")], "backslash"),
    "symlink out": ([("link.jpg", tarfile.SYMTYPE, "/etc/passwd")], "symbolic link"),
    # Even a link that stays inside the folder: the layout never needs one from an archive.
    "symlink inside": ([("link.jpg", tarfile.SYMTYPE, "sa_1.jpg")], "symbolic link"),
    "hardlink": ([("hard.jpg", tarfile.LNKTYPE, "/etc/shadow")], "hard link"),
    "hardlink inside": ([("hard.jpg", tarfile.LNKTYPE, "sa_1.jpg")], "hard link"),
    "char device": ([("tty.jpg", tarfile.CHRTYPE, "")], "special file.*character device"),
    "block device": ([("sda.jpg", tarfile.BLKTYPE, "")], "special file.*block device"),
    "fifo": ([("pipe.jpg", tarfile.FIFOTYPE, "")], "special file.*fifo"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_tar_writes_nothing(case, tmp_path, monkeypatch):
    # Good members come first: an extractor that checked as it wrote would already have written them.
    members, reason = HOSTILE[case]
    archive = _write(tmp_path, _tar(GOOD_FIRST + members))
    store = LocalStorage(tmp_path / "root")
    spy = WriteSpy(store, monkeypatch)
    with pytest.raises(UnsafeArchive, match=reason) as info:
        extract_tar(archive, store, FOLDER, SAM)
    assert repr(members[0][0]) in str(info.value)  # the message names the member
    assert spy.keys == []
    assert files_under(tmp_path) == ["in/sa_000000.tar"]  # nothing in the root, nothing beside it


def test_hostile_tar_writes_nothing_on_either_backend(storage, tmp_path, monkeypatch):
    archive = _write(tmp_path, _tar(GOOD_FIRST + [("../../evil.jpg", b"evil")]))
    spy = WriteSpy(storage, monkeypatch)
    with pytest.raises(UnsafeArchive):
        extract_archive(archive, storage, FOLDER, SAM)
    assert spy.keys == []
    assert list(storage.list("data")) == []


def test_too_many_members(tmp_path, monkeypatch):
    archive = _write(tmp_path, _tar(_sa1b_members(1, 3)))  # 6 members
    store = LocalStorage(tmp_path / "root")
    spy = WriteSpy(store, monkeypatch)
    with pytest.raises(UnsafeArchive, match="limit of 5 members"):
        extract_tar(archive, store, FOLDER, SAM, limits=Limits(max_members=5))
    assert spy.keys == []
    assert len(extract_tar(archive, store, FOLDER, SAM, limits=Limits(max_members=6))) == 3  # at the limit it is fine


def test_too_large(tmp_path, monkeypatch):
    archive = _write(tmp_path, _tar([("a.jpg", b"a" * 600), ("b.jpg", b"b" * 600)]))
    store = LocalStorage(tmp_path / "root")
    spy = WriteSpy(store, monkeypatch)
    with pytest.raises(UnsafeArchive, match="limit of 1000 bytes"):
        extract_tar(archive, store, FOLDER, SAM, limits=Limits(max_total_bytes=1000))
    assert spy.keys == []
    assert files_under(tmp_path) == ["in/sa_000000.tar"]
    assert len(extract_tar(archive, store, FOLDER, SAM, limits=Limits(max_total_bytes=1200))) == 2


def test_gzip_bomb(tmp_path, monkeypatch):
    data = _tar(GOOD_FIRST + [("bomb.jpg", bytes(50 * 1024 * 1024))], compression="gz")
    assert len(data) < 50 * 1024 * 1024 / 200  # the archive really is that compressible
    archive = _write(tmp_path, data, "bomb.tar.gz")
    store = LocalStorage(tmp_path / "root")
    spy = WriteSpy(store, monkeypatch)
    with pytest.raises(UnsafeArchive, match="decompression bomb") as info:
        extract_tar(archive, store, FOLDER, SAM)
    assert "bomb.jpg" in str(info.value)
    assert spy.keys == []


def test_two_members_landing_on_the_same_path_with_flatten(tmp_path, monkeypatch):
    archive = _write(tmp_path, _tar([("a/sa_1.jpg", jpeg_bytes(seed=1)), ("b/sa_1.jpg", jpeg_bytes(seed=2))]))
    store = LocalStorage(tmp_path / "root")
    spy = WriteSpy(store, monkeypatch)
    with pytest.raises(UnsafeArchive, match="both land"):
        extract_tar(archive, store, FOLDER, SAM)
    assert spy.keys == []


def test_cut_tar_writes_nothing(tmp_path, monkeypatch):
    """A download cut in the last member's data: the plan sees it before the first write."""
    data = _tar(_sa1b_members(1, 3))
    end = data.rfind(b"\xff\xd9") + 2  # the end of the last JPEG's data, before the tar padding
    archive = _write(tmp_path, data[: end - 100])
    store = LocalStorage(tmp_path / "root")
    spy = WriteSpy(store, monkeypatch)
    with pytest.raises(tarfile.ReadError, match="sa_000000.tar") as info:
        extract_tar(archive, store, FOLDER, SAM)
    assert "cut" in str(info.value)
    assert spy.keys == []


def test_cut_tar_gz_writes_nothing(tmp_path, monkeypatch):
    data = _tar(_sa1b_members(1, 3), compression="gz")
    archive = _write(tmp_path, data[: len(data) // 2], "sa_000000.tar.gz")
    store = LocalStorage(tmp_path / "root")
    spy = WriteSpy(store, monkeypatch)
    with pytest.raises(tarfile.ReadError, match="sa_000000.tar.gz"):
        extract_tar(archive, store, FOLDER, SAM)
    assert spy.keys == []


@pytest.mark.parametrize("name", ["../sa_1.jpg", "a/../../sa_1.jpg", "/abs/sa_1.jpg", "C:/sa_1.jpg", "a\\sa_1.jpg"])
def test_zip_and_tar_refuse_a_hostile_name_alike_and_write_nothing(tmp_path, name):
    """One vetting for both formats: the same name gets the same refusal, before any byte."""
    refusals = []
    for fmt, archive in (("tar", _write(tmp_path, _tar([("sa_0.jpg", b"0"), (name, b"1")]))), ("zip", _write(tmp_path, make_zip({"sa_0.jpg": b"0", name: b"1"}), "x.zip"))):
        store = LocalStorage(tmp_path / f"root-{fmt}")
        with pytest.raises(UnsafeArchive) as refused:
            extract_archive(archive, store, FOLDER, SAM)
        refusals.append(str(refused.value))
        assert files_under(tmp_path / f"root-{fmt}") == [], f"{fmt}: a file was written before the refusal"
    assert refusals[0] == refusals[1] and repr(name) in refusals[0]


# ---------------------------------------------------------------- "./" members (SA-1B's tars)


def _archive(tmp_path: Path, fmt: str, files: list[tuple[str, bytes]], folder_entry: str | None = None) -> Path:
    """A tar or zip of ``files``, after a folder entry (``"./"``, as ``tar -C dir .`` writes) when given."""
    if fmt == "tar":
        return _write(tmp_path, _tar(([(folder_entry, tarfile.DIRTYPE, "")] if folder_entry else []) + files), f"{len(list(tmp_path.glob('in/*')))}.tar")
    return _write(tmp_path, make_zip({**({folder_entry: b""} if folder_entry else {}), **dict(files)}), f"{len(list(tmp_path.glob('in/*')))}.zip")


DOT_SPECS = {"flatten": SAM, "strip_components": Extract(into="x", strip_components=1), "as they are": Extract(into="x"), "include": Extract(into="x", include=["top/*.jpg"])}


@pytest.mark.parametrize("fmt", ["tar", "zip"])
@pytest.mark.parametrize("spec", sorted(DOT_SPECS))
def test_dot_slash_members_land_where_the_bare_names_do(fmt, spec, tmp_path):
    """``./top/sa_1.jpg`` is ``top/sa_1.jpg``: "." is no folder level (strip_components does not count it)."""
    bare = [("top/sa_1.jpg", b"1"), ("top/sub/sa_2.jpg", b"2"), ("sa_3.jpg", b"3")]
    placed = {}
    for prefix in ("", "./"):
        store = LocalStorage(tmp_path / f"root{prefix == './'}")
        archive = _archive(tmp_path, fmt, [(prefix + name, data) for name, data in bare], folder_entry=prefix or None)
        placed[prefix] = sorted(extract_archive(archive, store, "data/x", DOT_SPECS[spec]))
        assert files_under(store.root) == sorted(key for key, _, _ in placed[prefix])
    assert placed["./"] == placed[""] and placed[""]


@pytest.mark.parametrize("fmt", ["tar", "zip"])
@pytest.mark.parametrize("name", ["./../evil.jpg", "././../evil.jpg", "./a/../../evil.jpg", "./sa_9.jpg/../../evil.jpg"])
def test_traversal_behind_dot_slash_is_refused_before_any_write(fmt, name, tmp_path, monkeypatch):
    archive = _archive(tmp_path, fmt, [("./sa_1.jpg", b"1"), (name, b"evil")], folder_entry="./")
    store = LocalStorage(tmp_path / "root")
    spy = WriteSpy(store, monkeypatch)
    with pytest.raises(UnsafeArchive, match=r"'\.\.'"):
        extract_archive(archive, store, FOLDER, Extract(into="sam/images"))
    assert spy.keys == []


@pytest.mark.parametrize("fmt", ["tar", "zip"])
def test_a_bare_and_a_dot_slash_member_of_one_name_collide(fmt, tmp_path, monkeypatch):
    archive = _archive(tmp_path, fmt, [("sa_1.jpg", b"1"), ("./sa_1.jpg", b"other")])
    store = LocalStorage(tmp_path / "root")
    spy = WriteSpy(store, monkeypatch)
    with pytest.raises(UnsafeArchive, match="both land at 'sa_1.jpg'"):
        extract_archive(archive, store, FOLDER, Extract(into="sam/images"))
    assert spy.keys == []


# ---------------------------------------------------------------- normal extraction


@pytest.mark.parametrize("prefix", ["", "./"])
def test_flatten_and_include_keep_only_the_jpegs(storage, tmp_path, prefix):
    members = _sa1b_members(1, 3, prefix)
    archive = _write(tmp_path, _tar([(prefix or "./", tarfile.DIRTYPE, "")] + members))
    index = extract_tar(archive, storage, FOLDER, SAM)
    jpegs = {name.removeprefix(prefix): body for name, body in members if name.endswith(".jpg")}
    assert sorted(index) == sorted([f"{FOLDER}/{name}", len(body), None] for name, body in jpegs.items())
    assert sorted(dict(storage.list("data"))) == sorted(f"{FOLDER}/{name}" for name in jpegs)  # no masks, nothing else
    for name, body in jpegs.items():
        assert storage.read_bytes(f"{FOLDER}/{name}") == body


def test_nested_folders_are_flattened(tmp_path):
    archive = _write(tmp_path, _tar([("sa_000000/images/sa_7.jpg", b"7"), ("sa_000000/sa_8.jpg", b"8"), ("sa_000000/README", b"r")]))
    store = LocalStorage(tmp_path / "root")
    index = extract_tar(archive, store, FOLDER, SAM)
    assert sorted(key for key, _, _ in index) == [f"{FOLDER}/sa_7.jpg", f"{FOLDER}/sa_8.jpg"]


def test_strip_components_without_flatten(tmp_path):
    archive = _write(tmp_path, _tar([("top/a/1.jpg", b"1"), ("top/2.jpg", b"2"), ("top.jpg", b"x")]))
    store = LocalStorage(tmp_path / "root")
    index = extract_tar(archive, store, "data/x", Extract(into="x", strip_components=1))
    assert sorted(key for key, _, _ in index) == ["data/x/2.jpg", "data/x/a/1.jpg"]
    assert store.read_bytes("data/x/a/1.jpg") == b"1"


def test_resume_writes_only_what_is_missing_or_wrong(storage, tmp_path, monkeypatch):
    members = _sa1b_members(1, 3)
    archive = _write(tmp_path, _tar(members))
    first = extract_tar(archive, storage, FOLDER, SAM)
    storage.delete(f"{FOLDER}/sa_1.jpg")  # never written by the killed run
    storage.write_bytes(f"{FOLDER}/sa_2.jpg", b"short")  # wrong size
    spy = WriteSpy(storage, monkeypatch)
    second = extract_tar(archive, storage, FOLDER, SAM)
    assert sorted(spy.keys) == [f"{FOLDER}/sa_1.jpg", f"{FOLDER}/sa_2.jpg"]
    assert second == first  # the index is complete even for the members skipped
    assert storage.read_bytes(f"{FOLDER}/sa_2.jpg") == dict(members)["sa_2.jpg"]
    spy.keys.clear()
    assert extract_tar(archive, storage, FOLDER, SAM) == first
    assert spy.keys == []  # all present: nothing rewritten


def test_skip_present_false_rewrites_everything(tmp_path, monkeypatch):
    archive = _write(tmp_path, _tar([("sa_1.jpg", b"right")]))
    store = LocalStorage(tmp_path / "root")
    extract_tar(archive, store, FOLDER, SAM)
    store.write_bytes(f"{FOLDER}/sa_1.jpg", b"wrong")  # same size, other bytes
    extract_tar(archive, store, FOLDER, SAM, skip_present=False)
    assert store.read_bytes(f"{FOLDER}/sa_1.jpg") == b"right"


# ---------------------------------------------------------------- choosing zip or tar


@pytest.mark.parametrize("name, compression", [("a.tar", ""), ("a.tar.gz", "gz"), ("a.tgz", "gz"), ("a.tar.xz", "xz"), ("no-extension", ""), ("gz-no-extension", "gz")])
def test_extract_archive_picks_tar_by_name_or_content(tmp_path, name, compression):
    archive = _write(tmp_path, _tar([("d/sa_1.jpg", b"1"), ("d/sa_1.json", b"{}")], compression), name)
    store = LocalStorage(tmp_path / "root")
    assert extract_archive(archive, store, FOLDER, SAM) == [[f"{FOLDER}/sa_1.jpg", 1, None]]


def test_extract_archive_picks_zip_by_content(tmp_path):
    archive = _write(tmp_path, make_zip({"d/sa_1.jpg": b"1"}), "download")
    store = LocalStorage(tmp_path / "root")
    (entry,) = extract_archive(archive, store, FOLDER, SAM)
    assert entry[:2] == [f"{FOLDER}/sa_1.jpg", 1] and entry[2] is not None  # a zip's index carries the CRC


def test_extract_archive_refuses_what_is_neither(tmp_path):
    archive = _write(tmp_path, b"<html>URL signature expired</html>\n" * 40, "download")
    with pytest.raises(NotAnArchive, match="download: neither a zip nor a tar"):
        extract_archive(archive, LocalStorage(tmp_path / "root"), FOLDER, SAM)


def test_html_saved_as_tar_raises_read_error_naming_it(tmp_path):
    archive = _write(tmp_path, gzip.compress(b"<html>expired</html>"), "sa_000001.tar")
    with pytest.raises(tarfile.ReadError, match="sa_000001.tar"):
        extract_archive(archive, LocalStorage(tmp_path / "root"), FOLDER, SAM)


@pytest.mark.parametrize("members, reason", [
    ([("a/b", b"file"), ("a/b/sa_3.jpg", b"x")], "needs 'a/b' as a folder, where member 'a/b' is a file"),
    ([("n" * 240 + ".jpg", b"x")], "a name of 244 bytes"),
], ids=["file where a folder must be", "name over 255 bytes"])
def test_members_that_cannot_be_written_are_refused_before_any_write(members, reason, tmp_path, monkeypatch):
    archive = _write(tmp_path, _tar(GOOD_FIRST + members))
    store = LocalStorage(tmp_path / "root")
    spy = WriteSpy(store, monkeypatch)
    with pytest.raises(UnsafeArchive, match=reason):
        extract_tar(archive, store, FOLDER, Extract(into="x"))
    assert spy.keys == []


@pytest.mark.parametrize("where", ["inside a header", "at a member boundary"])
def test_tar_cut_between_members_is_an_error_not_a_shorter_archive(where, tmp_path, monkeypatch):
    """tarfile stops quietly at a cut header: the missing end marker tells a cut tar from a whole one."""
    data = _tar(_sa1b_members(1, 3))
    whole = _write(tmp_path, data, "whole.tar")
    last_header = data.index(b"sa_3.json")  # the last member's header starts with its name
    cut = last_header + 200 if where == "inside a header" else last_header
    archive = _write(tmp_path, data[:cut])
    store = LocalStorage(tmp_path / "root")
    spy = WriteSpy(store, monkeypatch)
    with pytest.raises(tarfile.ReadError, match="sa_000000.tar.*the tar is cut"):
        extract_tar(archive, store, FOLDER, SAM)
    assert spy.keys == []
    assert len(extract_tar(whole, store, FOLDER, SAM)) == 3  # the whole archive extracts
