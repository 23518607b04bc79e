use chrono::{NaiveDate, TimeZone, Utc};
use datafusion::arrow::util::pretty::pretty_format_batches;
use datafusion::prelude::SessionContext;

use super::*;

fn at(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32, us: u32) -> NaiveDateTime {
    NaiveDate::from_ymd_opt(y, mo, d)
        .and_then(|d| d.and_hms_micro_opt(h, mi, s, us))
        .unwrap()
}

#[test]
fn templates_are_told_apart_from_chrono_formats() {
    assert!(is_postgres_template("YYYY-MM-DD HH24:MI:SS.US"));
    assert!(is_postgres_template("Mon DD"));
    assert!(!is_postgres_template("%Y-%m-%d"));
    assert!(!is_postgres_template("%Y-%m-%d HH"));
    assert!(!is_postgres_template("plain text"));
}

#[test]
fn to_char_writes_every_pattern() {
    // A Saturday in the fourth quarter, ISO week 49.
    let t = Utc.from_utc_datetime(&at(2026, 12, 5, 17, 7, 9, 123_456));
    let cases = [
        ("YYYY-MM-DD HH24:MI:SS", "2026-12-05 17:07:09"),
        ("YYYY-MM-DD HH24:MI:SS.MS", "2026-12-05 17:07:09.123"),
        ("HH24:MI:SS.US", "17:07:09.123456"),
        ("HH12:MI AM", "05:07 PM"),
        ("HH:MI a.m.", "05:07 p.m."),
        ("Mon DD, YY", "Dec 05, 26"),
        ("Month|MONTH|month", "December |DECEMBER |december "),
        ("FMMonth FMDD", "December 5"),
        ("Dy Day DAY dy", "Sat Saturday  SATURDAY  sat"),
        ("DDD IW Q D", "339 49 4 7"),
        ("YYYY-MM-DD\"T\"HH24:MI:SS TZ", "2026-12-05T17:07:09 UTC"),
        ("\"Day\" DD", "Day 05"),
    ];
    for (template, expected) in cases {
        assert_eq!(Pattern::new(template).format(&t), expected, "{template}");
    }
    let east = FixedOffset::east_opt(5 * 3600 + 1800).unwrap();
    assert_eq!(
        Pattern::new("HH24:MI TZ").format(&t.with_timezone(&east)),
        "22:37 +05:30"
    );
}

#[test]
fn to_timestamp_reads_what_clients_send() {
    let read = |input: &str, template: &str| Pattern::new(template).read(input);
    assert_eq!(
        read("2026-12-05 05:27:19.000000", "YYYY-MM-DD HH24:MI:SS.US"),
        Ok((at(2026, 12, 5, 5, 27, 19, 0), None))
    );
    assert_eq!(
        read("2026-12-05 05:27:19.25", "YYYY-MM-DD HH24:MI:SS.US"),
        Ok((at(2026, 12, 5, 5, 27, 19, 250_000), None))
    );
    assert_eq!(
        read("12:3", "SS:MS"),
        Ok((at(1, 1, 1, 0, 0, 12, 300_000), None))
    );
    assert_eq!(
        read("05 Dec 2026 07:15 pm", "DD Mon YYYY HH12:MI AM"),
        Ok((at(2026, 12, 5, 19, 15, 0, 0), None))
    );
    assert_eq!(
        read("2026/339", "YYYY/DDD"),
        Ok((at(2026, 12, 5, 0, 0, 0, 0), None))
    );
    assert_eq!(
        read("2026-12-05 10:00 +02:00", "YYYY-MM-DD HH24:MI TZ"),
        Ok((at(2026, 12, 5, 10, 0, 0, 0), Some(7200)))
    );
    assert_eq!(
        read("20261205", "YYYYMMDD"),
        Ok((at(2026, 12, 5, 0, 0, 0, 0), None))
    );
}

#[test]
fn to_timestamp_names_the_pattern_on_bad_input() {
    let err = Pattern::new("YYYY-MM-DD").read("2026-xx-05").unwrap_err();
    assert_eq!(err.pattern, "YYYY-MM-DD");
    assert!(err.message.contains("\"MM\""), "{err}");
    let err = Pattern::new("YYYY-MM-DD").read("2026-13-05").unwrap_err();
    assert!(err.message.contains("out of range"), "{err}");
    let err = Pattern::new("HH12:MI").read("13:00").unwrap_err();
    assert!(err.message.contains("12-hour"), "{err}");
    assert!(err.to_string().contains("HH12:MI"), "{err}");
}

#[test]
fn non_ascii_text_is_literal_both_ways() {
    let t = Utc.from_utc_datetime(&at(2026, 12, 5, 17, 7, 9, 0));
    assert_eq!(Pattern::new("aé DD – Mé").format(&t), "aé 05 – Mé");
    assert_eq!(
        Pattern::new("DD.MM.YYYY à HH24h").read("05.12.2026 à 17h"),
        Ok((at(2026, 12, 5, 17, 0, 0, 0), None))
    );
    assert!(Pattern::new("YYYY-MM-DD").read("2026-é-05").is_err());
    assert!(Pattern::new("Mon").read("é").is_err());
    assert!(Pattern::new("TZ").read("+é").is_err());
}

async fn one(sql: &str) -> Result<String> {
    let ctx = SessionContext::new();
    crate::register_all(&ctx);
    let batches = ctx.sql(sql).await?.collect().await?;
    Ok(pretty_format_batches(&batches)?.to_string())
}

#[tokio::test]
async fn sql_uses_postgres_templates_and_delegates_chrono_formats() -> Result<()> {
    let text = one(
        "SELECT to_timestamp('2026-12-05 05:27:19.000000', 'YYYY-MM-DD HH24:MI:SS.US') AS pg, \
                to_timestamp('2026-12-05 05:27:19', '%Y-%m-%d %H:%M:%S') AS chrono, \
                to_timestamp('2026-12-05T05:27:19Z') AS one",
    )
    .await?;
    assert!(
        text.contains("| 2026-12-05T05:27:19 | 2026-12-05T05:27:19 | 2026-12-05T05:27:19 |"),
        "{text}"
    );
    let text = one(
        "SELECT to_char(to_timestamp('2026-12-05 05:27:19', 'YYYY-MM-DD HH24:MI:SS'), 'DD Mon YYYY HH12AM') AS pg, \
                to_char(to_timestamp('2026-12-05 05:27:19', 'YYYY-MM-DD HH24:MI:SS'), '%d/%m/%Y') AS chrono, \
                to_char(CAST('2026-12-05' AS DATE), 'YYYY-MM-DD') AS d",
    )
    .await?;
    assert!(
        text.contains("| 05 Dec 2026 05AM | 05/12/2026 | 2026-12-05 |"),
        "{text}"
    );
    Ok(())
}

#[tokio::test]
async fn sql_errors_are_format_errors() {
    let err = one("SELECT to_timestamp('not a date', 'YYYY-MM-DD')")
        .await
        .unwrap_err();
    let root = err.find_root();
    let DataFusionError::External(inner) = root else {
        panic!("expected an external error, got {root:?}");
    };
    let format = inner.downcast_ref::<FormatError>().expect("a FormatError");
    assert_eq!(format.pattern, "YYYY-MM-DD");
}

#[tokio::test]
async fn rebuilding_the_session_state_keeps_the_postgres_functions() -> Result<()> {
    // A rebuilt state registers every function again, aliases included, in hash order.
    let ctx = SessionContext::new();
    crate::register_all(&ctx);
    let state = datafusion::execution::SessionStateBuilder::new_from_existing(ctx.state()).build();
    let ctx = SessionContext::new_with_state(state);
    let batches = ctx
        .sql("SELECT to_char(CAST('2026-12-05' AS DATE), 'YYYY/MM') AS a, date_format(CAST('2026-12-05' AS DATE), 'DD') AS b")
        .await?
        .collect()
        .await?;
    let text = pretty_format_batches(&batches)?.to_string();
    assert!(text.contains("| 2026/12 | 05 |"), "{text}");
    Ok(())
}
