"""Helpers shared by the zip and tar extraction tests."""

from __future__ import annotations

from pathlib import Path


def write_archive(tmp_path: Path, data: bytes, name: str) -> Path:
    path = tmp_path / "in" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


class WriteSpy:
    """Wraps a storage's write_stream and records the keys written."""

    def __init__(self, storage, monkeypatch):
        self.keys: list[str] = []
        real = storage.write_stream

        def spy(key, stream):
            self.keys.append(key)
            return real(key, stream)

        monkeypatch.setattr(storage, "write_stream", spy)


def files_under(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file() or p.is_symlink())
