"""URL mirrors, streaming checksums, and the small HTTP helpers the downloader relies on."""

from __future__ import annotations

import email.utils
import hashlib
import time
from datetime import datetime, timedelta, timezone

import pytest
from requests.structures import CaseInsensitiveDict

from vlmdata.fetch.digest import Expected, MultiHasher, sha256_of
from vlmdata.fetch.http import parse_retry_after, validator_of
from vlmdata.mirrors import MirrorError, Mirrors

# ---------------------------------------------------------------- mirrors

RULES = {
    "https://huggingface.co": "https://hf-mirror.example.org",
    "https://huggingface.co/datasets/liuhaotian/": "http://127.0.0.1:9000/llava/",
    "http://images.cocodataset.org/zips/": "http://127.0.0.1:8000/coco/",
}


@pytest.mark.parametrize("order", [list(RULES), list(reversed(RULES))])
def test_longest_prefix_wins_whatever_the_order(order):
    mirrors = Mirrors({key: RULES[key] for key in order})
    assert mirrors.rewrite("https://huggingface.co/datasets/liuhaotian/LLaVA-Pretrain/resolve/main/blip.json") == (
        "http://127.0.0.1:9000/llava/LLaVA-Pretrain/resolve/main/blip.json"
    )
    assert mirrors.rewrite("https://huggingface.co/datasets/Lin-Chen/ShareGPT4V/x.json") == (
        "https://hf-mirror.example.org/datasets/Lin-Chen/ShareGPT4V/x.json"
    )
    assert mirrors.rewrite("http://images.cocodataset.org/zips/train2017.zip") == "http://127.0.0.1:8000/coco/train2017.zip"


def test_no_match_is_unchanged():
    mirrors = Mirrors(RULES)
    for url in ("https://example.com/a.zip", "http://images.cocodataset.org/annotations/x.zip", "http://huggingface.co/x"):
        assert mirrors.rewrite(url) == url


def test_no_rules_rewrites_nothing():
    assert Mirrors().rewrite("https://huggingface.co/x") == "https://huggingface.co/x"


def test_from_env_reads_the_named_file(tmp_path, monkeypatch):
    path = tmp_path / "mirrors.yaml"
    path.write_text("http://images.cocodataset.org/zips/: http://127.0.0.1:8000/coco/\n")
    monkeypatch.setenv("VLMDATA_MIRRORS", str(path))
    assert Mirrors.from_env().rewrite("http://images.cocodataset.org/zips/val2017.zip") == "http://127.0.0.1:8000/coco/val2017.zip"


def test_from_env_reads_json_too(tmp_path, monkeypatch):
    path = tmp_path / "mirrors.json"
    path.write_text('{"https://a.example/": "http://127.0.0.1:1/"}')
    monkeypatch.setenv("VLMDATA_MIRRORS", str(path))
    assert Mirrors.from_env().rewrite("https://a.example/f") == "http://127.0.0.1:1/f"


def test_from_env_without_the_variable_is_empty(monkeypatch):
    monkeypatch.delenv("VLMDATA_MIRRORS", raising=False)
    mirrors = Mirrors.from_env()
    assert mirrors.rules == {}
    assert mirrors.rewrite("https://huggingface.co/x") == "https://huggingface.co/x"


def test_from_env_of_an_empty_file_is_empty(tmp_path, monkeypatch):
    path = tmp_path / "empty.yaml"
    path.write_text("")
    monkeypatch.setenv("VLMDATA_MIRRORS", str(path))
    assert Mirrors.from_env().rules == {}


def test_variable_text_takes_precedence_over_the_file(tmp_path, monkeypatch):
    path = tmp_path / "mirrors.yaml"
    path.write_text("https://a.example/: http://from-file/\n")
    monkeypatch.setenv("VLMDATA_MIRRORS", str(path))
    assert Mirrors.from_env("https://a.example/: http://from-variable/\n").rewrite("https://a.example/x") == "http://from-variable/x"


@pytest.mark.parametrize(
    "text",
    [
        "- https://a.example/\n- http://b/\n",  # a list, not a mapping
        "just a string\n",
        "a.example/: http://b/\n",  # prefix without a scheme
        "https://a.example/: 3\n",  # replacement not a URL prefix
        "https://a.example/: [x]\n",
        "https://a.example/: {unclosed\n",  # not YAML at all
    ],
)
def test_invalid_file_raises_mirror_error_naming_the_file(tmp_path, monkeypatch, text):
    path = tmp_path / "my-mirrors.yaml"
    path.write_text(text)
    monkeypatch.setenv("VLMDATA_MIRRORS", str(path))
    with pytest.raises(MirrorError, match="my-mirrors.yaml"):
        Mirrors.from_env()


def test_missing_file_raises_mirror_error_naming_it(tmp_path, monkeypatch):
    monkeypatch.setenv("VLMDATA_MIRRORS", str(tmp_path / "nowhere.yaml"))
    with pytest.raises(MirrorError, match="nowhere.yaml"):
        Mirrors.from_env()


def test_invalid_variable_text_names_the_variable():
    with pytest.raises(MirrorError, match="vlmdata_mirrors"):
        Mirrors.from_env("not-a-url: http://x/\n")


def test_rule_without_scheme_rejected_directly():
    with pytest.raises(MirrorError):
        Mirrors({"huggingface.co": "https://hf-mirror.example.org"})


# ---------------------------------------------------------------- MultiHasher

DATA = b"hello\n"
# `printf 'hello\n' | git hash-object --stdin`: the git blob id Hugging Face reports for small files.
GIT_SHA1_OF_DATA = "ce013625030ba8dba906f756967f9e9ca394464a"
SHA256_OF_DATA = "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03"
MD5_OF_DATA = "b1946ac92492d2347c6235b4d2611184"


def _right() -> Expected:
    return Expected(size=len(DATA), sha256=SHA256_OF_DATA, md5=MD5_OF_DATA, git_sha1=GIT_SHA1_OF_DATA)


def _hashed(expected: Expected, data: bytes = DATA, chunk: int = 2) -> MultiHasher:
    hasher = MultiHasher(expected)
    for i in range(0, len(data), chunk):
        hasher.update(data[i:i + chunk])
    return hasher


def test_all_digests_match():
    hasher = _hashed(_right())
    assert hasher.problems() == []
    assert hasher.sha256 == SHA256_OF_DATA
    assert hasher.md5 == MD5_OF_DATA
    assert hasher.count == len(DATA)


def test_git_sha1_of_the_empty_blob():
    hasher = _hashed(Expected(size=0, git_sha1="e69de29bb2d1d6434b8b29ae775ad8c2e48c5391"), b"")
    assert hasher.problems() == []


def test_md5_only_computed_when_expected():
    assert _hashed(Expected()).md5 is None
    assert _hashed(Expected()).sha256 == SHA256_OF_DATA  # sha256 always


def test_nothing_expected_means_no_problems():
    assert _hashed(Expected()).problems() == []


@pytest.mark.parametrize(
    "field, wrong, words",
    [
        ("size", len(DATA) + 1, "size 6 != expected 7"),
        ("sha256", "0" * 64, "sha256"),
        ("md5", "f" * 32, "md5"),
        ("git_sha1", "a" * 40, "git blob sha1"),
    ],
)
def test_each_mismatch_is_listed(field, wrong, words):
    expected = Expected(**{**_right().__dict__, field: wrong})
    if field == "size":
        expected = Expected(size=wrong)  # a wrong size also changes the git header: check size alone
    problems = _hashed(expected).problems()
    assert len(problems) == 1, problems
    assert words in problems[0]
    if field != "size":
        assert wrong in problems[0]


def test_every_mismatch_is_listed_at_once():
    expected = Expected(size=len(DATA), sha256="0" * 64, md5="f" * 32, git_sha1="a" * 40)
    problems = _hashed(expected).problems()
    assert [p.split()[0] for p in problems] == ["sha256", "md5", "git"]
    corrupted = _hashed(_right(), b"hellO\n").problems()
    assert [p.split()[0] for p in corrupted] == ["sha256", "md5", "git"]
    short = _hashed(_right(), b"hello").problems()
    assert [p.split()[0] for p in short] == ["size", "sha256", "md5", "git"]


@pytest.mark.parametrize("limit", [0, 1, 1000, 65_536, 200_000])
def test_update_from_file_resumes_to_the_same_digest(tmp_path, limit):
    data = bytes(range(256)) * 800  # 204,800 bytes
    expected = Expected(
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        md5=hashlib.md5(data).hexdigest(),
        git_sha1=hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest(),
    )
    single = _hashed(expected, data, chunk=len(data))
    partial = tmp_path / "file.part"
    partial.write_bytes(data)  # the partial may hold more than the resume point: only `limit` bytes count

    resumed = MultiHasher(expected)
    resumed.update_from_file(partial, limit)
    assert resumed.count == limit
    resumed.update(data[limit:])

    assert (resumed.sha256, resumed.md5, resumed.count) == (single.sha256, single.md5, single.count)
    assert resumed.problems() == single.problems() == []


def test_update_from_file_stops_at_the_end_of_a_short_file(tmp_path):
    partial = tmp_path / "short.part"
    partial.write_bytes(DATA)
    hasher = MultiHasher(Expected())
    hasher.update_from_file(partial, 1000)
    assert hasher.count == len(DATA)
    assert hasher.sha256 == SHA256_OF_DATA


def test_sha256_of_a_stream():
    import io

    data = b"x" * 3_000_000
    assert sha256_of(io.BytesIO(data), chunk_size=1 << 20) == (hashlib.sha256(data).hexdigest(), len(data))


# ---------------------------------------------------------------- Retry-After and If-Range validators


@pytest.mark.parametrize("value, seconds", [("0", 0.0), ("5", 5.0), ("120", 120.0), (" 7 ", 7.0)])
def test_retry_after_seconds(value, seconds):
    assert parse_retry_after(value) == seconds


def test_retry_after_http_date_in_the_future():
    when = datetime.now(timezone.utc) + timedelta(seconds=30)
    wait = parse_retry_after(email.utils.format_datetime(when, usegmt=True))
    assert 27 <= wait <= 31  # the header has whole seconds


def test_retry_after_http_date_fixed_example():
    # RFC 9110's example format; computed against the clock, so compare with our own arithmetic.
    value = "Wed, 21 Oct 2099 07:28:00 GMT"
    expected = datetime(2099, 10, 21, 7, 28, tzinfo=timezone.utc).timestamp() - time.time()
    assert abs(parse_retry_after(value) - expected) < 5


def test_retry_after_http_date_in_the_past_is_zero():
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0


@pytest.mark.parametrize("value", [None, "", "soon", "-5", "1.5.3"])
def test_retry_after_unusable(value):
    assert parse_retry_after(value) is None


def test_validator_prefers_a_strong_etag():
    headers = CaseInsensitiveDict({"ETag": '"abc123"', "Last-Modified": "Wed, 21 Oct 2015 07:28:00 GMT"})
    assert validator_of(headers) == '"abc123"'


def test_validator_ignores_a_weak_etag():
    headers = CaseInsensitiveDict({"ETag": 'W/"abc123"', "Last-Modified": "Wed, 21 Oct 2015 07:28:00 GMT"})
    assert validator_of(headers) == "Wed, 21 Oct 2015 07:28:00 GMT"


def test_validator_weak_etag_alone_is_no_validator():
    assert validator_of(CaseInsensitiveDict({"ETag": 'W/"abc123"'})) is None


def test_validator_last_modified_alone():
    assert validator_of(CaseInsensitiveDict({"last-modified": "Wed, 21 Oct 2015 07:28:00 GMT"})) == "Wed, 21 Oct 2015 07:28:00 GMT"


def test_validator_of_no_headers():
    assert validator_of(CaseInsensitiveDict()) is None


def test_validator_reads_response_style_headers_case_insensitively():
    """requests hands headers over as a case-insensitive dict; servers spell ETag many ways."""
    assert validator_of(CaseInsensitiveDict({"etag": '"lower"'})) == '"lower"'
