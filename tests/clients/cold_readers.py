"""Reads LogSphere's Parquet with other tools, for tests/it/report.rs.

    cold_readers.py parquet FILE   one Parquet file (a report's output) as NDJSON via pyarrow:
                                   times and dates in ISO 8601
    cold_readers.py hive DIR       DIR (a copy of the cold tier's logs/ tree) read as a Hive-
                                   partitioned data set by pyarrow and by DuckDB, printed as one
                                   JSON object {"pyarrow": rows, "duckdb": rows}; each row is
                                   [timestamp µs, log_level, message, source, topic, attributes,
                                   date, hour], sorted
"""

import datetime
import json
import sys

import duckdb
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq


def plain(v):
    if isinstance(v, (datetime.datetime, datetime.date)):
        return v.isoformat()
    return v


def parquet_rows(path):
    for row in pq.read_table(path).to_pylist():
        print(json.dumps({k: plain(v) for k, v in row.items()}))


def hive_rows(root):
    dataset = ds.dataset(root, format="parquet", partitioning="hive")
    table = dataset.to_table()
    ts = table.column("timestamp").cast(pa.int64()).to_pylist()
    cols = [table.column(c).to_pylist() for c in ("log_level", "message", "source", "topic", "attributes")]
    dates = [str(d) for d in table.column("date").to_pylist()]
    hours = [int(h) for h in table.column("hour").to_pylist()]
    from_pyarrow = sorted([t, *rest, d, h] for t, *rest, d, h in zip(ts, *cols, dates, hours))

    con = duckdb.connect()
    query = f"""
        SELECT epoch_us(timestamp), log_level, message, source, topic, attributes,
               CAST(date AS VARCHAR), CAST(hour AS INTEGER)
        FROM read_parquet('{root}/**/*.parquet', hive_partitioning = true)
    """
    from_duckdb = sorted(list(r) for r in con.execute(query).fetchall())
    # The partition columns' types as each tool infers them, for the test to show.
    types = {
        "pyarrow": {c: str(table.schema.field(c).type) for c in ("date", "hour")},
        "duckdb": {
            r[0]: r[1]
            for r in con.execute(
                f"DESCRIBE SELECT date, hour FROM read_parquet('{root}/**/*.parquet', hive_partitioning = true)"
            ).fetchall()
        },
    }
    print(json.dumps({"pyarrow": from_pyarrow, "duckdb": from_duckdb, "types": types}))


if __name__ == "__main__":
    mode, path = sys.argv[1], sys.argv[2]
    if mode == "parquet":
        parquet_rows(path)
    elif mode == "hive":
        hive_rows(path)
    else:
        sys.exit(f"unknown mode {mode!r}")
