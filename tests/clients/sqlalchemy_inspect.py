"""SQLAlchemy reflection (what Superset and Alembic do when a database is added): table
names, columns, primary key and indexes of `logs`, over psycopg2 and, on SQLAlchemy 2.x
(whose first release has the dialect), psycopg 3. Runs on SQLAlchemy 1.4 (Superset 6.1's
venv) and 2.x (the clients venv).

Usage: sqlalchemy_inspect.py PG_PORT SQLALCHEMY_VERSION — the version (e.g. `1.4`) that must
be installed; exits non-zero with a message on the first wrong answer.
"""
import sys

import sqlalchemy as sa

PORT, VERSION = sys.argv[1], sys.argv[2]


def check(what, got, want):
    if got != want:
        sys.exit(f"{what}: got {got!r}, want {want!r}")
    print(f"ok: {what} = {got!r}")


check(f"sqlalchemy {sa.__version__} is {VERSION}.x", sa.__version__.startswith(VERSION + "."), True)
drivers = ["psycopg2"] if sa.__version__.startswith("1.") else ["psycopg2", "psycopg"]
for driver in drivers:
    engine = sa.create_engine(f"postgresql+{driver}://logsphere@127.0.0.1:{PORT}/logsphere")
    insp = sa.inspect(engine)
    check(f"{driver} schemas", insp.get_schema_names(), ["public"])
    check(
        f"{driver} tables",
        sorted(insp.get_table_names()),
        ["dead_letters", "logs", "logs_cold", "logs_hot"],
    )
    columns = {c["name"]: c for c in insp.get_columns("logs")}
    check(
        f"{driver} columns",
        list(columns),
        ["timestamp", "log_level", "message", "source", "topic", "attributes", "ingest_time"],
    )
    check(f"{driver} timestamp type", str(columns["timestamp"]["type"]), "TIMESTAMP")
    check(f"{driver} timestamptz", columns["timestamp"]["type"].timezone, True)
    check(f"{driver} text type", str(columns["message"]["type"]), "TEXT")
    check(f"{driver} nullable", columns["message"]["nullable"], False)
    check(f"{driver} pk", insp.get_pk_constraint("logs")["constrained_columns"], [])
    check(f"{driver} indexes", insp.get_indexes("logs"), [])
    check(f"{driver} foreign keys", insp.get_foreign_keys("logs"), [])
    check(f"{driver} has_table", insp.has_table("logs"), True)
    with engine.connect() as conn:
        n = conn.execute(sa.text("SELECT count(*) FROM logs")).scalar_one()
        check(f"{driver} count", n, 2)
    engine.dispose()
print("sqlalchemy ok")
