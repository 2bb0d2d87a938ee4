"""vlmdata.kinds is the one place a source kind is described, and a DAG file's parse stays light."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vlmdata.catalog import Artifact, CatalogError, Source, load_catalog, load_source
from vlmdata.kinds import KINDS, SourceKind, kind_named

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "plugins" / "vlmdata"
DAG_FILES = sorted(p.name for p in (REPO / "dags").glob("*.py"))
PARSE_CPU_BOUND = 0.9  # CPU-s beyond the task SDK: 3x the goal of 0.3 (bench/ row `startup`), so it holds on a busy machine


@pytest.fixture(scope="module")
def parsed() -> dict[str, dict]:
    """Each DAG file parsed as Airflow parses it, in a fresh interpreter (bench.startup.measure)."""
    found = {}
    for dag_file in DAG_FILES:
        out = subprocess.run([sys.executable, "-m", "bench.startup", "--child", dag_file], cwd=REPO, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
        found[dag_file] = json.loads(out.stdout.strip().splitlines()[-1])
    return found


def test_parsing_a_dag_file_imports_no_transport_nor_image_library(parsed):
    for dag_file, result in parsed.items():
        assert result["dags"] > 0, dag_file
        assert result["heavy"] == [], f"parsing dags/{dag_file} imported {result['heavy']}: import them inside execute or through vlmdata.kinds"


def test_parsing_a_dag_file_costs_little_cpu(parsed):
    for dag_file, result in parsed.items():
        assert result["parse_cpu_s"] < PARSE_CPU_BOUND, f"dags/{dag_file}: {result['parse_cpu_s']:.2f} CPU-s beyond the task SDK"


def test_the_kinds_module_imports_only_the_standard_library():
    tree = ast.parse((PACKAGE / "kinds.py").read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module and not node.level}
    assert imported <= set(sys.stdlib_module_names) | {"__future__"}, imported


@pytest.mark.parametrize("name", sorted(KINDS))
def test_every_kind_names_a_transport_an_operator_and_catalog_fields_that_exist(name):
    from vlmdata.fetch.remote import Transport
    from vlmdata.operators.acquire import FetchArtifactOperator, fetch_operator_for

    kind = KINDS[name]
    transport = kind.load_transport()
    assert isinstance(transport, Transport)
    assert kind.needed_by == (transport.needed_by is not None), "the DAG offers needed_by exactly where the transport can choose by it"
    assert issubclass(fetch_operator_for(name), FetchArtifactOperator)
    assert fetch_operator_for(name).__name__ == kind.fetch_operator
    if kind.section:
        assert kind.section in Source.model_fields
    if kind.locator:
        assert kind.locator in Artifact.model_fields
    if kind.revision:
        assert kind.revision in Source.model_fields[kind.section].annotation.__args__[0].model_fields
    if kind.crawl:
        assert kind.section == "crawl"


def test_every_catalog_source_has_a_registered_kind():
    assert {source.kind for source in load_catalog().values()} <= set(KINDS)


def test_an_unknown_kind_is_refused_with_the_known_ones(tmp_path):
    path = tmp_path / "ftp_thing.yaml"
    path.write_text("id: ftp_thing\ntitle: T\nkind: ftp\nlicence: {name: CC0}\nartifacts: []\n")
    with pytest.raises(CatalogError, match=r"ftp_thing.yaml: kind: .*unknown kind 'ftp'; known: hf, http"):
        load_source(path)
    with pytest.raises(KeyError, match="unknown source kind 'ftp'"):
        kind_named("ftp")


def _kind_literals(tree: ast.AST) -> list[int]:
    """Lines that decide by a kind's name outside the registry: ``x.kind == "hf"``, ``x.kind in
    ("gdrive", ...)``, or a dict keyed by two or more kind names."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            on_kind = any(isinstance(s, ast.Attribute) and s.attr == "kind" for s in sides)
            names = {c.value for s in sides for c in ast.walk(s) if isinstance(c, ast.Constant)}
            if on_kind and names & set(KINDS):
                found.append(node.lineno)
        if isinstance(node, ast.Dict):
            keys = {k.value for k in node.keys if isinstance(k, ast.Constant)}
            if len(keys & set(KINDS)) >= 2:
                found.append(node.lineno)
    return found


def test_only_the_registry_decides_by_a_kinds_name():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "kinds.py" or "replicas" in path.parts:  # the replicas are the upstreams, not the pipeline
            continue
        offenders += [f"{path.relative_to(REPO)}:{line}" for line in _kind_literals(ast.parse(path.read_text()))]
    assert offenders == [], "decide by vlmdata.kinds (a SourceKind field), not by a kind's name"


def test_the_registry_check_finds_a_branch_on_a_kind():
    assert _kind_literals(ast.parse('if source.kind == "hf":\n    pass\nx = {"gdrive": 1, "urllist": 2}')) == [1, 3]


def test_a_new_kind_is_one_registry_entry(monkeypatch, tmp_path):
    """A kind added to the registry alone gets a catalog entry, a DAG with its operator, pool and
    parameters, and its transport."""
    os.environ.setdefault("AIRFLOW_HOME", str(tmp_path / "airflow-home"))
    from vlmdata.dagfactory import acquisition_dag
    from vlmdata.fetch.plain import HTTP
    from vlmdata.pools import fetch_pool

    entry = SourceKind("webdav", "vlmdata.fetch.plain:HTTP", locator="url", pool_host="dav.invalid", fetch_operator="HttpFetchOperator", needed_by=False)
    monkeypatch.setitem(KINDS, "webdav", entry)
    path = tmp_path / "dav_files.yaml"
    path.write_text(
        "id: dav_files\ntitle: Files over WebDAV\nkind: webdav\nlicence: {name: CC0}\n"
        "artifacts:\n  - {name: a.json, url: 'http://127.0.0.1:9/a.json', target: dav/a.json}\n"
    )
    source = load_source(path)
    dag = acquisition_dag(source)
    fetch = dag.get_task("fetch")
    assert type(fetch).__name__ == "MappedOperator" and fetch.operator_class.__name__ == "HttpFetchOperator"
    assert fetch.partial_kwargs["pool"] == fetch_pool(source) == "vlmdata_dav_invalid"
    assert "publish" in dag.task_ids and "crawl" not in dag.task_ids and "revision" not in dag.params
    assert kind_named("webdav").load_transport() is HTTP
    missing = tmp_path / "no_url.yaml"
    missing.write_text("id: no_url\ntitle: T\nkind: webdav\nlicence: {name: CC0}\nartifacts:\n  - {name: a.json, target: dav/a.json}\n")
    with pytest.raises(CatalogError, match="kind 'webdav' needs `url`"):
        load_source(missing)

