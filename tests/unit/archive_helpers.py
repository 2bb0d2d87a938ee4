"""Helpers shared by the zip and tar extraction tests."""

from __future__ import annotations

import threading
from pathlib import Path


def write_archive(tmp_path: Path, data: bytes, name: str) -> Path:
    path = tmp_path / "in" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


class WriteSpy:
    """Wraps a storage's writes (``write_stream``, ``write_bytes``, from any thread) and records
    each key written once, however one write calls the other."""

    def __init__(self, storage, monkeypatch):
        self.keys: list[str] = []
        depth = threading.local()

        def spying(real):
            def spy(key, data):
                if not getattr(depth, "n", 0):
                    self.keys.append(key)
                depth.n = getattr(depth, "n", 0) + 1
                try:
                    return real(key, data)
                finally:
                    depth.n -= 1

            return spy

        for name in ("write_stream", "write_bytes"):
            monkeypatch.setattr(storage, name, spying(getattr(storage, name)))


def files_under(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file() or p.is_symlink())
