//! Smoke tests of the local services started by `scripts/services up` (run by `scripts/test`):
//! one real round trip per service with the Rust client LogSphere uses. They fail, never skip,
//! when the endpoint env var is missing.

use std::time::Duration;

use logsphere_tests::services::{service_endpoint, unique_name};

const TIMEOUT: Duration = Duration::from_secs(60);

#[tokio::test]
async fn kafka_produce_and_consume() {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::consumer::{Consumer, StreamConsumer};
    use rdkafka::producer::{FutureProducer, FutureRecord};
    use rdkafka::{ClientConfig, Message};

    let bootstrap = service_endpoint("LOGSPHERE_TEST_KAFKA");
    let topic = unique_name("logsphere_it");

    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .unwrap_or_else(|e| panic!("kafka admin client for {bootstrap}: {e}"));
    let created = admin
        .create_topics(
            &[NewTopic::new(&topic, 1, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(TIMEOUT)),
        )
        .await
        .unwrap_or_else(|e| panic!("kafka at {bootstrap}: create topic {topic}: {e}"));
    for result in created {
        result.unwrap_or_else(|(t, e)| panic!("kafka at {bootstrap}: create topic {t}: {e}"));
    }

    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("message.timeout.ms", "30000")
        .create()
        .unwrap_or_else(|e| panic!("kafka producer for {bootstrap}: {e}"));
    let payload = format!("hello from {topic}");
    let delivery = producer
        .send(
            FutureRecord::to(&topic).key("k1").payload(&payload),
            TIMEOUT,
        )
        .await
        .unwrap_or_else(|(e, _)| panic!("kafka at {bootstrap}: produce to {topic}: {e}"));
    assert_eq!(delivery.partition, 0);

    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", format!("{topic}_group"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap_or_else(|e| panic!("kafka consumer for {bootstrap}: {e}"));
    consumer
        .subscribe(&[&topic])
        .unwrap_or_else(|e| panic!("kafka at {bootstrap}: subscribe to {topic}: {e}"));
    let msg = tokio::time::timeout(TIMEOUT, consumer.recv())
        .await
        .unwrap_or_else(|_| {
            panic!("kafka at {bootstrap}: no message on {topic} within {TIMEOUT:?}")
        })
        .unwrap_or_else(|e| panic!("kafka at {bootstrap}: consume from {topic}: {e}"));
    assert_eq!(msg.key(), Some(&b"k1"[..]));
    assert_eq!(msg.payload(), Some(payload.as_bytes()));
    assert_eq!(msg.offset(), delivery.offset);

    let _ = admin.delete_topics(&[&topic], &AdminOptions::new()).await;
}

#[tokio::test]
async fn cassandra_keyspace_table_rows() {
    use scylla::client::session::Session;
    use scylla::client::session_builder::SessionBuilder;

    let node = service_endpoint("LOGSPHERE_TEST_CASSANDRA");
    let ks = unique_name("logsphere_it");

    let connected =
        tokio::time::timeout(TIMEOUT, SessionBuilder::new().known_node(&node).build()).await;
    let Ok(connected) = connected else {
        panic!("cassandra at {node}: no session within {TIMEOUT:?}")
    };
    let session: Session =
        connected.unwrap_or_else(|e| panic!("cassandra at {node}: connect: {e}"));
    let run = |cql: String| {
        let session = &session;
        let node = &node;
        async move {
            session
                .query_unpaged(cql.as_str(), ())
                .await
                .unwrap_or_else(|e| panic!("cassandra at {node}: `{cql}`: {e}"))
        }
    };

    run(format!(
        "CREATE KEYSPACE {ks} WITH replication = {{'class': 'SimpleStrategy', 'replication_factor': 1}}"
    ))
    .await;
    run(format!(
        "CREATE TABLE {ks}.events (host text, seq int, msg text, PRIMARY KEY (host, seq))"
    ))
    .await;
    let insert = format!("INSERT INTO {ks}.events (host, seq, msg) VALUES (?, ?, ?)");
    for (seq, msg) in [(1, "started"), (2, "listening"), (3, "stopped")] {
        session
            .query_unpaged(insert.as_str(), ("web-1", seq, msg))
            .await
            .unwrap_or_else(|e| panic!("cassandra at {node}: insert row {seq}: {e}"));
    }

    let result = session
        .query_unpaged(
            format!("SELECT seq, msg FROM {ks}.events WHERE host = ?"),
            ("web-1",),
        )
        .await
        .unwrap_or_else(|e| panic!("cassandra at {node}: select: {e}"))
        .into_rows_result()
        .unwrap_or_else(|e| panic!("cassandra at {node}: select returned no rows result: {e}"));
    let rows: Vec<(i32, String)> = result
        .rows::<(i32, String)>()
        .unwrap_or_else(|e| panic!("cassandra at {node}: row types: {e}"))
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| panic!("cassandra at {node}: decoding rows: {e}"));
    assert_eq!(
        rows,
        vec![
            (1, "started".to_string()),
            (2, "listening".to_string()),
            (3, "stopped".to_string())
        ]
    );

    run(format!("DROP KEYSPACE {ks}")).await;
}

#[tokio::test]
async fn hdfs_write_list_read_delete() {
    use hdfs_native_object_store::HdfsObjectStoreBuilder;
    use object_store::path::Path;
    use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

    let url = service_endpoint("LOGSPHERE_TEST_HDFS");
    let dir = Path::from(format!("logsphere-it/{}", unique_name("hdfs")));
    let file = dir.clone().join("part-0.log");
    let body = format!("line 1 of {dir}\nline 2\n");

    let store = HdfsObjectStoreBuilder::new()
        .with_url(&url)
        .build()
        .unwrap_or_else(|e| panic!("hdfs at {url}: client: {e}"));

    store
        .put(&file, PutPayload::from(body.clone().into_bytes()))
        .await
        .unwrap_or_else(|e| panic!("hdfs at {url}: write {file}: {e}"));

    let listed = store
        .list_with_delimiter(Some(&dir))
        .await
        .unwrap_or_else(|e| panic!("hdfs at {url}: list {dir}: {e}"));
    let names: Vec<&Path> = listed.objects.iter().map(|o| &o.location).collect();
    assert_eq!(names, vec![&file], "listing of {dir}");
    assert_eq!(listed.objects[0].size, body.len() as u64);

    let read = store
        .get(&file)
        .await
        .unwrap_or_else(|e| panic!("hdfs at {url}: open {file}: {e}"))
        .bytes()
        .await
        .unwrap_or_else(|e| panic!("hdfs at {url}: read {file}: {e}"));
    assert_eq!(read.as_ref(), body.as_bytes());

    store
        .delete(&file)
        .await
        .unwrap_or_else(|e| panic!("hdfs at {url}: delete {file}: {e}"));
    match store.head(&file).await {
        Err(object_store::Error::NotFound { .. }) => {}
        other => panic!("hdfs at {url}: {file} should be gone after delete, got {other:?}"),
    }
}
