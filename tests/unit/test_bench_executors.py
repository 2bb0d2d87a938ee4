"""The executors bench's arithmetic: where a task instance's time went, from its REST API record
and its task log (the Airflow runs themselves are the bench's, not a test's)."""

from __future__ import annotations

import pytest

from bench.executors import idle_in_run, p90, run_span, slots_free_while_waiting, spread, task_timings

TI = {
    "scheduled_when": "2026-12-03T07:30:48.000000Z",
    "queued_when": "2026-12-03T07:30:50.000000Z",
    "start_date": "2026-12-03T07:30:51.000000Z",
    "end_date": "2026-12-03T07:30:55.000000Z",
}


def entry(second: float, event: str, **extra) -> dict:
    return {"timestamp": f"2026-12-03T07:30:{second:09.6f}Z", "event": event, **extra}


LOG = [  # Airflow's JSON log lines of one task, abridged
    entry(51.5, "::group::Pre Execute"),
    entry(51.6, "Filling up the DagBag from /dags/acquire.py"),
    entry(52.4, "Worker startup parse complete", dag_file_parse_ms=800),
    entry(52.5, "::endgroup::"),
    entry(53.0, "coco_train2017: up to date"),
    entry(54.5, "::group::Post Execute"),
    entry(54.6, "Pushing xcom"),
    entry(54.9, "::endgroup::"),
]


def test_a_task_split_into_queue_start_up_execute_and_finish():
    t = task_timings(TI, LOG)
    assert t["queued"] == pytest.approx(1.0)
    assert t["startup"] == pytest.approx(1.5)  # started -> end of "Pre Execute"
    assert t["parse"] == pytest.approx(0.8)
    assert t["execute"] == pytest.approx(2.0)  # between the two groups
    assert t["finish"] == pytest.approx(0.5)
    assert t["overhead"] == pytest.approx(3.0)
    assert t["duration"] == pytest.approx(4.0)
    assert t["waiting"] == pytest.approx(2.0)  # ready -> queued
    assert t["ready"] == pytest.approx(4.5)  # ready -> execute


def test_a_task_that_raised_executes_until_it_ended():
    t = task_timings(TI, LOG[:5])  # no "Post Execute" group
    assert t["execute"] == pytest.approx(2.5) and t["finish"] == pytest.approx(0.0)


def test_a_task_without_its_log_has_no_split_but_keeps_its_duration():
    t = task_timings(TI, [])
    assert t["startup"] is None and t["execute"] is None and t["overhead"] is None
    assert t["queued"] == pytest.approx(1.0) and t["duration"] == pytest.approx(4.0)


def test_spread_over_the_tasks_that_have_the_component():
    timings = [{"queued": float(v)} for v in range(1, 11)] + [{"queued": None}]
    s = spread(timings, "queued")
    assert s == {"median": 5.5, "p90": pytest.approx(9.1), "n": 10}
    assert spread([{"queued": None}], "queued") is None
    assert p90([2.0]) == 2.0


def test_run_span_from_the_first_run_queued_to_the_last_finished():
    runs = [
        {"queued_at": "2026-12-03T07:30:00Z", "end_date": "2026-12-03T07:31:00Z"},
        {"queued_at": "2026-12-03T07:30:30Z", "end_date": "2026-12-03T07:32:10Z"},
    ]
    assert run_span(runs) == pytest.approx(130.0)


def test_a_run_is_idle_where_no_task_is_queued_or_running():
    run = {"start_date": "2026-12-03T07:30:00Z", "end_date": "2026-12-03T07:30:20Z"}
    tis = [
        {"queued_when": "2026-12-03T07:30:02Z", "start_date": "2026-12-03T07:30:03Z", "end_date": "2026-12-03T07:30:06Z"},
        {"queued_when": "2026-12-03T07:30:05Z", "start_date": "2026-12-03T07:30:05Z", "end_date": "2026-12-03T07:30:08Z"},  # overlaps
        {"queued_when": None, "start_date": "2026-12-03T07:30:12Z", "end_date": "2026-12-03T07:30:15Z"},
        {"queued_when": None, "start_date": None, "end_date": None},  # skipped, never ran
    ]
    assert idle_in_run(run, tis) == pytest.approx(20 - 6 - 3)
    assert idle_in_run({"start_date": None, "end_date": None}, tis) is None


def test_slot_seconds_free_while_a_ready_task_waited():
    at = lambda second: f"2026-12-03T07:30:{second:02d}Z"  # noqa: E731
    tis = [
        # runs 0-10 in one of the two slots
        {"scheduled_when": at(0), "queued_when": at(0), "end_date": at(10)},
        # ready at 2, queued only at 6 although the second slot was free: 4 slot-seconds lost
        {"scheduled_when": at(2), "queued_when": at(6), "end_date": at(12)},
        # ready at 7 while both slots are busy until 10, then waits 3 s more with a slot free
        {"scheduled_when": at(7), "queued_when": at(13), "end_date": at(15)},
    ]
    assert slots_free_while_waiting(tis, slots=2) == pytest.approx(4 + 3)
    assert slots_free_while_waiting([{"queued_when": at(0), "end_date": at(1)}], slots=2) is None
