"""The GitHub transport (LLaVA's GPT-4 prompts) against a fake GitHub on loopback."""

from __future__ import annotations

import pytest

from vlmdata.replicas.github import FakeGitHub
from vlmdata.replicas.http_server import FakeHttpServer, corrupt
from vlmdata.acquire import Context, acquire
from vlmdata.catalog import load_catalog
from vlmdata.fetch.http import PermanentFetchError, RetryPolicy
from vlmdata.mirrors import Mirrors

REPO = "haotian-liu/LLaVA"
PROMPTS = {
    "playground/data/prompts/conversation/system_message.txt": b"You are an AI visual assistant.\n",
    "playground/data/prompts/conversation/000_caps.txt": b"A man rides a horse.\n",
    "playground/data/prompts/conversation/000_conv.txt": b"Question: what animal?\n===\nAnswer: a horse\n",
    "playground/data/prompts/complex_reasoning/system_message.txt": b"Reason step by step.\n",
    "README.md": b"not under the folder\n",
}


@pytest.fixture
def github():
    with FakeHttpServer() as server:
        yield FakeGitHub(server)


def ctx(storage, github) -> Context:
    return Context(storage, Mirrors(github.mirrors()), policy=RetryPolicy(attempts=3, backoff=0.01))


def test_prompts_folder_is_listed_fetched_and_checked(storage, github):
    commit = github.add_commit(REPO, PROMPTS)
    result = acquire(load_catalog()["llava_gpt4_prompts"], ctx(storage, github))
    assert result["revision"] == commit and len(result["changed"]) == 4
    assert storage.read_bytes("data/llava/prompts/conversation/000_conv.txt") == PROMPTS["playground/data/prompts/conversation/000_conv.txt"]
    assert not storage.exists("data/llava/prompts/README.md") and not storage.exists("data/llava/README.md")
    api_calls = [r for r in github.server.requests if r.path.startswith("/api/")]
    assert len(api_calls) <= 2 * (1 + 4)  # one listing per step, not one per file and call


def test_unchanged_refresh_downloads_nothing_and_a_new_file_is_fetched(storage, github):
    github.add_commit(REPO, PROMPTS)
    acquire(load_catalog()["llava_gpt4_prompts"], ctx(storage, github))
    raw_before = [r for r in github.server.requests if r.path.startswith("/raw/")]
    assert acquire(load_catalog()["llava_gpt4_prompts"], ctx(storage, github))["changed"] == []
    github.add_commit(REPO, {**PROMPTS, "playground/data/prompts/detail_description/system_message.txt": b"Describe.\n"})
    again = acquire(load_catalog()["llava_gpt4_prompts"], ctx(storage, github))
    assert again["changed"] == ["detail_description/system_message.txt"]
    assert len([r for r in github.server.requests if r.path.startswith("/raw/")]) == len(raw_before) + 1


def test_a_corrupted_file_fails_its_blob_id_check(storage, github):
    sha = github.add_commit(REPO, PROMPTS)
    path = f"/raw/{REPO}/{sha}/playground/data/prompts/conversation/000_caps.txt"
    github.server.script(path, corrupt(2), corrupt(2))
    with pytest.raises(Exception, match="git blob sha1"):
        acquire(load_catalog()["llava_gpt4_prompts"], ctx(storage, github))
    assert not storage.exists("data/llava/prompts/conversation/000_caps.txt")


def test_unknown_ref_is_a_clear_error(storage, github):
    github.add_commit(REPO, PROMPTS)
    with pytest.raises(PermanentFetchError, match="not found: check `github.repo` and `github.ref`"):
        acquire(load_catalog()["llava_gpt4_prompts"], Context(storage, Mirrors(github.mirrors()), policy=RetryPolicy(attempts=2, backoff=0.01), revision="v9"))
