"""The `vlmdata` command: the same steps without Airflow."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from vlmdata.replicas.hf_hub import FakeHfHub
from vlmdata.replicas.http_server import FakeHttpServer
from vlmdata.replicas.slice import SliceReplica
from vlmdata.cli import main


def run(*args: str) -> tuple[int, str, str]:
    result = subprocess.run([sys.executable, "-m", "vlmdata.cli", *args], capture_output=True, text=True, timeout=120)
    return result.returncode, result.stdout, result.stderr


def test_sources_lists_every_catalog_entry():
    code, out, _ = run("sources")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["id", "kind", "size", "licence"]
    assert any(line.startswith("coco_train2017") and "http" in line and "18.0 GiB" in line for line in lines)
    assert any(line.startswith("llava_instruct_150k") and "~1.5 GiB" in line for line in lines)  # from the approximate sizes
    assert any(line.startswith("sa1b") and "[ack]" in line for line in lines)
    assert len(lines) == 1 + 15
    assert all(re.match(r"\S+ +\S+ +~?\d+\.\d [KMGT]iB ", line) for line in lines[1:])  # a size for every source, no "?"
    assert any(line.startswith("sa1b") and "~498.7 GiB" in line for line in lines)  # 51 tars of ~10.5 GB


def test_help_has_no_restructuredtext_markup():
    """Docstring markup (``x``, `x`, :class:`x`, **x**) is noise in a terminal."""
    from vlmdata.cli import parser

    commands = parser()._subparsers._group_actions[0].choices
    texts = [parser().format_help()] + [command.format_help() for command in commands.values()]
    texts.append(subprocess.run([sys.executable, "-m", "vlmdata.demo", "--help"], capture_output=True, text=True, timeout=120, check=True).stdout)
    for text in texts:
        assert "`" not in text and "**" not in text and ":class:" not in text, text
    assert texts[0].startswith("usage: vlmdata") and "vlmdata: the pipeline's steps without Airflow." in texts[0]
    assert "vlmdata mix llava_instruct_150k" in texts[0]  # the examples, line by line
    assert "as JSON for 'airflow pools import'" in commands["pools"].format_help()


def test_private_catalog_adds_a_source_and_errors_name_the_file(tmp_path):
    (tmp_path / "my_data.yaml").write_text("id: my_data\ntitle: Mine\nkind: http\nlicence: {name: private}\nartifacts: []\n")
    code, out, _ = run("--catalog", str(tmp_path), "sources")
    assert code == 0 and "my_data" in out
    (tmp_path / "broken.yaml").write_text("id: broken\ntitle: x\nkind: ftp\nlicence: {name: x}\n")
    code, _, err = run("--catalog", str(tmp_path), "sources")
    assert code == 2 and "broken.yaml" in err and "kind" in err


def test_the_slice_through_the_cli(tmp_path, monkeypatch, capsys):
    root = tmp_path / "root"
    with FakeHttpServer() as http, FakeHfHub() as hub:
        for key, value in SliceReplica().install(http, hub, tmp_path).items():
            monkeypatch.setenv(key, value)
        assert main(["--root", str(root), "acquire", "coco_train2017", "--dry-run"]) == 0
        assert json.loads(capsys.readouterr().out)["fetch"][0]["name"] == "train2017.zip"
        assert not (root / "data").exists()
        assert main(["--root", str(root), "acquire", "coco_train2017"]) == 0
        assert main(["--root", str(root), "acquire", "llava_instruct_150k"]) == 0
    capsys.readouterr()
    assert main(["--root", str(root), "verify", "coco_train2017", "--workers", "1"]) == 0
    assert "10/12 images decode" in capsys.readouterr().out
    assert main(["--root", str(root), "verify", "coco_train2017", "--mode", "crc", "--workers", "1"]) == 0  # the weekly check, by hand
    assert "10/12 images decode" in capsys.readouterr().out
    assert main(["--root", str(root), "mix", "llava_instruct_150k"]) == 0
    assert json.loads(capsys.readouterr().out)["output"]["records"] == 10
    assert main(["--root", str(root), "layout", "llava15"]) == 0
    assert (root / "playground/data/coco/train2017").is_symlink()


def test_unknown_names_and_dead_upstreams_give_one_line_errors(tmp_path, capsys):
    with pytest.raises(SystemExit, match="unknown name 'nope'.*coco_train2017"):
        main(["--root", str(tmp_path), "acquire", "nope"])
    with FakeHttpServer() as http:
        mirrors = tmp_path / "m.yaml"
        mirrors.write_text(f"http://images.cocodataset.org/: {http.url}/\n")
        import os

        os.environ["VLMDATA_MIRRORS"] = str(mirrors)
        try:
            assert main(["--root", str(tmp_path), "acquire", "coco_train2017"]) == 1
        finally:
            del os.environ["VLMDATA_MIRRORS"]
    err = capsys.readouterr().err
    assert "HTTP 404" in err and "Traceback" not in err


def test_acquiring_a_selection_succeeds_and_the_manifest_says_what_is_not_current(tmp_path, monkeypatch, capsys):
    root = tmp_path / "root"
    with FakeHttpServer() as http, FakeHfHub() as hub:
        for key, value in SliceReplica().install(http, hub, tmp_path).items():
            monkeypatch.setenv(key, value)
        assert main(["--root", str(root), "acquire", "llava_instruct_150k", "--artifact", "detail_23k.json"]) == 0
        summary = json.loads(capsys.readouterr().out)
        record = json.loads((root / "_vlmdata/sources/llava_instruct_150k/source.json").read_text())
        assert summary["changed"] == ["detail_23k.json"]
        assert "detail_23k.json" not in record["not_acquired"] and "llava_instruct_150k.json" in record["not_acquired"]
        assert summary["not_acquired"] == record["not_acquired"]
        assert main(["--root", str(root), "acquire", "llava_instruct_150k"]) == 0  # the rest
        capsys.readouterr()
    record = json.loads((root / "_vlmdata/sources/llava_instruct_150k/source.json").read_text())
    assert record["not_acquired"] == []


def test_no_signed_link_token_in_any_log_line_or_file_at_debug(tmp_path):
    """`vlmdata -v` turns on every library's DEBUG lines (urllib3's request lines among them):
    the SA-1B links' signatures appear in none of them, nor in any file on the storage."""
    from vlmdata.replicas.sources import Replicas

    root = tmp_path / "root"
    with Replicas(tmp_path / "replicas") as replicas:
        env = {**os.environ, **replicas.env()}
        done = subprocess.run([sys.executable, "-m", "vlmdata.cli", "-v", "--root", str(root), "acquire", "sa1b", "--acknowledge-licence", "--artifact", "sa_000000.tar"],
                              capture_output=True, text=True, timeout=300, env=env)
        tokens = replicas.sa1b_cdn.signatures()
    log = done.stdout + done.stderr
    assert done.returncode == 0, log
    assert "DEBUG urllib3.connectionpool" in log and "sa_000000.tar" in log  # the DEBUG lines are there...
    assert not [t for t in tokens if t in log]  # ...without the signatures
    leaked = [p for p in root.rglob("*") if p.is_file() and any(t.encode() in p.read_bytes() for t in tokens)]
    assert not leaked
