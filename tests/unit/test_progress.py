"""Progress: a tqdm bar when a person watches a terminal, log lines in a file, a pipe or an
Airflow task. The terminal is a real one (a pseudo-terminal from the standard library)."""

from __future__ import annotations

import fcntl
import logging
import os
import pty
import struct
import subprocess
import sys
import termios
import textwrap

import pytest

from vlmdata.progress import Progress

# Counts 1..3 of 3 images, every update reported (every=0). AIRFLOW_TASK=1 makes the process
# look like an Airflow task's: the module Airflow's task runner loads is present.
CHILD = textwrap.dedent("""
    import logging, os, sys, types
    if os.environ.get("AIRFLOW_TASK"):
        sys.modules["airflow.sdk.execution_time.task_runner"] = types.ModuleType("task_runner")
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    from vlmdata.progress import Progress
    with Progress("shard-0", 3, 0, unit="images") as progress:
        for done in (1, 2, 3):
            progress.update(done)
""")


def run_on_terminal(env_extra: dict | None = None) -> str:
    """The child's stdout and stderr as a terminal shows them."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # 24 rows, 100 columns
    child = subprocess.Popen([sys.executable, "-c", CHILD], stdin=subprocess.DEVNULL, stdout=follower, stderr=follower, env={**os.environ, **(env_extra or {})})
    os.close(follower)
    output = b""
    try:
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            output += chunk
    finally:
        os.close(leader)
        assert child.wait(timeout=120) == 0
    return output.decode(errors="replace")


def run_on_pipe() -> str:
    done = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=120, check=True)
    return done.stderr


def test_a_terminal_gets_a_bar_and_no_log_lines():
    shown = run_on_terminal()
    assert "shard-0: 100%" in shown and "3/3" in shown and "images/s" in shown
    assert "of 3 images" not in shown


def test_a_pipe_gets_log_lines_and_no_bar():
    lines = run_on_pipe().splitlines()
    assert [line.split(" (")[0] for line in lines] == ["shard-0: 1 of 3 images", "shard-0: 2 of 3 images", "shard-0: 3 of 3 images"]
    assert "\r" not in "".join(lines) and "|" not in "".join(lines)


def test_an_airflow_task_gets_log_lines_even_on_a_terminal():
    shown = run_on_terminal({"AIRFLOW_TASK": "1"})
    assert "shard-0: 3 of 3 images (100.0%)" in shown
    assert "3/3" not in shown


def test_log_lines_say_done_of_total_rate_eta_and_the_callers_counts(caplog):
    lines = []
    progress = Progress("coco.zip", 4, 0, lines.append, unit="members", detail=lambda: "3 written, 1 already present")
    progress.update(2)
    assert lines[0].startswith("coco.zip: 2 of 4 members (50.0%), ") and " members/s, ETA " in lines[0]
    assert lines[0].endswith("; 3 written, 1 already present")


def test_bytes_show_in_binary_units_and_at_most_every_period():
    lines = []
    progress = Progress("f.bin", 3 << 20, 3600, lines.append)
    progress.update(1 << 20)  # within the period: not logged
    progress.update(3 << 20, force=True)  # the last one always is
    assert len(lines) == 1 and lines[0].startswith("f.bin: 3.0 MiB of 3.0 MiB (100.0%), ")


@pytest.mark.parametrize("total", [None, 5])
def test_an_unknown_total_is_no_error(total):
    lines = []
    Progress("stream", total, 0, lines.append, unit="images").update(5, force=True)
    assert lines[0].startswith("stream: 5 images, " if total is None else "stream: 5 of 5 images")


def test_the_default_sink_logs_under_vlmdata(caplog):
    with caplog.at_level(logging.INFO, logger="vlmdata.progress"):
        Progress("x", 1, 0, unit="images").update(1)
    assert "x: 1 of 1 images (100.0%)" in caplog.text
