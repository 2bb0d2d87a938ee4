"""Hashing while the bytes stream past, so verification costs no second pass."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Expected:
    """What we know of a file before fetching it. Any field may be unknown."""

    size: int | None = None
    sha256: str | None = None
    md5: str | None = None
    git_sha1: str | None = None  # Hugging Face's id of a small (non-LFS) file: sha1 of "blob <size>\0" + bytes


class IntegrityError(RuntimeError):
    """The bytes are not the ones the catalog or the upstream promised."""


class MultiHasher:
    """sha256 always; md5 and git-sha1 only when there is something to compare them with."""

    def __init__(self, expected: Expected):
        self.expected = expected
        self.count = 0
        self._sha256 = hashlib.sha256()
        self._md5 = hashlib.md5(usedforsecurity=False) if expected.md5 else None
        self._git = None
        if expected.git_sha1 and expected.size is not None:
            self._git = hashlib.sha1(f"blob {expected.size}\0".encode(), usedforsecurity=False)

    def update(self, chunk: bytes) -> None:
        self.count += len(chunk)
        self._sha256.update(chunk)
        if self._md5:
            self._md5.update(chunk)
        if self._git:
            self._git.update(chunk)

    def update_from_file(self, path: Path, limit: int) -> None:
        """Hash the first ``limit`` bytes of a partial download we resume."""
        with path.open("rb") as handle:
            while self.count < limit:
                chunk = handle.read(min(1 << 20, limit - self.count))
                if not chunk:
                    break
                self.update(chunk)

    @property
    def sha256(self) -> str:
        return self._sha256.hexdigest()

    @property
    def md5(self) -> str | None:
        return self._md5.hexdigest() if self._md5 else None

    def problems(self) -> list[str]:
        """Every way the bytes differ from what was expected (empty when they match)."""
        exp, found = self.expected, []
        if exp.size is not None and self.count != exp.size:
            found.append(f"size {self.count} != expected {exp.size}")
        if exp.sha256 and self.sha256 != exp.sha256:
            found.append(f"sha256 {self.sha256} != expected {exp.sha256}")
        if exp.md5 and self.md5 != exp.md5:
            found.append(f"md5 {self.md5} != expected {exp.md5}")
        if self._git and self._git.hexdigest() != exp.git_sha1:
            found.append(f"git blob sha1 {self._git.hexdigest()} != expected {exp.git_sha1}")
        return found


def sha256_of(stream, chunk_size: int = 1 << 20) -> tuple[str, int]:
    """sha256 and length of a binary stream (used to re-check stored files for bit rot)."""
    digest, total = hashlib.sha256(), 0
    while chunk := stream.read(chunk_size):
        digest.update(chunk)
        total += len(chunk)
    return digest.hexdigest(), total
