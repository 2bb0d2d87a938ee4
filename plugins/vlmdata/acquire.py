"""Acquisition: plan what changed upstream, fetch and place each artifact, publish.

The three steps are separate functions because Airflow runs them as separate tasks (the
fetch step mapped over artifacts); the CLI runs them in a row. State lives in the manifest
on the storage, so any step can run on any worker and a re-run with nothing changed does
no work.

The plan pins what it resolved (a :class:`Pin` per artifact: commit, URL without
credentials, size, checksums, validators) and each fetch fetches exactly that or fails
with :class:`UpstreamMoved`, so one acquisition never mixes two upstream versions, however
long its fetches wait for a worker.

A dry run (``plan(..., dry_run=True)``) probes with a short retry budget and, when upstream
cannot be reached (a name that does not resolve, refused connections, timeouts), answers from
the catalog's declared sizes and the manifest instead of failing: :class:`Offline`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from .catalog import Artifact, Source
from .extract import extract_archive
from .kinds import kind_named
from .needed import annotation_files, holds_wanted, quarantined_members, wanted_by_artifact
from .fetch.digest import IntegrityError, sha256_of
from .fetch.policy import DRY_RUN_POLICY
from .fetch.http import FetchError, RetryPolicy, Unreachable, download, isolate_partial, redact, same_fingerprint
from .fetch.remote import Context, Pin, Remote, Transport, UpstreamMoved, pinned_session
from .fetch.zip_members import RangeNotSupported, TooScattered, fetch_members
from .manifest import Acknowledgement, ArtifactRecord, Manifest, Placement, SourceRecord, directory_key, index_key, now
from .lease import Lease, hold
from .redaction import redact_text
from .storage import DATA_PREFIX, DiskFullError, Storage

log = logging.getLogger("vlmdata.acquire")


class LicenceNotAcknowledged(PermissionError):
    pass


def transport_for(source: Source) -> Transport:
    """The source's transport (vlmdata.kinds names it; its module is imported on first use)."""
    return kind_named(source.kind).load_transport()


def artifacts_of(source: Source, ctx: Context) -> list[Artifact]:
    """The catalog's artifacts, plus those the transport discovers upstream."""
    discover = transport_for(source).discover
    found = list(source.artifacts)
    if discover:
        known = {a.name for a in found}
        found += [a for a in discover(source, ctx) if a.name not in known]
    return found


def selected_artifacts(source: Source, ctx: Context, only: list[str] | None = None, include_optional: bool = False) -> list[Artifact]:
    every = artifacts_of(source, ctx)
    if only:
        unknown = set(only) - {a.name for a in every}
        if unknown:
            raise KeyError(f"source {source.id!r} has no artifact(s) {sorted(unknown)}; it has {[a.name for a in every]}")
    return chosen_from(every, only, include_optional)


def chosen_from(artifacts: list[Artifact], only: list[str] | None, include_optional: bool) -> list[Artifact]:
    """Those named in ``only``; without it every artifact, the optional ones if asked for."""
    return [a for a in artifacts if (a.name in only if only else include_optional or not a.optional)]


def check_licence(source: Source, manifest: Manifest, acknowledge: bool, who: str) -> None:
    """Restrictive licences need an explicit yes once; it is recorded in the manifest."""
    if not source.licence.acknowledge:
        return
    record = manifest.source() or SourceRecord(source=source.id, kind=source.kind)
    if record.acknowledged:
        return
    if not acknowledge:
        notice = f" Terms: {source.licence.notice}" if source.licence.notice else ""
        raise LicenceNotAcknowledged(
            f"{source.id}: the licence '{source.licence.name}' needs an explicit acknowledgement before the first download. "
            f"Trigger the DAG with acknowledge_licence=true (CLI: --acknowledge-licence).{notice}"
        )
    record.acknowledged = Acknowledgement(licence=source.licence.name, by=who, at=now())
    manifest.save_source(record)


def remotes(source: Source, artifacts: list[Artifact], ctx: Context) -> list[Remote]:
    return transport_for(source).remotes(source, artifacts, ctx)


def is_current(ctx: Context, manifest: Manifest, remote: Remote, wanted: list[str] | None = None) -> bool:
    """Unchanged upstream and everything we placed still there: nothing to do. An archive read
    in part is current only for the members it holds: those ``wanted`` (a needed_by run), or,
    without ``wanted``, every member (a full acquisition fetches the rest)."""
    record = manifest.artifact(remote.artifact.name)
    if not record or not record.complete or not same_fingerprint(record.fingerprint, remote.fingerprint):
        return False
    if record.partial and not holds_wanted(manifest, record, wanted):
        return False
    return is_placed(ctx, manifest, record)


def is_placed(ctx: Context, manifest: Manifest, record: ArtifactRecord) -> bool:
    """Everything the record says we placed is still there, at its size (the storage only)."""
    if record.placement.target:
        return ctx.storage.size(record.placement.target) == record.size
    # One listing per folder and step: 51 SA-1B tars share data/sam/images.
    key = ("listing", record.placement.folder)
    if key not in ctx.memo:
        ctx.memo[key] = dict(ctx.storage.list(record.placement.folder))
    present = ctx.memo[key]
    quarantined = manifest.quarantined()
    return all(present.get(path) == size or path in quarantined for path, size, _crc in manifest.index(record.name))


@dataclass(frozen=True)
class Offline:
    """A dry run's answer when upstream could not be reached: the catalog's declared sizes, and
    what the manifest says is placed and still on the storage (not compared with upstream)."""

    unreachable: str  # the error: which upstream (URL or repository) and why
    fetch: list[dict]  # name, url, size, size_is: "declared", "approximate" (the catalog's approx_size) or "unknown"
    notes: list[str] = field(default_factory=list)  # what could not be known without upstream

    def to_dict(self) -> dict:
        return {
            "unreachable": self.unreachable,
            "sizes": "declared in the catalog, not probed upstream",
            "current": "placed and complete on the storage; not compared with upstream",
            "notes": self.notes,
        }

    def summary(self, source: str, current: list[str]) -> str:
        sizes = [item["size_is"] for item in self.fetch]
        total = sum(item["size"] or 0 for item in self.fetch)
        qualifier = "at least" if "unknown" in sizes else "about" if "approximate" in sizes else "declared"
        names = ", ".join(f"{i['name']} ({_gib(i['size'], i['size_is'])})" for i in self.fetch)
        what = f"{len(self.fetch)} to fetch by the catalog, {_gib(total, qualifier)} in all: {names}" if self.fetch else "nothing to fetch that the catalog names"
        return (f"{source}: DRY RUN WITHOUT UPSTREAM: {what}; {len(current)} placed on the storage (not compared with upstream). "
                f"Upstream could not be reached: {self.unreachable}. The sizes are the catalog's declared sizes, not probed"
                f"{''.join('; ' + n for n in self.notes)}.")


@dataclass
class Plan:
    source: str
    pins: list[Pin]  # what the fetches get, one per artifact to fetch
    current: list[str]  # artifacts already up to date
    offline: Offline | None = None  # a dry run that could not reach upstream (no pins then)

    @property
    def fetch(self) -> list[dict]:
        """What would be fetched, for users (the dry run): name, url, size, revision."""
        if self.offline:
            return self.offline.fetch
        return [{"name": p.name, "url": p.url, "size": p.expected.size, "revision": p.revision, **({} if p.wanted is None else {"members_wanted": len(p.wanted)})}
                for p in self.pins]

    @property
    def bytes(self) -> int:
        return sum(item["size"] or 0 for item in self.fetch)

    def summary(self) -> str:
        if self.offline:
            return self.offline.summary(self.source, self.current)
        if not self.fetch:
            return f"{self.source}: up to date ({len(self.current)} artifacts unchanged)"
        names = ", ".join(f"{i['name']} ({_part(i)}{_gib(i['size'])})" for i in self.fetch)
        return f"{self.source}: {len(self.fetch)} to fetch, {_gib(self.bytes)} in all: {names}; {len(self.current)} unchanged"

    def to_dict(self) -> dict:
        """The dry run's answer."""
        answer = {"source": self.source, "dry_run": True, "fetch": self.fetch, "current": self.current, "bytes": self.bytes}
        return {**answer, "offline": self.offline.to_dict()} if self.offline else answer


def _part(item: dict) -> str:
    """How much of an archive a needed_by run reads (the whole archive's size follows)."""
    return f"{item['members_wanted']} members wanted, by Range requests, of " if "members_wanted" in item else ""


def _gib(size: int | None, size_is: str | None = None) -> str:
    if size is None:
        return "size unknown"
    qualifier = {"declared": "declared ", "approximate": "about ", "at least": "at least "}.get(size_is or "", "")
    return f"{qualifier}{size / 1024**3:.2f} GiB"




def dry_run_policy(policy: RetryPolicy) -> RetryPolicy:
    """``policy`` bounded by :data:`DRY_RUN_POLICY` (a test's faster policy stays as it is)."""
    return replace(policy, **{name: min(getattr(policy, name), getattr(DRY_RUN_POLICY, name)) for name in ("attempts", "max_wait", "connect_timeout", "read_timeout")})


def declared_size(artifact: Artifact) -> tuple[int | None, str]:
    """The catalog's size of an artifact and what it is: "declared" (exact), "approximate" or "unknown"."""
    if artifact.size is not None:
        return artifact.size, "declared"
    if artifact.approx_size is not None:
        return int(artifact.approx_size), "approximate"
    return None, "unknown"


def offline_plan(source: Source, ctx: Context, manifest: Manifest, error: Unreachable, artifacts: list[Artifact], *, listed: bool, notes: Sequence[str] = ()) -> Plan:
    """The dry run's answer without upstream, for ``artifacts`` (the selection). Not ``listed``:
    the upstream listing (a Drive folder, a GitHub tree) could not be read either, so the
    selection is the catalog's, and what earlier runs found there is taken from the manifest.
    Never a download: no pins."""
    notes = list(notes)
    records = manifest.artifacts()
    current = [a.name for a in artifacts if _placed(ctx, manifest, records.get(a.name))]
    if not listed and transport_for(source).discover:
        notes.append("the upstream listing could not be read: the files it holds beyond the catalog's are not counted")
        known = {a.name for a in artifacts}
        current += [name for name in sorted(records) if name not in known and _placed(ctx, manifest, records[name])]
    fetch = []
    for artifact in artifacts:
        if artifact.name in current:
            continue
        size, size_is = declared_size(artifact)
        url = redact(ctx.mirrors.rewrite(artifact.url)) if artifact.url else None
        fetch.append({"name": artifact.name, "url": url, "size": size, "size_is": size_is, "revision": None})
    unknown = [item["name"] for item in fetch if item["size"] is None]
    if unknown:
        notes.append(f"the catalog declares no size for {', '.join(unknown)}: the total leaves them out")
    result = Plan(source.id, [], current, Offline(redact_text(str(error)), fetch, notes))  # no signed link's query string
    log.warning(result.summary())
    return result


def _placed(ctx: Context, manifest: Manifest, record: ArtifactRecord | None) -> bool:
    return record is not None and record.complete and is_placed(ctx, manifest, record)


def needed_artifacts(source: Source, ctx: Context, needed_by: list[str]) -> tuple[list[str], dict[str, list[str]]]:
    """The artifacts holding what the annotation files (or recipes, ``recipe:<id>``) of
    ``needed_by`` reference and the storage lacks, and for each zip read in part its wanted
    members (:mod:`vlmdata.needed`); SA-1B's transport chooses whole tars."""
    paths = annotation_files(needed_by, ctx.catalog)
    chooser = transport_for(source).needed_by
    if chooser is not None:
        return chooser(source, ctx, paths), {}
    if not kind_named(source.kind).partial_zip or not any(a.is_zip for a in source.artifacts):
        raise ValueError(f"{source.id}: needed_by chooses artifacts by the images that annotation files reference; "
                         f"sources of kind {source.kind!r} without zip archives have no such choice (SA-1B and zips over HTTP have)")
    wanted = wanted_by_artifact(ctx.storage, ctx.catalog, paths, source.artifacts)
    log.info("%s: %s reference %s", source.id, ", ".join(needed_by),
             "; ".join(f"{len(members)} members of {name}" for name, members in wanted.items()) or "nothing in its zips")
    return list(wanted), wanted


def plan(source: Source, ctx: Context, *, acknowledge: bool = False, only: list[str] | None = None, include_optional: bool = False, who: str = "cli", check_space: bool = True, refetch_quarantined: bool = False, needed_by: list[str] | None = None, dry_run: bool = False) -> Plan:
    """Probe upstream and compare with the manifest. Checks the licence and the free space.
    With ``needed_by`` the artifacts are those the annotation files need (plus ``only``); a zip
    of a kind that reads zips in part is then pinned with its wanted members (``Pin.wanted``).

    A ``dry_run`` writes nothing but the licence acknowledgement (the quarantine list stays as it
    is: the quarantined files then count as placed), checks no space, probes with
    :data:`DRY_RUN_POLICY` and, when upstream cannot be reached, answers from the catalog
    (:func:`offline_plan`)."""
    manifest = Manifest(ctx.storage, source.id)
    check_licence(source, manifest, acknowledge, who)
    if refetch_quarantined and manifest.quarantined():
        log.info("%s: %s the %d quarantined files again (their copies stay in quarantine)", source.id,
                 "a run without dry_run would fetch" if dry_run else "fetching", len(manifest.quarantined()))
        if not dry_run:
            manifest.save_quarantined({})
    if dry_run:
        ctx, check_space = replace(ctx, policy=dry_run_policy(ctx.policy)), False
    selected: list[Artifact] | None = None
    wanted: dict[str, list[str]] = {}  # zips read in part: artifact -> members
    chosen = not needed_by  # needed_by chooses by reading upstream (SA-1B's tar headers)
    try:
        if needed_by:
            needed, wanted = needed_artifacts(source, ctx, needed_by)
            wanted = {name: members for name, members in wanted.items() if name not in (only or [])}  # named: the whole archive
            only = [*(only or []), *(name for name in needed if name not in (only or []))]
            chosen = True
            if not only:
                log.info("%s: the annotation files need nothing more from this source", source.id)
                return Plan(source.id, [], [])
        selected = selected_artifacts(source, ctx, only, include_optional)
        found = remotes(source, selected, ctx)
    except Unreachable as exc:
        if not dry_run:
            raise
        if selected is not None:  # listed; the probes failed
            return offline_plan(source, ctx, manifest, exc, selected, listed=True)
        if chosen:  # the listing failed: the catalog's artifacts
            return offline_plan(source, ctx, manifest, exc, chosen_from(source.artifacts, only, include_optional), listed=False)
        # needed_by could not choose: what was named, from the listing if it is local (SA-1B's links file)
        notes = [f"which artifacts {', '.join(needed_by)} need could not be determined"]
        try:
            named = selected_artifacts(source, ctx, only, include_optional) if only else []
        except Unreachable:
            return offline_plan(source, ctx, manifest, exc, chosen_from(source.artifacts, only, include_optional), listed=False, notes=notes)
        return offline_plan(source, ctx, manifest, exc, named, listed=True, notes=notes)
    todo = [r for r in found if not is_current(ctx, manifest, r, wanted.get(r.artifact.name))]
    planned_at = now()
    pins = [replace(Pin.of(r, planned_at), wanted=wanted.get(r.artifact.name)) for r in todo]
    result = Plan(source.id, pins, [r.artifact.name for r in found if r not in todo])
    if check_space:
        _check_space(ctx.storage, todo, wanted)
    log.info(result.summary())
    return result


def _check_space(storage: Storage, todo: list[Remote], wanted: dict[str, list[str]]) -> None:
    free = storage.free_bytes()
    # An archive needs room for itself and its members while it is extracted; one read in part
    # (``wanted``) is never staged, and its members are at most the archive (it is not known
    # before its directory is read how much less).
    need = sum((r.expected.size or 0) * (2 if r.artifact.extract and r.artifact.name not in wanted else 1) for r in todo)
    if free is not None and need > free:
        raise DiskFullError(f"need about {_gib(need)} of free space, {_gib(free)} available under {storage.url}; free space or point VLMDATA_ROOT elsewhere")


def pinned_remote(source: Source, pin: Pin, ctx: Context) -> Remote:
    """The remote of a pinned artifact, derived again with this context's credentials (a token,
    the links file's signed link) at the pinned commit; :class:`UpstreamMoved` if it is no
    longer what the plan pinned (another ETag, size or Drive file, a file gone from a listing)."""
    where = f"{source.id}/{pin.name}"
    at_pin = replace(ctx, revision=pin.revision) if pin.revision else ctx  # the commit, never the branch again
    artifact = next((a for a in artifacts_of(source, at_pin) if a.name == pin.name), None)
    if artifact is None:
        raise UpstreamMoved.since(pin, where, [f"{pin.name}: listed -> no longer listed"])
    (remote,) = remotes(source, [artifact], at_pin)
    changes = pin.changes(Pin.of(remote, pin.planned_at), with_url=not transport_for(source).reissued_urls)
    if changes:
        raise UpstreamMoved.since(pin, where, changes)
    return remote


def fetch_artifact(source: Source, pin: Pin, ctx: Context) -> dict:
    """Download, verify and place the pinned version of one artifact; record it in the manifest.

    One writer per artifact at a time (its lease, :mod:`vlmdata.lease`): a second acquisition
    waits for the first, then finds the artifact current and does nothing.
    """
    with hold(ctx.storage, f"artifact/{source.id}/{pin.name}") as lease:
        return _fetch_artifact(source, pin, ctx, lease)


def _fetch_artifact(source: Source, pin: Pin, ctx: Context, lease: Lease) -> dict:
    name = pin.name
    manifest = Manifest(ctx.storage, source.id)
    remote = pinned_remote(source, pin, ctx)
    result = {"name": name, "revision": pin.revision, "planned_at": pin.planned_at}
    if is_current(ctx, manifest, remote, pin.wanted):
        log.info("%s/%s: already current", source.id, name)
        return {**result, "fetched": False}
    previous = manifest.artifact(name)
    # The members needed_by wants, or the rest of an archive read in part before (same version).
    if pin.wanted is not None or (previous is not None and previous.partial and previous.complete and same_fingerprint(previous.fingerprint, remote.fingerprint)):
        try:
            return {**result, **read_in_part(source, pin, remote, ctx, lease, previous)}
        except (RangeNotSupported, TooScattered) as exc:
            log.warning("%s/%s: cannot read only the members needed (%s): downloading the whole archive instead", source.id, name, exc)
            result["whole_instead"] = str(exc)
    staged = ctx.storage.staging_dir() / source.id / name
    if lease.previous_may_still_write:
        isolate_partial(staged)
    resumable = previous is not None and not previous.complete and same_fingerprint(previous.fingerprint, remote.fingerprint)
    if resumable and staged.exists() and sha256_of(staged.open("rb"))[0] == previous.sha256:
        log.info("%s/%s: resuming the placement of the verified download", source.id, name)
        record = previous
    else:
        with pinned_session(pin, f"{source.id}/{name}") as session:
            fetched = download(remote.url, staged, remote.expected, headers=remote.headers, session=session, policy=ctx.policy, guard=lease.check)
        record = ArtifactRecord(
            name=name, url=redact(remote.url), size=fetched.size, sha256=fetched.sha256, md5=fetched.md5,
            fingerprint=remote.fingerprint, revision=pin.revision, fetched_at=now(),
        )
        lease.check()
        manifest.save_artifact(record)  # incomplete until placed: a kill here resumes placement
    record.placement = place(source, remote.artifact, staged, ctx.storage, resume=resumable, previous=previous, guard=lease.check)
    record.complete = True
    lease.check()
    manifest.save_artifact(record)
    return {**result, "fetched": True, "size": record.size, "sha256": record.sha256}


def read_in_part(source: Source, pin: Pin, remote: Remote, ctx: Context, lease: Lease, previous: ArtifactRecord | None) -> dict:
    """Fetch only the members ``pin.wanted`` of a zip that the storage lacks (None: every member
    still missing) over Range requests (:func:`~.fetch.zip_members.fetch_members`), and record
    the archive as read in part: its index (the members present), its directory (what it holds)
    and ``ArtifactRecord.partial`` (what was checked instead of its sha256). Members of another
    version of the archive are stale, as after a full extraction. Raises ``RangeNotSupported``
    or ``TooScattered`` before writing anything: the caller downloads the whole archive."""
    artifact, manifest = remote.artifact, Manifest(ctx.storage, source.id)
    folder = f"{DATA_PREFIX}/{artifact.extract.into}"
    same_version = previous is None or same_fingerprint(previous.fingerprint, remote.fingerprint)
    wanted = pin.wanted  # None: every member still missing
    quarantined = quarantined_members(manifest, folder) if same_version else set()
    if quarantined:  # what verify quarantined is not missing (refetch_quarantined clears the list)
        every = wanted if wanted is not None else manifest.directory(artifact.name)
        if every is not None:
            wanted = [path for path in every if path not in quarantined]
    with pinned_session(pin, f"{source.id}/{pin.name}") as session:
        session.headers.update(remote.headers)
        read = fetch_members(remote.url, wanted, ctx.storage, folder, artifact.extract, skip_present=same_version, session=session,
                             policy=ctx.policy, guard=lease.check, name=artifact.name)
    lease.check()
    ctx.storage.write_json(directory_key(source.id, artifact.name), read.paths)
    old_index = manifest.index(artifact.name) if previous and not same_version else []
    ctx.storage.write_json(index_key(source.id, artifact.name), read.index)
    remove_stale(ctx.storage, old_index, read.index)  # the members of another version not read again
    placement = Placement(folder=folder, images=artifact.extract.images, members=len(read.index), bytes=sum(size for _, size, _ in read.index))
    record = ArtifactRecord(name=artifact.name, url=read.url, size=read.archive_size, sha256="", fingerprint=remote.fingerprint, revision=pin.revision,
                            fetched_at=now(), placement=placement, complete=True, partial=read.record())
    lease.check()
    manifest.save_artifact(record)
    log.info("%s/%s: read in part: %d members fetched (%d bytes in %d requests); %d of %d members on the storage", source.id, artifact.name,
             read.fetched, read.bytes_moved, read.requests, len(read.index), read.members_in_archive)
    return {"fetched": read.fetched > 0 or not same_version, "size": record.size, "partial": record.partial.model_dump()}


def remove_stale(storage: Storage, old_index: list[list], new_index: list[list]) -> None:
    """Delete the files a previous version of an archive placed that the new one does not list."""
    for path in sorted({path for path, _, _ in old_index} - {path for path, _, _ in new_index}):
        storage.delete(path)


def place(source: Source, artifact: Artifact, staged: Path, storage: Storage, *, resume: bool, previous: ArtifactRecord | None, guard: Callable[[], None] = lambda: None) -> Placement:
    """Put a verified download where the layout expects it (``guard`` before every write)."""
    if artifact.target:
        key = f"{DATA_PREFIX}/{artifact.target}"
        size = staged.stat().st_size
        guard()
        storage.put_file(staged, key)
        return Placement(target=key, bytes=size)
    folder = f"{DATA_PREFIX}/{artifact.extract.into}"
    old_index = Manifest(storage, source.id).index(artifact.name) if previous else []
    index = extract_archive(staged, storage, folder, artifact.extract, skip_present=resume, guard=guard)
    guard()
    storage.write_json(index_key(source.id, artifact.name), index)
    remove_stale(storage, old_index, index)  # files the previous version placed that the new one does not have
    staged.unlink()
    return Placement(folder=folder, images=artifact.extract.images, members=len(index), bytes=sum(size for _, size, _ in index))


def selection_of(only: list[str] | None, needed_by: list[str] | None) -> list[str] | None:
    """What a run was asked for, when not the whole source: the named artifacts (the plan adds
    what needed_by chose, which are the fetched ones or already current)."""
    return list(only or []) if only or needed_by else None


def publish(source: Source, ctx: Context, fetched: list[dict], selection: list[str] | None = None) -> dict:
    """Record the acquisition as a whole: the version its plan pinned (every fetch fetched
    that one). The summary goes to XCom and the asset event.

    ``selection`` (see :func:`selection_of`): the run acquired only these and what it fetched;
    it succeeds when they are current, and the source record lists what is not."""
    manifest = Manifest(ctx.storage, source.id)
    records = manifest.artifacts()
    not_current = [a.name for a in source.artifacts if not a.optional and (a.name not in records or not records[a.name].complete)]
    required = not_current if selection is None else [n for n in not_current if n in {*selection, *(f["name"] for f in fetched)}]
    if required:
        raise FetchError(f"{source.id}: artifacts not acquired: {required}")
    record = manifest.source() or SourceRecord(source=source.id, kind=source.kind)
    plans = {(f["revision"], f["planned_at"]) for f in fetched}
    if len(plans) > 1:
        raise FetchError(f"{source.id}: the fetches come from different plans {sorted(plans, key=str)}: not one version; run the acquisition again")
    if plans:  # nothing fetched: the recorded version still holds
        ((record.revision, record.planned_at),) = plans
    record.published_at = now()
    record.not_acquired = not_current
    manifest.save_source(record)
    changed = [f["name"] for f in fetched if f.get("fetched")]
    summary = {"source": source.id, "revision": record.revision, "planned_at": record.planned_at, "changed": changed, "artifacts": len(records), "bytes": sum(r.size for r in records.values())}
    if not_current:
        log.info("%s: published a selection; not acquired yet: %s", source.id, ", ".join(not_current))
        summary["not_acquired"] = not_current
    partial = {name: f"{r.partial.members_present} of {r.partial.members_in_archive} members" for name, r in sorted(records.items()) if r.partial}
    if partial:  # read in part over Range requests (needed_by): the rest is fetched by a run without it
        summary["partial"] = partial
    whole_instead = {f["name"]: f["whole_instead"] for f in fetched if f.get("whole_instead")}
    if whole_instead:  # needed_by asked for members, the server could not serve them alone
        log.warning("%s: downloaded whole instead of in part: %s", source.id, whole_instead)
        summary["whole_instead"] = whole_instead
    return summary


def acquire(source: Source, ctx: Context, *, acknowledge: bool = False, dry_run: bool = False, only: list[str] | None = None, include_optional: bool = False, who: str = "cli", refetch_quarantined: bool = False, needed_by: list[str] | None = None) -> dict:
    """All steps in a row (the CLI); Airflow runs them as separate tasks."""
    the_plan = plan(source, ctx, acknowledge=acknowledge, only=only, include_optional=include_optional, who=who, refetch_quarantined=refetch_quarantined, needed_by=needed_by, dry_run=dry_run)
    if dry_run:
        return the_plan.to_dict()
    fetched = [fetch_artifact(source, pin, ctx) for pin in the_plan.pins]
    summary = publish(source, ctx, fetched, selection_of(only, needed_by))
    if source.crawl:  # the URL list is in place: fetch the images it names that are missing, then fill from the mirrors
        from .crawl import crawl_all

        summary["crawl"] = crawl_all(ctx.storage, source.id, ctx.catalog, ctx.mirrors, ctx.policy)
    return summary


__all__ = ["Context", "IntegrityError", "LicenceNotAcknowledged", "Pin", "UpstreamMoved", "acquire", "fetch_artifact", "plan", "publish"]
