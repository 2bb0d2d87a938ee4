"""Hugging Face Hub: huggingface_hub resolves, our HTTP core moves the bytes.

huggingface_hub answers the questions only the Hub can: which commit a branch points to,
each file's size and LFS sha256 (or git blob id for small files), the resolve URL, and the
auth headers. The bytes then go through ``fetch.http.download`` like every other transport:
one pass that hashes while writing, Range/If-Range resume across resets and worker kills,
and a real sha256 check (the library's own download checks only the size and deletes the
partial file on a connection reset).
"""

from __future__ import annotations

import os

import httpx2  # the HTTP client huggingface_hub talks through
from huggingface_hub import HfApi, hf_hub_url, set_client_factory
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import build_hf_headers
from huggingface_hub.utils._http import default_client_factory  # the library's own client, to which we add timeouts

from ..catalog import Artifact, Source
from ..mirrors import Mirrors
from .digest import Expected
from .http import RETRY_STATUS, PermanentFetchError, RetryPolicy, Transient, name_unresolved, unresolved_error, with_retries
from .remote import Context, Remote, Transport

DEFAULT_ENDPOINT = "https://huggingface.co"


def _timeout(policy: RetryPolicy) -> httpx2.Timeout:
    return httpx2.Timeout(policy.read_timeout, connect=policy.connect_timeout)


def _client_with_timeouts() -> httpx2.Client:
    """huggingface_hub's client, with the default RetryPolicy's timeouts. Its own has none and
    ``get_paths_info`` takes none: a Hub (or a mirror) that accepts the connection and stays
    silent held the plan until the task's 2-hour timeout. (``dataset_info`` is given the
    context's policy's timeouts per call; an explicit ``timeout=None`` would override this.)"""
    client = default_client_factory()
    client.timeout = _timeout(RetryPolicy())
    return client


set_client_factory(_client_with_timeouts)


def hub_endpoint(mirrors: Mirrors) -> str:
    """``HF_ENDPOINT`` as huggingface_hub honours it, then our mirror map on top."""
    return mirrors.rewrite(os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def _hub_call(what: str, policy: RetryPolicy, fn):
    def attempt():
        try:
            return fn()
        except GatedRepoError as exc:
            raise PermanentFetchError(f"{what}: the repository is gated: accept its terms on the Hub and give a token (Airflow connection huggingface_default or HF_TOKEN)") from exc
        except RevisionNotFoundError as exc:
            raise PermanentFetchError(f"{what}: revision not found: check `hf.revision` in the catalog") from exc
        except EntryNotFoundError as exc:
            raise PermanentFetchError(f"{what}: file not found at that revision: check the catalog's `path`") from exc
        except RepositoryNotFoundError as exc:
            raise PermanentFetchError(f"{what}: repository not found (or private without a token)") from exc
        except HfHubHTTPError as exc:
            status = exc.response.status_code if exc.response is not None else None
            if status is None or status in RETRY_STATUS:  # not 501 or 505: those do not pass
                raise Transient(f"Hub answered {status}: {exc}") from exc
            raise PermanentFetchError(f"{what}: {exc}") from exc
        except (httpx2.TransportError, OSError) as exc:  # resets, timeouts: not OSErrors
            if name_unresolved(exc):
                raise unresolved_error(what, exc) from exc
            raise Transient(f"{type(exc).__name__}: {exc}") from exc

    return with_retries(what, policy, attempt)


def hf_remotes(source: Source, artifacts: list[Artifact], ctx: Context) -> list[Remote]:
    """Resolve the revision to a commit once, then describe every artifact at that commit."""
    upstream, mirrors, token, policy, revision = source.hf, ctx.mirrors, ctx.token, ctx.policy, ctx.revision
    endpoint = hub_endpoint(mirrors)
    api = HfApi(endpoint=endpoint, token=token or False)
    requested = revision or upstream.revision
    where = f"{upstream.repo}@{requested}"
    info_call = api.dataset_info if upstream.repo_type == "dataset" else api.model_info
    commit = _hub_call(where, policy, lambda: info_call(upstream.repo, revision=requested, timeout=_timeout(policy))).sha
    paths = [a.path for a in artifacts]
    infos = _hub_call(where, policy, lambda: api.get_paths_info(upstream.repo, paths, revision=commit, repo_type=upstream.repo_type))
    by_path = {info.path: info for info in infos}
    headers = build_hf_headers(token=token or False, library_name="vlmdata")
    remotes = []
    for artifact in artifacts:
        info = by_path.get(artifact.path)
        if info is None or not hasattr(info, "size"):
            raise PermanentFetchError(f"{upstream.repo}@{commit[:12]}: no file {artifact.path!r} (artifact {artifact.name} of {source.id}); check the catalog")
        lfs_sha256 = info.lfs.sha256 if info.lfs else None
        if artifact.sha256 and lfs_sha256 and artifact.sha256 != lfs_sha256:
            raise PermanentFetchError(f"{upstream.repo}@{commit[:12]}: {artifact.path} has sha256 {lfs_sha256}, the catalog expects {artifact.sha256}: upstream changed; pin `hf.revision` or update the catalog")
        expected = Expected(size=info.size, sha256=lfs_sha256 or artifact.sha256, md5=artifact.md5, git_sha1=None if lfs_sha256 else info.blob_id)
        fingerprint = {"sha256": lfs_sha256} if lfs_sha256 else {"git_sha1": info.blob_id}
        url = hf_hub_url(upstream.repo, artifact.path, repo_type=upstream.repo_type, revision=commit, endpoint=endpoint)
        remotes.append(Remote(artifact, url, expected, {**fingerprint, "size": info.size}, revision=commit, headers=headers))
    return remotes


HF = Transport(hf_remotes)
