//! A JSON record's fields without building a `serde_json::Value` tree.
//!
//! The row path used to parse every record into a `Value` (an allocation per key and per
//! string), take the fixed fields out and serialise the rest back into `attributes`. Here
//! the object is read as (key, raw value text) pairs borrowed from the record, and the
//! attributes are written from those slices. The output is byte for byte what
//! `serde_json::to_string` of the old map gave — keys in byte order, the last of
//! duplicate keys, values in serde_json's canonical form — because a raw value is copied
//! only when it is already canonical (a string with no escape, an integer that fits,
//! `true`, `false`, `null`); anything else (floats, escaped strings, arrays, objects) goes
//! through `Value` as before.

use std::borrow::Cow;
use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::Value;
use serde_json::value::RawValue;

/// A field's value: as written in the record, or serialised already (added fields).
#[derive(Debug, Clone, Copy)]
pub(super) enum FieldValue<'a> {
    Raw(&'a RawValue),
    Json(&'a str),
}

/// A record's top-level fields in key order, the last of duplicate keys kept.
#[derive(Debug, Default)]
pub(super) struct Fields<'a> {
    fields: Vec<(Cow<'a, str>, FieldValue<'a>)>,
}

/// A key as written: borrowed unless it had escapes.
#[derive(serde::Deserialize)]
struct Key<'a>(#[serde(borrow)] Cow<'a, str>);

struct FieldsVisitor;

impl<'de> Visitor<'de> for FieldsVisitor {
    type Value = Fields<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut fields = Vec::with_capacity(map.size_hint().unwrap_or(12));
        while let Some((Key(k), v)) = map.next_entry::<Key<'de>, &'de RawValue>()? {
            fields.push((k, FieldValue::Raw(v)));
        }
        // Stable: equal keys keep their order, and the last one wins as in a map.
        fields.sort_by(|a, b| a.0.cmp(&b.0));
        let mut out: Vec<(Cow<'de, str>, FieldValue<'de>)> = Vec::with_capacity(fields.len());
        for f in fields {
            match out.last_mut() {
                Some(last) if last.0 == f.0 => *last = f,
                _ => out.push(f),
            }
        }
        Ok(Fields { fields: out })
    }
}

impl<'de> Deserialize<'de> for Fields<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(FieldsVisitor)
    }
}

/// A fixed field's value, borrowed when it is a plain string.
pub(super) enum Scalar<'a> {
    Str(&'a str),
    Value(Value),
}

impl<'a> Fields<'a> {
    /// The fields of `text` when it is a JSON object; `None` for anything else (the caller
    /// then takes the `Value` path, which says what is wrong).
    pub(super) fn parse(text: &'a str) -> Option<Self> {
        serde_json::from_str(text).ok()
    }

    fn find(&self, key: &str) -> Result<usize, usize> {
        self.fields.binary_search_by(|(k, _)| k.as_ref().cmp(key))
    }

    /// Removes and returns the first of `keys` present (the others stay), with its value.
    pub(super) fn take_first(&mut self, keys: &[&'static str]) -> Option<(&'static str, Raw<'a>)> {
        keys.iter().find_map(|k| {
            let i = self.find(k).ok()?;
            match self.fields.remove(i).1 {
                FieldValue::Raw(r) => Some((*k, Raw(r))),
                FieldValue::Json(_) => None,
            }
        })
    }

    /// Sets `key`, replacing a field of that name.
    pub(super) fn insert(&mut self, key: Cow<'a, str>, value: FieldValue<'a>) {
        match self.find(&key) {
            Ok(i) => self.fields[i].1 = value,
            Err(i) => self.fields.insert(i, (key, value)),
        }
    }

    /// The fields as a JSON object, as `serde_json::to_string` of a map would write it.
    pub(super) fn write_json(&self, out: &mut String) -> Result<(), String> {
        out.push('{');
        for (i, (k, v)) in self.fields.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            write_str(k, out);
            out.push(':');
            match v {
                FieldValue::Json(j) => out.push_str(j),
                FieldValue::Raw(r) if is_canonical(r.get()) => out.push_str(r.get()),
                FieldValue::Raw(r) => {
                    let v: Value = serde_json::from_str(r.get())
                        .map_err(|e| format!("attribute {k:?}: {e}"))?;
                    out.push_str(&v.to_string());
                }
            }
        }
        out.push('}');
        Ok(())
    }
}

/// A value as written in the record.
#[derive(Clone, Copy)]
pub(super) struct Raw<'a>(pub(super) &'a RawValue);

impl<'a> Raw<'a> {
    /// The value: a string without escapes borrowed, anything else parsed.
    pub(super) fn scalar(self) -> Result<Scalar<'a>, String> {
        if let Some(s) = plain_string(self.0.get()) {
            return Ok(Scalar::Str(s));
        }
        serde_json::from_str(self.0.get())
            .map(Scalar::Value)
            .map_err(|e| e.to_string())
    }

    pub(super) fn is_null(self) -> bool {
        self.0.get() == "null"
    }
}

/// The contents of a JSON string literal that has no escape sequence.
fn plain_string(raw: &str) -> Option<&str> {
    let inner = raw.strip_prefix('"')?.strip_suffix('"')?;
    (!inner.contains('\\')).then_some(inner)
}

/// Whether serde_json would write the value `raw` parses to exactly as `raw`.
fn is_canonical(raw: &str) -> bool {
    if plain_string(raw).is_some() {
        // A valid literal without escapes holds no quote or control character, which are
        // all serde_json escapes.
        return true;
    }
    if matches!(raw, "true" | "false" | "null") {
        return true;
    }
    let digits = raw.strip_prefix('-').unwrap_or(raw);
    // Integers that fit an i64 print as written; no leading zero, and not `-0` (a float).
    !digits.is_empty()
        && digits.len() <= 18
        && digits.bytes().all(|c| c.is_ascii_digit())
        && (digits == "0" && raw == "0" || !digits.starts_with('0'))
}

/// `s` as a JSON string literal, escaped as serde_json escapes.
fn write_str(s: &str, out: &mut String) {
    if s.bytes().any(|c| c < 0x20 || c == b'"' || c == b'\\') {
        // Cannot fail: a &str always serialises.
        out.push_str(&serde_json::to_string(s).unwrap_or_default());
    } else {
        out.push('"');
        out.push_str(s);
        out.push('"');
    }
}
