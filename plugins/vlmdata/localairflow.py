"""Run a local Airflow (API server, scheduler, DAG processor) on SQLite with the LocalExecutor,
or, distributed, with the CeleryExecutor and Celery workers as separate processes.

The one piece of code that starts Airflow on this machine: ``make run`` uses :func:`main`,
the end-to-end tests use :class:`LocalAirflow` directly::

    with LocalAirflow(home, dags_folder, port=free_port) as airflow:
        airflow.wait_ready()
        ...  # talk to airflow.url with user "admin" and airflow.admin_password

The distributed mode (the production topology, on one machine) takes a :class:`Celery`:
metadata and Celery results in PostgreSQL, Redis as the broker, and one ``airflow celery
worker`` process per :class:`CeleryWorker`, each with its own staging folder, log server port
and hostname (the ``hostname`` its task instances record). :mod:`vlmdata.services` starts the
PostgreSQL and Redis servers.

Every component runs as a subprocess in its own process group, with its output in a file
under ``log_dir``. Every process started here (task runners included, which put themselves
in process groups of their own) carries a marker in its environment, so :meth:`stop` can
find and end all of them.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil
import requests

REPO_ROOT = Path(__file__).resolve().parents[2]
USER = "admin"
_MARKER = "VLMDATA_LOCALAIRFLOW_ID"
_WORKER_MARKER = "VLMDATA_LOCALAIRFLOW_WORKER"  # a Celery worker's name, in its processes' environment
# Stopped in this order (Celery workers, if any, right after the scheduler): the API server
# last, since stopping tasks still report to it.
_COMPONENTS = ("scheduler", "dag-processor", "api-server")

# SQLite lets one writer in at a time. On a busy 2-core machine the scheduler, the API server
# and the DAG processor can hold the lock longer than sqlite3's default 5 s wait, and the
# scheduler dies on "database is locked": every Airflow process waits up to a minute instead.
SQLITE_CONNECT_ARGS = {"timeout": 60}


@dataclass(frozen=True)
class CeleryWorker:
    """One ``airflow celery worker`` process: what a worker machine is in production."""

    name: str  # the Celery node is <name>@<this host>; its task instances record <name> as hostname
    staging: Path  # its VLMDATA_STAGING (a worker's local disk)
    concurrency: int = 2  # task slots


@dataclass(frozen=True)
class Celery:
    """The distributed mode: CeleryExecutor, metadata database and Celery results in PostgreSQL,
    Redis as the broker (see :mod:`vlmdata.services` for throwaway servers)."""

    database: str  # SQLAlchemy URL, e.g. postgresql+psycopg2://airflow@127.0.0.1:5432/airflow
    broker: str  # redis://127.0.0.1:6379/0
    workers: tuple[CeleryWorker, ...]


def worker_hostname() -> str:
    """``[core] hostname_callable`` of a :class:`CeleryWorker`: its name, so that the task
    instances it runs say which worker ran them (every worker here shares one machine name).
    Airflow also reads a running task's log from http://<hostname>:<log server port>/: the
    names do not resolve, so a running task's log shows once it has finished (shared log folder)."""
    return os.environ[_WORKER_MARKER]


def _settings(
    home: Path, dags_folder: Path, port: int, log_server_port: int,
    celery: Celery | None = None, task_heartbeat_timeout: int | None = None,
) -> dict[str, str]:
    """Airflow settings (strings, as environment values): a quick single-machine instance
    (SQLite, LocalExecutor), or with ``celery`` the distributed one."""
    settings = {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags_folder),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        # Task runners report to the execution API; without this they try port 8080.
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__WORKERS": "1",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{USER}:admin",
        # The scheduler's log server (logs of running tasks); one port per instance.
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(log_server_port),
        "AIRFLOW__LOGGING__COLORED_CONSOLE_LOG": "False",
        # A small machine and SQLite: one task slot per core (at least 2), two parsing processes.
        "AIRFLOW__CORE__PARALLELISM": str(max(2, os.cpu_count() or 2)),
        "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "2",
        # New DAG files show up within seconds (a directory listing; re-parsing every file stays
        # at the default of every 30 s, which is what costs CPU).
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
    }
    if celery is None:
        settings["AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS"] = "vlmdata.localairflow.SQLITE_CONNECT_ARGS"
        settings["AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS_ASYNC"] = "vlmdata.localairflow.SQLITE_CONNECT_ARGS"
    else:
        settings.update({
            "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": celery.database,
            "AIRFLOW__CELERY__BROKER_URL": celery.broker,
            "AIRFLOW__CELERY__RESULT_BACKEND": f"db+{celery.database}",
            # The scheduler hands out as many tasks as the workers have slots.
            "AIRFLOW__CORE__PARALLELISM": str(sum(w.concurrency for w in celery.workers)),
        })
    if task_heartbeat_timeout is not None:
        # A task whose runner has not heartbeaten for this long (its worker died or froze) is
        # failed by the scheduler and retried elsewhere (Airflow's default: 300 s).
        settings["AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT"] = str(task_heartbeat_timeout)
    return settings


def _worker_settings(worker: CeleryWorker, log_server_port: int) -> dict[str, str]:
    """What differs between Celery workers: staging folder, log server port, hostname."""
    return {
        "VLMDATA_STAGING": str(worker.staging),
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(log_server_port),
        "AIRFLOW__CORE__HOSTNAME_CALLABLE": "vlmdata.localairflow.worker_hostname",
        _WORKER_MARKER: worker.name,
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _bytecode_env() -> dict[str, str]:
    """Where Python may not write bytecode (``PYTHONDONTWRITEBYTECODE``, as in some sandboxes and
    containers), every task process compiles Airflow from source again: 42 s instead of 4 s to
    import ``airflow.sdk`` on a busy 2-core machine. Keep the bytecode in a cache folder outside
    the virtual environment instead (``PYTHONPYCACHEPREFIX``)."""
    if not os.environ.get("PYTHONDONTWRITEBYTECODE"):
        return {}
    prefix = os.environ.get("PYTHONPYCACHEPREFIX") or str(Path(tempfile.gettempdir()) / "vlmdata-pycache")
    return {"PYTHONDONTWRITEBYTECODE": "", "PYTHONPYCACHEPREFIX": prefix}


def _port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("0.0.0.0", port))
        except OSError:
            return True
    return False


def _might_contain_dag(path: Path) -> bool:
    """Airflow's default discovery heuristic: a file mentioning both "airflow" and "dag"."""
    text = path.read_bytes().lower()
    return b"airflow" in text and b"dag" in text


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class LocalAirflow:
    def __init__(
        self,
        home: Path,
        dags_folder: Path,
        port: int = 8080,
        extra_env: dict[str, str] | None = None,
        log_dir: Path | None = None,
        log_server_port: int = 8793,
        celery: Celery | None = None,
        task_heartbeat_timeout: int | None = None,
    ):
        self.home = Path(home).resolve()
        self.dags_folder = Path(dags_folder).resolve()
        self.port = port
        self.log_dir = Path(log_dir) if log_dir else self.home / "logs"
        self.url = f"http://127.0.0.1:{port}"
        self.celery = celery
        self._id = uuid.uuid4().hex
        self._procs: dict[str, subprocess.Popen] = {}
        # Inherited AIRFLOW_* variables are dropped: the instance depends on its arguments only.
        env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW_")}
        env.update(_settings(self.home, self.dags_folder, port, log_server_port, celery, task_heartbeat_timeout))
        env.update(_bytecode_env())
        env.update({k: str(v) for k, v in (extra_env or {}).items()})
        bin_dir = str(Path(sys.executable).parent)  # the venv's bin, for `airflow` in tasks
        env["PATH"] = os.pathsep.join([bin_dir, env.get("PATH", "")])
        env[_MARKER] = self._id
        self.env = env
        # Each Celery worker: the instance's environment with its own staging, port and name.
        self._workers = {w.name: w for w in (celery.workers if celery else ())}
        self._worker_env = {
            w.name: {**env, **_worker_settings(w, free_port())} for w in self._workers.values()
        }

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        log_port = int(self.env["AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT"])
        for what, port in (("API", self.port), ("log server", log_port)):
            if _port_in_use(port):
                raise RuntimeError(f"{what} port {port} is in use: another Airflow running?")
        self.home.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        migrate_log = self.log_dir / "db-migrate.log"
        with migrate_log.open("w") as out:
            done = subprocess.run(self._airflow("db", "migrate"), env=self.env, stdout=out, stderr=out)
        if done.returncode:
            raise RuntimeError(f"airflow db migrate failed:\n{_tail(migrate_log)}")
        commands = {
            "api-server": ("api-server", "--host", "127.0.0.1", "--port", str(self.port)),
            "scheduler": ("scheduler",),
            "dag-processor": ("dag-processor",),
        }
        for name, args in commands.items():
            self._start_process(name, args, self.env)
        for name in self._workers:
            self.start_worker(name)

    def start_worker(self, name: str) -> None:
        """Start (or, after :meth:`signal_worker` with SIGKILL, restart) a Celery worker."""
        worker = self._workers[name]
        worker.staging.mkdir(parents=True, exist_ok=True)
        args = (
            "celery", "worker", "--celery-hostname", self.worker_node(name),
            "--concurrency", str(worker.concurrency), "--queues", "default",
            "--pid", str(self.home / f"worker-{name}.pid"),  # the default pid file is one per home
        )
        self._start_process(name, args, self._worker_env[name])

    def _start_process(self, name: str, args: tuple[str, ...], env: dict[str, str]) -> None:
        with (self.log_dir / f"{name}.log").open("a") as out:
            self._procs[name] = subprocess.Popen(
                self._airflow(*args), env=env, stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, process_group=0,
            )

    def wait_ready(self, timeout: float = 300) -> None:
        """Wait until the API answers, all components are healthy (Celery workers answer a ping)
        and every DAG file is parsed.

        A file counts as parsed once a DAG from it or an import error for it is visible.
        """
        deadline = time.monotonic() + timeout
        status = "API server not answering"
        while time.monotonic() < deadline:
            self.check_running()
            try:
                status = self._readiness()
            except (requests.RequestException, OSError, ValueError, KeyError) as exc:
                status = f"not ready: {exc!r}"
            if status == "ready":
                return
            time.sleep(1)
        logs = "\n".join(f"--- {n}.log ---\n{_tail(self.log_dir / f'{n}.log')}" for n in self._procs)
        raise TimeoutError(f"Airflow not ready after {timeout} s: {status}\n{logs}")

    def stop(self, grace: float = 20) -> None:
        """SIGTERM each component's process group, wait, then SIGKILL whatever is left."""
        tracked = {p.pid: p for p in self.processes()}
        order = [_COMPONENTS[0], *self._workers, *_COMPONENTS[1:]]
        for name in order:
            proc = self._procs.get(name)
            if proc is None:
                continue
            for sig in (signal.SIGTERM, signal.SIGCONT):  # SIGCONT: a stopped worker must see the TERM
                with _suppress_gone():
                    os.killpg(proc.pid, sig)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        tracked.update((p.pid, p) for p in self.processes())
        for proc in self._procs.values():
            with _suppress_gone():
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        self._procs.clear()
        # What is left lives outside those groups: task runners and anything they started.
        _kill_all(tracked.values(), again=self.processes)

    def __enter__(self) -> LocalAirflow:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- Celery workers ------------------------------------------------------------------

    @staticmethod
    def worker_node(name: str) -> str:
        """The Celery node name of a worker (``airflow celery`` commands take it)."""
        return f"{name}@{socket.gethostname()}"

    def worker_processes(self, name: str) -> list[psutil.Process]:
        """Every live process of a Celery worker: the worker, its pool, its log server, the task
        runners it started and anything they started (found by the worker's environment marker
        too, since task runners put themselves in process groups of their own)."""
        popen = self._procs.get(name)
        return self._find([popen] if popen else [], {_MARKER: self._id, _WORKER_MARKER: name})

    def signal_worker(self, name: str, sig: int) -> list[psutil.Process]:
        """Send ``sig`` to every process of a worker (SIGSTOP freezes it, SIGCONT thaws it).
        SIGKILL kills the whole tree, waits until it is gone and forgets the worker (so that
        :meth:`check_running` does not report it; :meth:`start_worker` brings it back)."""
        procs = self.worker_processes(name)
        for proc in procs:
            with _suppress_gone():
                proc.send_signal(sig)
        if sig == signal.SIGKILL:
            _kill_all(procs, again=lambda: self.worker_processes(name))
            popen = self._procs.pop(name, None)
            if popen is not None:
                popen.wait()
        return procs

    # -- information -----------------------------------------------------------------

    @property
    def user(self) -> str:
        return USER

    @property
    def admin_password(self) -> str:
        """The password the API server generated for the admin user (on its first start)."""
        passwords = self.home / "simple_auth_manager_passwords.json.generated"
        return json.loads(passwords.read_text())[USER]

    def processes(self) -> list[psutil.Process]:
        """Every live process of this instance: the components, their descendants, and any
        other process carrying this instance's environment marker (e.g. orphaned task runners)."""
        return self._find(list(self._procs.values()), {_MARKER: self._id})

    def check_running(self) -> None:
        """Raise, with the end of its log, if a component (or a Celery worker) has exited."""
        for name, proc in self._procs.items():
            if proc.poll() is not None:
                log = self.log_dir / f"{name}.log"
                raise RuntimeError(f"{name} exited with {proc.returncode}; {log}:\n{_tail(log)}")

    # -- internals -------------------------------------------------------------------

    @staticmethod
    def _airflow(*args: str) -> list[str]:
        return [sys.executable, "-m", "airflow", *args]

    @staticmethod
    def _find(popens: list[subprocess.Popen], marks: dict[str, str]) -> list[psutil.Process]:
        """The live processes among ``popens``, their descendants, and every process whose
        environment carries all of ``marks``."""
        found: dict[int, psutil.Process] = {}
        for popen in popens:
            with _suppress_gone():
                top = psutil.Process(popen.pid)
                found.update((p.pid, p) for p in [top, *top.children(recursive=True)])
        for proc in psutil.process_iter():
            with _suppress_gone():
                if proc.pid != os.getpid() and all(proc.environ().get(k) == v for k, v in marks.items()):
                    found[proc.pid] = proc
        return [p for p in found.values() if _alive(p)]

    def _readiness(self) -> str:
        health = requests.get(f"{self.url}/api/v2/monitor/health", timeout=5).json()
        unhealthy = [
            part for part in ("metadatabase", "scheduler", "dag_processor")
            if (health.get(part) or {}).get("status") != "healthy"
        ]
        if unhealthy:
            return f"unhealthy: {', '.join(unhealthy)}"
        silent = self._silent_workers()
        if silent:
            return f"Celery workers not answering: {', '.join(silent)}"
        session = requests.Session()
        token = session.post(
            f"{self.url}/auth/token", json={"username": USER, "password": self.admin_password}, timeout=10
        ).json()["access_token"]
        session.headers["Authorization"] = f"Bearer {token}"
        seen = {d["fileloc"] for d in self._list(session, "dags", "dags")}
        seen |= {e["filename"] for e in self._list(session, "importErrors", "import_errors")}
        seen = {str((self.dags_folder / f).resolve()) for f in seen}  # import errors are relative
        files = [p for p in self.dags_folder.rglob("*.py") if _might_contain_dag(p)]
        missing = sorted(str(p.relative_to(self.dags_folder)) for p in files if str(p.resolve()) not in seen)
        if missing:
            return f"DAG files not parsed yet: {', '.join(missing)}"
        self._ensure_pools(session)
        return "ready"

    def _silent_workers(self) -> list[str]:
        """The Celery workers that do not answer a ping through the broker yet."""
        if not self._workers:
            return []
        from celery import Celery as CeleryApp

        app = CeleryApp(broker=self.celery.broker)
        try:
            replies = app.control.ping(timeout=5)
        finally:
            app.close()
        answered = {node for reply in replies for node in reply}
        return [name for name in self._workers if self.worker_node(name) not in answered]

    def _ensure_pools(self, session: requests.Session) -> None:
        """The per-host pools the DAGs use: Airflow does not schedule tasks of a missing pool."""
        from .catalog import load_catalog
        from .pools import pools

        for name, pool in pools(load_catalog(self.env.get("VLMDATA_CATALOG"))).items():
            body = {"name": name, **pool}
            response = session.post(f"{self.url}/api/v2/pools", json=body, timeout=10)
            if response.status_code == 409:  # exists: keep the slots an admin may have changed
                continue
            response.raise_for_status()

    def _list(self, session: requests.Session, endpoint: str, key: str) -> list[dict]:
        items: list[dict] = []
        while True:
            response = session.get(
                f"{self.url}/api/v2/{endpoint}", params={"limit": 100, "offset": len(items)}, timeout=10
            )
            response.raise_for_status()
            page = response.json()
            items += page[key]
            if not page[key] or len(items) >= page["total_entries"]:
                return items


class _suppress_gone:
    """Ignore processes that are already gone (or not ours to inspect)."""

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        return exc_type is not None and issubclass(
            exc_type, (ProcessLookupError, psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess)
        )


def _kill_all(procs, again: Callable[[], list[psutil.Process]]) -> None:
    """SIGKILL ``procs`` and wait for them; then whatever ``again`` finds (a process may have
    forked meanwhile), up to five rounds."""
    procs = list(procs)
    for _ in range(5):
        leftovers = [p for p in procs if _alive(p)]
        if not leftovers:
            return
        for p in leftovers:
            with _suppress_gone():
                p.kill()
        psutil.wait_procs(leftovers, timeout=5)
        procs = again()


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _interrupt(*_) -> None:
    raise KeyboardInterrupt


def main() -> None:
    """`make run`: Airflow with the repository's DAGs on http://localhost:8080 until Ctrl-C."""
    port = int(os.environ.get("VLMDATA_PORT", "8080"))
    # The DAGs' own settings (VLMDATA_ROOT, VLMDATA_CATALOG if set) reach the tasks through the
    # environment; Airflow settings from the shell (AIRFLOW__SECTION__KEY, ...) are passed on.
    passed_on = ("AIRFLOW__", "AIRFLOW_CONN_", "AIRFLOW_VAR_")
    extra_env = {k: v for k, v in os.environ.items() if k.startswith(passed_on)}
    extra_env["VLMDATA_ROOT"] = os.environ.get("VLMDATA_ROOT", str(REPO_ROOT / "data"))
    # The scheduler's log server is internal: take the usual port if free, any free one if not.
    log_port = 8793 if not _port_in_use(8793) else free_port()
    airflow = LocalAirflow(REPO_ROOT / ".airflow", REPO_ROOT / "dags", port=port, extra_env=extra_env, log_server_port=log_port)
    for sig in (signal.SIGINT, signal.SIGTERM):  # both stop cleanly (even if SIGINT was ignored)
        signal.signal(sig, _interrupt)
    print(f"Starting Airflow (logs in {airflow.log_dir}) ...", flush=True)
    try:
        airflow.start()
        airflow.wait_ready(timeout=600)  # minutes on a busy 2-core machine
        print(f"Airflow is up: http://localhost:{port}")
        print(f"  user: {airflow.user}  password: {airflow.admin_password}")
        print(f"  logs: {airflow.log_dir} (components: *.log, tasks: dag_id=*/)")
        print(f"  data: {extra_env['VLMDATA_ROOT']}")
        print("Ctrl-C stops it.", flush=True)
        while True:
            time.sleep(1)
            airflow.check_running()
    except KeyboardInterrupt:
        pass
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):  # a second Ctrl-C must not cut the stop short
            signal.signal(sig, signal.SIG_IGN)
        print("Stopping Airflow ...", flush=True)
        airflow.stop()
        print("Airflow stopped.")


if __name__ == "__main__":
    main()
