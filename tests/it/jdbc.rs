//! pgjdbc's `DatabaseMetaData` (what DBeaver, DataGrip and Metabase's JDBC path call):
//! `tests/clients/jdbc/pom.xml` fetches the driver from Maven Central with `mvn`
//! (`LOGSPHERE_MVN`), `javac` compiles `MetaProbe.java`, and the probe's output is asserted.

use std::path::{Path, PathBuf};
use std::process::Command;

use logsphere_tests::Server;

fn run(cmd: &mut Command, what: &str) -> String {
    logsphere_tests::run_ok(cmd, what, "Java 17+ and Maven")
}

/// The driver jars and the compiled probe, under the cargo target dir.
fn probe_classpath() -> String {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("clients/jdbc");
    let work = Path::new(env!("CARGO_TARGET_TMPDIR")).join("jdbc");
    let lib = work.join("lib");
    let classes = work.join("classes");
    let mvn = std::env::var("LOGSPHERE_MVN").unwrap_or_else(|_| "mvn".to_owned());
    run(
        Command::new(mvn)
            .args(["-q", "-B", "-f"])
            .arg(src.join("pom.xml"))
            .arg("org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy-dependencies")
            .arg(format!("-DoutputDirectory={}", lib.display())),
        "mvn copy-dependencies",
    );
    let classpath = format!("{}/*", lib.display());
    run(
        Command::new("javac")
            .arg("-d")
            .arg(&classes)
            .arg("-cp")
            .arg(&classpath)
            .arg(src.join("MetaProbe.java")),
        "javac MetaProbe.java",
    );
    format!("{}:{classpath}", classes.display())
}

#[test]
fn pgjdbc_database_metadata() {
    let classpath = probe_classpath();
    let server = Server::start();
    let body =
        "{\"ts\":\"2026-11-24T10:00:00Z\",\"level\":\"error\",\"msg\":\"a\",\"host\":\"web-1\"}\n";
    let (status, text) = server.post(body.as_bytes(), None).unwrap();
    assert_eq!(status, 200, "{text}");
    let out = run(
        Command::new("java")
            .arg("-cp")
            .arg(&classpath)
            .arg("MetaProbe")
            .arg(server.pg_port().to_string()),
        "java MetaProbe",
    );
    println!("{out}");
    let line = |name: &str| {
        out.lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no {name} line in:\n{out}"))
            .to_owned()
    };
    let log = server.log();
    let expect = |name: &str, want: &str| {
        assert_eq!(
            line(name),
            format!("{name} ok {want}"),
            "--- server log ---\n{log}"
        );
    };
    expect("getSchemas", "pg_catalog,public");
    expect(
        "getTables",
        "alert_events,alerts,continuous_queries,dead_letters,logs,logs_cold,logs_hot,promoted_fields,tiering",
    );
    expect(
        "getColumns",
        "timestamp,log_level,message,source,topic,attributes,ingest_time",
    );
    expect("getPrimaryKeys", "rows=0");
    // getTypeInfo: one row per pg_type entry that is not a table's row type (its query has
    // a correlated scalar subquery over pg_class), java.sql.Types codes as pgjdbc computes
    // them (BIT -7, SMALLINT 5, INTEGER 4, BIGINT -5, NUMERIC 2, DOUBLE 8, VARCHAR 12,
    // TIMESTAMP 93, ARRAY 2003, OTHER 1111) from `typinput = 'array_in'::regproc` and
    // `typtype`, the serial pseudo-types, rows sorted by DATA_TYPE.
    // Each entry: NAME:DATA_TYPE:PRECISION:LITERAL_PREFIX:AUTO_INCREMENT:UNSIGNED_ATTRIBUTE.
    let type_info = line("getTypeInfo");
    let want = [
        "bool:-7:0:':false:true",
        "int2:5:0:null:false:false",
        "int4:4:0:null:false:false",
        "int8:-5:0:null:false:false",
        "bigserial:-5:0:null:true:false",
        "numeric:2:1000:null:false:false",
        "float8:8:0:null:false:false",
        "text:12:0:':false:true",
        "varchar:12:10485760:':false:true",
        "timestamptz:93:6:':false:true",
        "_text:2003:0:':false:true",
        "json:1111:0:':false:true",
    ]
    .join(" ");
    let rest = type_info
        .strip_prefix(&format!("getTypeInfo ok {want} rows="))
        .unwrap_or_else(|| panic!("{type_info}\n--- server log ---\n{log}"));
    let (rows, tail) = rest.split_once(' ').unwrap_or((rest, ""));
    let rows: usize = rows.parse().unwrap_or(0);
    assert!(rows > 300, "{type_info}");
    // Table row types (here pg_class's, whose typrelid is not a composite type's) are left
    // out, as in PostgreSQL.
    assert_eq!(tail, "sorted=true has_pg_class=false", "{type_info}");
}
