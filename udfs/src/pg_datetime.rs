//! PostgreSQL's `to_timestamp(text, template)` and `to_char(timestamp, template)`, laid
//! over DataFusion's functions of the same names.
//!
//! DataFusion's versions take chrono formats (`%Y-%m-%d`); BI tools send PostgreSQL
//! templates (`YYYY-MM-DD HH24:MI:SS.US`). The template decides: one with no `%` that names a
//! PostgreSQL pattern (`YYYY`, `MM`, `HH24`, `MI`, `Mon`, …; see [`is_postgres_template`])
//! is PostgreSQL's, anything else goes to DataFusion's function unchanged, as does
//! `to_timestamp` with one argument. A column of templates is PostgreSQL's if any of its
//! values is.
//!
//! Times are read and written in the session's time zone, as PostgreSQL reads and writes
//! them in its `TimeZone`: the server keeps `datafusion.execution.time_zone` equal to the
//! connection's `TimeZone`, and both functions take it from there (`with_updated_config`).
//! `to_char` writes a `timestamptz` (and a `date`, which PostgreSQL turns into one) as local
//! time in that zone, `TZ` as the zone's abbreviation then (`CEST`, `EST`); a `timestamp`
//! is written as it is, with an empty `TZ`. `to_timestamp` reads a time without `TZ` / `OF`
//! as local time in that zone. Without a configured zone a `timestamptz` keeps its own.

use std::sync::Arc;

use chrono::{DateTime, Duration, NaiveDateTime};
use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, StringArray, StringBuilder, TimestampNanosecondArray,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, TimeUnit, TimestampMicrosecondType};
use datafusion::common::config::ConfigOptions;
use datafusion::common::{DataFusionError, Result, ScalarValue, exec_err};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
};

mod pattern;
mod zone;

pub use pattern::{Pattern, is_postgres_template};
pub use zone::{Zone, ZoneAt};

/// A value that does not match its PostgreSQL template (SQLSTATE 22007,
/// `invalid_datetime_format`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} (template \"{pattern}\")")]
pub struct FormatError {
    /// What was wrong, naming the pattern and the text it met.
    pub message: String,
    /// The whole template.
    pub pattern: String,
}

impl From<FormatError> for DataFusionError {
    fn from(e: FormatError) -> Self {
        DataFusionError::External(Box::new(e))
    }
}

/// `to_timestamp`: PostgreSQL templates here, everything else DataFusion's.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct ToTimestamp {
    builtin: ScalarUDF,
}

/// `to_char`: PostgreSQL templates here, everything else DataFusion's.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct ToChar {
    builtin: ScalarUDF,
    /// The session's time zone (`datafusion.execution.time_zone`).
    zone: Option<Arc<str>>,
}

impl ToTimestamp {
    /// Over DataFusion's `to_timestamp` as configured by default.
    pub fn new() -> Self {
        Self {
            builtin: datafusion::functions::datetime::to_timestamp(&ConfigOptions::default())
                .as_ref()
                .clone(),
        }
    }
}

impl Default for ToTimestamp {
    fn default() -> Self {
        Self::new()
    }
}

impl ToChar {
    /// Over DataFusion's `to_char`.
    pub fn new() -> Self {
        Self {
            builtin: datafusion::functions::datetime::to_char().as_ref().clone(),
            zone: None,
        }
    }
}

impl Default for ToChar {
    fn default() -> Self {
        Self::new()
    }
}

/// Whether the template argument holds a PostgreSQL template.
fn postgres_template(arg: Option<&ColumnarValue>) -> bool {
    match arg {
        Some(ColumnarValue::Scalar(
            ScalarValue::Utf8(Some(t))
            | ScalarValue::LargeUtf8(Some(t))
            | ScalarValue::Utf8View(Some(t)),
        )) => is_postgres_template(t),
        Some(ColumnarValue::Scalar(_)) => false,
        Some(ColumnarValue::Array(a)) => cast(a, &DataType::Utf8)
            .ok()
            .and_then(|a| {
                a.as_string_opt::<i32>()
                    .map(|s| s.iter().flatten().any(is_postgres_template))
            })
            .unwrap_or(false),
        None => false,
    }
}

/// Each row's template; compiled once when it is a constant.
enum Templates {
    One(Option<Pattern>),
    Each(StringArray),
}

impl Templates {
    fn new(arg: &ColumnarValue) -> Result<Self> {
        Ok(match arg {
            ColumnarValue::Scalar(s) => Templates::One(match s.cast_to(&DataType::Utf8)? {
                ScalarValue::Utf8(Some(t)) => Some(Pattern::new(&t)),
                _ => None,
            }),
            ColumnarValue::Array(a) => {
                let strings = cast(a, &DataType::Utf8)?;
                Templates::Each(strings.as_string::<i32>().clone())
            }
        })
    }

    fn get(&self, row: usize) -> Option<Pattern> {
        match self {
            Templates::One(p) => p.clone(),
            Templates::Each(a) if a.is_null(row) => None,
            Templates::Each(a) => Some(Pattern::new(a.value(row))),
        }
    }
}

impl ScalarUDFImpl for ToTimestamp {
    fn name(&self) -> &str {
        "to_timestamp"
    }

    fn signature(&self) -> &Signature {
        self.builtin.signature()
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        self.builtin.return_type(arg_types)
    }

    fn with_updated_config(&self, config: &ConfigOptions) -> Option<ScalarUDF> {
        let builtin = self.builtin.inner().with_updated_config(config)?;
        Some(ScalarUDF::new_from_impl(Self { builtin }))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        if args.args.len() != 2 || !postgres_template(args.args.get(1)) {
            return self.builtin.invoke_with_args(args);
        }
        let zone = match args.return_type() {
            DataType::Timestamp(_, Some(tz)) => Some(parse_zone(tz)?),
            _ => None,
        };
        let rows = args.number_rows;
        let scalar = args
            .args
            .iter()
            .all(|a| matches!(a, ColumnarValue::Scalar(_)));
        let texts = cast(&args.args[0].to_array(rows)?, &DataType::Utf8)?;
        let texts = texts.as_string::<i32>();
        let templates = Templates::new(&args.args[1])?;
        let mut out = Vec::with_capacity(rows);
        for row in 0..rows {
            let (Some(pattern), false) = (templates.get(row), texts.is_null(row)) else {
                out.push(None);
                continue;
            };
            let (local, offset) = pattern.read(texts.value(row))?;
            out.push(Some(instant(local, offset, zone.as_ref(), &pattern)?));
        }
        let array = TimestampNanosecondArray::from(out);
        let array: ArrayRef = Arc::new(match args.return_type() {
            DataType::Timestamp(_, tz) => array.with_timezone_opt(tz.clone()),
            _ => array,
        });
        let array = cast(&array, args.return_type())?;
        if scalar {
            Ok(ColumnarValue::Scalar(ScalarValue::try_from_array(
                &array, 0,
            )?))
        } else {
            Ok(ColumnarValue::Array(array))
        }
    }
}

/// A time zone name, or an error naming it.
fn parse_zone(name: &str) -> Result<Zone> {
    match Zone::parse(name) {
        Some(zone) => Ok(zone),
        None => exec_err!("invalid time zone \"{name}\""),
    }
}

/// Nanoseconds since the epoch of a local time read by `pattern`: at `offset` when the
/// input named one, else in `zone` (UTC when `None`).
fn instant(
    local: NaiveDateTime,
    offset: Option<i32>,
    zone: Option<&Zone>,
    pattern: &Pattern,
) -> Result<i64> {
    let utc = match (offset, zone) {
        (Some(seconds), _) => local.checked_sub_signed(Duration::seconds(i64::from(seconds))),
        (None, Some(zone)) => zone.instant(&local),
        (None, None) => Some(local),
    };
    utc.and_then(|t| t.and_utc().timestamp_nanos_opt())
        .ok_or_else(|| {
            FormatError {
                message: format!("timestamp {local} is out of range"),
                pattern: pattern.template().to_owned(),
            }
            .into()
        })
}

impl ScalarUDFImpl for ToChar {
    fn name(&self) -> &str {
        "to_char"
    }

    fn signature(&self) -> &Signature {
        self.builtin.signature()
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        self.builtin.return_type(arg_types)
    }

    /// DataFusion's aliases (`date_format`): were the built-in left registered under one,
    /// rebuilding the session state could register it over this function again.
    fn aliases(&self) -> &[String] {
        self.builtin.aliases()
    }

    fn with_updated_config(&self, config: &ConfigOptions) -> Option<ScalarUDF> {
        Some(ScalarUDF::new_from_impl(Self {
            builtin: self.builtin.clone(),
            zone: config.execution.time_zone.as_deref().map(Arc::from),
        }))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        if args.args.len() != 2 || !postgres_template(args.args.get(1)) {
            return self.builtin.invoke_with_args(args);
        }
        let rows = args.number_rows;
        let scalar = args
            .args
            .iter()
            .all(|a| matches!(a, ColumnarValue::Scalar(_)));
        let values = args.args[0].to_array(rows)?;
        let session = self.zone.as_deref().and_then(Zone::parse);
        // The zone the values are written in: a timestamptz's and a date's is the session's
        // (a date is its local midnight, as PostgreSQL's date → timestamptz); a timestamp
        // has none.
        let (zone, date) = match values.data_type() {
            DataType::Timestamp(_, Some(tz)) => {
                (Some(session.map_or_else(|| parse_zone(tz), Ok)?), false)
            }
            DataType::Timestamp(_, None) => (None, false),
            DataType::Date32 | DataType::Date64 => (session, true),
            other => {
                return exec_err!(
                    "to_char with a PostgreSQL template takes a date or timestamp, not {other}"
                );
            }
        };
        let unit_zone = match values.data_type() {
            DataType::Timestamp(_, Some(_)) => Some("+00:00".into()),
            _ => None,
        };
        let micros = cast(
            &values,
            &DataType::Timestamp(TimeUnit::Microsecond, unit_zone),
        )?;
        let micros = micros.as_primitive::<TimestampMicrosecondType>();
        let templates = Templates::new(&args.args[1])?;
        let mut out = StringBuilder::with_capacity(rows, rows * 20);
        for row in 0..rows {
            let (Some(pattern), false) = (templates.get(row), micros.is_null(row)) else {
                out.append_null();
                continue;
            };
            let Some(value) = DateTime::from_timestamp_micros(micros.value(row)) else {
                out.append_null();
                continue;
            };
            let value = value.naive_utc();
            let text = match (&zone, date) {
                (Some(zone), false) => {
                    let (local, at) = zone.at(&value);
                    pattern.format(&local, Some(&at))
                }
                (Some(zone), true) => {
                    let at = zone.instant(&value).map(|utc| zone.at(&utc).1);
                    pattern.format(&value, at.as_ref())
                }
                (None, _) => pattern.format(&value, None),
            };
            out.append_value(text);
        }
        let array: ArrayRef = Arc::new(out.finish());
        if scalar {
            Ok(ColumnarValue::Scalar(ScalarValue::try_from_array(
                &array, 0,
            )?))
        } else {
            Ok(ColumnarValue::Array(array))
        }
    }
}

#[cfg(test)]
mod tests;
