"""Apache Superset (the real application from PyPI, tests/clients/superset-requirements.txt)
against LogSphere (tests/it/superset.rs).

Usage: superset_probe.py PG_PORT WORK_DIR

Builds a Superset in WORK_DIR as its docs say to (SQLite metadata database, `db upgrade`'s
migrations, an admin user, `init`'s roles and permissions), then drives its REST API with
Flask's test client, in this process: the same views, commands, SQLAlchemy engine and
psycopg2 connections as a Superset behind gunicorn, without a web server's start-up and
port. Through the API it adds LogSphere as a database, lists schemas, tables and columns,
creates a dataset on the physical table `logs`, runs SQL Lab and asks
`/api/v1/chart/data` for the charts a dashboard over logs would show. Any answer but 2xx stops the run with the body. The answers the test asserts are
printed as one JSON object on a line starting `superset-result `.
"""
import json
import os
import shutil
import sys
import time

PORT, WORK = sys.argv[1], sys.argv[2]
T0 = time.monotonic()


def log(what):
    print(f"[{time.monotonic() - T0:6.1f}s] {what}", flush=True)


with open(os.path.join(WORK, "superset_config.py"), "w") as f:
    f.write(
        f"""
SECRET_KEY = "logsphere-superset-test-key-0123456789abcdef"
SQLALCHEMY_DATABASE_URI = "sqlite:///{WORK}/superset.db"
WTF_CSRF_ENABLED = False
TALISMAN_ENABLED = False
RATELIMIT_ENABLED = False
AUTH_RATE_LIMITED = False
"""
    )
os.environ["SUPERSET_CONFIG_PATH"] = os.path.join(WORK, "superset_config.py")

from flask_migrate import upgrade  # noqa: E402

import superset  # noqa: E402
from superset.app import create_app  # noqa: E402

log("superset imported")
# The metadata database after `db upgrade`, `fab create-admin` and `init` depends only on this
# Superset, not on LogSphere: built once per venv (~30 s of Alembic migrations and
# permission syncing) and copied for later runs, before the app opens it.
TEMPLATE = os.path.join(sys.prefix, "logsphere-superset-metadata.db")
fresh = not os.path.exists(TEMPLATE)
if not fresh:
    shutil.copyfile(TEMPLATE, os.path.join(WORK, "superset.db"))
    log("metadata database copied from " + TEMPLATE)
app = create_app()
if fresh:
    with app.app_context():
        from superset.extensions import appbuilder, security_manager

        # `superset db upgrade`: the metadata database's Alembic migrations.
        upgrade(directory=os.path.join(os.path.dirname(superset.__file__), "migrations"))
        log("db upgrade done")
        # `superset init` and `superset fab create-admin`.
        appbuilder.add_permissions(update_perms=True)
        security_manager.sync_role_definitions()
        admin = security_manager.add_user(
            "admin", "Ad", "Min", "admin@example.com", security_manager.find_role("Admin"),
            password="admin",
        )
        if not admin:
            sys.exit("cannot create the admin user")
        log("init and admin user done")
    try:
        shutil.copyfile(os.path.join(WORK, "superset.db"), TEMPLATE + ".tmp")
        os.replace(TEMPLATE + ".tmp", TEMPLATE)
    except OSError as e:  # a read-only venv: the next run migrates again
        log(f"cannot keep the metadata database in {TEMPLATE}: {e}")

client = app.test_client()
result = {}


def call(method, path, body=None, expect=(200, 201)):
    resp = client.open(path, method=method, json=body, headers=HEADERS)
    if resp.status_code not in expect:
        sys.exit(f"{method} {path} -> {resp.status_code}\n{resp.get_data(as_text=True)}")
    return resp.get_json()


HEADERS = {}
token = call(
    "POST",
    "/api/v1/security/login",
    {"username": "admin", "password": "admin", "provider": "db", "refresh": True},
)["access_token"]
HEADERS = {"Authorization": f"Bearer {token}"}

# Settings > Database Connections > + Database, with the SQLAlchemy URI the README gives;
# Superset tests the connection before it saves it.
uri = f"postgresql+psycopg2://logsphere@127.0.0.1:{PORT}/logsphere"
call("POST", "/api/v1/database/test_connection/", {"sqlalchemy_uri": uri, "database_name": "LogSphere"})
db_id = call(
    "POST",
    "/api/v1/database/",
    {"database_name": "LogSphere", "sqlalchemy_uri": uri, "expose_in_sqllab": True},
)["id"]
log(f"database added (id {db_id})")

# The dataset editor's pickers: schemas, then the tables of one, then a table's columns.
result["schemas"] = call("GET", f"/api/v1/database/{db_id}/schemas/?q=(force:!t)")["result"]
tables = call("GET", f"/api/v1/database/{db_id}/tables/?q=(force:!t,schema_name:public)")["result"]
result["tables"] = sorted(t["value"] for t in tables if t["type"] == "table")
meta = call("GET", f"/api/v1/database/{db_id}/table_metadata/?name=logs&schema=public")
result["columns"] = [[c["name"], c["type"]] for c in meta["columns"]]
log("schemas, tables and columns listed")

# + Dataset on the physical table: Superset reflects its columns, keys and indexes.
ds_id = call("POST", "/api/v1/dataset/", {"database": db_id, "schema": "public", "table_name": "logs"})["id"]
dataset = call("GET", f"/api/v1/dataset/{ds_id}")["result"]
result["dataset_columns"] = sorted(
    [c["column_name"], c["type"], bool(c["is_dttm"])] for c in dataset["columns"]
)
result["dataset_metrics"] = sorted(m["metric_name"] for m in dataset["metrics"])
result["main_dttm_col"] = dataset["main_dttm_col"]
log(f"dataset created (id {ds_id})")

# SQL Lab: a query typed by hand, run synchronously (no Celery workers here).
lab = call(
    "POST",
    "/api/v1/sqllab/execute/",
    {"database_id": db_id, "schema": "public", "sql": "SELECT count(*) FROM logs", "runAsync": False},
)
result["sqllab"] = {"columns": [c["column_name"] for c in lab["columns"]], "data": lab["data"]}
log("SQL Lab query done")


def chart_data(queries, result_type="full"):
    body = {
        "datasource": {"id": ds_id, "type": "table"},
        "force": True,
        "queries": queries,
        "result_format": "json",
        "result_type": result_type,
    }
    answer = call("POST", "/api/v1/chart/data", body)
    return answer["result"][0]


# A bar chart: COUNT(*) by log_level (the dataset's saved metric `count`).
by_level = chart_data(
    [{"columns": ["log_level"], "metrics": ["count"], "orderby": [["count", False]], "row_limit": 100}]
)
result["count_by_level"] = {"query": by_level["query"], "data": by_level["data"]}
log("count by level done")


# A time-series chart: count per hour (time grain PT1H on `timestamp`) under a dashboard
# time-range filter, as the Explore view sends it (BASE_AXIS column, TEMPORAL_RANGE filter).
def per_hour(time_range):
    answer = chart_data(
        [
            {
                "columns": [
                    {
                        "timeGrain": "PT1H",
                        "columnType": "BASE_AXIS",
                        "sqlExpression": "timestamp",
                        "label": "timestamp",
                        "expressionType": "SQL",
                    }
                ],
                "metrics": ["count"],
                "filters": [{"col": "timestamp", "op": "TEMPORAL_RANGE", "val": time_range}],
                "orderby": [["count", False]],
                "row_limit": 1000,
                "extras": {"time_grain_sqla": "PT1H"},
            }
        ]
    )
    return {
        "query": answer["query"],
        "from_dttm": answer.get("from_dttm"),
        "to_dttm": answer.get("to_dttm"),
        "data": answer["data"],
    }


result["per_hour_last_day"] = per_hour("Last day")
result["per_hour_last_24h"] = per_hour('DATEADD(DATETIME("now"), -24, hour) : now')
log("count per hour done")

# A native filter's value list (dashboard filter on log_level), a table chart with an adhoc
# filter and a calculated column over the attributes JSON, samples, and a day grain.
result["level_values"] = call("GET", f"/api/v1/datasource/table/{ds_id}/column/log_level/values/")["result"]
table = chart_data(
    [
        {
            "columns": [
                "log_level",
                {"sqlExpression": "attributes::json ->> 'user'", "label": "user", "expressionType": "SQL"},
            ],
            "metrics": ["count"],
            "filters": [{"col": "log_level", "op": "IN", "val": ["ERROR", "WARN"]}],
            "orderby": [["count", False]],
            "row_limit": 100,
        }
    ]
)
result["table_by_user"] = {"query": table["query"], "data": table["data"]}
by_day = chart_data(
    [
        {
            "columns": [
                {"timeGrain": "P1D", "columnType": "BASE_AXIS", "sqlExpression": "timestamp",
                 "label": "timestamp", "expressionType": "SQL"}
            ],
            "metrics": ["count"],
            "filters": [{"col": "timestamp", "op": "TEMPORAL_RANGE", "val": "Last week"}],
            "orderby": [["count", False]],
            "row_limit": 1000,
        }
    ]
)
result["per_day_last_week"] = {"query": by_day["query"], "from_dttm": by_day.get("from_dttm"),
                               "to_dttm": by_day.get("to_dttm"), "data": by_day["data"]}
samples = chart_data([{"columns": [], "metrics": [], "row_limit": 3}], result_type="samples")
result["samples"] = {"query": samples["query"], "data": samples["data"]}
log("extras done")

print("superset-result " + json.dumps(result, default=str), flush=True)
print("superset ok")
