//! Apache/nginx access logs, common and combined:
//! `client ident user [10/Oct/2000:13:55:36 -0700] "GET /a HTTP/1.0" 200 2326 "referer" "agent"`,
//! with whatever a custom `LogFormat` appends kept as `extra`.

use super::scan::{Scan, civil_us};
use super::{Attrs, Row};

/// Parses an access-log line; `None` when it is not one.
pub(super) fn parse<'a>(line: &'a str, a: &mut Attrs) -> Option<Row<'a>> {
    let mut sc = Scan::new(line);
    let client = sc.token()?;
    if client.contains(['[', '"']) || !sc.eat(b' ') {
        return None;
    }
    let ident = sc.token()?;
    sc.eat(b' ').then_some(())?;
    let user = sc.token()?;
    if !sc.eat_str(" [") {
        return None;
    }
    let ts = clf_time(&mut sc)?;
    if !sc.eat_str(" \"") {
        return None;
    }
    // Apache writes a `"` inside as `\"`; the text is kept as written.
    let (request, _) = sc.quoted()?;
    sc.eat(b' ').then_some(())?;
    let status = sc.token()?;
    let status_code = status.parse::<u16>().ok();
    if status != "-" && status_code.is_none() {
        return None;
    }
    let mut bytes = None;
    if sc.eat(b' ') {
        bytes = Some(sc.token()?);
    }
    let mut row = Row::new(request);
    row.ts = Some(ts);
    row.level = match status_code {
        Some(500..) => "ERROR",
        Some(400..=499) => "WARN",
        _ => "INFO",
    };
    a.str("client", client);
    if ident != "-" {
        a.str("ident", ident);
    }
    if user != "-" {
        a.str("user", user);
    }
    // The request line `METHOD path PROTOCOL`; a malformed one stays whole as `request`.
    let mut parts = request.splitn(3, ' ');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(method), Some(path), protocol)
            if !method.is_empty() && method.bytes().all(|c| c.is_ascii_uppercase()) =>
        {
            a.str("method", method);
            a.str("path", path);
            if let Some(p) = protocol {
                a.str("protocol", p);
            }
        }
        _ => a.str("request", request),
    }
    if let Some(code) = status_code {
        a.int("status", i64::from(code));
    }
    if let Some(b) = bytes.filter(|b| *b != "-") {
        a.int_or_str("bytes", b);
    }
    for key in ["referer", "user_agent"] {
        let save = sc;
        if !sc.eat_str(" \"") {
            break;
        }
        match sc.quoted() {
            Some((v, _)) => {
                if v != "-" {
                    a.str(key, v);
                }
            }
            None => {
                sc = save;
                break;
            }
        }
    }
    let extra = sc.rest().trim();
    if !extra.is_empty() {
        a.str("extra", extra);
    }
    Some(row)
}

/// `10/Oct/2000:13:55:36 -0700]` (the `[` already read): µs since the epoch, UTC.
fn clf_time(sc: &mut Scan<'_>) -> Option<i64> {
    let d = sc.digits(2)?;
    sc.eat(b'/').then_some(())?;
    let mo = sc.month_name()?;
    sc.eat(b'/').then_some(())?;
    let y = sc.digits(4)?;
    sc.eat(b':').then_some(())?;
    let (h, mi, s) = sc.hms()?;
    let us = sc.fraction();
    let off = if sc.eat(b' ') { sc.zone()? } else { 0 };
    sc.eat(b']').then_some(())?;
    Some(civil_us(y as i32, mo, d, h, mi, s, us)? - off * 1_000_000)
}
