//! Syslog lines: RFC 5424 (`<165>1 2003-10-11T22:14:15.003Z host app 1234 ID47 [sd] msg`)
//! and RFC 3164 / BSD (`<34>Oct 11 22:14:15 host su[123]: msg`), the latter also without
//! `<PRI>` (as in `/var/log/syslog`), without the host, or with an RFC 3339 time (rsyslog).

use std::borrow::Cow;

use super::scan::{Scan, infer_year};
use super::{Attrs, Row};
use crate::ingest::level::syslog_severity;

const FACILITIES: [&str; 24] = [
    "kern",
    "user",
    "mail",
    "daemon",
    "auth",
    "syslog",
    "lpr",
    "news",
    "uucp",
    "cron",
    "authpriv",
    "ftp",
    "ntp",
    "security",
    "console",
    "solaris-cron",
    "local0",
    "local1",
    "local2",
    "local3",
    "local4",
    "local5",
    "local6",
    "local7",
];

/// Parses a syslog line; `None` when it is not one.
pub(super) fn parse<'a>(line: &'a str, ingest_us: i64, a: &mut Attrs) -> Option<Row<'a>> {
    let mut sc = Scan::new(line);
    let pri = if sc.eat(b'<') {
        let p = sc.number(3)?;
        if p > 191 || !sc.eat(b'>') {
            return None;
        }
        Some(p as u8)
    } else {
        None
    };
    if pri.is_some() && sc.eat_str("1 ") {
        return rfc5424(sc, pri.unwrap_or(13), a);
    }
    rfc3164(sc, pri, ingest_us, a)
}

fn facility_and_level<'a>(row: &mut Row<'a>, pri: u8, a: &mut Attrs) {
    row.level = syslog_severity(pri & 7);
    if let Some(f) = FACILITIES.get(usize::from(pri >> 3)) {
        a.str("facility", f);
    }
}

fn rfc3164<'a>(
    mut sc: Scan<'a>,
    pri: Option<u8>,
    ingest_us: i64,
    a: &mut Attrs,
) -> Option<Row<'a>> {
    let ts = if let Some(month) = sc.month_name() {
        if sc.spaces() == 0 {
            return None;
        }
        let day = sc.day()?;
        if !sc.eat(b' ') {
            return None;
        }
        let hms = sc.hms()?;
        let us = sc.fraction();
        // Some daemons write the year after the time (`Oct 11 22:14:15 2026 host`).
        let mut year_scan = sc;
        let year = (year_scan.eat(b' '))
            .then(|| year_scan.digits(4))
            .flatten()
            .filter(|_| year_scan.peek() == Some(b' '));
        match year {
            Some(y) => {
                sc = year_scan;
                super::scan::civil_us(y as i32, month, day, hms.0, hms.1, hms.2, us)?
            }
            None => infer_year(month, day, hms, us, ingest_us)?,
        }
    } else {
        // An ISO time without a zone is an application layout, not syslog.
        match sc.iso_datetime()? {
            (ts, true) => ts,
            (_, false) => return None,
        }
    };
    if !sc.eat(b' ') {
        return None;
    }
    sc.spaces();
    let mut row = Row::new("");
    row.ts = Some(ts);
    if let Some(p) = pri {
        facility_and_level(&mut row, p, a);
    }
    // HOST TAG: msg, or TAG: msg with no host (a `tag[pid]:` first token).
    let first = sc.token()?;
    let tag_first = first.ends_with(':') || (first.contains('[') && first.ends_with(']'));
    if !tag_first {
        row.source = first;
        sc.spaces();
    } else {
        sc.i -= first.len();
    }
    let rest = sc.rest();
    let colon = rest
        .find(": ")
        .or_else(|| rest.strip_suffix(':').map(str::len));
    if let Some(colon) = colon
        && tag(&rest[..colon], a)
    {
        sc.i += (colon + 2).min(rest.len());
    } else if let Some((first, _)) = rest.split_once(' ')
        && pid_tag(first)
        && tag(first, a)
    {
        // `prog[pid] msg` without the colon: what rsyslog forwards of an RFC 5424 message
        // with its RFC 3164 templates (RSYSLOG_ForwardFormat).
        sc.i += first.len() + 1;
    }
    row.message = Cow::Borrowed(sc.rest());
    Some(row)
}

/// `program[1234]`: a tag that needs no colon after it, its pid marking its end.
fn pid_tag(token: &str) -> bool {
    token
        .strip_suffix(']')
        .and_then(|t| t.rsplit_once('['))
        .is_some_and(|(program, pid)| {
            !program.is_empty() && !pid.is_empty() && pid.bytes().all(|c| c.is_ascii_digit())
        })
}

/// `program[pid]`, `program`, macOS's `Microsoft Word[14463]` and `sandboxd[129]
/// ([31211])`, into attributes; false (nothing written) when `tag` is not a tag.
fn tag(tag: &str, a: &mut Attrs) -> bool {
    if tag.is_empty() || tag.len() > 256 {
        return false;
    }
    let (tag, address) = match tag.strip_suffix(')').and_then(|t| t.rsplit_once(" (")) {
        Some((t, addr)) => (t, Some(addr)),
        None => (tag, None),
    };
    let (program, pid) = match tag.strip_suffix(']').and_then(|t| t.rsplit_once('[')) {
        Some((program, pid)) => (program, Some(pid)),
        None => (tag, None),
    };
    // A space is allowed where a pid marks the end (`Microsoft Word[14463]`) or before a
    // version (`syslogd 1.4.1:`).
    let versioned = program.rsplit_once(' ').is_some_and(|(name, v)| {
        !name.contains(' ') && v.bytes().all(|c| c.is_ascii_digit() || c == b'.')
    });
    if program.is_empty() || (pid.is_none() && program.contains(' ') && !versioned) {
        return false;
    }
    a.str("program", program);
    if let Some(pid) = pid {
        a.int_or_str("pid", pid);
    }
    if let Some(addr) = address {
        a.str("address", addr);
    }
    true
}

fn rfc5424<'a>(mut sc: Scan<'a>, pri: u8, a: &mut Attrs) -> Option<Row<'a>> {
    let mut row = Row::new("");
    facility_and_level(&mut row, pri, a);
    if !sc.eat(b'-') {
        row.ts = Some(sc.iso_datetime()?.0);
    }
    sc.eat(b' ').then_some(())?;
    let nil = |v: &'a str| (v != "-").then_some(v);
    if let Some(host) = nil(sc.token()?) {
        row.source = host;
    }
    sc.eat(b' ').then_some(())?;
    if let Some(app) = nil(sc.token()?) {
        a.str("program", app);
    }
    sc.eat(b' ').then_some(())?;
    if let Some(pid) = nil(sc.token()?) {
        a.int_or_str("pid", pid);
    }
    sc.eat(b' ').then_some(())?;
    if let Some(msgid) = nil(sc.token()?) {
        a.str("msgid", msgid);
    }
    sc.eat(b' ').then_some(())?;
    if !sc.eat(b'-') {
        structured_data(&mut sc, a)?;
    }
    if !sc.at_end() {
        sc.eat(b' ').then_some(())?;
    }
    let msg = sc.rest();
    row.message = Cow::Borrowed(msg.strip_prefix('\u{feff}').unwrap_or(msg));
    Some(row)
}

/// `[id name="value" …][id2 …]` into `"sd":{"id":{"name":"value"}}`; `\"`, `\\` and `\]`
/// in values are unescaped.
fn structured_data(sc: &mut Scan<'_>, a: &mut Attrs) -> Option<()> {
    if sc.peek() != Some(b'[') {
        return None;
    }
    a.open("sd");
    while sc.eat(b'[') {
        let rest = sc.rest();
        let id_len = rest.bytes().position(|c| c == b' ' || c == b']')?;
        a.open(&rest[..id_len]);
        sc.i += id_len;
        while sc.eat(b' ') {
            let name = sc.until(b'=')?;
            if !(sc.eat(b'=') && sc.eat(b'"')) {
                return None;
            }
            match sc.quoted()? {
                (raw, false) => a.str(name, raw),
                (raw, true) => a.str(name, &unescape(raw)),
            }
        }
        sc.eat(b']').then_some(())?;
        a.close();
    }
    a.close();
    Some(())
}

fn unescape(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some(n @ ('"' | '\\' | ']')) => out.push(n),
                Some(n) => {
                    out.push('\\');
                    out.push(n);
                }
                None => out.push('\\'),
            }
        } else {
            out.push(c);
        }
    }
    out
}
