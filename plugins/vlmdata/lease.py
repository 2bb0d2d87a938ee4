"""Leases: one writer at a time for each unit of work, across processes and machines.

A unit is what two runs could otherwise write at once: an artifact (its download, extraction
and manifest record), a crawl shard, a source's verification, a layout, a mixture. Before
writing, a step takes the unit's lease, an object on the storage itself
(``_vlmdata/leases/<unit>.json``), so a CLI run beside an Airflow run, or two Celery workers on
different machines, see the same lease whatever the backend:

* taken and renewed by compare-and-swap (S3 conditional writes, ``If-None-Match``/``If-Match``;
  on a POSIX root a short ``flock``-guarded read-compare-replace), so two takers never both win;
* renewed by a background thread every ``ttl/4`` seconds, and valid for the holder only until
  ``3/4 ttl`` after its last renewal *by its own monotonic clock*: a holder that was frozen
  (SIGSTOP, a stalled VM) or cut off from the storage stops writing before anyone may take its
  lease over (:meth:`Lease.check`, called between writes, raises :class:`LeaseLost`);
* free again when released, when its holder is a dead process on this host (a SIGKILLed worker:
  no wait), or when it has not been renewed for ``ttl`` seconds (a holder on another machine);
* a second writer waits, saying who holds the unit and until when, for at most ``wait``
  seconds (``VLMDATA_LEASE_WAIT``; 0: fail at once), then fails with :class:`LeaseHeld` naming
  the holder. Once it has the lease it re-checks whether the work is still needed, so two
  acquisitions of one source give one download.

Why not Airflow pools or a database lock: the CLI has no Airflow, and S3 users have no shared
file system; the storage is the one thing every writer reaches.
"""

from __future__ import annotations

import contextvars
import functools
import json
import logging
import math
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import psutil

from .storage import STATE_PREFIX, Storage

log = logging.getLogger("vlmdata.lease")

LEASES_PREFIX = f"{STATE_PREFIX}/leases"
DEFAULT_TTL = 120.0  # seconds without renewal before another machine may take a lease over
DEFAULT_WAIT = 6 * 3600.0  # how long a second writer waits for the first (a large download)
CLOCK_SKEW = 5.0  # seconds of wall-clock difference between machines we tolerate


class LeaseHeld(RuntimeError):
    """Another writer holds the unit and did not finish within the wait."""


class LeaseLost(RuntimeError):
    """This writer's lease expired or was taken over: it must stop writing at once."""


def lease_key(unit: str) -> str:
    return f"{LEASES_PREFIX}/{unit.replace('/', '__')}.json"


def ttl_from_env() -> float:
    return float(os.environ.get("VLMDATA_LEASE_TTL") or DEFAULT_TTL)


def wait_from_env() -> float:
    return float(os.environ.get("VLMDATA_LEASE_WAIT") or DEFAULT_WAIT)


def describe_writer() -> str:
    """Who is writing, in words a user recognises: the Airflow task (its run and try) or the CLI."""
    env = os.environ
    if env.get("AIRFLOW_CTX_TASK_ID"):
        return (f"Airflow task {env.get('AIRFLOW_CTX_DAG_ID')}.{env['AIRFLOW_CTX_TASK_ID']} of run {env.get('AIRFLOW_CTX_DAG_RUN_ID')}"
                f" (try {env.get('AIRFLOW_CTX_TRY_NUMBER', '?')})")
    return "vlmdata CLI"


def _pid_namespace() -> str:
    """Containers sharing a host name (host networking) still have pid namespaces of their own:
    a pid is only ours to look up inside the same one."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


@dataclass(frozen=True)
class Holder:
    id: str
    host: str
    pid: int
    pid_started: float  # tells a reused pid from the holder
    who: str
    pid_namespace: str = ""

    @classmethod
    def me(cls, who: str | None = None) -> Holder:
        pid = os.getpid()
        return cls(uuid.uuid4().hex, socket.gethostname(), pid, psutil.Process(pid).create_time(), who or describe_writer(), _pid_namespace())

    def __str__(self) -> str:
        return f"{self.who}, pid {self.pid} on {self.host}"

    def is_dead_here(self) -> bool:
        """True only when we can be sure: the holder ran on this host, in this pid namespace, and
        its process is gone."""
        if self.host != socket.gethostname() or self.pid_namespace != _pid_namespace():
            return False
        try:
            return abs(psutil.Process(self.pid).create_time() - self.pid_started) > 1e-3
        except psutil.NoSuchProcess:
            return True
        except psutil.Error:
            return False


@dataclass
class _Record:
    unit: str
    holder: Holder
    acquired_at: float
    expires_at: float  # wall clock; a taker also watches the record not change for ttl
    ttl: float
    released: bool = False

    def encode(self) -> bytes:
        data = {**self.__dict__, "holder": self.holder.__dict__}
        return (json.dumps(data, sort_keys=True) + "\n").encode()

    @classmethod
    def decode(cls, data: bytes) -> _Record:
        raw = json.loads(data)
        return cls(**{**raw, "holder": Holder(**raw["holder"])})


@dataclass
class Lease:
    """A held lease. :meth:`check` before every write that must not outlive it."""

    storage: Storage
    unit: str
    holder: Holder
    ttl: float
    took_over: str | None = None  # how the previous holder left: None (no holder), "released", "dead", "expired"
    _version: str | None = field(default=None, repr=False)
    _valid_until: float = field(default=0.0, repr=False)
    _lost: str | None = field(default=None, repr=False)
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)
    _acquired_at: float = field(default=0.0, repr=False)

    @property
    def previous_may_still_write(self) -> bool:
        """The previous holder's lease expired but its process may be alive (frozen, on another
        machine): files it had open must not be shared with it (copy, do not append)."""
        return self.took_over == "expired"

    def check(self) -> None:
        if self._lost:
            raise LeaseLost(f"{self.unit}: {self._lost}; stopped without finishing, nothing of this attempt was published")
        if time.monotonic() > self._valid_until:
            raise LeaseLost(f"{self.unit}: the lease was not renewed in time (this process was frozen or could not reach "
                            f"{self.storage.url}); another writer may have taken over, so this one stops")

    # -- renewal ----------------------------------------------------------------------
    def _record(self, released: bool = False) -> _Record:
        return _Record(self.unit, self.holder, self._acquired_at, time.time() + (0 if released else self.ttl), self.ttl, released)

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.ttl / 4):
            started = time.monotonic()
            try:
                version = self.storage.write_if(lease_key(self.unit), self._record().encode(), self._version)
            except Exception as exc:  # a storage hiccup: try again; check() stops the holder if it lasts
                log.warning("%s: could not renew the lease (%s); retrying", self.unit, exc)
                continue
            if version is None:
                current = _read(self.storage, self.unit)
                self._lost = f"the lease was taken over by {current[0].holder if current and current[0] else 'another writer'}"
                log.error("%s: %s", self.unit, self._lost)
                return
            self._version, self._valid_until = version, started + 0.75 * self.ttl

    def _start(self, version: str, started: float) -> None:
        self._version, self._valid_until = version, started + 0.75 * self.ttl
        self._thread = threading.Thread(target=self._renew_loop, name=f"lease {self.unit}", daemon=True)
        self._thread.start()

    def release(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()
        if self._lost:
            return
        try:
            self.storage.write_if(lease_key(self.unit), self._record(released=True).encode(), self._version)
        except Exception as exc:  # the lease then expires by itself
            log.warning("%s: could not release the lease (%s); it expires in %.0f s", self.unit, exc, self.ttl)


def _read(storage: Storage, unit: str) -> tuple[_Record | None, str] | None:
    """The current record and its version; (None, version) for an unreadable one."""
    found = storage.read_versioned(lease_key(unit))
    if found is None:
        return None
    data, version = found
    try:
        return _Record.decode(data), version
    except (ValueError, TypeError, KeyError) as exc:
        log.warning("%s: unreadable lease %s (%s): treating it as free", unit, lease_key(unit), exc)
        return None, version


def _why_free(record: _Record | None, version: str, seen: dict[str, float]) -> str | None:
    """How the current holder left (released, dead, expired), or None while it holds the unit.

    Expired: past the holder's wall-clock deadline (give or take ``CLOCK_SKEW``), or not renewed
    while this process watched it for the holder's ttl (which no clock skew can shorten).
    """
    if record is None or record.released:
        return "released"
    if record.holder.is_dead_here():
        return "dead"
    first_seen = seen.setdefault(version, time.monotonic())
    if time.time() > record.expires_at + CLOCK_SKEW or time.monotonic() - first_seen >= record.ttl + CLOCK_SKEW:
        return "expired"
    return None


def try_take(storage: Storage, unit: str, holder: Holder, ttl: float, seen: dict[str, float] | None = None) -> tuple[Lease | None, _Record | None]:
    """One attempt: the lease if it was free, else (None, the current holder's record)."""
    seen = {} if seen is None else seen
    started = time.monotonic()
    lease = Lease(storage, unit, holder, ttl, _acquired_at=time.time())
    current = _read(storage, unit)
    if current is None:
        version = storage.write_if(lease_key(unit), lease._record().encode(), None)
    else:
        record, old_version = current
        lease.took_over = _why_free(record, old_version, seen)
        if lease.took_over is None:
            return None, record
        version = storage.write_if(lease_key(unit), lease._record().encode(), old_version)
        if version is not None and record is not None and lease.took_over != "released":
            log.warning("%s: took the lease over from %s (%s)", unit, record.holder, lease.took_over)
    if version is None:  # another taker won the race
        current = _read(storage, unit)
        return None, current[0] if current else None
    lease._start(version, started)
    return lease, None


@contextmanager
def hold(storage: Storage, unit: str, *, wait: float | None = None, ttl: float | None = None, who: str | None = None, poll: float = 2.0) -> Iterator[Lease]:
    """Hold the lease of ``unit`` for the block; wait for another holder as described above."""
    ttl = ttl_from_env() if ttl is None else ttl
    wait = wait_from_env() if wait is None else wait
    holder = Holder.me(who)
    deadline = time.monotonic() + wait
    seen: dict[str, float] = {}
    last_said = 0.0
    while True:
        lease, other = try_take(storage, unit, holder, ttl, seen)
        if lease is not None:
            break
        now = time.monotonic()
        whom = other.holder if other else "another writer"
        since = time.strftime("%H:%M:%S", time.gmtime(other.acquired_at)) + " UTC" if other else "just now"
        if now >= deadline:
            raise LeaseHeld(f"{unit} is being written by {whom} since {since}; waited {wait:.0f} s. "
                            f"Let it finish (or, if it is dead, its lease expires {ttl:.0f} s after its last renewal) and run again.")
        if now - last_said >= 30:
            log.info("%s: waiting for %s, who holds it since %s (up to %.0f s more)", unit, whom, since, deadline - now)
            last_said = now
        time.sleep(min(poll * random.uniform(0.8, 1.2), max(0.0, deadline - now)))
    try:
        yield lease
    finally:
        lease.release()


_current: contextvars.ContextVar[Lease | None] = contextvars.ContextVar("vlmdata_lease", default=None)


def exclusive(unit_of: Callable[..., tuple[Storage, str]]):
    """Decorate a step so it runs holding the lease of the unit ``unit_of(*args, **kwargs)``
    names (a storage and a unit name); inside, :func:`current_guard` checks that lease."""

    def decorate(step):
        @functools.wraps(step)
        def holding(*args, **kwargs):
            storage, unit = unit_of(*args, **kwargs)
            with hold(storage, unit) as lease:
                token = _current.set(lease)
                try:
                    return step(*args, **kwargs)
                finally:
                    _current.reset(token)

        return holding

    return decorate


def current_guard() -> Callable[[], None]:
    """The check of the lease this step runs under (a no-op outside one). Take it in the step's
    own thread and hand it to worker threads: context variables do not follow into a pool."""
    lease = _current.get()
    return lease.check if lease else _no_lease


def _no_lease() -> None:
    return None


def valid_until(guard: Callable[[], None]) -> float:
    """Until when (``time.monotonic()``, one clock for every process of a host) the lease that
    ``guard`` checks (a :meth:`Lease.check`) stays valid unless renewed; infinity for any other
    guard. A worker process cannot call the check (the lease and its renewal thread live in
    its parent): the parent checks, then publishes this for the worker to stop by."""
    lease = getattr(guard, "__self__", None)
    return lease._valid_until if isinstance(lease, Lease) else math.inf
