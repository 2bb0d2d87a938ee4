"""What a transport tells the pipeline about one upstream artifact before fetching it."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..catalog import Artifact
from .digest import Expected


@dataclass(frozen=True)
class Remote:
    artifact: Artifact
    url: str  # after mirror rewrites
    expected: Expected
    # What a refresh compares with the manifest: an unchanged fingerprint means no download.
    fingerprint: dict[str, str | int | None]
    revision: str | None = None  # the Hub commit the file was resolved at
    headers: dict[str, str] = field(default_factory=dict, repr=False)  # credentials: never logged
