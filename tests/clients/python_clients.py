"""Drive LogSphere with the Python PostgreSQL clients users have: psycopg 3 (server-side
bound parameters, extended protocol), psycopg2 (client-side interpolation, simple
protocol) and asyncpg (named prepared statements, binary results).

Usage: python_clients.py PG_PORT — expects the server to hold the records posted by
tests/it/clients.rs; exits non-zero with a message on the first wrong answer.
"""
import asyncio
import datetime as dt
import sys

import asyncpg
import psycopg
import psycopg2

PORT = int(sys.argv[1])
UTC = dt.timezone.utc
SINCE = dt.datetime(2026, 11, 24, 10, 0, tzinfo=UTC)


def check(what, got, want):
    if got != want:
        sys.exit(f"{what}: got {got!r}, want {want!r}")
    print(f"ok: {what} = {got!r}")


def psycopg3():
    with psycopg.connect(host="127.0.0.1", port=PORT, user="logsphere", dbname="logsphere", autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM logs WHERE source = %s AND log_level = %s AND timestamp >= %s",
            ("web-1", "ERROR", SINCE),
        ).fetchone()
        check("psycopg3 count with bound params", row[0], 2)
        row = conn.execute(
            "SELECT timestamp, message FROM logs WHERE message = %s", ("disk full",), prepare=True
        ).fetchone()
        check("psycopg3 timestamptz", row[0], dt.datetime(2026, 11, 24, 13, 0, tzinfo=UTC))
        check("psycopg3 text", row[1], "disk full")
        try:
            conn.execute("SELECT * FROM no_such_table")
            sys.exit("psycopg3: unknown table did not fail")
        except psycopg.errors.UndefinedTable as e:
            check("psycopg3 SQLSTATE", e.sqlstate, "42P01")
    with psycopg.connect(host="127.0.0.1", port=PORT, user="logsphere", dbname="logsphere") as conn:
        # Not autocommit: psycopg sends BEGIN first.
        with conn.cursor() as cur:
            cur.execute("SELECT source, count(*) FROM logs GROUP BY source ORDER BY source")
            check("psycopg3 in a transaction", cur.fetchall(), [("web-1", 4), ("web-2", 1)])


def psycopg2_client():
    conn = psycopg2.connect(host="127.0.0.1", port=PORT, user="logsphere", dbname="logsphere")
    cur = conn.cursor()
    cur.execute(
        "SELECT count(*) FROM logs WHERE timestamp BETWEEN %s AND %s",
        (SINCE, SINCE + dt.timedelta(hours=6)),
    )
    check("psycopg2 count with interpolated timestamps", cur.fetchone()[0], 5)
    conn.commit()
    conn.close()


async def asyncpg_client():
    conn = await asyncpg.connect(host="127.0.0.1", port=PORT, user="logsphere", database="logsphere")
    rows = await conn.fetch(
        "SELECT source, count(*) AS n FROM logs WHERE timestamp >= $1 GROUP BY source ORDER BY source", SINCE
    )
    check("asyncpg rows", [(r["source"], r["n"]) for r in rows], [("web-1", 4), ("web-2", 1)])
    ts = await conn.fetchval("SELECT max(timestamp) FROM logs")
    check("asyncpg binary timestamptz", ts, dt.datetime(2026, 11, 24, 13, 0, tzinfo=UTC))
    await conn.close()


psycopg3()
psycopg2_client()
asyncio.run(asyncpg_client())
print("all python clients ok")
