"""Progress of a long loop (a download's bytes, a crawl's images, an archive's members): a tqdm
bar for a person at a terminal, a log line every few seconds everywhere else.

A bar needs a terminal to redraw on: in an Airflow task's log, a file or a pipe its carriage
returns become one unreadable line, so there (and whenever stderr, where the bar is drawn, is
not a terminal) the same numbers go to the log instead: done of total, percent, rate, ETA.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from typing import Callable

from .airflow_task import in_airflow_task

log = logging.getLogger("vlmdata.progress")

BYTES = "B"


def bars_wanted() -> bool:
    """A bar only for a person watching: stderr is a terminal and this is no Airflow task."""
    try:
        return sys.stderr.isatty() and not in_airflow_task()
    except (AttributeError, ValueError):  # stderr replaced by an object without isatty, or closed
        return False


def human_bytes(n: float | None) -> str:
    """1536 -> '1.5 KiB' (None: 0 B)."""
    n = n or 0
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n} B"


class Progress:
    """``update(done)`` with the count so far (not an increment); ``force=True`` for the last
    one, which always logs (and closes the bar once the total is reached). ``unit`` is
    :data:`BYTES` (shown as KiB, MiB...) or a plural noun ("images"); ``detail`` adds counts
    of the caller's own ("3 dead, 1 broken") to each line. Safe to update from several threads.
    ``total`` may be set later, when a response tells it. ``resumed``: the first count is work
    an earlier run did (a partial download), left out of the rate."""

    def __init__(self, name: str, total: int | None, every: float = 10.0, sink: Callable[[str], None] | None = None, *,
                 unit: str = BYTES, detail: Callable[[], str] | None = None, resumed: bool = False):
        self.name, self.total, self.every, self.unit, self.detail = name, total, every, unit, detail
        self.sink = sink or log.info
        self.start = self.last = time.monotonic()
        self.start_done: int | None = None if resumed else 0
        self._lock = threading.Lock()
        self._bar = None
        self.drawn = bars_wanted()  # decided once: a closed bar is not followed by log lines
        if self.drawn:
            from tqdm import tqdm  # only where a bar is drawn

            scaled = unit == BYTES
            self._bar = tqdm(total=total, desc=name, unit=unit if scaled else f" {unit}", unit_scale=scaled, unit_divisor=1024, dynamic_ncols=True, leave=True)

    def update(self, done: int, force: bool = False) -> None:
        with self._lock:
            if self.start_done is None:
                self.start_done = done
                if self._bar is not None:  # the bar starts there too: its rate is this run's
                    self._bar.initial = self._bar.n = self._bar.last_print_n = done
            if self.drawn:
                if self._bar is not None:
                    self._draw(done, force)
                return
            now = time.monotonic()
            if not force and now - self.last < self.every:
                return
            self.last = now
            self.sink(self.line(done, now))

    def _draw(self, done: int, force: bool) -> None:
        bar = self._bar
        if self.total is not None and bar.total != self.total:
            bar.total = self.total
        bar.update(done - bar.n)
        if self.detail is not None:
            bar.set_postfix_str(self.detail(), refresh=False)
        if force and self.total is not None and done >= self.total:
            self.close()

    def line(self, done: int, now: float | None = None) -> str:
        """The log line: ``name: done of total unit (percent), rate/s, ETA s; detail``."""
        elapsed = max((now or time.monotonic()) - self.start, 1e-6)
        rate = (done - (self.start_done or 0)) / elapsed
        if self.unit == BYTES:
            amount, speed = human_bytes(done), f"{human_bytes(rate)}/s"
            total = human_bytes(self.total or 0)
        else:
            amount, speed = str(done), f"{rate:.1f} {self.unit}/s"
            total = f"{self.total} {self.unit}"
        if self.total:
            eta = (self.total - done) / rate if rate > 0 else float("inf")
            text = f"{self.name}: {amount} of {total} ({100 * done / self.total:.1f}%), {speed}, ETA {eta:.0f} s"
        else:
            text = f"{self.name}: {amount}{'' if self.unit == BYTES else ' ' + self.unit}, {speed}"
        return text + (f"; {self.detail()}" if self.detail else "")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
