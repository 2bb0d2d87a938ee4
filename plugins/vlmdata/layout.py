"""Layout profiles: the trees training scripts expect, as views over the data tree.

Sources land once, in the ShareGPT4V/ConvLLaVA tree under ``data/``. A profile maps the
paths a training script expects to paths of that tree: on POSIX it materialises them as
relative symlinks (no byte is copied, and the tree stays valid wherever it is mounted); on
S3, which has no links, the profile's resolved map is the view (``_vlmdata/layouts/<id>.json``)
and no object is duplicated. A profile materialises with whatever sources are present and
reports what is missing.
"""

from __future__ import annotations

import logging
import posixpath
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from .catalog import DEFAULT_CATALOG, TreePath, load_models
from .lease import current_guard, exclusive
from .manifest import now
from .storage import DATA_PREFIX, STATE_PREFIX, Storage

log = logging.getLogger("vlmdata.layout")

LAYOUTS_DIR = DEFAULT_CATALOG.parent / "layouts"


class Profile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    id: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    title: str
    description: str = ""
    root: TreePath = Field(description="where the view lives under the storage root (e.g. playground/data)")
    links: dict[str, TreePath] = Field(default_factory=dict, description="view path -> data tree path")
    expect: list[TreePath] = Field(default_factory=list, description="data tree paths the training scripts read")


def load_profiles(folder: Path = LAYOUTS_DIR) -> dict[str, Profile]:
    return load_models(folder, Profile)


def report_key(profile_id: str) -> str:
    """The report of a profile's last materialisation (on S3, its view: the path map)."""
    return f"{STATE_PREFIX}/layouts/{profile_id}.json"


def _present(storage: Storage, key: str) -> bool:
    """A file, or a folder holding at least one file."""
    return storage.exists(key) or next(iter(storage.list(key)), None) is not None


@exclusive(lambda profile, storage: (storage, f"layout/{profile.id}"))
def materialise(profile: Profile, storage: Storage) -> dict:
    """Make the profile's views and write its report; one writer of a profile at a time."""
    guard = current_guard()
    linked, missing = {}, []
    for view_path, tree_path in profile.links.items():
        view_key = posixpath.join(profile.root, view_path)
        target_key = posixpath.join(DATA_PREFIX, tree_path)
        if not _present(storage, target_key):
            missing.append(tree_path)
            continue
        if storage.supports_links and view_key != target_key:
            guard()
            storage.link(view_key, target_key)
        linked[view_key] = target_key
    for tree_path in profile.expect:
        if tree_path not in missing and not _present(storage, posixpath.join(DATA_PREFIX, tree_path)):
            missing.append(tree_path)
    report = {"profile": profile.id, "root": profile.root, "built_at": now(), "views": linked, "missing": sorted(missing), "links": storage.supports_links}
    guard()
    storage.write_json(report_key(profile.id), report)
    log.info("%s: %d paths in place under %s, %d missing%s", profile.id, len(linked), profile.root, len(missing), f": {sorted(missing)}" if missing else "")
    return report
