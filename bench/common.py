"""What every comparison shares: the result row, the context, timing and peer-tool helpers."""

from __future__ import annotations

import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

SKIPPED = "not installed, skipped"


@dataclass
class Row:
    """One line of the results table: ours against one peer.

    ``ratio`` is ours' time divided by the peer's time for the same work (so below 1 means
    ours is faster, above 1 slower); None when the peer did not run.
    """

    name: str
    ours: str
    peer: str
    ratio: float | None
    notes: str = ""
    data: dict[str, Any] = field(default_factory=dict)  # raw numbers for latest.json

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Context:
    quick: bool
    rounds: int
    tmp: Path  # a fresh folder for this comparison, removed after it
    log: Callable[[str], None]
    mixture_records: int | None = None  # --mixture-records: the scale run (ShareGPT4V-PT has 1,246,901)
    segmented_mib: int | None = None  # --segmented-mib: the size of the segmented comparison's file


@dataclass
class Contender:
    """One way of doing the work. ``run`` is timed; ``before``/``after`` (fresh output folders,
    clean-up) are not. ``skip`` names why it cannot run here."""

    name: str
    run: Callable[[], Any]
    before: Callable[[], None] | None = None
    after: Callable[[], None] | None = None
    skip: str | None = None
    times: list[float] = field(default_factory=list)
    result: Any = None

    @property
    def median(self) -> float | None:
        return statistics.median(self.times) if self.times else None

    @property
    def time(self) -> float | None:
        """The time a row shows: the best of the rounds. Interference from the rest of the
        machine only ever adds time, so the fastest round is the least disturbed one."""
        return min(self.times) if self.times else None


def settle_disk() -> None:
    """Flush dirty pages (untimed) so that no run pays for the write-back of the one before."""
    if hasattr(os, "sync"):
        os.sync()


def rotated(items: list, number: int) -> list:
    """The order for round ``number`` (1-based): each contender goes first in turn."""
    k = (number - 1) % len(items) if items else 0
    return items[k:] + items[:k]


def race(contenders: list[Contender], rounds: int, log: Callable[[str], None], settle: Callable[[], None] | None = None) -> None:
    """Run every contender once per round, interleaved (so that drift in the machine's state
    hits all of them alike) in an order that rotates each round (so that none always runs
    right after the same other one), and keep each one's wall-clock times. ``settle`` runs
    untimed before each run (``settle_disk`` for comparisons that write a lot)."""
    active = [c for c in contenders if not c.skip]
    for number in range(1, rounds + 1):
        for c in rotated(active, number):
            if c.before:
                c.before()
            if settle:
                settle()
            start = time.perf_counter()
            c.result = c.run()
            elapsed = time.perf_counter() - start
            if c.after:
                c.after()
            c.times.append(elapsed)
            log(f"  round {number}/{rounds} {c.name}: {elapsed:.3f} s")


def which(tool: str) -> str | None:
    return shutil.which(tool)


def tool_version(tool: str, *args: str) -> str | None:
    """First line of ``tool --version`` (or the given arguments), None when not installed."""
    path = which(tool)
    if not path:
        return None
    try:
        out = subprocess.run([path, *(args or ("--version",))], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (out.stdout or out.stderr).strip().splitlines()
    found = re.search(r"\d+\.\d+(?:\.\d+)?[a-z]?", text[0]) if text else None
    return found.group(0) if found else "installed"


def run_tool(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    """Run a peer tool; its failure is the benchmark's failure (the output would be wrong)."""
    out = subprocess.run(args, capture_output=True, text=True, **kwargs)
    if out.returncode != 0:
        raise RuntimeError(f"{Path(args[0]).name} exited with {out.returncode}: {(out.stderr or out.stdout).strip()[:500]}")
    return out


def python() -> str:
    return sys.executable


# ---------------------------------------------------------------------------- formatting


def fmt_time(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds:.2f} s" if seconds >= 0.1 else f"{seconds * 1000:.0f} ms"


def fmt_bytes_rate(nbytes: int, seconds: float | None) -> str:
    if not seconds:
        return "-"
    return f"{nbytes / seconds / 1e6:.0f} MB/s"


def fmt_count_rate(count: int, seconds: float | None, unit: str) -> str:
    if not seconds:
        return "-"
    return f"{count / seconds:,.0f} {unit}/s"


def cell(seconds: float | None, rate: str) -> str:
    return f"{fmt_time(seconds)} ({rate})" if seconds is not None else "-"


def ratio(ours: float | None, peer: float | None) -> float | None:
    if not ours or not peer:
        return None
    return ours / peer


def verdict(r: float | None, subject: str = "ours") -> str:
    """Words for a time ratio: 'ours 2.9x faster' / 'ours 1.4x slower' / 'on par' (within 5%)."""
    if r is None:
        return ""
    if 0.95 <= r <= 1.05:
        return "on par"
    return f"{subject} {1 / r:.2g}x faster" if r < 1 else f"{subject} {r:.2g}x slower"


def pair_rows(
    name: str,
    ours: Contender,
    peers: list[Contender],
    ours_cell: Callable[[Contender], str],
    peer_cell: Callable[[Contender], str],
    notes: Callable[[Contender], str] = lambda c: "",
    data: Callable[[Contender], dict] = lambda c: {},
    subject: str = "ours",
) -> list[Row]:
    """One row per peer: ours' best round against the peer's best round."""
    rows = []
    for peer in peers:
        if peer.skip:
            rows.append(Row(name, ours_cell(ours), f"{peer.name}: {peer.skip}", None, notes(peer), {"peer": peer.name, "skipped": peer.skip}))
            continue
        r = ratio(ours.time, peer.time)
        note = "; ".join(x for x in (verdict(r, subject), notes(peer)) if x)
        raw = {
            "peer": peer.name, "ours_s": ours.times, "peer_s": peer.times,
            "ratio_of_medians": ratio(ours.median, peer.median), **data(peer),
        }
        rows.append(Row(name, ours_cell(ours), f"{peer.name}: {peer_cell(peer)}", r, note, raw))
    return rows


def remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
