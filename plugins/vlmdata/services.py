"""Throwaway PostgreSQL and Redis servers on loopback: the metadata database, result backend and
Celery broker of the distributed Airflow the end-to-end tests start (see
:class:`vlmdata.localairflow.LocalAirflow` with a :class:`~vlmdata.localairflow.Celery`)::

    with celery_servers(work, workers=2) as celery:   # PostgreSQL, Redis, two workers' names
        airflow = LocalAirflow(home, dags, celery=celery, ...)

Each is a real server from Debian's packages (``postgresql``, ``redis-server``); when they are
missing, :func:`ensure_installed` installs them with apt-get (as root; ``.ci/run`` and the test
setup call it). Data lives in a folder of its own that :meth:`stop` removes: nothing persists.
The UI's browser test finds (or installs) Debian's ``chromium`` the same way.

    python -m vlmdata.services install     # what .ci/run does before `make test`: all three
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .localairflow import Celery, CeleryWorker, _tail, free_port

# PostgreSQL refuses to run as root: as root, the server runs as this unprivileged user.
UNPRIVILEGED_USER = "nobody"


# ------------------------------------------------------------------------------ install


def postgres_bin_dir() -> Path | None:
    """The newest installed PostgreSQL's bin folder (Debian: /usr/lib/postgresql/<version>/bin)."""
    candidates = [p.parent for p in Path("/usr/lib/postgresql").glob("*/bin/postgres")]
    if candidates:
        return max(candidates, key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0)
    on_path = shutil.which("postgres")  # another distribution, or a build from source
    return Path(on_path).parent if on_path else None


def chromium_path() -> Path | None:
    """Debian's Chromium (the browser the UI's browser test drives), if installed."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    return Path(found) if found else None


# Debian package -> how to find what it installs
FINDERS = {
    "postgresql": postgres_bin_dir,
    "redis-server": lambda: shutil.which("redis-server"),
    "chromium": chromium_path,
}
SERVERS = ("postgresql", "redis-server")  # what the distributed end-to-end tests run
EVERYTHING = (*SERVERS, "chromium")  # and the browser test's browser


def missing_packages(packages: tuple[str, ...] = SERVERS) -> list[str]:
    return [name for name in packages if FINDERS[name]() is None]


def ensure_installed(packages: tuple[str, ...] = SERVERS) -> None:
    """Install the distribution's packages (PostgreSQL and Redis by default) when missing."""
    missing = missing_packages(packages)
    if not missing:
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise RuntimeError(
            f"{', '.join(missing)} not installed; install {'them' if len(missing) > 1 else 'it'} "
            f"(Debian/Ubuntu: sudo apt-get install -y {' '.join(missing)})"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing]):
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1800)
        if done.returncode:
            raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    still = missing_packages(packages)
    if still:
        raise RuntimeError(f"apt-get installed {', '.join(missing)} but {', '.join(still)} still not found")


# ------------------------------------------------------------------------------ servers


class _Server:
    """A server process in its own process group, its output in ``<work>/server.log``, its data
    in ``<work>/data``. Subclasses give the command and a readiness probe."""

    name = "server"
    ready_timeout = 180.0  # seconds; start-up takes a few on an idle machine, far more at a load of 10
    stop_signal = signal.SIGTERM

    def __init__(self, work: Path | None = None, port: int | None = None):
        self._own_work = work is None
        self.work = Path(work) if work else Path(tempfile.mkdtemp(prefix=f"vlmdata-{self.name}-"))
        self.port = port or free_port()
        self.log = self.work / "server.log"
        self.proc: subprocess.Popen | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def ping(self) -> None:
        """Raise unless the server answers."""
        raise NotImplementedError

    def prepare(self) -> None:
        """Create the data folder (before the server starts)."""

    def start(self) -> _Server:
        ensure_installed()
        self.work.mkdir(parents=True, exist_ok=True)
        self.prepare()
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(self.command(), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, process_group=0)
        self.wait_ready()
        return self

    def wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout
        error: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{_tail(self.log)}")
            try:
                self.ping()
                return
            except Exception as exc:  # noqa: BLE001  (any refusal means: not yet)
                error = exc
            time.sleep(0.5)
        raise TimeoutError(f"{self.name} not answering on port {self.port} after {self.ready_timeout:.0f} s ({error!r}):\n{_tail(self.log)}")

    def stop(self, grace: float = 30) -> None:
        """A clean shutdown (``stop_signal``), then SIGKILL after ``grace`` seconds; the data goes."""
        if self.proc is not None:
            for sig, wait in ((self.stop_signal, grace), (signal.SIGKILL, 30)):
                try:
                    os.killpg(self.proc.pid, sig)
                except ProcessLookupError:
                    pass
                try:
                    self.proc.wait(wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
            self.proc = None
        shutil.rmtree(self.work / "data", ignore_errors=True)
        if self._own_work:
            shutil.rmtree(self.work, ignore_errors=True)

    def __enter__(self):
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()


class PostgresServer(_Server):
    """PostgreSQL on 127.0.0.1:<port>, superuser ``airflow`` (trust authentication on loopback:
    a throwaway server for tests), its socket in the data folder, durability off (fsync,
    synchronous commit: nothing here outlives the test)."""

    name = "postgres"
    stop_signal = signal.SIGINT  # PostgreSQL's "fast" shutdown: ends sessions, writes a checkpoint
    user = "airflow"

    def _run_as(self) -> list[str]:
        """The prefix that drops root (PostgreSQL refuses to run as root)."""
        if os.geteuid() != 0:
            return []
        account = pwd.getpwnam(UNPRIVILEGED_USER)
        return ["setpriv", f"--reuid={account.pw_uid}", f"--regid={account.pw_gid}", "--clear-groups"]

    def _chown(self, path: Path) -> None:
        if os.geteuid() == 0:
            account = pwd.getpwnam(UNPRIVILEGED_USER)
            os.chown(path, account.pw_uid, account.pw_gid)

    def prepare(self) -> None:
        # The work folder may sit under a private (0700, root) tree such as pytest's: the data
        # folder goes to a fresh folder of the system temp dir the unprivileged user can reach.
        self.data = Path(tempfile.mkdtemp(prefix="vlmdata-pgdata-"))
        self._chown(self.data)
        bin_dir = postgres_bin_dir()
        with self.log.open("ab") as out:
            done = subprocess.run(
                [*self._run_as(), str(bin_dir / "initdb"), "-D", str(self.data / "db"), "-U", self.user,
                 "--auth=trust", "--encoding=UTF8", "--locale=C", "--no-sync"],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, timeout=600,
            )
        if done.returncode:
            raise RuntimeError(f"initdb failed ({done.returncode}):\n{_tail(self.log)}")

    def command(self) -> list[str]:
        settings = {
            "listen_addresses": "127.0.0.1", "port": str(self.port), "unix_socket_directories": str(self.data),
            "fsync": "off", "synchronous_commit": "off", "full_page_writes": "off",
            # API server, scheduler, DAG processor, Celery workers and their result backend each
            # keep a pool of connections.
            "max_connections": "300",
        }
        args = [arg for key, value in settings.items() for arg in ("-c", f"{key}={value}")]
        return [*self._run_as(), str(postgres_bin_dir() / "postgres"), "-D", str(self.data / "db"), *args]

    def url(self, database: str = "postgres", driver: str = "postgresql+psycopg2") -> str:
        return f"{driver}://{self.user}@127.0.0.1:{self.port}/{database}"

    def _connect(self, database: str = "postgres"):
        import psycopg2

        return psycopg2.connect(host="127.0.0.1", port=self.port, user=self.user, dbname=database, connect_timeout=10)

    def ping(self) -> None:
        self._connect().close()

    def create_database(self, name: str) -> None:
        connection = self._connect()
        try:
            connection.autocommit = True  # CREATE DATABASE cannot run in a transaction
            with connection.cursor() as cursor:
                cursor.execute(f'CREATE DATABASE "{name}"')
        finally:
            connection.close()

    def stop(self, grace: float = 30) -> None:
        super().stop(grace)
        data = getattr(self, "data", None)
        if data is not None:
            shutil.rmtree(data, ignore_errors=True)


class RedisServer(_Server):
    """Redis on 127.0.0.1:<port>, nothing saved to disk."""

    name = "redis"

    def command(self) -> list[str]:
        (self.work / "data").mkdir(exist_ok=True)
        return [shutil.which("redis-server"), "--port", str(self.port), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "no", "--dir", str(self.work / "data")]

    def ping(self) -> None:
        import redis

        redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=10, socket_connect_timeout=10).ping()

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"


@contextmanager
def celery_servers(work: Path, workers: int = 2, concurrency: int = 2) -> Iterator[Celery]:
    """PostgreSQL and Redis of one distributed Airflow, and its workers ``worker1`` ... each with
    a staging folder under ``work/<name>/staging``. Both servers stop on exit."""
    work = Path(work)
    with PostgresServer(work / "postgres") as pg, RedisServer(work / "redis") as broker:
        pg.create_database("airflow")
        yield Celery(
            database=pg.url("airflow"),
            broker=broker.url(),
            workers=tuple(
                CeleryWorker(f"worker{i}", work / f"worker{i}" / "staging", concurrency) for i in range(1, workers + 1)
            ),
        )


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args != ["install"]:
        print(__doc__.strip().splitlines()[-1].strip(), file=sys.stderr)
        return 2
    ensure_installed(EVERYTHING)
    print(f"PostgreSQL in {postgres_bin_dir()}, Redis at {shutil.which('redis-server')}, Chromium at {chromium_path()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
