//! The payload of a WAL entry: one ingest request, already decoded to Arrow.
//!
//! ```text
//! payload := version:u8(=1)  key_len:u16le  key[key_len]
//!            logs_len:u32le  logs_ipc[logs_len]  dead_len:u32le  dead_ipc[dead_len]
//! ```
//! The two batches are Arrow IPC streams (`logs` and `dead_letters` schemas); a length of
//! zero means no rows. One request is one entry, so it is applied whole or not at all.

use arrow::array::RecordBatch;
use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::StreamWriter;

use crate::EngineError;
use crate::model::{dead_letters_schema, logs_schema};

const VERSION: u8 = 1;

/// One ingest request as the WAL holds it.
#[derive(Debug)]
pub struct IngestEntry {
    /// The request's `Idempotency-Key`, if it had one.
    pub key: Option<String>,
    /// Accepted records.
    pub logs: RecordBatch,
    /// Rejected records.
    pub dead_letters: RecordBatch,
}

impl IngestEntry {
    /// Encodes the entry.
    pub fn encode(&self) -> Result<Vec<u8>, EngineError> {
        let key = self.key.as_deref().unwrap_or("").as_bytes();
        let key_len = u16::try_from(key.len())
            .map_err(|_| EngineError::Wal("Idempotency-Key longer than 65535 bytes".into()))?;
        let mut out = Vec::with_capacity(64 + self.logs.get_array_memory_size());
        out.push(VERSION);
        out.extend_from_slice(&key_len.to_le_bytes());
        out.extend_from_slice(key);
        for batch in [&self.logs, &self.dead_letters] {
            let ipc = ipc_bytes(batch)?;
            let len = u32::try_from(ipc.len())
                .map_err(|_| EngineError::Wal("request too large for one WAL entry".into()))?;
            out.extend_from_slice(&len.to_le_bytes());
            out.extend_from_slice(&ipc);
        }
        Ok(out)
    }

    /// Decodes an entry written by [`IngestEntry::encode`].
    pub fn decode(seq: u64, payload: &[u8]) -> Result<Self, EngineError> {
        let bad = |reason: &str| EngineError::WalEntry {
            seq,
            reason: reason.to_string(),
        };
        let mut r = payload;
        let version = take(&mut r, 1).ok_or_else(|| bad("empty payload"))?[0];
        if version != VERSION {
            return Err(bad(&format!("unknown payload version {version}")));
        }
        let key_len =
            u16::from_le_bytes(take_array(&mut r).ok_or_else(|| bad("truncated key length"))?)
                as usize;
        let key = take(&mut r, key_len).ok_or_else(|| bad("truncated key"))?;
        let key = if key.is_empty() {
            None
        } else {
            Some(String::from_utf8(key.to_vec()).map_err(|_| bad("key is not UTF-8"))?)
        };
        let mut batches = Vec::with_capacity(2);
        for schema in [logs_schema(), dead_letters_schema()] {
            let len = u32::from_le_bytes(
                take_array(&mut r).ok_or_else(|| bad("truncated batch length"))?,
            ) as usize;
            let bytes = take(&mut r, len).ok_or_else(|| bad("truncated batch"))?;
            let batch = if bytes.is_empty() {
                RecordBatch::new_empty(schema)
            } else {
                let mut reader = StreamReader::try_new(bytes, None)?;
                let batch = reader
                    .next()
                    .ok_or_else(|| bad("batch stream has no batch"))??;
                batch
                    .with_schema(schema)
                    .map_err(|e| bad(&format!("batch does not fit the schema: {e}")))?
            };
            batches.push(batch);
        }
        let dead_letters = batches.pop().ok_or_else(|| bad("missing dead letters"))?;
        let logs = batches.pop().ok_or_else(|| bad("missing logs"))?;
        Ok(Self {
            key,
            logs,
            dead_letters,
        })
    }
}

fn ipc_bytes(batch: &RecordBatch) -> Result<Vec<u8>, EngineError> {
    if batch.num_rows() == 0 {
        return Ok(Vec::new());
    }
    let mut buf = Vec::with_capacity(batch.get_array_memory_size() + 512);
    let mut w = StreamWriter::try_new(&mut buf, &batch.schema())?;
    w.write(batch)?;
    w.finish()?;
    drop(w);
    Ok(buf)
}

fn take<'a>(r: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    if r.len() < n {
        return None;
    }
    let (head, tail) = r.split_at(n);
    *r = tail;
    Some(head)
}

fn take_array<const N: usize>(r: &mut &[u8]) -> Option<[u8; N]> {
    take(r, N)?.try_into().ok()
}
