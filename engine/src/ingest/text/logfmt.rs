//! logfmt: `ts=2026-11-24T13:00:00Z level=info msg="disk \"sda\" full" host=web-1 retry`
//! (Go kit, logrus, Heroku). `ts|time|timestamp`, `level|lvl|severity`, `msg|message` and
//! `host|hostname|source` fill the row; every other pair is a string attribute, and a bare
//! key is `true`.

use std::borrow::Cow;

use super::scan::Scan;
use super::{Attrs, Row};
use crate::ingest::timestamp::parse_str;

/// Parses a logfmt line; `None` unless it starts with `key=` and every token is a pair
/// or a bare key.
pub(super) fn parse<'a>(line: &'a str, a: &mut Attrs) -> Option<Row<'a>> {
    let mut sc = Scan::new(line);
    let mut row = Row::new("");
    let mut message = None;
    let mut pairs = 0;
    loop {
        sc.spaces();
        if sc.at_end() {
            break;
        }
        let key = key(&mut sc)?;
        if !sc.eat(b'=') {
            // A bare key, but not as the first token: "hello world" is not logfmt.
            if pairs == 0 || !matches!(sc.peek(), None | Some(b' ')) {
                return None;
            }
            a.raw_json(key, "true");
            continue;
        }
        pairs += 1;
        let value = value(&mut sc)?;
        match key {
            "ts" | "time" | "timestamp" if row.ts.is_none() => match timestamp(&value) {
                Some(t) => row.ts = Some(t),
                None => a.str(key, &value),
            },
            "level" | "lvl" | "severity" if row.raw_level.is_none() && row.level == "INFO" => {
                match &value {
                    Cow::Borrowed(v) if row.level_named(v).is_some() => {}
                    _ => a.str(key, &value),
                }
            }
            "msg" | "message" if message.is_none() => message = Some(value),
            "host" | "hostname" | "source" if row.source.is_empty() => match value {
                Cow::Borrowed(v) => row.source = v,
                Cow::Owned(v) => a.str(key, &v),
            },
            _ => a.str(key, &value),
        }
    }
    if pairs == 0 {
        return None;
    }
    // No `msg`: the line itself is the message, so text search still finds it.
    row.message = message.unwrap_or(Cow::Borrowed(line));
    Some(row)
}

fn key<'a>(sc: &mut Scan<'a>) -> Option<&'a str> {
    let rest = sc.rest();
    let n = rest
        .bytes()
        .position(|c| c == b'=' || c == b' ' || c == b'"' || c < b' ')
        .unwrap_or(rest.len());
    if n == 0 {
        return None;
    }
    sc.i += n;
    Some(&rest[..n])
}

/// A bare value up to the next space, or a `"quoted value"` with `\"`, `\\`, `\n`, `\t`,
/// `\r` escapes.
fn value<'a>(sc: &mut Scan<'a>) -> Option<Cow<'a, str>> {
    if !sc.eat(b'"') {
        let v = sc.token().unwrap_or("");
        if v.contains('"') {
            return None;
        }
        return Some(Cow::Borrowed(v));
    }
    let (raw, escaped) = sc.quoted()?;
    if !matches!(sc.peek(), None | Some(b' ')) {
        return None;
    }
    Some(if escaped {
        Cow::Owned(unescape(raw))
    } else {
        Cow::Borrowed(raw)
    })
}

fn unescape(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some('r') => out.push('\r'),
            Some(n @ ('"' | '\\')) => out.push(n),
            Some(n) => {
                out.push('\\');
                out.push(n);
            }
            None => out.push('\\'),
        }
    }
    out
}

fn timestamp(v: &str) -> Option<i64> {
    let mut sc = Scan::new(v);
    if let Some((t, _)) = sc.iso_datetime()
        && sc.at_end()
    {
        return Some(t);
    }
    parse_str(v).ok()
}
