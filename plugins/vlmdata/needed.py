"""``needed_by`` generalised: what annotation files (or recipes) need from a source's zips.

An acquisition given ``needed_by`` (the DAG parameter, CLI ``--needed-by``) fetches only what
the named annotation files reference and the storage lacks. An entry is a data-tree path of an
annotation file, or ``recipe:<id>``: the annotation files of that recipe's components. SA-1B's
transport chooses whole tars by it (``fetch/sa1b.py``); for a kind that reads zips in part
(``vlmdata.kinds``: ``partial_zip``) each zip artifact gets the members the files reference
under its extraction folder (:func:`wanted_by_artifact`), which the fetch reads alone over HTTP
Range requests (``fetch/zip_members.py``, docs/partial-zip.md).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from .annotations import Records, fast_or_json
from .catalog import Artifact, Source
from .fetch.zip_members import wanted_members
from .manifest import ArtifactRecord, Manifest
from .storage import DATA_PREFIX, Storage

RECIPE = "recipe:"  # a needed_by entry naming a recipe instead of an annotation file


def annotation_files(entries: Iterable[str], catalog: Mapping[str, Source]) -> list[str]:
    """The data-tree paths of the annotation files ``entries`` name (``recipe:<id>``: its
    components' files, as the catalog places them), each once, in order."""
    from .mix import load_recipes  # the recipes only when one is named

    found: dict[str, None] = {}
    recipes = None
    for entry in entries:
        entry = entry.strip()
        if not entry.startswith(RECIPE):
            found[entry.strip("/")] = None
            continue
        recipes = recipes if recipes is not None else load_recipes()
        recipe_id = entry[len(RECIPE):]
        if recipe_id not in recipes:
            raise KeyError(f"needed_by: no recipe {recipe_id!r}; the recipes: {', '.join(sorted(recipes))}")
        for component in recipes[recipe_id].components:
            artifact = next((a for a in catalog[component.source].artifacts if a.name == component.artifact), None) if component.source in catalog else None
            if artifact is None or not artifact.target:
                raise KeyError(f"needed_by: recipe {recipe_id!r} reads {component.source}:{component.artifact}, which the catalog does not place as a file")
            found[artifact.target] = None
    return list(found)


def wanted_by_artifact(storage: Storage, catalog: Mapping[str, Source], paths: list[str], artifacts: list[Artifact]) -> dict[str, list[str]]:
    """For each zip of ``artifacts``: the members (extraction-folder paths) that the annotation
    files at ``paths`` reference, as :func:`~.fetch.zip_members.wanted_members` maps them. A file
    the catalog declares as an annotation is read relative to its ``image_folder``, through its
    ``links``; any other relative to the data tree."""
    declared = {a.target: a.annotation for s in catalog.values() for a in s.artifacts if a.annotation and a.target}
    zips = [a for a in artifacts if a.is_zip]
    wanted: dict[str, dict[str, None]] = {a.name: {} for a in zips}
    for path in paths:
        key = f"{DATA_PREFIX}/{path}"
        size = storage.size(key)
        if size is None:
            raise FileNotFoundError(f"needed_by: {path} is not in the data tree ({key} on {storage.url}): acquire the source of that annotation file first")
        annotation = declared.get(path)
        folder, links = (annotation.image_folder, annotation.links) if annotation else ("", {})

        def members_of(fast: bool, key=key, path=path, size=size, folder=folder, links=links) -> dict[str, list[str]]:
            with storage.open_read(key) as handle:
                records = Records.read(handle, path, size=size, fast=fast)
            return {a.name: wanted_members(records, folder, a.extract.into, links) for a in zips}

        for name, members in fast_or_json(members_of, path).items():
            wanted[name].update(dict.fromkeys(members))
    return {name: list(members) for name, members in wanted.items() if members}


def quarantined_members(manifest: Manifest, folder: str) -> set[str]:
    """The members (extraction-folder paths) verify moved out of ``folder``: not missing for a
    refresh, as after a full extraction (``refetch_quarantined`` clears the list)."""
    return {key[len(folder) + 1:] for key in manifest.quarantined() if key.startswith(folder + "/")}


def holds_wanted(manifest: Manifest, record: ArtifactRecord, wanted: list[str] | None) -> bool:
    """Whether the members of ``wanted`` (None: every member) that the archive holds (its
    directory, when read) are all in the index of what was placed, or in the quarantine."""
    folder = record.placement.folder or ""
    placed = {path[len(folder) + 1:] for path, _size, _crc in manifest.index(record.name)} | quarantined_members(manifest, folder)
    directory = manifest.directory(record.name)
    if directory is None:  # not read in part by this version of the code: what the record counts
        return wanted is not None and set(wanted) <= placed
    held = set(directory) if wanted is None else set(wanted) & set(directory)
    return held <= placed
