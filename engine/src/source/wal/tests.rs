use std::io::Write;
use std::sync::{Arc, Mutex};

use super::segment::HEADER_LEN;
use super::*;

fn open(dir: &Path, seg: u64) -> (Wal, Vec<(u64, Vec<u8>)>, ReplayReport) {
    let mut seen = Vec::new();
    let (wal, report) = Wal::open(dir, seg, 1, |e| {
        seen.push((e.seq, e.payload));
        Ok(())
    })
    .expect("open");
    (wal, seen, report)
}

#[tokio::test]
async fn appends_are_replayed_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let applied = Arc::new(Mutex::new(Vec::new()));
    {
        let (wal, seen, _) = open(dir.path(), 100);
        assert!(seen.is_empty());
        let mut tasks = Vec::new();
        let wal = Arc::new(wal);
        for i in 0..20u8 {
            let wal = Arc::clone(&wal);
            let applied = Arc::clone(&applied);
            tasks.push(tokio::spawn(async move {
                wal.append(
                    vec![i; 30],
                    Box::new(move |seq| applied.lock().unwrap().push(seq)),
                )
                .await
            }));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        wal.close();
    }
    let applied = applied.lock().unwrap().clone();
    assert_eq!(
        applied,
        (1..=20).collect::<Vec<_>>(),
        "applied in sequence order"
    );
    let (_wal, seen, report) = open(dir.path(), 100);
    assert_eq!(seen.len(), 20);
    assert_eq!(report.cut_bytes, 0);
    assert!(report.segments > 1, "small segments roll over");
    assert!(seen.windows(2).all(|w| w[0].0 < w[1].0));
}

#[tokio::test]
async fn torn_tail_is_cut_and_sequence_continues() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (wal, _, _) = open(dir.path(), 1 << 20);
        for i in 0..3u8 {
            wal.append(vec![i; 10], Box::new(|_| {})).await.unwrap();
        }
    }
    // Simulate a crash mid-write: half an entry at the end of the last segment.
    let (_, last) = list_segments(dir.path()).unwrap().pop().unwrap();
    let mut partial = Vec::new();
    encode_entry(99, b"never acknowledged", &mut partial);
    std::fs::OpenOptions::new()
        .append(true)
        .open(&last)
        .unwrap()
        .write_all(&partial[..12])
        .unwrap();
    let (wal, seen, report) = open(dir.path(), 1 << 20);
    assert_eq!(seen.iter().map(|s| s.0).collect::<Vec<_>>(), vec![1, 2, 3]);
    assert_eq!(report.cut_bytes, 12);
    let seq = wal
        .append(b"next".to_vec(), Box::new(|_| {}))
        .await
        .unwrap();
    assert_eq!(seq, 4);
}

#[tokio::test]
async fn corrupt_entry_is_never_replayed() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (wal, _, _) = open(dir.path(), 1 << 20);
        for i in 0..3u8 {
            wal.append(vec![i; 10], Box::new(|_| {})).await.unwrap();
        }
    }
    let (_, seg) = list_segments(dir.path())
        .unwrap()
        .into_iter()
        .find(|(_, p)| std::fs::metadata(p).unwrap().len() > 0)
        .unwrap();
    let mut bytes = std::fs::read(&seg).unwrap();
    let second_entry_body = (HEADER_LEN + 18) + HEADER_LEN + 9;
    bytes[second_entry_body] ^= 0xff;
    std::fs::write(&seg, &bytes).unwrap();
    let (_wal, seen, report) = open(dir.path(), 1 << 20);
    assert_eq!(
        seen.len(),
        1,
        "only the entry before the corruption survives"
    );
    assert!(report.cut_bytes > 0);
    let kept = std::fs::read_dir(dir.path()).unwrap().filter(|e| {
        e.as_ref()
            .unwrap()
            .file_name()
            .to_string_lossy()
            .contains("corrupt")
    });
    assert_eq!(kept.count(), 1, "a copy of the damaged segment is kept");
}

#[tokio::test]
async fn flushed_segments_are_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _, _) = open(dir.path(), 10);
    for i in 0..5u8 {
        wal.append(vec![i; 20], Box::new(|_| {})).await.unwrap();
    }
    assert_eq!(wal.delete_segments(0).unwrap(), 0, "nothing flushed yet");
    assert_eq!(wal.delete_segments(3).unwrap(), 3);
    let first_left = list_segments(dir.path()).unwrap()[0].0;
    assert_eq!(
        first_left, 4,
        "segments holding entries 1..=3 are gone, entry 4 stays"
    );
}
