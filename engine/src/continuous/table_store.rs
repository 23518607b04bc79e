//! The tables LogSphere keeps for continuous-query outputs: `INTO t` and `NOTIFY (TABLE t)`
//! (CONTINUOUS_QUERIES.md §5.5). See "INTO and NOTIFY TABLE" in `continuous.md`.
//!
//! A table is a map from an upsert key to its latest row, in memory, and one append-only
//! upsert log on disk, `<data_dir>/tables/<hash of name>.tbl`:
//!
//! ```text
//! file  := "LSTBL1\n" frame*
//! frame := len:u32le crc:u32le payload[len]        crc = CRC-32 of payload
//! payload: an Arrow IPC stream; the first frame holds only the schema (`__key` Binary,
//!          the table's columns, `updated_at`; the table name in the schema metadata),
//!          every later one a batch of upserted rows, the last frame for a key winning.
//! ```
//!
//! Upserts are applied in memory at once (a query sees them) and written out by
//! [`TableStore::sync`], which the owning CQ calls right before it writes its checkpoint:
//! after a crash the log holds at least every row the checkpoint covers, and the WAL
//! replay after the checkpoint upserts the rest again under the same keys. A row equal to
//! the stored one is not written again. When the log holds more than twice as many rows as
//! the table has keys it is rewritten whole (temporary file, fsync, rename), on open or at
//! a sync, so memory and file size stay bounded by the number of distinct keys.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use arrow::array::{ArrayRef, BinaryArray, RecordBatch, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::StreamWriter;
use arrow::row::{OwnedRow, RowConverter, SortField};

use super::alerts::hex_hash;
use super::{CqError, InputError, StorageError};
use crate::catalog::atomic_write;

const MAGIC: &[u8] = b"LSTBL1\n";
const KEY_COLUMN: &str = "__key";
const NAME_METADATA: &str = "logsphere.table";
/// The column every managed table ends with: when the row last changed (wall clock).
pub const UPDATED_AT: &str = "updated_at";
/// Below this many rows in the log, a rewrite is not worth it.
const MIN_COMPACT_ROWS: u64 = 1024;

/// The schema of a managed table for `columns`: every column nullable, then `updated_at`.
pub fn table_schema(columns: &Schema) -> SchemaRef {
    let mut fields: Vec<Field> = columns
        .fields()
        .iter()
        .map(|f| Field::new(f.name(), f.data_type().clone(), true))
        .collect();
    fields.push(Field::new(UPDATED_AT, crate::model::ts_type(), false));
    Arc::new(Schema::new(fields))
}

/// One managed table.
#[derive(Debug)]
struct Table {
    path: PathBuf,
    /// The table's columns as queried (data columns, then `updated_at`).
    schema: SchemaRef,
    /// Encodes the data columns (all but `updated_at`) of one row.
    converter: RowConverter,
    rows: BTreeMap<Vec<u8>, (OwnedRow, i64)>,
    /// Keys changed since the last sync.
    dirty: BTreeSet<Vec<u8>>,
    /// Rows in the log file (every frame since the last rewrite).
    log_rows: u64,
}

fn converter_for(schema: &Schema) -> Result<RowConverter, CqError> {
    let data = &schema.fields()[..schema.fields().len().saturating_sub(1)];
    Ok(RowConverter::new(
        data.iter()
            .map(|f| SortField::new(f.data_type().clone()))
            .collect(),
    )?)
}

fn file_schema(name: &str, schema: &Schema) -> SchemaRef {
    let mut fields = vec![Arc::new(Field::new(KEY_COLUMN, DataType::Binary, false))];
    fields.extend(schema.fields().iter().cloned());
    let metadata = [(NAME_METADATA.to_string(), name.to_string())].into();
    Arc::new(Schema::new_with_metadata(fields, metadata))
}

fn ipc(schema: &SchemaRef, batch: Option<&RecordBatch>) -> Result<Vec<u8>, CqError> {
    let mut out = Vec::new();
    let mut writer = StreamWriter::try_new(&mut out, schema)?;
    if let Some(b) = batch {
        writer.write(b)?;
    }
    writer.finish()?;
    drop(writer);
    Ok(out)
}

fn frame(payload: &[u8], out: &mut Vec<u8>) {
    let mut crc = crc32fast::Hasher::new();
    crc.update(payload);
    out.extend((payload.len() as u32).to_le_bytes());
    out.extend(crc.finalize().to_le_bytes());
    out.extend(payload);
}

/// The valid frames' payloads of a log file, and the byte length they end at.
fn frames(bytes: &[u8]) -> (Vec<&[u8]>, usize) {
    let mut out = Vec::new();
    let mut at = MAGIC.len();
    while let Some(header) = bytes.get(at..at + 8) {
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        let Some(payload) = bytes.get(at + 8..at + 8 + len) else {
            break;
        };
        let mut h = crc32fast::Hasher::new();
        h.update(payload);
        if h.finalize() != crc {
            break;
        }
        out.push(payload);
        at += 8 + len;
    }
    (out, at)
}

impl Table {
    /// The frame of the rows under `keys`, in the file schema.
    fn rows_batch<'a>(
        &self,
        name: &str,
        keys: impl Iterator<Item = &'a Vec<u8>>,
    ) -> Result<RecordBatch, CqError> {
        let (keys, rows): (Vec<&Vec<u8>>, Vec<&(OwnedRow, i64)>) = keys
            .filter_map(|k| self.rows.get(k).map(|r| (k, r)))
            .unzip();
        let mut columns: Vec<ArrayRef> = vec![Arc::new(BinaryArray::from_iter_values(
            keys.iter().map(|k| k.as_slice()),
        ))];
        columns.extend(self.columns(&rows)?);
        Ok(RecordBatch::try_new(
            file_schema(name, &self.schema),
            columns,
        )?)
    }

    fn columns(&self, rows: &[&(OwnedRow, i64)]) -> Result<Vec<ArrayRef>, CqError> {
        let mut columns = self
            .converter
            .convert_rows(rows.iter().map(|(r, _)| r.row()))?;
        columns.push(Arc::new(
            TimestampMicrosecondArray::from_iter_values(rows.iter().map(|(_, t)| *t))
                .with_timezone(crate::model::UTC),
        ));
        Ok(columns)
    }

    /// Applies one frame batch (file schema) read back from the log.
    fn apply_frame(&mut self, batch: &RecordBatch) -> Result<(), CqError> {
        let bad = || StorageError::bad_table_file(&self.path, "malformed upsert frame");
        let keys = batch
            .column(0)
            .as_any()
            .downcast_ref::<BinaryArray>()
            .ok_or_else(bad)?;
        let n = batch.num_columns();
        let updated = batch
            .column(n - 1)
            .as_any()
            .downcast_ref::<TimestampMicrosecondArray>()
            .ok_or_else(bad)?;
        let data = self.converter.convert_columns(&batch.columns()[1..n - 1])?;
        for i in 0..batch.num_rows() {
            self.rows.insert(
                keys.value(i).to_vec(),
                (data.row(i).owned(), updated.value(i)),
            );
        }
        self.log_rows += batch.num_rows() as u64;
        Ok(())
    }

    /// Rewrites the log with one frame per current row set.
    fn rewrite(&mut self, name: &str) -> Result<(), CqError> {
        let schema = file_schema(name, &self.schema);
        let mut bytes = MAGIC.to_vec();
        frame(&ipc(&schema, None)?, &mut bytes);
        if !self.rows.is_empty() {
            let batch = self.rows_batch(name, self.rows.keys())?;
            frame(&ipc(&schema, Some(&batch))?, &mut bytes);
        }
        atomic_write(&self.path, &bytes).map_err(|e| StorageError::write(&self.path, e))?;
        self.log_rows = self.rows.len() as u64;
        self.dirty.clear();
        Ok(())
    }

    fn wants_rewrite(&self) -> bool {
        self.log_rows > MIN_COMPACT_ROWS && self.log_rows > 2 * self.rows.len() as u64
    }
}

/// `schema` as text: an Arrow IPC schema message, hex (how cluster mode stores a table's
/// columns in Cassandra).
pub fn schema_hex(schema: &SchemaRef) -> Result<String, CqError> {
    use std::fmt::Write as _;
    let bytes = ipc(schema, None)?;
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    Ok(out)
}

/// The schema [`schema_hex`] wrote.
pub fn schema_from_hex(text: &str) -> Result<SchemaRef, CqError> {
    let bad = || CqError::Table(format!("a stored table schema is not hex: {text:.40}"));
    if !text.len().is_multiple_of(2) {
        return Err(bad());
    }
    let bytes = (0..text.len())
        .step_by(2)
        .map(|i| {
            text.get(i..i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(bad)
        })
        .collect::<Result<Vec<u8>, CqError>>()?;
    Ok(StreamReader::try_new(bytes.as_slice(), None)?.schema())
}

/// One JSON object per row of `batch` (nulls left out), in row order.
pub fn json_lines(batch: &RecordBatch) -> Result<Vec<String>, CqError> {
    let mut out = Vec::new();
    {
        let mut writer = arrow::json::LineDelimitedWriter::new(&mut out);
        writer.write(batch)?;
        writer.finish()?;
    }
    let text = String::from_utf8(out)
        .map_err(|e| CqError::Table(format!("a table row is not UTF-8 JSON: {e}")))?;
    Ok(text.lines().map(str::to_string).collect())
}

/// The rows `lines` (from [`TableStore::take_shared`]) hold, as a batch of `schema` (the
/// table's columns, `updated_at` last).
pub fn rows_from_json(schema: &SchemaRef, lines: &[String]) -> Result<RecordBatch, CqError> {
    let text = lines.join("\n");
    let reader = arrow::json::ReaderBuilder::new(Arc::clone(schema))
        .with_batch_size(lines.len().max(1))
        .build(std::io::Cursor::new(text.into_bytes()))?;
    let batches = reader.collect::<Result<Vec<_>, _>>()?;
    Ok(arrow::compute::concat_batches(schema, &batches)?)
}

/// Same columns, by name and type in order (nullability aside).
fn same_columns(a: &Schema, b: &Schema) -> bool {
    a.fields().len() == b.fields().len()
        && a.fields()
            .iter()
            .zip(b.fields())
            .all(|(x, y)| x.name() == y.name() && x.data_type() == y.data_type())
}

/// A table's columns as an error message names them: `name type, …`.
pub fn describe(schema: &Schema) -> String {
    schema
        .fields()
        .iter()
        .map(|f| format!("{} {}", f.name(), f.data_type()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Rows queued for sharing: table → upsert key → version.
type Outbox = BTreeMap<String, BTreeMap<Vec<u8>, i64>>;

/// Every managed table of one engine.
#[derive(Debug)]
pub struct TableStore {
    dir: PathBuf,
    tables: Mutex<BTreeMap<String, Table>>,
    /// Cluster mode: the INTO rows changed since they were last shared, per table: key →
    /// version (see [`TableStore::share_changes`]). `None` embedded.
    outbox: Mutex<Option<Outbox>>,
}

/// Rows of one table to share (cluster mode), each as a JSON object of the table's columns.
#[derive(Debug, Clone, PartialEq)]
pub struct SharedRows {
    pub table: String,
    /// (upsert key, row as JSON, version).
    pub rows: Vec<(Vec<u8>, String, i64)>,
}

impl TableStore {
    /// Loads every table under `<data_dir>/tables/`, cutting a torn last frame and
    /// compacting logs that grew past twice their rows.
    pub fn open(data_dir: &Path) -> Result<Self, CqError> {
        let dir = data_dir.join("tables");
        std::fs::create_dir_all(&dir).map_err(|e| StorageError::io(&dir, e))?;
        let mut tables = BTreeMap::new();
        for entry in std::fs::read_dir(&dir).map_err(|e| StorageError::io(&dir, e))? {
            let path = entry.map_err(|e| StorageError::io(&dir, e))?.path();
            if path.extension().is_some_and(|e| e == "tbl") {
                let (name, table) = Self::load(&path)?;
                tables.insert(name, table);
            }
        }
        Ok(Self {
            dir,
            tables: Mutex::new(tables),
            outbox: Mutex::new(None),
        })
    }

    fn outbox(&self) -> MutexGuard<'_, Option<Outbox>> {
        self.outbox.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Cluster mode: from now on, INTO rows that change are also kept for
    /// [`TableStore::take_shared`]. Every row already stored is queued once at version 0, so
    /// a row this node stored but had not shared before a crash still reaches the shared
    /// table (a version 0 write never replaces a newer one).
    pub fn share_changes(&self) {
        let tables = self.lock();
        let mut outbox = self.outbox();
        let queued = outbox.get_or_insert_with(BTreeMap::new);
        for (name, table) in tables.iter() {
            let keys = queued.entry(name.clone()).or_default();
            for key in table.rows.keys() {
                keys.entry(key.clone()).or_insert(0);
            }
        }
    }

    /// Takes the queued changes of every table: each row as it is now, as JSON, with the
    /// highest version it was upserted at.
    pub fn take_shared(&self) -> Result<Vec<SharedRows>, CqError> {
        let queued = match self.outbox().as_mut() {
            Some(q) => std::mem::take(q),
            None => return Ok(Vec::new()),
        };
        let tables = self.lock();
        let mut out = Vec::new();
        for (name, keys) in queued {
            let Some(table) = tables.get(&name) else {
                continue;
            };
            let present: Vec<(&Vec<u8>, i64)> = keys
                .iter()
                .filter(|(k, _)| table.rows.contains_key(*k))
                .map(|(k, v)| (k, *v))
                .collect();
            if present.is_empty() {
                continue;
            }
            let rows: Vec<&(OwnedRow, i64)> = present
                .iter()
                .filter_map(|(k, _)| table.rows.get(*k))
                .collect();
            let batch = RecordBatch::try_new(Arc::clone(&table.schema), table.columns(&rows)?)?;
            let lines = json_lines(&batch)?;
            out.push(SharedRows {
                table: name,
                rows: present
                    .into_iter()
                    .zip(lines)
                    .map(|((k, v), line)| (k.clone(), line, v))
                    .collect(),
            });
        }
        Ok(out)
    }

    /// Puts rows that could not be shared back in the queue (a newer version queued since
    /// wins).
    pub fn requeue(&self, failed: Vec<SharedRows>) {
        let mut outbox = self.outbox();
        let Some(queued) = outbox.as_mut() else {
            return;
        };
        for rows in failed {
            let keys = queued.entry(rows.table).or_default();
            for (key, _, version) in rows.rows {
                let v = keys.entry(key).or_insert(version);
                *v = (*v).max(version);
            }
        }
    }

    fn load(path: &Path) -> Result<(String, Table), CqError> {
        let bytes = std::fs::read(path).map_err(|e| StorageError::io(path, e))?;
        if !bytes.starts_with(MAGIC) {
            return Err(StorageError::bad_table_file(
                path,
                "not a LogSphere table file",
            ));
        }
        let (payloads, end) = frames(&bytes);
        let mut readers = payloads.iter().map(|p| StreamReader::try_new(*p, None));
        let first = readers
            .next()
            .ok_or_else(|| StorageError::bad_table_file(path, "no schema frame"))??;
        let file = first.schema();
        let name = file.metadata().get(NAME_METADATA).cloned().ok_or_else(|| {
            StorageError::bad_table_file(path, "schema frame without a table name")
        })?;
        if file.fields().len() < 2 || file.field(0).name() != KEY_COLUMN {
            return Err(StorageError::bad_table_file(
                path,
                "schema frame without the key column",
            ));
        }
        let schema = Arc::new(Schema::new(file.fields()[1..].to_vec()));
        let mut table = Table {
            path: path.to_path_buf(),
            converter: converter_for(&schema)?,
            schema,
            rows: BTreeMap::new(),
            dirty: BTreeSet::new(),
            log_rows: 0,
        };
        for reader in readers {
            for batch in reader? {
                table.apply_frame(&batch?)?;
            }
        }
        if end < bytes.len() {
            tracing::warn!(table = %name, path = %path.display(), cut_bytes = bytes.len() - end,
                "table log ends in a torn frame; cutting it off");
            table.rewrite(&name)?;
        } else if table.wants_rewrite() {
            table.rewrite(&name)?;
        }
        Ok((name, table))
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Table>> {
        self.tables.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Creates table `name` with `schema` (from [`table_schema`]) if it is missing; an
    /// existing table must have the same columns. Returns whether it was created.
    pub fn ensure(&self, name: &str, schema: &SchemaRef) -> Result<bool, CqError> {
        let mut tables = self.lock();
        if let Some(t) = tables.get(name) {
            if same_columns(&t.schema, schema) {
                return Ok(false);
            }
            return Err(CqError::TableExists(format!(
                "table \"{name}\" exists with columns ({}), but this query writes ({})",
                describe(&t.schema),
                describe(schema)
            )));
        }
        let path = self.dir.join(format!("{}.tbl", hex_hash(&[name])));
        let mut table = Table {
            path,
            converter: converter_for(schema)?,
            schema: Arc::clone(schema),
            rows: BTreeMap::new(),
            dirty: BTreeSet::new(),
            log_rows: 0,
        };
        table.rewrite(name)?;
        tables.insert(name.to_string(), table);
        Ok(true)
    }

    /// Removes table `name` and its file (a CREATE that made it and then failed).
    pub fn remove(&self, name: &str) -> Result<(), CqError> {
        if let Some(t) = self.lock().remove(name) {
            std::fs::remove_file(&t.path).map_err(|e| StorageError::io(&t.path, e))?;
        }
        Ok(())
    }

    /// Upserts `rows` (the table's data columns, without `updated_at`) under `keys`, one
    /// per row; a row equal to the stored one changes nothing.
    pub fn upsert(
        &self,
        name: &str,
        keys: &[Vec<u8>],
        rows: &RecordBatch,
        updated_at: i64,
    ) -> Result<(), CqError> {
        self.upsert_versioned(name, keys, rows, updated_at, None)
    }

    /// [`TableStore::upsert`]; in cluster mode, rows that change are queued for sharing at
    /// `version` (when given).
    pub fn upsert_versioned(
        &self,
        name: &str,
        keys: &[Vec<u8>],
        rows: &RecordBatch,
        updated_at: i64,
        version: Option<i64>,
    ) -> Result<(), CqError> {
        let mut tables = self.lock();
        let table = tables
            .get_mut(name)
            .ok_or_else(|| CqError::Table(format!("table \"{name}\" does not exist")))?;
        if keys.len() != rows.num_rows() {
            return Err(InputError::KeysDoNotMatchRows {
                keys: keys.len(),
                rows: rows.num_rows(),
                table: name.to_string(),
            }
            .into());
        }
        let columns = rows
            .columns()
            .iter()
            .zip(table.schema.fields())
            .map(|(c, f)| Ok(arrow::compute::cast(c, f.data_type())?))
            .collect::<Result<Vec<_>, CqError>>()?;
        let encoded = table.converter.convert_columns(&columns)?;
        let mut outbox = self.outbox();
        let mut share = match (version, outbox.as_mut()) {
            (Some(v), Some(q)) => Some((v, q.entry(name.to_string()).or_default())),
            _ => None,
        };
        for (i, key) in keys.iter().enumerate() {
            let row = encoded.row(i);
            if table.rows.get(key).is_some_and(|(old, _)| old.row() == row) {
                continue;
            }
            table.rows.insert(key.clone(), (row.owned(), updated_at));
            table.dirty.insert(key.clone());
            if let Some((v, queued)) = share.as_mut() {
                let at = queued.entry(key.clone()).or_insert(*v);
                *at = (*at).max(*v);
            }
        }
        Ok(())
    }

    /// Makes every upsert into `names` durable: appends the changed rows and fsyncs, or
    /// rewrites the file when the log has grown past twice the table.
    pub fn sync<'a>(&self, names: impl IntoIterator<Item = &'a str>) -> Result<(), CqError> {
        let mut tables = self.lock();
        for name in names {
            let Some(table) = tables.get_mut(name) else {
                continue;
            };
            if table.dirty.is_empty() {
                continue;
            }
            table.log_rows += table.dirty.len() as u64;
            if table.wants_rewrite() {
                table.rewrite(name)?;
                continue;
            }
            let batch = table.rows_batch(name, table.dirty.iter())?;
            let mut bytes = Vec::new();
            frame(&ipc(&batch.schema(), Some(&batch))?, &mut bytes);
            let path = table.path.clone();
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(&path)
                .map_err(|e| StorageError::io(&path, e))?;
            f.write_all(&bytes)
                .map_err(|e| StorageError::io(&path, e))?;
            f.sync_data().map_err(|e| StorageError::io(&path, e))?;
            table.dirty.clear();
        }
        Ok(())
    }

    /// The names of every table, sorted.
    pub fn names(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    /// The schema of table `name`.
    pub fn schema(&self, name: &str) -> Option<SchemaRef> {
        self.lock().get(name).map(|t| Arc::clone(&t.schema))
    }

    /// Every row of table `name`, now, in key order.
    pub fn batch(&self, name: &str) -> Result<RecordBatch, arrow::error::ArrowError> {
        let tables = self.lock();
        let Some(table) = tables.get(name) else {
            return Err(arrow::error::ArrowError::InvalidArgumentError(format!(
                "table \"{name}\" was removed"
            )));
        };
        let rows: Vec<&(OwnedRow, i64)> = table.rows.values().collect();
        let columns = table
            .columns(&rows)
            .map_err(|e| arrow::error::ArrowError::ExternalError(Box::new(e)))?;
        let options = arrow::array::RecordBatchOptions::new().with_row_count(Some(rows.len()));
        RecordBatch::try_new_with_options(Arc::clone(&table.schema), columns, &options)
    }

    /// Rows and log rows of `name` (for tests and metrics).
    pub fn sizes(&self, name: &str) -> Option<(usize, u64)> {
        self.lock().get(name).map(|t| (t.rows.len(), t.log_rows))
    }
}
