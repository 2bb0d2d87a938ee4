"""The transport interface: what a transport is given, and what it tells the pipeline."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field

import requests

from ..catalog import Artifact, Source, load_catalog
from ..mirrors import Mirrors
from ..storage import Storage
from .digest import Expected
from .http import PermanentFetchError, RetryPolicy, body_length, content_range_total, redact


@dataclass
class Context:
    """Everything acquisition needs besides the source: where, through which mirrors, as whom."""

    storage: Storage
    mirrors: Mirrors = field(default_factory=Mirrors)
    token: str | None = field(default=None, repr=False)
    policy: RetryPolicy = field(default_factory=RetryPolicy)
    revision: str | None = None  # overrides the catalog's pinned revision (hf)
    # The deployment's named values (inside Airflow: its Variables, resolved by vlmdata.settings);
    # outside Airflow there are none. SA-1B's links file may be one.
    variable: Callable[[str], str | None] = field(default=lambda name: None, repr=False)
    # The sources (the built-in catalog with the user's overlay), for a step that looks across
    # sources (SA-1B's needed_by, the crawl's mirrors).
    catalog: Mapping[str, Source] = field(default_factory=load_catalog, repr=False)
    # Answers a transport may reuse within one step (discovery and probing list the same folder).
    memo: dict = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class Remote:
    artifact: Artifact
    url: str  # after mirror rewrites
    expected: Expected
    # What a refresh compares with the manifest: an unchanged fingerprint means no download.
    fingerprint: dict[str, str | int | None]
    revision: str | None = None  # the Hub commit the file was resolved at
    headers: dict[str, str] = field(default_factory=dict, repr=False)  # credentials: never logged


@dataclass(frozen=True)
class Transport:
    """How one kind of upstream is reached.

    ``remotes`` describes artifacts before fetching them (URL after mirrors, expected size
    and checksums, the fingerprint a refresh compares). ``discover`` lists artifacts the
    catalog cannot name in advance (a Drive folder's files, the shards of a links file).
    ``needed_by`` chooses artifacts by what annotation files reference. With
    ``reissued_urls`` an unchanged file may come under a new URL (signed links handed out
    again): a pin then compares the file's fingerprint, not its URL.
    """

    remotes: Callable[[Source, list[Artifact], Context], list[Remote]]
    discover: Callable[[Source, Context], list[Artifact]] | None = None
    # The artifacts holding the images that annotation files (data-tree paths) reference and
    # the storage lacks: for sources fetched for others' annotations (SA-1B tars).
    needed_by: Callable[[Source, Context, list[str]], list[str]] | None = None
    reissued_urls: bool = False


class UpstreamMoved(PermanentFetchError):
    """Upstream is no longer what the plan resolved: fetching would mix two versions in one
    acquisition. Retrying cannot help; planning again can."""

    @classmethod
    def since(cls, pin: Pin, where: str, changes: list[str]) -> UpstreamMoved:
        return cls(
            f"{where}: upstream changed since the plan of {pin.planned_at} ({'; '.join(changes)}). Nothing of the new "
            f"version was kept or placed. Run the acquisition again: its plan resolves the new version."
        )


@dataclass(frozen=True)
class Pin:
    """What the plan resolved for one artifact, handed to the fetch of that artifact.

    JSON-safe (it travels through XCom) and free of credentials: the URL is redacted (signed
    links carry theirs in the query string) and no header is kept. The fetch derives the
    remote again with the credentials of its own context and fetches it only if it is still
    this (:meth:`changes`).
    """

    name: str
    url: str  # redacted
    expected: Expected  # size and checksums
    fingerprint: Mapping[str, str | int | None]  # the validators: ETag, Last-Modified, blob id, size...
    revision: str | None  # the commit (Hub, GitHub): the fetch asks for it, never for the branch
    planned_at: str
    # A zip read in part (needed_by): the members wanted, extraction-folder paths. None: the
    # whole archive. Not a fact of upstream: :meth:`changes` ignores it.
    wanted: list[str] | None = None

    @classmethod
    def of(cls, remote: Remote, planned_at: str) -> Pin:
        return cls(remote.artifact.name, redact(remote.url), remote.expected, dict(remote.fingerprint), remote.revision, planned_at)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping) -> Pin:
        return cls(**{**data, "expected": Expected(**data["expected"])})

    def _facts(self, with_url: bool) -> dict[str, object]:
        facts: dict[str, object] = {"url": self.url} if with_url else {}
        facts |= {"revision": self.revision, **self.fingerprint}
        for key, value in asdict(self.expected).items():
            facts.setdefault(key, value)  # a fingerprint's size or sha256 is the expected one
        return facts

    def changes(self, now: Pin, *, with_url: bool = True) -> list[str]:
        """How ``now`` (upstream as the fetch sees it) differs from this pin: "what: old -> new"."""
        old, new = self._facts(with_url), now._facts(with_url)
        return [f"{key}: {old.get(key)!r} -> {new.get(key)!r}" for key in dict.fromkeys([*old, *new]) if old.get(key) != new.get(key)]


def _opaque(tag: str) -> str:
    return tag.removeprefix("W/")  # a server may weaken an ETag on one answer and not on another


def served_changes(pin: Pin, response: requests.Response) -> list[str]:
    """How the version a GET answer carries differs from the pin (its validators and length)."""
    served = {"etag": response.headers.get("ETag"), "last_modified": response.headers.get("Last-Modified")}
    found = [
        f"{key}: {pin.fingerprint[key]!r} -> {served[key]!r}"
        for key in served
        if pin.fingerprint.get(key) and served[key] and _opaque(str(pin.fingerprint[key])) != _opaque(served[key])
    ]
    if response.status_code == 206:
        total = content_range_total(response.headers.get("Content-Range"))
    else:
        total = body_length(response.headers)
    if pin.expected.size is not None and total is not None and total != pin.expected.size:
        found.append(f"size: {pin.expected.size!r} -> {total!r}")
    return found


def pinned_session(pin: Pin, where: str) -> requests.Session:
    """A session whose file answers must be the pinned version, checked on their headers before
    a byte is written: upstream may change between the fetch's check and its GET, and a fresh
    GET (unlike a resume, which If-Range guards) would take whatever upstream has by then."""
    session = requests.Session()

    def check(response: requests.Response, *args, **kwargs) -> requests.Response:
        # A page instead of the file (Drive's quota page) is no version at all: fetch.http
        # waits it out; errors and redirects are its business too.
        page = response.headers.get("Content-Type", "").startswith("text/html")
        if response.request.method == "GET" and response.status_code in (200, 206) and not page:
            changes = served_changes(pin, response)
            if changes:
                response.close()
                raise UpstreamMoved.since(pin, where, changes)
        return response

    session.hooks["response"].append(check)
    return session
