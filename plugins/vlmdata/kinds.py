"""The source kinds: the one place that says what each ``kind:`` of the catalog means.

Per kind: the catalog section it needs and the artifact field that locates each file (checked
when the catalog loads), the host whose Airflow pool its downloads share, the operator class of
its ``fetch`` task, what its acquisition DAG offers (a ``revision`` parameter, ``needed_by``, a
crawl after the list file), and its transport: the ``vlmdata.fetch`` object that probes and
downloads, named by its dotted path and imported only when a task (or the CLI) uses it.

This module imports nothing but the standard library: the DAG files import it at every parse,
and the transports pull in huggingface_hub, requests, httpx and Pillow, which a parse does not
need (``bench/`` row ``startup``; ``tests/unit/test_kinds.py`` checks it stays so).

Adding a kind: one :class:`SourceKind` below, its transport module in ``vlmdata/fetch/`` (a
``Transport`` object), and, if it needs one, its upstream section in ``vlmdata.catalog.Source``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class SourceKind:
    name: str  # the catalog's ``kind:``
    transport: str  # "module:attribute" of its vlmdata.fetch.remote.Transport
    section: str | None = None  # the Source field (upstream section) the kind needs
    locator: str | None = None  # the Artifact field every artifact needs (None: the transport finds them)
    pool_host: str | None = None  # the host its downloads' pool is named after; None: the first artifact URL's
    fetch_operator: str = "FetchArtifactOperator"  # class in vlmdata.operators.acquire
    revision: str | None = None  # the section's field a DAG run's ``revision`` parameter overrides
    needed_by: bool = False  # the transport chooses artifacts by what annotation files reference
    # Its files are plain HTTP(S) GETs that Range requests can read in part: a zip archive among
    # them can be fetched member by member for what annotation files need (needed_by, docs/partial-zip.md).
    partial_zip: bool = False
    crawl: bool = False  # the artifacts are a list of URLs: plan_crawl, crawl, finish_crawl, fill_from_mirrors follow

    def load_transport(self) -> Any:
        """The transport object (imports its module: call it in a task, never at DAG parse)."""
        module, _, attribute = self.transport.partition(":")
        return getattr(importlib.import_module(module), attribute)


KINDS: dict[str, SourceKind] = {
    kind.name: kind
    for kind in (
        SourceKind("hf", "vlmdata.fetch.hf:HF", section="hf", locator="path", pool_host="huggingface.co", fetch_operator="HfFetchOperator", revision="revision", partial_zip=True),
        SourceKind("http", "vlmdata.fetch.plain:HTTP", locator="url", fetch_operator="HttpFetchOperator", partial_zip=True),
        SourceKind("github", "vlmdata.fetch.github:GITHUB", section="github", locator="path", pool_host="github.com", fetch_operator="GithubFetchOperator"),
        SourceKind("gdrive", "vlmdata.fetch.gdrive:GDRIVE", section="gdrive", locator="drive_id", pool_host="drive.google.com"),
        # Meta's signed links; the real host is in the user's links file.
        SourceKind("sa1b", "vlmdata.fetch.sa1b:SA1B", section="sa1b", pool_host="sa1b-cdn", needed_by=True),
        # OCR-VQA: the list file comes from a Drive folder; the crawl is vlmdata.crawl's.
        SourceKind("urllist", "vlmdata.fetch.gdrive:GDRIVE", section="crawl", pool_host="drive.google.com", crawl=True),
    )
}


def kind_named(name: str) -> SourceKind:
    try:
        return KINDS[name]
    except KeyError:
        raise KeyError(f"unknown source kind {name!r}; known: {', '.join(KINDS)} (vlmdata.kinds)") from None


def offers_needed_by(source: Any) -> bool:
    """Whether a source's acquisition takes ``needed_by`` (annotation files or recipes whose
    images the storage lacks): its transport chooses artifacts by them (SA-1B's tars), or its
    kind reads zips in part and the source has zip archives (``Artifact.is_zip``)."""
    kind = kind_named(source.kind)
    return kind.needed_by or (kind.partial_zip and any(artifact.is_zip for artifact in source.artifacts))
