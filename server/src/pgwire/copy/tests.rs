use pgwire::error::PgWireError;

use super::*;

fn parse(sql: &str) -> Statement {
    Parser::parse_sql(&PostgreSqlDialect {}, sql)
        .unwrap()
        .remove(0)
}

fn format_of(sql: &str) -> CopyFormat {
    match classify(&parse(sql)) {
        Some(Ok((_, format))) => format,
        other => panic!("{sql}: {other:?}"),
    }
}

fn code_of(sql: &str) -> String {
    match classify(&parse(sql)) {
        Some(Err(PgWireError::UserError(info))) => info.code,
        other => panic!("{sql}: expected an error, got {other:?}"),
    }
}

#[test]
fn options_in_both_spellings() {
    let csv = format_of("COPY (SELECT 1) TO STDOUT (FORMAT csv, HEADER)");
    assert!(csv.csv && csv.header);
    assert_eq!((csv.delimiter, csv.null.as_str()), (',', ""));
    assert_eq!(format_of("COPY logs TO STDOUT WITH CSV HEADER"), csv);
    let text = format_of("COPY logs TO STDOUT");
    assert_eq!(text, CopyFormat::default());
    assert_eq!(
        format_of("COPY logs TO STDOUT (DELIMITER '|')").delimiter,
        '|'
    );
}

#[test]
fn a_table_becomes_a_select() {
    let Some(Ok((query, _))) = classify(&parse("COPY logs (timestamp, message) TO STDOUT")) else {
        panic!("not classified");
    };
    assert_eq!(query.to_string(), "SELECT timestamp, message FROM logs");
}

#[test]
fn writes_and_server_files_are_refused() {
    assert_eq!(
        code_of("COPY logs FROM STDIN"),
        sqlstate::READ_ONLY_SQL_TRANSACTION
    );
    assert_eq!(
        code_of("COPY logs TO '/tmp/x.csv'"),
        sqlstate::INSUFFICIENT_PRIVILEGE
    );
    assert_eq!(
        code_of("COPY logs TO PROGRAM 'cat'"),
        sqlstate::INSUFFICIENT_PRIVILEGE
    );
    assert_eq!(
        code_of("COPY logs TO STDOUT (FORMAT binary)"),
        sqlstate::FEATURE_NOT_SUPPORTED
    );
    assert!(classify(&parse("SELECT 1")).is_none());
}

#[test]
fn values_are_escaped_for_their_format() {
    let values: [Option<&[u8]>; 4] = [Some(b"a,b"), None, Some(b""), Some(b"say \"hi\"\n")];
    let csv = format_of("COPY logs TO STDOUT (FORMAT csv)");
    assert_eq!(
        String::from_utf8(csv.line(values.into_iter())).unwrap(),
        "\"a,b\",,\"\",\"say \"\"hi\"\"\n\"\n"
    );
    let text = CopyFormat::default();
    let values: [Option<&[u8]>; 3] = [Some(b"a\tb\\c"), None, Some(b"line\nbreak")];
    assert_eq!(
        String::from_utf8(text.line(values.into_iter())).unwrap(),
        "a\\tb\\\\c\t\\N\tline\\nbreak\n"
    );
}
