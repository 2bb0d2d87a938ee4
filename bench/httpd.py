"""Loopback HTTP servers for the download comparison, each run in its own process.

``python -m bench.httpd ROOT`` serves the files directly inside ROOT with ``os.sendfile``:
the kernel copies page cache to the socket, so one connection runs at loopback speed and
the server costs the client (sharing 2 cores with it) as little CPU as possible. HTTP/1.1,
GET and HEAD, a single byte range with If-Range, a strong ETag, and the headers a Hugging
Face Hub ``/resolve/`` answer carries (so ``hf_hub_download`` can be pointed at it).

``--rate BYTES_PER_S`` caps each connection (a CDN's or a university file server's per-connection
limit) and ``--latency SECONDS`` delays each new connection and each answer by that much (a round
trip of a distant server), for the ``segmented`` comparison.

``python -m bench.httpd --fake FILE`` serves FILE from the tests' FakeHttpServer (in memory),
only so that the comparison can say how fast that one is.

Both print the port on the first line of stdout once they listen.
"""

from __future__ import annotations

import argparse
import email.utils
import os
import re
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

FAKE_COMMIT = "b" * 40  # X-Repo-Commit of every /resolve/ answer


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes: with Nagle on, every small answer on a
    # kept-alive connection waits for the client's delayed ACK (~40 ms). Servers turn it off.
    disable_nagle_algorithm = True
    server_version = "bench-sendfile/1"

    def log_message(self, format, *args):  # noqa: A002 - quiet
        pass

    def setup(self):
        super().setup()
        if self.server.latency:
            time.sleep(self.server.latency)  # the handshake's round trip

    def do_HEAD(self):
        self._serve(body=False)

    def do_GET(self):
        self._serve(body=True)

    def _file(self) -> str | None:
        # Only files directly in the root: the last path segment names it (so a Hub-style
        # /datasets/org/name/resolve/<rev>/big.bin serves ROOT/big.bin).
        name = unquote(urlsplit(self.path).path).rsplit("/", 1)[-1]
        if not name or name.startswith(".") or "/" in name:
            return None
        path = os.path.join(self.server.root, name)
        return path if os.path.isfile(path) else None

    def _serve(self, body: bool) -> None:
        path = self._file()
        if path is None:
            self.send_error(404)
            return
        with open(path, "rb") as handle:
            st = os.fstat(handle.fileno())
            size = st.st_size
            etag = f'"{size:x}-{st.st_mtime_ns:x}"'
            start, end, status = 0, size - 1, 200
            wanted = self.headers.get("Range")
            if wanted and self.headers.get("If-Range") in (None, etag):
                m = re.fullmatch(r"bytes=(\d+)-(\d*)", wanted.strip())
                if not m or int(m[1]) >= size:
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{size}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                start, status = int(m[1]), 206
                end = min(int(m[2]), size - 1) if m[2] else size - 1
            self.send_response(status)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(end - start + 1))
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("ETag", etag)
            self.send_header("Last-Modified", email.utils.formatdate(st.st_mtime, usegmt=True))
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
            if "/resolve/" in self.path:
                self.send_header("X-Repo-Commit", FAKE_COMMIT)
                self.send_header("X-Linked-Etag", etag)
                self.send_header("X-Linked-Size", str(size))
            if self.server.latency:
                time.sleep(self.server.latency)  # the request's round trip
            self.end_headers()
            if not body:
                return
            offset, remaining = start, end - start + 1
            rate = self.server.rate
            # Capped: slices of 1/50 s of the rate, each sent no earlier than the rate allows.
            piece, began = (max(1, int(rate / 50)) if rate else 1 << 30), time.monotonic()
            try:
                while remaining > 0:
                    if rate:
                        ahead = began + (offset - start) / rate - time.monotonic()
                        if ahead > 0:
                            time.sleep(ahead)
                    sent = os.sendfile(self.connection.fileno(), handle.fileno(), offset, min(remaining, piece))
                    if sent == 0:
                        break
                    offset += sent
                    remaining -= sent
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.httpd")
    parser.add_argument("root", nargs="?", help="folder whose files are served (sendfile server)")
    parser.add_argument("--fake", help="serve this one file from the tests' FakeHttpServer instead")
    parser.add_argument("--rate", type=float, default=0.0, help="bytes per second per connection (0: uncapped)")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to each new connection and each answer")
    args = parser.parse_args(argv)
    if args.fake:
        from vlmdata.replicas.http_server import FakeHttpServer

        with open(args.fake, "rb") as handle:
            data = handle.read()
        server = FakeHttpServer().start()
        server.add("/" + os.path.basename(args.fake), data)
        del data
        print(server.url.rsplit(":", 1)[1], flush=True)
        try:
            sys.stdin.read()  # until the parent closes our stdin (or kills us)
        finally:
            server.stop()
        return
    httpd = _Server(("127.0.0.1", 0), _Handler)
    httpd.root = os.path.abspath(args.root)
    httpd.rate, httpd.latency = args.rate, args.latency
    print(httpd.server_address[1], flush=True)
    httpd.serve_forever()


if __name__ == "__main__":
    main()
