"""A fake Google Drive (public files and folders) built on FakeHttpServer routes.

It serves the pages an anonymous browser sees, as third-party clients describe them
(docs/facts.md, "Google Drive"; the HTML imitates the real markup, trimmed):

    GET|HEAD /uc?export=download&id=ID        small file: the bytes (Content-Disposition)
                                              large file: the "virus scan warning" page whose
                                              form#download-form leads to /download
                                              (uc_redirects=True: 303 to /download first, as Drive
                                              does today)
    GET|HEAD /download?id=ID&export=download&confirm=t&uuid=U
                                              the bytes: a Resource, so Range, If-Range and
                                              script_file() faults apply
    GET /embeddedfolderview?id=FOLDER         div.flip-entries > div.flip-entry per file/sub-folder
    quota_exceeded(id, times)                 the next `times` GETs of the file answer the page
                                              with p.uc-error-subcaption ("Too many users ...")
    unknown ids                               404 with Drive's "does not exist" page
    add_file(..., shared=False)               a sign-in page (200, no download form)

By default links and form actions point at this server. With ``real_urls=True`` they name
the real hosts (https://drive.usercontent.google.com/...), as Drive's pages do, so that a
client must apply ``mirrors()`` to stay on loopback.

    with FakeDrive() as drive:
        folder = drive.add_folder("WebData")
        fid = drive.add_file("wikiart.zip", data, folder=folder)
        Mirrors(drive.mirrors()).rewrite(f"https://drive.google.com/uc?export=download&id={fid}")
"""

from __future__ import annotations

import base64
import dataclasses
import email.utils
import hashlib
import html
import itertools
import threading
import uuid as uuidlib
from dataclasses import dataclass, field
from urllib.parse import quote, urlencode

from .http_server import Fault, FakeHttpServer, Request, Resource, Response

__all__ = ["FakeDrive", "REAL_DRIVE", "REAL_USERCONTENT"]

REAL_DRIVE = "https://drive.google.com"
REAL_USERCONTENT = "https://drive.usercontent.google.com"

QUOTA_TEXT = (
    "Too many users have viewed or downloaded this file recently. Please try accessing the file again later. "
    "If the file you are trying to access is particularly large or is shared with many people, it may take up to "
    "24 hours to be able to view or download the file. If you still can't access a file after 24 hours, contact "
    "your domain administrator."
)

_HEAD = '<head><meta http-equiv="content-type" content="text/html; charset=utf-8"/><title>{title}</title><link rel="icon" href="//ssl.gstatic.com/docs/doclist/images/drive_2022q3_32dp.png"/></head>'

_WARNING_PAGE = (
    "<!DOCTYPE html><html>" + _HEAD.format(title="Google Drive - Virus scan warning") + '<body><div class="uc-main">'
    '<div id="uc-text"><p class="uc-warning-caption">Google Drive can&#39;t scan this file for viruses.</p>'
    '<p class="uc-warning-subcaption"><span class="uc-name-size"><a href="/open?id={id}">{name}</a> ({human})</span> '
    "is too large for Google to scan for viruses. Would you still like to download this file?</p>"
    '<form id="download-form" action="{action}" method="get">'
    '<input type="submit" id="uc-download-link" class="goog-inline-block jfk-button jfk-button-action" value="Download anyway"/>'
    '<input type="hidden" name="id" value="{id}"><input type="hidden" name="export" value="download">'
    '<input type="hidden" name="confirm" value="t"><input type="hidden" name="uuid" value="{uuid}"></form></div></div>'
    '<div class="uc-footer"><hr class="uc-footer-divider"></div></body></html>'
)

_QUOTA_PAGE = (
    "<!DOCTYPE html><html>" + _HEAD.format(title="Google Drive - Quota exceeded") + '<body><div class="uc-main">'
    '<div id="uc-text"><p class="uc-error-caption">Sorry, you can&#39;t view or download this file at this time.</p>'
    '<p class="uc-error-subcaption">' + html.escape(QUOTA_TEXT) + "</p></div></div>"
    '<div class="uc-footer"><hr class="uc-footer-divider"></div></body></html>'
)

_NOT_FOUND_PAGE = (
    "<!DOCTYPE html><html>" + _HEAD.format(title="Google Drive - Page Not Found") + '<body><div class="uc-main">'
    '<div id="uc-text"><p class="uc-error-caption">Sorry, the file you have requested does not exist.</p>'
    "<p>Make sure that you have the correct URL and the file exists.</p></div></div></body></html>"
)

_SIGN_IN_PAGE = "<!DOCTYPE html><html>" + _HEAD.format(title="Google Drive: Sign-in") + "<body><form id=\"gaia_loginform\"></form></body></html>"

_FOLDER_PAGE = (
    "<!DOCTYPE html><html>" + _HEAD.format(title="{title}") + '<body><div class="flip-view-outer-container">'
    '<div id="folder-view" class="flip-view list-view"><div class="flip-entries">{entries}</div></div></div></body></html>'
)

_ENTRY = (
    '<div class="flip-entry" id="entry-{id}" tabindex="0" role="link"><div class="flip-entry-info">'
    '<a href="{href}" target="_blank"><div class="flip-entry-visual"><div class="flip-entry-visual-card">'
    '<div class="flip-entry-thumb">{thumb}</div></div></div>'
    '<div class="flip-entry-list-icon"><img src="https://drive-thirdparty.googleusercontent.com/16/type/{mime}" alt="{kind}"></div>'
    '<div class="flip-entry-title">{name}</div></a></div>'
    '<div class="flip-entry-last-modified"><div>{modified}</div></div></div>'
)


@dataclass
class DriveFile:
    id: str
    name: str
    folder: str | None
    data: bytes
    last_modified: str
    etag: str | None
    shared: bool = True

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


@dataclass
class DriveFolder:
    id: str
    name: str
    parent: str | None
    children: list[str] = field(default_factory=list)  # ids of files and folders, in order added


class FakeDrive:
    def __init__(
        self,
        server: FakeHttpServer | None = None,
        *,
        warn_above: int = 16 * 1024,
        real_urls: bool = False,
        uc_redirects: bool = False,
        require_uuid: bool = False,
        etags: bool = False,
        validators: bool = True,
        quota_status: int = 200,
    ) -> None:
        """``warn_above``: files larger than this get the virus-scan warning page.
        ``uc_redirects``: /uc answers 303 to /download (Drive today) instead of answering itself.
        ``require_uuid``: /download of a large file needs a uuid this fake handed out.
        ``etags``: send an ETag with the bytes as well as Last-Modified.
        ``validators=False``: send neither ETag nor Last-Modified with the bytes.
        ``quota_status``: the HTTP status of the quota page."""
        self.server = server or FakeHttpServer()
        self._owns_server = server is None
        self.warn_above, self.real_urls, self.uc_redirects = warn_above, real_urls, uc_redirects
        self.require_uuid, self.etags, self.validators, self.quota_status = require_uuid, etags, validators, quota_status
        self._lock = threading.Lock()
        self._files: dict[str, DriveFile] = {}
        self._folders: dict[str, DriveFolder] = {}
        self._quota: dict[str, int] = {}
        self._uuids: set[str] = set()
        self._counter = itertools.count(1)
        self.served: list[tuple[str, Request]] = []  # (file id, request) of every response carrying bytes
        self.server.route("GET", r"/uc", self._uc)
        self.server.route("GET", r"/download", self._download)
        self.server.route("GET", r"/embeddedfolderview", self._folder_view)

    # lifecycle -------------------------------------------------------------------------------

    def start(self) -> FakeDrive:
        if self._owns_server:
            self.server.start()
        return self

    def stop(self) -> None:
        if self._owns_server:
            self.server.stop()

    def __enter__(self) -> FakeDrive:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return self.server.url

    def mirrors(self) -> dict[str, str]:
        """A mirror map sending both real Drive hosts here."""
        return {REAL_DRIVE: self.url, REAL_USERCONTENT: self.url}

    @property
    def _drive_base(self) -> str:
        return REAL_DRIVE if self.real_urls else self.url

    @property
    def _usercontent_base(self) -> str:
        return REAL_USERCONTENT if self.real_urls else self.url

    # content ---------------------------------------------------------------------------------

    def _new_id(self, name: str) -> str:
        """33 characters starting with 1, like Drive's ids; stable per (order, name)."""
        digest = hashlib.sha256(f"{next(self._counter)}:{name}".encode()).digest()
        return "1" + base64.urlsafe_b64encode(digest).decode()[:32]

    def add_folder(self, name: str, parent: str | None = None, *, id: str | None = None) -> str:  # noqa: A002
        """A folder (inside `parent`, a folder id); `id` to use a known id (a catalog's)."""
        with self._lock:
            folder_id = id or self._new_id(name)
            self._folders[folder_id] = DriveFolder(folder_id, name, parent)
            if parent is not None:
                self._folders[parent].children.append(folder_id)
        return folder_id

    def add_file(self, name: str, data: bytes, folder: str | None = None, *, id: str | None = None, shared: bool = True) -> str:  # noqa: A002
        """A file (inside `folder`, a folder id); returns its id. `shared=False`: not shared
        publicly, so Drive answers a sign-in page instead."""
        last_modified = self.server.next_http_date()
        with self._lock:
            file_id = id or self._new_id(name)
            self._files[file_id] = DriveFile(file_id, name, folder, bytes(data), last_modified, self._etag(data), shared)
            if folder is not None:
                self._folders[folder].children.append(file_id)
        return file_id

    def replace_file(self, file_id: str, data: bytes) -> None:
        """New bytes under the same id (Drive's "manage versions"): new Last-Modified and ETag."""
        last_modified = self.server.next_http_date()
        with self._lock:
            f = self._files[file_id]
            f.data, f.last_modified, f.etag = bytes(data), last_modified, self._etag(data)

    def remove(self, file_id: str) -> None:
        with self._lock:
            f = self._files.pop(file_id)
            if f.folder is not None:
                self._folders[f.folder].children.remove(file_id)

    def file(self, file_id: str) -> DriveFile:
        with self._lock:
            return self._files[file_id]

    def _etag(self, data: bytes) -> str | None:
        return f'"{hashlib.md5(data).hexdigest()}"' if self.etags else None

    # scripting -------------------------------------------------------------------------------

    def script_file(self, file_id: str, *faults: Fault) -> None:
        """Queue faults for the bytes of this file, on whichever route serves them."""
        self.server.script(self._fault_key(file_id), *faults)

    def quota_exceeded(self, file_id: str, times: int = 1) -> None:
        """The next `times` GETs naming this file answer the quota page (HEADs see it too)."""
        with self._lock:
            self._quota[file_id] = self._quota.get(file_id, 0) + times

    def byte_requests(self, file_id: str | None = None) -> list[Request]:
        """GET requests that were answered with the file's bytes (HEADs and pages excluded)."""
        with self._lock:
            return [r for fid, r in self.served if file_id is None or fid == file_id]

    @staticmethod
    def _fault_key(file_id: str) -> str:
        return f"gdrive:{file_id}"

    # routes ----------------------------------------------------------------------------------

    def _page(self, status: int, text: str) -> Response:
        return Response(status, {"Content-Type": "text/html; charset=utf-8"}, text.encode())

    def _lookup(self, req: Request) -> DriveFile | Response:
        file_id = req.query.get("id", [""])[-1]
        with self._lock:
            f = self._files.get(file_id)
            if f is None:
                return self._page(404, _NOT_FOUND_PAGE)
            if not f.shared:  # Drive redirects to accounts.google.com; its page has no form
                return self._page(200, _SIGN_IN_PAGE)
            if self._quota.get(file_id, 0) > 0:
                if req.method == "GET":
                    self._quota[file_id] -= 1
                return self._page(self.quota_status, _QUOTA_PAGE)
            return dataclasses.replace(f)  # a snapshot

    def _bytes(self, req: Request, f: DriveFile) -> Resource:
        if req.method == "GET":
            with self._lock:
                self.served.append((f.id, req))
        disposition = f"attachment; filename=\"{f.name}\"; filename*=UTF-8''{quote(f.name)}"
        return Resource(
            f.data,
            etag=f.etag if self.validators else None,
            last_modified=f.last_modified if self.validators else None,
            headers={"Content-Disposition": disposition, "Cache-Control": "private, max-age=0"},
            fault_key=self._fault_key(f.id),
        )

    def _warning(self, f: DriveFile) -> Response:
        token = str(uuidlib.uuid4())
        with self._lock:
            self._uuids.add(token)
        page = _WARNING_PAGE.format(id=f.id, name=html.escape(f.name), human=_human(len(f.data)), uuid=token, action=f"{self._usercontent_base}/download")
        return self._page(200, page)

    def _uc(self, req: Request, m) -> Resource | Response:
        found = self._lookup(req)
        if isinstance(found, Response):
            return found
        if self.uc_redirects:
            return Response(303, {"Location": f"{self._usercontent_base}/download?{urlencode({'id': found.id, 'export': 'download'})}"})
        if len(found.data) > self.warn_above:
            return self._warning(found)
        return self._bytes(req, found)

    def _download(self, req: Request, m) -> Resource | Response:
        found = self._lookup(req)
        if isinstance(found, Response):
            return found
        if len(found.data) > self.warn_above:
            confirmed = req.query.get("confirm", [""])[-1] != ""
            if self.require_uuid:
                with self._lock:
                    confirmed = confirmed and req.query.get("uuid", [""])[-1] in self._uuids
            if not confirmed:
                return self._warning(found)
        return self._bytes(req, found)

    def _folder_view(self, req: Request, m) -> Response:
        folder_id = req.query.get("id", [""])[-1]
        with self._lock:
            folder = self._folders.get(folder_id)
            if folder is None:
                return self._page(404, _NOT_FOUND_PAGE)
            sub = [self._folders[c] for c in folder.children if c in self._folders]
            files = [self._files[c] for c in folder.children if c in self._files]
        entries = [
            _ENTRY.format(id=d.id, href=f"{REAL_DRIVE}/drive/folders/{d.id}", thumb="", mime="application/vnd.google-apps.folder", kind="Folder", name=html.escape(d.name), modified="")
            for d in sorted(sub, key=lambda d: d.name)
        ]
        entries += [
            _ENTRY.format(
                id=f.id,
                href=f"{REAL_DRIVE}/file/d/{f.id}/view?usp=drive_web",
                thumb=f'<img src="{REAL_DRIVE}/thumbnail?id={f.id}&amp;sz=s180" alt="">',
                mime="application/zip" if f.name.endswith(".zip") else "application/octet-stream",
                kind="File",
                name=html.escape(f.name),
                modified=_listing_date(f.last_modified),
            )
            for f in sorted(files, key=lambda f: f.name)
        ]
        return self._page(200, _FOLDER_PAGE.format(title=html.escape(folder.name), entries="".join(entries)))


def _listing_date(http_date: str) -> str:
    """As the English listing shows an older date: 'Jan 1, 2024'."""
    when = email.utils.parsedate_to_datetime(http_date)
    return f"{when:%b} {when.day}, {when.year}"


def _human(size: int) -> str:
    for unit in ("B", "K", "M", "G"):
        if size < 1024 or unit == "G":
            return f"{size}{unit}" if unit == "B" else f"{size:.0f}{unit}"
        size /= 1024
    return f"{size}"
