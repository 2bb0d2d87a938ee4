"""Nothing changed, nothing done (issue 10, item 5): a mixture built again with the same inputs,
images, recipe, seed and format returns its lock without writing anything; any change builds."""

from __future__ import annotations

import hashlib
import logging

import pytest

from tests.unit.test_mix_fast import ARTIFACT, BODY, BROKEN, IMAGES_SOURCE, NAMES, SOURCE, lay_out, recipe
from vlmdata import mix
from vlmdata.catalog import load_catalog
from vlmdata.manifest import Manifest
from vlmdata.mix import build, latest_lock_key, lock_of, output_key, rebuild
from vlmdata.verify import image_key, report_key


def snapshot(storage) -> dict:
    """Every file of the mixture folder: its size and storage stamp (a rewrite changes it)."""
    return {key: (size, stamp) for key, size, stamp in storage.list_stamped("mixtures/fast_mix")}


def first_build(storage, **recipe_fields):
    lay_out(storage)
    the_recipe = recipe(**recipe_fields)
    return the_recipe, build(the_recipe, storage, load_catalog())


def test_an_unchanged_build_returns_its_lock_and_writes_nothing(storage, caplog):
    the_recipe, lock = first_build(storage)
    before = snapshot(storage)
    with caplog.at_level(logging.INFO, logger="vlmdata.mix"):
        again = build(the_recipe, storage, load_catalog())
    assert again.to_json() == lock.to_json()  # the first build's lock, built_at included
    assert snapshot(storage) == before  # no file written again, the lock and summary included
    assert any("nothing changed" in r.getMessage() for r in caplog.records)
    # so does a rebuild from the lock; forced, it builds the same bytes again
    assert rebuild(lock, storage, load_catalog()).built_at == lock.built_at
    forced = build(the_recipe, storage, load_catalog(), force=True)
    assert forced.output.sha256 == lock.output.sha256 and snapshot(storage) != before


def changed_input(storage, the_recipe):
    body = BODY.replace(b'"A cat."', b'"A kitten."')
    lay_out(storage, body)
    return the_recipe


def changed_revision(storage, the_recipe):
    manifest = Manifest(storage, SOURCE)
    manifest.save_artifact(manifest.artifact(ARTIFACT).model_copy(update={"revision": "c" * 40}))
    return the_recipe


def changed_images(storage, the_recipe):  # verify found another image broken since
    annotation = load_catalog()[SOURCE].artifact(ARTIFACT).annotation
    storage.write_json(report_key(IMAGES_SOURCE, "broken.json"), {image_key(annotation, name): "does not decode" for name in (BROKEN, NAMES[0])})
    return the_recipe


def missing_output(storage, the_recipe):
    storage.delete(output_key(the_recipe.id, "json"))
    return the_recipe


def altered_output(storage, the_recipe):  # the same size, other bytes
    data = bytearray(storage.read_bytes(output_key(the_recipe.id, "json")))
    data[1:3] = b"{}" if data[1:3] != b"{}" else b"[]"
    storage.write_bytes(output_key(the_recipe.id, "json"), bytes(data))
    return the_recipe


def changed_recipe(storage, the_recipe):
    return the_recipe.model_copy(update={"max_turns": 1})


@pytest.mark.parametrize("change", [changed_input, changed_revision, changed_images, missing_output, altered_output, changed_recipe])
def test_any_change_builds_again(storage, change):
    the_recipe, lock = first_build(storage)
    the_recipe = change(storage, the_recipe)
    again = build(the_recipe, storage, load_catalog())
    assert (again.built_at, again.stamps) != (lock.built_at, lock.stamps)  # built: written again
    output = storage.read_bytes(output_key(the_recipe.id, "json"))
    assert again.output.sha256 == hashlib.sha256(output).hexdigest()  # the output the new lock pins
    if change is changed_images:
        assert [d.image for d in again.dropped if d.reason == "image broken"] == [NAMES[0], BROKEN]
    if change is changed_input:
        assert b"A kitten." in output and again.inputs[0].sha256 != lock.inputs[0].sha256


def test_another_seed_or_format_is_its_own_build_and_the_latest_lock_follows(storage):
    the_recipe, lock = first_build(storage, take=0.5)
    catalog = load_catalog()
    other_seed = build(the_recipe, storage, catalog, seed=7)
    other_format = build(the_recipe, storage, catalog, fmt="jsonl")
    assert {other_seed.output.key, other_format.output.key, lock.output.key} == {
        output_key("fast_mix", "json", 7), output_key("fast_mix", "jsonl"), output_key("fast_mix", "json")}
    assert mix.read_lock(storage, latest_lock_key("fast_mix")).output.key == other_format.output.key
    # the recipe's own seed and format again: nothing built, but it is the latest build again
    again = build(the_recipe, storage, catalog)
    assert again.built_at == lock.built_at
    assert mix.read_lock(storage, latest_lock_key("fast_mix")).output.key == lock.output.key
    assert mix.read_lock(storage, lock_of(lock.output.key)).to_json() == lock.to_json()


def test_a_lock_without_the_basis_of_older_versions_builds_again(storage):
    the_recipe, lock = first_build(storage)
    older = lock.to_json()
    del older["basis"], older["stamps"]
    storage.write_json(lock_of(lock.output.key), older)
    again = build(the_recipe, storage, load_catalog())
    assert again.basis == lock.basis and (again.built_at, again.stamps) != (lock.built_at, lock.stamps)


def test_the_command_line_builds_again_only_with_force(tmp_path):
    from vlmdata.cli import main
    from vlmdata.storage import LocalStorage

    storage = LocalStorage(tmp_path / "root")
    lay_out(storage)
    command = ["--root", str(tmp_path / "root"), "mix", "llava_instruct_150k"]
    assert main(command) == 0
    lock_key = lock_of(output_key("llava_instruct_150k", "json"))
    first = storage.read_bytes(lock_key)
    listed = {key: stamp for key, _size, stamp in storage.list_stamped("mixtures/llava_instruct_150k")}
    assert main(command) == 0
    assert {key: stamp for key, _size, stamp in storage.list_stamped("mixtures/llava_instruct_150k")} == listed  # nothing written
    assert main([*command, "--force"]) == 0
    assert storage.read_bytes(lock_key) != first  # built again: another built_at and stamps
    assert mix.read_lock(storage, lock_key).output.sha256 == mix.parse_lock(first).output.sha256  # the same bytes
