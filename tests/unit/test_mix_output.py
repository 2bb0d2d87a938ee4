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
