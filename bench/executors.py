"""Executors: the replica set through a real Airflow on the LocalExecutor and on Celery workers,
and Airflow's own cost per task.

Every setup starts a fresh Airflow (:class:`vlmdata.localairflow.LocalAirflow`; for Celery with
fresh PostgreSQL and Redis servers from :mod:`vlmdata.services`) with the environment the demo
gives it (``vlmdata.demo.AIRFLOW_SETTINGS`` and the replicas' mirror map, catalog overlay and
links file), waits until it is ready (untimed), then drives every source's loopback replica
(:class:`vlmdata.replicas.sources.Replicas`, one set of servers for every setup) through
acquisition, verification, layouts and mixtures with ``vlmdata.demo.run_everything``. With
``--quick`` only the slice runs: COCO train2017 and LLaVA-Instruct-150K acquired, both verified,
both layouts and the ``llava_instruct_150k`` mixture (the other DAGs stay paused).

What is measured, from the REST API and the task logs once everything has settled:

* the wall time to settle everything (first run queued to last run finished), the task
  instances that ran (those that record a hostname), tasks per minute and per worker, and the
  sum of the task instances' durations (``end_date - start_date``): against the wall time and
  the task slots, what the slots spent outside tasks (scheduling, queueing) shows; how long DAG
  runs sat with none of their tasks queued or running; and the slot-seconds during which a slot
  was free while a ready task waited for one (an executor handing slots back late);
* per task instance, Airflow's own time: ``queued_when`` -> ``start_date`` (executor, broker,
  worker pick-up), ``start_date`` -> the end of the task log's "Pre Execute" group (the task
  process starts and parses its DAG file; the log's ``dag_file_parse_ms`` is the parse alone),
  and the "Post Execute" group -> ``end_date`` (XCom, state, asset events); against the
  operator's own ``execute`` (between the two groups).

The CPU a task process pays at start (its DAG file's parse and its imports) is ``bench.startup``'s.
"""

from __future__ import annotations

import json
import statistics
import time
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from . import REPO_ROOT
from .common import Context, Row, ratio, verdict

NAME = "executors"
# The slice (--quick): two sources and what their verification triggers.
QUICK_ACQUISITIONS = ("acquire_coco_train2017", "acquire_llava_instruct_150k")
QUICK_DAGS = (*QUICK_ACQUISITIONS, "verify_coco_train2017", "verify_llava_instruct_150k", "layout_llava15", "layout_sharegpt4v", "mix_llava_instruct_150k")
LOCAL_SLOTS = 2  # LocalAirflow's LocalExecutor: one slot per core, at least 2 (2 on the 2-core bench machine)


@dataclass(frozen=True)
class Setup:
    label: str
    workers: int  # Celery workers; 0: the LocalExecutor
    concurrency: int = 2  # task slots per Celery worker


# A Celery worker stands for a machine: adding one adds its slots. 1 worker x 2 slots has the
# LocalExecutor's 2 slots (the executors compared on equal terms); 2 workers x 1 slot keep the
# 2 slots (what splitting them over two worker processes costs); 2 workers x 2 slots is scaling
# out as in production, which on a 2-core machine adds slots but no cores.
SETUPS = (
    Setup("LocalExecutor", 0, LOCAL_SLOTS),
    Setup("Celery 1 worker x 2 slots", 1, 2),
    Setup("Celery 2 workers x 1 slot", 2, 1),
    Setup("Celery 2 workers x 2 slots", 2, 2),
)


# ---------------------------------------------------------------------------- pure helpers


def _when(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


def _seconds(start: datetime | None, end: datetime | None) -> float | None:
    return (end - start).total_seconds() if start and end else None


def task_timings(ti: dict, log: list[dict]) -> dict[str, float | None]:
    """Where one task instance's time went, from its REST API record and its task log's entries
    (Airflow's JSON log lines: ``timestamp``, ``event``, ...). None where a mark is missing (a
    task that failed in start-up has no "Pre Execute" end; one that raised, no "Post Execute").

    waiting: ready (scheduled) -> queued, i.e. waiting for an executor slot; queued: queued ->
    started; startup: started -> operator's execute begins (task process start-up and DAG
    parse); parse: the DAG file parse alone; execute: the operator's execute; finish: execute's
    end -> ended; overhead: queued + startup + finish; ready: ready -> execute begins (the
    latency a task sees, comparable across executors whichever side of "queued" they make a task
    wait on); duration: started -> ended.
    """
    start, end = _when(ti.get("start_date")), _when(ti.get("end_date"))
    execute_from = execute_to = parse = None
    in_pre = False
    for entry in log:
        event = entry.get("event")
        if event == "::group::Pre Execute":
            in_pre = True
        elif event == "::endgroup::" and in_pre and execute_from is None:
            execute_from = _when(entry.get("timestamp"))
        elif event == "::group::Post Execute" and execute_to is None:
            execute_to = _when(entry.get("timestamp"))
        elif event == "Worker startup parse complete" and parse is None:
            parse = entry.get("dag_file_parse_ms")
    queued = _seconds(_when(ti.get("queued_when")), start)
    startup = _seconds(start, execute_from)
    finish = _seconds(execute_to or end, end) if execute_from else None
    parts = (queued, startup, finish)
    ready = _when(ti.get("scheduled_when"))
    return {
        "waiting": _seconds(ready, _when(ti.get("queued_when"))),
        "ready": _seconds(ready, execute_from),
        "queued": queued,
        "startup": startup,
        "parse": parse / 1000 if parse is not None else None,
        "execute": _seconds(execute_from, execute_to or end),
        "finish": finish,
        "overhead": sum(parts) if None not in parts else None,
        "duration": _seconds(start, end),
    }


def p90(values: list[float]) -> float:
    """The 90th percentile (inclusive, linear interpolation); the value itself for one value."""
    return statistics.quantiles(values, n=10, method="inclusive")[-1] if len(values) > 1 else values[0]


def spread(timings: list[dict], key: str) -> dict[str, float | int] | None:
    """Median, 90th percentile and count of one component over the task instances that have it."""
    values = sorted(t[key] for t in timings if t.get(key) is not None)
    if not values:
        return None
    return {"median": statistics.median(values), "p90": p90(values), "n": len(values)}


def idle_in_run(run: dict, instances: list[dict]) -> float | None:
    """Seconds of a DAG run (``start_date`` to ``end_date``) during which none of its task
    instances was queued or running: the scheduler between dependent tasks."""
    start, end = _when(run.get("start_date")), _when(run.get("end_date"))
    if not start or not end:
        return None
    spans = sorted(
        (max(a, start), min(b, end))
        for ti in instances
        if (a := _when(ti.get("queued_when") or ti.get("start_date"))) and (b := _when(ti.get("end_date")))
    )
    covered, reached = 0.0, start
    for a, b in (span for span in spans if span[0] < span[1]):  # instances outside the run's bounds drop out
        if b > reached:
            covered += (b - max(a, reached)).total_seconds()
            reached = b
    return (end - start).total_seconds() - covered


def slots_free_while_waiting(instances: list[dict], slots: int) -> float | None:
    """Slot-seconds during which a task instance was ready (``scheduled_when`` -> ``queued_when``)
    while fewer than ``slots`` task instances were queued or running (``queued_when`` ->
    ``end_date``): a slot free and a task waiting for one, i.e. the executor handing slots back
    late. None when the instances do not record ``scheduled_when``."""
    events: list[tuple[datetime, str, int]] = []
    for ti in instances:
        ready, queued, end = (_when(ti.get(k)) for k in ("scheduled_when", "queued_when", "end_date"))
        if ready and queued:
            events += [(ready, "waiting", 1), (queued, "waiting", -1)]
        if queued and end:
            events += [(queued, "busy", 1), (end, "busy", -1)]
    if not any(kind == "waiting" for _, kind, _ in events):
        return None
    free = 0.0
    count = {"waiting": 0, "busy": 0}
    events.sort(key=lambda e: e[0])
    for (when, kind, step), (after, _, _) in zip(events, [*events[1:], events[-1]]):
        count[kind] += step
        if count["waiting"] > 0:
            free += min(count["waiting"], max(0, slots - count["busy"])) * (after - when).total_seconds()
    return free


def run_span(runs: list[dict]) -> float | None:
    """Seconds from the first DAG run queued to the last one finished."""
    starts = [_when(r.get("queued_at") or r.get("start_date")) for r in runs]
    ends = [_when(r.get("end_date")) for r in runs]
    starts, ends = [s for s in starts if s], [e for e in ends if e]
    return _seconds(min(starts), max(ends)) if starts and ends else None


# ------------------------------------------------------------------------------- one setup


def _settle_slice(client, progress, check, timeout: float = 1800, poll: float = 3.0):
    """--quick: unpause the slice's DAGs, trigger its two acquisitions, wait until settled (as
    ``run_everything`` does for every DAG)."""
    from vlmdata.demo import Outcome, _Settle, trigger_acquisitions

    started = time.monotonic()
    client.wait_until(lambda: set(QUICK_DAGS) <= {d["dag_id"] for d in client.dags()}, timeout=300, interval=2)
    for dag_id in QUICK_DAGS:
        client.unpause(dag_id)
    triggered = trigger_acquisitions(client, list(QUICK_ACQUISITIONS))
    settle = _Settle(client, list(QUICK_DAGS))
    quiet = 0
    while quiet < 2:
        check()
        busy = settle.busy()
        quiet = 0 if busy else quiet + 1
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"slice not settled after {timeout:.0f} s; still busy: {busy}")
        time.sleep(poll)
    outcome = Outcome(triggered, settle.runs_by_dag(), time.monotonic() - started)
    progress(f"settled in {outcome.seconds:.0f} s")
    return outcome


def _task_log(logs: Path, ti: dict) -> list[dict]:
    """The JSON entries of a task instance's last try (Airflow's default log file name)."""
    mapped = f"map_index={ti['map_index']}/" if ti["map_index"] >= 0 else ""
    path = logs / f"dag_id={ti['dag_id']}" / f"run_id={ti['dag_run_id']}" / f"task_id={ti['task_id']}" / f"{mapped}attempt={ti['try_number']}.log"
    entries = []
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return []
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict):
            entries.append(entry)
    return entries


def run_setup(setup: Setup, replicas, work: Path, quick: bool, log) -> dict:
    """Start Airflow for ``setup``, run the replica set (or the slice) through it, and return
    what happened: wall time, task instances with their timings, runs that failed."""
    from vlmdata.airflow_client import AirflowClient
    from vlmdata.demo import AIRFLOW_SETTINGS, run_everything
    from vlmdata.localairflow import LocalAirflow, free_port
    from vlmdata.services import celery_servers

    env = {**AIRFLOW_SETTINGS, **replicas.env(), "VLMDATA_ROOT": str(work / "data"), "VLMDATA_STAGING": str(work / "staging")}
    with ExitStack() as stack:
        celery = None
        if setup.workers:
            celery = stack.enter_context(celery_servers(work / "services", workers=setup.workers, concurrency=setup.concurrency))
        airflow = LocalAirflow(work / "airflow", REPO_ROOT / "dags", port=free_port(), extra_env=env, log_server_port=free_port(), celery=celery)
        t0 = time.monotonic()
        stack.enter_context(airflow)
        airflow.wait_ready(timeout=1200)  # minutes at a load of 10
        log(f"  {setup.label}: Airflow ready after {time.monotonic() - t0:.0f} s")
        client = AirflowClient(airflow.url, airflow.user, airflow.admin_password)
        progress = lambda text: log(f"  {setup.label}: {text}")  # noqa: E731
        if quick:
            outcome = _settle_slice(client, progress, airflow.check_running)
        else:
            outcome = run_everything(client, timeout=3600, progress=progress, check=airflow.check_running)
        runs = [r for rs in outcome.runs.values() for r in rs]
        by_run = {(r["dag_id"], r["dag_run_id"]): client.task_instances(r["dag_id"], r["dag_run_id"]) for r in runs}
        ran = [ti for tis in by_run.values() for ti in tis if ti.get("hostname") and ti.get("start_date")]
        logs = airflow.home / "logs"
        timings = [task_timings(ti, _task_log(logs, ti)) for ti in ran]
        idle = [idle_in_run(r, by_run[r["dag_id"], r["dag_run_id"]]) for r in runs]
        idle = [{"idle": v} for v in idle if v is not None]
        fields = ("dag_id", "dag_run_id", "task_id", "map_index", "try_number", "hostname", "state", "scheduled_when", "queued_when", "start_date", "end_date")
        return {
            "setup": setup.label,
            "slots": setup.workers * setup.concurrency or LOCAL_SLOTS,
            "workers": max(setup.workers, 1),
            "wall_s": run_span(runs),
            "settle_s": outcome.seconds,
            "runs": len(runs),
            "failed_runs": outcome.failed_runs,
            "tasks": len(ran),
            "retried": sum(1 for ti in ran if (ti.get("try_number") or 1) > 1),
            "per_host": dict(Counter(ti["hostname"] for ti in ran)),
            "sum_durations_s": sum(t["duration"] or 0 for t in timings),
            "timings": {key: spread(timings, key) for key in ("waiting", "queued", "startup", "parse", "execute", "finish", "overhead", "ready", "duration")},
            "no_log": sum(1 for t in timings if t["startup"] is None),
            "idle_per_run": spread(idle, "idle"),
            "idle_sum_s": sum(v["idle"] for v in idle),
            "slots_free_while_waiting_s": slots_free_while_waiting(ran, setup.workers * setup.concurrency or LOCAL_SLOTS),
            "instances": [{**{k: ti.get(k) for k in fields}, **t} for ti, t in zip(ran, timings)],
        }


# ------------------------------------------------------------------------------- the rows


def _rate(result: dict) -> str:
    minutes = result["wall_s"] / 60
    per_worker = f", {result['tasks'] / minutes / result['workers']:.1f}/min per worker" if result["workers"] > 1 else ""
    return f"{result['wall_s']:.0f} s, {result['tasks']} tasks, {result['tasks'] / minutes:.1f} tasks/min{per_worker}"


def _busy(result: dict) -> str:
    used = result["sum_durations_s"] / (result["wall_s"] * result["slots"])
    hosts = ", ".join(f"{h} {n}" for h, n in sorted(result["per_host"].items()))
    failed = f", {len(result['failed_runs'])} FAILED runs" if result["failed_runs"] else ""
    if result.get("failed_attempts"):
        failed += f"; measured on a second attempt, the first failed: {result['failed_attempts'][0]}"
    idle = result["idle_per_run"]
    idle_text = f"; its {result['runs']} DAG runs had no task queued or running for {result['idle_sum_s']:.0f} s in all (median {idle['median']:.1f} s, p90 {idle['p90']:.1f} s per run)" if idle else ""
    free = result.get("slots_free_while_waiting_s")
    if free is not None:
        idle_text += f"; a slot was free while a ready task waited for one for {free:.0f} slot-seconds ({free / (result['wall_s'] * result['slots']):.0%} of slots x wall time)"
    return (
        f"{result['setup']}: task durations sum to {result['sum_durations_s']:.0f} s = {used:.0%} of its {result['slots']} slots x wall time "
        f"(tasks per host: {hosts}{failed}){idle_text}"
    )


def _fmt_spread(s: dict | None) -> str:
    return "-" if s is None else f"{s['median']:.2f}/{s['p90']:.2f} s"


def _throughput_rows(results: dict[str, dict], work: str) -> list[Row]:
    local, one, two_thin, two = (results.get(s.label) for s in SETUPS)
    pairs = [
        (one, local, "Celery 1 worker vs LocalExecutor (2 slots each)", "the same 2 slots: what Celery, PostgreSQL and Redis cost against the LocalExecutor on SQLite"),
        (two_thin, one, "Celery 2 workers x 1 slot vs 1 worker x 2 slots", "the same 2 slots over two worker processes: what spreading costs"),
        (two, one, "Celery 2 workers x 2 slots vs 1 worker x 2 slots", "a second worker adds 2 slots but no core on this 2-core machine: CPU-bound, two workers cannot be twice as fast here; on machines of their own they would add their cores"),
    ]
    rows = []
    for ours, peer, name, why in pairs:
        if ours is None or peer is None or not ours["wall_s"] or not peer["wall_s"]:
            continue
        r = ratio(ours["wall_s"], peer["wall_s"])
        rows.append(Row(
            f"{work}: {name}", _rate(ours), f"{peer['setup']}: {_rate(peer)}", r,
            "; ".join([verdict(r, ours["setup"]), why, _busy(ours), _busy(peer)]),
            {"ours": ours, "peer": peer},
        ))
    return rows


def _cost_rows(results: dict[str, dict], work: str) -> list[Row]:
    rows = []
    for result in results.values():
        t = result["timings"]
        if not t["overhead"] or not t["execute"]:
            continue
        notes = (
            f"median/p90 per task over {t['overhead']['n']} tasks: queued->started {_fmt_spread(t['queued'])}, "
            f"started->execute {_fmt_spread(t['startup'])} (of which the DAG file parse {_fmt_spread(t['parse'])}), "
            f"execute->ended {_fmt_spread(t['finish'])}; operator execute {_fmt_spread(t['execute'])}; "
            f"ratio: Airflow's median time per task over the operator's median"
        )
        if t.get("ready"):
            notes += (
                f"; before that, ready->queued (waiting for an executor slot) {_fmt_spread(t['waiting'])}; "
                f"ready->execute, the latency a task sees whichever side of queued it waits on: {_fmt_spread(t['ready'])}"
            )
        if result["no_log"]:
            notes += f"; {result['no_log']} tasks without the log marks left out"
        rows.append(Row(
            f"{work}: Airflow's cost per task, {result['setup']}",
            f"Airflow: {t['overhead']['median']:.2f} s (p90 {t['overhead']['p90']:.2f} s)",
            f"operator execute: {t['execute']['median']:.2f} s (p90 {t['execute']['p90']:.2f} s)",
            ratio(t["overhead"]["median"], t["execute"]["median"]), notes, {"timings": t},
        ))
    return rows


def run(ctx: Context) -> list[Row]:
    from vlmdata.replicas.sources import Replicas

    work = "slice (coco_train2017 + llava_instruct_150k)" if ctx.quick else "replica set (every source)"
    rows: list[Row] = []
    results: dict[str, dict] = {}
    with Replicas(ctx.tmp / "replicas") as replicas:
        for setup in SETUPS:
            failures = []
            for attempt in (1, 2):  # a deployment that jams (SQLite's lock at a high load) gets one fresh retry
                ctx.log(f"  {setup.label}: starting (attempt {attempt})")
                try:
                    results[setup.label] = run_setup(setup, replicas, ctx.tmp / f"{setup.label.replace(' ', '-')}-{attempt}", ctx.quick, ctx.log)
                    break
                except Exception as exc:  # noqa: BLE001 - one setup that fails must not hide the others
                    failures.append(f"{type(exc).__name__}: {exc}"[:300])
                    ctx.log(f"  {setup.label}: FAILED {failures[-1]}")
            if setup.label not in results:
                rows.append(Row(f"{work}: {setup.label}", "error", "-", None, "FAILED: " + " / ".join(failures)))
                continue
            r = results[setup.label]
            r["failed_attempts"] = failures
            ctx.log(f"  {setup.label}: {_rate(r)}; {_busy(r)}")
    return _throughput_rows(results, work) + _cost_rows(results, work) + rows

