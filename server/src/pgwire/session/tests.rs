use super::*;

#[test]
fn set_reports_tracked_parameters_only() {
    let mut vars = SessionVars::new("alice");
    assert_eq!(
        vars.set("timezone", "Europe/Paris").unwrap(),
        Some(("TimeZone".to_owned(), "Europe/Paris".to_owned()))
    );
    assert_eq!(vars.get("TimeZone"), Some("Europe/Paris"));
    assert_eq!(vars.set("statement_timeout", "5s").unwrap(), None);
    assert_eq!(vars.set("my.custom", "1").unwrap(), None);
    assert_eq!(vars.get("my.custom"), Some("1"));
}

#[test]
fn read_only_parameters_cannot_be_set() {
    let mut vars = SessionVars::new("alice");
    assert!(vars.set("server_version", "9.6").is_err());
    assert_eq!(vars.get("server_version_num"), Some(SERVER_VERSION_NUM));
}

#[test]
fn reset_returns_to_startup_values() {
    let mut vars = SessionVars::new("alice");
    vars.set_startup("application_name", "psql").unwrap();
    vars.set("application_name", "other").unwrap();
    assert_eq!(
        vars.reset("application_name"),
        Some(("application_name".to_owned(), "psql".to_owned()))
    );
    vars.set("DateStyle", "ISO, DMY").unwrap();
    let reported = vars.reset_all();
    assert_eq!(
        reported,
        vec![("DateStyle".to_owned(), "ISO, MDY".to_owned())]
    );
}

#[test]
fn only_utf8_client_encoding() {
    let mut vars = SessionVars::new("alice");
    assert!(vars.set("client_encoding", "utf-8").is_ok());
    assert!(vars.set("client_encoding", "LATIN1").is_err());
}

#[test]
fn statement_timeout_reads_postgresql_units() {
    assert_eq!(super::timeout_ms("2s"), Some(2000));
    assert_eq!(super::timeout_ms("1500"), Some(1500));
    assert_eq!(super::timeout_ms(" 1min "), Some(60_000));
    assert_eq!(super::timeout_ms("0"), Some(0));
    assert_eq!(super::timeout_ms("soon"), None);
    assert_eq!(super::timeout_ms("-5s"), None);
    let mut vars = SessionVars::new("alice");
    vars.set("statement_timeout", "120000").unwrap();
    assert_eq!(vars.get("statement_timeout"), Some("2min"));
    vars.set("statement_timeout", "250ms").unwrap();
    assert_eq!(vars.get("statement_timeout"), Some("250ms"));
    assert!(vars.set("statement_timeout", "2 fortnights").is_err());
}

#[test]
fn time_zones_are_validated() {
    let mut vars = SessionVars::new("alice");
    vars.set("TimeZone", "Europe/Paris").unwrap();
    assert_eq!(vars.get("timezone"), Some("Europe/Paris"));
    vars.set("TimeZone", "-7").unwrap();
    assert_eq!(vars.get("timezone"), Some("-07:00"));
    vars.set("TimeZone", "+05:30").unwrap();
    assert!(vars.set("TimeZone", "Mars/Olympus").is_err());
    vars.set("TimeZone", "LOCAL").unwrap();
    assert_eq!(vars.get("timezone"), Some("UTC"));
}
