"""A fake Hugging Face Hub (datasets and models) built on FakeHttpServer routes.

It speaks the subset of the Hub protocol that huggingface_hub 2.x uses to read repos:

    GET  /api/{datasets|models}/{repo}[/revision/{rev}]      repo info (DatasetInfo / ModelInfo)
    GET  /api/{datasets|models}/{repo}/tree/{rev}[/{path}]   listing, ?recursive=&expand=&cursor=
    POST /api/{datasets|models}/{repo}/paths-info/{rev}      form (or JSON) `paths`, `expand`
    HEAD|GET /[datasets/]{repo}/resolve/{rev}/{path}        file bytes + X-Repo-Commit, ETag, ...

File bytes go through FakeHttpServer's Resource path, so Range, If-Range and scripted faults
behave exactly as for plain HTTP files. No xet headers are ever sent, so clients use plain HTTP.

    with FakeHfHub() as hub:
        sha = hub.add_repo("org/data", {"a.json": b"[]", "images.zip": big})
        HfApi(endpoint=hub.endpoint).dataset_info("org/data").sha == sha
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import posixpath
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from urllib.parse import parse_qs, quote, unquote, urlencode

from .http_server import Fault, FakeHttpServer, Request, Resource, Response

__all__ = ["FakeHfHub", "HubFile", "git_blob_sha1", "lfs_pointer"]

_API_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
_URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}  # as in hf_hub_url()
_REPO = r"(?P<repo>[^/]+/[^/]+)"  # namespaced ids only ("org/name")
_TYPES = r"(?P<type>models|datasets|spaces)"
_START = datetime(2024, 1, 1, tzinfo=timezone.utc).timestamp()


def git_blob_sha1(data: bytes) -> str:
    """What `git hash-object` prints for these bytes."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    """The Git LFS pointer file that git stores in place of a large file."""
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


@dataclass(frozen=True)
class HubFile:
    """One file of one commit, with the hashes the Hub reports for it."""

    path: str
    data: bytes
    lfs: bool

    @property
    def size(self) -> int:
        return len(self.data)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def pointer(self) -> bytes | None:
        return lfs_pointer(self.sha256, self.size) if self.lfs else None

    @property
    def blob_id(self) -> str:
        """The git blob sha1 of what git stores: the content, or for LFS files the pointer."""
        return git_blob_sha1(self.pointer if self.pointer is not None else self.data)

    @property
    def etag(self) -> str:
        """Unquoted ETag of /resolve: sha256 for LFS files, the git blob sha1 otherwise."""
        return self.sha256 if self.lfs else self.blob_id


@dataclass
class _Commit:
    sha: str
    parent: str | None
    files: dict[str, HubFile]
    date: str  # the Hub's format: 2024-01-01T00:00:00.000Z
    title: str


@dataclass
class _Repo:
    repo_type: str
    repo_id: str
    require_token: str | None
    private: bool
    created_at: str
    commits: dict[str, _Commit] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)  # branch or tag -> commit sha


class FakeHfHub:
    """The Hub's read API on 127.0.0.1. Use as a context manager, or pass a running `server`
    to share it with other fakes (then the caller starts and stops it)."""

    def __init__(self, server: FakeHttpServer | None = None, *, lfs_cdn: bool = False, page_size: int = 1000) -> None:
        """`lfs_cdn=True` answers /resolve of LFS files like the real Hub: a 302 to another
        origin (`self.cdn`, a second FakeHttpServer) whose response carries the file metadata.
        As the Hub's, the redirect is a signed URL (CloudFront's ``Expires``, ``Policy``,
        ``Signature``, ``Key-Pair-Id`` query, valid for an hour) and the CDN refuses a request
        whose signature is not one the Hub issued for that path (403); :meth:`expire_cdn_links`
        lets the hour pass for every link handed out so far.
        `page_size` caps tree pages (the Hub's is 1000), to exercise pagination."""
        self._owns_server = server is None
        self.server = server if server is not None else FakeHttpServer()
        self.cdn = FakeHttpServer() if lfs_cdn else None
        self.page_size = page_size
        self._lock = threading.Lock()
        self._repos: dict[tuple[str, str], _Repo] = {}
        self._counter = itertools.count(1)
        self._cdn_epoch = 0  # signatures of earlier epochs have expired

        api = rf"/api/{_TYPES}/{_REPO}"
        self.server.route("GET", rf"{api}(?:/revision/(?P<rev>[^/]+))?", self._api_info)
        self.server.route("GET", rf"{api}/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?", self._api_tree)
        self.server.route("POST", rf"{api}/paths-info/(?P<rev>[^/]+)", self._api_paths_info)
        self.server.route("GET", rf"/(?:(?P<prefix>datasets|spaces)/)?{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)", self._resolve)
        if self.cdn is not None:
            self.cdn.route("GET", r"/repos/.*", self._cdn_gate)  # then the file itself, added in add_repo

    # lifecycle -------------------------------------------------------------------------------

    def start(self) -> FakeHfHub:
        if self._owns_server:
            self.server.start()
        if self.cdn is not None:
            self.cdn.start()
            self._cdn_url = self.cdn.url  # redirects keep pointing there, even once the CDN is stopped
        return self

    def stop(self) -> None:
        if self.cdn is not None:
            self.cdn.stop()
        if self._owns_server:
            self.server.stop()

    def __enter__(self) -> FakeHfHub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def endpoint(self) -> str:
        """For HfApi(endpoint=...), hf_hub_download(endpoint=...) or HF_ENDPOINT."""
        return self.server.url

    # content ---------------------------------------------------------------------------------

    def add_repo(
        self,
        repo_id: str,
        files: Mapping[str, bytes],
        repo_type: str = "dataset",
        branch: str = "main",
        lfs_threshold: int = 1024,
        *,
        require_token: str | None = None,
        private: bool = False,
        message: str | None = None,
    ) -> str:
        """Commit `files` (the whole tree of the new commit) on `branch`; return its 40-hex sha.

        Calling again makes a new commit on top; older commits stay resolvable by sha.
        Files larger than `lfs_threshold` bytes are LFS files. With `require_token`, requests
        must carry `Authorization: Bearer <token>`: a gated repo (the default) lists its files to
        anyone but answers /resolve with 401 GatedRepo, as the Hub does; a `private=True` repo
        answers every request with 401 RepoNotFound. Both settings stick to the repo."""
        if "/" not in repo_id:
            raise ValueError("use a namespaced repo id, e.g. 'org/name'")
        if repo_type not in _URL_PREFIX:
            raise ValueError(f"unsupported repo_type {repo_type!r}")
        n = next(self._counter)
        date = datetime.fromtimestamp(_START + 60 * n, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")
        with self._lock:
            repo = self._repos.get((repo_type, repo_id))
            if repo is None:
                repo = _Repo(repo_type, repo_id, require_token, private, created_at=date)
                self._repos[(repo_type, repo_id)] = repo
            elif require_token is not None:
                repo.require_token, repo.private = require_token, private
            parent = repo.refs.get(branch)
            tree = {p: HubFile(p, bytes(d), lfs=len(d) > lfs_threshold) for p, d in sorted(files.items())}
            seed = f"{repo_type}/{repo_id}\n{parent}\n{n}\n" + "".join(f"{f.path} {f.blob_id}\n" for f in tree.values())
            sha = hashlib.sha1(seed.encode()).hexdigest()
            repo.commits[sha] = _Commit(sha, parent, tree, date, message or f"Commit {n}")
            repo.refs[branch] = sha
        if self.cdn is not None:
            for f in tree.values():
                if f.lfs:
                    self.cdn.add(self._cdn_path(f), f.data, etag=f'"{f.sha256}"', last_modified=None)
        return sha

    def add_tag(self, repo_id: str, tag: str, revision: str = "main", repo_type: str = "dataset") -> str:
        """Point `tag` at the commit `revision` resolves to; return that sha."""
        with self._lock:
            repo = self._repos[(repo_type, repo_id)]
            sha = self._commit_of(repo, revision).sha  # type: ignore[union-attr]
            repo.refs[tag] = sha
        return sha

    def head(self, repo_id: str, revision: str = "main", repo_type: str = "dataset") -> str:
        """The commit sha a branch, tag or sha resolves to."""
        return self._commit_for(repo_id, revision, repo_type).sha

    def file(self, repo_id: str, path: str, revision: str = "main", repo_type: str = "dataset") -> HubFile:
        """A file as stored at `revision` (for expected sha256, etag, blob_id in assertions)."""
        return self._commit_for(repo_id, revision, repo_type).files[path]

    def _commit_for(self, repo_id: str, revision: str, repo_type: str) -> _Commit:
        with self._lock:
            commit = self._commit_of(self._repos[(repo_type, repo_id)], revision)
        if commit is None:
            raise KeyError(revision)
        return commit

    def resolve_url(self, repo_id: str, path: str, revision: str = "main", repo_type: str = "dataset") -> str:
        return f"{self.endpoint}/{_URL_PREFIX[repo_type]}{repo_id}/resolve/{revision}/{path}"

    def script_file(self, repo_id: str, path: str, *faults: Fault, repo_type: str = "dataset") -> None:
        """Queue faults for the bytes of this file, whatever revision is asked for.

        Faults are consumed by GET unless built with method=...; hf_hub_download's metadata
        HEAD therefore passes and the download GET takes the fault. With lfs_cdn, LFS files
        get their faults on the CDN response, which is where their bytes come from."""
        key = self._fault_key(repo_type, repo_id, path)
        if self.cdn is not None:
            with self._lock:
                repo = self._repos[(repo_type, repo_id)]
                lfs = [c.files[path] for c in repo.commits.values() if path in c.files and c.files[path].lfs]
            if lfs:
                self.cdn.script(self._cdn_path(lfs[-1]), *faults)
                return
        self.server.script(key, *faults)

    @staticmethod
    def _fault_key(repo_type: str, repo_id: str, path: str) -> str:
        return f"hf:{repo_type}:{repo_id}:{path}"

    @staticmethod
    def _cdn_path(f: HubFile) -> str:
        return f"/repos/{f.sha256[:2]}/{f.sha256[2:4]}/{f.sha256}"

    CDN_KEY_PAIR = "K3RPWS32NSSJCE"  # the Key-Pair-Id of the Hub's LFS CDN links

    def _cdn_signature(self, path: str, expires: str, epoch: int | None = None) -> str:
        return hashlib.sha256(f"cdn-lfs:{path}:{expires}:{self._cdn_epoch if epoch is None else epoch}".encode()).hexdigest()

    def expire_cdn_links(self) -> None:
        """Every CDN link handed out so far expires (as they do after an hour)."""
        with self._lock:
            self._cdn_epoch += 1

    def _signed_cdn_url(self, f: HubFile) -> str:
        path, expires = self._cdn_path(f), str(int(time.time()) + 3600)
        policy = base64.urlsafe_b64encode(json.dumps({"Statement": [{"Condition": {"DateLessThan": {"AWS:EpochTime": int(expires)}}}]}).encode()).decode().rstrip("=")
        name = quote(f'attachment; filename*=UTF-8\'\'{posixpath.basename(f.path)}; filename="{posixpath.basename(f.path)}";', safe="")
        query = f"response-content-disposition={name}&Expires={expires}&Policy={policy}&Signature={self._cdn_signature(path, expires)}&Key-Pair-Id={self.CDN_KEY_PAIR}"
        return f"{self._cdn_url}{path}?{query}"

    def _cdn_gate(self, req: Request, m) -> Response | None:
        """Let through (to the file) only a request signed by the Hub, before it expires."""
        query = req.query
        expires = (query.get("Expires") or [""])[0]
        signature = (query.get("Signature") or [""])[0]
        earlier = {self._cdn_signature(req.path, expires, epoch) for epoch in range(self._cdn_epoch)}
        if signature in earlier or (expires.isdigit() and int(expires) < time.time()):
            return Response(403, {"Content-Type": "application/xml"}, b"<Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>")
        if signature != self._cdn_signature(req.path, expires) or query.get("Key-Pair-Id") != [self.CDN_KEY_PAIR]:
            return Response(403, {"Content-Type": "application/xml"}, b"<Error><Code>AccessDenied</Code><Message>Access denied</Message></Error>")
        return None

    # lookups ---------------------------------------------------------------------------------

    @staticmethod
    def _commit_of(repo: _Repo, revision: str) -> _Commit | None:
        sha = repo.refs.get(revision, revision)
        return repo.commits.get(sha)

    def _find(self, req: Request, repo_type: str, repo_id: str, raw_rev: str | None, *, files: bool) -> tuple[_Repo, _Commit] | Response:
        """The repo and commit a request names, or the error response the Hub would give."""
        with self._lock:
            repo = self._repos.get((repo_type, repo_id))
            if repo is None:
                return _error(404, "RepoNotFound", "Repository not found")
            authorized = repo.require_token is None or req.headers.get("Authorization") == f"Bearer {repo.require_token}"
            if not authorized and repo.private:
                # The Hub does not confirm that a private repo exists.
                return _error(401, "RepoNotFound", "Repository not found")
            if not authorized and files:
                return _error(401, "GatedRepo", f"Access to {repo_type} {repo_id} is restricted. You must have access to it and be authenticated to access it. Please log in.")
            revision = unquote(raw_rev) if raw_rev is not None else "main"
            commit = self._commit_of(repo, revision)
            if commit is None:
                return _error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
            return repo, commit

    # routes ----------------------------------------------------------------------------------

    def _api_info(self, req: Request, m) -> Response:
        found = self._find(req, _API_TYPES[m["type"]], m["repo"], m["rev"], files=False)
        if isinstance(found, Response):
            return found
        repo, commit = found
        blobs = req.query.get("blobs", [""])[-1].lower() in ("1", "true")
        siblings = []
        for f in commit.files.values():
            sibling: dict = {"rfilename": f.path}
            if blobs:
                sibling.update(size=f.size, blobId=f.blob_id)
                if f.lfs:
                    sibling["lfs"] = {"sha256": f.sha256, "size": f.size, "pointerSize": len(f.pointer or b"")}
            siblings.append(sibling)
        info = {
            "_id": hashlib.sha1(f"{repo.repo_type}/{repo.repo_id}".encode()).hexdigest()[:24],
            "id": repo.repo_id,
            "author": repo.repo_id.split("/")[0],
            "sha": commit.sha,
            "lastModified": commit.date,
            "createdAt": repo.created_at,
            "private": repo.private,
            "gated": "auto" if repo.require_token and not repo.private else False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "siblings": siblings,
            "usedStorage": sum(f.size for f in commit.files.values()),
        }
        if repo.repo_type == "model":
            info["modelId"] = repo.repo_id
        expand = req.query.get("expand") or req.query.get("expand[]")
        if expand:  # only the asked-for properties, as the Hub does
            info = {k: v for k, v in info.items() if k in ("_id", "id") or k in expand}
        return Response.json(info)

    def _api_tree(self, req: Request, m) -> Response:
        found = self._find(req, _API_TYPES[m["type"]], m["repo"], m["rev"], files=False)
        if isinstance(found, Response):
            return found
        repo, commit = found
        base = unquote(m["path"] or "").strip("/")
        dirs = _directories(commit)
        if base and base not in dirs:
            return _error(404, "EntryNotFound", f"{base} does not exist on \"{m['rev']}\"", {"X-Repo-Commit": commit.sha})
        query = req.query
        recursive = query.get("recursive", [""])[-1].lower() in ("1", "true")
        expand = query.get("expand", [""])[-1].lower() in ("1", "true")
        prefix = f"{base}/" if base else ""

        def wanted(path: str) -> bool:
            return path.startswith(prefix) and (recursive or "/" not in path[len(prefix) :])

        paths = sorted([d for d in dirs if wanted(d)] + [p for p in commit.files if wanted(p)])
        entries = [self._entry(repo, commit, p, dirs, expand) for p in paths]

        # Cursor pagination with a Link header, like the Hub (whose cursor is opaque).
        start = int(query.get("cursor", ["0"])[-1])
        page = entries[start : start + self.page_size]
        headers = {}
        if start + self.page_size < len(entries):
            next_query = {k: v[-1] for k, v in query.items()} | {"cursor": str(start + self.page_size)}
            headers["Link"] = f'<{self.endpoint}{req.raw_path}?{urlencode(next_query)}>; rel="next"'
        return Response.json(page, headers=headers)

    def _api_paths_info(self, req: Request, m) -> Response:
        found = self._find(req, _API_TYPES[m["type"]], m["repo"], m["rev"], files=False)
        if isinstance(found, Response):
            return found
        repo, commit = found
        # huggingface_hub posts a form; the Hub also takes JSON.
        if req.headers.get("Content-Type", "").startswith("application/json"):
            body = req.json()
            paths, expand = body.get("paths", []), bool(body.get("expand"))
        else:
            form = parse_qs(req.body.decode(), keep_blank_values=True)
            paths, expand = form.get("paths", []), form.get("expand", [""])[-1].lower() in ("1", "true")
        dirs = _directories(commit)
        entries = []
        for path in dict.fromkeys(p.strip("/") for p in paths):  # unknown paths are left out
            if path in commit.files or path in dirs:
                entries.append(self._entry(repo, commit, path, dirs, expand))
        return Response.json(entries)

    def _resolve(self, req: Request, m) -> Resource | Response:
        repo_type = {"datasets": "dataset", "spaces": "space", None: "model"}[m["prefix"]]
        found = self._find(req, repo_type, m["repo"], m["rev"], files=True)
        if isinstance(found, Response):
            return found
        repo, commit = found
        path = unquote(m["path"])
        f = commit.files.get(path)
        if f is None:
            # X-Repo-Commit lets huggingface_hub cache the absence for this commit.
            return _error(404, "EntryNotFound", f"{path} does not exist on \"{unquote(m['rev'])}\"", {"X-Repo-Commit": commit.sha})
        headers = {"X-Repo-Commit": commit.sha}
        if f.lfs:
            headers |= {"X-Linked-Etag": f'"{f.sha256}"', "X-Linked-Size": str(f.size)}
        if f.lfs and self.cdn is not None:
            # The Hub's answer for LFS files: a redirect to another origin that carries the metadata.
            location = self._signed_cdn_url(f)
            return Response(302, headers | {"ETag": f'"{f.etag}"', "Location": location}, fault_key=self._fault_key(repo_type, repo.repo_id, path))
        return Resource(f.data, etag=f'"{f.etag}"', headers=headers, fault_key=self._fault_key(repo_type, repo.repo_id, path))

    def _entry(self, repo: _Repo, commit: _Commit, path: str, dirs: set[str], expand: bool) -> dict:
        """A tree / paths-info entry as the Hub sends it."""
        if path in commit.files:
            f = commit.files[path]
            entry: dict = {"type": "file", "oid": f.blob_id, "size": f.size, "path": path}
            if f.lfs:
                entry["lfs"] = {"oid": f.sha256, "size": f.size, "pointerSize": len(f.pointer or b"")}
        else:
            entry = {"type": "directory", "oid": _tree_oid(commit, path), "size": 0, "path": path}
        if expand:
            last = self._last_change(repo, commit, path)
            entry["lastCommit"] = {"id": last.sha, "title": last.title, "date": last.date}
        return entry

    @staticmethod
    def _last_change(repo: _Repo, commit: _Commit, path: str) -> _Commit:
        """The oldest ancestor from which `path` has stayed the same up to `commit`."""

        def oid(c: _Commit) -> str | None:
            if path in c.files:
                return c.files[path].blob_id
            return _tree_oid(c, path) if path in _directories(c) else None

        current = oid(commit)
        while commit.parent is not None and oid(repo.commits[commit.parent]) == current:
            commit = repo.commits[commit.parent]
        return commit


def _directories(commit: _Commit) -> set[str]:
    return {p.rsplit("/", i)[0] for p in commit.files for i in range(1, p.count("/") + 1)}


def _tree_oid(commit: _Commit, directory: str) -> str:
    """A stable id for a directory's content (not git's real tree hash)."""
    prefix = directory + "/"
    listing = "".join(f"{f.path} {f.blob_id}\n" for f in commit.files.values() if f.path.startswith(prefix))
    return hashlib.sha1(listing.encode()).hexdigest()


def _error(code: int, error_code: str, message: str, headers: Mapping[str, str] | None = None) -> Response:
    """An error the way the Hub sends it: huggingface_hub maps X-Error-Code to its exceptions."""
    return Response(
        code,
        {"Content-Type": "application/json", "X-Error-Code": error_code, "X-Error-Message": message, **(headers or {})},
        json.dumps({"error": message}).encode(),
    )
