//! Promotion: type inference, limits, the registry, and `logs` answers over promoted
//! columns equal to the JSON path's, hot, cold and mixed, across schema changes and a
//! restart.

use std::sync::Arc;

use arrow::array::{Array, AsArray, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Int64Type};
use arrow::util::display::array_value_to_string;
use bytes::Bytes;

use super::*;
use crate::ingest::DecodeOptions;
use crate::{Engine, EngineConfig};

/// A `logs` batch whose `attributes` are `attrs`.
fn logs_batch(attrs: &[&str]) -> RecordBatch {
    use arrow::array::TimestampMicrosecondArray;
    let n = attrs.len();
    let ts = || -> ArrayRef {
        Arc::new(TimestampMicrosecondArray::from(vec![0i64; n]).with_timezone(crate::model::UTC))
    };
    let text = |v: &str| -> ArrayRef { Arc::new(StringArray::from(vec![v; n])) };
    RecordBatch::try_new(
        logs_schema(),
        vec![
            ts(),
            text("INFO"),
            text("m"),
            text("s"),
            text("t"),
            Arc::new(StringArray::from(attrs.to_vec())),
            ts(),
        ],
    )
    .unwrap()
}

fn kinds(s: &Shredded) -> Vec<(String, FieldType)> {
    s.columns.iter().map(|c| (c.name.clone(), c.kind)).collect()
}

#[test]
fn types_are_inferred_per_file_and_mixes_fall_back_to_text() {
    let b = logs_batch(&[
        r#"{"i":1,"f":1.5,"b":true,"s":"x","o":{"k":[1,2]},"m":1,"n":null,"big":18446744073709551615}"#,
        r#"{"i":-7,"f":2,"b":false,"s":"y","o":[1],"m":"one","big":1}"#,
        "not json",
        r#"{"i":3}"#,
    ]);
    let s = shred(&b, &FieldsConfig::default(), &[]).unwrap();
    let mut got = kinds(&s);
    got.sort();
    let want = [
        ("b", FieldType::Boolean),
        ("big", FieldType::Json),
        ("f", FieldType::Float64),
        ("i", FieldType::Int64),
        ("m", FieldType::Json),
        ("o", FieldType::Json),
        ("s", FieldType::Text),
    ];
    assert_eq!(
        got,
        want.iter()
            .map(|(n, k)| (n.to_string(), *k))
            .collect::<Vec<_>>()
    );
    // `n` is only ever null: nothing to promote. Mixed kinds are recorded.
    let mut mixed = s.mixed.clone();
    mixed.sort();
    assert_eq!(mixed, ["big", "m"]);
    assert_eq!(s.batch.num_columns(), 7 + 7);
    let col = |name: &str| s.batch.column_by_name(name).unwrap().clone();
    let i = col("i");
    assert_eq!(i.data_type(), &DataType::Int64);
    let i = i.as_primitive::<Int64Type>();
    assert_eq!(
        (i.value(0), i.value(1), i.is_null(2), i.value(3)),
        (1, -7, true, 3)
    );
    // Text columns hold what attr() returns: strings unquoted, the rest as JSON text.
    let m = col("m");
    let m = m.as_string::<i32>();
    assert_eq!((m.value(0), m.value(1)), ("1", "one"));
    let o = col("o");
    assert_eq!(o.as_string::<i32>().value(0), r#"{"k":[1,2]}"#);
    let big = col("big");
    assert_eq!(big.as_string::<i32>().value(0), "18446744073709551615");
    let f = col("f");
    assert_eq!(
        f.as_primitive::<arrow::datatypes::Float64Type>().value(1),
        2.0
    );
    // `attributes` is unchanged.
    assert_eq!(s.batch.column(ATTRIBUTES), b.column(ATTRIBUTES));
}

#[test]
fn share_never_always_and_the_limit_decide_what_is_promoted() {
    let b = logs_batch(&[
        r#"{"a":1,"b":1,"rare":1,"secret":"x","message":"dup"}"#,
        r#"{"a":2,"b":2,"secret":"y","message":"dup"}"#,
        r#"{"a":3,"secret":"z","message":"dup"}"#,
        r#"{"a":4,"secret":"w","message":"dup"}"#,
    ]);
    let config = FieldsConfig {
        never: vec!["secret".into()],
        always: vec!["rare".into()],
        ..FieldsConfig::default()
    };
    let s = shred(&b, &config, &[]).unwrap();
    let names: Vec<&str> = s.columns.iter().map(|c| c.name.as_str()).collect();
    // `always` first, then by share; a fixed column's name is never a promoted one.
    assert_eq!(names, ["rare", "a", "b"]);
    assert_eq!(s.columns[1].values, 4);
    let config = FieldsConfig {
        max_promoted: 1,
        ..FieldsConfig::default()
    };
    let s = shred(&b, &config, &[]).unwrap();
    assert_eq!(kinds(&s), [("a".to_string(), FieldType::Int64)]);
    // A registered field is promoted wherever it appears, whatever its share; a full
    // registry admits no new one.
    let registry = vec![PromotedField {
        name: "rare".into(),
        kind: FieldType::Int64,
        first_seen_us: 0,
        conflicts: 0,
    }];
    let s = shred(&b, &config, &registry).unwrap();
    assert_eq!(kinds(&s), [("rare".to_string(), FieldType::Int64)]);
    let off = FieldsConfig {
        promote: false,
        ..FieldsConfig::default()
    };
    let s = shred(&b, &off, &[]).unwrap();
    assert!(s.columns.is_empty());
    assert_eq!(s.batch.schema(), logs_schema());
}

#[test]
fn the_registry_widens_on_conflict_and_counts_it() {
    let col = |name: &str, kind| FileColumn {
        name: name.into(),
        kind,
        values: 1,
    };
    let mut r = Vec::new();
    register(&mut r, &[col("status", FieldType::Int64)], &[], 10);
    register(
        &mut r,
        &[
            col("status", FieldType::Int64),
            col("lat", FieldType::Int64),
        ],
        &[],
        20,
    );
    assert_eq!(
        (r[0].kind, r[0].conflicts, r[0].first_seen_us),
        (FieldType::Int64, 0, 10)
    );
    register(&mut r, &[col("lat", FieldType::Float64)], &[], 30);
    assert_eq!((r[1].kind, r[1].conflicts), (FieldType::Float64, 0));
    register(&mut r, &[col("status", FieldType::Text)], &[], 40);
    assert_eq!((r[0].kind, r[0].conflicts), (FieldType::Json, 1));
    register(&mut r, &[col("m", FieldType::Json)], &["m".into()], 50);
    assert_eq!((r[2].kind, r[2].conflicts), (FieldType::Json, 1));
    let t = table_schema(&r);
    assert_eq!(t.fields().len(), 10);
    assert_eq!(t.field(7).data_type(), &DataType::Utf8);
    assert_eq!(t.field(8).data_type(), &DataType::Float64);
    assert!(t.field(8).is_nullable());
}

#[test]
fn bad_config_names_the_key() {
    let bad = FieldsConfig {
        min_share: 0.0,
        ..FieldsConfig::default()
    };
    assert!(
        bad.validate()
            .unwrap_err()
            .to_string()
            .contains("fields.min_share")
    );
    let bad = FieldsConfig {
        always: vec!["timestamp".into()],
        ..FieldsConfig::default()
    };
    assert!(
        bad.validate()
            .unwrap_err()
            .to_string()
            .contains("fields.always")
    );
    FieldsConfig::default().validate().unwrap();
}

/// Access-log-like records for `hour`: `status` an integer (or a string when
/// `status_text`), `bytes`, `path`, and `late` when asked; `flag` in few rows.
fn access(hour: u32, n: usize, status_text: bool, late: bool, with_status: bool) -> Bytes {
    let mut s = String::new();
    for i in 0..n {
        let status = [200, 404, 500, 301][i % 4];
        let status = match (with_status, status_text) {
            (false, _) => String::new(),
            (true, true) => format!(r#","status":"{status}""#),
            (true, false) => format!(r#","status":{status}"#),
        };
        let bytes = if with_status {
            format!(r#","bytes":{}"#, 100 * i)
        } else {
            String::new()
        };
        let late = if late {
            format!(r#","late":{}"#, i % 2 == 0)
        } else {
            String::new()
        };
        let flag = if i % 10 == 0 { r#","flag":"x""# } else { "" };
        let path = ["/index.html", "/wp-login.php", "/a.php", "/img.png"][i % 3];
        s.push_str(&format!(
            "{{\"ts\":\"2026-11-24T{hour:02}:{:02}:00Z\",\"level\":\"info\",\"message\":\"m{i}\",\
             \"host\":\"web-{}\",\"path\":\"{path}\"{status}{bytes}{late}{flag}}}\n",
            i % 60,
            i % 3
        ));
    }
    Bytes::from(s)
}

async fn collect(e: &Engine, sql: &str) -> Vec<RecordBatch> {
    e.session_context()
        .sql(sql)
        .await
        .unwrap_or_else(|err| panic!("{sql}: {err}"))
        .collect()
        .await
        .unwrap_or_else(|err| panic!("{sql}: {err}"))
}

/// The rows of `sql`, each rendered as text, sorted.
async fn rows(e: &Engine, sql: &str) -> Vec<String> {
    let mut out = Vec::new();
    for b in collect(e, sql).await {
        for r in 0..b.num_rows() {
            let cells: Vec<String> = b
                .columns()
                .iter()
                .map(|c| {
                    if c.is_null(r) {
                        "NULL".into()
                    } else {
                        array_value_to_string(c, r).unwrap()
                    }
                })
                .collect();
            out.push(cells.join("|"));
        }
    }
    out.sort();
    out
}

async fn plan_text(e: &Engine, sql: &str) -> String {
    let batches = collect(e, &format!("EXPLAIN {sql}")).await;
    arrow::util::pretty::pretty_format_batches(&batches)
        .unwrap()
        .to_string()
}

/// Each query over promoted columns (left) answers as its JSON-path twin (right), whose
/// `attributes || ''` keeps the rewrite away, on every table.
async fn assert_same_as_json(e: &Engine, with_late: bool) {
    let mut pairs = vec![
        (
            "SELECT CAST(status AS TEXT), count(*) FROM {t} GROUP BY 1",
            "SELECT attr(attributes || '', 'status'), count(*) FROM {t} GROUP BY 1",
        ),
        (
            "SELECT attr(attributes, 'status'), count(*) FROM {t} GROUP BY 1",
            "SELECT attr(attributes || '', 'status'), count(*) FROM {t} GROUP BY 1",
        ),
        (
            "SELECT sum(CAST(CAST(bytes AS TEXT) AS BIGINT)) FROM {t}",
            "SELECT sum(CAST(attr(attributes || '', 'bytes') AS BIGINT)) FROM {t}",
        ),
        (
            "SELECT count(*) FROM {t} WHERE path LIKE '%.php'",
            "SELECT count(*) FROM {t} WHERE attr(attributes || '', 'path') LIKE '%.php'",
        ),
        (
            "SELECT path, count(*) FROM {t} WHERE (attributes ->> 'path') LIKE '%.php' GROUP BY 1",
            "SELECT attr(attributes || '', 'path'), count(*) FROM {t} \
             WHERE attr(attributes || '', 'path') LIKE '%.php' GROUP BY 1",
        ),
        (
            "SELECT count(*) FROM {t} WHERE attr(attributes, 'status') = '500'",
            "SELECT count(*) FROM {t} WHERE attr(attributes || '', 'status') = '500'",
        ),
    ];
    if with_late {
        pairs.push((
            "SELECT CAST(late AS TEXT), source, count(*) FROM {t} GROUP BY 1, 2",
            "SELECT attr(attributes || '', 'late'), source, count(*) FROM {t} GROUP BY 1, 2",
        ));
    }
    for t in ["logs", "logs_hot", "logs_cold"] {
        for (fast, json) in &pairs {
            let (fast, json) = (fast.replace("{t}", t), json.replace("{t}", t));
            assert_eq!(rows(e, &fast).await, rows(e, &json).await, "{fast}");
        }
    }
}

fn registry(e: &Engine) -> Vec<(String, FieldType, u64)> {
    e.tiers
        .manifest()
        .fields
        .iter()
        .map(|f| (f.name.clone(), f.kind, f.conflicts))
        .collect()
}

#[tokio::test]
async fn logs_answers_equal_the_json_path_as_fields_come_change_and_go() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = EngineConfig::new(dir.path());
    cfg.compaction.policy.min_files = 2;
    let e = Engine::open(cfg.clone()).await.unwrap();
    let ingest = |b: Bytes| {
        let e = Arc::clone(&e);
        async move { e.ingest(b, None, DecodeOptions::default()).await.unwrap() }
    };
    // 1. Hour 10 becomes a cold file: status, bytes and path are promoted, flag (10% of
    //    rows) is not.
    ingest(access(10, 200, false, false, true)).await;
    e.flush().await.unwrap();
    assert_eq!(
        registry(&e),
        [
            ("bytes".into(), FieldType::Int64, 0),
            ("path".into(), FieldType::Text, 0),
            ("status".into(), FieldType::Int64, 0)
        ]
    );
    let f = &e.tiers.manifest().logs[0];
    assert_eq!(f.columns.len(), 3);
    let schema = e
        .session_context()
        .table("logs")
        .await
        .unwrap()
        .schema()
        .clone();
    assert_eq!(schema.fields().len(), 10);
    assert_eq!(schema.field(9).data_type(), &DataType::Int64);
    assert_eq!(
        rows(&e, "SELECT status, count(*) FROM logs GROUP BY status").await,
        ["200|50", "301|50", "404|50", "500|50"]
    );
    // The rewrite reads the column: nothing reads `attributes` (the hot tier is empty).
    let plan = plan_text(
        &e,
        "SELECT attr(attributes, 'status'), count(*) FROM logs GROUP BY 1",
    )
    .await;
    assert!(!plan.contains("attributes@"), "{plan}");
    let plan = plan_text(
        &e,
        "SELECT count(*) FROM logs WHERE (attributes ->> 'path') = '/a.php'",
    )
    .await;
    assert!(
        !plan.contains("attributes@") && !plan.contains("json_as_text("),
        "{plan}"
    );
    // Not for a JSON-path twin, which still parses.
    let plan = plan_text(&e, "SELECT attr(attributes || '', 'status') FROM logs").await;
    assert!(plan.contains("attributes@"), "{plan}");
    // Cold only, then mixed: hour 11 in the hot tier carries a new key `late`.
    ingest(access(11, 120, false, true, true)).await;
    assert_same_as_json(&e, false).await;

    // 2. Hour 11 and 12 flushed; status became a string in hour 12: the table type falls
    //    back to text (one conflict), the hour-10 file's integers are cast, nothing lost.
    ingest(access(12, 80, true, true, true)).await;
    e.flush().await.unwrap();
    let r = registry(&e);
    assert!(r.contains(&("status".into(), FieldType::Json, 1)), "{r:?}");
    assert!(r.contains(&("late".into(), FieldType::Boolean, 0)), "{r:?}");
    assert_same_as_json(&e, true).await;
    assert_eq!(
        rows(&e, "SELECT status, count(*) FROM logs GROUP BY status").await,
        ["200|100", "301|100", "404|100", "500|100"]
    );

    // 3. Status and bytes disappear in hour 13 (hot, then cold): NULL there, as attr() says.
    ingest(access(13, 40, false, true, false)).await;
    assert_same_as_json(&e, true).await;
    e.flush().await.unwrap();
    assert_same_as_json(&e, true).await;
    assert_eq!(
        rows(&e, "SELECT count(*) FROM logs WHERE status IS NULL").await,
        ["40"]
    );
    assert_eq!(
        rows(
            &e,
            "SELECT name, type, files, rows, conflicts FROM promoted_fields ORDER BY name"
        )
        .await,
        [
            "bytes|bigint|3|400|0",
            "late|boolean|3|240|0",
            "path|text|4|440|0",
            "status|json text|3|400|1",
        ]
    );

    // 4. A compaction keeps the promoted columns, recomputed with the joined types.
    ingest(access(13, 40, false, false, true)).await;
    e.flush().await.unwrap();
    let before = rows(
        &e,
        "SELECT status, late, bytes, path, count(*) FROM logs GROUP BY 1, 2, 3, 4",
    )
    .await;
    e.compact().await.unwrap();
    let m = e.tiers.manifest();
    let merged = m.logs.iter().find(|f| f.path.contains("hour=13")).unwrap();
    assert_eq!(
        m.logs.iter().filter(|f| f.path.contains("hour=13")).count(),
        1
    );
    let status = merged.columns.iter().find(|c| c.name == "status").unwrap();
    assert_eq!((status.kind, status.values), (FieldType::Int64, 40));
    assert_same_as_json(&e, true).await;

    // 5. A restart keeps the registry, the file columns and the answers.
    e.shutdown().await;
    drop(e);
    let e = Engine::open(cfg).await.unwrap();
    let after = rows(
        &e,
        "SELECT status, late, bytes, path, count(*) FROM logs GROUP BY 1, 2, 3, 4",
    )
    .await;
    assert_eq!(before, after);
    // The hour-13 file of step 4 held integers again: one more file disagreeing with text.
    let r = registry(&e);
    assert!(r.contains(&("status".into(), FieldType::Json, 2)), "{r:?}");
    assert_same_as_json(&e, true).await;
}

#[tokio::test]
async fn promotion_off_keeps_the_fixed_schema() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = EngineConfig::new(dir.path());
    cfg.fields.promote = false;
    let e = Engine::open(cfg).await.unwrap();
    e.ingest(
        access(10, 50, false, false, true),
        None,
        DecodeOptions::default(),
    )
    .await
    .unwrap();
    e.flush().await.unwrap();
    assert!(e.tiers.manifest().fields.is_empty());
    let batches = collect(&e, "SELECT * FROM logs").await;
    assert_eq!(batches[0].schema().fields().len(), 7);
    let n = collect(
        &e,
        "SELECT count(*) FROM logs WHERE attr(attributes, 'status') = '200'",
    )
    .await;
    assert_eq!(n[0].column(0).as_primitive::<Int64Type>().value(0), 13);
}

#[test]
fn old_manifests_read_as_without_promoted_fields() {
    let old = r#"{"version":3,"flushed_seq":9,"logs":[{"path":"logs/x.parquet","min_ts":1,
        "max_ts":2,"rows":5,"bytes":100}],"dead_letters":[]}"#;
    let m: crate::catalog::Manifest = serde_json::from_str(old).unwrap();
    assert!(m.fields.is_empty());
    assert!(m.logs[0].columns.is_empty());
    let mut m = m;
    m.logs[0].columns.push(FileColumn {
        name: "status".into(),
        kind: FieldType::Int64,
        values: 5,
    });
    let text = serde_json::to_string(&m).unwrap();
    assert!(text.contains(r#""type":"int64""#), "{text}");
    let back: crate::catalog::Manifest = serde_json::from_str(&text).unwrap();
    assert_eq!(back, m);
}
