"""GitHub files (LLaVA's GPT-4 prompts): the ref resolved to a commit, every file checked.

GitHub's REST API resolves the ref to a commit and lists the folder's tree at that commit
with each file's git blob id; the raw file at that commit then goes through the shared
download core and is checked against its blob id. The folder listing is the artifact list,
so a file added or removed upstream is seen, not guessed. ``GITHUB_TOKEN`` lifts the API's
anonymous rate limit (60 requests an hour; a refresh uses two).
"""

from __future__ import annotations

import os
import posixpath

import requests

from ..catalog import Artifact, Source
from .digest import Expected
from .http import FetchError, PermanentFetchError, raise_for_status, with_retries
from .remote import Context, Remote, Transport

API = "https://api.github.com"
RAW = "https://raw.githubusercontent.com"


def _headers() -> dict[str, str]:
    token = os.environ.get("GITHUB_TOKEN")
    return {"Accept": "application/vnd.github+json", **({"Authorization": f"Bearer {token}"} if token else {})}


def _get_json(url: str, ctx: Context):
    def attempt():
        response = requests.get(url, headers=_headers(), timeout=(ctx.policy.connect_timeout, ctx.policy.read_timeout))
        if response.status_code == 403 and response.headers.get("X-RateLimit-Remaining") == "0":
            raise FetchError(f"{url}: GitHub's API rate limit is used up; set GITHUB_TOKEN or retry after {response.headers.get('X-RateLimit-Reset')}")
        if response.status_code == 404:
            raise PermanentFetchError(f"{url}: not found: check `github.repo` and `github.ref` in the catalog")
        raise_for_status(response, url, ok=(200,))  # 429/5xx retried; another 4xx: a retry gets the same answer
        return response.json()

    return with_retries(url, ctx.policy, attempt)


def tree(source: Source, ctx: Context) -> tuple[str, dict[str, tuple[str, int]]]:
    """The commit the ref points to, and {path: (blob id, size)} of every file in the folder."""
    upstream = source.github
    return _listing(ctx.mirrors.rewrite(API), upstream.repo, ctx.revision or upstream.ref, upstream.folder, ctx)


def _listing(api: str, repo: str, ref: str, folder: str, ctx: Context):
    # Memoised per step: plan and discovery share one listing, so a refresh costs the
    # anonymous API limit two requests per task, not two per file.
    key = ("github", api, repo, ref, folder)
    if key not in ctx.memo:
        commit = _get_json(f"{api}/repos/{repo}/commits/{ref}", ctx)["sha"]
        listing = _get_json(f"{api}/repos/{repo}/git/trees/{commit}?recursive=1", ctx)
        if listing.get("truncated"):
            raise PermanentFetchError(f"{repo}@{commit[:12]}: the tree listing is truncated; point `github.folder` at a smaller folder")
        prefix = folder.rstrip("/") + "/"
        files = {e["path"]: (e["sha"], e["size"]) for e in listing["tree"] if e["type"] == "blob" and e["path"].startswith(prefix)}
        if not files:
            raise PermanentFetchError(f"{repo}@{commit[:12]}: no files under {folder!r}")
        ctx.memo[key] = (commit, files)
    return ctx.memo[key]


def github_discover(source: Source, ctx: Context) -> list[Artifact]:
    upstream = source.github
    _commit, files = tree(source, ctx)
    artifacts = []
    for path in sorted(files):
        relative = posixpath.relpath(path, upstream.folder)
        artifacts.append(Artifact(name=relative, path=path, target=f"{upstream.into}/{relative}"))
    return artifacts


def github_remotes(source: Source, artifacts: list[Artifact], ctx: Context) -> list[Remote]:
    commit, files = tree(source, ctx)
    remotes = []
    for artifact in artifacts:
        if artifact.path not in files:
            raise PermanentFetchError(f"{source.github.repo}@{commit[:12]}: no file {artifact.path!r}")
        blob, size = files[artifact.path]
        url = ctx.mirrors.rewrite(f"{RAW}/{source.github.repo}/{commit}/{artifact.path}")
        remotes.append(Remote(artifact, url, Expected(size=size, git_sha1=blob), {"git_sha1": blob, "size": size}, revision=commit))
    return remotes


GITHUB = Transport(github_remotes, github_discover)
