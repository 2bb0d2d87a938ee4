"""A loopback HTTP/1.1 server with Range support and scripted faults, for tests.

Static files (`add`/`replace`/`remove`) and routed handlers (`route`, used by the other fakes)
go through the same code for Range, If-Range, HEAD and faults, so that logic exists once.

    with FakeHttpServer() as srv:
        srv.add("/big.zip", data)
        srv.script("/big.zip", drop_after(1000), status(429, retry_after=1))
        ...  # fetch f"{srv.url}/big.zip"
        assert srv.count("GET", "/big.zip") == 3
"""

from __future__ import annotations

import email.utils
import hashlib
import json as jsonlib
import re
import socket
import struct
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields
from dataclasses import replace as dc_replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from requests.structures import CaseInsensitiveDict

__all__ = [
    "AUTO",
    "Fault",
    "FakeHttpServer",
    "Request",
    "Resource",
    "Response",
    "corrupt",
    "drop_after",
    "http_date",
    "ignore_range",
    "redirect",
    "reset_after",
    "status",
    "throttle",
]


class _Auto:
    def __repr__(self) -> str:
        return "AUTO"


AUTO: Any = _Auto()  # "compute a default", where None means "send no such header"

# Auto Last-Modified values count up from here, one minute per change: HTTP dates have a
# one-second resolution, so wall-clock times would collide when a test replaces a file at once.
_CLOCK_START = 1_704_067_200  # 2024-01-01T00:00:00Z


def http_date(timestamp: float) -> str:
    """An RFC 7231 date (`Mon, 01 Jan 2024 00:00:00 GMT`)."""
    return email.utils.formatdate(timestamp, usegmt=True)


# --------------------------------------------------------------------------- requests/responses


@dataclass(frozen=True)
class Request:
    """One request as the server saw it; `FakeHttpServer.requests` keeps these."""

    method: str
    path: str  # percent-decoded, without query: what add(), script() and count() use
    raw_path: str  # as sent, still percent-encoded, without query: what route patterns match
    query_string: str
    headers: CaseInsensitiveDict
    body: bytes = b""
    client_port: int = 0  # same port on two records = the same (kept-alive) connection

    @property
    def query(self) -> dict[str, list[str]]:
        return parse_qs(self.query_string, keep_blank_values=True)

    def form(self) -> dict[str, list[str]]:
        return parse_qs(self.body.decode(), keep_blank_values=True)

    def json(self) -> Any:
        return jsonlib.loads(self.body)


@dataclass
class Resource:
    """Bytes to serve; the server adds Range, If-Range, HEAD and fault handling."""

    data: bytes
    etag: str | None = None  # quoted, as sent: '"abc"'
    last_modified: str | None = None  # an HTTP date
    content_type: str = "application/octet-stream"
    headers: Mapping[str, str] = field(default_factory=dict)  # extra headers, sent as given
    fault_key: str | None = None  # queue that script() faults come from; default: the path


@dataclass
class Response:
    """A complete response, sent as is (scripted faults still apply to it)."""

    status: int
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""
    fault_key: str | None = None

    @classmethod
    def json(cls, obj: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
        body = jsonlib.dumps(obj).encode()
        return cls(status, {"Content-Type": "application/json", **(headers or {})}, body)


Handler = Callable[[Request, "re.Match[str]"], "Resource | Response | None"]


# --------------------------------------------------------------------------------------- faults


@dataclass(frozen=True)
class Fault:
    """One scripted misbehaviour, consumed by one request. Build with the helpers below;
    combine with `|`, e.g. `throttle(50_000) | drop_after(20_000)`."""

    method: str = "GET"  # which requests consume it; "*" for any
    status: int | None = None
    retry_after: str | None = None
    body: bytes = b""
    location: str | None = None
    drop_after: int | None = None
    reset_after: int | None = None
    reset_before_headers: bool = False
    ignore_range: bool = False
    corrupt_offset: int | None = None
    bytes_per_second: float | None = None

    def __or__(self, other: Fault) -> Fault:
        changes = {
            f.name: getattr(other, f.name)
            for f in fields(other)
            if f.name != "method" and getattr(other, f.name) != f.default
        }
        return dc_replace(self, **changes)

    def matches(self, method: str) -> bool:
        return self.method == "*" or self.method == method


def drop_after(n: int, *, method: str = "GET") -> Fault:
    """Send the status and headers of the full response, n body bytes, then close cleanly (FIN)."""
    return Fault(method=method, drop_after=n)


def reset_after(n: int = 0, *, send_headers: bool = True, method: str = "GET") -> Fault:
    """Send headers and n body bytes, then abort the connection with a TCP RST."""
    return Fault(method=method, reset_after=n, reset_before_headers=not send_headers)


def status(code: int, retry_after: int | str | None = None, body: bytes = b"", *, method: str = "GET") -> Fault:
    """Answer `code` instead (e.g. 429 with Retry-After, 503 without)."""
    return Fault(method=method, status=code, retry_after=None if retry_after is None else str(retry_after), body=body)


def ignore_range(*, method: str = "GET") -> Fault:
    """Answer 200 with the whole body although a Range was asked for."""
    return Fault(method=method, ignore_range=True)


def corrupt(offset: int, *, method: str = "GET") -> Fault:
    """Flip one byte at this absolute offset of the resource (if this response carries it)."""
    return Fault(method=method, corrupt_offset=offset)


def throttle(bytes_per_second: float, *, method: str = "GET") -> Fault:
    """Send the body at about this rate."""
    return Fault(method=method, bytes_per_second=bytes_per_second)


def redirect(to_url: str, *, method: str = "GET") -> Fault:
    """Answer 302 with Location: to_url."""
    return Fault(method=method, location=to_url)


# ----------------------------------------------------------------------------- Range / If-Range

_UNSATISFIABLE = "unsatisfiable"
_RANGE_RE = re.compile(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*")


def _parse_range(value: str, size: int) -> tuple[int, int] | str | None:
    """(first, last) inclusive, _UNSATISFIABLE, or None to ignore the header.

    Multi-range and malformed headers are ignored (answered 200), which RFC 7233 allows."""
    m = _RANGE_RE.fullmatch(value)
    if not m or (m[1] == "" and m[2] == ""):
        return None
    if m[1] == "":  # suffix range: the last N bytes
        n = int(m[2])
        return (max(0, size - n), size - 1) if n > 0 and size > 0 else _UNSATISFIABLE
    first = int(m[1])
    if m[2] and int(m[2]) < first:
        return None
    if first >= size:
        return _UNSATISFIABLE
    return first, min(int(m[2]) if m[2] else size - 1, size - 1)


def _if_range_holds(value: str | None, res: Resource) -> bool:
    """RFC 7233 3.2: the Range applies only if If-Range names the current representation."""
    if value is None:
        return True
    value = value.strip()
    if value.startswith(('"', "W/")):
        # Strong comparison: a weak validator never matches.
        return res.etag is not None and not value.startswith("W/") and not res.etag.startswith("W/") and value == res.etag
    if res.last_modified is None:
        return False
    try:
        return email.utils.parsedate_to_datetime(value) == email.utils.parsedate_to_datetime(res.last_modified)
    except (TypeError, ValueError):
        return False


def _plan(req: Request, res: Resource, honour_range: bool) -> tuple[int, dict[str, str], bytes, int]:
    """Status, headers, body and the body's offset within the resource."""
    size = len(res.data)
    headers = {"Content-Type": res.content_type, "Accept-Ranges": "bytes"}
    if res.etag is not None:
        headers["ETag"] = res.etag
    if res.last_modified is not None:
        headers["Last-Modified"] = res.last_modified
    headers.update(res.headers)
    range_header = req.headers.get("Range")
    if range_header and honour_range and _if_range_holds(req.headers.get("If-Range"), res):
        span = _parse_range(range_header, size)
        if span == _UNSATISFIABLE:
            return 416, {**headers, "Content-Range": f"bytes */{size}"}, b"", 0
        if span is not None:
            first, last = span
            return 206, {**headers, "Content-Range": f"bytes {first}-{last}/{size}"}, res.data[first : last + 1], first
    return 200, headers, res.data, 0


# ---------------------------------------------------------------------------------------- server


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: every response carries a Content-Length
    timeout = 30  # an idle kept-alive connection must not pin a thread forever
    disable_nagle_algorithm = True  # as real servers: small answers must not wait for a delayed ACK (~40 ms)
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection, True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.track(self.connection, False)

    def do_GET(self) -> None:
        self.server.fake._serve(self)

    do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_GET

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - keep test output quiet
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # the default backlog of 5 drops SYNs under a burst: 1 s stalls

    def __init__(self, fake: FakeHttpServer) -> None:
        self.fake = fake
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _Handler)

    def track(self, sock: socket.socket, is_open: bool) -> None:
        with self._open_lock:
            (self._open.add if is_open else self._open.discard)(sock)

    def close_all_connections(self) -> None:
        # Kept-alive connections would otherwise keep their threads blocked in a read.
        with self._open_lock:
            socks = list(self._open)
        for sock in socks:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class FakeHttpServer:
    """HTTP/1.1 on 127.0.0.1 (ephemeral port) serving registered files and routes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._files: dict[str, Resource] = {}
        self._faults: dict[str, deque[Fault]] = {}
        self._routes: list[tuple[frozenset[str] | None, re.Pattern[str], Handler]] = []
        self._requests: list[Request] = []
        self._sent: dict[str, int] = {}  # path -> body bytes sent
        self._clock = 0
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    # lifecycle -------------------------------------------------------------------------------

    def start(self) -> FakeHttpServer:
        if self._httpd is None:
            self._httpd = _Server(self)
            self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), name="FakeHttpServer", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.close_all_connections()
            self._httpd.server_close()
            assert self._thread is not None
            self._thread.join(5)
            self._httpd = self._thread = None

    def __enter__(self) -> FakeHttpServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """Base URL without trailing slash, e.g. http://127.0.0.1:41234."""
        if self._httpd is None:
            raise RuntimeError("FakeHttpServer is not started")
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    # content ---------------------------------------------------------------------------------

    def next_http_date(self) -> str:
        """A Last-Modified value later than every one handed out before."""
        with self._lock:
            self._clock += 1
            return http_date(_CLOCK_START + 60 * self._clock)

    def add(
        self,
        path: str,
        data: bytes,
        etag: str | None = AUTO,
        last_modified: str | None = AUTO,
        *,
        content_type: str = "application/octet-stream",
        headers: Mapping[str, str] | None = None,
    ) -> Resource:
        """Serve `data` at `path` (decoded, starting with "/"). AUTO etag is the quoted sha1
        of the data; None leaves the header out (to test Last-Modified-only resume)."""
        if not path.startswith("/"):
            raise ValueError(f"path must start with '/': {path!r}")
        res = Resource(
            data=bytes(data),
            etag=f'"{hashlib.sha1(data).hexdigest()}"' if etag is AUTO else etag,
            last_modified=self.next_http_date() if last_modified is AUTO else last_modified,
            content_type=content_type,
            headers=dict(headers or {}),
        )
        with self._lock:
            self._files[path] = res
        return res

    def replace(self, path: str, data: bytes, etag: str | None = AUTO, last_modified: str | None = AUTO) -> Resource:
        """New bytes at an existing path, with a new ETag and a later Last-Modified."""
        with self._lock:
            old = self._files[path]
        return self.add(path, data, etag, last_modified, content_type=old.content_type, headers=old.headers)

    def remove(self, path: str) -> None:
        with self._lock:
            del self._files[path]

    def route(self, method: str | Iterable[str], pattern: str, handler: Handler) -> None:
        """Send requests whose raw (percent-encoded) path fully matches `pattern` to `handler`.

        `method` is a name, several names, or "*"; "GET" also takes HEAD. The handler returns a
        `Resource` (served with Range/If-Range/faults), a `Response`, or None to pass.
        Routes are tried in order, before static files."""
        methods: frozenset[str] | None = None
        if method != "*":
            names = {m.upper() for m in ([method] if isinstance(method, str) else method)}
            if "GET" in names:
                names.add("HEAD")
            methods = frozenset(names)
        with self._lock:
            self._routes.append((methods, re.compile(pattern), handler))

    # faults ----------------------------------------------------------------------------------

    def script(self, key: str, *faults: Fault) -> None:
        """Queue faults for a path (or a route's fault_key); each matching request takes the
        first queued fault whose method it has, in FIFO order."""
        with self._lock:
            self._faults.setdefault(key, deque()).extend(faults)

    def pending_faults(self, key: str) -> int:
        with self._lock:
            return len(self._faults.get(key, ()))

    def _pop_fault(self, key: str, method: str) -> Fault | None:
        with self._lock:
            queue = self._faults.get(key)
            for fault in queue or ():
                if fault.matches(method):
                    queue.remove(fault)  # type: ignore[union-attr]
                    return fault
        return None

    # request log -----------------------------------------------------------------------------

    @property
    def requests(self) -> list[Request]:
        """A snapshot of every request received so far, oldest first."""
        with self._lock:
            return list(self._requests)

    def count(self, method: str, path: str) -> int:
        return sum(1 for r in self.requests if r.method == method.upper() and r.path == path)

    def clear_requests(self) -> None:
        with self._lock:
            self._requests.clear()
            self._sent.clear()

    def bytes_sent(self, path: str) -> int:
        """Response body bytes sent for this path (since the start or `clear_requests`)."""
        with self._lock:
            return self._sent.get(path, 0)

    # serving ---------------------------------------------------------------------------------

    def _serve(self, h: _Handler) -> None:
        split = urlsplit(h.path)
        length = int(h.headers.get("Content-Length") or 0)
        req = Request(
            method=h.command,
            path=unquote(split.path),
            raw_path=split.path,
            query_string=split.query,
            headers=CaseInsensitiveDict(h.headers.items()),
            body=h.rfile.read(length) if length else b"",
            client_port=h.client_address[1],
        )
        with self._lock:
            self._requests.append(req)
        try:
            result = self._dispatch(req)
        except Exception:  # a bug in a handler: make it visible to the test, keep serving
            text = traceback.format_exc()
            print(text, file=sys.stderr)
            result = Response(500, {"Content-Type": "text/plain"}, text.encode())
        try:
            self._send(h, req, result)
        except (BrokenPipeError, ConnectionResetError):
            h.close_connection = True  # the client went away mid-response

    def _dispatch(self, req: Request) -> Resource | Response:
        with self._lock:
            routes = list(self._routes)
        for methods, pattern, handler in routes:
            if methods is not None and req.method not in methods:
                continue
            m = pattern.fullmatch(req.raw_path)
            if m and (result := handler(req, m)) is not None:
                return result
        if req.method in ("GET", "HEAD"):
            with self._lock:
                res = self._files.get(req.path)
            if res is not None:
                return res
        return Response(404, {"Content-Type": "text/plain"}, b"not found\n")

    def _send(self, h: _Handler, req: Request, result: Resource | Response) -> None:
        fault = self._pop_fault(result.fault_key or req.path, req.method) or Fault()
        if fault.reset_before_headers:
            self._reset(h)
            return
        if fault.status is not None:
            headers = {"Content-Type": "text/plain"}
            if fault.retry_after is not None:
                headers["Retry-After"] = fault.retry_after
            result = Response(fault.status, headers, fault.body)
        elif fault.location is not None:
            result = Response(302, {"Location": fault.location})

        if isinstance(result, Resource):
            code, headers, body, offset = _plan(req, result, honour_range=not fault.ignore_range)
        else:
            code, headers, body, offset = result.status, dict(result.headers), result.body, 0

        if fault.corrupt_offset is not None and 0 <= fault.corrupt_offset - offset < len(body):
            i = fault.corrupt_offset - offset
            body = body[:i] + bytes([body[i] ^ 0xFF]) + body[i + 1 :]

        h.send_response(code)
        if not any(k.lower() == "content-length" for k in headers):
            headers["Content-Length"] = str(len(body))
        for name, value in headers.items():
            h.send_header(name, value)
        h.end_headers()

        if req.method == "HEAD":
            body = b""
        cuts = [n for n in (fault.drop_after, fault.reset_after) if n is not None]
        body = body[: min(cuts)] if cuts else body
        with self._lock:
            self._sent[req.path] = self._sent.get(req.path, 0) + len(body)
        self._write_body(h, body, fault.bytes_per_second)
        if fault.reset_after is not None:
            self._reset(h)
        elif fault.drop_after is not None:
            h.close_connection = True  # socketserver then shuts the socket down with a FIN

    @staticmethod
    def _write_body(h: _Handler, data: bytes, bytes_per_second: float | None) -> None:
        if not bytes_per_second:
            h.wfile.write(data)
            return
        chunk = max(1, int(bytes_per_second / 20))
        start = time.monotonic()
        for i in range(0, len(data), chunk):
            h.wfile.write(data[i : i + chunk])
            # Pace against the start so that sleep overshoot does not add up.
            delay = start + (i + chunk) / bytes_per_second - time.monotonic()
            if delay > 0:
                time.sleep(delay)

    @staticmethod
    def _reset(h: _Handler) -> None:
        """Abort the connection: SO_LINGER 0 makes close() send RST instead of FIN."""
        sock = h.connection
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        # The handler's rfile holds a reference to the socket; close it first so that the
        # close below is the real one (a later shutdown(SHUT_WR) would send a FIN first).
        h.rfile.close()
        sock.close()
        h.close_connection = True
