use super::*;

#[test]
fn example_file_parses_and_validates() {
    let text = include_str!("../../../logsphere.example.toml");
    let cfg = Config::from_toml(text).expect("example config parses");
    cfg.validate().expect("example config is valid");
}

#[test]
fn unknown_key_is_named() {
    let err = Config::from_toml("[pg]\nlisten_addr = \"127.0.0.1:1\"\n").unwrap_err();
    assert!(format!("{err:#}").contains("listen_addr"), "{err:#}");
}

#[test]
fn bad_address_is_named() {
    let err = Config::from_toml("[http]\nlisten = \"nope\"\n").unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("listen"), "{msg}");
}

#[test]
fn public_listen_without_users_is_refused() {
    let cfg = Config::from_toml("[pg]\nlisten = \"0.0.0.0:5433\"\n").unwrap();
    let msg = format!("{:#}", cfg.validate().unwrap_err());
    assert!(
        msg.contains("pg.listen") && msg.contains("pg.users"),
        "{msg}"
    );
}

#[test]
fn scroll_cursor_memory_defaults_and_must_be_positive() {
    assert_eq!(Config::default().pg.query_nice, 10);
    let cfg = Config::from_toml("[pg]\nquery_nice = 20\n").unwrap();
    let msg = cfg.validate().unwrap_err().to_string();
    assert!(msg.contains("pg.query_nice"), "{msg}");
    assert_eq!(Config::default().pg.scroll_cursor_memory_mb, 256);
    let cfg = Config::from_toml("[pg]\nscroll_cursor_memory_mb = 0\n").unwrap();
    let msg = format!("{:#}", cfg.validate().unwrap_err());
    assert!(msg.contains("pg.scroll_cursor_memory_mb"), "{msg}");
}

fn cluster_error(toml: &str) -> String {
    let cfg = Config::from_toml(toml).expect("parses");
    format!("{:#}", cfg.validate().expect_err("refused"))
}

const CLUSTER: &str = "[cold]\nurl = \"hdfs://127.0.0.1:9000/logsphere\"\n\
    [kafka]\nbrokers = \"127.0.0.1:9092\"\n[cassandra]\ncontact_points = [\"127.0.0.1:9042\"]\n";

#[test]
fn kafka_and_cassandra_switch_on_cluster_mode() {
    let cfg = Config::from_toml(CLUSTER).expect("parses");
    cfg.validate().expect("valid");
    let c = cfg.cluster_mode().expect("cluster mode");
    assert_eq!(c.kafka.brokers, "127.0.0.1:9092");
    assert_eq!(c.kafka.topics, vec!["logs".to_string()]);
    assert_eq!(c.kafka.group, "logsphere");
    assert_eq!(
        c.cassandra.contact_points,
        vec!["127.0.0.1:9042".to_string()]
    );
    assert!(!c.node_id.is_empty());
    assert_eq!(c.ingest_key_lease, std::time::Duration::from_secs(45));
    assert_eq!(c.ingest_key_retention, std::time::Duration::from_secs(900));
    assert!(
        Config::default().cluster_mode().is_none(),
        "embedded by default"
    );
}

#[test]
fn half_a_cluster_config_names_the_missing_key() {
    let msg = cluster_error("[kafka]\nbrokers = \"k:9092\"\n");
    assert!(msg.contains("cassandra.contact_points"), "{msg}");
    let msg = cluster_error("[cassandra]\ncontact_points = [\"c:9042\"]\n");
    assert!(msg.contains("kafka.brokers"), "{msg}");
}

#[test]
fn bad_cluster_values_name_their_key() {
    for (extra, key) in [
        (
            "[cassandra]\nwrite_consistency = \"MOSTLY\"\n",
            "cassandra.write_consistency",
        ),
        (
            "[cassandra]\nread_consistency = \"ANY\"\n",
            "cassandra.read_consistency",
        ),
        (
            "[cassandra]\nkeyspace = \"1bad-name\"\n",
            "cassandra.keyspace",
        ),
        (
            "[cassandra]\nreplication_strategy = \"NetworkTopologyStrategy\"\n",
            "cassandra.datacenter",
        ),
        (
            "[cassandra]\nreplication_factor = 0\n",
            "cassandra.replication_factor",
        ),
        ("[cassandra]\nttl_secs = 10\n", "cassandra.ttl_secs"),
        (
            "[kafka]\nauto_offset_reset = \"middle\"\n",
            "kafka.auto_offset_reset",
        ),
        ("[kafka]\ntopics = []\n", "kafka.topics"),
        (
            "[kafka]\nfetch_queue_kbytes = 1\n",
            "kafka.fetch_queue_kbytes",
        ),
        ("[kafka]\ningest_topic = \"^re.*\"\n", "kafka.ingest_topic"),
        ("[kafka]\nformat = \"yaml\"\n", "kafka.format"),
        ("[cluster]\nnode_id = \" \"\n", "cluster.node_id"),
        (
            "[cluster]\ningest_key_lease_secs = 1\n",
            "cluster.ingest_key_lease_secs",
        ),
        (
            "[cluster]\ningest_key_lease_secs = 60\ningest_key_retention_secs = 30\n",
            "cluster.ingest_key_retention_secs",
        ),
    ] {
        // The same table twice is a TOML error: merge the extra keys into CLUSTER's tables.
        let toml = merge(CLUSTER, extra);
        let msg = cluster_error(&toml);
        assert!(msg.contains(key), "{extra:?}: {msg}");
    }
    let err = Config::from_toml("[kafka]\nbrokerz = \"x\"\n").unwrap_err();
    assert!(format!("{err:#}").contains("brokerz"), "{err:#}");
}

/// `base` with the keys of `extra` added under their tables.
fn merge(base: &str, extra: &str) -> String {
    let mut v: toml::Table = toml::from_str(base).expect("base");
    let e: toml::Table = toml::from_str(extra).expect("extra");
    for (table, keys) in e {
        let slot = v
            .entry(table)
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if let (Some(slot), toml::Value::Table(keys)) = (slot.as_table_mut(), keys) {
            slot.extend(keys);
        }
    }
    toml::to_string(&v).expect("serialize")
}

#[test]
fn cluster_mode_needs_a_cold_url() {
    let toml = "[kafka]\nbrokers = \"127.0.0.1:9092\"\n[cassandra]\ncontact_points = [\"127.0.0.1:9042\"]\n";
    let msg = cluster_error(toml);
    assert!(msg.contains("cold.url"), "{msg}");
}

#[test]
fn cold_url_scheme_and_timeout_are_checked() {
    let msg = cluster_error("[cold]\nurl = \"s3://bucket/logs\"\n");
    assert!(msg.contains("cold.url") && msg.contains("s3://"), "{msg}");
    let msg = cluster_error("[cold]\nurl = \"/var/lib/cold\"\n");
    assert!(msg.contains("cold.url"), "{msg}");
    let msg = cluster_error("[cold]\ntimeout_secs = 0\n");
    assert!(msg.contains("cold.timeout_secs"), "{msg}");
    let cfg = Config::from_toml("[cold]\nurl = \"file:///tmp/cold\"\n").expect("parses");
    cfg.validate().expect("a file URL is valid");
}

#[test]
fn compaction_keys_have_defaults_and_bad_values_are_named() {
    let cfg = Config::from_toml("").unwrap();
    let c = cfg.storage.compaction();
    assert_eq!(c.policy.min_files, 4);
    assert_eq!(c.policy.target_bytes, 256 * 1024 * 1024);
    assert_eq!(c.retired_grace.as_secs(), 300);
    let cfg = Config::from_toml(
        "[storage]\ncompact_min_files = 8\ncompact_target_bytes = 67108864\n\
         retired_grace_secs = 10\ncompact_interval_secs = 0\n",
    )
    .unwrap();
    cfg.validate().unwrap();
    let c = cfg.storage.compaction();
    assert_eq!(
        (c.policy.min_files, c.policy.target_bytes),
        (8, 64 * 1024 * 1024)
    );
    assert!(c.interval.is_zero());
    for (toml, key) in [
        ("compact_min_files = 1", "storage.compact_min_files"),
        (
            "compact_min_files = 10\ncompact_max_files = 5",
            "storage.compact_max_files",
        ),
        (
            "compact_target_bytes = 1000",
            "storage.compact_target_bytes",
        ),
        ("compact_max_rows = 0", "storage.compact_max_rows"),
        (
            "retired_grace_secs = 99999999",
            "storage.retired_grace_secs",
        ),
    ] {
        let cfg = Config::from_toml(&format!("[storage]\n{toml}\n")).unwrap();
        let msg = format!("{:#}", cfg.validate().unwrap_err());
        assert!(msg.contains(key), "{toml}: {msg}");
    }
    let err = Config::from_toml("[storage]\ncompact_min_file = 3\n").unwrap_err();
    assert!(format!("{err:#}").contains("compact_min_file"));
}

#[test]
fn syslog_is_off_by_default_and_bad_values_are_named() {
    let cfg = Config::default();
    assert_eq!((cfg.syslog.tcp_listen, cfg.syslog.udp_listen), (None, None));
    let err = Config::from_toml("[syslog]\ntcp_listen = \"localhost:514\"\n").unwrap_err();
    assert!(format!("{err:#}").contains("tcp_listen"), "{err:#}");
    let err = Config::from_toml("[syslog]\nudp_port = 514\n").unwrap_err();
    assert!(format!("{err:#}").contains("udp_port"), "{err:#}");
    for (toml, key) in [
        ("[syslog]\nbatch_ms = 0\n", "syslog.batch_ms"),
        ("[syslog]\nmax_connections = 0\n", "syslog.max_connections"),
        (
            "[syslog]\ntcp_listen = \"127.0.0.1:8080\"\n",
            "syslog.tcp_listen",
        ),
    ] {
        let cfg = Config::from_toml(toml).expect("parses");
        let msg = format!("{:#}", cfg.validate().expect_err(toml));
        assert!(msg.contains(key), "{toml}: {msg}");
    }
    // Cluster mode: the listeners' messages say they are syslog, whatever kafka.format
    // reads other producers' messages as.
    for format in ["json", "syslog"] {
        let on = CLUSTER.replace(
            "[cassandra]",
            &format!("format = \"{format}\"\n[cassandra]"),
        ) + "[syslog]\nudp_listen = \"127.0.0.1:5514\"\n";
        Config::from_toml(&on)
            .expect("parses")
            .validate()
            .expect("syslog in cluster mode");
    }
}

#[test]
fn fields_keys_have_defaults_and_bad_values_are_named() {
    let cfg = Config::from_toml("").unwrap();
    let f = cfg.fields.to_engine();
    assert!(f.promote);
    assert_eq!((f.max_promoted, f.min_share), (32, 0.5));
    let cfg = Config::from_toml(
        "[fields]\npromote = false\nmax_promoted = 8\nmin_share = 0.9\n\
         never = [\"password\"]\nalways = [\"trace_id\"]\n",
    )
    .unwrap();
    cfg.validate().unwrap();
    let f = cfg.fields.to_engine();
    assert!(!f.promote);
    assert_eq!(
        (f.max_promoted, f.never.len(), f.always[0].as_str()),
        (8, 1, "trace_id")
    );
    for (toml, key) in [
        ("min_share = 0", "fields.min_share"),
        ("min_share = 1.5", "fields.min_share"),
        ("max_promoted = 5000", "fields.max_promoted"),
        ("never = [\"\"]", "fields.never"),
        ("always = [\"message\"]", "fields.always"),
        ("never = [\"a\"]\nalways = [\"a\"]", "fields.always"),
    ] {
        let cfg = Config::from_toml(&format!("[fields]\n{toml}\n")).unwrap();
        let msg = format!("{:#}", cfg.validate().unwrap_err());
        assert!(msg.contains(key), "{toml}: {msg}");
    }
    let err = Config::from_toml("[fields]\nmax_promote = 3\n").unwrap_err();
    assert!(format!("{err:#}").contains("max_promote"));
}
