//! The `attributes` JSON object of a text line, written as the line is parsed into one
//! buffer reused from row to row: no map, no `serde_json::Value`, no allocation per field.

use std::fmt::Write;

/// A JSON object in the making. Nested objects open with [`Attrs::open`] and close with
/// [`Attrs::close`].
#[derive(Debug, Default)]
pub(crate) struct Attrs {
    buf: String,
    /// Whether the innermost open object already has a member.
    has_member: Vec<bool>,
}

impl Attrs {
    /// Empties the buffer for the next row.
    pub fn clear(&mut self) {
        self.buf.clear();
        self.has_member.clear();
    }

    fn key(&mut self, key: &str) {
        if self.has_member.is_empty() {
            self.buf.push('{');
            self.has_member.push(false);
        }
        if let Some(has) = self.has_member.last_mut() {
            if *has {
                self.buf.push(',');
            }
            *has = true;
        }
        escape_into(&mut self.buf, key);
        self.buf.push(':');
    }

    /// `"key":"value"`.
    pub fn str(&mut self, key: &str, value: &str) {
        self.key(key);
        escape_into(&mut self.buf, value);
    }

    /// `"key":value` for a number.
    pub fn int(&mut self, key: &str, value: i64) {
        self.key(key);
        let _ = write!(self.buf, "{value}");
    }

    /// `"key":json` where `json` is already valid JSON text.
    pub fn raw_json(&mut self, key: &str, json: &str) {
        self.key(key);
        self.buf.push_str(json);
    }

    /// `"key":` a number when `value` is all digits (no leading zero), else a string.
    pub fn int_or_str(&mut self, key: &str, value: &str) {
        let numeric = !value.is_empty()
            && value.len() < 18
            && value.bytes().all(|c| c.is_ascii_digit())
            && (value == "0" || !value.starts_with('0'));
        match numeric.then(|| value.parse::<i64>().ok()).flatten() {
            Some(n) => self.int(key, n),
            None => self.str(key, value),
        }
    }

    /// `"key":{`; members follow until [`Attrs::close`].
    pub fn open(&mut self, key: &str) {
        self.key(key);
        self.buf.push('{');
        self.has_member.push(false);
    }

    /// Closes the object [`Attrs::open`] began.
    pub fn close(&mut self) {
        if self.has_member.len() > 1 {
            self.has_member.pop();
            self.buf.push('}');
        }
    }

    /// The finished object (`{}` when nothing was written); the buffer is kept for reuse.
    pub fn finish(&mut self) -> &str {
        while self.has_member.len() > 1 {
            self.close();
        }
        if self.has_member.is_empty() {
            self.buf.push_str("{}");
        } else {
            self.buf.push('}');
        }
        self.has_member.clear();
        &self.buf
    }
}

/// Appends `s` as a JSON string literal.
pub(crate) fn escape_into(out: &mut String, s: &str) {
    out.push('"');
    let mut start = 0;
    for (i, c) in s.bytes().enumerate() {
        let esc: &str = match c {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0..=0x1f => "",
            _ => continue,
        };
        out.push_str(&s[start..i]);
        if esc.is_empty() {
            let _ = write!(out, "\\u{c:04x}");
        } else {
            out.push_str(esc);
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
}
