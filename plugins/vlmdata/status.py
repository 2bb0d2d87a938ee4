"""What is on the storage, source by source, layout by layout, mixture by mixture: the summary
the UI's vlmdata page shows (:mod:`vlmdata.ui`), gathered from the files the tasks write.

It reads summaries only, never a whole report: ``source.json``, the integrity report (whose
lists are bounded; never ``broken.json`` or ``crawl.json``), the layout reports and each
mixture's ``summary.json`` (the lock without its list of dropped records). A source's bytes come
from its integrity report when that is newer than the acquisition, from its artifact records
otherwise.

A file of one source or mixture that cannot be read (corrupt, not readable by this process) is
that row's :attr:`problem`, and the page shows the others; a storage that cannot be reached at
all raises :class:`Unreadable`.

Airflow's part (the last run of each DAG, the next refresh) is not read here: the page passes
it in as :class:`Run` values, so this module runs without Airflow.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from .catalog import Source
from .layout import Profile
from .manifest import Manifest, SourceRecord
from .mix import Recipe, latest_lock_key, lock_summary, read_lock, summary_key
from .pages import human_bytes
from .kinds import kind_named
from .reports import IntegrityReport, load
from .storage import STATE_PREFIX, Storage
from .verify import needed_report_key, report_key

log = logging.getLogger("vlmdata.status")

INDEX_KEY = f"{STATE_PREFIX}/reports/index.html"
READERS = 8  # sources and mixtures read at once


@dataclass(frozen=True)
class Run:
    """A DAG's last run, and its next scheduled one (from Airflow's metadata database)."""

    dag_id: str
    run_id: str | None = None
    state: str | None = None
    when: str | None = None  # ISO time the run was due or started
    next_run: str | None = None  # ISO time of the next scheduled run (a refresh), if any
    paused: bool = False


@dataclass
class SourceStatus:
    id: str
    title: str
    kind: str
    acquired: bool = False
    revision: str | None = None
    published_at: str | None = None
    not_acquired: list[str] = field(default_factory=list)
    bytes: int = 0
    artifacts: int = 0
    integrity: str | None = None  # ok, warn, fail; None: never verified
    checked_at: str | None = None
    ok: int = 0
    broken: int = 0
    missing: int = 0
    quarantined: int = 0
    references_resolved: int = 0  # images its annotation files reference that are present and decode
    references_unresolved: int = 0
    reasons: list[str] = field(default_factory=list)  # the report's failures, then its warnings
    problem: str | None = None  # why its files could not be read
    report: str | None = None  # storage key of the integrity page
    report_json: str | None = None
    needed_tars: str | None = None  # storage key of the page of the last needed_by account (SA-1B)
    manifest: str | None = None  # storage key of source.json
    acquire_run: Run | None = None
    verify_run: Run | None = None

    @property
    def stale(self) -> bool:
        """Verified before the last acquisition: the counts describe the previous one."""
        return bool(self.checked_at and self.published_at and self.checked_at < self.published_at)


@dataclass
class LayoutStatus:
    id: str
    title: str
    root: str
    built_at: str | None = None
    paths: int = 0
    missing: list[str] = field(default_factory=list)
    report: str | None = None
    run: Run | None = None

    @property
    def complete(self) -> bool:
        return self.built_at is not None and not self.missing


@dataclass
class MixtureStatus:
    id: str
    title: str
    stage: str | None = None
    built_at: str | None = None
    records: int = 0
    sha256: str | None = None
    output: str | None = None  # storage key of the training file
    bytes: int = 0
    image_folder: str | None = None
    seed: int | None = None
    format: str | None = None
    dropped: dict[str, int] = field(default_factory=dict)  # reason -> records
    components: dict[str, dict] = field(default_factory=dict)  # label -> available, sampled, kept, dropped
    lock: str | None = None
    composition: str | None = None
    run: Run | None = None
    problem: str | None = None  # why its files could not be read

    @property
    def dropped_total(self) -> int:
        return sum(self.dropped.values())


@dataclass
class Status:
    root: str
    sources: list[SourceStatus]
    layouts: list[LayoutStatus]
    mixtures: list[MixtureStatus]
    index: str | None = None  # storage key of the page listing every integrity report


def source_status(storage: Storage, source: Source, runs: Mapping[str, Run] | None = None) -> SourceStatus:
    runs = runs or {}
    status = SourceStatus(id=source.id, title=source.title, kind=source.kind, acquire_run=runs.get(f"acquire_{source.id}"), verify_run=runs.get(f"verify_{source.id}"))
    manifest = Manifest(storage, source.id)
    record: SourceRecord | None = manifest.source()
    if record is not None:
        status.acquired = bool(record.published_at)
        status.revision, status.published_at, status.not_acquired = record.revision, record.published_at, list(record.not_acquired)
        status.manifest = f"{manifest.prefix}/source.json"
    report = load(storage, report_key(source.id), IntegrityReport)
    if report is not None:
        status.integrity, status.checked_at = report.status, report.checked_at
        status.ok, status.broken, status.missing = report.images.ok, report.images.broken_count, report.missing
        status.quarantined = report.quarantined
        status.references_resolved = sum(r.resolved for r in report.references.values())
        status.references_unresolved = sum(r.unresolved for r in report.references.values())
        status.reasons = report.reasons
        status.report_json = report_key(source.id)
        if storage.exists(report_key(source.id, "integrity.html")):
            status.report = report_key(source.id, "integrity.html")
    if kind_named(source.kind).needed_by and storage.exists(needed_report_key(source.id, page=True)):
        status.needed_tars = needed_report_key(source.id, page=True)  # the last needed_by account
    if report is not None and not status.stale:
        sizes = [a.size or 0 for a in report.artifacts.values()]
    elif record is not None:
        sizes = [a.size for a in manifest.artifacts().values() if a.complete]
    else:
        sizes = []
    status.bytes, status.artifacts = sum(sizes), len(sizes)
    return status


def layout_status(storage: Storage, profile: Profile, runs: Mapping[str, Run] | None = None) -> LayoutStatus:
    status = LayoutStatus(id=profile.id, title=profile.title, root=profile.root, run=(runs or {}).get(f"layout_{profile.id}"))
    key = f"{STATE_PREFIX}/layouts/{profile.id}.json"
    report = storage.read_json(key, default=None)
    if report is not None:
        status.built_at, status.paths, status.missing, status.report = report["built_at"], len(report["views"]), list(report["missing"]), key
    return status


def mixture_status(storage: Storage, recipe: Recipe, runs: Mapping[str, Run] | None = None) -> MixtureStatus:
    status = MixtureStatus(id=recipe.id, title=recipe.title, stage=recipe.stage, run=(runs or {}).get(f"mix_{recipe.id}"))
    summary = storage.read_json(summary_key(recipe.id), default=None)
    if summary is None and storage.exists(latest_lock_key(recipe.id)):
        # Built before summaries were written: the whole lock, once (the next build writes one).
        log.info("%s: no %s, reading the whole lock", recipe.id, summary_key(recipe.id))
        summary = lock_summary(read_lock(storage, latest_lock_key(recipe.id)))
    if summary is None:
        return status
    output = summary["output"]
    status.built_at, status.records, status.sha256, status.output, status.bytes = summary["built_at"], output["records"], output["sha256"], output["key"], output.get("bytes", 0)
    status.image_folder, status.seed, status.format = summary.get("image_folder"), summary.get("seed"), summary.get("format")
    status.dropped, status.components = summary["dropped"], summary["counts"]
    status.lock = latest_lock_key(recipe.id)
    composition = f"mixtures/{recipe.id}/composition.svg"
    status.composition = composition if storage.exists(composition) else None
    return status


class Unreadable(RuntimeError):
    """The storage cannot be read at all (down, refused, no such bucket): no page to show."""


def _or_problem(read, blank, what: str):
    """``read()``, or ``blank`` with the reason a file of it could not be read (the row's
    problem, for the page to show beside the rows it could read)."""
    try:
        return read()
    except Exception as exc:  # a corrupt or malformed file, a permission denied, a request that failed
        log.warning("%s: cannot read its files", what, exc_info=True)
        blank.problem = f"{type(exc).__name__}: {exc}"
        return blank


def dag_ids(catalog: Mapping[str, Source], profiles: Mapping[str, Profile], recipes: Mapping[str, Recipe]) -> list[str]:
    """The DAGs whose last runs the page shows."""
    ids = [f"{stage}_{s}" for s in catalog for stage in ("acquire", "verify")]
    return ids + [f"layout_{p}" for p in profiles] + [f"mix_{r}" for r in recipes]


def gather(
    storage: Storage,
    catalog: Mapping[str, Source],
    profiles: Mapping[str, Profile],
    recipes: Mapping[str, Recipe],
    runs: Mapping[str, Run] | None = None,
) -> Status:
    """Everything the page shows; ``runs`` maps a DAG id to its :class:`Run`. Sources and
    mixtures are read in parallel: on S3 each is a few requests, whose round trips overlap.
    Raises :class:`Unreadable` when the storage cannot be read at all."""
    try:  # is the storage there? A listing fails on a missing bucket, where a HEAD only says "absent"
        next(iter(storage.list(f"{STATE_PREFIX}/reports")), None)
        index = INDEX_KEY if storage.exists(INDEX_KEY) else None
    except Exception as exc:  # botocore's connection and client errors, OSError, StorageError
        raise Unreadable(f"cannot read the storage {storage.url}: {type(exc).__name__}: {exc}") from exc
    runs = runs or {}
    with ThreadPoolExecutor(READERS) as pool:
        sources = pool.map(lambda i: _or_problem(lambda: source_status(storage, catalog[i], runs), SourceStatus(id=i, title=catalog[i].title, kind=catalog[i].kind), i), sorted(catalog))
        mixtures = pool.map(lambda i: _or_problem(lambda: mixture_status(storage, recipes[i], runs), MixtureStatus(id=i, title=recipes[i].title, stage=recipes[i].stage), i), sorted(recipes))
        return Status(
            root=storage.url,
            sources=list(sources),
            layouts=[layout_status(storage, profiles[i], runs) for i in sorted(profiles)],
            mixtures=list(mixtures),
            index=index,
        )


# Storage keys the UI may serve (reports, manifests, layout reports, locks and charts), never
# the data tree: a training file or an archive member is not something to open in a browser.
_SERVED_PREFIXES = (f"{STATE_PREFIX}/reports/", f"{STATE_PREFIX}/sources/", f"{STATE_PREFIX}/layouts/")
_SERVED_MIXTURE_FILES = ("lock.json", "summary.json", "composition.svg")  # and each output's <output>.lock.json


def servable(key: str) -> bool:
    """Whether the UI serves this storage key (see ``_SERVED_PREFIXES``)."""
    parts = key.split("/")
    if ".." in parts or "" in parts:
        return False
    if key.startswith(_SERVED_PREFIXES):
        return True
    return len(parts) == 3 and parts[0] == "mixtures" and (parts[2] in _SERVED_MIXTURE_FILES or parts[2].endswith(".lock.json"))


def _run_text(run: Run | None) -> str:
    """The last run's state and the next one ("success, next 2026-12-06T03:00"; "never run
    (paused)"), blank without Airflow."""
    if run is None:
        return ""
    text = run.state or "never run"
    if run.paused:
        return text + " (paused)"
    return text + (f", next {run.next_run[:16]}" if run.next_run else "")


def as_text(summary: Status) -> str:
    """What the page shows, for a terminal (``vlmdata status``)."""

    def table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [header, *rows]]

    lines = [f"storage {summary.root}", ""]
    rows = []
    for s in summary.sources:
        integrity = (s.integrity or "not verified") + (" (before the last acquisition)" if s.stale else "")
        counts = f"{s.ok}/{s.broken}/{s.missing}/{s.quarantined}" if s.integrity else ""
        rows.append((s.id, (s.revision or "")[:12], s.published_at[:16] if s.acquired else "not acquired", human_bytes(s.bytes) if s.artifacts else "", integrity, counts, _run_text(s.acquire_run), _run_text(s.verify_run)))
    lines += table(("source", "revision", "acquired", "bytes", "integrity", "ok/broken/missing/quarantined", "acquire run", "verify run"), rows)
    for s in summary.sources:
        if s.acquired and s.not_acquired:
            lines.append(f"  {s.id}: not acquired: {', '.join(s.not_acquired)}")
        lines += [f"  {s.id}: {reason}" for reason in s.reasons if s.integrity in ("warn", "fail")]
        lines += [f"  {s.id}: cannot read its files: {s.problem}"] if s.problem else []
        if s.report:
            lines.append(f"  {s.id}: report {s.report}")
    lines.append("")
    rows = [(l.id, l.root, l.built_at[:16] if l.built_at else "not built", str(l.paths) if l.built_at else "",
             "complete" if l.complete else ("missing: " + ", ".join(l.missing) if l.built_at else ""), _run_text(l.run)) for l in summary.layouts]
    lines += table(("layout", "view under", "built", "paths", "state", "last run"), rows)
    lines.append("")
    rows, trains = [], []
    for m in summary.mixtures:
        if m.problem:
            rows.append((m.id, "cannot read its files", "", "", m.problem, _run_text(m.run)))
        elif m.built_at is None:
            rows.append((m.id, "not built", "", "", "", _run_text(m.run)))
            continue
        dropped = ", ".join(f"{reason}: {count}" for reason, count in sorted(m.dropped.items())) or "none"
        rows.append((m.id, m.built_at[:16], str(m.records), f"{m.format}, seed {m.seed}, {human_bytes(m.bytes)}", f"dropped {dropped}", _run_text(m.run)))
        trains.append(f"  {m.id}: train with --data_path <root>/{m.output} --image_folder <root>/{m.image_folder}; sha256 {m.sha256}; lock {m.lock}")
    lines += table(("mixture", "built", "records", "output", "dropped", "last run"), rows)
    lines += trains
    if not any(s.acquire_run for s in summary.sources):
        lines += ["", "(the storage only: --runs adds the runs from Airflow's metadata database)"]
    return "\n".join(lines)
