"""The throwaway PostgreSQL and Redis servers of the distributed end-to-end test: real servers
from Debian's packages (installed when missing), reachable on loopback, gone after stop()."""

from __future__ import annotations

import psycopg2
import redis

from vlmdata.services import PostgresServer, RedisServer


def test_postgres_serves_a_new_database_and_leaves_nothing_behind(tmp_path):
    with PostgresServer(tmp_path / "pg") as pg:
        pg.create_database("airflow")
        connection = psycopg2.connect(pg.url("airflow").replace("postgresql+psycopg2", "postgresql"))
        with connection, connection.cursor() as cursor:
            cursor.execute("CREATE TABLE t (x int)")
            cursor.execute("INSERT INTO t VALUES (42)")
            cursor.execute("SELECT x FROM t")
            assert cursor.fetchall() == [(42,)]
        connection.close()
        data, proc = pg.data, pg.proc
    assert proc.poll() is not None  # the server exited
    assert not data.exists()


def test_redis_answers_and_stops(tmp_path):
    with RedisServer(tmp_path / "redis") as server:
        client = redis.Redis.from_url(server.url())
        client.set("key", b"value")
        assert client.get("key") == b"value"
        proc = server.proc
    assert proc.poll() is not None
