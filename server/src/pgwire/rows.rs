//! DataFusion results as PostgreSQL rows: the RowDescription (with PostgreSQL's column names,
//! see `column_names`) and the DataRows, encoded by arrow-pg with the session's formats.

use std::sync::Arc;

use arrow_pg::datatypes::{arrow_schema_to_pg_fields, encode_recordbatch};
use bytes::{Buf, BufMut, BytesMut};
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::{DataType, Schema};
use futures::StreamExt;
use pgwire::api::Type;
use pgwire::api::portal::Format;
use pgwire::api::results::{FieldFormat, FieldInfo, QueryResponse, Response};
use pgwire::error::PgWireResult;
use pgwire::messages::data::DataRow;
use pgwire::types::format::FormatOptions;

use super::errors;
use super::executor::Execution;
use super::session::{Session, lock};

/// Streams a DataFrame's rows in `format`, with the session's date and number formats.
pub(crate) async fn encode_rows(
    session: &Session,
    df: datafusion::dataframe::DataFrame,
    format: &Format,
    tag: &str,
) -> PgWireResult<Response> {
    encode_named_rows(session, Execution::DataFrame(df), format, tag, &[]).await
}

/// [`encode_rows`], naming column `i` `names[i]` where that is `Some`.
pub(crate) async fn encode_named_rows(
    session: &Session,
    execution: Execution,
    format: &Format,
    tag: &str,
    names: &[Option<String>],
) -> PgWireResult<Response> {
    let format_options = Arc::new(lock(&session.vars).format_options());
    let fields = Arc::new(pg_fields(
        &execution.schema(),
        format,
        Some(format_options),
        names,
    )?);
    let batches = super::executor::execute(execution)
        .await
        .map_err(|e| errors::datafusion_error(&e))?;
    let row_fields = Arc::clone(&fields);
    let time_zone = session_time_zone(session);
    let rows = batches
        .map(move |batch| {
            let rows: Box<dyn Iterator<Item = PgWireResult<_>> + Send + Sync> = match batch {
                Ok(batch) => encode_batch(&row_fields, batch, time_zone.as_ref()),
                Err(e) => Box::new(std::iter::once(Err(errors::datafusion_error(&e)))),
            };
            futures::stream::iter(rows)
        })
        .flatten();
    // Ends the rows with 57014 on CancelRequest or statement_timeout.
    let rows = session.backend.control.guard(Box::pin(rows));
    let mut response = QueryResponse::new(fields, rows);
    response.set_command_tag(tag);
    Ok(Response::Query(response))
}

/// Encodes `batch` as DataRows of `fields`: `timestamptz` in the session's zone, `float8`
/// text as PostgreSQL writes it.
pub(crate) fn encode_batch(
    fields: &Arc<Vec<FieldInfo>>,
    batch: RecordBatch,
    time_zone: Option<&Arc<str>>,
) -> Box<dyn Iterator<Item = PgWireResult<DataRow>> + Send + Sync> {
    let rows = encode_recordbatch(Arc::clone(fields), in_time_zone(batch, time_zone));
    let floats: Vec<usize> = fields
        .iter()
        .enumerate()
        .filter(|(_, f)| f.format() == FieldFormat::Text && *f.datatype() == Type::FLOAT8)
        .map(|(i, _)| i)
        .collect();
    if floats.is_empty() {
        return rows;
    }
    let shortest = fields
        .first()
        .is_some_and(|f| f.format_options().extra_float_digits >= 1);
    Box::new(rows.map(move |row| row.map(|row| float8_text(row, &floats, shortest))))
}

/// Rewrites the text `float8` columns `columns` of `row` the way PostgreSQL's `float8out`
/// writes them: pgwire writes Rust's shortest digits (`1764000000.0`, `1e16`, `inf`), where
/// PostgreSQL writes `1764000000`, `1e+16`, `Infinity`. So `floor(extract(epoch FROM t))`
/// (Grafana's time buckets) reads as an integer. `shortest`: `extra_float_digits` ≥ 1, the
/// shortest exact digits (otherwise only the infinities are rewritten).
fn float8_text(row: DataRow, columns: &[usize], shortest: bool) -> DataRow {
    let mut data: &[u8] = &row.data;
    let mut out = BytesMut::with_capacity(row.data.len());
    for i in 0..row.field_count.max(0) as usize {
        if data.len() < 4 {
            // Not a row of `field_count` fields: leave it as it is.
            return row;
        }
        let len = data.get_i32();
        let Ok(n) = usize::try_from(len) else {
            out.put_i32(len);
            continue;
        };
        let Some(value) = data.get(..n) else {
            return row;
        };
        data = &data[n..];
        let rewritten = columns
            .contains(&i)
            .then(|| std::str::from_utf8(value).ok())
            .flatten()
            .and_then(|text| text.parse::<f64>().ok())
            .map(|v| pg_float8(v, shortest, value));
        match rewritten {
            Some(text) => {
                out.put_i32(i32::try_from(text.len()).unwrap_or(i32::MAX));
                out.put_slice(text.as_bytes());
            }
            None => {
                out.put_i32(len);
                out.put_slice(value);
            }
        }
    }
    DataRow::new(out, row.field_count)
}

/// `v` as PostgreSQL's `float8out` writes it. With `shortest`, the shortest digits that read
/// back as `v`, in fixed notation for decimal exponents -4 to 14 and `d.ddde+XX` beyond;
/// otherwise `encoded` (pgwire's rounding for `extra_float_digits` ≤ 0), infinities aside.
fn pg_float8(v: f64, shortest: bool, encoded: &[u8]) -> String {
    if v.is_infinite() {
        return if v > 0.0 { "Infinity" } else { "-Infinity" }.to_owned();
    }
    if v.is_nan() {
        return "NaN".to_owned();
    }
    if !shortest {
        return String::from_utf8_lossy(encoded).into_owned();
    }
    let sign = if v.is_sign_negative() { "-" } else { "" };
    if v == 0.0 {
        return format!("{sign}0");
    }
    // Rust's `{:e}` is the shortest round-trip form too: `1.764e9`.
    let scientific = format!("{:e}", v.abs());
    let (mantissa, exponent) = scientific.split_once('e').unwrap_or((&scientific, "0"));
    let exponent: i32 = exponent.parse().unwrap_or(0);
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let count = i32::try_from(digits.len()).unwrap_or(i32::MAX);
    if (-4..15).contains(&exponent) {
        if exponent < 0 {
            let zeros = "0".repeat(usize::try_from(-exponent - 1).unwrap_or(0));
            format!("{sign}0.{zeros}{digits}")
        } else if exponent + 1 >= count {
            let zeros = "0".repeat(usize::try_from(exponent + 1 - count).unwrap_or(0));
            format!("{sign}{digits}{zeros}")
        } else {
            let (int, frac) = digits.split_at(usize::try_from(exponent + 1).unwrap_or(0));
            format!("{sign}{int}.{frac}")
        }
    } else {
        let (first, rest) = digits.split_at(1);
        let point = if rest.is_empty() { "" } else { "." };
        let exp_sign = if exponent < 0 { '-' } else { '+' };
        format!(
            "{sign}{first}{point}{rest}e{exp_sign}{:02}",
            exponent.unsigned_abs()
        )
    }
}

/// The RowDescription of an Arrow schema, renamed by `names` (see [`super::column_names`]).
pub(crate) fn pg_fields(
    schema: &datafusion::arrow::datatypes::Schema,
    format: &Format,
    options: Option<Arc<FormatOptions>>,
    names: &[Option<String>],
) -> PgWireResult<Vec<FieldInfo>> {
    let fields = arrow_schema_to_pg_fields(schema, format, options)?;
    Ok(fields
        .into_iter()
        .enumerate()
        .map(|(i, field)| match names.get(i) {
            Some(Some(name)) => FieldInfo::new(
                name.clone(),
                field.table_id(),
                field.column_id(),
                field.datatype().clone(),
                field.format(),
            )
            .with_format_options(Arc::clone(field.format_options()))
            .with_type_size(field.type_size())
            .with_type_modifier(field.type_modifier()),
            _ => field,
        })
        .collect())
}

/// The connection's `TimeZone`, if Arrow can use it.
pub(crate) fn session_time_zone(session: &Session) -> Option<Arc<str>> {
    use datafusion::arrow::array::timezone::Tz;
    let tz = lock(&session.vars).get("timezone").map(str::to_owned)?;
    tz.parse::<Tz>().is_ok().then(|| Arc::from(tz.as_str()))
}

/// Relabels `timestamptz` columns in the session's time zone (the same instants; only the
/// text form changes: `2026-01-15 11:00:00+01` in Europe/Paris), as PostgreSQL writes them.
pub(crate) fn in_time_zone(batch: RecordBatch, time_zone: Option<&Arc<str>>) -> RecordBatch {
    let Some(tz) = time_zone else {
        return batch;
    };
    let needs = |dt: &DataType| matches!(dt, DataType::Timestamp(_, Some(t)) if t != tz);
    if !batch.schema().fields().iter().any(|f| needs(f.data_type())) {
        return batch;
    }
    let schema = batch.schema();
    let mut fields = Vec::with_capacity(schema.fields().len());
    let mut columns = Vec::with_capacity(schema.fields().len());
    for (field, column) in schema.fields().iter().zip(batch.columns()) {
        match field.data_type() {
            DataType::Timestamp(unit, Some(t)) if t != tz => {
                let to = DataType::Timestamp(*unit, Some(Arc::clone(tz)));
                match datafusion::arrow::compute::cast(column, &to) {
                    Ok(relabelled) => {
                        fields.push(field.as_ref().clone().with_data_type(to));
                        columns.push(relabelled);
                    }
                    Err(_) => {
                        fields.push(field.as_ref().clone());
                        columns.push(Arc::clone(column));
                    }
                }
            }
            _ => {
                fields.push(field.as_ref().clone());
                columns.push(Arc::clone(column));
            }
        }
    }
    let schema = Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()));
    RecordBatch::try_new(schema, columns).unwrap_or(batch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn float8_text_is_postgresqls() {
        let cases = [
            (1_764_000_000.0, "1764000000"),
            (1_764_000_000.25, "1764000000.25"),
            (1_764_000_000_250.0, "1764000000250"),
            (100.0, "100"),
            (-0.5, "-0.5"),
            (0.1 + 0.2, "0.30000000000000004"),
            (0.0001, "0.0001"),
            (0.000_015, "1.5e-05"),
            (123_456_789_012_345.0, "123456789012345"),
            (1_234_567_890_123_456.0, "1.234567890123456e+15"),
            (1e16, "1e+16"),
            (1e300, "1e+300"),
            (f64::MAX, "1.7976931348623157e+308"),
            (5e-324, "5e-324"),
            (0.0, "0"),
            (-0.0, "-0"),
            (f64::INFINITY, "Infinity"),
            (f64::NEG_INFINITY, "-Infinity"),
            (f64::NAN, "NaN"),
        ];
        for (v, want) in cases {
            assert_eq!(pg_float8(v, true, b"unused"), want, "{v:e}");
        }
        // extra_float_digits <= 0: pgwire's rounded text stays, infinities aside.
        assert_eq!(pg_float8(0.3, false, b"0.3"), "0.3");
        assert_eq!(pg_float8(f64::INFINITY, false, b"inf"), "Infinity");
    }

    #[test]
    fn only_the_float8_columns_of_a_row_are_rewritten() {
        let mut data = BytesMut::new();
        for value in [
            Some(&b"1.0"[..]),
            None,
            Some(&b"1764000000.0"[..]),
            Some(b"x"),
        ] {
            match value {
                Some(v) => {
                    data.put_i32(v.len() as i32);
                    data.put_slice(v);
                }
                None => data.put_i32(-1),
            }
        }
        let row = float8_text(DataRow::new(data, 4), &[1, 2, 3], true);
        let mut want = BytesMut::new();
        want.put_i32(3);
        want.put_slice(b"1.0");
        want.put_i32(-1);
        want.put_i32(10);
        want.put_slice(b"1764000000");
        // Not a number: kept as it is.
        want.put_i32(1);
        want.put_slice(b"x");
        assert_eq!(row, DataRow::new(want, 4));
    }
}
