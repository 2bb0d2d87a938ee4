"""The Docker deployment (Dockerfile, docker-compose.yaml, .dockerignore) says what a reviewer checks.

This machine has no Docker engine, so `docker compose config` and `docker build` cannot run here:
these tests read the files instead. The part that can run here does: the package is installed
non-editably into a temporary folder, as the image installs it, then asked for its catalog,
recipes and layouts, and the DAG files are imported against it.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "plugins" / "vlmdata"
BASE_IMAGE = "apache/airflow:3.3.2-python3.11"

# Airflow's official compose topology, plus MinIO (the storage root).
LONG_RUNNING = {
    "postgres", "redis", "minio", "airflow-apiserver", "airflow-scheduler", "airflow-dag-processor",
    "airflow-triggerer", "airflow-worker", "flower",
}
ONE_SHOT = {"airflow-init", "minio-init"}
# Names of environment settings: what the package reads from os.environ.
SETTING = re.compile(r"(VLMDATA_|HF_|GITHUB_)[A-Z0-9_]+|AWS_ENDPOINT_URL")
# Developer tools that never run in a deployed worker: `make run`, the demo, the upstream replicas.
DEV_ONLY = ("localairflow.py", "demo.py", "replicas/")


# ---------------------------------------------------------------- reading the files


def compose() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yaml").read_text())


def services() -> dict[str, dict]:
    return compose()["services"]


def airflow_services() -> dict[str, dict]:
    """Services running the vlmdata image (built from the Dockerfile)."""
    return {name: svc for name, svc in services().items() if svc.get("build") == "."}


def common_env() -> dict[str, str]:
    return compose()["x-airflow-common"]["environment"]


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (REPO / "Dockerfile").read_text())
    lines = (line.strip() for line in text.splitlines())
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines if line and not line.startswith("#")]


def image_env() -> dict[str, str]:
    pairs = (args.split("=", 1) for op, args in dockerfile() if op == "ENV")
    return {key.strip(): value.strip() for key, value in pairs}


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default} and ${VAR-default} (defaults may nest), and $$ -> $."""
    out, i = [], 0
    while i < len(text):
        if text.startswith("$$", i):
            out.append("$")
            i += 2
        elif text.startswith("${", i):
            depth, j = 1, i + 2  # find the matching "}": defaults may hold ${...} themselves
            while depth:
                if text.startswith("${", j):
                    depth, j = depth + 1, j + 2
                else:
                    depth, j = depth - (text[j] == "}"), j + 1
            body = text[i + 2 : j - 1]
            name, op, default = re.fullmatch(r"([A-Za-z_][A-Za-z0-9_]*)(:-|-)?(.*)", body, re.S).groups()
            unset = name not in env or (op == ":-" and env[name] == "")
            out.append(interpolate(default, env) if op and unset else env.get(name, ""))
            i = j
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def settings_the_package_reads() -> set[str]:
    """Every string constant in the package that names an environment setting (so a setting
    read through a constant, like fetch.sa1b.LINKS_ENV, counts too)."""
    found = set()
    for path in PACKAGE.rglob("*.py"):
        if any(part in path.relative_to(PACKAGE).as_posix() for part in DEV_ONLY):
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and SETTING.fullmatch(node.value):
                found.add(node.value)
    return found


# ---------------------------------------------------------------- the interpolation helper itself


def test_interpolate_follows_compose_rules():
    assert interpolate("${A:-x}|${A-x}|$${B}", {"A": ""}) == "x||${B}"
    assert interpolate("${A-${B:-y}}", {}) == "y"
    assert interpolate('{"k": "${A:-1}"}', {"A": "2"}) == '{"k": "2"}'


# ---------------------------------------------------------------- docker-compose.yaml


def test_celery_executor_with_redis_broker_and_postgres():
    env = common_env()
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://") and "@redis:" in env["AIRFLOW__CELERY__BROKER_URL"]
    assert env["AIRFLOW__CELERY__RESULT_BACKEND"].startswith("db+postgresql://")
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql")
    assert services()["airflow-worker"]["command"] == "celery worker"


def test_every_service_of_the_official_topology_with_healthcheck_and_restart():
    found = services()
    assert LONG_RUNNING | ONE_SHOT <= set(found)
    for name in LONG_RUNNING:
        assert found[name].get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
        assert found[name].get("restart") in ("always", "unless-stopped", "on-failure"), f"{name} is not restarted"
    for name in ONE_SHOT:
        assert found[name].get("restart") == "no", f"{name} runs once"
    assert found["flower"]["profiles"] == ["flower"]


def test_airflow_services_wait_for_their_dependencies():
    for name, svc in airflow_services().items():
        deps = svc["depends_on"]
        assert deps["postgres"]["condition"] == deps["redis"]["condition"] == "service_healthy", name
        assert deps["minio-init"]["condition"] == "service_completed_successfully", name
        if name not in ("airflow-init", "airflow-cli"):
            assert deps["airflow-init"]["condition"] == "service_completed_successfully", name
    # Workers talk to the API server's execution API: they start once it is healthy.
    assert services()["airflow-worker"]["depends_on"]["airflow-apiserver"]["condition"] == "service_healthy"
    assert services()["minio-init"]["depends_on"]["minio"]["condition"] == "service_healthy"


def test_every_airflow_service_runs_the_image_built_here():
    names = set(airflow_services())
    assert {"airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer", "airflow-worker", "airflow-init"} <= names
    assert all(svc["image"] == services()["airflow-worker"]["image"] for svc in airflow_services().values())


def test_postgres_and_minio_data_on_named_volumes():
    named = set(compose()["volumes"])
    for service, path in (("postgres", "/var/lib/postgresql/data"), ("minio", "/data")):
        mounts = dict(v.split(":", 1)[::-1] for v in services()[service]["volumes"])
        assert mounts[path] in named, f"{service} keeps {path} on a named volume"


def test_workers_scale():
    worker = services()["airflow-worker"]
    assert "container_name" not in worker and "ports" not in worker and "hostname" not in worker


def test_download_staging_on_each_workers_own_volume():
    staging = image_env()["VLMDATA_STAGING"]
    assert "VLMDATA_STAGING" not in common_env() or common_env()["VLMDATA_STAGING"] == staging
    # An anonymous volume: one per worker container (a named volume would be shared by replicas).
    assert staging in services()["airflow-worker"]["volumes"]


def test_every_setting_the_package_reads_reaches_every_airflow_service():
    read = settings_the_package_reads()
    # The scan finds settings read directly and through a constant.
    assert {"VLMDATA_ROOT", "VLMDATA_STAGING", "VLMDATA_SA1B_LINKS", "HF_TOKEN", "GITHUB_TOKEN", "AWS_ENDPOINT_URL"} <= read
    from_image = set(image_env())
    for name, svc in airflow_services().items():
        missing = read - set(svc["environment"]) - from_image
        assert not missing, f"{name} does not get {sorted(missing)}: add them to x-airflow-common's environment"
    # The ones a user sets are taken from the shell or .env, with a default.
    for setting in read - from_image:
        assert common_env()[setting].startswith("${" + setting + ":-"), setting


def test_storage_root_is_minio_with_its_bucket_created_at_init():
    root = interpolate(common_env()["VLMDATA_ROOT"], {})
    bucket = re.fullmatch(r"s3://([^/]+)/.+", root).group(1)
    init = "\n".join(services()["minio-init"]["command"])
    assert f"mc mb --ignore-existing local/{bucket}" in init
    assert interpolate(common_env()["VLMDATA_ROOT"], {"VLMDATA_ROOT": "s3://lab/llava"}) == "s3://lab/llava"


def aws_default(env: dict[str, str]):
    """The `aws_default` connection as a task reads it from AIRFLOW_CONN_AWS_DEFAULT."""
    from airflow.sdk.definitions.connection import Connection

    return Connection.from_json(interpolate(common_env()["AIRFLOW_CONN_AWS_DEFAULT"], env), conn_id="aws_default")


def test_aws_default_connection_points_at_minio_and_can_point_at_aws():
    minio = aws_default({"MINIO_ROOT_USER": "lab", "MINIO_ROOT_PASSWORD": "secret-pw"})
    assert (minio.conn_type, minio.login, minio.password) == ("aws", "lab", "secret-pw")
    assert minio.extra_dejson == {"endpoint_url": "http://minio:9000", "region_name": "us-east-1"}
    minio_service = services()["minio"]["environment"]
    assert interpolate(minio_service["MINIO_ROOT_USER"], {}) == aws_default({}).login
    # A real bucket: no endpoint (boto3's default) and no keys (boto3's chain: instance role).
    aws = aws_default({"S3_ENDPOINT_URL": "", "S3_ACCESS_KEY_ID": "", "S3_SECRET_ACCESS_KEY": "", "S3_REGION": "eu-west-1"})
    assert not aws.login and not aws.password
    assert aws.extra_dejson == {"endpoint_url": "", "region_name": "eu-west-1"}


def test_pools_created_at_init():
    init = "\n".join(services()["airflow-init"]["command"])
    assert re.search(r"vlmdata pools > (\S+) && airflow pools import \1", init)


def test_login_created_at_init_and_documented():
    env = services()["airflow-init"]["environment"]
    assert env["_AIRFLOW_DB_MIGRATE"] == env["_AIRFLOW_WWW_USER_CREATE"] == "true"
    user = interpolate(env["_AIRFLOW_WWW_USER_USERNAME"], {})
    password = interpolate(env["_AIRFLOW_WWW_USER_PASSWORD"], {})
    assert "FabAuthManager" in common_env()["AIRFLOW__CORE__AUTH_MANAGER"]
    assert f"`{user}` / `{password}`" in (REPO / "docs" / "deployment.md").read_text()


def test_files_belong_to_airflow_uid():
    assert compose()["x-airflow-common"]["user"] == "${AIRFLOW_UID:-50000}:0"
    init = services()["airflow-init"]
    assert init["user"] == "0:0" and 'chown -R "${AIRFLOW_UID:-50000}:0"' in "\n".join(init["command"])


def test_workers_reach_the_execution_api_and_share_its_secret():
    env = common_env()
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://airflow-apiserver:8080/execution/"
    assert any(str(p).endswith(":8080") for p in services()["airflow-apiserver"]["ports"])
    assert env["AIRFLOW__API_AUTH__JWT_SECRET"]


# ---------------------------------------------------------------- Dockerfile and .dockerignore


def test_image_base_tag_matches_the_locked_airflow():
    froms = [args for op, args in dockerfile() if op == "FROM"]
    assert froms == [BASE_IMAGE]
    locked = re.search(r"^apache-airflow==(\S+)$", (REPO / "requirements.lock").read_text(), re.M).group(1)
    assert BASE_IMAGE.split(":")[1].startswith(locked + "-python3.11")


def test_image_installs_the_lock_and_the_package_not_editable():
    runs = [args for op, args in dockerfile() if op == "RUN" and "pip install" in args]
    lock = [run for run in runs if "-r /tmp/vlmdata/requirements.lock" in run]
    assert lock and '"apache-airflow==${AIRFLOW_VERSION}"' in lock[0]
    # The providers the compose file needs are resolved together with the lock's pins.
    auth_provider = re.match(r"airflow\.providers\.(\w+)\.", common_env()["AIRFLOW__CORE__AUTH_MANAGER"]).group(1)
    for provider in ("celery", "postgres", "redis", auth_provider):
        assert f"apache-airflow-providers-{provider}" in lock[0].split(), provider
    package = [run for run in runs if "/tmp/vlmdata/src" in run]
    assert package and all("--no-deps" in run and not re.search(r"(^|\s)(-e|--editable)(\s|$)", run) for run in package)
    copies = [args.split() for op, args in dockerfile() if op == "COPY"]
    assert ["--chown=airflow:0", "plugins/", "/tmp/vlmdata/src/plugins/"] in copies


def test_image_holds_the_dags_and_builds_the_package_with_its_include():
    copies = {tuple(args.split()[-2:]) for op, args in dockerfile() if op == "COPY"}
    assert ("dags/", "/opt/airflow/dags/") in copies
    # plugins/vlmdata/include links to ../../include: the build context must hold it there.
    assert ("include/", "/tmp/vlmdata/src/include/") in copies
    assert "VLMDATA_INCLUDE" not in image_env(), "the package carries include/: nothing to point at"


def test_dockerignore_keeps_local_state_out():
    ignored = {line.strip() for line in (REPO / ".dockerignore").read_text().splitlines() if line.strip() and not line.startswith("#")}
    assert {".venv", ".airflow", "data", ".demo", ".git", "bench/results", ".env"} <= ignored
    assert "**/__pycache__" in ignored


# ---------------------------------------------------------------- the package installed as the image installs it


def run_installed(site: Path, cwd: Path, code: str, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VLMDATA_INCLUDE", "VLMDATA_CATALOG")}
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env={**clean, "PYTHONPATH": str(site), **env}, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """vlmdata installed non-editably into a folder, from a copy of the sources (a build writes
    build/ and *.egg-info into its source tree; the worktree stays clean). uv builds it offline
    with the setuptools it cached when it built .venv."""
    tmp = tmp_path_factory.mktemp("installed")
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "plugins", src / "plugins", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    site = tmp / "site"
    cmd = [sys.executable, "-m", "uv", "pip", "install", "--offline", "--quiet", "--no-deps", "--python", sys.executable, "--target", str(site), str(src)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert not list(site.rglob("*.pth")) and not list(site.rglob("__editable__*")), "the install must be a copy, not a link to the sources"
    return site


LOAD_ALL = """
import json, vlmdata
from vlmdata.catalog import load_catalog
from vlmdata.layout import load_profiles
from vlmdata.mix import load_recipes
print(json.dumps({"file": vlmdata.__file__, "sources": len(load_catalog()), "recipes": len(load_recipes()), "layouts": len(load_profiles())}))
"""


def test_installed_package_carries_its_include(installed, tmp_path):
    """A wheel or an image install: the catalog, layouts and recipes travel inside the package."""
    done = run_installed(installed, tmp_path, LOAD_ALL)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout.splitlines()[-1])
    assert Path(found["file"]).is_relative_to(installed)
    assert found["sources"] == len(list((REPO / "include" / "catalog" / "sources").glob("*.yaml"))) > 0
    assert found["recipes"] == len(list((REPO / "include" / "recipes").glob("*.yaml"))) > 0
    assert found["layouts"] == len(list((REPO / "include" / "layouts").glob("*.yaml"))) > 0
    include = installed / "vlmdata" / "include"
    assert include.is_dir() and not include.is_symlink(), "the install holds a copy of include/, not the link"


def test_installed_cli_lists_every_source_from_any_folder(installed, tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "vlmdata.cli", "sources"], cwd=tmp_path, capture_output=True, text=True, timeout=120,
        env={**{k: v for k, v in os.environ.items() if k not in ("VLMDATA_INCLUDE", "VLMDATA_CATALOG")}, "PYTHONPATH": str(installed)},
    )
    assert done.returncode == 0, done.stderr
    for path in (REPO / "include" / "catalog" / "sources").glob("*.yaml"):
        assert path.stem in done.stdout, f"{path.stem} missing from `vlmdata sources`:\n{done.stdout}"


def test_dag_files_import_against_the_installed_package(installed, tmp_path):
    """What the image's dag-processor does: dags/ copied apart, the package from site-packages."""
    dags = tmp_path / "dags"
    shutil.copytree(REPO / "dags", dags, ignore=shutil.ignore_patterns("__pycache__"))
    code = (
        "import json, vlmdata\n"
        "from airflow.dag_processing.dagbag import DagBag\n"
        f"bag = DagBag({str(dags)!r})\n"
        "print(json.dumps({'file': vlmdata.__file__, 'dags': len(bag.dags), 'errors': {k: str(v) for k, v in bag.import_errors.items()}}))\n"
    )
    done = run_installed(installed, tmp_path, code, AIRFLOW_HOME=str(tmp_path / "airflow"))
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout.splitlines()[-1])
    assert Path(found["file"]).is_relative_to(installed)
    assert found["errors"] == {} and found["dags"] > 0


def test_vlmdata_include_points_elsewhere_and_a_wrong_one_says_so(installed, tmp_path):
    other = tmp_path / "include"
    shutil.copytree(REPO / "include", other)
    (other / "catalog" / "sources" / "coco_train2017.yaml").unlink()
    done = run_installed(installed, tmp_path, LOAD_ALL, VLMDATA_INCLUDE=str(other))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1])["sources"] == len(list((REPO / "include" / "catalog" / "sources").glob("*.yaml"))) - 1
    done = run_installed(installed, tmp_path, LOAD_ALL, VLMDATA_INCLUDE=str(tmp_path / "nowhere"))
    assert done.returncode != 0
    assert "catalog folder does not exist (the package's include/ folder; VLMDATA_INCLUDE may point to another)" in done.stderr


def test_installed_package_carries_the_ui_plugin_and_its_templates(installed):
    """What the Docker image gets: the templates of the reports and the page, and the entry point
    through which Airflow finds the UI plugin."""
    templates = {path.name for path in (installed / "vlmdata" / "templates").glob("*.html")}
    assert {"base.html", "status.html", "integrity.html", "index.html"} <= templates
    assert (installed / "vlmdata" / "templates" / "composition.svg").is_file()
    (entry_points,) = installed.glob("vlmdata-*.dist-info/entry_points.txt")
    assert "[airflow.plugins]\nvlmdata = vlmdata.ui:VlmdataPlugin" in entry_points.read_text()
