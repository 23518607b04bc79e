//! Endpoints of the local Kafka, Cassandra and HDFS started by `scripts/services up`.

/// The endpoint in env var `var` (e.g. `LOGSPHERE_TEST_KAFKA`), written to `target/services/env`
/// by `scripts/services up`. Panics with instructions when it is missing: tests that need a
/// service fail rather than skip.
pub fn service_endpoint(var: &str) -> String {
    match std::env::var(var) {
        Ok(v) if !v.trim().is_empty() => v.trim().to_string(),
        _ => panic!(
            "{var} is not set: this test needs the local services. Run the whole suite with \
             `scripts/test`, or start them with `scripts/services up` and then \
             `source target/services/env` before `cargo test` (see docs/services.md)."
        ),
    }
}

/// A name unique to this process and moment, for topics, keyspaces and paths:
/// `<prefix>_<pid>_<nanos>` (only `[a-z0-9_]`, so it is a valid CQL identifier).
pub fn unique_name(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{prefix}_{}_{nanos}", std::process::id())
}
