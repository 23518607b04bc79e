"""psqlODBC, the driver Tableau and most Windows BI tools use, through pyodbc, with
UseDeclareFetch=1: every SELECT runs as `DECLARE "SQL_CUR…" CURSOR WITH HOLD FOR …` and is
read with `FETCH n IN "SQL_CUR…"`, the path Tableau takes.

Usage: odbc_cursors.py PG_PORT — needs no data; exits non-zero on the first wrong answer.
"""
import sys

import pyodbc

PORT = int(sys.argv[1])


def check(what, got, want):
    if got != want:
        sys.exit(f"{what}: got {got!r}, want {want!r}")
    print(f"ok: {what} = {got!r}")


def connect(autocommit):
    return pyodbc.connect(
        "DRIVER={PostgreSQL Unicode};SERVER=127.0.0.1;"
        f"PORT={PORT};DATABASE=logsphere;UID=logsphere;PWD=;"
        "UseDeclareFetch=1;Fetch=1000;SSLmode=disable;CommLog=0;Debug=0",
        autocommit=autocommit,
    )


for autocommit in (True, False):
    conn = connect(autocommit)
    cur = conn.cursor()
    cur.execute("SELECT value AS n, 'row ' || CAST(value AS VARCHAR) AS label FROM generate_series(1, 10000) AS t(value) ORDER BY value")
    check(f"odbc column names (autocommit={autocommit})", [d[0] for d in cur.description], ["n", "label"])
    first = cur.fetchmany(5)
    check("odbc first rows", [tuple(r) for r in first], [(i, f"row {i}") for i in range(1, 6)])
    rest = cur.fetchall()
    check("odbc all rows through cursors", (len(first) + len(rest), rest[-1][0]), (10000, 10000))
    cur.execute("SELECT count(*) FROM generate_series(1, 12345) AS t")
    check("odbc count", cur.fetchone()[0], 12345)
    # Parameters (psqlODBC interpolates or binds them, then declares the cursor).
    cur.execute("SELECT value FROM generate_series(1, 100) AS t(value) WHERE value > ? ORDER BY value", 97)
    check("odbc parameters", [r[0] for r in cur.fetchall()], [98, 99, 100])
    if not autocommit:
        conn.commit()
    conn.close()

print("all odbc checks ok")
