"""Plain HTTP(S) archives (COCO, GQA, TextVQA, Visual Genome): a HEAD tells what changed."""

from __future__ import annotations

from ..catalog import Artifact, Source
from .digest import Expected
from .http import PermanentFetchError, probe
from .remote import Context, Remote, Transport


def http_remotes(source: Source, artifacts: list[Artifact], ctx: Context) -> list[Remote]:
    remotes = []
    for artifact in artifacts:
        url = ctx.mirrors.rewrite(artifact.url)
        seen = probe(url, policy=ctx.policy)
        if artifact.size is not None and seen["size"] is not None and seen["size"] != artifact.size:
            # Fail before moving gigabytes that cannot verify.
            raise PermanentFetchError(f"{url}: upstream has {seen['size']} bytes, the catalog expects {artifact.size}: upstream changed or the mirror is wrong; update the catalog's size")
        expected = Expected(size=artifact.size if artifact.size is not None else seen["size"], sha256=artifact.sha256, md5=artifact.md5)
        remotes.append(Remote(artifact, url, expected, seen))
    return remotes


HTTP = Transport(http_remotes)
