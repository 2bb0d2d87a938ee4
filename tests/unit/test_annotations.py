"""vlmdata.annotations: the LLaVA conversation format, as LLaVA's and ConvLLaVA's loaders read it."""

from __future__ import annotations

import io
import json

import pytest

from vlmdata.replicas.data import llava_annotation_json, llava_record
from vlmdata.annotations import AnnotationError, check_records, load_records, record_problem


def _turns(*pairs):
    return [{"from": role, "value": value} for role, value in pairs]


# ---------------------------------------------------------------- record_problem: valid records


def test_valid_image_record():
    assert record_problem(llava_record("1", "coco/train2017/000000000001.jpg")) is None


def test_valid_multi_turn_image_record():
    assert record_problem(llava_record("1", "a.jpg", turns=3)) is None


def test_valid_text_only_record():
    record = llava_record("t1")
    assert "image" not in record
    assert record_problem(record) is None


def test_image_token_at_the_end_of_the_first_turn_is_valid():
    """LCS-558K puts <image> after the question."""
    record = llava_record("lcs", "00000/000000010.jpg", image_last=True)
    assert record["conversations"][0]["value"].endswith("<image>")
    assert record_problem(record) is None


def test_integer_id_is_valid():
    record = llava_record("x", "a.jpg")
    record["id"] = 42
    assert record_problem(record) is None


# ---------------------------------------------------------------- record_problem: invalid records


def test_not_an_object():
    assert record_problem(["id", "conversations"]) == "not an object"


def test_missing_id():
    record = llava_record("1", "a.jpg")
    del record["id"]
    assert "id" in record_problem(record)


@pytest.mark.parametrize("bad_id", [None, 1.5, ["a"], {"x": 1}])
def test_invalid_id(bad_id):
    record = llava_record("1", "a.jpg")
    record["id"] = bad_id
    assert "id" in record_problem(record)


def test_roles_not_alternating():
    record = {"id": "1", "conversations": _turns(("human", "q"), ("human", "q again"), ("gpt", "a"))}
    problem = record_problem(record)
    assert problem and "turn 1" in problem and "alternate" in problem


def test_first_turn_from_gpt():
    record = {"id": "1", "conversations": _turns(("gpt", "hello"), ("human", "hi"))}
    problem = record_problem(record)
    assert problem and "turn 0" in problem and "'gpt'" in problem


def test_unknown_role():
    record = {"id": "1", "conversations": _turns(("user", "q"), ("assistant", "a"))}
    assert "turn 0" in record_problem(record)


def test_turn_without_a_string_value():
    record = {"id": "1", "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": None}]}
    assert "turn 1" in record_problem(record)
    record = {"id": "1", "conversations": [{"from": "human", "value": "q"}, "just text"]}
    assert "turn 1" in record_problem(record)


def test_image_without_image_token():
    record = {"id": "1", "image": "a.jpg", "conversations": _turns(("human", "What is this?"), ("gpt", "A cat."))}
    assert "first human turn holds no <image>" in record_problem(record)


def test_image_token_without_image():
    record = {"id": "1", "conversations": _turns(("human", "<image>\nWhat is this?"), ("gpt", "A cat."))}
    assert record_problem(record) == "holds <image> but has no image"


def test_image_token_in_a_later_turn():
    record = {
        "id": "1",
        "image": "a.jpg",
        "conversations": _turns(("human", "<image>\nq1"), ("gpt", "a1"), ("human", "<image>\nq2"), ("gpt", "a2")),
    }
    assert record_problem(record) == "<image> outside the first human turn"


def test_image_token_only_in_a_later_turn():
    record = {"id": "1", "image": "a.jpg", "conversations": _turns(("human", "q1"), ("gpt", "a1"), ("human", "<image> q2"), ("gpt", "a2"))}
    assert record_problem(record) is not None


def test_image_token_only_in_a_later_turn_of_a_text_record():
    record = {"id": "1", "conversations": _turns(("human", "q1"), ("gpt", "see <image>"))}
    assert record_problem(record) == "holds <image> but has no image"


@pytest.mark.parametrize("path", ["../a.jpg", "coco/../../a.jpg", "/abs/a.jpg"])
def test_image_path_leaving_the_image_folder(path):
    assert record_problem(llava_record("1", path)) == "image path leaves the image folder"


@pytest.mark.parametrize("image", ["", 3, ["a.jpg"]])
def test_image_that_is_not_a_path(image):
    record = llava_record("1", "a.jpg")
    record["image"] = image
    assert record_problem(record) == "image is not a path"


def test_single_turn():
    record = {"id": "1", "image": "a.jpg", "conversations": _turns(("human", "<image>\nq"))}
    assert "at least two turns" in record_problem(record)


@pytest.mark.parametrize("conversations", [None, [], "human: hi", {"from": "human"}])
def test_conversations_missing_or_not_a_list(conversations):
    record = {"id": "1"}
    if conversations is not None:
        record["conversations"] = conversations
    assert "at least two turns" in record_problem(record)


# ---------------------------------------------------------------- check_records


def test_check_records_counts():
    good_image = [llava_record(f"img{i}", f"{i}.jpg") for i in range(3)]
    good_text = [llava_record(f"txt{i}") for i in range(2)]
    duplicate = llava_record("img0", "other.jpg")  # valid, but its id is taken
    no_token = {"id": "nt1", "image": "b.jpg", "conversations": _turns(("human", "q"), ("gpt", "a"))}
    no_token2 = {"id": "nt2", "image": "c.jpg", "conversations": _turns(("human", "q"), ("gpt", "a"))}
    escaping = llava_record("esc", "../x.jpg")
    no_id = {"conversations": _turns(("human", "q"), ("gpt", "a"))}
    records = [*good_image, *good_text, duplicate, no_token, escaping, no_token2, no_id, "not a record"]

    report = check_records(records)

    assert report["records"] == 11
    assert report["valid"] == 6
    assert report["invalid"] == 5
    assert report["with_image"] == 4
    assert report["duplicate_ids"] == 1
    problems = report["problems"]
    assert problems["has an image but the first human turn holds no <image>"] == {"count": 2, "examples": ["nt1", "nt2"]}
    assert problems["image path leaves the image folder"] == {"count": 1, "examples": ["esc"]}
    # Without an id, an example is the record's position.
    assert problems["missing or invalid id"] == {"count": 1, "examples": ["#9"]}
    assert problems["not an object"] == {"count": 1, "examples": ["#10"]}
    assert sum(p["count"] for p in problems.values()) == report["invalid"]


def test_check_records_limits_examples():
    records = [{"id": f"r{i}", "conversations": []} for i in range(10)]
    report = check_records(records, max_examples=3)
    (entry,) = report["problems"].values()
    assert entry == {"count": 10, "examples": ["r0", "r1", "r2"]}


def test_check_records_duplicate_ids_compare_as_text():
    records = [llava_record("7", "a.jpg"), {**llava_record("x", "b.jpg"), "id": 7}, llava_record("7", "c.jpg")]
    assert check_records(records)["duplicate_ids"] == 2


def test_check_records_of_nothing():
    assert check_records([]) == {"records": 0, "valid": 0, "with_image": 0, "invalid": 0, "problems": {}, "duplicate_ids": 0}


def test_generated_annotation_file_is_clean():
    data = llava_annotation_json([f"train2017/{i:012d}.jpg" for i in range(1, 6)], text_only=2, turns=2)
    report = check_records(load_records(io.BytesIO(data), "fake.json"))
    assert (report["valid"], report["invalid"], report["with_image"], report["duplicate_ids"]) == (7, 0, 5, 0)


# ---------------------------------------------------------------- load_records


def test_load_records_returns_the_list():
    records = [llava_record("1", "a.jpg"), llava_record("2")]
    assert load_records(io.BytesIO(json.dumps(records).encode()), "x.json") == records


def test_load_records_invalid_json_names_the_file():
    with pytest.raises(AnnotationError, match=r"llava_v1_5_mix665k\.json: not valid JSON"):
        load_records(io.BytesIO(b'[{"id": 1,'), "llava_v1_5_mix665k.json")


def test_load_records_not_utf8_names_the_file():
    with pytest.raises(AnnotationError, match=r"blip_laion\.json"):
        load_records(io.BytesIO(b'["\xff\xfe\xfa"]'), "blip_laion.json")


def test_load_records_html_error_page_names_the_file():
    with pytest.raises(AnnotationError, match=r"chat\.json"):
        load_records(io.BytesIO(b"<html><body>Too many requests</body></html>"), "chat.json")


@pytest.mark.parametrize("payload, kind", [({"data": []}, "dict"), ("records", "str"), (None, "NoneType"), (3, "int")])
def test_load_records_not_a_list_names_the_file(payload, kind):
    with pytest.raises(AnnotationError) as info:
        load_records(io.BytesIO(json.dumps(payload).encode()), "sharegpt4v_instruct.json")
    message = str(info.value)
    assert message.startswith("sharegpt4v_instruct.json:")
    assert "list" in message and kind in message


def test_a_null_image_is_a_problem_not_a_text_only_record():
    from vlmdata.annotations import record_problem

    record = {"id": "1", "image": None, "conversations": [{"from": "human", "value": "<image>\nhi"}, {"from": "gpt", "value": "yo"}]}
    assert record_problem(record) == "image is not a path"


def test_image_keys_follow_the_annotation_links():
    from vlmdata.catalog import Annotation
    from vlmdata.verify import image_key

    allava = Annotation(image_folder=".", links={"allava/allava_vflan/images/images_191task_1k": "vflan/images_191task_1k"})
    flat = "PACS+guitar_image_category_classification_830_n03272010_10795-5.png"  # Vision-Flan's names: one flat folder
    assert image_key(allava, f"allava/allava_vflan/images/images_191task_1k/{flat}") == f"data/vflan/images_191task_1k/{flat}"
    assert image_key(allava, "allava/allava_laion/images/1.jpeg") == "data/allava/allava_laion/images/1.jpeg"
    bare = Annotation(image_folder="coco/train2017")
    assert image_key(bare, "000000000009.jpg") == "data/coco/train2017/000000000009.jpg"
