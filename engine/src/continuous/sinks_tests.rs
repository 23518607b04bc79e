//! The table store and the INTO / NOTIFY TABLE / START FROM wiring of the registry.

use std::sync::Arc;

use arrow::array::{Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, Field, Schema};

use super::*;
use crate::model::logs_schema;

/// A minute boundary in November 2023.
const BASE: i64 = 28_333_333 * 60_000_000;
const SEC: i64 = 1_000_000;

fn logs(rows: &[(i64, &str, &str)]) -> RecordBatch {
    let ts = || {
        TimestampMicrosecondArray::from(rows.iter().map(|r| r.0).collect::<Vec<_>>())
            .with_timezone("UTC")
    };
    let text = |f: &dyn Fn(&(i64, &str, &str)) -> String| {
        Arc::new(StringArray::from(rows.iter().map(f).collect::<Vec<_>>()))
    };
    RecordBatch::try_new(
        logs_schema(),
        vec![
            Arc::new(ts()),
            text(&|r| r.1.to_string()),
            text(&|r| format!("m{}", r.0 % 7)),
            text(&|r| r.2.to_string()),
            text(&|_| "t".to_string()),
            text(&|_| "{}".to_string()),
            Arc::new(ts()),
        ],
    )
    .unwrap()
}

fn kv_schema() -> arrow::datatypes::SchemaRef {
    table_schema(&Schema::new(vec![
        Field::new("k", DataType::Utf8, false),
        Field::new("v", DataType::Int64, false),
    ]))
}

fn kv(rows: &[(&str, i64)]) -> (Vec<Vec<u8>>, RecordBatch) {
    let keys = rows.iter().map(|r| r.0.as_bytes().to_vec()).collect();
    let batch = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("k", DataType::Utf8, false),
            Field::new("v", DataType::Int64, false),
        ])),
        vec![
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0))),
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.1))),
        ],
    )
    .unwrap();
    (keys, batch)
}

/// `(k, v)` of every row of a `kv` table.
fn kv_rows(store: &TableStore, name: &str) -> Vec<(String, i64)> {
    let b = store.batch(name).unwrap();
    let k = b.column(0).as_any().downcast_ref::<StringArray>().unwrap();
    let v = b.column(1).as_any().downcast_ref::<Int64Array>().unwrap();
    (0..b.num_rows())
        .map(|i| (k.value(i).to_string(), v.value(i)))
        .collect()
}

#[test]
fn table_store_upserts_survive_reopen_and_stay_bounded_by_keys() {
    let dir = tempfile::tempdir().unwrap();
    let store = TableStore::open(dir.path()).unwrap();
    assert!(store.ensure("t", &kv_schema()).unwrap());
    assert!(!store.ensure("t", &kv_schema()).unwrap());
    let other = table_schema(&Schema::new(vec![Field::new("k", DataType::Utf8, false)]));
    assert!(matches!(
        store.ensure("t", &other),
        Err(CqError::TableExists(m)) if m.contains("exists with columns")
    ));

    let (keys, rows) = kv(&[("a", 1), ("b", 2)]);
    store.upsert("t", &keys, &rows, 10).unwrap();
    let (keys, rows) = kv(&[("a", 3)]);
    store.upsert("t", &keys, &rows, 11).unwrap();
    assert_eq!(kv_rows(&store, "t"), vec![("a".into(), 3), ("b".into(), 2)]);
    // Not synced: a "crash" now loses the rows (the CQ's WAL replay writes them again).
    drop(store);
    let store = TableStore::open(dir.path()).unwrap();
    assert_eq!(kv_rows(&store, "t"), vec![]);

    for round in 0..3000 {
        let (keys, rows) = kv(&[("a", round), ("b", 7)]);
        store.upsert("t", &keys, &rows, round).unwrap();
        store.sync(["t"]).unwrap();
    }
    let (n, log_rows) = store.sizes("t").unwrap();
    assert_eq!(n, 2);
    // Rewritten whenever the log passes twice the keys (and a small floor).
    assert!(log_rows <= 1025, "{log_rows} rows in the log for 2 keys");
    let size = std::fs::metadata(
        dir.path()
            .join("tables")
            .join(format!("{}.tbl", super::alerts::hex_hash(&["t"]))),
    )
    .unwrap()
    .len();
    assert!(size < 2 * 1024 * 1024, "{size} bytes for 2 keys");
    // An unchanged row is not written again.
    let (keys, rows) = kv(&[("b", 7)]);
    store.upsert("t", &keys, &rows, 99_999).unwrap();
    store.sync(["t"]).unwrap();
    assert_eq!(store.sizes("t").unwrap().1, log_rows);
    drop(store);

    let store = TableStore::open(dir.path()).unwrap();
    assert_eq!(
        kv_rows(&store, "t"),
        vec![("a".into(), 2999), ("b".into(), 7)]
    );
    let updated = store.batch("t").unwrap();
    let updated = updated
        .column_by_name(UPDATED_AT)
        .unwrap()
        .as_any()
        .downcast_ref::<TimestampMicrosecondArray>()
        .unwrap()
        .clone();
    assert_eq!(updated.value(0), 2999);
    assert_eq!(updated.value(1), 0, "b last changed in round 0");

    // A torn last frame (a crash inside a sync) is cut off; the frames before it stay.
    let (keys, rows) = kv(&[("c", 5)]);
    store.upsert("t", &keys, &rows, 1).unwrap();
    store.sync(["t"]).unwrap();
    drop(store);
    let path = dir
        .path()
        .join("tables")
        .join(format!("{}.tbl", super::alerts::hex_hash(&["t"])));
    let len = std::fs::metadata(&path).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(len - 3).unwrap();
    drop(f);
    let store = TableStore::open(dir.path()).unwrap();
    assert_eq!(
        kv_rows(&store, "t"),
        vec![("a".into(), 2999), ("b".into(), 7)]
    );
}

fn create_statement(sql: &str) -> logsphere_sql::CreateContinuousQuery {
    match logsphere_sql::parse_statements(sql).unwrap().remove(0) {
        logsphere_sql::Statement::CreateContinuousQuery(cq) => *cq,
        other => panic!("not a CREATE: {other:?}"),
    }
}

/// `(window µs, source, n)` rows of the `per_minute` table.
fn per_minute(queries: &CqRegistry) -> Vec<(i64, String, i64)> {
    let b = queries.tables().batch("per_minute").unwrap();
    let w = arrow::compute::cast(
        b.column(0),
        &DataType::Timestamp(arrow::datatypes::TimeUnit::Microsecond, None),
    )
    .unwrap();
    let w = w
        .as_any()
        .downcast_ref::<TimestampMicrosecondArray>()
        .unwrap();
    let s = b.column(1).as_any().downcast_ref::<StringArray>().unwrap();
    let n = b.column(2).as_any().downcast_ref::<Int64Array>().unwrap();
    let mut rows: Vec<_> = (0..b.num_rows())
        .map(|i| (w.value(i), s.value(i).to_string(), n.value(i)))
        .collect();
    rows.sort();
    rows
}

#[tokio::test]
async fn into_is_an_upsert_by_window_and_keys_that_a_replay_repeats_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let sql = "CREATE CONTINUOUS QUERY q INTO per_minute WATERMARK INTERVAL '1 second' \
               ALLOWED LATENESS INTERVAL '5 minutes' ON LATE UPDATE \
               AS SELECT date_bin(INTERVAL '1 minute', timestamp) AS minute, source, count(*) AS n \
               FROM logs WHERE log_level = 'ERROR' GROUP BY 1, 2";
    let now = BASE + 10 * SEC;
    let entries = [
        logs(&[
            (BASE + SEC, "ERROR", "api"),
            (BASE + 2 * SEC, "ERROR", "db"),
        ]),
        logs(&[
            (BASE + 3 * SEC, "ERROR", "api"),
            (BASE + 4 * SEC, "INFO", "api"),
        ]),
        logs(&[(BASE + 70 * SEC, "ERROR", "api")]),
        // Late for minute 0, within the lateness: a corrected row.
        logs(&[(BASE + 5 * SEC, "ERROR", "db")]),
    ];
    let want = vec![(BASE, "api".to_string(), 2), (BASE, "db".to_string(), 2)];
    let queries = CqRegistry::open(dir.path()).await.unwrap();
    queries.create(&create_statement(sql), now).await.unwrap();
    assert_eq!(per_minute(&queries), vec![]);
    for (i, e) in entries.iter().enumerate() {
        queries.process(i as u64 + 1, e, now);
    }
    assert_eq!(per_minute(&queries), want);
    drop(queries);

    // Nothing synced since CREATE: the replay alone rebuilds the same rows.
    let queries = CqRegistry::open(dir.path()).await.unwrap();
    assert_eq!(per_minute(&queries), vec![]);
    for (i, e) in entries.iter().enumerate() {
        queries.process(i as u64 + 1, e, now);
    }
    assert_eq!(per_minute(&queries), want);
    // A checkpoint syncs the table first; a replay of the same entries is then skipped,
    // and one of entries after it upserts the same keys.
    queries.checkpoint_all(now);
    queries.process(5, &logs(&[(BASE + 6 * SEC, "ERROR", "api")]), now);
    let corrected = vec![(BASE, "api".to_string(), 3), (BASE, "db".to_string(), 2)];
    assert_eq!(per_minute(&queries), corrected);
    drop(queries);
    let queries = CqRegistry::open(dir.path()).await.unwrap();
    assert_eq!(per_minute(&queries), want);
    for (i, e) in entries.iter().enumerate() {
        queries.process(i as u64 + 1, e, now);
    }
    queries.process(5, &logs(&[(BASE + 6 * SEC, "ERROR", "api")]), now);
    assert_eq!(per_minute(&queries), corrected);

    // DROP keeps the table.
    assert!(queries.drop_query("q", false).unwrap());
    assert_eq!(per_minute(&queries), corrected);
}

#[tokio::test]
async fn into_refuses_reserved_names_and_missing_group_keys() {
    let dir = tempfile::tempdir().unwrap();
    let queries = CqRegistry::open(dir.path()).await.unwrap();
    for (sql, reserved) in [
        (
            "CREATE CONTINUOUS QUERY a INTO alerts AS SELECT source FROM logs",
            true,
        ),
        (
            "CREATE CONTINUOUS QUERY a INTO public.LOGS_HOT AS SELECT source FROM logs",
            true,
        ),
        (
            "CREATE CONTINUOUS QUERY a INTO other.t AS SELECT source FROM logs",
            false,
        ),
        (
            "CREATE CONTINUOUS QUERY a INTO t AS SELECT window_start, count(*) AS n \
             FROM TUMBLE(logs, timestamp, INTERVAL '1 minute') GROUP BY window_start, source",
            false,
        ),
        (
            "CREATE CONTINUOUS QUERY a INTO t AS SELECT source, message AS updated_at FROM logs",
            false,
        ),
    ] {
        match queries.create(&create_statement(sql), 0).await {
            Err(CqError::TableExists(_)) if reserved => {}
            Err(CqError::Table(_)) if !reserved => {}
            other => panic!("{sql}: {other:?}"),
        }
    }
    assert!(queries.tables().names().is_empty());
    // NOTIFY (TABLE alerts) is the system table itself: nothing is created.
    queries
        .create(
            &create_statement(
                "CREATE CONTINUOUS QUERY a ALERT NOTIFY (TABLE alerts, TABLE mine) \
                 AS SELECT source FROM logs WHERE log_level = 'CRITICAL'",
            ),
            0,
        )
        .await
        .unwrap();
    assert_eq!(queries.tables().names(), vec!["mine".to_string()]);
    queries.process(1, &logs(&[(BASE, "CRITICAL", "web")]), BASE);
    let copy = queries.tables().batch("mine").unwrap();
    let system = queries.alerts_batch().unwrap();
    assert_eq!(copy.num_rows(), 1);
    assert_eq!(
        copy.column_by_name("alert_id").unwrap().as_ref(),
        system.column_by_name("alert_id").unwrap().as_ref()
    );
    assert_eq!(copy.column_by_name(UPDATED_AT).unwrap().null_count(), 0);
    // START FROM needs the stored logs, which only the engine has.
    assert!(matches!(
        queries
            .create(
                &create_statement(
                    "CREATE CONTINUOUS QUERY b START FROM EARLIEST AS SELECT source FROM logs"
                ),
                0
            )
            .await,
        Err(CqError::Unsupported { .. })
    ));
}

/// Cluster mode's outbox: changed rows are queued with their highest version, as JSON that
/// reads back to the same rows; equal rows are not queued again; a failed share is
/// requeued without losing a newer version; what was stored before sharing began is
/// queued once at version 0.
#[test]
fn shared_rows_carry_versions_and_round_trip_through_json() {
    let dir = tempfile::tempdir().unwrap();
    let store = TableStore::open(dir.path()).unwrap();
    let schema = table_schema(&Schema::new(vec![
        Field::new("minute", crate::model::ts_type(), true),
        Field::new("source", DataType::Utf8, true),
        Field::new("n", DataType::Int64, true),
        Field::new("avg", DataType::Float64, true),
        Field::new("hot", DataType::Boolean, true),
    ]));
    store.ensure("t", &schema).unwrap();
    let rows = |n: i64, source: Option<&str>| {
        RecordBatch::try_new(
            Arc::new(Schema::new(schema.fields()[..5].to_vec())),
            vec![
                Arc::new(TimestampMicrosecondArray::from(vec![BASE]).with_timezone("UTC")),
                Arc::new(StringArray::from(vec![source])),
                Arc::new(Int64Array::from(vec![n])),
                Arc::new(arrow::array::Float64Array::from(vec![0.1 + n as f64 / 3.0])),
                Arc::new(arrow::array::BooleanArray::from(vec![Some(n > 1)])),
            ],
        )
        .unwrap()
    };
    // Stored before sharing began.
    store
        .upsert("t", &[b"old".to_vec()], &rows(7, Some("old")), 5)
        .unwrap();
    store.share_changes();
    let key = b"k".to_vec();
    store
        .upsert_versioned(
            "t",
            std::slice::from_ref(&key),
            &rows(1, Some("a\"b\nc")),
            10,
            Some(100),
        )
        .unwrap();
    store
        .upsert_versioned(
            "t",
            std::slice::from_ref(&key),
            &rows(2, None),
            11,
            Some(90),
        )
        .unwrap();
    let shared = store.take_shared().unwrap();
    assert_eq!(shared.len(), 1);
    let versions: Vec<(Vec<u8>, i64)> = shared[0]
        .rows
        .iter()
        .map(|(k, _, v)| (k.clone(), *v))
        .collect();
    assert_eq!(versions, vec![(key.clone(), 100), (b"old".to_vec(), 0)]);
    let lines: Vec<String> = shared[0].rows.iter().map(|(_, l, _)| l.clone()).collect();
    let back = rows_from_json(&schema, &lines).unwrap();
    let direct = store.batch("t").unwrap();
    assert_eq!(back, direct, "{lines:?}");
    // Nothing changed since: nothing to share; an equal row is not queued again.
    assert!(store.take_shared().unwrap().is_empty());
    store
        .upsert_versioned(
            "t",
            std::slice::from_ref(&key),
            &rows(2, None),
            12,
            Some(120),
        )
        .unwrap();
    assert!(store.take_shared().unwrap().is_empty());
    // A failed share comes back, and a newer version queued since wins.
    store
        .upsert_versioned(
            "t",
            std::slice::from_ref(&key),
            &rows(3, None),
            13,
            Some(130),
        )
        .unwrap();
    let failed = store.take_shared().unwrap();
    store
        .upsert_versioned(
            "t",
            std::slice::from_ref(&key),
            &rows(4, None),
            14,
            Some(140),
        )
        .unwrap();
    store.requeue(failed);
    let again = store.take_shared().unwrap();
    assert_eq!(again[0].rows.len(), 1);
    assert_eq!(again[0].rows[0].2, 140);
    assert!(
        again[0].rows[0].1.contains("\"n\":4"),
        "{:?}",
        again[0].rows
    );
    // The columns survive as text.
    let hex = schema_hex(&schema).unwrap();
    assert_eq!(schema_from_hex(&hex).unwrap(), schema);
    assert!(schema_from_hex("zz").is_err());
    assert!(schema_from_hex("abc").is_err());
}
