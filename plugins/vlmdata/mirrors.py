"""URL-prefix rewrites: mirrors for slow links, fallbacks, the demo and the tests.

The map is a YAML (or JSON) mapping of upstream prefix to replacement, read from the file
named by ``VLMDATA_MIRRORS`` (or the Airflow Variable ``vlmdata_mirrors``, which the
operators pass in). The longest matching prefix wins::

    https://huggingface.co: https://hf-mirror.example.org
    http://images.cocodataset.org/zips/: http://127.0.0.1:8000/coco/
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml


class MirrorError(ValueError):
    pass


class Mirrors:
    def __init__(self, rules: dict[str, str] | None = None):
        rules = rules or {}
        for prefix, replacement in rules.items():
            if not isinstance(prefix, str) or not isinstance(replacement, str) or "://" not in prefix:
                raise MirrorError(f"mirror rule {prefix!r}: {replacement!r} must map a URL prefix to a URL prefix")
        # Longest prefix first, so a specific rule beats a host-wide one.
        self.rules = dict(sorted(rules.items(), key=lambda kv: -len(kv[0])))

    def rewrite(self, url: str) -> str:
        for prefix, replacement in self.rules.items():
            if url.startswith(prefix):
                return replacement + url[len(prefix):]
        return url

    @classmethod
    def parse(cls, text: str, where: str) -> Mirrors:
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise MirrorError(f"{where}: not valid YAML/JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise MirrorError(f"{where}: expected a mapping of URL prefixes")
        try:
            return cls(data)
        except MirrorError as exc:
            raise MirrorError(f"{where}: {exc}") from exc

    @classmethod
    def from_env(cls, variable_text: str | None = None) -> Mirrors:
        """The Airflow Variable's text if given, else the file named by VLMDATA_MIRRORS, else none."""
        if variable_text:
            return cls.parse(variable_text, "Airflow Variable vlmdata_mirrors")
        path = os.environ.get("VLMDATA_MIRRORS")
        if not path:
            return cls()
        try:
            return cls.parse(Path(path).read_text(), path)
        except OSError as exc:
            raise MirrorError(f"VLMDATA_MIRRORS={path}: {exc}") from exc
