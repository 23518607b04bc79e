//! `length(bytea)` and `octet_length(bytea)` count bytes, as in PostgreSQL. DataFusion's
//! `length` is `character_length`, which casts binary to text and fails on bytes that are
//! not UTF-8 (`raw` of a dead letter often is not); its `octet_length` refuses binary.
//! Text arguments still go to DataFusion's functions.

use std::sync::Arc;

use datafusion::arrow::compute::kernels::length::length;
use datafusion::arrow::datatypes::DataType;
use datafusion::common::{Result, ScalarValue};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, TypeSignature,
    Volatility,
};

/// A text length function that also takes bytes.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct ByteAwareLength {
    name: &'static str,
    builtin: ScalarUDF,
    signature: Signature,
    /// The builtin's other names too: left to it, a session rebuilt from the function
    /// registry could bring the builtin back under one of them.
    aliases: Vec<String>,
}

impl ByteAwareLength {
    /// `length` (and its alias `char_length`): characters of text, bytes of bytea.
    pub fn length() -> Self {
        Self::new(
            "length",
            datafusion::functions::unicode::character_length()
                .as_ref()
                .clone(),
        )
    }

    /// `octet_length`: bytes of text or bytea.
    pub fn octet_length() -> Self {
        Self::new(
            "octet_length",
            datafusion::functions::string::octet_length()
                .as_ref()
                .clone(),
        )
    }

    fn new(name: &'static str, builtin: ScalarUDF) -> Self {
        let types = vec![
            DataType::Utf8View,
            DataType::Utf8,
            DataType::LargeUtf8,
            DataType::Binary,
            DataType::LargeBinary,
            DataType::BinaryView,
        ];
        let aliases = std::iter::once(builtin.name().to_string())
            .chain(builtin.aliases().iter().cloned())
            .filter(|a| a != name)
            .collect();
        Self {
            name,
            builtin,
            aliases,
            signature: Signature::one_of(
                vec![TypeSignature::Uniform(1, types)],
                Volatility::Immutable,
            ),
        }
    }
}

fn is_binary(t: &DataType) -> bool {
    matches!(
        t,
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView
    )
}

impl ScalarUDFImpl for ByteAwareLength {
    fn name(&self) -> &str {
        self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn aliases(&self) -> &[String] {
        &self.aliases
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        match arg_types {
            [DataType::LargeBinary] => Ok(DataType::Int64),
            [t] if is_binary(t) => Ok(DataType::Int32),
            _ => self.builtin.return_type(arg_types),
        }
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let binary = args
            .arg_fields
            .first()
            .is_some_and(|f| is_binary(f.data_type()));
        if !binary {
            return self.builtin.invoke_with_args(args);
        }
        match &args.args[..] {
            [ColumnarValue::Array(a)] => {
                let a = if a.data_type() == &DataType::BinaryView {
                    datafusion::arrow::compute::cast(a, &DataType::Binary)?
                } else {
                    Arc::clone(a)
                };
                Ok(ColumnarValue::Array(length(&a)?))
            }
            [ColumnarValue::Scalar(s)] => {
                let n = match s {
                    ScalarValue::Binary(v) | ScalarValue::BinaryView(v) => {
                        ScalarValue::Int32(v.as_ref().map(|b| b.len() as i32))
                    }
                    ScalarValue::LargeBinary(v) => {
                        ScalarValue::Int64(v.as_ref().map(|b| b.len() as i64))
                    }
                    other => {
                        return datafusion::common::exec_err!(
                            "{}: unexpected argument {other:?}",
                            self.name
                        );
                    }
                };
                Ok(ColumnarValue::Scalar(n))
            }
            _ => datafusion::common::exec_err!("{} takes one argument", self.name),
        }
    }
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::{Array, Int32Array};
    use datafusion::prelude::SessionContext;

    use super::*;

    async fn one(sql: &str) -> Option<i32> {
        let ctx = SessionContext::new();
        crate::register_all(&ctx);
        let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
        let col = batches[0].column(0);
        let col = datafusion::arrow::compute::cast(col, &DataType::Int32).unwrap();
        let col = col.as_any().downcast_ref::<Int32Array>().unwrap();
        (!col.is_null(0)).then(|| col.value(0))
    }

    #[tokio::test]
    async fn bytes_are_counted_text_is_not_changed() {
        // Four bytes, not valid UTF-8: DataFusion's own length() fails on them.
        assert_eq!(one("SELECT length(X'fffe0001')").await, Some(4));
        assert_eq!(one("SELECT octet_length(X'fffe0001')").await, Some(4));
        assert_eq!(one("SELECT length('héllo')").await, Some(5));
        assert_eq!(one("SELECT char_length('héllo')").await, Some(5));
        assert_eq!(one("SELECT character_length(X'0102')").await, Some(2));
        assert_eq!(one("SELECT octet_length('héllo')").await, Some(6));
        assert_eq!(one("SELECT length(CAST(NULL AS BYTEA))").await, None);
        let ctx = SessionContext::new();
        crate::register_all(&ctx);
        let df = ctx
            .sql("SELECT length(column1) FROM (VALUES (X'ff'), (X'00ff00')) AS t")
            .await
            .unwrap();
        let batches = df.collect().await.unwrap();
        let col = datafusion::arrow::compute::cast(batches[0].column(0), &DataType::Int32).unwrap();
        let col = col.as_any().downcast_ref::<Int32Array>().unwrap();
        assert_eq!(col.values().to_vec(), vec![1, 3]);
    }
}
