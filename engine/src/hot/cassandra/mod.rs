//! The Cassandra hot tier (cluster mode). Being written.
