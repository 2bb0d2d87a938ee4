"""Start-up: the CPU an Airflow process pays for our package before any work (issue 10 item 6,
issue 12 item 1).

Two costs, per DAG file, each in a fresh interpreter that has first imported what Airflow has
loaded already where the cost is paid (the task SDK and its task runner: the DAG processor and
a Celery or Local worker fork their children from a process that has it):

* **parse**: the DAG file parsed as Airflow parses it (``BundleDagBag``). The DAG processor pays
  it for every file at every re-parse (every 30 s by default), and every task again at start.
  Goal: 0.3 CPU-s.
* **task start**: the parse plus the modules the file's heaviest task imports when its
  ``execute`` runs (``TASK_IMPORTS``): what a task process pays before its first byte of work.
  Goal: 1 CPU-s.

The peer is the floor every Airflow process pays anyway: ``python -c 'import airflow.sdk'`` in
a fresh process. CPU time (user + system), not wall time: on a busy machine the wall time
measures the other processes; the CPU time is what this one costs. The children may write
bytecode (``PYTHONDONTWRITEBYTECODE`` is dropped) and each runs once untimed first, so our own
modules are read from ``__pycache__`` as in a deployment (the venv's packages are compiled at
install: ``make .venv/.installed``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

from . import REPO_ROOT
from .common import Contender, Context, Row, python, race, ratio

NAME = "startup"
DAG_FILES = ("acquire.py", "verify.py", "layout.py", "mix.py")
PARSE_GOAL = 0.3  # CPU-s per DAG file parse, beyond the task SDK (issue 12)
TASK_GOAL = 1.0  # CPU-s per task start: parse + the task's own imports (issue 10)
# What the heaviest task of each DAG file imports when it runs (the acquisition: a Hub fetch;
# the verification: check_images, which decodes with Pillow).
TASK_IMPORTS = {
    "acquire.py": ("vlmdata.acquire", "vlmdata.settings", "vlmdata.fetch.hf"),
    "verify.py": ("vlmdata.verify", "vlmdata.settings", "vlmdata.images"),
    "layout.py": ("vlmdata.layout", "vlmdata.settings"),
    "mix.py": ("vlmdata.mix", "vlmdata.settings"),
}
# Modules the parse must not import: the transports' and the image stack's dependencies.
HEAVY = ("huggingface_hub", "requests", "httpx", "PIL", "boto3", "botocore", "vlmdata.acquire", "vlmdata.crawl", "vlmdata.fetch.http")


def measure(dag_file: str) -> dict:
    """In this (fresh) process: CPU seconds to import the task SDK, to parse ``dag_file`` with
    ``BundleDagBag``, and to import the task's modules after it; and the heavy modules the parse
    loaded beyond those the SDK had."""
    cpu0 = time.process_time()
    import airflow.sdk.execution_time.task_runner  # noqa: F401  (what the forking process has loaded)
    from airflow.dag_processing.dagbag import BundleDagBag

    loaded = set(sys.modules)
    cpu1, wall1 = time.process_time(), time.perf_counter()
    dags = REPO_ROOT / "dags"
    bag = BundleDagBag(dag_folder=str(dags / dag_file), safe_mode=False, load_op_links=False, bundle_path=dags, bundle_name="dags-folder")
    cpu2, wall2 = time.process_time(), time.perf_counter()
    if bag.import_errors:
        raise SystemExit(f"{dag_file}: {bag.import_errors}")
    heavy = sorted(name for name in HEAVY if name in sys.modules and name not in loaded)  # httpx: the SDK's own
    import importlib

    for module in TASK_IMPORTS[dag_file]:
        importlib.import_module(module)
    cpu3 = time.process_time()
    return {"sdk_cpu_s": cpu1 - cpu0, "parse_cpu_s": cpu2 - cpu1, "parse_wall_s": wall2 - wall1, "task_cpu_s": cpu3 - cpu1, "dags": len(bag.dags), "heavy": heavy}


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run(ctx: Context) -> list[Row]:
    measured: dict[str, list[dict]] = {f: [] for f in DAG_FILES}
    floor: list[float] = []
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}

    def child(dag_file: str):
        def go():
            out = subprocess.run([python(), "-m", "bench.startup", "--child", dag_file], cwd=REPO_ROOT, capture_output=True, text=True, env=env)
            if out.returncode:
                raise RuntimeError(f"parsing {dag_file} failed: {out.stderr.strip()[-600:]}")
            measured[dag_file].append(json.loads(out.stdout.strip().splitlines()[-1]))

        return go

    def bare_sdk():
        before = _children_cpu()
        subprocess.run([python(), "-c", "import airflow.sdk"], cwd=REPO_ROOT, check=True, capture_output=True, env=env)
        floor.append(_children_cpu() - before)

    contenders = [Contender("import airflow.sdk", bare_sdk), *(Contender(f"dags/{f}", child(f)) for f in DAG_FILES)]
    for contender in contenders:  # untimed: writes our modules' bytecode
        contender.run()
    floor.clear()
    for runs in measured.values():
        runs.clear()
    race(contenders, ctx.rounds, ctx.log)
    sdk = min(floor)
    rows = []
    for dag_file in DAG_FILES:
        runs = measured[dag_file]
        parse = min(r["parse_cpu_s"] for r in runs)
        task = min(r["task_cpu_s"] for r in runs)
        heavy = runs[0]["heavy"]
        data = {"peer": "import airflow.sdk", "peer_cpu_s": floor, "children": runs}
        rows.append(Row(
            f"parse dags/{dag_file} ({runs[0]['dags']} DAGs), CPU beyond the task SDK", f"{parse:.2f} CPU-s", f"import airflow.sdk: {sdk:.2f} CPU-s",
            ratio(parse, sdk),
            f"goal {PARSE_GOAL} CPU-s: {'met' if parse <= PARSE_GOAL else 'NOT met'} (best of {len(runs)}; BundleDagBag as the DAG processor and a task "
            f"runner call it, after the task SDK they have loaded); heavy modules imported: {', '.join(heavy) or 'none'}",
            data,
        ))
        rows.append(Row(
            f"task start, dags/{dag_file}: parse + {', '.join(TASK_IMPORTS[dag_file])}", f"{task:.2f} CPU-s", f"import airflow.sdk: {sdk:.2f} CPU-s",
            ratio(task, sdk),
            f"goal {TASK_GOAL} CPU-s: {'met' if task <= TASK_GOAL else 'NOT met'} (best of {len(runs)}; what a task process forked from a worker pays "
            "before its work: the DAG file parse and its operator's imports)",
            data,
        ))
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.startup")
    parser.add_argument("--child", required=True, metavar="DAG_FILE")
    print(json.dumps(measure(parser.parse_args(sys.argv[1:]).child)))
