"""Times SQL queries with DuckDB over LogSphere's Parquet files; driven by logsphere-bench.

Reads a JSON job on stdin: {"glob": ..., "warmup": 1, "runs": 5, "queries": [{"name", "sql"}]}.
Defines `logs` as a view over read_parquet(glob), so the same SQL text runs on both engines.
Prints one JSON object on stdout: DuckDB's version and threads, and per query the run times
in milliseconds and the rows of the last run (timestamps as epoch microseconds).
"""

import datetime
import json
import sys
import time

import duckdb

EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)


def plain(value):
    if isinstance(value, datetime.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=datetime.timezone.utc)
        return (value - EPOCH) // datetime.timedelta(microseconds=1)
    return value


def main():
    job = json.load(sys.stdin)
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    glob = job["glob"].replace("'", "''")
    con.execute(f"CREATE VIEW logs AS SELECT * FROM read_parquet('{glob}', hive_partitioning = false)")
    threads = con.execute("SELECT current_setting('threads')").fetchone()[0]
    out = {"version": duckdb.__version__, "threads": threads, "queries": []}
    for q in job["queries"]:
        times = []
        rows = []
        for i in range(job["warmup"] + job["runs"]):
            started = time.perf_counter()
            rows = con.execute(q["sql"]).fetchall()
            elapsed = (time.perf_counter() - started) * 1000.0
            if i >= job["warmup"]:
                times.append(elapsed)
        out["queries"].append(
            {"name": q["name"], "times_ms": times, "rows": [[plain(v) for v in r] for r in rows]}
        )
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
