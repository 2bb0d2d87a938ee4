"""SA-1B's CDN as Meta hands it out: signed, expiring links in a links file that is not sorted.

What the real links file looks like (Meta's download page, after the licence):

* a header ``file_name<TAB>cdn_link``, then one row per tar, **not in shard order**;
* each link points at an opaque path that does not name the tar
  (``https://scontent.xx.fbcdn.net/m1/v/t6/An8MNcSV...Bjw.tar``): only the row's first field says
  which tar it is;
* the query carries the CDN's parameters and the signature, in this order:
  ``?_nc_gid=...&_nc_oc=...&_nc_ht=...&ccb=10-5&oh=00_<signature>&oe=<expiry, hex>&_nc_sid=0fdd51``.

:class:`FakeSa1bCdn` serves tars only to the links of its current signing, with the whole query
as signed: an old signature gets 403 ``URL signature expired``, a query changed in any way (a
parameter dropped, reordered or re-encoded) 403 ``URL signature mismatch``, as a signed-URL CDN
answers. :meth:`FakeSa1bCdn.sign` is the user downloading a fresh links file.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Mapping

from .http_server import FakeHttpServer, Resource, Response

__all__ = ["FakeSa1bCdn", "links_file_order"]

HEADER = "file_name\tcdn_link"
_PATH = "/m1/v/t6/"


def _token(*parts: object, length: int) -> str:
    """Deterministic URL-safe text that looks like the CDN's opaque tokens."""
    digest = hashlib.sha512("/".join(map(str, parts)).encode()).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")[:length]


def links_file_order(names: list[str]) -> list[str]:
    """The row order of the replica links files: fixed, and never shard order for two rows or
    more (Meta's file is not sorted: code that relies on its order must fail here)."""
    ordered = sorted(names)
    return ordered[1::2] + ordered[0::2]


class FakeSa1bCdn:
    """Serves ``tars`` (``{tar name: bytes}``) on ``http`` under ``mount`` (a path prefix, "" for
    the root); links name ``host`` (default: the server itself), which a mirror map may send
    back to the server, as the replicas do with ``https://scontent.xx.fbcdn.net``."""

    def __init__(self, http: FakeHttpServer, tars: Mapping[str, bytes], *, refuse_head: bool = False, mount: str = "", host: str | None = None):
        self.http, self.tars, self.refuse_head = http, dict(tars), refuse_head
        self.mount = mount.rstrip("/")
        self.host = (host or http.url).rstrip("/")
        self.resources = {
            name: Resource(data, etag=f'"{hashlib.md5(data).hexdigest()}"', last_modified=http.next_http_date(), content_type="application/x-tar")
            for name, data in self.tars.items()
        }
        self.generation = 0
        self.queries: dict[str, str] = {}  # tar -> the query of its current link
        self._by_file = {self._file(name): name for name in self.tars}
        http.route("GET", re.escape(self.mount + _PATH) + r"(An[A-Za-z0-9_-]+\.tar)", self._serve)

    @staticmethod
    def _file(name: str) -> str:
        return f"An{_token('sa1b-object', name, length=86)}.tar"

    def path(self, name: str) -> str:
        """The server path a tar's links lead to (what ``http.script`` and request counts use)."""
        return f"{self.mount}{_PATH}{self._file(name)}"

    def sign(self) -> str:
        """A fresh links file (its text): new signatures for every tar, the old ones revoked."""
        self.generation += 1
        expiry = format(1_700_000_000 + 86_400 * self.generation, "X")
        for name in self.tars:
            signature = _token("oh", name, self.generation, length=43)
            self.queries[name] = (
                f"_nc_gid={_token('gid', self.generation, length=22)}&_nc_oc={_token('oc', name, self.generation, length=64)}"
                f"&_nc_ht=scontent.xx.fbcdn.net&ccb=10-5&oh=00_{signature}&oe={expiry}&_nc_sid=0fdd51"
            )
        return "\n".join([HEADER, *(f"{name}\t{self.links[name]}" for name in links_file_order(list(self.tars)))]) + "\n"

    @property
    def links(self) -> dict[str, str]:
        """``{tar: link}`` of the current signing, in shard order."""
        return {name: f"{self.host}{_PATH}{self._file(name)}?{self.queries[name]}" for name in sorted(self.queries)}

    def signatures(self) -> list[str]:
        """Every credential the current links carry (what no log line or file may show)."""
        return [value for query in self.queries.values() for key, value in (p.split("=", 1) for p in query.split("&")) if key in ("oh", "_nc_gid", "_nc_oc")]

    def _serve(self, request, match):
        name = self._by_file.get(match[1])
        if name is None:
            return Response(404, {"Content-Type": "text/plain"}, b"not found")
        if request.method == "HEAD" and self.refuse_head:
            return Response(403, {"Content-Type": "text/plain"}, b"Method not allowed by signature")
        signed = self.queries.get(name)
        if request.query_string != signed:
            said = b"URL signature expired" if request.query.get("oh") != [_oh(signed)] else b"URL signature mismatch"
            return Response(403, {"Content-Type": "text/plain"}, said)
        return self.resources[name]

    def gets(self, name: str | None = None) -> int:
        """GET requests for one tar's path (any tar's without a name)."""
        paths = {self.path(name)} if name else {self.path(n) for n in self.tars}
        return sum(1 for r in self.http.requests if r.method == "GET" and r.path in paths)


def _oh(query: str | None) -> str | None:
    for part in (query or "").split("&"):
        if part.startswith("oh="):
            return part[3:]
    return None
