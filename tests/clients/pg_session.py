"""Session features with the Python clients users have: psycopg 3 and psycopg2 named
(server-side) cursors, cancelling a running query with conn.cancel(), statement_timeout,
and application_name as pg_stat_activity shows it.

Usage: pg_session.py PG_PORT — needs no data; exits non-zero on the first wrong answer.
"""
import sys
import threading
import time

import psycopg
import psycopg2

PORT = int(sys.argv[1])
SERIES = "SELECT value AS n FROM generate_series(1, 10000) AS t(value) ORDER BY value"
SLOW = "SELECT count(*) FROM generate_series(1, 10000000000) AS t"
DSN = dict(host="127.0.0.1", port=PORT, user="logsphere", dbname="logsphere")


def check(what, got, want):
    if got != want:
        sys.exit(f"{what}: got {got!r}, want {want!r}")
    print(f"ok: {what} = {got!r}")


def psycopg3_named_cursors():
    with psycopg.connect(**DSN) as conn:
        # Not autocommit: psycopg opens a transaction, declares, describes the portal.
        with conn.cursor(name="c") as cur:
            cur.itersize = 1000
            cur.execute(SERIES)
            check("psycopg3 named cursor description", cur.description[0].name, "n")
            check("psycopg3 fetchmany", [r[0] for r in cur.fetchmany(3)], [1, 2, 3])
            cur.scroll(2)
            check("psycopg3 fetchone after scroll", cur.fetchone()[0], 6)
            rest = [r[0] for r in cur]
            check("psycopg3 iterate the rest", (len(rest), rest[0], rest[-1]), (9994, 7, 10000))
        # Bound parameters in the DECLARE's query.
        with conn.cursor(name="p") as cur:
            cur.execute("SELECT value FROM generate_series(1, 100) AS t(value) WHERE value > %s ORDER BY value", (95,))
            check("psycopg3 named cursor with params", [r[0] for r in cur.fetchall()], [96, 97, 98, 99, 100])
        conn.commit()
    with psycopg.connect(**DSN, autocommit=True) as conn:
        # WITH HOLD works outside a transaction.
        with conn.cursor(name="held", withhold=True) as cur:
            cur.execute(SERIES)
            n = 0
            while rows := cur.fetchmany(2048):
                n += len(rows)
            check("psycopg3 withhold cursor rows", n, 10000)
        # WITHOUT HOLD outside a transaction is PostgreSQL's error.
        try:
            with conn.cursor(name="nohold") as cur:
                cur.execute(SERIES)
            sys.exit("psycopg3: DECLARE outside a transaction did not fail")
        except psycopg.errors.NoActiveSqlTransaction as e:
            check("psycopg3 DECLARE outside a transaction", e.sqlstate, "25P01")


def psycopg2_named_cursors():
    conn = psycopg2.connect(**DSN)
    cur = conn.cursor(name="c2")
    cur.itersize = 3000
    cur.execute(SERIES)
    total = sum(1 for _ in cur)
    check("psycopg2 named cursor rows", total, 10000)
    cur.close()
    plain = conn.cursor()
    plain.execute(f"DECLARE t CURSOR FOR {SERIES}")
    check("psycopg2 DECLARE tag", plain.statusmessage, "DECLARE CURSOR")
    plain.execute("FETCH 5 FROM t")
    check("psycopg2 FETCH tag", plain.statusmessage, "FETCH 5")
    plain.execute("MOVE 10 IN t")
    check("psycopg2 MOVE tag", plain.statusmessage, "MOVE 10")
    plain.execute("FETCH NEXT FROM t")
    check("psycopg2 FETCH after MOVE", plain.fetchone()[0], 16)
    plain.execute("CLOSE t")
    check("psycopg2 CLOSE tag", plain.statusmessage, "CLOSE CURSOR")
    conn.rollback()
    try:
        plain.execute("FETCH 1 FROM t")
        sys.exit("psycopg2: FETCH from a closed cursor did not fail")
    except psycopg2.errors.InvalidCursorName as e:
        check("psycopg2 unknown cursor", e.pgcode, "34000")
    conn.rollback()
    conn.close()


def scrollable_named_cursors():
    # psycopg2: scrollable=True declares SCROLL; scroll() sends MOVE [ABSOLUTE] n.
    conn = psycopg2.connect(**DSN)
    cur = conn.cursor(name="sc", scrollable=True)
    cur.execute(SERIES)
    check("psycopg2 scrollable fetchmany", [r[0] for r in cur.fetchmany(5)], [1, 2, 3, 4, 5])
    cur.scroll(-3)
    check("psycopg2 scroll(-3) then fetchone", cur.fetchone()[0], 3)
    cur.scroll(9998, mode="absolute")
    check("psycopg2 scroll absolute 9998", [r[0] for r in cur.fetchmany(5)], [9999, 10000])
    cur.scroll(0, mode="absolute")
    check("psycopg2 scroll back to the start", cur.fetchone()[0], 1)
    cur.close()
    conn.rollback()
    # Outside a transaction block: WITH HOLD.
    conn.autocommit = True
    held = conn.cursor(name="sh", scrollable=True, withhold=True)
    held.execute(SERIES)
    check("psycopg2 withhold scrollable", len(held.fetchmany(10)), 10)
    held.scroll(-10)
    check("psycopg2 withhold scroll(-10) rereads row 1", held.fetchone()[0], 1)
    held.close()
    forward = conn.cursor(name="nsc", scrollable=False, withhold=True)
    forward.execute(SERIES)
    forward.fetchmany(3)
    try:
        forward.scroll(-1)
        sys.exit("psycopg2: scroll(-1) on a NO SCROLL cursor did not fail")
    except psycopg2.errors.ObjectNotInPrerequisiteState as e:
        check("psycopg2 NO SCROLL cursor scroll(-1)", e.pgcode, "55000")
    forward.close()
    conn.close()
    # psycopg 3, in a transaction.
    with psycopg.connect(**DSN) as conn:
        with conn.cursor(name="sc3", scrollable=True) as cur:
            cur.execute(SERIES)
            check("psycopg3 scrollable fetchmany", [r[0] for r in cur.fetchmany(4)], [1, 2, 3, 4])
            cur.scroll(-2)
            check("psycopg3 scroll(-2) then fetchone", cur.fetchone()[0], 3)
            cur.scroll(500, mode="absolute")
            check("psycopg3 scroll absolute 500 then fetchone", cur.fetchone()[0], 501)


def psycopg3_cancel_and_timeout():
    with psycopg.connect(**DSN, autocommit=True) as conn:
        timer = threading.Timer(0.7, conn.cancel)
        timer.start()
        started = time.monotonic()
        try:
            conn.execute(SLOW)
            sys.exit("psycopg3: the cancelled query finished")
        except psycopg.errors.QueryCanceled as e:
            check("psycopg3 cancel SQLSTATE", e.sqlstate, "57014")
        took = time.monotonic() - started
        if took > 6:
            sys.exit(f"psycopg3: the cancel took {took:.1f}s")
        check("psycopg3 usable after cancel", conn.execute("SELECT 1").fetchone()[0], 1)
        conn.execute("SET statement_timeout = '1s'")
        try:
            conn.execute(SLOW)
            sys.exit("psycopg3: statement_timeout did not fire")
        except psycopg.errors.QueryCanceled as e:
            check("psycopg3 statement_timeout SQLSTATE", e.sqlstate, "57014")


def sessions_view():
    with psycopg.connect(**DSN, autocommit=True, application_name="report-builder") as watched, \
            psycopg.connect(**DSN, autocommit=True) as watcher:
        pid = watched.info.backend_pid
        row = watcher.execute(
            "SELECT application_name, usename, state, client_addr FROM pg_stat_activity WHERE pid = %s",
            (pid,),
        ).fetchone()
        check("pg_stat_activity for an idle session", row, ("report-builder", "logsphere", "idle", "127.0.0.1"))
        watched.execute("SET application_name = 'renamed'")
        me = watcher.execute(
            "SELECT state, query FROM pg_stat_activity WHERE pid = pg_backend_pid()"
        ).fetchone()
        check("pg_stat_activity sees its own running query", me[0], "active")
        row = watcher.execute(
            "SELECT application_name, query FROM pg_stat_activity WHERE pid = %s", (pid,)
        ).fetchone()
        check("SET application_name shows", row, ("renamed", "SET application_name = 'renamed'"))

        # A running query shows as active, and pg_cancel_backend stops it.
        errors = []

        def run():
            try:
                watched.execute(SLOW)
            except psycopg.Error as e:
                errors.append(e.sqlstate)

        t = threading.Thread(target=run)
        t.start()
        state = None
        for _ in range(50):
            state, query = watcher.execute(
                "SELECT state, query FROM pg_stat_activity WHERE pid = %s", (pid,)
            ).fetchone()
            if state == "active":
                break
            time.sleep(0.1)
        check("running query state", (state, query), ("active", SLOW))
        check("pg_cancel_backend", watcher.execute("SELECT pg_cancel_backend(%s)", (pid,)).fetchone()[0], True)
        t.join(10)
        check("pg_cancel_backend error", errors, ["57014"])
    with psycopg.connect(**DSN, autocommit=True) as watcher:
        # The server notices the closed socket asynchronously: give it a moment.
        for _ in range(40):
            gone = watcher.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone()[0]
            if gone == 0:
                break
            time.sleep(0.05)
        check("a closed connection leaves pg_stat_activity", gone, 0)
    with psycopg.connect(**DSN) as conn:
        conn.execute("SELECT 1")
        with psycopg.connect(**DSN, autocommit=True) as watcher:
            state = watcher.execute(
                "SELECT state FROM pg_stat_activity WHERE pid = %s", (conn.info.backend_pid,)
            ).fetchone()[0]
            check("idle in transaction", state, "idle in transaction")


psycopg3_named_cursors()
psycopg2_named_cursors()
scrollable_named_cursors()
psycopg3_cancel_and_timeout()
sessions_view()
print("all session checks ok")
