"""The transport interface: what a transport is given, and what it tells the pipeline."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ..catalog import Artifact, Source
from ..mirrors import Mirrors
from ..storage import Storage
from .digest import Expected
from .http import RetryPolicy


@dataclass
class Context:
    """Everything acquisition needs besides the source: where, through which mirrors, as whom."""

    storage: Storage
    mirrors: Mirrors = field(default_factory=Mirrors)
    token: str | None = field(default=None, repr=False)
    policy: RetryPolicy = field(default_factory=RetryPolicy)
    revision: str | None = None  # overrides the catalog's pinned revision (hf)
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
    ``needed_by`` chooses artifacts by what annotation files reference.
    """

    remotes: Callable[[Source, list[Artifact], Context], list[Remote]]
    discover: Callable[[Source, Context], list[Artifact]] | None = None
    # The artifacts holding the images that annotation files (data-tree paths) reference and
    # the storage lacks: for sources fetched for others' annotations (SA-1B tars).
    needed_by: Callable[[Source, Context, list[str]], list[str]] | None = None
