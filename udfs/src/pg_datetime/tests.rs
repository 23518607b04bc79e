use chrono::NaiveDate;
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
    let t = at(2026, 12, 5, 17, 7, 9, 123_456);
    let utc = Zone::parse("UTC").unwrap().at(&t).1;
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
        assert_eq!(
            Pattern::new(template).format(&t, Some(&utc)),
            expected,
            "{template}"
        );
    }
    let (local, east) = Zone::parse("+05:30").unwrap().at(&t);
    assert_eq!(
        Pattern::new("HH24:MI TZ OF TZH TZM").format(&local, Some(&east)),
        "22:37 +05:30 +05:30 +05 30"
    );
    // A timestamp without a zone: TZ writes nothing, OF +00 (PostgreSQL's to_char(timestamp)).
    assert_eq!(Pattern::new("HH24:MI[TZ]OF").format(&t, None), "17:07[]+00");
}

#[test]
fn to_char_writes_the_zone_abbreviation_and_offset_of_the_instant() {
    // (zone, UTC instant, what PostgreSQL writes with that TimeZone)
    let cases = [
        (
            "Europe/Berlin",
            at(2026, 7, 1, 10, 0, 0, 0),
            "2026-07-01 12:00 CEST +02 cest",
        ),
        (
            "Europe/Berlin",
            at(2026, 1, 15, 10, 0, 0, 0),
            "2026-01-15 11:00 CET +01 cet",
        ),
        (
            "America/New_York",
            at(2026, 7, 1, 10, 0, 0, 0),
            "2026-07-01 06:00 EDT -04 edt",
        ),
        (
            "America/New_York",
            at(2026, 1, 15, 10, 0, 0, 0),
            "2026-01-15 05:00 EST -05 est",
        ),
        // The hour after the change to summer time (2026-03-29 01:00 UTC).
        (
            "Europe/Berlin",
            at(2026, 3, 29, 0, 59, 0, 0),
            "2026-03-29 01:59 CET +01 cet",
        ),
        (
            "Europe/Berlin",
            at(2026, 3, 29, 1, 0, 0, 0),
            "2026-03-29 03:00 CEST +02 cest",
        ),
        (
            "Asia/Kolkata",
            at(2026, 1, 15, 10, 0, 0, 0),
            "2026-01-15 15:30 IST +05:30 ist",
        ),
        (
            "UTC",
            at(2026, 1, 15, 10, 0, 0, 0),
            "2026-01-15 10:00 UTC +00 utc",
        ),
    ];
    let pattern = Pattern::new("YYYY-MM-DD HH24:MI TZ OF tz");
    for (name, utc, expected) in cases {
        let (local, zone) = Zone::parse(name).unwrap().at(&utc);
        assert_eq!(
            pattern.format(&local, Some(&zone)),
            expected,
            "{name} {utc}"
        );
    }
}

#[test]
fn local_times_the_clocks_skip_or_repeat_follow_postgresql() {
    let new_york = Zone::parse("America/New_York").unwrap();
    // Skipped (02:00 EST → 03:00 EDT): read as standard time, the offset before.
    assert_eq!(
        new_york.instant(&at(2018, 3, 11, 2, 30, 0, 0)),
        Some(at(2018, 3, 11, 7, 30, 0, 0))
    );
    // Repeated (02:00 EDT → 01:00 EST): the offset after, EST.
    assert_eq!(
        new_york.instant(&at(2018, 11, 4, 1, 30, 0, 0)),
        Some(at(2018, 11, 4, 6, 30, 0, 0))
    );
    assert_eq!(
        new_york.instant(&at(2018, 7, 1, 12, 0, 0, 0)),
        Some(at(2018, 7, 1, 16, 0, 0, 0))
    );
    assert!(Zone::parse("Mars/Olympus").is_none());
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
    assert_eq!(
        read("2026-12-05 10:00 -05:30", "YYYY-MM-DD HH24:MI TZH:TZM"),
        Ok((at(2026, 12, 5, 10, 0, 0, 0), Some(-(5 * 3600 + 1800))))
    );
    assert_eq!(
        read("2026-12-05 10:00 +03", "YYYY-MM-DD HH24:MI OF"),
        Ok((at(2026, 12, 5, 10, 0, 0, 0), Some(3 * 3600)))
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
    let t = at(2026, 12, 5, 17, 7, 9, 0);
    assert_eq!(Pattern::new("aé DD – Mé").format(&t, None), "aé 05 – Mé");
    assert_eq!(
        Pattern::new("DD.MM.YYYY à HH24h").read("05.12.2026 à 17h"),
        Ok((at(2026, 12, 5, 17, 0, 0, 0), None))
    );
    assert!(Pattern::new("YYYY-MM-DD").read("2026-é-05").is_err());
    assert!(Pattern::new("Mon").read("é").is_err());
    assert!(Pattern::new("TZ").read("+é").is_err());
}

async fn one(sql: &str) -> Result<String> {
    in_zone(None, sql).await
}

/// Runs `sql` with `datafusion.execution.time_zone` set to `zone` (the session's TimeZone).
async fn in_zone(zone: Option<&str>, sql: &str) -> Result<String> {
    let ctx = SessionContext::new();
    crate::register_all(&ctx);
    if let Some(zone) = zone {
        ctx.sql(&format!("SET datafusion.execution.time_zone = '{zone}'"))
            .await?
            .collect()
            .await?;
    }
    let batches = ctx.sql(sql).await?.collect().await?;
    Ok(pretty_format_batches(&batches)?.to_string())
}

#[tokio::test]
async fn both_functions_work_in_the_session_time_zone() -> Result<()> {
    // A value stored in UTC, written in the session's zone, as PostgreSQL's to_char does.
    let sql = "SELECT to_char(CAST('2026-07-01T10:00:00Z' AS TIMESTAMP) AT TIME ZONE 'UTC', 'HH24:MI TZ') AS a, \
               to_char(to_timestamp('2026-01-15 12:00', 'YYYY-MM-DD HH24:MI'), 'YYYY-MM-DD HH24:MI OF') AS b, \
               to_char(CAST('2026-07-01' AS DATE), 'YYYY-MM-DD HH24 TZ') AS c, \
               to_char(CAST('2026-07-01T10:00:00' AS TIMESTAMP), 'HH24:MI TZ|OF') AS d";
    let text = in_zone(Some("America/New_York"), sql).await?;
    assert!(
        text.contains("| 06:00 EDT | 2026-01-15 12:00 -05 | 2026-07-01 00 EDT | 10:00 |+00 |"),
        "{text}"
    );
    let text = in_zone(Some("Europe/Berlin"), sql).await?;
    assert!(
        text.contains("| 12:00 CEST | 2026-01-15 12:00 +01 | 2026-07-01 00 CEST | 10:00 |+00 |"),
        "{text}"
    );
    // The instant to_timestamp read: 12:00 in Berlin is 11:00 UTC.
    let text = in_zone(
        Some("Europe/Berlin"),
        "SELECT CAST(to_timestamp('2026-01-15 12:00', 'YYYY-MM-DD HH24:MI') AS BIGINT) / 1000000000 AS s",
    )
    .await?;
    assert!(text.contains("| 1768474800 |"), "{text}");
    Ok(())
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
