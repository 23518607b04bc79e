//! DataFusion results as PostgreSQL rows: the RowDescription (with PostgreSQL's column names,
//! see `column_names`) and the DataRows, encoded by arrow-pg with the session's formats.

use std::sync::Arc;

use arrow_pg::datatypes::{arrow_schema_to_pg_fields, encode_recordbatch};
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::{DataType, Schema};
use futures::StreamExt;
use pgwire::api::portal::Format;
use pgwire::api::results::{FieldInfo, QueryResponse, Response};
use pgwire::error::PgWireResult;
use pgwire::types::format::FormatOptions;

use super::errors;
use super::session::{Session, lock};

/// Streams a DataFrame's rows in `format`, with the session's date and number formats.
pub(crate) async fn encode_rows(
    session: &Session,
    df: datafusion::dataframe::DataFrame,
    format: &Format,
    tag: &str,
) -> PgWireResult<Response> {
    encode_named_rows(session, df, format, tag, &[]).await
}

/// [`encode_rows`], naming column `i` `names[i]` where that is `Some`.
pub(crate) async fn encode_named_rows(
    session: &Session,
    df: datafusion::dataframe::DataFrame,
    format: &Format,
    tag: &str,
    names: &[Option<String>],
) -> PgWireResult<Response> {
    let format_options = Arc::new(lock(&session.vars).format_options());
    let fields = Arc::new(pg_fields(
        df.schema().as_arrow(),
        format,
        Some(format_options),
        names,
    )?);
    let batches = super::executor::execute_stream(df)
        .await
        .map_err(|e| errors::datafusion_error(&e))?;
    let row_fields = Arc::clone(&fields);
    let time_zone = session_time_zone(session);
    let rows = batches
        .map(move |batch| {
            let rows: Box<dyn Iterator<Item = PgWireResult<_>> + Send + Sync> = match batch {
                Ok(batch) => encode_recordbatch(
                    Arc::clone(&row_fields),
                    in_time_zone(batch, time_zone.as_ref()),
                ),
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
