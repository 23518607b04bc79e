"""Exports log records with the real OpenTelemetry Python SDK to LogSphere's POST /v1/logs:
through its OTLP/HTTP protobuf exporter (gzip), then one record through its OTLP/HTTP JSON
exporter. Usage: otel_logs.py HTTP_BASE_URL. Prints the trace id it logged under, then
"otel ok" when every export succeeded."""

import logging
import sys

from opentelemetry import trace
from opentelemetry._logs import SeverityNumber
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.json.http._log_exporter import OTLPLogExporter as JsonLogExporter
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
from opentelemetry.sdk._logs.export import LogRecordExportResult, SimpleLogRecordProcessor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider

base = sys.argv[1].rstrip("/")
results = []


class Recording(OTLPLogExporter):
    def export(self, batch):
        result = super().export(batch)
        results.append(result)
        return result


class RecordingJson(JsonLogExporter):
    def export(self, batch):
        result = super().export(batch)
        results.append(result)
        return result


resource = Resource.create({"service.name": "checkout", "host.name": "otel-host-1", "deployment.environment": "test"})
provider = LoggerProvider(resource=resource)
exporter = Recording(endpoint=f"{base}/v1/logs", compression=Compression.Gzip, timeout=10)
provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))

# 1. Through Python's logging module, inside a span: the usual way applications log.
tracer = TracerProvider(resource=resource).get_tracer("shop")
pylog = logging.getLogger("shop.payments")
pylog.setLevel(logging.DEBUG)
pylog.addHandler(LoggingHandler(level=logging.DEBUG, logger_provider=provider))
with tracer.start_as_current_span("charge") as span:
    trace_id = format(span.get_span_context().trace_id, "032x")
    span_id = format(span.get_span_context().span_id, "016x")
    pylog.warning("card declined for order %s", "A-17", extra={"order_id": "A-17", "attempt": 2})

# 2. Through the logs API: an exact time, a number-only severity and a structured body.
otel_logger = provider.get_logger("shop.audit", "1.2.3")
otel_logger.emit(
    timestamp=1_796_619_600_123_456_789,  # 2026-12-07T05:00:00.123456789Z
    severity_number=SeverityNumber.ERROR2,
    body={"event": "refund", "amount": 12.5, "items": ["a", "b"]},
    attributes={"user": "u-9", "ok": False, "count": 3},
)
provider.force_flush()
provider.shutdown()

# 3. The JSON exporter: the same path, told apart from LogSphere's own JSON by its shape.
json_provider = LoggerProvider(resource=Resource.create({"service.name": "json-svc"}))
json_provider.add_log_record_processor(SimpleLogRecordProcessor(RecordingJson(endpoint=f"{base}/v1/logs", timeout=10)))
json_provider.get_logger("json.scope").emit(
    timestamp=1_796_619_602_000_000_000,  # 2026-12-07T05:00:02Z
    severity_number=SeverityNumber.INFO,
    severity_text="notice",
    body="sent as OTLP JSON",
    attributes={"big": 2**53 + 1, "ratio": 0.25},
)
json_provider.force_flush()
json_provider.shutdown()

print(f"trace_id={trace_id} span_id={span_id}")
if len(results) == 3 and all(r == LogRecordExportResult.SUCCESS for r in results):
    print("otel ok")
else:
    print(f"exports: {results}")
    sys.exit(1)
