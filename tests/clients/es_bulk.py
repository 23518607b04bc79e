"""Ships documents with the real Elasticsearch Python client's helpers.bulk to LogSphere's
_bulk endpoint. Usage: es_bulk.py HTTP_BASE_URL. Prints "es ok" when the client accepted the
server (product check, version) and every document was created; one deliberately bad
document must come back as a 400 item."""

import sys

from elasticsearch import Elasticsearch, helpers

base = sys.argv[1].rstrip("/")
es = Elasticsearch(base, request_timeout=10)
info = es.info()  # GET /: the client checks X-Elastic-Product on every answer
assert info["version"]["number"].startswith("8."), info

docs = [
    {
        "_index": "app-logs",
        "_source": {
            "@timestamp": "2026-12-07T10:00:00.250Z",
            "message": "user logged in",
            "log": {"level": "warn", "logger": "auth"},
            "host": {"name": "es-host-1", "os": {"family": "debian"}},
            "user": "alice",
        },
    },
    {
        "_op_type": "create",
        "_index": "app-logs",
        "_id": "doc-2",
        "_source": {"timestamp": 1796637600, "log": "plain fluent-bit line", "level": "error", "hostname": "es-host-2"},
    },
    {"_index": "other-index", "_source": {"message": "third", "host": "es-host-3", "tags": ["x", "y"]}},
]
ok, errors = helpers.bulk(es, docs, stats_only=False, raise_on_error=False)
assert ok == 3 and not errors, (ok, errors)

# A document whose time does not parse: stored in dead_letters, reported as a 400 item.
ok, errors = helpers.bulk(
    es,
    [{"_index": "app-logs", "_source": {"@timestamp": "not a time", "message": "bad"}}],
    raise_on_error=False,
)
assert ok == 0 and len(errors) == 1, (ok, errors)
item = errors[0]["index"]
assert item["status"] == 400 and "dead_letters" in item["error"]["reason"], item
print("es ok")
