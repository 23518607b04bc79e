//! Application layouts: a timestamp, then a level, then optional pid, thread, logger and
//! context in the places the common frameworks put them:
//!
//! - log4j/logback (Hadoop): `2015-10-18 18:01:47,978 INFO [main] org.a.B: msg`
//! - Zookeeper: `2015-07-29 17:41:44,747 - INFO  [thread:Class@774] - msg`
//! - Python `%(asctime)s - %(name)s - %(levelname)s - %(message)s`, and the
//!   `basicConfig` default `INFO:name:msg`
//! - oslo (OpenStack): `2017-05-16 00:00:00.008 25746 INFO nova.api [req-… - -] msg`
//! - Spark `17/06/09 20:10:40 INFO a.B: msg`, HDFS `081109 203615 148 INFO a.B: msg`
//! - glog `I1018 18:01:47.978000  1234 file.go:42] msg`, Android logcat
//!   `03-17 16:13:38.811  1702  2395 D Tag: msg`
//! - Apache error log `[Sun Dec 04 04:47:44 2005] [error] [client 1.2.3.4] msg` (2.2 and
//!   2.4 with `[module:level] [pid N:tid M]`)
//!
//! Times without a zone are UTC; without a year, the year is inferred as for RFC 3164.

use std::borrow::Cow;

use super::scan::{Scan, century, civil_us, infer_year};
use super::{Attrs, Row};

/// Parses an application-layout line; `None` when it fits none of them.
pub(super) fn parse<'a>(line: &'a str, ingest_us: i64, a: &mut Attrs) -> Option<Row<'a>> {
    match *line.as_bytes().first()? {
        b'[' => apache_error(line, a),
        b'0'..=b'9' => {
            let mut sc = Scan::new(line);
            let ts = leading_time(&mut sc, ingest_us)?;
            if let Some(row) = logcat(sc, ts, a) {
                return Some(row);
            }
            a.clear();
            after_time(sc, ts, a)
        }
        b'I' | b'W' | b'E' | b'F' | b'D' => glog(line, ingest_us, a).or_else(|| {
            a.clear();
            python_basic(line, a)
        }),
        _ => python_basic(line, a),
    }
}

/// The timestamp a line starts with: ISO (`2015-10-18 18:01:47,978`, `T`, zone),
/// `17/06/09 20:10:40`, `081109 203615`, or the yearless logcat `03-17 16:13:38.811`.
fn leading_time(sc: &mut Scan<'_>, ingest_us: i64) -> Option<i64> {
    if let Some((t, _)) = sc.iso_datetime() {
        return Some(t);
    }
    let save = *sc;
    let r = (|| {
        let a = sc.digits(2)?;
        match sc.peek()? {
            b'/' => {
                sc.i += 1;
                let mo = sc.digits(2)?;
                sc.eat(b'/').then_some(())?;
                let d = sc.digits(2)?;
                sc.eat(b' ').then_some(())?;
                let (h, mi, s) = sc.hms()?;
                let us = sc.fraction();
                civil_us(century(a), mo, d, h, mi, s, us)
            }
            b'-' => {
                sc.i += 1;
                let d = sc.digits(2)?;
                sc.eat(b' ').then_some(())?;
                let hms = sc.hms()?;
                let us = sc.fraction();
                infer_year(a, d, hms, us, ingest_us)
            }
            _ => {
                let mo = sc.digits(2)?;
                let d = sc.digits(2)?;
                sc.eat(b' ').then_some(())?;
                let h = sc.digits(2)?;
                let mi = sc.digits(2)?;
                let s = sc.digits(2)?;
                civil_us(century(a), mo, d, h, mi, s, 0)
            }
        }
    })();
    if r.is_none() {
        *sc = save;
    }
    r
}

/// After the timestamp: `[,] [-] [pid] [name -] LEVEL [-] [[thread]] [logger[:]] [[ctx]] [-] msg`.
fn after_time<'a>(mut sc: Scan<'a>, ts: i64, a: &mut Attrs) -> Option<Row<'a>> {
    let mut row = Row::new("");
    row.ts = Some(ts);
    sc.eat(b',');
    sc.spaces().checked_sub(1)?;
    sc.eat_str("- ");
    let mut level = sc.token()?;
    if level.bytes().all(|c| c.is_ascii_digit()) {
        a.int_or_str("pid", level);
        sc.spaces();
        level = sc.token()?;
    }
    if row.level_named(level).is_none() {
        // Python's `name - LEVEL - msg`.
        sc.eat_str(" - ").then_some(())?;
        let name = level;
        level = sc.token()?;
        row.level_named(level)?;
        a.str("logger", name);
    }
    sc.spaces();
    sc.eat_str("- ");
    if sc.peek() == Some(b'[') {
        let inner = bracketed(&mut sc)?;
        thread(inner, a);
        sc.spaces();
        if sc.eat_str("- ") {
            row.message = Cow::Borrowed(sc.rest());
            return Some(row);
        }
    }
    let save = sc;
    match sc.token() {
        Some(tok) if tok.len() > 1 && tok.ends_with(':') => {
            a.str("logger", &tok[..tok.len() - 1]);
            sc.eat(b' ');
        }
        Some(tok) if sc.eat_str(" [") => {
            sc.i -= 1;
            a.str("logger", tok);
            let ctx = bracketed(&mut sc)?;
            a.str("context", ctx);
            sc.eat(b' ');
        }
        Some(tok) if sc.eat_str(" - ") => a.str("logger", tok),
        // Windows CBS: `Info                  CBS    msg`, the component padded to a column.
        Some(tok) if sc.spaces() >= 2 => {
            a.str("logger", tok);
        }
        _ => sc = save,
    }
    row.message = Cow::Borrowed(sc.rest());
    Some(row)
}

/// `[thread]`, or Zookeeper's `[thread:Class@line]`.
fn thread(inner: &str, a: &mut Attrs) {
    if let Some((before, line)) = inner.rsplit_once('@')
        && !line.is_empty()
        && line.bytes().all(|c| c.is_ascii_digit())
        && let Some((thread, class)) = before.rsplit_once(':')
    {
        a.str("thread", thread);
        a.str("logger", class);
        a.int_or_str("line", line);
        return;
    }
    a.str("thread", inner);
}

/// The text inside balanced `[…]` (brackets nest, as in `[QuorumPeer[myid=1]/…]`).
fn bracketed<'a>(sc: &mut Scan<'a>) -> Option<&'a str> {
    let rest = sc.rest();
    if !rest.starts_with('[') {
        return None;
    }
    let mut depth = 0usize;
    for (i, c) in rest.bytes().enumerate() {
        match c {
            b'[' => depth += 1,
            b']' => {
                depth -= 1;
                if depth == 0 {
                    sc.i += i + 1;
                    return Some(&rest[1..i]);
                }
            }
            _ => {}
        }
    }
    None
}

/// logcat threadtime after its time: `  1702  2395 D Tag: msg`.
fn logcat<'a>(mut sc: Scan<'a>, ts: i64, a: &mut Attrs) -> Option<Row<'a>> {
    sc.spaces().checked_sub(1)?;
    let pid = sc.number(10)?;
    sc.spaces().checked_sub(1)?;
    let tid = sc.number(10)?;
    sc.eat(b' ').then_some(())?;
    sc.spaces();
    let letter = sc.token()?;
    let level = one_letter_level(letter)?;
    sc.eat(b' ').then_some(())?;
    let rest = sc.rest();
    let colon = rest
        .find(": ")
        .or_else(|| rest.strip_suffix(':').map(str::len))?;
    let tag = rest[..colon].trim_end();
    let mut row = Row::new(rest.get(colon + 2..).unwrap_or(""));
    row.ts = Some(ts);
    row.level = level;
    row.raw_level = Some(letter);
    a.int("pid", pid as i64);
    a.int("tid", tid as i64);
    a.str("logger", tag);
    Some(row)
}

fn one_letter_level(s: &str) -> Option<&'static str> {
    Some(match s {
        "V" => "TRACE",
        "D" => "DEBUG",
        "I" => "INFO",
        "W" => "WARN",
        "E" => "ERROR",
        "F" | "A" => "CRITICAL",
        _ => return None,
    })
}

/// glog: `Lmmdd hh:mm:ss.uuuuuu threadid file:line] msg`.
fn glog<'a>(line: &'a str, ingest_us: i64, a: &mut Attrs) -> Option<Row<'a>> {
    let mut sc = Scan::new(line);
    let letter = &line[..1];
    sc.i = 1;
    let mo = sc.digits(2)?;
    let d = sc.digits(2)?;
    sc.eat(b' ').then_some(())?;
    let hms = sc.hms()?;
    let us = sc.fraction();
    sc.spaces().checked_sub(1)?;
    let thread = sc.number(12)?;
    sc.eat(b' ').then_some(())?;
    let place = sc.until(b']')?;
    sc.eat(b']').then_some(())?;
    sc.eat(b' ');
    let mut row = Row::new(sc.rest());
    row.ts = Some(infer_year(mo, d, hms, us, ingest_us)?);
    row.level = one_letter_level(letter)?;
    row.raw_level = Some(letter);
    a.int("thread", thread as i64);
    match place.rsplit_once(':') {
        Some((file, l)) if l.bytes().all(|c| c.is_ascii_digit()) => {
            a.str("file", file);
            a.int_or_str("line", l);
        }
        _ => a.str("file", place),
    }
    Some(row)
}

/// Python's `logging.basicConfig()` default: `WARNING:root:msg`.
fn python_basic<'a>(line: &'a str, a: &mut Attrs) -> Option<Row<'a>> {
    let (level, rest) = line.split_once(':')?;
    if !matches!(level, "DEBUG" | "INFO" | "WARNING" | "ERROR" | "CRITICAL") {
        return None;
    }
    let (name, msg) = rest.split_once(':')?;
    if name.is_empty() || name.contains(' ') {
        return None;
    }
    let mut row = Row::new(msg);
    row.level_named(level)?;
    a.str("logger", name);
    Some(row)
}

/// Apache error log: `[Www Mmm dd hh:mm:ss[.us] yyyy] [[module:]level] [pid N[:tid M]] msg`.
fn apache_error<'a>(line: &'a str, a: &mut Attrs) -> Option<Row<'a>> {
    let mut sc = Scan::new(line);
    sc.eat(b'[');
    sc.token()?; // day of the week
    sc.eat(b' ').then_some(())?;
    let mo = sc.month_name()?;
    sc.spaces().checked_sub(1)?;
    let d = sc.day()?;
    sc.eat(b' ').then_some(())?;
    let (h, mi, s) = sc.hms()?;
    let us = sc.fraction();
    sc.eat(b' ').then_some(())?;
    let y = sc.digits(4)?;
    sc.eat_str("] [").then_some(())?;
    let tag = sc.until(b']')?;
    sc.eat(b']').then_some(())?;
    let (module, level) = match tag.split_once(':') {
        Some((m, l)) => (Some(m), l),
        None => (None, tag),
    };
    let mut row = Row::new("");
    row.ts = Some(civil_us(y as i32, mo, d, h, mi, s, us)?);
    row.level_named(level)?;
    if let Some(m) = module {
        a.str("module", m);
    }
    sc.eat(b' ');
    if sc.eat_str("[pid ") {
        let p = sc.until(b']')?;
        sc.eat(b']');
        sc.eat(b' ');
        match p.split_once(":tid ") {
            Some((pid, tid)) => {
                a.int_or_str("pid", pid);
                a.int_or_str("tid", tid);
            }
            None => a.int_or_str("pid", p),
        }
    }
    let msg = sc.rest();
    if let Some(client) = msg.strip_prefix("[client ").and_then(|m| m.split_once(']')) {
        a.str("client", client.0);
    }
    row.message = Cow::Borrowed(msg);
    Some(row)
}
