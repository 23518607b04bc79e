//! udfs
