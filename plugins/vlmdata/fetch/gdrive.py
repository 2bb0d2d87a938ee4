"""Google Drive: a small client of our own for public files and folders; bytes through fetch.http.

Drive has no download API for anonymous users, only the pages a browser sees. What this
client relies on (docs/facts.md, "Google Drive"; [M] = several third-party clients agree, [U] = assumed):

* ``GET https://drive.google.com/uc?export=download&id=ID`` answers the file itself
  (``Content-Disposition: attachment``), possibly after a redirect to
  ``drive.usercontent.google.com/download`` [M]; a file too large to scan answers an HTML
  "virus scan warning" page whose ``form#download-form`` (action on
  ``drive.usercontent.google.com``, hidden inputs ``id``, ``export``, ``confirm``, ``uuid``)
  leads to the bytes [M].
* A page carrying ``uc-error-subcaption`` means the file's download quota is exhausted
  ("Too many users have viewed or downloaded this file recently"): retryable, but in hours.
* ``GET https://drive.google.com/embeddedfolderview?id=FOLDER`` lists a public folder:
  ``div.flip-entry`` elements with a link to ``/file/d/<id>/view`` or ``/drive/folders/<id>``,
  the name in ``div.flip-entry-title`` and a day-resolution date in
  ``div.flip-entry-last-modified`` [M].
* [U] The bytes URL honours ``HEAD``, ``Range`` and ``If-Range`` and sends ``Content-Length``
  and ``Last-Modified`` (or an ``ETag``); no cookie is needed once ``confirm`` is in the URL.
  The form's ``uuid`` changes with every warning page, so the URL of one attempt differs from
  the next; ``fetch.http`` resumes a ``.part`` on its validator, not its URL, so a killed
  worker's partial file still resumes.

Every URL, including form actions and redirect targets, goes through the mirror map, so
``https://drive.google.com`` and ``https://drive.usercontent.google.com`` can both be
pointed elsewhere (a mirror, or the tests' fake).

Fingerprint (what a refresh compares): the file id, and the size, ``ETag`` and
``Last-Modified`` a ``HEAD`` of the bytes URL gives. The folder listing's date is used only
when the server gives neither validator: it has day resolution and relative forms
("3:45 PM" today, "Sep 15" this year) that change on their own, which would refetch
multi-gigabyte archives for nothing.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, replace
from datetime import date, datetime, timezone
from email.message import Message
from html.parser import HTMLParser
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit, urlunsplit

import requests

from ..catalog import Artifact, Extract, Source
from ..mirrors import Mirrors
from .digest import Expected
from .http import RETRY_STATUS, FetchError, PermanentFetchError, RetryPolicy, Transient, body_length, raise_for_status, with_retries
from .remote import Context, Remote, Transport

log = logging.getLogger("vlmdata.fetch.gdrive")

DRIVE = "https://drive.google.com"
USERCONTENT = "https://drive.usercontent.google.com"

QUOTA_ATTEMPTS = 4  # quota pages seen before giving up (Drive lifts a quota in hours, not seconds)
MAX_PAGE_BYTES = 4 << 20  # a warning, error or listing page is a few KiB
MAX_REDIRECTS = 10
MAX_FOLDER_DEPTH = 16

_REDIRECTS = {301, 302, 303, 307, 308}
_FILE_LINK = re.compile(r"/file/d/([\w-]+)")
_FOLDER_LINK = re.compile(r"/drive/(?:u/\d+/)?folders/([\w-]+)")


class DriveQuotaExceeded(FetchError):
    """Drive refuses the download for now (its per-file quota); retrying later may work."""


def quota_message(file_id: str, detail: str) -> str:
    return (
        f"Google Drive file {file_id}: Drive refuses the download for now because the file's download quota is "
        f"exhausted (Drive says: {detail.strip() or 'quota exceeded'}). This is Drive's limit, not a fault of the "
        f"pipeline: retry later (Drive lifts it within about 24 hours), or set a mirror for {DRIVE} and "
        f"{USERCONTENT} in the mirror map (vlmdata_mirrors / VLMDATA_MIRRORS)."
    )


# ------------------------------------------------------------------------------------- pages


class _Page(HTMLParser):
    @classmethod
    def parse(cls, html: str):
        page = cls()
        page.feed(html)
        page.close()
        return page


class _UcPage(_Page):
    """The HTML Drive answers instead of a file: the warning form, or an error subcaption."""

    def __init__(self) -> None:
        super().__init__()
        self.action: str | None = None  # form#download-form's action, if present
        self.inputs: dict[str, str] = {}
        self.error: str | None = None  # the text of .uc-error-subcaption, if present
        self._in_form = False
        self._capture: list[str] | None = None
        self._capture_tag: str | None = None
        self._capture_depth = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form" and a.get("id") == "download-form":
            self._in_form, self.action = True, a.get("action", "")
        elif tag == "input" and self._in_form and a.get("type", "").lower() == "hidden" and a.get("name"):
            self.inputs[a["name"]] = a.get("value", "")
        if self._capture is not None and tag == self._capture_tag:
            self._capture_depth += 1
        elif self._capture is None and "uc-error-subcaption" in a.get("class", "").split():
            self._capture, self._capture_tag, self._capture_depth = [], tag, 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._in_form = False
        if self._capture is not None and tag == self._capture_tag:
            self._capture_depth -= 1
            if self._capture_depth == 0:
                self.error = " ".join("".join(self._capture).split())
                self._capture = None

    def handle_data(self, data: str) -> None:
        if self._capture is not None:
            self._capture.append(data)

    def close(self) -> None:
        super().close()
        if self._capture is not None:  # an unclosed element: keep what was read
            self.error = " ".join("".join(self._capture).split())
            self._capture = None

    def confirmed_url(self, mirrors: Mirrors) -> str:
        """What submitting the form asks for: its action with its hidden inputs, after mirrors."""
        split = urlsplit(self.action or f"{USERCONTENT}/download")
        base = mirrors.rewrite(urlunsplit(split._replace(query="", fragment="")))
        query = dict(parse_qsl(split.query, keep_blank_values=True)) | self.inputs
        return f"{base}?{urlencode(query)}"


@dataclass(frozen=True)
class Entry:
    """One file (or sub-folder) of a folder listing."""

    id: str
    name: str
    folder: bool
    modified: str | None = None  # ISO date where the listing's text could be read, else the text
    path: str = ""  # relative to the listed folder, "/"-separated (set by list_folder)


class _FolderPage(_Page):
    """``embeddedfolderview``: div.flip-entries > div.flip-entry (a[href], .flip-entry-title, ...)."""

    def __init__(self) -> None:
        super().__init__()
        self.listing = False  # saw div.flip-entries: a folder page, even if empty
        self.raw: list[dict] = []
        self._divs: list[list[str]] = []  # classes of the open divs
        self._entry: dict | None = None
        self._entry_level = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "div":
            classes = a.get("class", "").split()
            self._divs.append(classes)
            if "flip-entries" in classes:
                self.listing = True
            if "flip-entry" in classes and self._entry is None:
                self._entry = {"entry_id": a.get("id", "").removeprefix("entry-"), "href": None, "title": [], "modified": []}
                self._entry_level = len(self._divs)
        elif tag == "a" and self._entry is not None and self._entry["href"] is None:
            self._entry["href"] = a.get("href")

    def handle_endtag(self, tag: str) -> None:
        if tag != "div" or not self._divs:
            return
        if self._entry is not None and len(self._divs) == self._entry_level:
            self.raw.append(self._entry)
            self._entry = None
        self._divs.pop()

    def handle_data(self, data: str) -> None:
        if self._entry is None:
            return
        for classes in reversed(self._divs[self._entry_level - 1 :]):
            if "flip-entry-title" in classes:
                self._entry["title"].append(data)
                return
            if "flip-entry-last-modified" in classes:
                self._entry["modified"].append(data)
                return

    def entries(self, today: date) -> list[Entry]:
        found = []
        for raw in self.raw:
            href, name = raw["href"] or "", "".join(raw["title"]).strip()
            if m := _FOLDER_LINK.search(href):
                found.append(Entry(m[1], name, folder=True))
            elif m := _FILE_LINK.search(href):
                modified = " ".join("".join(raw["modified"]).split()) or None
                found.append(Entry(m[1], name, folder=False, modified=listing_date(modified, today) if modified else None))
            else:  # Google Docs, Sheets...: no bytes to download
                log.info("Drive folder entry %r (%s) is neither a file nor a folder: skipped", name, href or raw["entry_id"])
        return found


def listing_date(text: str, today: date) -> str:
    """The listing's date as ISO (English page: 'Dec 18, 2025', 'Sep 15' this year, '3:45 PM' today).

    Anything else (another locale) is kept as it is. Dates are Drive's, in a timezone we do
    not know: good enough as a last-resort fingerprint, not as a timestamp."""
    for fmt, fill in (("%b %d, %Y", None), ("%b %d", "year"), ("%I:%M %p", "day"), ("%H:%M", "day")):
        try:
            parsed = datetime.strptime(text, fmt)
        except ValueError:
            continue
        if fill == "day":
            return today.isoformat()
        if fill == "year":
            return parsed.date().replace(year=today.year).isoformat()
        return parsed.date().isoformat()
    return text


# ------------------------------------------------------------------------------------ client


@dataclass(frozen=True)
class Resolved:
    """Where a file's bytes are, and what a HEAD of that URL says."""

    file_id: str
    url: str  # after mirrors: what fetch.http.download is given
    size: int | None
    etag: str | None
    last_modified: str | None
    filename: str | None


def _is_file(headers) -> bool:
    """Drive marks a download with Content-Disposition; its pages are text/html."""
    if "attachment" in headers.get("Content-Disposition", "").lower():
        return True
    return not _is_html(headers)


def _is_html(headers) -> bool:
    return headers.get("Content-Type", "").lower().startswith("text/html")


def _filename(headers) -> str | None:
    value = headers.get("Content-Disposition")
    if not value:
        return None
    message = Message()
    message["Content-Disposition"] = value
    return message.get_filename()


class DriveClient:
    """Resolves file ids to byte URLs and lists public folders, through the mirror map."""

    def __init__(self, mirrors: Mirrors | None = None, policy: RetryPolicy = RetryPolicy(), session: requests.Session | None = None):
        self.mirrors = mirrors or Mirrors()
        self.policy = policy
        self.session = session or requests.Session()

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> DriveClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # http ----------------------------------------------------------------------------------

    def _send(self, method: str, url: str) -> tuple[str, requests.Response]:
        """Follow redirects ourselves so that every target goes through the mirror map."""
        for _ in range(MAX_REDIRECTS + 1):
            response = self.session.request(method, url, allow_redirects=False, stream=True, timeout=(self.policy.connect_timeout, self.policy.read_timeout))
            location = response.headers.get("Location")
            if response.status_code not in _REDIRECTS or not location:
                return url, response
            response.close()
            url = self.mirrors.rewrite(urljoin(url, location))
        raise PermanentFetchError(f"{url}: more than {MAX_REDIRECTS} redirects")

    @staticmethod
    def _read_page(url: str, response: requests.Response) -> str:
        chunks, total = [], 0
        for chunk in response.iter_content(1 << 16):
            chunks.append(chunk)
            total += len(chunk)
            if total > MAX_PAGE_BYTES:
                raise PermanentFetchError(f"{url}: expected a short Drive page, got more than {MAX_PAGE_BYTES} bytes of HTML")
        return b"".join(chunks).decode(response.encoding or "utf-8", errors="replace")

    # files ---------------------------------------------------------------------------------

    def uc_url(self, file_id: str) -> str:
        return self.mirrors.rewrite(f"{DRIVE}/uc?{urlencode({'export': 'download', 'id': file_id})}")

    def _resolved(self, file_id: str, url: str, headers) -> Resolved:
        size = body_length(headers)
        etag = headers.get("ETag")
        return Resolved(file_id, url, size, etag if etag and not etag.startswith("W/") else None, headers.get("Last-Modified"), _filename(headers))

    def _file_or_page(self, file_id: str, url: str) -> Resolved | _UcPage:
        """HEAD first (no bytes move when the URL is the file); GET only to read a page."""
        final, response = self._send("HEAD", url)
        with response:
            if response.status_code == 200 and _is_file(response.headers):
                return self._resolved(file_id, final, response.headers)
            self._raise_for_not_found(file_id, final, response)
            if not _is_html(response.headers):
                raise_for_status(response, final)
        final, response = self._send("GET", url)
        with response:
            if response.status_code == 200 and _is_file(response.headers):  # HEAD said otherwise
                return self._resolved(file_id, final, response.headers)
            self._raise_for_not_found(file_id, final, response)
            if _is_html(response.headers):
                page = _UcPage.parse(self._read_page(final, response))
                if page.error is not None or page.action is not None or response.status_code not in RETRY_STATUS:
                    return page  # a quota page may come with any status: its text says what it is
            raise_for_status(response, final)
            raise PermanentFetchError(f"Google Drive file {file_id}: {final} answered HTTP {response.status_code} without the file")

    @staticmethod
    def _raise_for_not_found(file_id: str, url: str, response: requests.Response) -> None:
        if response.status_code in (404, 410):
            raise PermanentFetchError(f"Google Drive file {file_id}: not found ({url}: HTTP {response.status_code}); check the id in the catalog, or the file was removed upstream")

    def resolve(self, file_id: str) -> Resolved:
        """The URL of the file's bytes, with what a HEAD of it says (size, ETag, Last-Modified)."""
        quota_pages = 0

        def check(page: _UcPage) -> None:
            nonlocal quota_pages
            if page.error is not None:
                quota_pages += 1
                message = quota_message(file_id, page.error)
                if quota_pages >= QUOTA_ATTEMPTS:
                    raise DriveQuotaExceeded(f"{message} Gave up after seeing the quota page {quota_pages} times.")
                raise Transient(message)
            if page.action is None:
                raise PermanentFetchError(
                    f"Google Drive file {file_id}: Drive answered a page without the file or a download form: "
                    "the file does not exist or is not shared as 'Anyone with the link'"
                )

        def attempt() -> Resolved:
            found = self._file_or_page(file_id, self.uc_url(file_id))
            if isinstance(found, Resolved):
                return found
            check(found)
            confirmed = self._file_or_page(file_id, found.confirmed_url(self.mirrors))
            if isinstance(confirmed, Resolved):
                return confirmed
            check(confirmed)
            raise PermanentFetchError(f"Google Drive file {file_id}: Drive still answers the virus-scan warning page after confirming; Drive's protocol may have changed")

        return with_retries(f"Google Drive file {file_id}", self.policy, attempt)

    # folders -------------------------------------------------------------------------------

    def folder_url(self, folder_id: str) -> str:
        # hl=en: English dates, which listing_date reads.
        return self.mirrors.rewrite(f"{DRIVE}/embeddedfolderview?{urlencode({'id': folder_id, 'hl': 'en'})}")

    def list_one(self, folder_id: str) -> list[Entry]:
        """The entries of one folder, sub-folders included as entries."""
        url = self.folder_url(folder_id)

        def attempt() -> list[Entry]:
            final, response = self._send("GET", url)
            with response:
                if response.status_code in (404, 410):
                    raise PermanentFetchError(f"Google Drive folder {folder_id}: not found ({final}: HTTP {response.status_code}); check `gdrive.folder_id` in the catalog")
                raise_for_status(response, final)
                if response.status_code != 200:
                    raise PermanentFetchError(f"Google Drive folder {folder_id}: {final} answered HTTP {response.status_code}")
                page = _FolderPage.parse(self._read_page(final, response))
            if not page.listing:
                raise PermanentFetchError(f"Google Drive folder {folder_id}: the answer is not a folder listing: the folder is not shared as 'Anyone with the link', or Drive's page changed")
            return page.entries(datetime.now(timezone.utc).date())

        return with_retries(f"Google Drive folder {folder_id}", self.policy, attempt)

    def list_folder(self, folder_id: str) -> list[Entry]:
        """Every file under the folder, sub-folders recursed; ``path`` is relative to it."""
        files: list[Entry] = []
        seen: set[str] = set()

        def walk(fid: str, prefix: str, depth: int) -> None:
            if fid in seen:  # a folder can be linked into two places
                return
            if depth > MAX_FOLDER_DEPTH:
                raise PermanentFetchError(f"Google Drive folder {folder_id}: sub-folders nested deeper than {MAX_FOLDER_DEPTH}")
            seen.add(fid)
            for entry in self.list_one(fid):
                path = f"{prefix}{entry.name}"
                if entry.folder:
                    walk(entry.id, f"{path}/", depth + 1)
                else:
                    files.append(replace(entry, path=path))

        walk(folder_id, "", 0)
        by_path: dict[str, list[str]] = {}
        for entry in files:
            by_path.setdefault(entry.path, []).append(entry.id)
        clashes = {p: ids for p, ids in by_path.items() if len(ids) > 1}
        if clashes:
            raise PermanentFetchError(f"Google Drive folder {folder_id}: several files share a name ({clashes}); name the one you want by `drive_id` in the catalog")
        return files


# -------------------------------------------------------------------------------- discovery


@dataclass(frozen=True)
class ArchiveRule:
    """An archive whose lower-cased name contains one of ``keywords`` is extracted ``into``."""

    keywords: tuple[str, ...]
    into: str
    strip_components: int


# Per source id: how a discovered zip maps onto the data tree. UNVERIFIED: the ShareGPT4V
# authors document neither the archive names nor their inner layout. Third-party download
# scripts [M] agree that each WebData archive holds `data/<folder>/images/<file>` (hence 3
# leading parts stripped) and name them share_textvqa.zip, web-celebrity.zip, wikiart.zip and
# web-landmark.zip (one script spells it "web-landmakr.zip"). A zip matching no rule is kept as
# a file under `<source id>/`, not extracted into a guessed folder.
ARCHIVE_RULES: dict[str, tuple[ArchiveRule, ...]] = {
    "webdata": (
        ArchiveRule(("textvqa",), "share_textvqa/images", 3),
        ArchiveRule(("celebrity",), "web-celebrity/images", 3),
        ArchiveRule(("landmark", "landmakr"), "web-landmark/images", 3),
        ArchiveRule(("wikiart",), "wikiart/images", 3),
    ),
}


def artifact_for(source: Source, entry: Entry) -> Artifact:
    """The artifact a listed file becomes: a zip a rule maps is extracted, anything else kept."""
    note = "found in the Drive folder listing"
    if entry.name.lower().endswith(".zip"):
        for rule in ARCHIVE_RULES.get(source.id, ()):
            if any(k in entry.name.lower() for k in rule.keywords):
                extract = Extract(into=rule.into, strip_components=rule.strip_components)
                return Artifact(name=entry.path, drive_id=entry.id, path=entry.path, extract=extract, note=f"{note}; mapping onto {rule.into} unverified")
        log.info("%s: %s matches no archive rule: kept as a file under %s/", source.id, entry.path, source.id)
    return Artifact(name=entry.path, drive_id=entry.id, path=entry.path, target=f"{source.id}/{entry.path}", note=note)


def _folder_id(source: Source) -> str | None:
    return source.gdrive.folder_id if source.gdrive else None


def folder_files(client: DriveClient, folder_id: str, ctx: Context) -> list[Entry]:
    """The folder's files, listed once per step: discovery and resolving share the listing."""
    key = ("gdrive", client.folder_url(folder_id))
    if key not in ctx.memo:
        ctx.memo[key] = client.list_folder(folder_id)
    return ctx.memo[key]


def gdrive_discover(source: Source, ctx: Context) -> list[Artifact]:
    """The files of ``source.gdrive.folder_id`` that the catalog does not list."""
    folder_id = _folder_id(source)
    if not folder_id:
        return []
    known_ids = {a.drive_id for a in source.artifacts if a.drive_id}
    known = {a.name for a in source.artifacts} | {a.path for a in source.artifacts if a.path}
    with DriveClient(ctx.mirrors, ctx.policy) as client:
        entries = folder_files(client, folder_id, ctx)
    return [artifact_for(source, e) for e in entries if e.id not in known_ids and e.path not in known]


def gdrive_remotes(source: Source, artifacts: list[Artifact], ctx: Context) -> list[Remote]:
    """Resolve each artifact (by ``drive_id``, or by ``path`` in the source's folder) and HEAD it."""
    folder_id = _folder_id(source)
    listing: dict[str, Entry] | None = None
    remotes = []
    with DriveClient(ctx.mirrors, ctx.policy) as client:

        def listed() -> dict[str, Entry]:
            nonlocal listing
            if listing is None:
                listing = {e.path: e for e in folder_files(client, folder_id, ctx)} if folder_id else {}
            return listing

        for artifact in artifacts:
            file_id = artifact.drive_id
            if file_id is None:
                if not artifact.path or not folder_id:
                    raise PermanentFetchError(f"{source.id}/{artifact.name}: a Drive artifact needs `drive_id`, or `path` inside `gdrive.folder_id`")
                entry = listed().get(artifact.path)
                if entry is None:
                    raise PermanentFetchError(f"{source.id}/{artifact.name}: no file {artifact.path!r} in Drive folder {folder_id}; it holds {sorted(listed())}")
                file_id = entry.id
            resolved = client.resolve(file_id)
            if artifact.size is not None and resolved.size is not None and resolved.size != artifact.size:
                raise PermanentFetchError(f"Google Drive file {file_id} ({artifact.name}): {resolved.size} bytes upstream, the catalog expects {artifact.size}: upstream changed or the mirror is wrong; update the catalog's size")
            fingerprint: dict[str, str | int | None] = {"drive_id": file_id, "size": resolved.size, "etag": resolved.etag, "last_modified": resolved.last_modified}
            if not resolved.etag and not resolved.last_modified and folder_id:
                # Last resort (see the module doc): the listing's day-resolution date.
                by_id = {e.id: e for e in listed().values()}
                fingerprint["modified"] = by_id[file_id].modified if file_id in by_id else None
            expected = Expected(size=artifact.size if artifact.size is not None else resolved.size, sha256=artifact.sha256, md5=artifact.md5)
            remotes.append(Remote(artifact, resolved.url, expected, fingerprint, headers={}))
    return remotes


GDRIVE = Transport(gdrive_remotes, gdrive_discover)
