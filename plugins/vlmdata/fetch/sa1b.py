"""SA-1B (Segment Anything) shards: tars behind signed, expiring links the user provides.

Meta hands out SA-1B only through its download page: after accepting the licence the user
gets a links file, tab-separated with the header ``file_name<TAB>cdn_link`` and one row per
tar (``sa_000020.tar<TAB>https://...signed...``). The links expire, so the file is user input
that the user refreshes; it is read, in this order, from

1. the Airflow Variable named by the catalog's ``sa1b.links_variable`` (default
   ``vlmdata_sa1b_links``), only inside an Airflow task: the file's text, or a path to it;
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
number. :func:`report_needed_shards` therefore knows the tar of an image only from the index
of a tar already extracted (the manifest's per-tar file index) or from an index the user
supplies (``{"sa_000123.tar": ["sa_1.jpg", ...]}``); every other missing image is reported as
unaccounted for ("unknown: need the tar to know"), with its count, and the number shrinks as
more tars are fetched. ConvLLaVA's 51 tars cover only about half of the SAM images
ShareGPT4V-PT references, so expect a large unaccounted count with the default range.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit, urlunsplit

import requests

from ..catalog import Artifact, Extract, Source
from ..manifest import Manifest
from ..storage import DATA_PREFIX, Storage
from .digest import Expected
from .http import FetchError, _content_range_total, _raise_for_retry, redact, with_retries
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


def _airflow_variable(name: str) -> str | None:
    """The Variable's value inside an Airflow task; None anywhere else (CLI, tests, DAG parsing)."""
    if "airflow.sdk.execution_time.task_runner" not in sys.modules:
        return None  # not in a task: importing Airflow would cost seconds and find nothing
    try:
        from airflow.sdk import Variable

        return Variable.get(name, default=None)
    except Exception as exc:  # no task context after all, or the API server unreachable
        log.warning("Airflow Variable %s could not be read (%s); trying %s", name, exc, LINKS_ENV)
        return None


def _text_or_file(value: str, where: str) -> tuple[str, str]:
    """A value holding the file's text (it has a tab or a line break), or a path to the file."""
    if "\t" in value or "\n" in value:
        return value, where
    path = Path(value.strip()).expanduser()
    try:
        return path.read_text(encoding="utf-8"), f"{path} (from {where})"
    except OSError as exc:
        raise LinksFileError(f"{where} names the links file {str(path)!r}, which cannot be read: {exc.strerror or exc}") from exc


def links_text(source: Source) -> tuple[str, str]:
    """The links file's text and where it came from (see the module doc for the order)."""
    variable = source.sa1b.links_variable
    value = _airflow_variable(variable)
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
    text, where = links_text(source)
    links = parse_links(text, where)
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
    """One artifact per row of the links file; those outside the catalog's range are optional."""
    upstream = source.sa1b
    first, last = upstream.first_shard, upstream.last_shard
    if last < first:
        raise LinksFileError(f"{source.id}: sa1b.last_shard ({last}) is before first_shard ({first})")
    links = read_links(source, ctx)
    missing = [shard_name(n) for n in range(first, last + 1) if shard_name(n) not in links]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise LinksFileError(
            f"{source.id}: the links file has no row for {len(missing)} of the shards {shard_name(first)}..{shard_name(last)} "
            f"the catalog asks for ({shown}). Use the complete file from Meta's download page, or narrow "
            f"sa1b.first_shard / last_shard in a private catalog (VLMDATA_CATALOG)."
        )
    spec = extract_spec(source)
    artifacts = []
    for name, link in sorted(links.items()):
        in_range = first <= shard_number(name) <= last
        artifacts.append(
            Artifact(
                name=name, url=ctx.mirrors.rewrite(link), extract=spec, optional=not in_range,
                note=None if in_range else f"outside the catalog's range {first}..{last}: fetched when named or with include_optional",
            )
        )
    return artifacts


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


def _length(value: str | None) -> int | None:
    return int(value) if value and value.isdigit() else None


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
        _raise_for_retry(head)
        if head.status_code == 200:
            return _length(head.headers.get("Content-Length"))
        with session.get(url, headers={"Range": "bytes=0-0"}, stream=True, allow_redirects=True, timeout=timeout) as got:
            _raise_for_retry(got)
            if got.status_code == 206:
                return _content_range_total(got.headers.get("Content-Range"))
            if got.status_code == 200:
                return _length(got.headers.get("Content-Length"))
            said = _error_text(got)
            if got.status_code in REFUSED:
                raise FetchError(_refused_message(source, name, got.status_code, said))
            if got.status_code == 404:
                raise FetchError(f"{source.id}/{name}: not found at {redact(url)} (HTTP 404): the links file or a mirror rule points to the wrong place; get a fresh links file from Meta's download page")
            raise FetchError(f"{source.id}/{name}: unexpected HTTP {got.status_code} from {redact(url)}{f': {said!r}' if said else ''}")

    return with_retries(f"{source.id}/{name} ({redact(url)})", ctx.policy, attempt)


def sa1b_remotes(source: Source, artifacts: list[Artifact], ctx: Context) -> list[Remote]:
    links = None
    session = requests.Session()
    remotes = []
    for artifact in artifacts:
        url = artifact.url
        if url is None:  # an artifact a private catalog names without a link: take it from the links file
            links = links if links is not None else read_links(source, ctx)
            if artifact.name not in links:
                raise LinksFileError(f"{source.id}: the links file has no row for {artifact.name}")
            url = ctx.mirrors.rewrite(links[artifact.name])
        size = probe_link(source, artifact.name, url, ctx, session)
        if artifact.size is not None and size is not None and size != artifact.size:
            raise FetchError(f"{source.id}/{artifact.name}: the CDN has {size} bytes, the catalog expects {artifact.size}")
        expected = Expected(size=artifact.size if artifact.size is not None else size, sha256=artifact.sha256, md5=artifact.md5)
        # Name and size, not the link: a refreshed links file must not look like a new upstream.
        remotes.append(Remote(artifact, url, expected, {"file_name": artifact.name, "size": size}))
    return remotes


SA1B = Transport(sa1b_remotes, sa1b_discover)


# ------------------------------------------------------------- which tars a mixture needs


def sam_images(records: Iterable[Mapping], image_folder: str = "") -> list[str]:
    """The distinct ``sam/images/...`` paths (relative to the data tree) the records reference."""
    seen: dict[str, None] = {}
    for record in records:
        images = record.get("image") if isinstance(record, Mapping) else None
        for image in [images] if isinstance(images, str) else images if isinstance(images, list) else []:
            if not isinstance(image, str) or not image:
                continue
            path = posixpath.normpath(posixpath.join(image_folder, image))
            if path.startswith(IMAGES_FOLDER + "/"):
                seen[path] = None
    return list(seen)


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


def tar_index(storage: Storage, source_id: str = "sa1b") -> dict[str, list[str]]:
    """``{tar: [image names]}`` of every tar already extracted, from the manifest's file indexes."""
    manifest = Manifest(storage, source_id)
    found = {}
    for name, record in manifest.artifacts().items():
        if record.placement.folder:
            found[name] = [PurePosixPath(key).name for key, _size, _crc in manifest.index(name) if _IMAGE_NAME.fullmatch(PurePosixPath(key).name)]
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


@dataclass
class NeededShards:
    """What an annotation file's SAM references need from SA-1B."""

    present: list[str] = field(default_factory=list)  # referenced and already in data/sam/images
    tars: dict[str, list[str]] = field(default_factory=dict)  # tar -> referenced images it holds, not stored
    unknown: list[str] = field(default_factory=list)  # not stored, and no index says which tar holds them

    @property
    def referenced(self) -> int:
        return len(self.present) + sum(len(v) for v in self.tars.values()) + len(self.unknown)

    def summary(self) -> str:
        parts = [f"{self.referenced} SAM images referenced", f"{len(self.present)} present"]
        if self.tars:
            parts.append(f"{sum(len(v) for v in self.tars.values())} in {len(self.tars)} known tars: fetch {sorted(self.tars)}")
        if self.unknown:
            parts.append(
                f"{len(self.unknown)} unaccounted for ({UNKNOWN}: an image's number does not say which tar holds it; "
                f"fetching more tars, or an index of their contents, narrows this)"
            )
        return "; ".join(parts)

    def to_dict(self, examples: int = 10) -> dict:
        return {
            "referenced": self.referenced,
            "present": len(self.present),
            "tars": {tar: len(images) for tar, images in sorted(self.tars.items())},
            "unaccounted": len(self.unknown),
            "unaccounted_examples": self.unknown[:examples],
            "summary": self.summary(),
        }


def report_needed_shards(storage: Storage, records: Iterable[Mapping], image_folder: str = "", *, index: Mapping[str, Iterable[str]] | None = None, source_id: str = "sa1b") -> NeededShards:
    """Which referenced SAM images are on the storage, which tars hold the others where that is
    known (the manifest's indexes of extracted tars, then ``index``), and how many remain unknown."""
    known = tar_index(storage, source_id)
    for tar, names in (index or {}).items():
        known.setdefault(tar, list(names))  # what this storage saw in a tar beats a supplied list
    stored = {key for key, size in storage.list(f"{DATA_PREFIX}/{IMAGES_FOLDER}") if size > 0}
    needed = NeededShards()
    for path, tar in shards_for_annotation(records, image_folder, known).items():
        if f"{DATA_PREFIX}/{path}" in stored:
            needed.present.append(path)
        elif tar == UNKNOWN:
            needed.unknown.append(path)
        else:
            needed.tars.setdefault(tar, []).append(path)
    return needed
