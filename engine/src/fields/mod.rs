//! Promoted fields: top-level `attributes` keys that cold files carry as typed columns.
//!
//! The hot tier keeps `attributes` as JSON text. When tiering (or a compaction) writes a
//! `logs` Parquet file, [`shred`] looks at the file's rows and adds a typed column for
//! every key that enough of them carry ([`FieldsConfig`]); `attributes` stays whole, so
//! nothing that reads it changes. The manifest records, per file, which columns it has
//! ([`FileColumn`]) and, for the table, the registry of promoted fields
//! ([`PromotedField`]): their table-level type is the join of the files' types, and a
//! disagreement falls back to text and is counted, never an error and never a lost value.
//!
//! `logs` shows the registry's fields as extra nullable columns (`query/tables.rs`): a
//! file that has the column is read (and cast when its type is not the table's), a file
//! without it and every hot row compute it from `attributes` ([`extract`]). The analyzer
//! rule in [`rewrite`] turns `attr(attributes, 'k')` and `attributes ->> 'k'` into reads of
//! the column where the text is provably the same. See `docs/fields.md`.

pub mod rewrite;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BooleanBuilder, Float64Builder, Int64Builder, RecordBatch, StringArray,
    StringBuilder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::{Result as DfResult, ScalarValue, exec_err};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDFImpl, Signature, Volatility,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::EngineError;
use crate::model::logs_schema;

/// Index of `attributes` in [`logs_schema`].
pub const ATTRIBUTES: usize = 5;

/// The type a promoted field has in one file or in the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FieldType {
    /// Every value an integer that fits i64.
    Int64,
    /// Every value a number, some not integers.
    Float64,
    /// Every value `true` or `false`.
    Boolean,
    /// Every value a string: the column holds it unquoted.
    Text,
    /// Objects, arrays, or a mix of kinds: the column holds what `attr()` returns (strings
    /// unquoted, anything else as JSON text).
    Json,
}

impl FieldType {
    /// The Arrow type of the column.
    pub fn data_type(self) -> DataType {
        match self {
            Self::Int64 => DataType::Int64,
            Self::Float64 => DataType::Float64,
            Self::Boolean => DataType::Boolean,
            Self::Text | Self::Json => DataType::Utf8,
        }
    }

    /// The name shown in `promoted_fields`.
    pub fn sql_name(self) -> &'static str {
        match self {
            Self::Int64 => "bigint",
            Self::Float64 => "double",
            Self::Boolean => "boolean",
            Self::Text => "text",
            Self::Json => "json text",
        }
    }

    /// The table type of a field seen as `self` and as `other`, and whether that is a
    /// conflict (integers and other numbers join to double without one).
    pub fn join(self, other: Self) -> (Self, bool) {
        use FieldType::*;
        match (self, other) {
            (a, b) if a == b => (a, false),
            (Int64, Float64) | (Float64, Int64) => (Float64, false),
            _ => (Json, true),
        }
    }

    /// Whether `CAST(column AS text)` equals `attr(attributes, key)` for every value: not
    /// for doubles, whose JSON text (`3`, `1e300`) Arrow's cast does not reproduce.
    pub fn text_matches_attr(self) -> bool {
        !matches!(self, Self::Float64)
    }

    /// Whether `CAST(column AS text)` equals `attributes ->> key` (`json_as_text`), which
    /// returns a non-string value's raw JSON text: integers, booleans and strings only.
    pub fn text_matches_json_as_text(self) -> bool {
        matches!(self, Self::Int64 | Self::Boolean | Self::Text)
    }

    /// Whether a file column of type `self` can be cast to the table type `table` with the
    /// value `attr()` would give; otherwise the value is computed from `attributes`.
    pub fn casts_exactly_to(self, table: Self) -> bool {
        use FieldType::*;
        self == table
            || matches!(
                (self, table),
                (Int64, Float64) | (Int64 | Boolean | Text, Json)
            )
    }
}

/// A promoted column of one cold file (recorded in the manifest beside the file).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileColumn {
    /// The top-level key of `attributes`, and the column's name.
    pub name: String,
    /// The column's type in this file.
    #[serde(rename = "type")]
    pub kind: FieldType,
    /// Rows of the file with a non-null value.
    pub values: u64,
}

/// A field of the registry: a column of the `logs` table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromotedField {
    /// The top-level key of `attributes`, and the column's name.
    pub name: String,
    /// The table-level type: the join of every file's type.
    #[serde(rename = "type")]
    pub kind: FieldType,
    /// When the first file with the column was committed (µs since the epoch).
    pub first_seen_us: i64,
    /// Files whose values disagreed with the table's type or within themselves.
    pub conflicts: u64,
}

/// What is promoted (`[fields]` in the configuration).
#[derive(Debug, Clone, PartialEq)]
pub struct FieldsConfig {
    /// Whether tiering promotes fields at all.
    pub promote: bool,
    /// Most fields the registry (and so the `logs` table) holds.
    pub max_promoted: usize,
    /// Share of a file's rows (0 < share ≤ 1) that must carry a key for it to be promoted.
    pub min_share: f64,
    /// Keys never promoted.
    pub never: Vec<String>,
    /// Keys promoted whenever a file carries them, whatever their share.
    pub always: Vec<String>,
}

impl Default for FieldsConfig {
    fn default() -> Self {
        Self {
            promote: true,
            max_promoted: 32,
            min_share: 0.5,
            never: Vec::new(),
            always: Vec::new(),
        }
    }
}

impl FieldsConfig {
    /// Checks the limits; errors name the key of the configuration file.
    pub fn validate(&self) -> Result<(), EngineError> {
        let bad = |key: &str, reason: String| EngineError::Config {
            key: format!("fields.{key}"),
            reason,
        };
        if !(self.min_share > 0.0 && self.min_share <= 1.0) {
            return Err(bad(
                "min_share",
                format!("{} is not a share of rows in (0, 1]", self.min_share),
            ));
        }
        if self.max_promoted > MAX_PROMOTED {
            return Err(bad(
                "max_promoted",
                format!("{} is above the limit of {MAX_PROMOTED}", self.max_promoted),
            ));
        }
        for (key, names) in [("never", &self.never), ("always", &self.always)] {
            for name in names {
                if let Some(reason) = unfit_name(name) {
                    return Err(bad(key, format!("{name:?} {reason}")));
                }
            }
        }
        if let Some(both) = self.always.iter().find(|a| self.never.contains(a)) {
            return Err(bad(
                "always",
                format!("{both:?} is listed in fields.never too"),
            ));
        }
        Ok(())
    }
}

/// Upper bound of `fields.max_promoted`: each field is a column of every scan's schema.
pub const MAX_PROMOTED: usize = 1000;

/// Longest key promoted (longer ones stay in `attributes` only).
const MAX_NAME_LEN: usize = 128;

/// Why a key cannot be a column, or `None` when it can.
fn unfit_name(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("is empty")
    } else if name.len() > MAX_NAME_LEN {
        Some("is longer than 128 bytes")
    } else if logs_schema().fields().iter().any(|f| f.name() == name) {
        Some("is the name of a fixed column of logs")
    } else {
        None
    }
}

/// The kinds of values a key took in a file.
#[derive(Debug, Default, Clone, Copy)]
struct Seen {
    rows: u64,
    int: bool,
    float: bool,
    boolean: bool,
    string: bool,
    other: bool,
}

impl Seen {
    fn add(&mut self, v: &Value) {
        match v {
            Value::Null => return,
            Value::Number(n) if n.is_i64() => self.int = true,
            // Integers beyond i64 would lose digits as doubles: text keeps them.
            Value::Number(n) if n.is_u64() => self.other = true,
            Value::Number(_) => self.float = true,
            Value::Bool(_) => self.boolean = true,
            Value::String(_) => self.string = true,
            Value::Array(_) | Value::Object(_) => self.other = true,
        }
        self.rows += 1;
    }

    /// The file's type for the key and whether its values were of mixed kinds.
    fn kind(&self) -> (FieldType, bool) {
        let kinds = [
            self.int || self.float,
            self.boolean,
            self.string,
            self.other,
        ]
        .iter()
        .filter(|k| **k)
        .count();
        let kind = match (self.int, self.float, self.boolean, self.string, self.other) {
            (true, false, false, false, false) => FieldType::Int64,
            (_, true, false, false, false) => FieldType::Float64,
            (false, false, true, false, false) => FieldType::Boolean,
            (false, false, false, true, false) => FieldType::Text,
            _ => FieldType::Json,
        };
        (kind, kinds > 1)
    }
}

/// A `logs` batch with its promoted columns appended.
#[derive(Debug)]
pub struct Shredded {
    /// The fixed columns, then one nullable column per promoted field.
    pub batch: RecordBatch,
    /// What the manifest records for the file.
    pub columns: Vec<FileColumn>,
    /// Promoted keys whose values were of mixed kinds in this file (held as JSON text).
    pub mixed: Vec<String>,
}

/// Appends the promoted columns to `batch` (shaped like [`logs_schema`]): the registry's
/// fields wherever the batch carries them (a column that is mostly null costs next to
/// nothing and spares every read the JSON), and new keys that at least `min_share` of the
/// rows carry (or that `always` names), while the registry has room.
pub fn shred(
    batch: &RecordBatch,
    config: &FieldsConfig,
    registry: &[PromotedField],
) -> Result<Shredded, EngineError> {
    let unchanged = || Shredded {
        batch: batch.clone(),
        columns: Vec::new(),
        mixed: Vec::new(),
    };
    if !config.promote || batch.num_rows() == 0 || batch.num_columns() <= ATTRIBUTES {
        return Ok(unchanged());
    }
    let Some(attrs) = batch
        .column(ATTRIBUTES)
        .as_any()
        .downcast_ref::<StringArray>()
    else {
        return Ok(unchanged());
    };
    let mut seen: BTreeMap<String, Seen> = BTreeMap::new();
    for row in attrs.iter() {
        let Some(map) = row.and_then(parse_object) else {
            continue;
        };
        for (k, v) in &map {
            // Keys no file could promote are not counted (bounded memory on wild keys).
            if k.len() <= MAX_NAME_LEN {
                seen.entry(k.clone()).or_default().add(v);
            }
        }
    }
    let known: HashSet<&str> = registry.iter().map(|f| f.name.as_str()).collect();
    let rows = batch.num_rows() as f64;
    let eligible =
        |name: &str| unfit_name(name).is_none() && !config.never.iter().any(|n| n == name);
    let always = |name: &str| config.always.iter().any(|n| n == name);
    let mut chosen: Vec<&str> = seen
        .iter()
        .filter(|(k, s)| s.rows > 0 && known.contains(k.as_str()) && eligible(k))
        .map(|(k, _)| k.as_str())
        .collect();
    let mut fresh: Vec<(&String, &Seen)> = seen
        .iter()
        .filter(|(k, s)| {
            s.rows > 0
                && !known.contains(k.as_str())
                && eligible(k)
                && (always(k) || s.rows as f64 >= config.min_share * rows)
        })
        .collect();
    // `always` first, then the most carried; ties by name, so the choice is deterministic.
    fresh.sort_by(|(ka, sa), (kb, sb)| {
        let (aa, ab) = (always(ka), always(kb));
        ab.cmp(&aa).then(sb.rows.cmp(&sa.rows)).then(ka.cmp(kb))
    });
    let room = config.max_promoted.saturating_sub(registry.len());
    chosen.extend(fresh.into_iter().take(room).map(|(k, _)| k.as_str()));
    if chosen.is_empty() {
        return Ok(unchanged());
    }
    let mut columns = Vec::with_capacity(chosen.len());
    let mut mixed = Vec::new();
    for name in &chosen {
        let s = seen[*name];
        let (kind, is_mixed) = s.kind();
        if is_mixed {
            mixed.push(name.to_string());
        }
        columns.push(FileColumn {
            name: name.to_string(),
            kind,
            values: s.rows,
        });
    }
    let batch = with_columns(batch, &columns)?;
    Ok(Shredded {
        batch,
        columns,
        mixed,
    })
}

/// `batch` (shaped like [`logs_schema`]) with `columns` computed from its `attributes` and
/// appended.
pub fn with_columns(
    batch: &RecordBatch,
    columns: &[FileColumn],
) -> Result<RecordBatch, EngineError> {
    if columns.is_empty() {
        return Ok(batch.clone());
    }
    let Some(attrs) = batch
        .column(ATTRIBUTES)
        .as_any()
        .downcast_ref::<StringArray>()
    else {
        return Err(EngineError::Arrow(arrow::error::ArrowError::SchemaError(
            "logs.attributes is not Utf8".into(),
        )));
    };
    let wanted: Vec<(&str, FieldType)> =
        columns.iter().map(|c| (c.name.as_str(), c.kind)).collect();
    let mut all = batch.columns().to_vec();
    all.extend(extract(attrs, &wanted));
    Ok(RecordBatch::try_new(file_schema(columns), all)?)
}

/// The schema of a `logs` file with `columns`: the fixed columns, then the promoted ones.
pub fn file_schema(columns: &[FileColumn]) -> SchemaRef {
    if columns.is_empty() {
        return logs_schema();
    }
    let mut fields: Vec<Arc<Field>> = logs_schema().fields().iter().cloned().collect();
    fields.extend(
        columns
            .iter()
            .map(|c| Arc::new(Field::new(&c.name, c.kind.data_type(), true))),
    );
    Arc::new(Schema::new(fields))
}

/// The columns a file merged from files with `inputs` columns has: every input's column,
/// with the join of their types and the sum of their values.
pub fn union_columns<'a>(inputs: impl IntoIterator<Item = &'a [FileColumn]>) -> Vec<FileColumn> {
    let mut out: Vec<FileColumn> = Vec::new();
    for columns in inputs {
        for c in columns {
            match out.iter_mut().find(|o| o.name == c.name) {
                Some(o) => {
                    o.kind = o.kind.join(c.kind).0;
                    o.values += c.values;
                }
                None => out.push(c.clone()),
            }
        }
    }
    out
}

/// Folds a committed file's columns into the registry: new fields are added (first seen
/// `now_us`), a type disagreement widens the table type to text and counts a conflict, as
/// does a file whose values were mixed.
pub fn register(
    registry: &mut Vec<PromotedField>,
    columns: &[FileColumn],
    mixed: &[String],
    now_us: i64,
) {
    for c in columns {
        let was_mixed = u64::from(mixed.contains(&c.name));
        match registry.iter_mut().find(|f| f.name == c.name) {
            Some(f) => {
                let (kind, conflict) = f.kind.join(c.kind);
                f.kind = kind;
                f.conflicts += u64::from(conflict) + was_mixed;
            }
            None => registry.push(PromotedField {
                name: c.name.clone(),
                kind: c.kind,
                first_seen_us: now_us,
                conflicts: was_mixed,
            }),
        }
    }
}

/// The `logs` schema with the registry's fields appended (nullable, table-level types).
pub fn table_schema(registry: &[PromotedField]) -> SchemaRef {
    if registry.is_empty() {
        return logs_schema();
    }
    let mut fields: Vec<Arc<Field>> = logs_schema().fields().iter().cloned().collect();
    fields.extend(
        registry
            .iter()
            .map(|f| Arc::new(Field::new(&f.name, f.kind.data_type(), true))),
    );
    Arc::new(Schema::new(fields))
}

fn parse_object(text: &str) -> Option<Map<String, Value>> {
    serde_json::from_str::<Map<String, Value>>(text).ok()
}

/// The values of top-level keys of JSON-object text, one array per `(key, type)`: a value
/// that does not convert to the type (or a missing one, JSON `null`, text that is not an
/// object) is NULL; text types hold what `attr()` returns. Each row is parsed once.
pub fn extract(attrs: &StringArray, wanted: &[(&str, FieldType)]) -> Vec<ArrayRef> {
    enum Out {
        Int(Int64Builder),
        Float(Float64Builder),
        Bool(BooleanBuilder),
        Text(StringBuilder),
    }
    let n = attrs.len();
    let mut outs: Vec<Out> = wanted
        .iter()
        .map(|(_, kind)| match kind {
            FieldType::Int64 => Out::Int(Int64Builder::with_capacity(n)),
            FieldType::Float64 => Out::Float(Float64Builder::with_capacity(n)),
            FieldType::Boolean => Out::Bool(BooleanBuilder::with_capacity(n)),
            FieldType::Text | FieldType::Json => Out::Text(StringBuilder::with_capacity(n, n * 8)),
        })
        .collect();
    for i in 0..n {
        let mut map = if attrs.is_valid(i) {
            parse_object(attrs.value(i))
        } else {
            None
        };
        for ((key, _), out) in wanted.iter().zip(outs.iter_mut()) {
            let v = map.as_mut().and_then(|m| m.remove(*key));
            match out {
                Out::Int(b) => b.append_option(v.and_then(|v| v.as_i64())),
                Out::Float(b) => b.append_option(v.and_then(|v| v.as_f64())),
                Out::Bool(b) => b.append_option(v.and_then(|v| v.as_bool())),
                Out::Text(b) => match v {
                    Some(Value::String(s)) => b.append_value(s),
                    Some(Value::Null) | None => b.append_null(),
                    Some(other) => b.append_value(other.to_string()),
                },
            }
        }
    }
    outs.into_iter()
        .map(|o| -> ArrayRef {
            match o {
                Out::Int(mut b) => Arc::new(b.finish()),
                Out::Float(mut b) => Arc::new(b.finish()),
                Out::Bool(mut b) => Arc::new(b.finish()),
                Out::Text(mut b) => Arc::new(b.finish()),
            }
        })
        .collect()
}

/// `logsphere_field_<type>(attributes, key)`: [`extract`] as a function, so scans can
/// compute a promoted column for rows stored without it (hot rows, older files).
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct FieldExtract {
    kind: FieldType,
    name: String,
    signature: Signature,
}

impl FieldExtract {
    /// The function producing columns of type `kind`.
    pub fn new(kind: FieldType) -> Self {
        Self {
            kind,
            name: match kind {
                FieldType::Int64 => "logsphere_field_int64",
                FieldType::Float64 => "logsphere_field_float64",
                FieldType::Boolean => "logsphere_field_boolean",
                FieldType::Text => "logsphere_field_text",
                FieldType::Json => "logsphere_field_json",
            }
            .to_string(),
            signature: Signature::exact(
                vec![DataType::Utf8, DataType::Utf8],
                Volatility::Immutable,
            ),
        }
    }
}

impl ScalarUDFImpl for FieldExtract {
    fn name(&self) -> &str {
        &self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _: &[DataType]) -> DfResult<DataType> {
        Ok(self.kind.data_type())
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let [json, key] = args.args.as_slice() else {
            return exec_err!("{} takes attributes and a key", self.name);
        };
        let ColumnarValue::Scalar(ScalarValue::Utf8(Some(key))) = key else {
            return exec_err!("{}: the key must be a text literal", self.name);
        };
        let json = json.to_array(args.number_rows)?;
        let Some(json) = json.as_any().downcast_ref::<StringArray>() else {
            return exec_err!("{}: attributes must be text", self.name);
        };
        let mut out = extract(json, &[(key.as_str(), self.kind)]);
        match out.pop() {
            Some(a) => Ok(ColumnarValue::Array(a)),
            None => exec_err!("{}: no output", self.name),
        }
    }
}

/// The `promoted_fields` table: the registry, with what the live cold files hold.
pub fn promoted_fields_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("name", DataType::Utf8, false),
        Field::new("type", DataType::Utf8, false),
        Field::new("first_seen", crate::model::ts_type(), false),
        Field::new("files", DataType::Int64, false),
        Field::new("rows", DataType::Int64, false),
        Field::new("conflicts", DataType::Int64, false),
    ]))
}

/// The `promoted_fields` rows of `manifest`: `files` and `rows` count the live cold files
/// with the column and their non-null values in it.
pub fn promoted_fields_batch(
    manifest: &crate::catalog::Manifest,
) -> Result<RecordBatch, arrow::error::ArrowError> {
    use arrow::array::{Int64Array, TimestampMicrosecondArray};
    let fields = &manifest.fields;
    let mut files = vec![0i64; fields.len()];
    let mut rows = vec![0i64; fields.len()];
    for f in &manifest.logs {
        for c in &f.columns {
            if let Some(i) = fields.iter().position(|p| p.name == c.name) {
                files[i] += 1;
                rows[i] += c.values as i64;
            }
        }
    }
    RecordBatch::try_new(
        promoted_fields_schema(),
        vec![
            Arc::new(StringArray::from_iter_values(
                fields.iter().map(|f| f.name.as_str()),
            )),
            Arc::new(StringArray::from_iter_values(
                fields.iter().map(|f| f.kind.sql_name()),
            )),
            Arc::new(
                TimestampMicrosecondArray::from_iter_values(fields.iter().map(|f| f.first_seen_us))
                    .with_timezone(crate::model::UTC),
            ),
            Arc::new(Int64Array::from(files)),
            Arc::new(Int64Array::from(rows)),
            Arc::new(Int64Array::from_iter_values(
                fields.iter().map(|f| f.conflicts as i64),
            )),
        ],
    )
}
