//! Report output: CSV with a header, NDJSON, Parquet or a Markdown table, to a file or
//! standard output.
//!
//! Times are written as RFC 3339 (`2026-11-24T10:00:00.123456+00:00`) in every text format. A
//! file is written beside its final name and renamed into place when the report is
//! complete, so a failed report never leaves a half-written file.

use std::fs::File;
use std::io::{BufWriter, IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, SchemaRef};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

/// The output format of `logsphere report`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Comma-separated values with a header line.
    Csv,
    /// One JSON object per row (NDJSON); NULLs are written as `null`.
    Json,
    /// A Parquet file (zstd), with the result's Arrow types.
    Parquet,
    /// A Markdown table, numbers right-aligned.
    Markdown,
}

impl Format {
    /// The format a file name suggests (`.csv`, `.json`/`.ndjson`/`.jsonl`, `.parquet`,
    /// `.md`).
    pub fn from_extension(path: &Path) -> Option<Self> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        Some(match ext.as_str() {
            "csv" => Self::Csv,
            "json" | "ndjson" | "jsonl" => Self::Json,
            "parquet" | "pq" => Self::Parquet,
            "md" | "markdown" => Self::Markdown,
            _ => return None,
        })
    }
}

const TIME_FORMAT: &str = "%Y-%m-%dT%H:%M:%S%.f%:z";
const NAIVE_TIME_FORMAT: &str = "%Y-%m-%dT%H:%M:%S%.f";

fn format_options() -> FormatOptions<'static> {
    FormatOptions::default()
        .with_timestamp_tz_format(Some(TIME_FORMAT))
        .with_timestamp_format(Some(NAIVE_TIME_FORMAT))
}

/// Where the rows go: a temporary file renamed to `--out` at the end, or standard output.
pub struct Destination {
    writer: Box<dyn Write + Send>,
    file: Option<(PathBuf, PathBuf)>,
}

impl Destination {
    /// Opens `out` (or standard output) for `format`.
    pub fn open(out: Option<&Path>, format: Format) -> anyhow::Result<Self> {
        match out {
            Some(path) if path.as_os_str() != "-" => {
                let name = path
                    .file_name()
                    .with_context(|| format!("--out {} names no file", path.display()))?;
                let dir = path
                    .parent()
                    .filter(|d| !d.as_os_str().is_empty())
                    .unwrap_or(Path::new("."));
                let tmp = dir.join(format!(
                    ".{}.{}.tmp",
                    name.to_string_lossy(),
                    std::process::id()
                ));
                let f = File::create(&tmp)
                    .with_context(|| format!("cannot create the output file {}", path.display()))?;
                Ok(Self {
                    writer: Box::new(BufWriter::with_capacity(1 << 20, f)),
                    file: Some((tmp, path.to_path_buf())),
                })
            }
            _ => {
                if format == Format::Parquet && std::io::stdout().is_terminal() {
                    bail!(
                        "Parquet is binary and standard output is a terminal: give --out FILE \
                         or redirect the output"
                    );
                }
                Ok(Self {
                    writer: Box::new(BufWriter::with_capacity(1 << 16, std::io::stdout())),
                    file: None,
                })
            }
        }
    }

    /// The output's name for messages.
    pub fn name(&self) -> String {
        match &self.file {
            Some((_, path)) => path.display().to_string(),
            None => "standard output".into(),
        }
    }

    /// Flushes and, for a file, renames it into place.
    fn commit(mut self) -> anyhow::Result<()> {
        self.writer.flush().context("cannot write the output")?;
        if let Some((tmp, path)) = self.file.take() {
            std::fs::rename(&tmp, &path).with_context(|| {
                format!("cannot rename {} to {}", tmp.display(), path.display())
            })?;
        }
        Ok(())
    }
}

impl Drop for Destination {
    fn drop(&mut self) {
        // Not committed: the report failed, leave no partial file behind.
        if let Some((tmp, _)) = self.file.take() {
            let _ = std::fs::remove_file(tmp);
        }
    }
}

impl Write for Destination {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.writer.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.writer.flush()
    }
}

/// Writes batches in one format.
pub enum Sink {
    Csv(arrow::csv::Writer<Destination>),
    Json(arrow::json::Writer<Destination, arrow::json::writer::LineDelimited>),
    Parquet(ArrowWriter<Destination>),
    Markdown(Markdown),
}

impl Sink {
    /// Starts the output: the CSV header or the Markdown table head are written even when
    /// no row follows.
    pub fn new(format: Format, schema: SchemaRef, dest: Destination) -> anyhow::Result<Self> {
        Ok(match format {
            Format::Csv => {
                let mut w = arrow::csv::WriterBuilder::new()
                    .with_header(true)
                    .with_timestamp_tz_format(TIME_FORMAT.into())
                    .with_timestamp_format(NAIVE_TIME_FORMAT.into())
                    .build(dest);
                w.write(&RecordBatch::new_empty(schema))
                    .context("cannot write the CSV header")?;
                Self::Csv(w)
            }
            Format::Json => Self::Json(
                arrow::json::WriterBuilder::new()
                    .with_explicit_nulls(true)
                    .with_timestamp_tz_format(TIME_FORMAT.into())
                    .with_timestamp_format(NAIVE_TIME_FORMAT.into())
                    .build::<_, arrow::json::writer::LineDelimited>(dest),
            ),
            Format::Parquet => {
                let props = WriterProperties::builder()
                    .set_compression(Compression::ZSTD(ZstdLevel::try_new(3)?))
                    .build();
                Self::Parquet(
                    ArrowWriter::try_new(dest, schema, Some(props))
                        .context("cannot start the Parquet output")?,
                )
            }
            Format::Markdown => Self::Markdown(Markdown::new(&schema, dest)?),
        })
    }

    /// Writes one batch.
    pub fn write(&mut self, batch: &RecordBatch) -> anyhow::Result<()> {
        match self {
            Self::Csv(w) => w.write(batch)?,
            Self::Json(w) => w.write(batch)?,
            Self::Parquet(w) => w.write(batch)?,
            Self::Markdown(w) => w.write(batch)?,
        }
        Ok(())
    }

    /// Completes the output (Parquet footer, JSON end) and moves a file into place.
    pub fn finish(self) -> anyhow::Result<()> {
        let dest = match self {
            Self::Csv(w) => w.into_inner(),
            Self::Json(mut w) => {
                w.finish()?;
                w.into_inner()
            }
            Self::Parquet(w) => w.into_inner().context("cannot finish the Parquet output")?,
            Self::Markdown(w) => w.dest,
        };
        dest.commit()
    }
}

/// A Markdown (GitHub) table: the head when created, a line per row.
pub struct Markdown {
    dest: Destination,
}

impl Markdown {
    fn new(schema: &SchemaRef, mut dest: Destination) -> anyhow::Result<Self> {
        let names: Vec<String> = schema.fields().iter().map(|f| cell(f.name())).collect();
        let rules: Vec<&str> = schema
            .fields()
            .iter()
            .map(|f| {
                if numeric(f.data_type()) {
                    "---:"
                } else {
                    "---"
                }
            })
            .collect();
        writeln!(dest, "| {} |", names.join(" | "))?;
        writeln!(dest, "| {} |", rules.join(" | "))?;
        Ok(Self { dest })
    }

    fn write(&mut self, batch: &RecordBatch) -> anyhow::Result<()> {
        let options = format_options();
        let formatters = batch
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &options))
            .collect::<Result<Vec<_>, _>>()?;
        for row in 0..batch.num_rows() {
            let cells: Vec<String> = formatters
                .iter()
                .map(|f| cell(&f.value(row).to_string()))
                .collect();
            writeln!(self.dest, "| {} |", cells.join(" | "))?;
        }
        Ok(())
    }
}

fn numeric(t: &DataType) -> bool {
    t.is_numeric()
}

/// A value as a Markdown table cell: `\`, `|`, `<`, `>`, `*` and `` ` `` backslash-escaped
/// (so `<uuid>` shows as text, not as an HTML tag), line breaks as `<br>`.
fn cell(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' | '|' | '<' | '>' | '*' | '`' => {
                out.push('\\');
                out.push(c);
            }
            '\r' if chars.peek() == Some(&'\n') => {}
            '\n' | '\r' => out.push_str("<br>"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_follow_the_file_name() {
        assert_eq!(
            Format::from_extension(Path::new("r.CSV")),
            Some(Format::Csv)
        );
        assert_eq!(
            Format::from_extension(Path::new("a/r.ndjson")),
            Some(Format::Json)
        );
        assert_eq!(
            Format::from_extension(Path::new("r.parquet")),
            Some(Format::Parquet)
        );
        assert_eq!(
            Format::from_extension(Path::new("r.md")),
            Some(Format::Markdown)
        );
        assert_eq!(Format::from_extension(Path::new("r")), None);
    }

    #[test]
    fn markdown_cells_are_escaped() {
        assert_eq!(cell("a|b\nc\\d"), "a\\|b<br>c\\\\d");
        assert_eq!(cell("user <num> *x*\r\n"), "user \\<num\\> \\*x\\*<br>");
    }
}
