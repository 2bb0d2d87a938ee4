"""The catalog: one YAML file per source, validated into typed models.

A source says where its bytes come from (its ``kind`` and the matching upstream section),
which artifacts it has (files with what we know of their size and checksums), where each
artifact lands in the data tree (a plain file at ``target``, or an archive extracted
``into`` a folder), and under which licence. Values tagged [M] or [U] (docs/facts.md) are
defaults the pipeline checks against what it actually sees; the manifest records that.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import Annotated, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ByteSize, ConfigDict, Field, ValidationError, model_validator

from .kinds import KINDS
from .progress import human_bytes

# include/ (catalog, layouts, recipes) is package data (``vlmdata/include``: in a checkout a link
# to the repository's include/, in a wheel or an image a copy); VLMDATA_INCLUDE points elsewhere.
INCLUDE_DIR = Path(os.environ.get("VLMDATA_INCLUDE") or str(resources.files("vlmdata") / "include"))
DEFAULT_CATALOG = INCLUDE_DIR / "catalog"



class CatalogError(ValueError):
    """A catalog file that cannot be used; the message names the file and the field."""


class _Model(BaseModel):
    # Unknown keys are typos far more often than intent: reject them.
    model_config = ConfigDict(extra="forbid", frozen=True)


def _relative_tree_path(value: str) -> str:
    path = PurePosixPath(value)
    if path.is_absolute() or ".." in path.parts or not value.strip():
        raise ValueError(f"must be a relative path inside the data tree, got {value!r}")
    return str(path)


TreePath = Annotated[str, AfterValidator(_relative_tree_path)]


def _known_kind(value: str) -> str:
    if value not in KINDS:
        raise ValueError(f"unknown kind {value!r}; known: {', '.join(KINDS)} (vlmdata.kinds)")
    return value


Kind = Annotated[str, AfterValidator(_known_kind)]  # a name of vlmdata.kinds.KINDS


class Extract(_Model):
    """How an archive is unpacked into the data tree."""

    into: TreePath = Field(description="folder of the data tree the archive's members land in")
    strip_components: int = Field(0, ge=0, description="leading path parts to drop, as tar's option")
    flatten: bool = Field(False, description="drop every folder, as `unzip -j`")
    include: list[str] = Field(default_factory=list, description="glob patterns of members to keep")
    images: bool = Field(True, description="the members are images to decode-check")


class Annotation(_Model):
    """Marks an artifact as a LLaVA conversation-format annotation file."""

    image_folder: TreePath = Field(description="folder of the data tree that the records' `image` paths are relative to")
    references: list[str] = Field(default_factory=list, description="sources whose images the records point to")
    links: dict[TreePath, TreePath] = Field(
        default_factory=dict,
        description="folder the records expect -> folder of the data tree holding the same files (the layout links them)",
    )


class Artifact(_Model):
    """One upstream file."""

    name: str = Field(description="unique within the source; the file name unless it clashes")
    url: str | None = Field(None, description="http: the download URL")
    path: str | None = Field(None, description="hf / github: path inside the repository")
    drive_id: str | None = Field(None, description="gdrive: the file id")
    size: int | None = Field(None, ge=0, description="bytes, where known")
    approx_size: ByteSize | None = Field(None, description="where the exact size is not known: about how big (e.g. `9.4 GB`); a dry run without upstream answers with it")
    sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")
    md5: str | None = Field(None, pattern=r"^[0-9a-f]{32}$")
    target: TreePath | None = Field(None, description="path of the file in the data tree, for files kept as they are")
    extract: Extract | None = None
    annotation: Annotation | None = None
    optional: bool = Field(False, description="skipped unless asked for (large extras)")
    note: str | None = None

    @property
    def is_zip(self) -> bool:
        """An archive to extract that is a zip by its name (what ``needed_by`` can read in part)."""
        return self.extract is not None and any((name or "").lower().endswith(".zip") for name in (self.name, self.url, self.path))

    @model_validator(mode="after")
    def _placed_once(self) -> Artifact:
        if (self.target is None) == (self.extract is None):
            raise ValueError("give exactly one of `target` (keep the file) or `extract` (unpack the archive)")
        if self.annotation and self.extract:
            raise ValueError("an annotation file is kept as it is: use `target`, not `extract`")
        return self


class Licence(_Model):
    name: str
    url: str | None = None
    acknowledge: bool = Field(False, description="a download needs the user's explicit acknowledgement")
    notice: str | None = Field(None, description="what the user acknowledges")


class HfUpstream(_Model):
    repo: str = Field(pattern=r"^[\w.-]+/[\w.-]+$")
    repo_type: Literal["dataset", "model"] = "dataset"
    revision: str = Field("main", description="branch, tag or commit; a 40-hex commit pins it")


class GithubUpstream(_Model):
    repo: str = Field(pattern=r"^[\w.-]+/[\w.-]+$")
    ref: str = Field("main", description="branch, tag or commit; the manifest records the commit fetched")
    folder: str = Field(description="folder of the repository whose files are fetched")
    into: TreePath = Field(description="folder of the data tree the files land in, keeping their sub-folders")


class GdriveUpstream(_Model):
    folder_id: str | None = None


class Sa1bUpstream(_Model):
    links_variable: str = Field("vlmdata_sa1b_links", description="Airflow Variable (or file path) holding Meta's links file")
    first_shard: int = Field(0, ge=0)
    last_shard: int = Field(50, ge=0)
    keep_masks: bool = False
    approx_shard_size: ByteSize | None = Field(None, description="about how big one tar is (a dry run without upstream answers with it)")


class CrawlUpstream(_Model):
    list_source: str = Field(description="source whose artifact lists the URLs")
    list_artifact: str
    into: TreePath = Field(description="folder of the data tree the images land in")
    fallback_mirrors: list[str] = Field(default_factory=list, description="archives that fill the gaps")


class Integrity(_Model):
    """When the integrity check fails rather than warns (fractions of what was checked)."""

    max_broken_images: float = Field(0.01, ge=0, le=1, description="images that do not decode; VG_100K_2 has ~0.2%")
    max_unresolved_references: float = Field(1.0, ge=0, le=1, description="annotation images missing or broken; 1.0 never fails (sources may be absent on purpose)")
    max_malformed_records: float = Field(0.01, ge=0, le=1)


class Source(_Model):
    id: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    title: str
    kind: Kind
    description: str = ""
    homepage: str | None = None
    seeds: list[str] = Field(default_factory=list, description="which seed pages name this source")
    licence: Licence
    refresh: str | None = Field("@weekly", description="Airflow schedule of the refresh probe, or null")
    hf: HfUpstream | None = None
    github: GithubUpstream | None = None
    gdrive: GdriveUpstream | None = None
    sa1b: Sa1bUpstream | None = None
    crawl: CrawlUpstream | None = None
    artifacts: list[Artifact] = Field(default_factory=list)
    size_estimate: ByteSize | None = Field(None, description="about how big the whole source is, where its artifacts' sizes do not add up to it (files listed only upstream, a crawl, sizes nobody publishes); a comment says where the number comes from")
    integrity: Integrity = Field(default_factory=Integrity)

    @model_validator(mode="after")
    def _upstream_matches_kind(self) -> Source:
        kind = KINDS[self.kind]
        section, locator = kind.section, kind.locator
        if section and getattr(self, section) is None:
            raise ValueError(f"kind {self.kind!r} needs a `{section}:` section")
        names = [a.name for a in self.artifacts]
        if len(names) != len(set(names)):
            raise ValueError(f"artifact names must be unique, got {names}")
        for artifact in self.artifacts:
            if locator and getattr(artifact, locator) is None:
                raise ValueError(f"artifact {artifact.name!r}: kind {self.kind!r} needs `{locator}`")
        return self

    @property
    def references(self) -> list[str]:
        """Other sources whose images this source's annotation files point to."""
        refs = {ref for a in self.artifacts if a.annotation for ref in a.annotation.references}
        return sorted(refs - {self.id})

    def artifact(self, name: str) -> Artifact:
        for artifact in self.artifacts:
            if artifact.name == name:
                return artifact
        raise KeyError(f"source {self.id!r} has no artifact {name!r}")

    @property
    def declared_size(self) -> int | None:
        """The exact size of the required artifacts, when the catalog knows every one."""
        sizes = [a.size for a in self.artifacts if not a.optional]
        return None if not sizes or any(s is None for s in sizes) else sum(sizes)

    @property
    def approx_size(self) -> int | None:
        """About how big the required artifacts are: exact sizes, else their ``approx_size``
        (SA-1B: its range of tars at ``approx_shard_size`` each), else the source's
        ``size_estimate``."""
        if self.sa1b is not None and self.sa1b.approx_shard_size is not None:
            return (self.sa1b.last_shard - self.sa1b.first_shard + 1) * int(self.sa1b.approx_shard_size)
        sizes = [a.size if a.size is not None else a.approx_size for a in self.artifacts if not a.optional]
        if sizes and all(s is not None for s in sizes):
            return sum(int(s) for s in sizes)
        return None if self.size_estimate is None else int(self.size_estimate)

    def size_text(self, about: str = "~", unknown: str = "?") -> str:
        """The exact size ("18.0 GiB"), else ``about`` and the approximate one, else ``unknown``."""
        if self.declared_size is not None:
            return human_bytes(self.declared_size)
        return unknown if self.approx_size is None else f"{about}{human_bytes(self.approx_size)}"


def _describe(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        where = ".".join(str(p) for p in item["loc"]) or "(top level)"
        lines.append(f"{where}: {item['msg']}")
    return "; ".join(lines)


# libyaml's safe loader where PyYAML was built with it: the DAG files load the catalog at every
# parse, and the pure-Python loader was most of a parse's CPU (bench/ row `startup`).
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _load_model(path: Path, model: type[BaseModel]):
    try:
        data = yaml.load(path.read_text(), Loader=_YAML_LOADER)
    except yaml.YAMLError as exc:
        raise CatalogError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise CatalogError(f"{path}: expected a mapping of fields, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise CatalogError(f"{path}: {_describe(exc)}") from exc


def load_models(folder: Path, model: type[BaseModel]) -> dict:
    """Every ``*.yaml`` of a folder validated as ``model``, by id; errors name the file and field."""
    items = (_load_model(path, model) for path in sorted(folder.glob("*.yaml")))
    return {item.id: item for item in items}


def load_source(path: Path) -> Source:
    source = _load_model(path, Source)
    if source.id != path.stem:
        raise CatalogError(f"{path}: id: {source.id!r} must match the file name {path.stem!r}")
    return source


def catalog_dirs(extra: str | os.PathLike | None = None) -> list[Path]:
    """The built-in catalog, then the user's (``--catalog`` or ``VLMDATA_CATALOG``, ``:``-separated)."""
    dirs = [DEFAULT_CATALOG]
    extra = extra if extra is not None else os.environ.get("VLMDATA_CATALOG")
    if extra:
        dirs += [Path(p) for p in str(extra).split(os.pathsep) if p]
    return dirs


def load_catalog(extra: str | os.PathLike | None = None) -> dict[str, Source]:
    """Every source, by id. A user's file with a built-in id replaces the built-in entry."""
    sources: dict[str, Source] = {}
    for folder in catalog_dirs(extra):
        if not folder.is_dir():
            hint = " (the package's include/ folder; VLMDATA_INCLUDE may point to another)" if folder == DEFAULT_CATALOG else ""
            raise CatalogError(f"{folder}: catalog folder does not exist{hint}")
        # A catalog folder holds sources/*.yaml; a user's folder may hold the YAML files directly.
        files_dir = folder / "sources" if (folder / "sources").is_dir() else folder
        for path in sorted(files_dir.glob("*.yaml")):
            source = load_source(path)
            sources[source.id] = source
    return sources
