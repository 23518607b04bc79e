//! Interval text to `Duration`.

use std::time::Duration;

use crate::duration::parse_duration;

#[test]
fn spellings_of_a_duration() {
    let cases = [
        ("5 minutes", 300_000),
        ("1 hour", 3_600_000),
        ("10 seconds", 10_000),
        ("2m", 120_000),
        ("10s", 10_000),
        ("250ms", 250),
        ("1h30m", 5_400_000),
        ("1 hour 30 minutes", 5_400_000),
        ("1 day, 2 hours", 93_600_000),
        ("1.5s", 1_500),
        (".5 s", 500),
        ("1 WEEK", 604_800_000),
        ("0s", 0),
        ("  3 Secs ", 3_000),
    ];
    for (text, millis) in cases {
        assert_eq!(
            parse_duration(text),
            Ok(Duration::from_millis(millis)),
            "{text}"
        );
    }
}

#[test]
fn what_is_refused() {
    for (text, why) in [
        ("", "empty"),
        ("-5s", "must not be negative"),
        ("5", "5 has no unit"),
        ("5 parsecs", "unknown unit 'parsecs'"),
        ("2 months", "months has no fixed length"),
        ("1y", "y has no fixed length"),
        ("1.2.3s", "bad number 1.2.3"),
        ("s", "expected a number at 's'"),
        ("99999999999999999999999 weeks", "too large"),
    ] {
        let err = parse_duration(text).unwrap_err();
        assert!(err.contains(why), "{text}: {err}");
    }
}
