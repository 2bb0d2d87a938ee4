"""A fake GitHub: the two REST calls the transport makes, and raw files, on FakeHttpServer."""

from __future__ import annotations

import hashlib

from .hf_hub import git_blob_sha1
from .http_server import FakeHttpServer, Resource, Response


class FakeGitHub:
    """``add_commit(repo, files, ref="main") -> sha``; API under ``/api``, raw files under ``/raw``."""

    def __init__(self, server: FakeHttpServer):
        self.server = server
        self.refs: dict[tuple[str, str], str] = {}
        self.commits: dict[str, dict[str, bytes]] = {}
        repo = r"(?P<repo>[^/]+/[^/]+)"
        server.route("GET", rf"/api/repos/{repo}/commits/(?P<ref>[^/?]+)", self._commit)
        server.route("GET", rf"/api/repos/{repo}/git/trees/(?P<sha>[0-9a-f]{{40}})(\?.*)?", self._tree)
        server.route("GET", rf"/raw/{repo}/(?P<sha>[0-9a-f]{{40}})/(?P<path>.+)", self._raw)

    def mirrors(self) -> dict[str, str]:
        return {"https://api.github.com": f"{self.server.url}/api", "https://raw.githubusercontent.com": f"{self.server.url}/raw"}

    def add_commit(self, repo: str, files: dict[str, bytes], ref: str = "main") -> str:
        sha = hashlib.sha1(repr((repo, sorted(files.items()), len(self.commits))).encode()).hexdigest()
        self.commits[sha] = dict(files)
        self.refs[(repo, ref)] = sha
        return sha

    def _commit(self, request, match):
        sha = self.refs.get((match["repo"], match["ref"])) or (match["ref"] if match["ref"] in self.commits else None)
        return Response.json({"sha": sha}) if sha else Response.json({"message": "Not Found"}, status=404)

    def _tree(self, request, match):
        files = self.commits.get(match["sha"])
        if files is None:
            return Response.json({"message": "Not Found"}, status=404)
        tree = [{"path": p, "type": "blob", "sha": git_blob_sha1(d), "size": len(d)} for p, d in sorted(files.items())]
        return Response.json({"sha": match["sha"], "tree": tree, "truncated": False})

    def _raw(self, request, match):
        data = self.commits.get(match["sha"], {}).get(match["path"])
        return Resource(data=data, etag=f'"{git_blob_sha1(data)}"', last_modified=None, content_type="text/plain", headers={}) if data is not None else Response(404, {}, b"404: Not Found")
