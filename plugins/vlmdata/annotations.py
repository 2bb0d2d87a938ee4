"""The LLaVA conversation format: loading and checking annotation files.

``[{"id": ..., "image": "rel/path.jpg", "conversations": [{"from": "human", "value":
"<image>\\n..."}, {"from": "gpt", "value": "..."}, ...]}, ...]``. Text-only records have no
``image``. The checks are the ones LLaVA's and ConvLLaVA's loaders rely on: a JSON list of
objects, roles alternating from ``human``, ``<image>`` in the first human turn exactly when
the record has an image, and image paths that stay inside the image folder.
"""

from __future__ import annotations

import json
from pathlib import PurePosixPath
from typing import IO, Any

IMAGE_TOKEN = "<image>"
ROLES = ("human", "gpt")


class AnnotationError(ValueError):
    """The file as a whole is not a LLaVA annotation file."""


def load_records(stream: IO[bytes], name: str) -> list[dict[str, Any]]:
    try:
        data = json.load(stream)
    except RecursionError as exc:  # hostile nesting: the decoder recurses once per level
        raise AnnotationError(f"{name}: JSON nested too deeply to read") from exc
    except ValueError as exc:  # bad JSON, bad UTF-8, an integer of thousands of digits
        raise AnnotationError(f"{name}: not valid JSON: {str(exc)[:200]}") from exc
    if not isinstance(data, list):
        raise AnnotationError(f"{name}: expected a JSON list of records, got {type(data).__name__}")
    return data


def record_problem(record: Any) -> str | None:
    """Why a record is unusable for training, or None when it is fine."""
    if not isinstance(record, dict):
        return "not an object"
    if "id" not in record or not isinstance(record["id"], (str, int)):
        return "missing or invalid id"
    image = record.get("image")
    if "image" in record:  # LLaVA's loader tests `"image" in record`: a null path crashes it
        if not isinstance(image, str) or not image:
            return "image is not a path"
        path = PurePosixPath(image)
        if path.is_absolute() or ".." in path.parts:
            return "image path leaves the image folder"
    turns = record.get("conversations")
    if not isinstance(turns, list) or len(turns) < 2:
        return "conversations must be a list of at least two turns"
    for number, turn in enumerate(turns):
        if not isinstance(turn, dict) or not isinstance(turn.get("value"), str):
            return f"turn {number} is not {{'from', 'value'}}"
        if turn.get("from") != ROLES[number % 2]:
            return f"turn {number} is from {turn.get('from')!r}, expected {ROLES[number % 2]!r} (roles must alternate from human)"
    in_first = IMAGE_TOKEN in turns[0]["value"]
    elsewhere = any(IMAGE_TOKEN in turn["value"] for turn in turns[1:])
    if "image" in record and not in_first:
        return "has an image but the first human turn holds no <image>"
    if "image" not in record and (in_first or elsewhere):
        return "holds <image> but has no image"
    if elsewhere:
        return "<image> outside the first human turn"
    return None


def check_records(records: list, max_examples: int = 20) -> dict:
    """Counts of good and bad records, bad ones by reason with a few example ids."""
    problems: dict[str, dict] = {}
    ids: set = set()
    duplicates = 0
    with_image = 0
    for position, record in enumerate(records):
        problem = record_problem(record)
        if problem:
            entry = problems.setdefault(problem, {"count": 0, "examples": []})
            entry["count"] += 1
            if len(entry["examples"]) < max_examples:
                entry["examples"].append(record.get("id", f"#{position}") if isinstance(record, dict) else f"#{position}")
            continue
        with_image += "image" in record
        key = str(record["id"])
        duplicates += key in ids
        ids.add(key)
    bad = sum(p["count"] for p in problems.values())
    return {"records": len(records), "valid": len(records) - bad, "with_image": with_image, "invalid": bad, "problems": problems, "duplicate_ids": duplicates}
