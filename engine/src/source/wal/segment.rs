//! The on-disk format of one WAL segment, and reading it back.
//!
//! A segment is a file `<first_seq:020>.wal` holding entries back to back:
//!
//! ```text
//! entry  := len:u32le  crc:u32le  body[len]
//! body   := seq:u64le  payload
//! ```
//!
//! `crc` is the CRC-32 (IEEE) of `body`. An entry whose length runs past the end of
//! the file, or whose checksum does not match, ends the readable part of the segment.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

/// Bytes in an entry header (`len`, `crc`).
pub const HEADER_LEN: usize = 8;
/// Largest entry body accepted when reading; anything larger is corruption.
pub const MAX_ENTRY_LEN: usize = 512 * 1024 * 1024;

/// Encodes one entry (header + body) ready to be appended.
pub fn encode_entry(seq: u64, payload: &[u8], out: &mut Vec<u8>) {
    let len = (8 + payload.len()) as u32;
    let mut crc = crc32fast::Hasher::new();
    crc.update(&seq.to_le_bytes());
    crc.update(payload);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&crc.finalize().to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(payload);
}

/// The file name of the segment whose first entry is `first_seq`.
pub fn segment_path(dir: &Path, first_seq: u64) -> PathBuf {
    dir.join(format!("{first_seq:020}.wal"))
}

/// Parses a segment file name back into its first sequence number.
pub fn parse_segment_name(name: &str) -> Option<u64> {
    name.strip_suffix(".wal")?.parse().ok()
}

/// One entry read back from a segment.
#[derive(Debug)]
pub struct ReadEntry {
    pub seq: u64,
    pub payload: Vec<u8>,
}

/// What reading a segment found.
#[derive(Debug)]
pub struct SegmentScan {
    /// The valid entries, in order.
    pub entries: Vec<ReadEntry>,
    /// Length of the valid prefix of the file.
    pub valid_len: u64,
    /// Length of the file; more than `valid_len` means a torn or corrupt tail.
    pub file_len: u64,
    /// Why reading stopped before the end of the file, if it did.
    pub damage: Option<String>,
}

/// Reads every valid entry of a segment, stopping at the first torn or corrupt one.
pub fn scan_segment(path: &Path) -> std::io::Result<SegmentScan> {
    let file = File::open(path)?;
    let file_len = file.metadata()?.len();
    let mut r = BufReader::with_capacity(1 << 20, file);
    let mut entries = Vec::new();
    let mut pos: u64 = 0;
    let mut damage = None;
    let mut last_seq = None;
    while pos < file_len {
        let remaining = file_len - pos;
        if remaining < HEADER_LEN as u64 {
            damage = Some(format!(
                "{remaining} trailing bytes are a partial entry header"
            ));
            break;
        }
        let mut header = [0u8; HEADER_LEN];
        r.read_exact(&mut header)?;
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        if !(8..=MAX_ENTRY_LEN).contains(&len) {
            damage = Some(format!("entry at offset {pos} has impossible length {len}"));
            break;
        }
        if (len as u64) > remaining - HEADER_LEN as u64 {
            damage = Some(format!(
                "entry at offset {pos} is torn: {len} bytes announced, {} present",
                remaining - HEADER_LEN as u64
            ));
            break;
        }
        let mut body = vec![0u8; len];
        r.read_exact(&mut body)?;
        if crc32fast::hash(&body) != crc {
            damage = Some(format!("entry at offset {pos} fails its checksum"));
            break;
        }
        let seq = u64::from_le_bytes([
            body[0], body[1], body[2], body[3], body[4], body[5], body[6], body[7],
        ]);
        if last_seq.is_some_and(|l| seq <= l) {
            damage = Some(format!(
                "entry at offset {pos} has sequence {seq} out of order"
            ));
            break;
        }
        last_seq = Some(seq);
        body.drain(..8);
        entries.push(ReadEntry { seq, payload: body });
        pos += (HEADER_LEN + len) as u64;
    }
    Ok(SegmentScan {
        entries,
        valid_len: pos,
        file_len,
        damage,
    })
}
