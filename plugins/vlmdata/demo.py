"""``python -m vlmdata.demo``: every source acquired, verified, laid out and mixed in a real
Airflow, from tiny loopback replicas of the upstreams. Nothing leaves the machine.

It builds the replicas (:class:`vlmdata.replicas.sources.Replicas`) under ``.demo/`` in the
repository, starts Airflow (:class:`vlmdata.localairflow.LocalAirflow`: API server, scheduler,
DAG processor) with the repository's DAGs, storage root ``.demo/data`` and what a user sets to
use a mirror (``VLMDATA_MIRRORS``, ``VLMDATA_CATALOG``, ``VLMDATA_SA1B_LINKS``), unpauses every
vlmdata DAG, triggers every ``acquire_*`` DAG through the REST API (acknowledging the licences
that ask for it), waits until the asset-triggered verify, layout and mixture runs have
settled, prints a summary, and keeps Airflow up until Ctrl-C (``--exit``: stop at once; exit
code 1 if a DAG's last run failed).

    VLMDATA_DEMO_PORT=8081 python -m vlmdata.demo [--exit] [--sources coco_train2017,gqa] [--dir .demo]

``--sources`` triggers only those acquisitions (what they complete still sets off verification,
layouts and mixtures); ``--dir`` puts the demo elsewhere. The demo's folder (``.demo/``) is wiped
at the start of every demo (it is a demo, not a deployment).
The end-to-end test ``tests/e2e/test_every_source.py`` runs the same functions.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .airflow_client import AirflowClient
from .catalog import load_catalog
from .crawl import report_key as crawl_report_key
from .cli import PlainHelp
from .layout import load_profiles
from .localairflow import LocalAirflow, _port_in_use, free_port
from .mix import latest_lock_key, load_recipes
from .replicas.sources import Replicas
from .reports import CrawlReport, IntegrityReport, load
from .storage import LocalStorage
from .verify import report_key

REPO_ROOT = Path(__file__).resolve().parents[2]
DEMO_DIR = REPO_ROOT / ".demo"
DEMO_MARKER = ".vlmdata-demo"  # only a folder holding it (or a new or empty one) is wiped
DEFAULT_PORT = 8081
ACTIVE = {"queued", "running"}

# Settings of the demo's Airflow on top of LocalAirflow's: the DAG files do not change during a
# demo, so the DAG processor re-parses them every 5 minutes instead of every 30 s (CPU that the
# tasks need on a small machine).
AIRFLOW_SETTINGS = {"AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "300"}


def demo_airflow(
    replicas: Replicas, work: Path, port: int, log_server_port: int | None = None,
    extra_env: dict[str, str] | None = None, **options,
) -> LocalAirflow:
    """An Airflow on ``work/airflow`` whose tasks store under ``work/data`` (``extra_env`` may set
    another ``VLMDATA_ROOT``, e.g. on S3) and reach the replicas. ``options`` go to
    :class:`LocalAirflow` (``celery=`` for the distributed mode, ``task_heartbeat_timeout=``)."""
    env = {
        **AIRFLOW_SETTINGS,
        **replicas.env(),
        "VLMDATA_ROOT": str(work / "data"),
        "VLMDATA_STAGING": str(work / "staging"),
        **(extra_env or {}),
    }
    return LocalAirflow(work / "airflow", REPO_ROOT / "dags", port=port, extra_env=env, log_server_port=log_server_port or free_port(), **options)


def expected_dags() -> set[str]:
    """The DAGs the catalog, the layout profiles and the recipes generate."""
    sources = load_catalog()
    return (
        {f"acquire_{s}" for s in sources} | {f"verify_{s}" for s in sources}
        | {f"layout_{p}" for p in load_profiles()} | {f"mix_{r}" for r in load_recipes()}
    )


# ----------------------------------------------------------------------- trigger and settle


@dataclass
class Outcome:
    """What a demo run did: the runs it triggered, and every run of every vlmdata DAG."""

    triggered: dict[str, str]  # acquire DAG -> run id
    runs: dict[str, list[dict]] = field(default_factory=dict)  # DAG -> runs, oldest first
    seconds: float = 0.0

    def last(self, dag_id: str) -> dict | None:
        runs = self.runs.get(dag_id) or []
        return runs[-1] if runs else None

    @property
    def failed_dags(self) -> list[str]:
        """DAGs whose last run failed (earlier failures that a later run made good are not counted)."""
        return sorted(d for d in self.runs if (self.last(d) or {}).get("state") == "failed")

    @property
    def failed_runs(self) -> list[tuple[str, str]]:
        return [(d, r["dag_run_id"]) for d, runs in sorted(self.runs.items()) for r in runs if r["state"] == "failed"]

    @property
    def unexpected_failures(self) -> list[tuple[str, str]]:
        """Failed runs but those a refresh schedule started: such a run may fire when a DAG is
        unpaused (near its cron time) and, for a licence-gated source, fails without the
        acknowledgement before the triggered run succeeds."""
        run_types = {(d, r["dag_run_id"]): r["run_type"] for d, runs in self.runs.items() for r in runs}
        return [run for run in self.failed_runs if not (run[0].startswith("acquire_") and run_types[run] == "scheduled")]

    @property
    def ok(self) -> bool:
        return not self.failed_dags and all(self.run_state(d, r) == "success" for d, r in self.triggered.items())

    def run_state(self, dag_id: str, run_id: str) -> str | None:
        return next((r["state"] for r in self.runs.get(dag_id, []) if r["dag_run_id"] == run_id), None)


def _satisfied(expression: dict | list | None, queued: set[str]) -> bool:
    """Whether queued asset events (by asset name) satisfy a DAG's asset expression."""
    if not expression:
        return False
    if isinstance(expression, list):
        return all(_satisfied(e, queued) for e in expression)
    if "any" in expression:
        return any(_satisfied(e, queued) for e in expression["any"])
    if "all" in expression:
        return all(_satisfied(e, queued) for e in expression["all"])
    if "asset" in expression:
        return expression["asset"].get("name") in queued or expression["asset"].get("uri") in queued
    return bool(queued)  # an alias or a form this helper does not know: assume it fires


class _Settle:
    """What keeps a set of DAGs busy: runs queued or running, or queued asset events that would
    start a run. One query for the runs of every DAG; the queued events only once no run is active."""

    def __init__(self, client: AirflowClient, dag_ids: list[str]):
        self.client, self.dag_ids = client, set(dag_ids)
        self.expressions = {d: self.client.dag_details(d).get("asset_expression") for d in sorted(dag_ids)}
        self.asset_names: dict[int, str] = {}

    def _name(self, asset_id: int) -> str:
        if asset_id not in self.asset_names:
            self.asset_names = {a["id"]: a["name"] for a in self.client.assets()}
        return self.asset_names.get(asset_id, str(asset_id))

    def all_runs(self, **filters) -> list[dict]:
        return [r for r in self.client.list("dags/~/dagRuns", "dag_runs", **filters) if r["dag_id"] in self.dag_ids]

    def busy(self) -> list[str]:
        busy = [f"{r['dag_id']} ({r['state']})" for r in self.all_runs(state=sorted(ACTIVE))]
        if busy:
            return busy
        for dag_id, expression in self.expressions.items():
            if not expression:
                continue
            queued = {self._name(e["asset_id"]) for e in self.client.queued_events(dag_id)}
            if queued and _satisfied(expression, queued):
                busy.append(f"{dag_id} (asset events queued)")
        return busy

    def runs_by_dag(self) -> dict[str, list[dict]]:
        """Every run of every DAG, oldest first."""
        runs: dict[str, list[dict]] = {d: [] for d in sorted(self.dag_ids)}
        for run in sorted(self.all_runs(), key=lambda r: (r["run_after"], r["dag_run_id"])):
            runs[run["dag_id"]].append(run)
        return runs


def trigger_acquisitions(client: AirflowClient, dag_ids: list[str]) -> dict[str, str]:
    """Trigger each acquisition DAG once; acknowledge the licence where the DAG asks for it."""
    triggered = {}
    for dag_id in sorted(dag_ids):
        params = client.dag_details(dag_id).get("params") or {}
        conf = {"acknowledge_licence": True} if "acknowledge_licence" in params else {}
        triggered[dag_id] = client.trigger(dag_id, conf)
    return triggered


def run_everything(client: AirflowClient, *, timeout: float = 1800, poll: float = 3.0, progress: Callable[[str], None] = print, check: Callable[[], None] | None = None, sources: list[str] | None = None) -> Outcome:
    """Unpause every vlmdata DAG, trigger every acquisition (or those of ``sources``), wait until
    everything has settled (:func:`start_everything`, then :meth:`Everything.wait`)."""
    return start_everything(client, progress, sources).wait(timeout=timeout, poll=poll, progress=progress, check=check)


def start_everything(client: AirflowClient, progress: Callable[[str], None] = print, sources: list[str] | None = None) -> Everything:
    """Unpause every vlmdata DAG and trigger every acquisition (or those of ``sources``);
    :meth:`Everything.wait` waits. Two Airflows can run everything at once: start both, then
    wait for each."""
    started = time.monotonic()
    expected = expected_dags()
    client.wait_until(lambda: expected <= {d["dag_id"] for d in client.dags()}, timeout=300, interval=2)
    dags = sorted(d["dag_id"] for d in client.dags() if "vlmdata" in {t["name"] if isinstance(t, dict) else t for t in d.get("tags") or []} or d["dag_id"] in expected)
    for dag_id in dags:
        client.unpause(dag_id)
    wanted = [f"acquire_{s}" for s in sources] if sources is not None else [d for d in dags if d.startswith("acquire_")]
    triggered = trigger_acquisitions(client, wanted)
    progress(f"triggered {len(triggered)} acquisitions: {', '.join(sorted(triggered))}")
    return Everything(_Settle(client, dags), triggered, started)


@dataclass
class Everything:
    """Acquisitions triggered by :func:`start_everything`, and what they set off."""

    settle: _Settle
    triggered: dict[str, str]
    started: float  # time.monotonic() at the start

    def wait(self, *, timeout: float = 1800, poll: float = 3.0, progress: Callable[[str], None] = print, check: Callable[[], None] | None = None) -> Outcome:
        """Wait until everything has settled: every triggered run has finished, no run of a vlmdata
        DAG is queued or running, and no queued asset event would start one, twice in a row
        ``poll`` seconds apart. ``check`` is called at every poll (``LocalAirflow.check_running``:
        a component that died raises). ``timeout`` counts from the start."""
        quiet, last_report = 0, 0.0
        while True:
            if check is not None:
                check()
            busy = self.settle.busy()  # the triggered runs are among the queued and running ones
            quiet = 0 if busy else quiet + 1
            elapsed = time.monotonic() - self.started
            if quiet >= 2:
                break
            if elapsed - last_report >= 15:
                last_report = elapsed
                states: dict[str, int] = {}
                for run in self.settle.all_runs():
                    states[run["state"]] = states.get(run["state"], 0) + 1
                progress(f"{elapsed:5.0f} s: runs {dict(sorted(states.items()))}; busy: {', '.join(busy[:5]) + (' ...' if len(busy) > 5 else '') or 'settling'}")
            if elapsed > timeout:
                raise TimeoutError(f"not settled after {timeout:.0f} s; still busy: {busy}")
            time.sleep(poll)
        outcome = Outcome(self.triggered, self.settle.runs_by_dag(), time.monotonic() - self.started)
        progress(f"settled in {outcome.seconds:.0f} s")
        return outcome


# ------------------------------------------------------------------------------ summary


def _shown(path: Path) -> Path:
    """A path as the user typed it: relative to the working folder where it lies inside it."""
    return path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path


def summary(outcome: Outcome, demo_dir: Path) -> str:
    """Each DAG's last state, integrity per source, layout gaps, mixture sizes (from the storage
    under ``demo_dir/data``)."""
    storage = LocalStorage(demo_dir / "data")
    lines = ["", "DAGs (runs, last state):"]
    for dag_id, runs in sorted(outcome.runs.items()):
        if runs:
            failed = sum(r["state"] == "failed" for r in runs)
            lines.append(f"  {dag_id:<40} {len(runs):>3} runs  {runs[-1]['state']}{f'  ({failed} failed)' if failed else ''}")
    lines += ["", "Integrity (status, images decoding, references resolving):"]
    for source in sorted(load_catalog()):
        report = load(storage, report_key(source), IntegrityReport)
        if report is None:
            lines.append(f"  {source:<26} no report")
            continue
        images, refs = report.images, report.references
        resolved = sum(r.resolved for r in refs.values())
        unresolved = sum(r.unresolved for r in refs.values())
        text = f"  {source:<26} {report.status:<5} images {images.ok}/{images.checked}"
        if refs:
            text += f", references {resolved}/{resolved + unresolved}"
        if images.broken:
            text += f"; broken (quarantined): {', '.join(sorted(images.broken))}"
        lines.append(text)
    crawl = load(storage, crawl_report_key("ocr_vqa"), CrawlReport)
    if crawl:
        counts = crawl.counts
        lines.append(f"  ocr_vqa crawl: {counts.stored} stored ({counts.converted} converted to JPEG, {counts.filled_from_mirror} filled from mirrors), "
                     f"{counts.dead} dead, {counts.broken} broken: missing {', '.join(crawl.missing) or 'nothing'}")
    lines += ["", "Layouts (paths missing):"]
    for profile in sorted(load_profiles()):
        layout = storage.read_json(f"_vlmdata/layouts/{profile}.json", default=None)
        lines.append(f"  {profile:<26} " + ("not built" if layout is None else f"{len(layout['views'])} views, missing: {', '.join(layout['missing']) or 'nothing'}"))
    lines += ["", "Mixtures (records kept, dropped):"]
    for recipe in sorted(load_recipes()):
        lock = storage.read_json(latest_lock_key(recipe), default=None)
        lines.append(f"  {recipe:<26} " + ("not built" if lock is None else f"{lock['output']['records']:>3} records, {len(lock['dropped'])} dropped  ({lock['output']['key']})"))
    if outcome.failed_dags:
        lines += ["", f"FAILED: {', '.join(outcome.failed_dags)} (task logs under {_shown(demo_dir / 'airflow' / 'logs')}/dag_id=<dag>/)"]
    return "\n".join(lines)


# --------------------------------------------------------------------------------- main


def _interrupt(*_) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vlmdata.demo", description=__doc__.split("\n\n")[0], formatter_class=PlainHelp)
    parser.add_argument("--exit", action="store_true", help="stop Airflow once everything has settled (exit code 1 if a DAG failed)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds to wait for everything to settle")
    parser.add_argument("--sources", type=lambda text: [s for s in text.split(",") if s], help="comma-separated source ids: trigger only their acquisitions (default: every source)")
    parser.add_argument("--dir", type=Path, default=DEMO_DIR, help="the demo's folder, wiped at the start (default: .demo in the repository)")
    args = parser.parse_args(argv)
    if args.sources and (unknown := sorted(set(args.sources) - set(load_catalog()))):
        parser.error(f"no such source: {', '.join(unknown)} (the catalog has {', '.join(sorted(load_catalog()))})")
    demo_dir = args.dir.resolve()
    port = int(os.environ.get("VLMDATA_DEMO_PORT", DEFAULT_PORT))
    if _port_in_use(port):
        print(f"port {port} is in use (another demo or Airflow running?); set VLMDATA_DEMO_PORT", file=sys.stderr)
        return 2
    # A demo made before the marker existed holds its replicas: that one is a demo too.
    if demo_dir.is_dir() and any(demo_dir.iterdir()) and not ((demo_dir / DEMO_MARKER).exists() or (demo_dir / "replicas").is_dir()):
        print(f"{demo_dir} holds files of something other than a demo: the demo wipes its folder, so it will not use this one; choose another --dir", file=sys.stderr)
        return 2
    shutil.rmtree(demo_dir, ignore_errors=True)
    demo_dir.mkdir(parents=True)
    (demo_dir / DEMO_MARKER).write_text("made by python -m vlmdata.demo, which wipes this folder at its start\n")
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _interrupt)
    started = time.monotonic()
    replicas = airflow = None
    try:
        replicas = Replicas(demo_dir / "replicas").start()
        print(f"Replicas of {len(replicas.files)} sources served on loopback; mirror map {_shown(replicas.mirrors_path)}", flush=True)
        airflow = demo_airflow(replicas, demo_dir, port)
        print(f"Starting Airflow (logs in {_shown(airflow.log_dir)}) ...", flush=True)
        airflow.start()
        airflow.wait_ready(timeout=600)
        # The login first: a person watches the runs in the UI while the demo waits for them.
        print(f"Airflow is up after {time.monotonic() - started:.0f} s: http://localhost:{port}  user: {airflow.user}  password: {airflow.admin_password}", flush=True)
        client = AirflowClient(airflow.url, airflow.user, airflow.admin_password)
        outcome = run_everything(client, timeout=args.timeout, progress=lambda text: print(text, flush=True), check=airflow.check_running, sources=args.sources)
        print(summary(outcome, demo_dir))
        print(f"\nEverything settled {time.monotonic() - started:.0f} s after the start.", flush=True)
        if args.exit:
            return 0 if outcome.ok else 1
        print(f"\nAirflow: http://localhost:{port}  user: {airflow.user}  password: {airflow.admin_password}")
        print(f"  data: {demo_dir / 'data'}   Ctrl-C stops it.", flush=True)
        while True:
            time.sleep(1)
            airflow.check_running()
    except KeyboardInterrupt:
        return 0
    except (RuntimeError, TimeoutError) as exc:  # a component died, or the runs did not settle
        print(f"\nDemo failed: {exc}\nLogs: {_shown(demo_dir / 'airflow' / 'logs')}", file=sys.stderr, flush=True)
        return 1
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):  # a second Ctrl-C must not cut the stop short
            signal.signal(sig, signal.SIG_IGN)
        if airflow is not None:
            print("Stopping Airflow ...", flush=True)
            airflow.stop()
        if replicas is not None:
            replicas.stop()


if __name__ == "__main__":
    sys.exit(main())
