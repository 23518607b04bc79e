use std::borrow::Cow;

use serde_json::{Value, json};

use super::scan::civil_us;
use super::*;

/// 2026-12-07T05:00:00Z, the ingest time the yearless formats are read against.
const INGEST: i64 = 1_796_619_600_000_000;

fn ts(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32, us: u32) -> Option<i64> {
    civil_us(y, mo, d, h, mi, s, us)
}

/// Parses `line` as `format`: the row, and its attributes as JSON.
fn parse(format: Format, line: &str) -> Option<(Row<'_>, Value)> {
    let mut a = Attrs::default();
    let row = parse_line(format, line, INGEST, &mut a)?;
    let attrs: Value = serde_json::from_str(a.finish()).expect("attributes are JSON");
    Some((row, attrs))
}

#[test]
fn format_names_round_trip_and_bad_ones_are_named() {
    for f in Format::ALL {
        assert_eq!(f.name().parse::<Format>(), Ok(f));
    }
    let err = "yaml".parse::<Format>().unwrap_err();
    assert!(err.contains("\"yaml\"") && err.contains("logfmt"), "{err}");
}

#[test]
fn rfc5424_with_structured_data_and_escapes() {
    let line = r#"<165>1 2003-10-11T22:14:15.003Z mymachine.example.com evntslog 8710 ID47 [exampleSDID@32473 iut="3" eventSource="Appl\"ication\]" eventID="1011"][examplePriority@32473 class="high"] An application event"#;
    let (row, attrs) = parse(Format::Syslog, line).unwrap();
    assert_eq!(row.ts, ts(2003, 10, 11, 22, 14, 15, 3000));
    assert_eq!(row.level, "INFO"); // 165 = local4.notice
    assert_eq!(row.source, "mymachine.example.com");
    assert_eq!(row.message, "An application event");
    assert_eq!(
        attrs,
        json!({"facility": "local4", "program": "evntslog", "pid": 8710, "msgid": "ID47",
            "sd": {"exampleSDID@32473": {"iut": "3", "eventSource": "Appl\"ication]", "eventID": "1011"},
                   "examplePriority@32473": {"class": "high"}}})
    );
}

#[test]
fn rfc5424_nil_values_and_bom() {
    let (row, attrs) = parse(Format::Syslog, "<34>1 - - - - - - \u{feff}hello").unwrap();
    assert_eq!(row.ts, None, "NILVALUE time is the ingest time");
    assert_eq!(row.level, "CRITICAL");
    assert_eq!(row.source, "");
    assert_eq!(row.message, "hello");
    assert_eq!(attrs, json!({"facility": "auth"}));
    let (row, _) = parse(Format::Syslog, "<13>1 2026-01-02T03:04:05+01:00 h a - - -").unwrap();
    assert_eq!(row.ts, ts(2026, 1, 2, 2, 4, 5, 0));
    assert_eq!(row.message, "");
}

#[test]
fn rfc3164_with_and_without_host_pri_and_padded_day() {
    let (row, attrs) = parse(
        Format::Syslog,
        "<34>Oct  3 22:14:15 mymachine su[123]: 'su root' failed",
    )
    .unwrap();
    assert_eq!(row.ts, ts(2026, 10, 3, 22, 14, 15, 0));
    assert_eq!(row.level, "CRITICAL");
    assert_eq!(row.source, "mymachine");
    assert_eq!(row.message, "'su root' failed");
    assert_eq!(
        attrs,
        json!({"facility": "auth", "program": "su", "pid": 123})
    );

    let (row, attrs) = parse(Format::Syslog, "<13>Oct 13 22:14:15 su[9]: no host here").unwrap();
    assert_eq!(row.source, "");
    assert_eq!(row.message, "no host here");
    assert_eq!(attrs["program"], "su");

    let (row, attrs) = parse(
        Format::Syslog,
        "Jun 14 15:16:01 combo sshd(pam_unix)[19939]: auth failure ",
    )
    .unwrap();
    assert_eq!((row.source, row.level), ("combo", "INFO"));
    assert_eq!(row.message, "auth failure");
    assert_eq!(attrs, json!({"program": "sshd(pam_unix)", "pid": 19939}));

    let (row, attrs) = parse(
        Format::Syslog,
        "Jun 15 04:06:20 combo logrotate: ALERT exited",
    )
    .unwrap();
    assert_eq!(row.message, "ALERT exited");
    assert_eq!(attrs, json!({"program": "logrotate"}));

    let (row, _) = parse(
        Format::Syslog,
        "2026-11-24T13:00:00.5+01:00 web-1 nginx[7]: started",
    )
    .unwrap();
    assert_eq!(row.ts, ts(2026, 11, 24, 12, 0, 0, 500_000));
    assert_eq!(row.source, "web-1");

    // rsyslog's RSYSLOG_ForwardFormat of a message received as RFC 5424: no colon after
    // the tag, whose pid ends it; a bracketed word that is not a pid stays in the message.
    let (row, attrs) = parse(
        Format::Syslog,
        "<11>2026-12-07T12:56:02.162840+00:00 vm udpapp[77] over udp: done",
    )
    .unwrap();
    assert_eq!((row.source, row.level), ("vm", "ERROR"));
    assert_eq!(row.message, "over udp: done");
    assert_eq!(
        attrs,
        json!({"facility": "user", "program": "udpapp", "pid": 77})
    );
    let (row, attrs) = parse(Format::Syslog, "<11>Oct  3 22:14:15 vm [note] text").unwrap();
    assert_eq!(row.message, "[note] text");
    assert_eq!(attrs, json!({"facility": "user"}));
}

#[test]
fn yearless_dates_take_the_latest_year_not_far_ahead_of_ingest() {
    // Ingest is 2026-12-07: Dec 8 (a day ahead at most) is this year, Dec 10 last year.
    let (row, _) = parse(Format::Syslog, "Dec  8 01:00:00 h p: m").unwrap();
    assert_eq!(row.ts, ts(2026, 12, 8, 1, 0, 0, 0));
    let (row, _) = parse(Format::Syslog, "Dec 10 06:55:46 h p: m").unwrap();
    assert_eq!(row.ts, ts(2025, 12, 10, 6, 55, 46, 0));
    let (row, _) = parse(Format::Syslog, "Jan  1 00:00:00 h p: m").unwrap();
    assert_eq!(row.ts, ts(2026, 1, 1, 0, 0, 0, 0));
    // Feb 29 falls in the latest leap year before now.
    let (row, _) = parse(Format::Syslog, "Feb 29 12:00:00 h p: m").unwrap();
    assert_eq!(row.ts, ts(2024, 2, 29, 12, 0, 0, 0));
}

#[test]
fn access_combined_with_ipv6_client() {
    let line = r#"2001:db8::1 - frank [10/Oct/2000:13:55:36 -0700] "GET /a?b=\"c\" HTTP/1.0" 503 2326 "http://x/" "Mozilla/5.0 (X11)" 0.012"#;
    let (row, attrs) = parse(Format::Access, line).unwrap();
    assert_eq!(row.ts, ts(2000, 10, 10, 20, 55, 36, 0));
    assert_eq!(row.level, "ERROR");
    assert_eq!(row.message, r#"GET /a?b=\"c\" HTTP/1.0"#);
    assert_eq!(
        attrs,
        json!({"client": "2001:db8::1", "user": "frank", "method": "GET", "path": "/a?b=\\\"c\\\"",
            "protocol": "HTTP/1.0", "status": 503, "bytes": 2326, "referer": "http://x/",
            "user_agent": "Mozilla/5.0 (X11)", "extra": "0.012"})
    );
    let (row, attrs) = parse(
        Format::Access,
        r#"::1 - - [01/Jan/2026:00:00:00 +0000] "-" 400 -"#,
    )
    .unwrap();
    assert_eq!(row.level, "WARN");
    assert_eq!(
        attrs,
        json!({"client": "::1", "request": "-", "status": 400})
    );
    assert!(parse(Format::Access, "hello world").is_none());
}

#[test]
fn logfmt_quoted_values_escapes_and_bare_keys() {
    let line = r#"ts=2026-11-24T13:00:00Z level=warning msg="disk \"sda\" at 91%\n" host=web-1 disk=/dev/sda dry_run"#;
    let (row, attrs) = parse(Format::Logfmt, line).unwrap();
    assert_eq!(row.ts, ts(2026, 11, 24, 13, 0, 0, 0));
    assert_eq!((row.level, row.raw_level), ("WARN", Some("warning")));
    assert_eq!(
        row.message,
        Cow::<str>::Owned("disk \"sda\" at 91%\n".into())
    );
    assert_eq!(row.source, "web-1");
    assert_eq!(attrs, json!({"disk": "/dev/sda", "dry_run": true}));
    // Go kit: level first, epoch time, no msg → the line is the message.
    let (row, attrs) = parse(
        Format::Logfmt,
        "level=error ts=1700000000.5 caller=main.go:12",
    )
    .unwrap();
    assert_eq!(row.ts, Some(1_700_000_000_500_000));
    assert_eq!(row.level, "ERROR");
    assert_eq!(row.message, "level=error ts=1700000000.5 caller=main.go:12");
    assert_eq!(attrs, json!({"caller": "main.go:12"}));
    assert!(parse(Format::Logfmt, "just words here").is_none());
    assert!(parse(Format::Logfmt, r#"a="unterminated"#).is_none());
}

#[test]
fn application_layouts() {
    let (row, attrs) = parse(
        Format::App,
        "2015-10-18 18:01:47,978 INFO [main] org.apache.hadoop.MRAppMaster: Created MRAppMaster",
    )
    .unwrap();
    assert_eq!(row.ts, ts(2015, 10, 18, 18, 1, 47, 978_000));
    assert_eq!(row.message, "Created MRAppMaster");
    assert_eq!(
        attrs,
        json!({"thread": "main", "logger": "org.apache.hadoop.MRAppMaster"})
    );

    let (row, attrs) = parse(
        Format::App,
        "2015-07-29 17:41:44,747 - WARN  [QuorumPeer[myid=1]/0:0:0:0:0:0:0:0:2181:Learner@233] - Exception",
    )
    .unwrap();
    assert_eq!((row.level, row.message.as_ref()), ("WARN", "Exception"));
    assert_eq!(
        attrs,
        json!({"thread": "QuorumPeer[myid=1]/0:0:0:0:0:0:0:0:2181", "logger": "Learner", "line": 233})
    );

    let (row, attrs) = parse(
        Format::App,
        "2026-11-24 13:00:00,123 - myapp.db - WARNING - slow query",
    )
    .unwrap();
    assert_eq!((row.level, row.raw_level), ("WARN", Some("WARNING")));
    assert_eq!(row.message, "slow query");
    assert_eq!(attrs, json!({"logger": "myapp.db"}));

    let (row, attrs) = parse(Format::App, "ERROR:root:it broke").unwrap();
    assert_eq!((row.level, row.message.as_ref()), ("ERROR", "it broke"));
    assert_eq!(attrs, json!({"logger": "root"}));

    let (row, attrs) = parse(
        Format::App,
        "I1018 18:01:47.978000  1234 file.go:42] glog says hi",
    )
    .unwrap();
    assert_eq!(row.ts, ts(2026, 10, 18, 18, 1, 47, 978_000));
    assert_eq!((row.level, row.message.as_ref()), ("INFO", "glog says hi"));
    assert_eq!(
        attrs,
        json!({"thread": 1234, "file": "file.go", "line": 42})
    );

    let (row, attrs) = parse(
        Format::App,
        "17/06/09 20:10:40 INFO spark.SecurityManager: Changing view acls to: yarn",
    )
    .unwrap();
    assert_eq!(row.ts, ts(2017, 6, 9, 20, 10, 40, 0));
    assert_eq!(attrs, json!({"logger": "spark.SecurityManager"}));

    let (row, attrs) = parse(
        Format::App,
        "081109 203615 148 INFO dfs.DataNode: terminating",
    )
    .unwrap();
    assert_eq!(row.ts, ts(2008, 11, 9, 20, 36, 15, 0));
    assert_eq!(attrs, json!({"pid": 148, "logger": "dfs.DataNode"}));

    let (row, attrs) = parse(
        Format::App,
        "2017-05-16 00:00:00.008 25746 INFO nova.api.server [req-1 - - -] 10.0.0.1 \"GET /\"",
    )
    .unwrap();
    assert_eq!(row.message, "10.0.0.1 \"GET /\"");
    assert_eq!(
        attrs,
        json!({"pid": 25746, "logger": "nova.api.server", "context": "req-1 - - -"})
    );

    let (row, attrs) = parse(
        Format::App,
        "[Thu Jun 09 06:07:04.123456 2016] [core:error] [pid 1234:tid 5678] [client 1.2.3.4:80] denied",
    )
    .unwrap();
    assert_eq!(row.ts, ts(2016, 6, 9, 6, 7, 4, 123_456));
    assert_eq!(row.level, "ERROR");
    assert_eq!(row.message, "[client 1.2.3.4:80] denied");
    assert_eq!(
        attrs,
        json!({"module": "core", "pid": 1234, "tid": 5678, "client": "1.2.3.4:80"})
    );
}

#[test]
fn auto_picks_each_format_and_gives_up_cleanly() {
    let cases = [
        ("<13>Oct  3 12:00:00 h p[1]: m", "p"),
        ("Oct  3 12:00:00 h p[1]: m", "p"),
        (
            "1.2.3.4 - - [10/Oct/2000:13:55:36 +0000] \"GET / HTTP/1.1\" 200 1",
            "",
        ),
        ("level=info msg=hi", ""),
        ("2015-10-18 18:01:47,978 INFO [main] a.B: m", ""),
    ];
    for (line, program) in cases {
        let (_, attrs) = parse(Format::Auto, line).unwrap_or_else(|| panic!("{line}"));
        if !program.is_empty() {
            assert_eq!(attrs["program"], program, "{line}");
        }
    }
    let mut a = Attrs::default();
    assert!(parse_line(Format::Auto, "just a line of text", INGEST, &mut a).is_none());
    assert!(parse_line(Format::Auto, "2026 was a year", INGEST, &mut a).is_none());
    assert!(parse_line(Format::Text, "Oct  3 12:00:00 h p: m", INGEST, &mut a).is_none());
}
