"""The built-in catalog loads and hangs together; bad catalog files fail with a useful message."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import pytest
import yaml

from vlmdata.catalog import DEFAULT_CATALOG, CatalogError, load_catalog, load_source

EXPECTED_IDS = {
    "allava_4v",
    "coco_train2017",
    "gqa",
    "llava_cc3m_pretrain_595k",
    "llava_gpt4_prompts",
    "llava_instruct_150k",
    "llava_pretrain_lcs558k",
    "ocr_vqa",
    "sa1b",
    "sharegpt4v",
    "sharegpt4v_sam_9k",
    "textvqa",
    "vision_flan",
    "visual_genome",
    "webdata",
}

BUILT_IN_FILES = sorted((DEFAULT_CATALOG / "sources").glob("*.yaml"))


@pytest.fixture(autouse=True)
def _no_user_catalog(monkeypatch):
    monkeypatch.delenv("VLMDATA_CATALOG", raising=False)


@pytest.fixture(scope="module")
def catalog():
    return load_catalog(extra="")


def _is_tree_path(value: str) -> bool:
    path = PurePosixPath(value)
    return bool(value.strip()) and not path.is_absolute() and ".." not in path.parts


# ---------------------------------------------------------------- the built-in catalog


@pytest.mark.parametrize("path", BUILT_IN_FILES, ids=lambda p: p.stem)
def test_every_built_in_file_loads(path):
    source = load_source(path)
    assert source.id == path.stem


def test_built_in_catalog_has_every_expected_source(catalog):
    assert len(BUILT_IN_FILES) == len(EXPECTED_IDS)
    assert set(catalog) == EXPECTED_IDS


def test_every_placement_is_a_relative_tree_path(catalog):
    for source in catalog.values():
        places = []
        for artifact in source.artifacts:
            places.append(artifact.target if artifact.target is not None else artifact.extract.into)
            if artifact.annotation:
                places.append(artifact.annotation.image_folder)
                for expected, actual in artifact.annotation.links.items():
                    places += [expected, actual]
        if source.crawl:
            places.append(source.crawl.into)
        for place in places:
            assert _is_tree_path(place), f"{source.id}: {place!r} is not a relative data-tree path"


def test_every_target_is_unique_across_the_catalog(catalog):
    seen: dict[str, str] = {}
    for source in catalog.values():
        for artifact in source.artifacts:
            if artifact.target is None:
                continue
            assert artifact.target not in seen, f"{artifact.target} placed by {seen.get(artifact.target)} and {source.id}"
            seen[artifact.target] = source.id


def test_every_annotation_reference_names_an_existing_source(catalog):
    for source in catalog.values():
        for artifact in source.artifacts:
            if artifact.annotation:
                unknown = set(artifact.annotation.references) - set(catalog)
                assert not unknown, f"{source.id}/{artifact.name} references unknown sources {sorted(unknown)}"
        if source.crawl:
            assert source.crawl.list_source in catalog
            catalog[source.crawl.list_source].artifact(source.crawl.list_artifact)


def test_every_link_points_into_a_referenced_source(catalog):
    for source in catalog.values():
        for artifact in source.artifacts:
            if not (artifact.annotation and artifact.annotation.links):
                continue
            folders = [
                PurePosixPath(a.extract.into)
                for ref in artifact.annotation.references
                for a in catalog[ref].artifacts
                if a.extract
            ]
            for actual in artifact.annotation.links.values():
                assert any(PurePosixPath(actual).is_relative_to(f) for f in folders), (
                    f"{source.id}/{artifact.name}: link target {actual} is filled by none of its references"
                )


def test_seeds_are_known_pages(catalog):
    for source in catalog.values():
        assert set(source.seeds) <= {"llava", "convllava"}, source.id


def test_licences_needing_acknowledgement(catalog):
    acknowledged = {sid for sid, source in catalog.items() if source.licence.acknowledge}
    assert {"sa1b", "webdata", "llava_cc3m_pretrain_595k"} <= acknowledged
    for sid in acknowledged:
        assert catalog[sid].licence.notice, f"{sid}: acknowledgement without a notice"


# ---------------------------------------------------------------- bad files


def _valid_entry(source_id: str = "demo") -> dict:
    return {
        "id": source_id,
        "title": "Demo",
        "kind": "hf",
        "licence": {"name": "CC BY 4.0"},
        "hf": {"repo": "someone/demo"},
        "artifacts": [{"name": "a.json", "path": "a.json", "target": "demo/a.json", "size": 10}],
    }


def _write(folder: Path, name: str, data: dict | str) -> Path:
    path = folder / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return path


def _broken(kind: str) -> tuple[str, dict | str, str]:
    """(file name, content, text the error must name besides the file: the field, or where the YAML breaks)."""
    entry = _valid_entry()
    if kind == "invalid_yaml":
        return "demo.yaml", "id: demo\ntitle: [unclosed\n", "not valid YAML: while parsing"
    if kind == "unknown_key":
        entry["artifacts"][0]["sizes"] = 10
        return "demo.yaml", entry, "artifacts.0.sizes"
    if kind == "size_wrong_type":
        entry["artifacts"][0]["size"] = "ten bytes"
        return "demo.yaml", entry, "artifacts.0.size"
    if kind == "hf_without_section":
        del entry["hf"]
        return "demo.yaml", entry, "`hf:`"
    if kind == "target_escapes_tree":
        entry["artifacts"][0]["target"] = "demo/../../etc/a.json"
        return "demo.yaml", entry, "artifacts.0.target"
    if kind == "id_not_file_name":
        return "other.yaml", entry, "id:"
    if kind == "truncated_sha256":  # a checksum copied short would pass any file that starts alike
        entry["artifacts"][0]["sha256"] = "5c5f0f4ee58d7b74"
        return "demo.yaml", entry, "artifacts.0.sha256"
    if kind == "truncated_md5":
        entry["artifacts"][0]["md5"] = "5c5f0f4ee58d"
        return "demo.yaml", entry, "artifacts.0.md5"
    raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind",
    ["invalid_yaml", "unknown_key", "size_wrong_type", "hf_without_section", "target_escapes_tree", "id_not_file_name", "truncated_sha256", "truncated_md5"],
)
def test_bad_file_names_the_file_and_the_field(tmp_path, kind):
    name, content, field = _broken(kind)
    path = _write(tmp_path, name, content)
    with pytest.raises(CatalogError) as caught:
        load_catalog(extra=tmp_path)
    message = str(caught.value)
    assert str(path) in message
    assert field in message
    if kind == "invalid_yaml":
        assert "line 2" in message  # the line of the broken `title:` field


def test_valid_user_file_adds_a_source(tmp_path):
    _write(tmp_path, "demo.yaml", _valid_entry())
    sources = load_catalog(extra=tmp_path)
    assert set(sources) == EXPECTED_IDS | {"demo"}


def test_user_file_with_a_built_in_id_replaces_the_entry(tmp_path):
    entry = _valid_entry("gqa")
    entry["title"] = "GQA from a local mirror"
    _write(tmp_path, "gqa.yaml", entry)
    sources = load_catalog(extra=tmp_path)
    assert set(sources) == EXPECTED_IDS
    assert sources["gqa"].title == "GQA from a local mirror"
    assert sources["gqa"].kind == "hf"
    assert [a.name for a in sources["gqa"].artifacts] == ["a.json"]


def test_user_catalog_from_the_environment(tmp_path, monkeypatch):
    entry = _valid_entry("textvqa")
    entry["title"] = "TextVQA elsewhere"
    _write(tmp_path, "textvqa.yaml", entry)
    monkeypatch.setenv("VLMDATA_CATALOG", str(tmp_path))
    assert load_catalog()["textvqa"].title == "TextVQA elsewhere"


def test_missing_user_folder_is_an_error(tmp_path):
    with pytest.raises(CatalogError, match="does not exist"):
        load_catalog(extra=tmp_path / "absent")


def test_published_facts_are_pinned():
    """ShareGPT4V publishes the full sha256 of its two large files (a corrupt or changed file on
    the Hub then fails the fetch); ConvLLaVA stage 2 trains on the whole Vision-Flan file."""
    from vlmdata.mix import load_recipes

    sharegpt4v = load_catalog()["sharegpt4v"]
    assert sharegpt4v.artifact("share-captioner_coco_lcs_sam_1246k_1107.json").sha256 == "5c5f0f4ee58d7b7467f9e49eb5b17f930890a8a0c18a4e2a5be6b15714ef8b3c"
    assert sharegpt4v.artifact("sharegpt4v_mix665k_cap23k_coco-ap9k_lcs3k_sam9k_div2k.json").sha256 == "61b43cc69b38c642105fe60ea732d96f57b4c8a18d51eb2379746ccebfa9e11e"
    vflan = next(c for c in load_recipes()["convllava_stage2"].components if c.source == "vision_flan")
    assert vflan.take == "all"
