//! How the shipper tests send: the real clients (the OpenTelemetry Python SDK, elasticsearch-py,
//! rsyslogd fed by `logger`) and the request bodies written by hand — shared by the embedded
//! tests (`tests/it/shippers.rs`) and the cluster ones (`tests/it/cluster/shippers.rs`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use logsphere_tests::Server;
use serde_json::{Value, json};

use crate::clients::python;

/// Runs `tests/clients/<script> <http base of server>`; asserts it exits 0 printing
/// `ok_line`; returns its stdout.
pub(crate) fn run_http_client(server: &Server, script: &str, ok_line: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("clients")
        .join(script);
    let out = Command::new(python())
        .arg(&path)
        .arg(server.http_url())
        .output()
        .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains(ok_line),
        "{script} failed:\n{stdout}\n{stderr}\n--- server log ---\n{}",
        server.log()
    );
    stdout
}

/// The trace and span ids `otel_logs.py` printed (hex, 32 and 16 digits).
pub(crate) fn otel_ids(out: &str) -> (String, String) {
    let ids = out.lines().next().unwrap_or_default();
    let id = |n: usize, name: &str| {
        ids.split_whitespace()
            .nth(n)
            .unwrap_or_default()
            .trim_start_matches(name)
            .to_string()
    };
    let (trace_id, span_id) = (id(0, "trace_id="), id(1, "span_id="));
    assert_eq!((trace_id.len(), span_id.len()), (32, 16), "{out}");
    (trace_id, span_id)
}

/// POSTs `body` to `<server><path>` with `headers`: the status, the body and the
/// `Idempotent-Replayed` header.
pub(crate) fn post(
    server: &Server,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, Vec<u8>, Option<String>) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into();
    let mut req = agent.post(&format!("{}{path}", server.http_url()));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let mut resp = req
        .send(body)
        .unwrap_or_else(|e| panic!("POST {path}: {e}"));
    let replayed = resp
        .headers()
        .get("idempotent-replayed")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let status = resp.status().as_u16();
    let bytes = resp.body_mut().read_to_vec().unwrap_or_default();
    (status, bytes, replayed)
}

pub(crate) fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).expect("gzip");
    e.finish().expect("gzip")
}

/// `http.max_record_bytes` the OTLP JSON request and the syslog messages are sent under: a
/// record of each is over it.
pub(crate) const MAX_RECORD_BYTES: usize = 2000;

/// Hand-written OTLP JSON: one record of source `billing` (an attribute named `message`, a
/// severity text that is not a level's name), one over [`MAX_RECORD_BYTES`].
pub(crate) fn otlp_json_body() -> String {
    let big = "x".repeat(3000);
    json!({"resourceLogs": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "billing"}}]},
        "scopeLogs": [{"scope": {"name": "billing.jobs"}, "logRecords": [
            {"timeUnixNano": "1796619600000000000", "severityNumber": 17, "severityText": "Err",
             "body": {"stringValue": "invoice failed"},
             "traceId": "5b8efff798038103d269b633813fc60c", "spanId": "eee19b7ec3c1b174",
             "attributes": [{"key": "invoice", "value": {"intValue": "42"}},
                            {"key": "message", "value": {"stringValue": "shadowed"}}]},
            {"observedTimeUnixNano": 1796619601000000000u64, "severityNumber": 10,
             "body": {"stringValue": big}}
        ]}]
    }]})
    .to_string()
}

/// A `_bulk` body with every action: a good `index`, a `create` whose document is not JSON,
/// a `delete`, an `update`, an `index` whose document is not an object.
pub(crate) const BULK_EVERY_ACTION: &[u8] =
    b"{\"index\":{}}\n{\"message\":\"a\",\"level\":\"info\"}\n\
{\"create\":{\"_index\":\"idx\",\"_id\":\"7\"}}\nnot json\n\
{\"delete\":{\"_index\":\"idx\",\"_id\":\"7\"}}\n\
{\"update\":{\"_id\":\"8\"}}\n{\"doc\":{\"message\":\"b\"}}\n\
{\"index\":{}}\n[1,2]\n";

/// A `_bulk` body as Fluent Bit sends a chunk (no `Idempotency-Key`), one record of it a
/// dead letter.
pub(crate) const BULK_CHUNK: &[u8] =
    b"{\"index\":{}}\n{\"message\":\"c\"}\n{\"index\":{}}\n{\"@timestamp\":\"never\"}\n";

/// Asserts the answer to [`BULK_EVERY_ACTION`]: only the first item stored, each other one
/// a 400 naming why.
pub(crate) fn check_bulk_every_action_answer(answer: &Value) {
    assert_eq!(answer["errors"], true);
    let statuses: Vec<(String, u64)> = answer["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| {
            let (action, r) = i
                .as_object()
                .and_then(|o| o.iter().next())
                .expect("one action");
            (action.clone(), r["status"].as_u64().unwrap_or_default())
        })
        .collect();
    let want = [
        ("index", 201),
        ("create", 400),
        ("delete", 400),
        ("update", 400),
        ("index", 400),
    ];
    let want: Vec<(String, u64)> = want.iter().map(|(a, s)| (a.to_string(), *s)).collect();
    assert_eq!(statuses, want, "{answer}");
    assert!(
        answer["items"][1]["create"]["error"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("not valid JSON")),
        "{answer}"
    );
    assert_eq!(answer["items"][1]["create"]["_id"], "7");
    assert!(
        answer["items"][3]["update"]["error"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("not supported")),
        "{answer}"
    );
}

/// An answer to `_bulk` with `took` zeroed, to compare a first answer with a replay.
pub(crate) fn untimed(answer: &[u8]) -> Value {
    let mut v: Value = serde_json::from_slice(answer).expect("JSON");
    v["took"] = json!(0);
    v
}

/// A Loki JSON push: two entries of `loki-host-1` (the second with structured metadata),
/// one of `loki-host-2` whose time does not parse.
pub(crate) fn loki_json_body() -> String {
    json!({"streams": [
        {"stream": {"job": "nginx", "host": "loki-host-1", "level": "warn", "env": "prod"},
         "values": [["1796619600500000000", "GET /a 200"],
                    ["1796619601000000000", "GET /b 500", {"trace_id": "abc", "level": "error"}]]},
        {"stream": {"service_name": "api", "hostname": "loki-host-2"},
         "values": [["yesterday", "bad time"]]}
    ]})
    .to_string()
}

/// Snappy-compressed protobuf, as Promtail and Alloy send it: the fixture the engine's unit
/// test builds with the same messages and checks byte for byte (source `loki-proto`).
pub(crate) fn loki_protobuf_fixture() -> Vec<u8> {
    let fixture = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("clients/loki_push.pb.snappy");
    std::fs::read(&fixture).expect("fixture")
}

/// rsyslogd in the foreground, killed when dropped.
pub(crate) struct Rsyslog(std::process::Child);

impl Drop for Rsyslog {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts rsyslogd with two TCP inputs: what `logger` sends to the first is forwarded to
/// LogSphere over TCP, octet-counted, in RFC 5424 (`RSYSLOG_SyslogProtocol23Format`); what it
/// sends to the second goes over UDP in rsyslog's RFC 3164 forwarding format.
fn start_rsyslog(dir: &Path, to_tcp: u16, to_udp: u16) -> (Rsyslog, u16, u16) {
    let (in_tcp, in_udp) = (logsphere_tests::free_port(), logsphere_tests::free_port());
    let conf = dir.join("rsyslog.conf");
    let text = format!(
        r#"global(workDirectory="{work}")
module(load="imtcp")
input(type="imtcp" port="{in_tcp}" ruleset="to_tcp")
input(type="imtcp" port="{in_udp}" ruleset="to_udp")
ruleset(name="to_tcp") {{
  action(type="omfwd" target="127.0.0.1" port="{to_tcp}" protocol="tcp"
         TCP_Framing="octet-counted" template="RSYSLOG_SyslogProtocol23Format")
}}
ruleset(name="to_udp") {{
  action(type="omfwd" target="127.0.0.1" port="{to_udp}" protocol="udp"
         template="RSYSLOG_ForwardFormat")
}}
"#,
        work = dir.display()
    );
    std::fs::write(&conf, text).expect("write rsyslog.conf");
    let child = Command::new("/usr/sbin/rsyslogd")
        .arg("-n")
        .arg("-f")
        .arg(&conf)
        .arg("-i")
        .arg(dir.join("rsyslog.pid"))
        .stdin(std::process::Stdio::null())
        .spawn()
        .expect("start rsyslogd (scripts/test installs Debian's rsyslog)");
    let rsyslog = Rsyslog(child);
    for port in [in_tcp, in_udp] {
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "rsyslogd does not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    (rsyslog, in_tcp, in_udp)
}

/// `logger` (util-linux) sending one message over TCP to `port`.
pub(crate) fn logger(port: u16, args: &[&str], message: &str) {
    let out = Command::new("logger")
        .args(["--tcp", "-n", "127.0.0.1", "-P", &port.to_string()])
        .args(args)
        .arg(message)
        .output()
        .expect("run logger (util-linux)");
    assert!(
        out.status.success(),
        "logger: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Sends the syslog messages [`super::rows::check_syslog_rows`] expects to LogSphere's
/// listeners on `tcp` and `udp`: through rsyslogd (octet-counted TCP, UDP) fed by `logger`,
/// and straight: `logger`'s LF framing, a NUL-framed line, and an octet-counted message over
/// [`MAX_RECORD_BYTES`] (a dead letter; the stream goes on after it). rsyslogd runs
/// in `dir` until the returned guard is dropped.
pub(crate) fn send_syslog(dir: &Path, tcp: u16, udp: u16) -> Rsyslog {
    use std::io::Write;
    let (rsyslog, in_tcp, in_udp) = start_rsyslog(dir, tcp, udp);
    logger(
        in_tcp,
        &[
            "--rfc5424",
            "-t",
            "billing",
            "--id=4242",
            "-p",
            "local0.warning",
        ],
        "invoice 7 overdue",
    );
    logger(
        in_udp,
        &["-t", "cron", "--id=77", "-p", "user.err"],
        "job failed: exit 2",
    );
    logger(
        tcp,
        &["--rfc3164", "-t", "direct", "--id=5", "-p", "daemon.info"],
        "lf framed",
    );
    let mut s = std::net::TcpStream::connect(("127.0.0.1", tcp)).expect("connect");
    let big = format!("<13>Dec  7 10:00:00 nulhost app: {}", "z".repeat(3000));
    let mut bytes = format!("{} {big}", big.len()).into_bytes();
    bytes.extend_from_slice(b"<13>Dec  7 10:00:01 nulhost app[9]: nul framed\0");
    s.write_all(&bytes).expect("write");
    rsyslog
}
