//! # logsphere-udfs
//!
//! Log functions for DataFusion, registered in every LogSphere session:
//!
//! - `attr(attributes, key)`: the field `key` of a JSON-object text column, as text
//!   (strings unquoted, other values as JSON); NULL when absent or not JSON.
//! - `level_rank(log_level)`: 0 for TRACE … 5 for CRITICAL, so `level_rank(log_level) >= 3`
//!   means "WARN or worse"; NULL for anything else.
//! - `to_timestamp(text, template)` and `to_char(timestamp, template)` with PostgreSQL
//!   templates (`YYYY-MM-DD HH24:MI:SS.US`), DataFusion's chrono formats otherwise (see
//!   [`pg_datetime`]).
//! - `log_template(message)`: the message with UUIDs, IP addresses, hex ids and numbers
//!   masked (`<uuid>`, `<ip>`, `<hex>`, `<num>`), for grouping messages that differ only
//!   in their values (see [`template`]).
//! - `length(bytea)` / `octet_length(bytea)`: bytes, as in PostgreSQL (text unchanged;
//!   see [`bytes`]).
//! - `date_part('second', t)` and `EXTRACT(second FROM t)` (and `milliseconds`) with the
//!   fraction of the second, as PostgreSQL gives them (see [`date_part`]; `EXTRACT` needs
//!   [`date_part::ExtractPlanner`] first among the session's planners).
//! - `TUMBLE(table, time_col, size [, offset])` and `HOP(table, time_col, slide, size
//!   [, offset])`: window table functions adding `window_start` and `window_end`
//!   (see [`window`]); registered by [`register_window_functions`].
//!
//! ```
//! # async fn demo() -> datafusion::error::Result<()> {
//! let ctx = datafusion::prelude::SessionContext::new();
//! logsphere_udfs::register_all(&ctx);
//! let df = ctx.sql(r#"SELECT attr('{"user":"ann"}', 'user'), level_rank('ERROR')"#).await?;
//! # Ok(()) }
//! ```

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, Int32Array, StringArray, StringBuilder};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::DataType;
use datafusion::common::{Result, exec_err};
use datafusion::logical_expr::{ColumnarValue, ScalarUDF, Volatility, create_udf};
use datafusion::prelude::SessionContext;

pub mod bytes;
pub mod date_part;
pub mod pg_datetime;
pub mod template;
pub mod window;

pub use window::register_window_functions;

/// Registers every LogSphere function in `ctx`, the window table functions included.
pub fn register_all(ctx: &SessionContext) {
    for udf in all() {
        ctx.register_udf(udf);
    }
    register_window_functions(ctx);
}

/// Every LogSphere scalar function.
pub fn all() -> Vec<ScalarUDF> {
    vec![
        create_udf(
            "attr",
            vec![DataType::Utf8, DataType::Utf8],
            DataType::Utf8,
            Volatility::Immutable,
            Arc::new(attr),
        ),
        create_udf(
            "level_rank",
            vec![DataType::Utf8],
            DataType::Int32,
            Volatility::Immutable,
            Arc::new(level_rank),
        ),
        template::udf(),
        ScalarUDF::new_from_impl(pg_datetime::ToTimestamp::new()),
        ScalarUDF::new_from_impl(pg_datetime::ToChar::new()),
        ScalarUDF::new_from_impl(bytes::ByteAwareLength::length()),
        ScalarUDF::new_from_impl(bytes::ByteAwareLength::octet_length()),
        ScalarUDF::new_from_impl(date_part::DatePart::new()),
    ]
}

fn strings(arg: &ColumnarValue, rows: usize) -> Result<ArrayRef> {
    let a = arg.to_array(rows)?;
    Ok(cast(&a, &DataType::Utf8)?)
}

fn rows_of(args: &[ColumnarValue]) -> usize {
    args.iter()
        .find_map(|a| match a {
            ColumnarValue::Array(a) => Some(a.len()),
            ColumnarValue::Scalar(_) => None,
        })
        .unwrap_or(1)
}

fn attr(args: &[ColumnarValue]) -> Result<ColumnarValue> {
    let [json, key] = args else {
        return exec_err!("attr(attributes, key) takes two arguments");
    };
    let rows = rows_of(args);
    let json = strings(json, rows)?;
    let key = strings(key, rows)?;
    let (Some(json), Some(key)) = (
        json.as_any().downcast_ref::<StringArray>(),
        key.as_any().downcast_ref::<StringArray>(),
    ) else {
        return exec_err!("attr: arguments must be text");
    };
    let mut out = StringBuilder::with_capacity(rows, rows * 8);
    for i in 0..rows {
        if json.is_null(i) || key.is_null(i) {
            out.append_null();
            continue;
        }
        let value =
            serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(json.value(i))
                .ok()
                .and_then(|mut m| m.remove(key.value(i)));
        match value {
            Some(serde_json::Value::String(s)) => out.append_value(s),
            Some(serde_json::Value::Null) | None => out.append_null(),
            Some(other) => out.append_value(other.to_string()),
        }
    }
    Ok(ColumnarValue::Array(Arc::new(out.finish())))
}

fn level_rank(args: &[ColumnarValue]) -> Result<ColumnarValue> {
    let [level] = args else {
        return exec_err!("level_rank(log_level) takes one argument");
    };
    let rows = rows_of(args);
    let level = strings(level, rows)?;
    let Some(level) = level.as_any().downcast_ref::<StringArray>() else {
        return exec_err!("level_rank: argument must be text");
    };
    let ranks: Int32Array = level
        .iter()
        .map(|l| match l?.to_ascii_uppercase().as_str() {
            "TRACE" => Some(0),
            "DEBUG" => Some(1),
            "INFO" => Some(2),
            "WARN" | "WARNING" => Some(3),
            "ERROR" => Some(4),
            "CRITICAL" | "FATAL" => Some(5),
            _ => None,
        })
        .collect();
    Ok(ColumnarValue::Array(Arc::new(ranks)))
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::util::pretty::pretty_format_batches;

    use super::*;

    #[tokio::test]
    async fn functions_answer_in_sql() -> Result<()> {
        let ctx = SessionContext::new();
        register_all(&ctx);
        let batches = ctx
            .sql(
                r#"SELECT attr('{"user":"ann","n":3}', 'user') AS u, attr('{"n":3}', 'n') AS n,
                           attr('nope', 'n') AS bad, level_rank('error') AS r, level_rank('x') AS x,
                           log_template('retry 3 of 10') AS t"#,
            )
            .await?
            .collect()
            .await?;
        let text = pretty_format_batches(&batches)?.to_string();
        assert!(
            text.contains("| ann | 3 |     | 4 |   | retry <num> of <num> |"),
            "{text}"
        );
        Ok(())
    }
}
