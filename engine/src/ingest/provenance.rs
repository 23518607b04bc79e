//! What a record LogSphere's own ingest produces to Kafka (cluster mode: `POST /v1/logs`,
//! the shipper endpoints, the syslog listeners) tells the node that consumes it: how the
//! receiving node read the request, so every node stores the record as embedded mode
//! would have — in the request's format whatever `kafka.format` says, a record the
//! envelope could not map as a dead letter with the envelope's reason, and dead letters
//! named after the request. `cluster::produce` carries it in Kafka headers.

use super::{DecodeOptions, Format, first_line_is_json};

/// How the consumer of one produced record reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provenance {
    /// The request's format (`?format=`; JSON for the shipper endpoints, syslog for the
    /// syslog listeners).
    pub format: Format,
    /// The request's origin and the record's place in it, as an embedded node names its
    /// dead letters: `_bulk http 10.0.0.7:51234 line 3`.
    pub origin: String,
    /// `source` when the record names none (`?source=`).
    pub default_source: Option<String>,
    /// Why the receiving node already knows the record cannot be a row (a `_bulk` `delete`).
    pub rejected: Option<String>,
}

/// `opts.rejected`, then the records of a request body as `decode_body` reads them (NDJSON
/// lines or the elements of a JSON array in JSON; lines in a text format), each with its
/// provenance: what cluster mode produces, one Kafka message each.
pub fn produced_records<'a>(
    body: &'a [u8],
    opts: &'a DecodeOptions,
) -> Vec<(&'a [u8], Provenance)> {
    let placed = |position: &dyn std::fmt::Display| Provenance {
        format: opts.format,
        origin: format!("{} {position}", opts.origin),
        default_source: opts.default_source.clone(),
        rejected: None,
    };
    // The envelope's dead letters first, as `decode_body` stores them.
    let mut out = Vec::new();
    for r in &opts.rejected {
        out.push((
            r.raw.as_slice(),
            Provenance {
                format: opts.format,
                origin: format!("{} {}", opts.origin, r.position),
                default_source: opts.default_source.clone(),
                rejected: Some(r.reason.clone()),
            },
        ));
    }
    let first = body.iter().position(|c| !c.is_ascii_whitespace());
    let array = opts.format == Format::Json
        && first.map(|i| body[i]) == Some(b'[')
        && !first_line_is_json(body);
    if array {
        match serde_json::from_slice::<Vec<&serde_json::value::RawValue>>(body) {
            Ok(items) => out.extend(items.iter().enumerate().map(|(i, item)| {
                (
                    item.get().as_bytes(),
                    placed(&format_args!("array element {i}")),
                )
            })),
            Err(e) => {
                let reason = match std::str::from_utf8(body) {
                    Err(u) => format!("body is not valid UTF-8 (at byte {})", u.valid_up_to()),
                    Ok(_) => format!("body is not a valid JSON array: {e}"),
                };
                let mut whole = placed(&"JSON array body");
                whole.rejected = Some(reason);
                out.push((body, whole));
            }
        }
    } else {
        for (n, line) in body.split(|c| *c == b'\n').enumerate() {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if !line.iter().all(|c| c.is_ascii_whitespace()) {
                out.push((line, placed(&format_args!("line {}", n + 1))));
            }
        }
    }
    out
}
