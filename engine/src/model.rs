//! The data model: the Arrow schemas of `logs` and `dead_letters` (DESIGN.md §2).

use std::sync::{Arc, LazyLock};

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};

/// The time zone every timestamp column carries; `timestamptz` on the wire.
pub const UTC: &str = "UTC";

/// The type of every timestamp column: µs since the epoch, UTC (`timestamptz` on the wire).
pub fn ts_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some(UTC.into()))
}

/// Schema of the `logs` table, identical in the hot and the cold tier.
pub fn logs_schema() -> SchemaRef {
    static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
        Arc::new(Schema::new(vec![
            Field::new("timestamp", ts_type(), false),
            Field::new("log_level", DataType::Utf8, false),
            Field::new("message", DataType::Utf8, false),
            Field::new("source", DataType::Utf8, false),
            Field::new("topic", DataType::Utf8, false),
            Field::new("attributes", DataType::Utf8, false),
            Field::new("ingest_time", ts_type(), false),
        ]))
    });
    SCHEMA.clone()
}

/// The fixed columns of a `logs` batch (`logs_schema`), without the promoted fields that
/// follow them: what continuous queries see.
pub fn fixed_logs_columns(
    batch: &arrow::array::RecordBatch,
) -> Result<arrow::array::RecordBatch, arrow::error::ArrowError> {
    let fixed = logs_schema();
    let columns = batch
        .columns()
        .iter()
        .take(fixed.fields().len())
        .cloned()
        .collect();
    arrow::array::RecordBatch::try_new(fixed, columns)
}

/// Schema of the `dead_letters` table: records that could not become a row.
pub fn dead_letters_schema() -> SchemaRef {
    static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
        Arc::new(Schema::new(vec![
            Field::new("ingest_time", ts_type(), false),
            Field::new("origin", DataType::Utf8, false),
            Field::new("reason", DataType::Utf8, false),
            Field::new("raw", DataType::Binary, false),
            Field::new("raw_text", DataType::Utf8, false),
        ]))
    });
    SCHEMA.clone()
}
