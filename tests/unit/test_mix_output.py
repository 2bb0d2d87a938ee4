"""The mixture writer streams, yet gives exactly json.dumps' bytes (what the lock's sha256 pins)."""

from __future__ import annotations

import hashlib
import json

import pytest

from vlmdata.mix import write_records

RECORDS = [
    {"id": "1", "image": "coco/train2017/é.jpg", "conversations": [{"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "A \"cat\"."}]},
    {"id": 2, "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]},
]


@pytest.mark.parametrize("records", [RECORDS, [], RECORDS[:1]])
def test_json_and_jsonl_match_the_standard_encoder(tmp_path, records):
    expected = {
        "json": (json.dumps(records, ensure_ascii=False, separators=(",", ":")) + "\n").encode(),
        "jsonl": "".join(json.dumps(r, ensure_ascii=False, separators=(",", ":")) + "\n" for r in records).encode(),
    }
    for fmt, body in expected.items():
        digest, size = write_records(tmp_path / f"out.{fmt}", records, fmt)
        assert (tmp_path / f"out.{fmt}").read_bytes() == body
        assert (digest, size) == (hashlib.sha256(body).hexdigest(), len(body))
        if fmt == "json":
            assert json.loads(body) == records


def test_the_composition_chart_names_every_component_whole_with_its_share_on_white():
    import xml.dom.minidom

    from vlmdata.mix import composition_svg

    label = "llava_instruct_150k:llava_v1_5_mix665k.json"  # a label the first charts cut short
    svg = composition_svg("Mix <665K> & more", {label: {"kept": 3, "dropped": {"image missing": 1}}, "text-only": {"kept": 2, "dropped": {}}})
    document = xml.dom.minidom.parseString(svg)  # well-formed, the title escaped
    texts = [node.firstChild.data for node in document.getElementsByTagName("text")]
    assert texts[0] == "Mix <665K> & more" and {"kept", "dropped (reasons in the lock)"} <= set(texts)
    assert label in texts and "3 kept (75.0%), 1 dropped" in texts and "2 kept (100.0%), 0 dropped" in texts
    background = document.getElementsByTagName("rect")[0]
    assert (background.getAttribute("width"), background.getAttribute("fill")) == ("100%", "#ffffff")
