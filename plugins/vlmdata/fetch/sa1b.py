"""SA-1B (Segment Anything) shards: tars behind signed, expiring links the user provides.

Meta hands out SA-1B only through its download page: after accepting the licence the user
gets a links file, tab-separated with the header ``file_name<TAB>cdn_link`` and one row per
tar (``sa_000020.tar<TAB>https://...signed...``), in no shard order; a link's path does not
name its tar (only the row does) and its query string is the credential (``oh=``, ``oe=``,
``_nc_gid=`` ...: never logged, never stored). The links expire, so the file is user input
that the user refreshes; it is read, in this order, from

1. the Airflow Variable named by the catalog's ``sa1b.links_variable`` (default
   ``vlmdata_sa1b_links``), only inside an Airflow task (``vlmdata.settings`` resolves it and
   passes it in the context): the file's text, or a path to it;
2. the environment variable ``VLMDATA_SA1B_LINKS``: a path to the file (or its text);
3. ``links_variable`` itself, when it is a path to an existing file (a private catalog may
   point at a file on shared storage).

Every row of the file becomes an artifact ``sa_0000NN.tar``; those in the catalog's range
``first_shard..last_shard`` (ConvLLaVA's 0..50) are fetched by default, the others are
optional: fetched when named (the DAG's ``artifacts`` parameter, ``--artifact``) or with
``include_optional``. A range shard missing from the links file is an error, not a skip.

A tar is fingerprinted by its file name and size, never by its link: the signature changes
on every refresh of the links file, and a refresh must not fetch again what is placed. Each
tar is extracted flat into ``sam/images/`` keeping the JPEGs (and, with ``keep_masks``, the
``sa_<n>.json`` mask files beside them: one tar, one download, one folder).

Which tars does a mixture need? SA-1B image numbers are global (``sa_545504.jpg``) and a tar
holds about 11,186 of them, but which numbers sit in which tar cannot be computed from the
number, and Meta publishes no map. A tar's contents are known here from the manifest's file
index of a tar already extracted, from a list the user supplies
(``{"sa_000123.tar": ["sa_1.jpg", ...]}``), or by :func:`index_remote_tar`, which reads only the
tar's member headers through HTTP Range requests and keeps the list. :func:`report_needed_shards`
accounts for an annotation file's SAM images with what is known, reading nothing;
:func:`locate_tars` also indexes the links file's other tars until every missing image is
placed; ``needed_by`` (the DAG parameter, ``--needed-by``) fetches the tars it names instead of
the range. Whether ConvLLaVA's 51 tars hold every SAM image ShareGPT4V-PT references is not published
(51 x ~11,186 is about its ~570K SAM records): ``needed_by`` is how to find out.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tarfile
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import requests

from ..annotations import Records, fast_or_json, image_paths
from ..catalog import Artifact, Extract, Source
from ..extract import Limits, UnsafeArchive
from ..manifest import Manifest, now, source_prefix
from .. import pages
from ..redaction import mask_secrets
from ..reports import NeededTars, save
from ..storage import DATA_PREFIX, Storage
from ..verify import needed_report_key
from .digest import Expected
from .http import FetchError, PermanentFetchError, RangeReader, body_length, content_range_total, raise_for_status, redact, with_retries
from .remote import Context, Remote, Transport

log = logging.getLogger("vlmdata.fetch.sa1b")

LINKS_ENV = "VLMDATA_SA1B_LINKS"
HEADER = ("file_name", "cdn_link")
DOWNLOAD_PAGE = "https://ai.meta.com/datasets/segment-anything-downloads/"
IMAGES_FOLDER = "sam/images"  # where ShareGPT4V's records point, relative to the data tree
UNKNOWN = "unknown: need the tar to know"
REFUSED = (400, 401, 403, 410)  # what a CDN answers to an expired, revoked or tampered signature

_TAR_NAME = re.compile(r"sa_(\d{6})\.tar")
_IMAGE_NAME = re.compile(r"sa_\d+\.jpg")


class LinksFileError(FetchError):
    """The links file is missing or malformed; the message says which line and what is wrong."""


# ------------------------------------------------------------------------------ the links file


def parse_links(text: str, where: str = "links file") -> dict[str, str]:
    """``{tar name: signed URL}`` from Meta's links file, in file order. Strict: any malformed
    line raises :class:`LinksFileError` naming the line number."""
    links: dict[str, str] = {}
    first_line: dict[str, int] = {}
    header_seen = False
    for number, raw in enumerate(text.lstrip("\ufeff").splitlines(), 1):
        line = raw.rstrip("\r")
        if not line.strip():
            continue
        fields = [f.strip() for f in line.split("\t")]
        if not header_seen:
            if tuple(fields) != HEADER:
                raise LinksFileError(
                    f"{where}, line {number}: expected the header 'file_name<TAB>cdn_link', got {_clip(line)!r}: "
                    f"is this the links file from Meta's SA-1B download page ({DOWNLOAD_PAGE})?"
                )
            header_seen = True
            continue
        if len(fields) != 2:
            raise LinksFileError(f"{where}, line {number}: expected 2 tab-separated fields (file_name, cdn_link), got {len(fields)}: {_clip(line)!r}")
        name, url = fields
        if not _TAR_NAME.fullmatch(name):
            raise LinksFileError(f"{where}, line {number}: file_name {_clip(name)!r} is not an SA-1B tar name like sa_000020.tar")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise LinksFileError(f"{where}, line {number}: cdn_link for {name} is not an http(s) URL: {_clip(redact(url))!r}")
        if name in links:
            raise LinksFileError(f"{where}, line {number}: {name} appears again (first on line {first_line[name]})")
        links[name], first_line[name] = url, number
    if not header_seen:
        raise LinksFileError(f"{where}: empty; expected Meta's links file (header 'file_name<TAB>cdn_link', then one row per tar)")
    if not links:
        raise LinksFileError(f"{where}: a header but no rows")
    return links


def _clip(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def _text_or_file(value: str, where: str) -> tuple[str, str]:
    """A value holding the file's text (it has a tab or a line break), or a path to the file."""
    if "\t" in value or "\n" in value:
        return value, where
    path = Path(value.strip()).expanduser()
    try:
        return path.read_text(encoding="utf-8"), f"{path} (from {where})"
    except OSError as exc:
        raise LinksFileError(f"{where} names the links file {str(path)!r}, which cannot be read: {exc.strerror or exc}") from exc


def links_text(source: Source, variables: Callable[[str], str | None] = lambda name: None) -> tuple[str, str]:
    """The links file's text and where it came from (see the module doc for the order).
    ``variables`` are the deployment's (Airflow's, resolved by vlmdata.settings)."""
    variable = source.sa1b.links_variable
    value = variables(variable)
    if value and value.strip():
        return _text_or_file(value, f"Airflow Variable {variable}")
    env = os.environ.get(LINKS_ENV)
    if env and env.strip():
        return _text_or_file(env, LINKS_ENV)
    if ("/" in variable or os.sep in variable) and Path(variable).expanduser().is_file():
        return _text_or_file(variable, f"{source.id}: sa1b.links_variable")
    raise LinksFileError(
        f"{source.id}: no SA-1B links file. Accept the licence on {source.homepage or DOWNLOAD_PAGE}, download the "
        f"links file, then put its text (or its path) in the Airflow Variable `{variable}`, or set {LINKS_ENV}=<path> "
        f"for the CLI."
    )


def read_links(source: Source, ctx: Context | None = None) -> dict[str, str]:
    """The parsed links file; parsed once per step when a context is given."""
    key = ("sa1b.links", source.id)
    if ctx is not None and key in ctx.memo:
        return ctx.memo[key]
    text, where = links_text(source, ctx.variable if ctx is not None else lambda name: None)
    links = parse_links(text, where)
    mask_secrets(links.values())  # the signatures are credentials
    log.info("%s: %d links read from %s", source.id, len(links), where)
    if ctx is not None:
        ctx.memo[key] = links
    return links


def shard_number(name: str) -> int:
    match = _TAR_NAME.fullmatch(name)
    if not match:
        raise ValueError(f"{name!r} is not an SA-1B tar name like sa_000020.tar")
    return int(match[1])


def shard_name(number: int) -> str:
    return f"sa_{number:06d}.tar"


# ------------------------------------------------------------------------------ the transport


def extract_spec(source: Source) -> Extract:
    include = ["*.jpg", "*.json"] if source.sa1b.keep_masks else ["*.jpg"]
    return Extract(into=IMAGES_FOLDER, flatten=True, include=include)


def sa1b_discover(source: Source, ctx: Context) -> list[Artifact]:
    """One artifact per row of the links file; those outside the catalog's range are optional.
    A range shard the file lacks is listed without a link: fetching it fails with the advice."""
    upstream = source.sa1b
    first, last = upstream.first_shard, upstream.last_shard
    if last < first:
        raise LinksFileError(f"{source.id}: sa1b.last_shard ({last}) is before first_shard ({first})")
    links = read_links(source, ctx)
    spec = extract_spec(source)
    artifacts = []
    for name, link in sorted(links.items()):
        in_range = first <= shard_number(name) <= last
        artifacts.append(
            Artifact(
                name=name, url=ctx.mirrors.rewrite(link), extract=spec, optional=not in_range, approx_size=upstream.approx_shard_size,
                note=None if in_range else f"outside the catalog's range {first}..{last}: fetched when named or with include_optional",
            )
        )
    artifacts += [Artifact(name=shard_name(n), extract=spec, approx_size=upstream.approx_shard_size, note="in the catalog's range; not in the links file")
                  for n in range(first, last + 1) if shard_name(n) not in links]
    return artifacts


def _unlinked(source: Source, names: list[str]) -> LinksFileError:
    upstream = source.sa1b
    shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    return LinksFileError(
        f"{source.id}: the links file has no row for {len(names)} of the shards {shard_name(upstream.first_shard)}..{shard_name(upstream.last_shard)} "
        f"the catalog asks for ({shown}). Use the complete file from Meta's download page, or narrow "
        f"sa1b.first_shard / last_shard in a private catalog (VLMDATA_CATALOG)."
    )


def _refused_message(source: Source, name: str, status: int, said: str) -> str:
    cdn = f": the CDN says {said!r}" if said else ""
    return (
        f"{source.id}/{name}: the signed link was refused (HTTP {status}{cdn}). SA-1B links expire: download a fresh "
        f"links file from Meta's download page ({source.homepage or DOWNLOAD_PAGE}) and put its text (or its path) in "
        f"the Airflow Variable `{source.sa1b.links_variable}`, or point {LINKS_ENV} at it, then run again. Tars already "
        f"placed are recognised by name and size and are not fetched again."
    )


def _error_text(response: requests.Response) -> str:
    try:
        raw = response.raw.read(512, decode_content=True) or b""
    except Exception:  # the body is only a hint
        return ""
    return " ".join(raw.decode("utf-8", "replace").split())[:200]


def probe_link(source: Source, name: str, url: str, ctx: Context, session: requests.Session | None = None) -> int | None:
    """The tar's size (None when the CDN does not say), or FetchError with the refresh advice.

    HEAD first; where it is refused, a one-byte ranged GET, since some signed-URL schemes sign
    the method and refuse HEAD on a valid link. Only when the GET is refused too is the link
    declared expired (quoting the CDN's error text).
    """
    session = session or requests.Session()
    timeout = (ctx.policy.connect_timeout, ctx.policy.read_timeout)

    def attempt():
        head = session.head(url, allow_redirects=True, timeout=timeout)
        raise_for_status(head, url)
        if head.status_code == 200:
            return body_length(head.headers)
        with session.get(url, headers={"Range": "bytes=0-0"}, stream=True, allow_redirects=True, timeout=timeout) as got:
            raise_for_status(got, url)
            if got.status_code == 206:
                return content_range_total(got.headers.get("Content-Range"))
            if got.status_code == 200:
                return body_length(got.headers)
            said = _error_text(got)
            if got.status_code in REFUSED:
                raise PermanentFetchError(_refused_message(source, name, got.status_code, said))
            if got.status_code == 404:
                raise PermanentFetchError(f"{source.id}/{name}: not found at {redact(url)} (HTTP 404): the links file or a mirror rule points to the wrong place; get a fresh links file from Meta's download page")
            raise PermanentFetchError(f"{source.id}/{name}: unexpected HTTP {got.status_code} from {redact(url)}{f': {said!r}' if said else ''}")

    return with_retries(f"{source.id}/{name} ({redact(url)})", ctx.policy, attempt)


def sa1b_remotes(source: Source, artifacts: list[Artifact], ctx: Context) -> list[Remote]:
    # Artifacts without a link (a range shard, or one a private catalog names) take it from the links file.
    links = read_links(source, ctx) if any(a.url is None for a in artifacts) else {}
    unlinked = [a.name for a in artifacts if a.url is None and a.name not in links]
    if unlinked:
        raise _unlinked(source, unlinked)
    session = requests.Session()
    remotes = []
    for artifact in artifacts:
        url = artifact.url or ctx.mirrors.rewrite(links[artifact.name])
        size = probe_link(source, artifact.name, url, ctx, session)
        if artifact.size is not None and size is not None and size != artifact.size:
            raise PermanentFetchError(f"{source.id}/{artifact.name}: the CDN has {size} bytes, the catalog expects {artifact.size}")
        expected = Expected(size=artifact.size if artifact.size is not None else size, sha256=artifact.sha256, md5=artifact.md5)
        # Name and size, not the link: a refreshed links file must not look like a new upstream.
        remotes.append(Remote(artifact, url, expected, {"file_name": artifact.name, "size": size}))
    return remotes


# ------------------------------------------------------------- which tars a mixture needs


def sam_images(records: Iterable[Mapping], image_folder: str = "") -> list[str]:
    """The distinct ``sam/images/...`` paths (relative to the data tree) the records reference."""
    return [path for path in image_paths(records, image_folder) if path.startswith(IMAGES_FOLDER + "/")]


def _by_image(index: Mapping[str, Iterable[str]] | None) -> dict[str, str]:
    """{image file name: tar} from {tar: [names or keys]}; the first tar named wins."""
    owner: dict[str, str] = {}
    for tar, names in (index or {}).items():
        for name in names:
            owner.setdefault(PurePosixPath(name).name, tar)
    return owner


def shards_for_annotation(records: Iterable[Mapping], image_folder: str = "", index: Mapping[str, Iterable[str]] | None = None) -> dict[str, str]:
    """``{"sam/images/sa_<n>.jpg": tar}`` for every SAM image the records reference.

    The tar comes from ``index`` (``{tar: [image names]}``: see :func:`tar_index`); an image no
    index places maps to :data:`UNKNOWN`, because the image number alone does not tell its tar.
    """
    owner = _by_image(index)
    return {path: owner.get(PurePosixPath(path).name, UNKNOWN) for path in sam_images(records, image_folder)}


def contents_key(source_id: str, tar: str) -> str:
    """Where the member list of a tar read remotely is kept: a tar's contents never change."""
    return f"{source_prefix(source_id)}/tar-contents/{tar}.json"


def tar_index(storage: Storage, source_id: str = "sa1b") -> dict[str, list[str]]:
    """``{tar: [image names]}`` of every tar known here: extracted (the manifest's file indexes)
    or indexed remotely (:func:`index_remote_tar`)."""
    manifest = Manifest(storage, source_id)
    found = {}
    for name, record in manifest.artifacts().items():
        if record.placement.folder:
            found[name] = [PurePosixPath(key).name for key, _size, _crc in manifest.index(name) if _IMAGE_NAME.fullmatch(PurePosixPath(key).name)]
    for key, _size in storage.list(f"{source_prefix(source_id)}/tar-contents"):
        contents = storage.read_json(key)
        found.setdefault(contents["tar"], contents["images"])
    return found


def load_tar_index(path: str | os.PathLike) -> dict[str, list[str]]:
    """A user-supplied ``{tar: [image names]}`` JSON file (for tars not fetched here)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: not a readable JSON index of SA-1B tars: {exc}") from exc
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, list) and all(isinstance(n, str) for n in v) for k, v in data.items()):
        raise ValueError(f"{path}: expected {{\"sa_000123.tar\": [\"sa_1.jpg\", ...], ...}}")
    return data


def index_remote_tar(source: Source, name: str, url: str, ctx: Context) -> list[str]:
    """The image names a tar on the CDN holds, read from its member headers alone.

    Range requests hop from header to header (``tarfile`` seeks over the data), about one
    2 KiB request per member: ~22,000 requests and ~45 MB for a 10.5 GB SA-1B tar instead of
    the tar. The list is kept on the storage (:func:`contents_key`) and never read again.
    """
    limits = Limits()
    reader = RangeReader(url, policy=ctx.policy, refused=lambda status, response: _refused_message(source, name, status, _error_text(response)))
    started = last_log = time.monotonic()
    images, members = [], 0
    try:
        with tarfile.open(fileobj=reader, mode="r:") as tar:
            while (info := tar.next()) is not None:
                members += 1
                if members > limits.max_members:
                    raise UnsafeArchive(f"{name}: more than {limits.max_members} members")
                base = PurePosixPath(info.name).name
                if info.isreg() and _IMAGE_NAME.fullmatch(base):
                    images.append(base)
                if time.monotonic() - last_log > 30:
                    last_log = time.monotonic()
                    log.info("%s: indexing, %d members read (%d images), %d requests, %.0f s", name, members, len(images), reader.requests, last_log - started)
            # tarfile stops quietly at a damaged header or a short file: only zeros (the end
            # marker) or the file's end may follow the last member, or the list is not whole.
            reader.seek(tar.offset)
            if (reader.size is not None and tar.offset > reader.size) or reader.read(tarfile.BLOCKSIZE).strip(b"\0"):
                raise tarfile.ReadError(f"after {members} members, no valid header at byte {tar.offset} of {reader.size}")
    except tarfile.TarError as exc:
        raise FetchError(f"{source.id}/{name}: not a readable tar at {redact(url)}: {exc}") from exc
    ctx.storage.write_json(contents_key(source.id, name), {"tar": name, "size": reader.size, "images": images, "members": members, "requests": reader.requests, "indexed_at": now()})
    log.info("%s: %d members, %d images, indexed with %d requests in %.1f s", name, members, len(images), reader.requests, time.monotonic() - started)
    return images


@dataclass
class NeededShards:
    """What an annotation file's SAM references need from SA-1B."""

    present: list[str] = field(default_factory=list)  # referenced and already in data/sam/images
    tars: dict[str, list[str]] = field(default_factory=dict)  # tar -> referenced images it holds, not stored
    unknown: list[str] = field(default_factory=list)  # not stored, and no index says which tar holds them
    searched: int | None = None  # every tar of the links file is indexed, this many: unknown means in none

    @property
    def referenced(self) -> int:
        return len(self.present) + sum(len(v) for v in self.tars.values()) + len(self.unknown)

    def summary(self) -> str:
        parts = [f"{self.referenced} SAM images referenced", f"{len(self.present)} present"]
        if self.tars:
            parts.append(f"{sum(len(v) for v in self.tars.values())} in {len(self.tars)} known tars: fetch {sorted(self.tars)}")
        if self.unknown and self.searched is not None:
            parts.append(
                f"{len(self.unknown)} in none of the {self.searched} tars of the links file (another source holds them, such as "
                f"ShareGPT4V's SAM 9K subset, or the links file lacks rows)"
            )
        elif self.unknown:
            parts.append(
                f"{len(self.unknown)} unaccounted for ({UNKNOWN}: an image's number does not say which tar holds it; "
                f"fetching more tars, or an index of their contents, narrows this)"
            )
        return "; ".join(parts)

    def account(self, needed_by: list[str] | None = None, examples: int = 10) -> NeededTars:
        """The account kept on the storage (:func:`needed_report_key`): counts, a few examples."""
        return NeededTars(
            referenced=self.referenced,
            present=len(self.present),
            tars={tar: len(images) for tar, images in sorted(self.tars.items())},
            unaccounted=len(self.unknown),
            summary=self.summary(),
            unaccounted_examples=self.unknown[:examples],
            tars_searched=self.searched,
            needed_by=list(needed_by or []),
            at=now(),
            examples_by_tar={tar: images[:examples] for tar, images in sorted(self.tars.items())},
        )


def _stored_images(storage: Storage) -> set[str]:
    return {key for key, size in storage.list(f"{DATA_PREFIX}/{IMAGES_FOLDER}") if size > 0}


def _classify(paths: Iterable[str], stored: set[str], owner: Mapping[str, str]) -> NeededShards:
    """Sort image paths into present, in a known tar (``owner``: image name -> tar), unknown."""
    needed = NeededShards()
    for path in paths:
        tar = owner.get(PurePosixPath(path).name, UNKNOWN)
        if f"{DATA_PREFIX}/{path}" in stored:
            needed.present.append(path)
        elif tar == UNKNOWN:
            needed.unknown.append(path)
        else:
            needed.tars.setdefault(tar, []).append(path)
    return needed


def report_needed_shards(storage: Storage, records: Iterable[Mapping], image_folder: str = "", *, index: Mapping[str, Iterable[str]] | None = None, source_id: str = "sa1b") -> NeededShards:
    """Which referenced SAM images are on the storage, which tars hold the others where that is
    known (the indexes kept here, then ``index``), and how many remain unknown. Reads no tar."""
    known = tar_index(storage, source_id)
    for tar, names in (index or {}).items():
        known.setdefault(tar, list(names))  # what this storage saw in a tar beats a supplied list
    return _classify(sam_images(records, image_folder), _stored_images(storage), _by_image(known))


def needed_images(storage: Storage, catalog: Mapping[str, Source], paths: Iterable[str]) -> list[str]:
    """The distinct ``sam/images/...`` paths the annotation files at ``paths`` (data-tree paths,
    on the storage) reference. A file the catalog declares as an annotation is read relative
    to its ``image_folder``; any other relative to the data tree, as ShareGPT4V's records are."""
    folders = {a.target: a.annotation.image_folder for s in catalog.values() for a in s.artifacts if a.annotation and a.target}
    found: dict[str, None] = {}
    for path in paths:
        path = path.strip().strip("/")
        key = f"{DATA_PREFIX}/{path}"
        size = storage.size(key)
        if size is None:
            raise FileNotFoundError(
                f"needed_by: {path} is not in the data tree ({key} on {storage.url}): acquire the source of that annotation "
                f"file first. The catalog's annotation files that reference SAM images: "
                f"{', '.join(sorted(t for t, folder in folders.items() if t.startswith('sharegpt4v/'))) or 'none'}"
            )

        def images_of(fast: bool, key=key, path=path, size=size) -> list[str]:  # a record at a time (Records)
            with storage.open_read(key) as handle:
                records = Records.read(handle, path, size=size, fast=fast)
            return sam_images(records, folders.get(path, ""))

        found.update(dict.fromkeys(fast_or_json(images_of, path)))
    return list(found)


def locate_tars(source: Source, ctx: Context, images: list[str], *, index: Mapping[str, Iterable[str]] | None = None, workers: int = 8) -> NeededShards:
    """Like :func:`report_needed_shards`, and the tars of the links file nobody indexed yet are
    indexed remotely (:func:`index_remote_tar`, ``workers`` at a time, in shard order) until
    every missing image is placed or every tar is indexed."""
    known = tar_index(ctx.storage, source.id)
    for tar, names in (index or {}).items():
        known.setdefault(tar, list(names))
    stored = _stored_images(ctx.storage)
    owner = _by_image(known)
    unplaced = _classify(images, stored, owner).unknown
    links = read_links(source, ctx)
    pending = sorted((name for name in links if name not in known), key=shard_number)
    if unplaced and pending:
        log.info("%s: %d referenced images missing and in no indexed tar: indexing the %d other tars of the links file, %d at a time",
                 source.id, len(unplaced), len(pending), workers)
    done = 0
    with ThreadPoolExecutor(workers, thread_name_prefix="sa1b-index") as pool:
        while unplaced and pending:
            batch, pending = pending[:workers], pending[workers:]
            for name, names in zip(batch, pool.map(lambda n: index_remote_tar(source, n, ctx.mirrors.rewrite(links[n]), ctx), batch)):
                owner.update((image, name) for image in names if image not in owner)
            done += len(batch)
            unplaced = [path for path in unplaced if PurePosixPath(path).name not in owner]  # only the new tars can place them
            log.info("%s: %d tars indexed, %d to go; %d missing images still unplaced", source.id, done, len(pending), len(unplaced))
    needed = _classify(images, stored, owner)
    if not pending:
        needed.searched = len(links)
    return needed


def sa1b_needed_by(source: Source, ctx: Context, paths: list[str]) -> list[str]:
    """The tars holding the SAM images that the annotation files ``paths`` reference and the
    storage lacks; the full account goes to :func:`needed_report_key`."""
    needed = locate_tars(source, ctx, needed_images(ctx.storage, ctx.catalog, paths))
    account = needed.account(paths)
    save(ctx.storage, needed_report_key(source.id), account)
    ctx.storage.write_bytes(needed_report_key(source.id, page=True), pages.render("needed_tars.html", source=source.id, account=account).encode())
    log.info("%s: %s", source.id, needed.summary())
    return sorted(needed.tars, key=shard_number)


# Every refresh of the links file signs the links anew: a pin compares name and size, not the link.
SA1B = Transport(sa1b_remotes, sa1b_discover, needed_by=sa1b_needed_by, reissued_urls=True)
