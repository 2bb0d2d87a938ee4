"""Leases on both backends: one holder at a time, waits that name the holder, and takeovers from
holders that died (at once) or froze (after the ttl, and the frozen one then stops by itself)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from vlmdata.lease import Holder, LeaseHeld, LeaseLost, current_guard, exclusive, hold, lease_key, try_take

REPO = Path(__file__).resolve().parents[2]

# A separate process that takes a lease, says so, then either sleeps or writes a file through the
# lease's guard once a second (the zombie: it must stop writing once its lease is gone).
HOLDER = """
import json, sys, time
from vlmdata.storage import S3Options, open_storage
from vlmdata.lease import hold, LeaseLost
url, options, unit, ttl, out = json.loads(sys.argv[1])
storage = open_storage(url, S3Options(**options) if options else None)
try:
    with hold(storage, unit, ttl=ttl, wait=0, who="test holder") as lease:
        print("held", flush=True)
        for n in range(600):
            lease.check()
            if out:
                open(out, "a").write(f"{n}\\n")
            time.sleep(0.2)
except LeaseLost as exc:
    print("lost:", exc, flush=True)
    sys.exit(3)
"""


def start_holder(storage, unit: str, ttl: float, out: str = "") -> subprocess.Popen:
    url, options = storage.spec
    args = json.dumps([url, options.client_kwargs() if options else None, unit, ttl, out])
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, args], stdout=subprocess.PIPE, text=True, cwd=REPO)
    assert proc.stdout.readline().strip() == "held"  # blocks until the lease is taken
    return proc


def test_one_holder_at_a_time_and_the_second_is_told_who(storage):
    with hold(storage, "artifact/coco/train2017.zip", ttl=60, who="first run") as first:
        lease, other = try_take(storage, "artifact/coco/train2017.zip", Holder.me("second run"), ttl=60)
        assert lease is None and other.holder.who == "first run"
        with pytest.raises(LeaseHeld, match=r"artifact/coco/train2017.zip is being written by first run, pid \d+ on "):
            with hold(storage, "artifact/coco/train2017.zip", wait=0, who="second run"):
                pass
        first.check()  # still ours
    with hold(storage, "artifact/coco/train2017.zip", wait=0, who="second run") as second:  # released: free at once
        assert second.took_over == "released"


def test_a_waiting_writer_gets_the_lease_when_the_holder_finishes(storage):
    got = []

    def second():
        with hold(storage, "mixture/r", wait=60, ttl=60, poll=0.1):
            got.append(time.monotonic())

    with hold(storage, "mixture/r", ttl=60):
        waiter = threading.Thread(target=second)
        waiter.start()
        time.sleep(1.0)
        assert not got, "the second writer must wait while the first holds the unit"
        released = time.monotonic()
    waiter.join(30)
    assert got and got[0] >= released


def test_racing_takers_never_both_win(storage):
    for round_ in range(5):
        unit = f"race/{round_}"
        winners, barrier = [], threading.Barrier(6)

        def take():
            barrier.wait()
            lease, _ = try_take(storage, unit, Holder.me(f"taker {threading.get_ident()}"), ttl=60)
            if lease:
                winners.append(lease)

        threads = [threading.Thread(target=take) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(winners) == 1
        winners[0].release()


def test_a_dead_holder_on_this_host_is_taken_over_at_once(storage):
    holder = start_holder(storage, "crawl/shard-1", ttl=600)
    holder.kill()
    holder.wait()
    started = time.monotonic()
    with hold(storage, "crawl/shard-1", wait=30, ttl=600) as lease:
        assert lease.took_over == "dead"
    assert time.monotonic() - started < 10  # no waiting for the 600 s ttl


def test_a_frozen_holder_loses_its_lease_after_the_ttl_and_stops_writing(storage, tmp_path):
    out = tmp_path / "zombie-writes.txt"
    zombie = start_holder(storage, "artifact/x/y", ttl=3, out=str(out))
    try:
        time.sleep(0.5)
        zombie.send_signal(signal.SIGSTOP)
        frozen_at = time.monotonic()
        with pytest.raises(LeaseHeld):  # not before its ttl
            with hold(storage, "artifact/x/y", wait=0, ttl=3):
                pass
        with hold(storage, "artifact/x/y", wait=60, ttl=3, poll=0.2) as lease:
            assert lease.took_over == "expired" and lease.previous_may_still_write
            assert time.monotonic() - frozen_at >= 2.25  # the zombie's own validity ran out first
            writes_before = out.read_text().count("\n")
            zombie.send_signal(signal.SIGCONT)
            assert zombie.wait(30) == 3, "the zombie must notice it lost the lease and stop"
            assert out.read_text().count("\n") == writes_before, "the zombie wrote after losing its lease"
            assert "lost:" in zombie.stdout.read()
            lease.check()  # the new holder is unaffected
        record = json.loads(storage.read_bytes(lease_key("artifact/x/y")))
        assert record["released"] is True
    finally:
        if zombie.poll() is None:
            zombie.send_signal(signal.SIGCONT)
            zombie.kill()


def test_exclusive_steps_and_their_guard(storage):
    @exclusive(lambda storage, name: (storage, f"layout/{name}"))
    def step(storage, name):
        guard = current_guard()
        guard()
        lease, other = try_take(storage, f"layout/{name}", Holder.me("other"), ttl=60)
        return lease, other.holder.pid

    lease, pid = step(storage, "llava15")
    assert lease is None and pid == os.getpid()
    current_guard()()  # outside a step: nothing to check


def test_a_lost_lease_stops_the_holder(storage):
    with hold(storage, "verify/coco", ttl=60) as lease:
        lease._valid_until = time.monotonic() - 1  # as after a freeze longer than its validity
        with pytest.raises(LeaseLost, match="verify/coco: the lease was not renewed in time"):
            lease.check()


def test_a_holder_in_another_pid_namespace_is_never_judged_dead_by_its_pid(storage):
    """Containers that share the host name (host networking) do not share pids: waiting for
    the ttl is the only safe judgement there."""
    me = Holder.me("here")
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout
    dead_here = Holder(me.id, me.host, int(gone), me.pid_started, "a dead process", me.pid_namespace)
    elsewhere = Holder(me.id, me.host, int(gone), me.pid_started, "a container", "pid:[1]")
    assert dead_here.is_dead_here() and not elsewhere.is_dead_here()
