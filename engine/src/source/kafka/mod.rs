//! The Kafka source (cluster mode). Being written.
