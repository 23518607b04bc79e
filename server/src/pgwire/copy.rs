//! `COPY (SELECT …) TO STDOUT` and `COPY table [(columns)] TO STDOUT`, in text or CSV:
//! how psql's `\copy … TO 'file'` and export tools read a result. The query is planned like
//! any other (read-only rules included); its rows are encoded as text with the session's
//! formats and sent as CopyData. `COPY … FROM` and COPY to a server file or program are
//! refused.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use datafusion::sql::sqlparser::ast::{
    CopyLegacyCsvOption, CopyLegacyOption, CopyOption, CopySource, CopyTarget, Statement,
};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::parser::Parser;
use futures::StreamExt;
use pgwire::api::portal::Format;
use pgwire::api::results::{CopyResponse, Response, SendableRowStream};
use pgwire::error::PgWireResult;
use pgwire::messages::copy::CopyData;
use pgwire::messages::data::DataRow;

use super::errors::{self, sqlstate, user_error};
use super::query::PlannedQuery;
use super::session::Session;

/// How the rows are written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CopyFormat {
    csv: bool,
    header: bool,
    delimiter: char,
    null: String,
    quote: char,
    escape: char,
}

impl Default for CopyFormat {
    /// PostgreSQL's text format: tab-separated, `\N` for NULL, no header.
    fn default() -> Self {
        Self {
            csv: false,
            header: false,
            delimiter: '\t',
            null: "\\N".to_owned(),
            quote: '"',
            escape: '"',
        }
    }
}

/// A `COPY … TO STDOUT` ready to run.
#[derive(Debug, Clone)]
pub(crate) struct CopyOut {
    pub(crate) query: PlannedQuery,
    format: CopyFormat,
}

/// For a COPY statement: the query to run and how to write it, or the reason it is
/// refused. `None` for any other statement.
pub(crate) fn classify(statement: &Statement) -> Option<PgWireResult<(Statement, CopyFormat)>> {
    let Statement::Copy {
        source,
        to,
        target,
        options,
        legacy_options,
        ..
    } = statement
    else {
        return None;
    };
    Some(classify_copy(source, *to, target, options, legacy_options))
}

fn classify_copy(
    source: &CopySource,
    to: bool,
    target: &CopyTarget,
    options: &[CopyOption],
    legacy_options: &[CopyLegacyOption],
) -> PgWireResult<(Statement, CopyFormat)> {
    if !to {
        return Err(errors::read_only("COPY … FROM"));
    }
    match target {
        CopyTarget::Stdout => {}
        CopyTarget::File { .. } | CopyTarget::Program { .. } | CopyTarget::Stdin => {
            let mut info = pgwire::error::ErrorInfo::new(
                "ERROR".to_owned(),
                sqlstate::INSUFFICIENT_PRIVILEGE.to_owned(),
                format!(
                    "COPY TO {target} is not allowed: LogSphere never writes files or runs \
                     programs for a client"
                ),
            );
            info.hint = Some(
                "use COPY … TO STDOUT; psql's \\copy … TO 'file' writes the file on the client"
                    .to_owned(),
            );
            return Err(pgwire::error::PgWireError::UserError(Box::new(info)));
        }
    }
    let format = copy_format(options, legacy_options)?;
    let query = match source {
        CopySource::Query(query) => Statement::Query(query.clone()),
        CopySource::Table {
            table_name,
            columns,
        } => {
            let list = if columns.is_empty() {
                "*".to_owned()
            } else {
                columns
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let sql = format!("SELECT {list} FROM {table_name}");
            let mut parsed = Parser::parse_sql(&PostgreSqlDialect {}, &sql)
                .map_err(|e| errors::syntax_error(&e, &sql))?;
            if parsed.len() != 1 {
                return Err(user_error(
                    sqlstate::SYNTAX_ERROR,
                    format!("COPY cannot read table {table_name}"),
                ));
            }
            parsed.remove(0)
        }
    };
    Ok((query, format))
}

fn not_supported(what: impl std::fmt::Display) -> pgwire::error::PgWireError {
    user_error(
        sqlstate::FEATURE_NOT_SUPPORTED,
        format!("COPY option {what} is not supported; LogSphere writes FORMAT text or csv"),
    )
}

fn copy_format(
    options: &[CopyOption],
    legacy_options: &[CopyLegacyOption],
) -> PgWireResult<CopyFormat> {
    let mut csv = false;
    let mut header = false;
    let mut delimiter = None;
    let mut null = None;
    let mut quote = '"';
    let mut escape = None;
    for option in options {
        match option {
            CopyOption::Format(name) => match name.value.to_ascii_lowercase().as_str() {
                "text" => csv = false,
                "csv" => csv = true,
                other => return Err(not_supported(format!("FORMAT {other}"))),
            },
            CopyOption::Header(h) => header = *h,
            CopyOption::Delimiter(c) => delimiter = Some(*c),
            CopyOption::Null(s) => null = Some(s.clone()),
            CopyOption::Quote(c) => quote = *c,
            CopyOption::Escape(c) => escape = Some(*c),
            CopyOption::Encoding(e) if e.eq_ignore_ascii_case("utf8") => {}
            other => return Err(not_supported(other)),
        }
    }
    for option in legacy_options {
        match option {
            CopyLegacyOption::Csv(csv_options) => {
                csv = true;
                for o in csv_options {
                    match o {
                        CopyLegacyCsvOption::Header => header = true,
                        CopyLegacyCsvOption::Quote(c) => quote = *c,
                        CopyLegacyCsvOption::Escape(c) => escape = Some(*c),
                        other => return Err(not_supported(other)),
                    }
                }
            }
            CopyLegacyOption::Header => header = true,
            CopyLegacyOption::Delimiter(c) => delimiter = Some(*c),
            CopyLegacyOption::Null(s) => null = Some(s.clone()),
            other => return Err(not_supported(other)),
        }
    }
    let delimiter = delimiter.unwrap_or(if csv { ',' } else { '\t' });
    if matches!(delimiter, '\r' | '\n' | '\\') || (csv && delimiter == quote) {
        return Err(user_error(
            sqlstate::INVALID_PARAMETER_VALUE,
            format!("COPY delimiter {delimiter:?} cannot be used"),
        ));
    }
    Ok(CopyFormat {
        csv,
        header,
        delimiter,
        null: null.unwrap_or_else(|| if csv { String::new() } else { "\\N".to_owned() }),
        quote,
        escape: escape.unwrap_or(quote),
    })
}

impl CopyOut {
    /// A COPY of `query`'s rows in `format`.
    pub(crate) fn new(query: PlannedQuery, format: CopyFormat) -> Self {
        Self { query, format }
    }

    /// Runs the query and streams its rows as CopyData, one message a row (the header
    /// line, if any, goes with the first row so that the `COPY n` count is the row count).
    pub(crate) async fn execute(&self, session: &Session) -> PgWireResult<Response> {
        let response = self
            .query
            .execute(session, None, &Format::UnifiedText)
            .await?;
        let Response::Query(rows) = response else {
            return Err(user_error(
                sqlstate::INTERNAL_ERROR,
                "COPY expected rows from its query",
            ));
        };
        let fields = rows.row_schema();
        let columns = fields.len();
        let format = self.format.clone();
        let header = format
            .header
            .then(|| format.line(fields.iter().map(|f| Some(f.name().as_bytes()))));
        let data = CopyRows {
            rows: rows.data_rows,
            format,
            header,
            done: false,
        };
        Ok(Response::CopyOut(CopyResponse::new(0, columns, data)))
    }
}

/// The text values of an encoded DataRow (`None` for NULL).
fn text_fields(row: &DataRow) -> Vec<Option<&[u8]>> {
    let mut fields = Vec::with_capacity(row.field_count.max(0) as usize);
    let mut data: &[u8] = &row.data;
    for _ in 0..row.field_count {
        if data.remaining() < 4 {
            break;
        }
        let len = data.get_i32();
        if len < 0 {
            fields.push(None);
            continue;
        }
        let len = (len as usize).min(data.len());
        fields.push(Some(&data[..len]));
        data = &data[len..];
    }
    fields
}

impl CopyFormat {
    /// One line of output, newline included.
    fn line<'a>(&self, values: impl Iterator<Item = Option<&'a [u8]>>) -> Vec<u8> {
        let mut out = Vec::new();
        let mut delimiter = [0u8; 4];
        let delimiter = self.delimiter.encode_utf8(&mut delimiter).as_bytes();
        for (i, value) in values.enumerate() {
            if i > 0 {
                out.extend_from_slice(delimiter);
            }
            match value {
                None => out.extend_from_slice(self.null.as_bytes()),
                Some(v) if self.csv => self.csv_value(&mut out, v),
                Some(v) => self.text_value(&mut out, v),
            }
        }
        out.push(b'\n');
        out
    }

    /// Text format: backslash escapes for the delimiter, backslash and line breaks.
    fn text_value(&self, out: &mut Vec<u8>, value: &[u8]) {
        let delimiter = u8::try_from(self.delimiter).ok();
        for &b in value {
            match b {
                b'\\' => out.extend_from_slice(b"\\\\"),
                b'\n' => out.extend_from_slice(b"\\n"),
                b'\r' => out.extend_from_slice(b"\\r"),
                b'\t' if delimiter == Some(b'\t') => out.extend_from_slice(b"\\t"),
                b if Some(b) == delimiter => {
                    out.push(b'\\');
                    out.push(b);
                }
                b => out.push(b),
            }
        }
    }

    /// CSV: quoted when it holds the delimiter, the quote, a line break, or would read back
    /// as NULL (the empty string, or the NULL marker).
    fn csv_value(&self, out: &mut Vec<u8>, value: &[u8]) {
        let text = String::from_utf8_lossy(value);
        let needs_quotes = text.is_empty()
            || text == self.null
            || text
                .chars()
                .any(|c| c == self.delimiter || c == self.quote || c == '\n' || c == '\r');
        if !needs_quotes {
            out.extend_from_slice(value);
            return;
        }
        let mut quoted = String::with_capacity(text.len() + 2);
        quoted.push(self.quote);
        for c in text.chars() {
            if c == self.quote || c == self.escape {
                quoted.push(self.escape);
            }
            quoted.push(c);
        }
        quoted.push(self.quote);
        out.extend_from_slice(quoted.as_bytes());
    }
}

/// Encoded rows as CopyData lines, the header in front of the first (or alone when there
/// are no rows).
struct CopyRows {
    rows: SendableRowStream,
    format: CopyFormat,
    header: Option<Vec<u8>>,
    done: bool,
}

impl futures::Stream for CopyRows {
    type Item = PgWireResult<CopyData>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        let this = &mut *self;
        match this.rows.poll_next_unpin(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(row))) => {
                let mut line = this.header.take().unwrap_or_default();
                line.extend_from_slice(&this.format.line(text_fields(&row).into_iter()));
                Poll::Ready(Some(Ok(CopyData::new(Bytes::from(line)))))
            }
            Poll::Ready(Some(Err(e))) => {
                this.done = true;
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                this.done = true;
                Poll::Ready(
                    this.header
                        .take()
                        .map(|h| Ok(CopyData::new(Bytes::from(h)))),
                )
            }
        }
    }
}

#[cfg(test)]
mod tests;
