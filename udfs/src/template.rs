//! `log_template(message)`: a message with its variable parts masked, so messages that
//! differ only in ids, numbers and addresses group together (`GROUP BY
//! log_template(message)`).
//!
//! What is masked, in this order at the start of each word (a word is a run of ASCII
//! letters, digits and `_`):
//!
//! | input | becomes |
//! | --- | --- |
//! | a UUID, `8-4-4-4-12` hex digits | `<uuid>` |
//! | an IPv4 address, with an optional `:port` | `<ip>` |
//! | an IPv6 address with `::` or all eight groups, and a digit (`fe80::1`, `2001:db8::8a2e:370:7334`) | `<ip>` |
//! | `0x` and hex digits | `<hex>` |
//! | a word of 6 or more hex digits with at least one digit and one letter (`3f2a9c1d`) | `<hex>` |
//! | a word starting with a digit: digits, an optional `.digits`, and letters after them as a unit (`42`, `1.5`, `250ms`) | `<num>` (`<num>ms`) |
//!
//! Everything else is kept as is: words with digits inside or at the end (`user42`,
//! `http2`) are names, not numbers. Times come out as `<num>:<num>:<num>`, dates as
//! `<num>-<num>-<num>`. NULL stays NULL.
//!
//! ```
//! use logsphere_udfs::template::log_template;
//! assert_eq!(
//!     log_template("user 42 from 10.0.0.7:5432 failed after 1.5s (req 3f2a9c1d)"),
//!     "user <num> from <ip> failed after <num>s (req <hex>)"
//! );
//! ```

use std::sync::Arc;

use datafusion::arrow::array::{Array, StringArray, StringBuilder};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::{Result, exec_err};
use datafusion::logical_expr::{ColumnarValue, ScalarUDF, Volatility, create_udf};

/// The `log_template(text) -> text` function.
pub fn udf() -> ScalarUDF {
    create_udf(
        "log_template",
        vec![DataType::Utf8],
        DataType::Utf8,
        Volatility::Immutable,
        Arc::new(invoke),
    )
}

fn invoke(args: &[ColumnarValue]) -> Result<ColumnarValue> {
    let [message] = args else {
        return exec_err!("log_template(message) takes one argument");
    };
    let rows = crate::rows_of(args);
    let message = crate::strings(message, rows)?;
    let Some(message) = message.as_any().downcast_ref::<StringArray>() else {
        return exec_err!("log_template: argument must be text");
    };
    let mut out = StringBuilder::with_capacity(rows, message.value_data().len());
    for m in message {
        match m {
            Some(m) => out.append_value(log_template(m)),
            None => out.append_null(),
        }
    }
    Ok(ColumnarValue::Array(Arc::new(out.finish())))
}

/// `message` with UUIDs, IP addresses, hex ids and numbers masked (see the module doc).
pub fn log_template(message: &str) -> String {
    let b = message.as_bytes();
    let mut out = String::with_capacity(message.len());
    let mut i = 0;
    // Start of the not-yet-copied text; masks are only placed at ASCII positions, so every
    // slice boundary below is a char boundary.
    let mut copied = 0;
    while i < b.len() {
        let at_word_start = i == 0 || !is_word(b[i - 1]);
        if !at_word_start || !(b[i].is_ascii_hexdigit() || b[i] == b':') {
            i += 1;
            continue;
        }
        let masked = uuid_len(&b[i..])
            .map(|n| (n, "<uuid>"))
            .or_else(|| ipv4_len(&b[i..]).map(|n| (n, "<ip>")))
            .or_else(|| ipv6_len(&b[i..]).map(|n| (n, "<ip>")))
            .or_else(|| hex_len(&b[i..]).map(|n| (n, "<hex>")))
            .or_else(|| number_len(&b[i..]).map(|n| (n, "<num>")));
        match masked {
            Some((n, mask)) => {
                out.push_str(&message[copied..i]);
                out.push_str(mask);
                i += n;
                copied = i;
            }
            None => i += 1,
        }
    }
    out.push_str(&message[copied..]);
    out
}

fn is_word(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

/// True when `b` ends at `n` (the next byte, if any, is not part of a word).
fn ends_word(b: &[u8], n: usize) -> bool {
    b.get(n).is_none_or(|&c| !is_word(c))
}

fn hex_run(b: &[u8]) -> usize {
    b.iter().take_while(|c| c.is_ascii_hexdigit()).count()
}

fn digit_run(b: &[u8]) -> usize {
    b.iter().take_while(|c| c.is_ascii_digit()).count()
}

fn uuid_len(b: &[u8]) -> Option<usize> {
    let mut n = 0;
    for (k, want) in [8, 4, 4, 4, 12].into_iter().enumerate() {
        if k > 0 {
            if b.get(n) != Some(&b'-') {
                return None;
            }
            n += 1;
        }
        if hex_run(&b[n..]) != want {
            return None;
        }
        n += want;
    }
    ends_word(b, n).then_some(n)
}

fn ipv4_len(b: &[u8]) -> Option<usize> {
    let mut n = 0;
    for k in 0..4 {
        if k > 0 {
            if b.get(n) != Some(&b'.') {
                return None;
            }
            n += 1;
        }
        let d = digit_run(&b[n..]);
        if d == 0 || d > 3 {
            return None;
        }
        n += d;
    }
    // Not a longer dotted number (a version such as 1.2.3.4.5).
    if b.get(n) == Some(&b'.') && b.get(n + 1).is_some_and(u8::is_ascii_digit) {
        return None;
    }
    if b.get(n) == Some(&b':') {
        let port = digit_run(&b[n + 1..]);
        if port > 0 && ends_word(b, n + 1 + port) {
            n += 1 + port;
        }
    }
    ends_word(b, n).then_some(n)
}

fn ipv6_len(b: &[u8]) -> Option<usize> {
    let n = b
        .iter()
        .take_while(|c| c.is_ascii_hexdigit() || **c == b':')
        .count();
    let text = &b[..n];
    // A trailing single ':' is punctuation ("fe80::1: refused").
    let n = if text.ends_with(b":") && !text.ends_with(b"::") {
        n - 1
    } else {
        n
    };
    let text = &b[..n];
    let groups = text.split(|&c| c == b':').collect::<Vec<_>>();
    let double = text.windows(2).any(|w| w == b"::");
    let well_formed = groups.iter().all(|g| g.len() <= 4)
        && groups.iter().filter(|g| !g.is_empty()).count() >= 1
        && text.windows(3).all(|w| w != b":::");
    // A digit somewhere: `fade::add` is a name, `fe80::1` an address.
    let ok = well_formed
        && text.iter().any(u8::is_ascii_digit)
        && ((double && groups.len() >= 3) || (!double && groups.len() == 8));
    (ok && ends_word(b, n)).then_some(n)
}

fn hex_len(b: &[u8]) -> Option<usize> {
    if b.len() > 2 && b[0] == b'0' && (b[1] == b'x' || b[1] == b'X') {
        let d = hex_run(&b[2..]);
        if d > 0 && ends_word(b, 2 + d) {
            return Some(2 + d);
        }
    }
    let d = hex_run(b);
    let word = &b[..d];
    (d >= 6
        && ends_word(b, d)
        && word.iter().any(u8::is_ascii_digit)
        && word.iter().any(u8::is_ascii_alphabetic))
    .then_some(d)
}

/// Digits and an optional `.digits`; letters right after them are a unit and stay, any
/// other rest of the word (`24T10`) is masked with the number.
fn number_len(b: &[u8]) -> Option<usize> {
    let mut n = digit_run(b);
    if n == 0 {
        return None;
    }
    if b.get(n) == Some(&b'.') {
        let frac = digit_run(&b[n + 1..]);
        if frac > 0 {
            n += 1 + frac;
        }
    }
    let letters = b[n..]
        .iter()
        .take_while(|c| c.is_ascii_alphabetic())
        .count();
    if ends_word(b, n + letters) {
        Some(n)
    } else {
        // The whole word: digits with letters and digits mixed after them.
        Some(n + b[n..].iter().take_while(|&&c| is_word(c)).count())
    }
}

#[cfg(test)]
mod tests {
    use super::log_template;

    #[test]
    fn masks_numbers_ids_and_addresses() {
        let cases = [
            ("disk full", "disk full"),
            ("", ""),
            ("retry 3 of 10", "retry <num> of <num>"),
            ("took 250ms, then 1.5s", "took <num>ms, then <num>s"),
            ("balance -42.75 EUR", "balance -<num> EUR"),
            (
                "session 3fa85f64-5717-4562-b3fc-2c963f66afa6 expired",
                "session <uuid> expired",
            ),
            (
                "SESSION 3FA85F64-5717-4562-B3FC-2C963F66AFA6",
                "SESSION <uuid>",
            ),
            (
                "connect to 10.0.0.7:5432 refused",
                "connect to <ip> refused",
            ),
            ("from 192.168.1.1.", "from <ip>."),
            ("peer fe80::1: reset", "peer <ip>: reset"),
            (
                "peer 2001:0db8:85a3:0000:0000:8a2e:0370:7334 gone",
                "peer <ip> gone",
            ),
            ("ptr 0xdeadBEEF null", "ptr <hex> null"),
            ("commit 3f2a9c1d pushed", "commit <hex> pushed"),
            ("trace=ab12cd34ef56 span=1", "trace=<hex> span=<num>"),
            // Words, not ids: no digit, too short, or digits inside a name.
            ("deadbeef facade", "deadbeef facade"),
            ("user42 uses http2 on v1", "user42 uses http2 on v1"),
            ("version 1.2.3.4.5", "version <num>.<num>.<num>"),
            ("call std::fade::add", "call std::fade::add"),
            (
                "at 12:30:45 on 2026-11-24",
                "at <num>:<num>:<num> on <num>-<num>-<num>",
            ),
            (
                "ts 2026-11-24T10:00:00Z",
                "ts <num>-<num>-<num>:<num>:<num>Z",
            ),
            ("id=7, n_3 = 8", "id=<num>, n_3 = <num>"),
            ("naïve 5 café 6", "naïve <num> café <num>"),
            ("über9 7", "über9 <num>"),
        ];
        for (input, want) in cases {
            assert_eq!(log_template(input), want, "log_template({input:?})");
        }
    }

    #[test]
    fn messages_differing_in_values_share_a_template() {
        let a = log_template("user 17 login failed from 10.1.2.3 (req 9c1f0a77e2)");
        let b = log_template("user 9023 login failed from 172.16.0.254 (req 00ab11cd22)");
        assert_eq!(a, b);
        assert_eq!(a, "user <num> login failed from <ip> (req <hex>)");
    }
}
