//! What datafusion-pg-catalog leaves out and BI tools and drivers read: `pg_index` and
//! `pg_constraint` with real array columns, the catalog functions their queries call
//! (`to_regtype`, `pg_type_is_visible`, `_pg_expandarray`, `json_build_object`, …) and the
//! SQL rewrites DataFusion needs for PostgreSQL-only syntax (`ARRAY(subquery)`,
//! `generate_subscripts`, `(composite).field`).
//!
//! LogSphere's tables have no keys and no indexes, so `pg_index` and `pg_constraint` are empty,
//! consistent with `pg_class`; what matters is that the queries over them plan and run.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Int32Array, Int32Builder, ListArray, StringArray,
    StringBuilder, StructArray,
};
use datafusion::arrow::buffer::OffsetBuffer;
use datafusion::arrow::datatypes::{DataType, Field, Fields, Int32Type, Schema};
use datafusion::catalog::{MemTable, SchemaProvider, TableProvider};
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::scalar::ScalarValue;
use datafusion::sql::sqlparser::ast::{
    self, AccessExpr, Expr, FunctionArg, FunctionArgExpr, FunctionArgumentList, FunctionArguments,
    Ident, ObjectName, Statement, TableAliasColumnDef, TableFactor, Value, VisitMut, VisitorMut,
    visit_expressions_mut,
};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::parser::Parser;

/// Array-typed (`int2vector`, `oidvector`, `int2[]`, `oid[]`) columns of the overridden
/// catalog tables, with their element type.
const ARRAY_COLUMNS: &[(&str, &[(&str, DataType)])] = &[
    (
        "pg_index",
        &[
            ("indkey", DataType::Int16),
            ("indcollation", DataType::Int32),
            ("indclass", DataType::Int32),
            ("indoption", DataType::Int16),
        ],
    ),
    (
        "pg_constraint",
        &[
            ("conkey", DataType::Int16),
            ("confkey", DataType::Int16),
            ("conpfeqop", DataType::Int32),
            ("conppeqop", DataType::Int32),
            ("conffeqop", DataType::Int32),
            ("conexclop", DataType::Int32),
            ("confdelsetcols", DataType::Int16),
        ],
    ),
];

/// The oid of each catalog table, which PostgreSQL gives every row as the `tableoid` system
/// column (pgAdmin joins `pg_depend.classid = cls.tableoid`). A system column is no part of
/// `*`, so it is not a column of the tables here: [`TableOids`] writes `alias.tableoid` as
/// the table's oid.
const TABLE_OIDS: &[(&str, i32)] = &[
    ("pg_attribute", 1249),
    ("pg_class", 1259),
    ("pg_constraint", 2606),
    ("pg_database", 1262),
    ("pg_index", 2610),
    ("pg_namespace", 2615),
    ("pg_proc", 1255),
    ("pg_type", 1247),
];

/// Columns PostgreSQL has and datafusion-pg-catalog's tables lack, with the value every row
/// holds (typed NULLs).
fn extra_columns(table: &str) -> Vec<(&'static str, ScalarValue)> {
    let null_text_array = || {
        ScalarValue::try_from(&DataType::new_list(DataType::Utf8, true))
            .unwrap_or(ScalarValue::Null)
    };
    match table {
        "pg_class" => vec![
            ("relacl", null_text_array()),
            ("reloptions", null_text_array()),
        ],
        "pg_database" => vec![("datcollversion", ScalarValue::Utf8(None))],
        "pg_proc" => vec![("proconfig", null_text_array())],
        _ => Vec::new(),
    }
}

/// Array columns datafusion-pg-catalog holds as text, NULL in every row of its static data,
/// as the typed NULL arrays PostgreSQL has (DBeaver reads `unnest(e.extconfig)`).
fn retyped_columns(table: &str) -> Vec<(&'static str, DataType)> {
    match table {
        "pg_extension" => vec![
            ("extconfig", DataType::new_list(DataType::Int32, true)),
            ("extcondition", DataType::new_list(DataType::Utf8, true)),
        ],
        _ => Vec::new(),
    }
}

/// Columns whose datafusion-pg-catalog value differs from PostgreSQL's, as the expression
/// that replaces them (over the table's own columns).
fn replaced_columns(table: &str) -> Vec<(&'static str, datafusion::logical_expr::Expr)> {
    use datafusion::prelude::{col, lit, when};
    match table {
        // Tables (and materialized views and TOAST tables) use the heap access method
        // (`pg_am` oid 2), which psql's `\d+` shows as "Access method: heap".
        "pg_class" => vec![(
            "relam",
            when(
                col("relkind").in_list(vec![lit("r"), lit("m"), lit("t")], false),
                lit(2_i32),
            )
            .otherwise(col("relam"))
            .unwrap_or_else(|_| col("relam")),
        )],
        _ => Vec::new(),
    }
}

/// `table` with `extra` appended as constant columns, the [`replaced_columns`] recomputed and
/// the [`retyped_columns`] given their PostgreSQL type (a view over it), or `table` itself
/// when there is nothing to change.
fn with_extra_columns(
    name: &str,
    table: Arc<dyn TableProvider>,
    extra: Vec<(&'static str, ScalarValue)>,
) -> Result<Arc<dyn TableProvider>> {
    use datafusion::logical_expr::Expr;
    let schema = table.schema();
    let missing: Vec<_> = extra
        .into_iter()
        .filter(|(c, _)| schema.field_with_name(c).is_err())
        .collect();
    let mut replaced: Vec<(&str, Expr)> = replaced_columns(name)
        .into_iter()
        .filter_map(|(c, e)| {
            let field = schema.field_with_name(c).ok()?;
            Some((c, datafusion::prelude::cast(e, field.data_type().clone())))
        })
        .collect();
    for (c, data_type) in retyped_columns(name) {
        if schema.field_with_name(c).is_ok() {
            replaced.push((c, Expr::Literal(ScalarValue::try_from(&data_type)?, None)));
        }
    }
    if missing.is_empty() && replaced.is_empty() {
        return Ok(table);
    }
    let mut exprs: Vec<Expr> = schema
        .fields()
        .iter()
        .map(|f| match replaced.iter().find(|(c, _)| c == f.name()) {
            Some((c, e)) => e.clone().alias(*c),
            None => datafusion::prelude::col(datafusion::common::Column::new_unqualified(f.name())),
        })
        .collect();
    for (column, value) in missing {
        exprs.push(Expr::Literal(value, None).alias(column));
    }
    let plan = datafusion::logical_expr::LogicalPlanBuilder::scan(
        name,
        datafusion::datasource::provider_as_source(table),
        None,
    )?
    .project(exprs)?
    .build()?;
    Ok(Arc::new(datafusion::catalog::view::ViewTable::new(
        plan, None,
    )))
}

/// `pg_catalog` as datafusion-pg-catalog builds it, with `pg_index` and `pg_constraint`
/// replaced by empty tables whose vector columns are lists (so `unnest(indkey)`,
/// `indkey[0]` and `= ANY(conkey)` plan).
#[derive(Debug)]
pub(crate) struct PgCatalogOverlay {
    inner: Arc<dyn SchemaProvider>,
}

impl PgCatalogOverlay {
    pub(crate) fn new(inner: Arc<dyn SchemaProvider>) -> Self {
        Self { inner }
    }
}

#[async_trait]
impl SchemaProvider for PgCatalogOverlay {
    fn table_names(&self) -> Vec<String> {
        self.inner.table_names()
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        let Some(table) = self.inner.table(name).await? else {
            return Ok(None);
        };
        let name = name.to_ascii_lowercase();
        let Some((_, arrays)) = ARRAY_COLUMNS.iter().find(|(t, _)| *t == name) else {
            return with_extra_columns(&name, table, extra_columns(&name)).map(Some);
        };
        let fields: Vec<Field> = table
            .schema()
            .fields()
            .iter()
            .map(|f| match arrays.iter().find(|(c, _)| c == f.name()) {
                Some((_, elem)) => Field::new(
                    f.name(),
                    DataType::List(Arc::new(Field::new_list_field(elem.clone(), true))),
                    true,
                ),
                None => f.as_ref().clone().with_nullable(true),
            })
            .collect();

        let schema = Arc::new(Schema::new(fields));
        Ok(Some(Arc::new(MemTable::try_new(schema, vec![vec![]])?)))
    }

    fn table_exist(&self, name: &str) -> bool {
        self.inner.table_exist(name)
    }
}

/// PostgreSQL's type names (and the SQL spellings `to_regtype` accepts) to `pg_type` oids.
#[derive(Debug, Default)]
pub(crate) struct TypeNames {
    oids: HashMap<String, i32>,
}

impl TypeNames {
    /// From the `oid` and `typname` columns of the static `pg_type` batches.
    pub(crate) fn from_pg_type(batches: &[datafusion::arrow::record_batch::RecordBatch]) -> Self {
        let mut oids = HashMap::new();
        for batch in batches {
            let (Some(oid), Some(name)) =
                (batch.column_by_name("oid"), batch.column_by_name("typname"))
            else {
                continue;
            };
            let (Some(oid), Some(name)) = (
                oid.as_primitive_opt::<Int32Type>(),
                name.as_string_opt::<i32>(),
            ) else {
                continue;
            };
            for row in 0..batch.num_rows() {
                if !oid.is_null(row) && !name.is_null(row) {
                    oids.insert(name.value(row).to_owned(), oid.value(row));
                }
            }
        }
        Self { oids }
    }

    /// The oid of a type name as `to_regtype` reads it: SQL spellings (`integer`,
    /// `double precision`, `timestamp with time zone`), `pg_catalog.` qualification,
    /// quotes, a type modifier and `[]`.
    fn lookup(&self, text: &str) -> Option<i32> {
        let mut name = text.trim().to_ascii_lowercase();
        let mut array = false;
        while let Some(stripped) = name.strip_suffix("[]") {
            name = stripped.trim_end().to_owned();
            array = true;
        }
        if let Some(open) = name.find('(') {
            let close = name.rfind(')').unwrap_or(name.len().saturating_sub(1));
            name = format!("{}{}", &name[..open], name.get(close + 1..).unwrap_or(""))
                .trim()
                .to_owned();
        }
        let name = name
            .strip_prefix("pg_catalog.")
            .unwrap_or(&name)
            .replace('"', "");
        let name = name.split_whitespace().collect::<Vec<_>>().join(" ");
        let canonical = match name.as_str() {
            "integer" | "int" => "int4",
            "smallint" => "int2",
            "bigint" => "int8",
            "real" => "float4",
            "double precision" | "float" => "float8",
            "boolean" => "bool",
            "character varying" | "varchar" => "varchar",
            "character" | "char" => "bpchar",
            "decimal" => "numeric",
            "timestamp" | "timestamp without time zone" => "timestamp",
            "timestamp with time zone" => "timestamptz",
            "time" | "time without time zone" => "time",
            "time with time zone" => "timetz",
            other => other,
        };
        let canonical = if array {
            format!("_{canonical}")
        } else {
            canonical.to_owned()
        };
        self.oids.get(&canonical).copied()
    }
}

/// `to_regtype(text)`: the type's oid, NULL for an unknown name (psycopg asks for `hstore`).
#[derive(Debug)]
struct ToRegType {
    names: Arc<TypeNames>,
    signature: Signature,
}

impl PartialEq for ToRegType {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.names, &other.names)
    }
}

impl Eq for ToRegType {}

impl std::hash::Hash for ToRegType {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        (Arc::as_ptr(&self.names) as usize).hash(state);
    }
}

impl ScalarUDFImpl for ToRegType {
    fn name(&self) -> &str {
        "to_regtype"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Int32)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let scalar = args
            .args
            .iter()
            .all(|a| matches!(a, ColumnarValue::Scalar(_)));
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let input = arrays
            .first()
            .ok_or_else(|| DataFusionError::Plan("to_regtype() needs a type name".to_owned()))?;
        let input = datafusion::arrow::compute::cast(input, &DataType::Utf8)?;
        let input = input.as_string::<i32>();
        let mut out = Int32Builder::with_capacity(input.len());
        for row in 0..input.len() {
            if input.is_null(row) {
                out.append_null();
            } else {
                out.append_option(self.names.lookup(input.value(row)));
            }
        }
        finish(Arc::new(out.finish()), scalar)
    }
}

/// A scalar result for all-scalar arguments, as DataFusion expects.
fn finish(array: ArrayRef, scalar: bool) -> Result<ColumnarValue> {
    if scalar && array.len() == 1 {
        Ok(ColumnarValue::Scalar(ScalarValue::try_from_array(
            &array, 0,
        )?))
    } else {
        Ok(ColumnarValue::Array(array))
    }
}

/// `pg_type_is_visible(oid)` and the other `*_is_visible` functions: every object
/// LogSphere lists is on the search path.
#[derive(Debug, PartialEq, Eq, Hash)]
struct Visible {
    name: &'static str,
    signature: Signature,
}

impl ScalarUDFImpl for Visible {
    fn name(&self) -> &str {
        self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Boolean)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        match args.args.first() {
            Some(ColumnarValue::Array(a)) => {
                let out: BooleanArray = (0..a.len())
                    .map(|i| (!a.is_null(i)).then_some(true))
                    .collect();
                Ok(ColumnarValue::Array(Arc::new(out)))
            }
            Some(ColumnarValue::Scalar(s)) => Ok(ColumnarValue::Scalar(ScalarValue::Boolean(
                (!s.is_null()).then_some(true),
            ))),
            None => Ok(ColumnarValue::Scalar(ScalarValue::Boolean(Some(true)))),
        }
    }
}

/// `pg_size_pretty(bigint)`: bytes as PostgreSQL prints them (`8192 bytes`, `12 kB`).
fn pg_size_pretty(bytes: i64) -> String {
    const UNITS: [&str; 5] = ["kB", "MB", "GB", "TB", "PB"];
    let mut size = bytes;
    if size.unsigned_abs() < 10 * 1024 {
        return format!("{bytes} bytes");
    }
    // PostgreSQL rounds half up at each step while the value stays below 10 * 1024 units.
    let mut unit = 0;
    size = (size + size.signum() * 512) / 1024;
    while size.unsigned_abs() >= 10 * 1024 && unit + 1 < UNITS.len() {
        size = (size + size.signum() * 512) / 1024;
        unit += 1;
    }
    format!("{size} {}", UNITS[unit])
}

fn pg_size_pretty_udf() -> ScalarUDF {
    datafusion::logical_expr::create_udf(
        "pg_size_pretty",
        vec![DataType::Int64],
        DataType::Utf8,
        Volatility::Immutable,
        Arc::new(|args: &[ColumnarValue]| {
            let scalar = args.iter().all(|a| matches!(a, ColumnarValue::Scalar(_)));
            let arrays = ColumnarValue::values_to_arrays(args)?;
            let input = arrays
                .first()
                .ok_or_else(|| DataFusionError::Plan("pg_size_pretty() needs a size".to_owned()))?;
            let input = datafusion::arrow::compute::cast(input, &DataType::Int64)?;
            let input = input.as_primitive::<datafusion::arrow::datatypes::Int64Type>();
            let out: StringArray = input.iter().map(|v| v.map(pg_size_pretty)).collect();
            finish(Arc::new(out), scalar)
        }),
    )
}

/// `_pg_expandarray(anyarray)` as a list of `(x, n)` structs: the rewrite turns
/// `information_schema._pg_expandarray(a)` into `unnest(pg_expandarray_list(a))`, so each
/// element becomes a row and `(…).x` / `(…).n` read its fields (pgjdbc's getPrimaryKeys).
#[derive(Debug, PartialEq, Eq, Hash)]
struct ExpandArray {
    signature: Signature,
}

fn expand_fields(elem: &DataType) -> Fields {
    Fields::from(vec![
        Field::new("x", elem.clone(), true),
        Field::new("n", DataType::Int32, true),
    ])
}

impl ScalarUDFImpl for ExpandArray {
    fn name(&self) -> &str {
        EXPAND_ARRAY
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        let elem = match arg_types.first() {
            Some(DataType::List(f)) | Some(DataType::LargeList(f)) => f.data_type().clone(),
            Some(DataType::Null) => DataType::Int32,
            other => {
                return Err(DataFusionError::Plan(format!(
                    "_pg_expandarray() needs an array, not {other:?}"
                )));
            }
        };
        Ok(DataType::List(Arc::new(Field::new_list_field(
            DataType::Struct(expand_fields(&elem)),
            true,
        ))))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let scalar = args
            .args
            .iter()
            .all(|a| matches!(a, ColumnarValue::Scalar(_)));
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let input = arrays
            .first()
            .ok_or_else(|| DataFusionError::Plan("_pg_expandarray() needs an array".to_owned()))?;
        let input = match input.data_type() {
            DataType::Null => {
                datafusion::arrow::compute::cast(input, &DataType::new_list(DataType::Int32, true))?
            }
            _ => Arc::clone(input),
        };
        let list = input
            .as_list_opt::<i32>()
            .ok_or_else(|| DataFusionError::Plan("_pg_expandarray() needs an array".to_owned()))?;
        let values = list.values();
        let elem = values.data_type().clone();
        let mut ns = Int32Builder::with_capacity(values.len());
        for row in 0..list.len() {
            let len = list.value_length(row);
            for n in 1..=len {
                ns.append_value(n);
            }
        }
        // The struct covers the whole child array; offsets outside a row's range are unused.
        let start = list.value_offsets().first().copied().unwrap_or(0) as usize;
        let end = list.value_offsets().last().copied().unwrap_or(0) as usize;
        let xs = values.slice(start, end - start);
        let offsets: Vec<i32> = list
            .value_offsets()
            .iter()
            .map(|o| o - start as i32)
            .collect();
        let ns: Int32Array = ns.finish();
        let structs = StructArray::try_new(
            expand_fields(&elem),
            vec![xs, Arc::new(ns) as ArrayRef],
            None,
        )?;
        let out = ListArray::try_new(
            Arc::new(Field::new_list_field(
                DataType::Struct(expand_fields(&elem)),
                true,
            )),
            OffsetBuffer::new(offsets.into()),
            Arc::new(structs),
            list.nulls().cloned(),
        )?;
        finish(Arc::new(out), scalar)
    }
}

const EXPAND_ARRAY: &str = "pg_expandarray_list";

/// `json_build_object(k1, v1, …)`: a JSON object as text.
#[derive(Debug, PartialEq, Eq, Hash)]
struct JsonBuildObject {
    signature: Signature,
}

fn scalar_to_json(v: &ScalarValue) -> serde_json::Value {
    use serde_json::Value as J;
    if v.is_null() {
        return J::Null;
    }
    match v {
        ScalarValue::Boolean(Some(b)) => J::Bool(*b),
        ScalarValue::Int8(Some(i)) => J::from(*i),
        ScalarValue::Int16(Some(i)) => J::from(*i),
        ScalarValue::Int32(Some(i)) => J::from(*i),
        ScalarValue::Int64(Some(i)) => J::from(*i),
        ScalarValue::UInt8(Some(i)) => J::from(*i),
        ScalarValue::UInt16(Some(i)) => J::from(*i),
        ScalarValue::UInt32(Some(i)) => J::from(*i),
        ScalarValue::UInt64(Some(i)) => J::from(*i),
        ScalarValue::Float32(Some(f)) => J::from(*f),
        ScalarValue::Float64(Some(f)) => J::from(*f),
        ScalarValue::List(_) | ScalarValue::LargeList(_) => {
            let array = v.to_array().ok();
            let items = array
                .as_ref()
                .and_then(|a| a.as_list_opt::<i32>())
                .map(|l| l.value(0));
            match items {
                Some(items) => J::Array(
                    (0..items.len())
                        .map(|i| {
                            ScalarValue::try_from_array(&items, i)
                                .map(|s| scalar_to_json(&s))
                                .unwrap_or(J::Null)
                        })
                        .collect(),
                ),
                None => J::String(v.to_string()),
            }
        }
        other => J::String(other.to_string()),
    }
}

impl ScalarUDFImpl for JsonBuildObject {
    fn name(&self) -> &str {
        "json_build_object"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        if !args.args.len().is_multiple_of(2) {
            return Err(DataFusionError::Plan(
                "argument list must have even number of elements".to_owned(),
            ));
        }
        let scalar = args
            .args
            .iter()
            .all(|a| matches!(a, ColumnarValue::Scalar(_)));
        let rows = args.number_rows;
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let mut out = StringBuilder::with_capacity(rows, rows * 16);
        for row in 0..rows.max(usize::from(arrays.is_empty())) {
            let mut object = serde_json::Map::new();
            for pair in arrays.chunks(2) {
                let [k, v] = pair else { continue };
                let key = ScalarValue::try_from_array(k, row)?;
                if key.is_null() {
                    return Err(DataFusionError::Plan(
                        "null value not allowed for object key".to_owned(),
                    ));
                }
                let key = match key {
                    ScalarValue::Utf8(Some(s))
                    | ScalarValue::LargeUtf8(Some(s))
                    | ScalarValue::Utf8View(Some(s)) => s,
                    other => other.to_string(),
                };
                object.insert(key, scalar_to_json(&ScalarValue::try_from_array(v, row)?));
            }
            out.append_value(serde_json::Value::Object(object).to_string());
        }
        finish(Arc::new(out.finish()), scalar)
    }
}

/// PostgreSQL's `format(formatstr, args…)`: `%s` (text; NULL is empty), `%I` (an identifier,
/// quoted when it must be), `%L` (a literal, `NULL` for NULL), `%%`, each optionally with an
/// argument position (`%2$s`). Metabase builds `regclass` names with `format('%I.%I', …)`
/// and type names with `format('%s', …)`.
#[derive(Debug, PartialEq, Eq, Hash)]
struct Format {
    signature: Signature,
}

impl ScalarUDFImpl for Format {
    fn name(&self) -> &str {
        "format"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let scalar = args
            .args
            .iter()
            .all(|a| matches!(a, ColumnarValue::Scalar(_)));
        let rows = args.number_rows;
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let Some((template, values)) = arrays.split_first() else {
            return Err(DataFusionError::Plan(
                "format() needs a format string".to_owned(),
            ));
        };
        let mut out = StringBuilder::with_capacity(rows, rows * 16);
        for row in 0..rows {
            let text = |a: &ArrayRef| -> Result<Option<String>> {
                Ok(match ScalarValue::try_from_array(a, row)? {
                    v if v.is_null() => None,
                    ScalarValue::Utf8(Some(s))
                    | ScalarValue::LargeUtf8(Some(s))
                    | ScalarValue::Utf8View(Some(s)) => Some(s),
                    other => Some(other.to_string()),
                })
            };
            match text(template)? {
                None => out.append_null(),
                Some(t) => {
                    let args = values.iter().map(text).collect::<Result<Vec<_>>>()?;
                    out.append_value(pg_format(&t, &args)?);
                }
            }
        }
        finish(Arc::new(out.finish()), scalar)
    }
}

/// [`Format`] of one row.
fn pg_format(template: &str, args: &[Option<String>]) -> Result<String> {
    let err = |m: String| DataFusionError::Execution(m);
    let mut out = String::with_capacity(template.len() + 16);
    let mut next = 0usize;
    let mut chars = template.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        // An argument position: digits followed by `$`.
        let mut digits = String::new();
        while let Some(d) = chars.peek().filter(|d| d.is_ascii_digit()) {
            digits.push(*d);
            chars.next();
        }
        let position = if digits.is_empty() {
            None
        } else if chars.next_if_eq(&'$').is_some() {
            let n: usize = digits
                .parse()
                .map_err(|_| err(format!("format(): bad argument position {digits}")))?;
            Some(
                n.checked_sub(1)
                    .ok_or_else(|| err("format(): argument positions start at 1".to_owned()))?,
            )
        } else {
            return Err(err("format(): widths are not supported".to_owned()));
        };
        let kind = chars
            .next()
            .ok_or_else(|| err("unterminated format() type specifier".to_owned()))?;
        if kind == '%' && position.is_none() {
            out.push('%');
            continue;
        }
        let i = position.unwrap_or(next);
        next = i + 1;
        let arg = args
            .get(i)
            .ok_or_else(|| err("too few arguments for format()".to_owned()))?;
        match (kind, arg) {
            ('s', Some(v)) => out.push_str(v),
            ('s', None) => {}
            ('I', Some(v)) => out.push_str(&quote_identifier(v)),
            ('I', None) => {
                return Err(err(
                    "null values cannot be formatted as an SQL identifier".to_owned()
                ));
            }
            ('L', Some(v)) => {
                if v.contains('\\') {
                    out.push('E');
                }
                out.push('\'');
                for ch in v.chars() {
                    match ch {
                        '\'' => out.push_str("''"),
                        '\\' => out.push_str("\\\\"),
                        ch => out.push(ch),
                    }
                }
                out.push('\'');
            }
            ('L', None) => out.push_str("NULL"),
            (other, _) => {
                return Err(err(format!(
                    "unrecognized format() type specifier \"{other}\""
                )));
            }
        }
    }
    Ok(out)
}

/// `quote_ident`: as is when it is a plain lower-case identifier, else double-quoted.
fn quote_identifier(name: &str) -> String {
    let plain = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '$');
    if plain {
        name.to_owned()
    } else {
        format!("\"{}\"", name.replace('"', "\"\""))
    }
}

/// The catalog functions this module adds, for `PgCatalog::install`.
pub(crate) fn udfs(types: &Arc<TypeNames>) -> Vec<ScalarUDF> {
    let mut udfs = vec![
        ScalarUDF::new_from_impl(ToRegType {
            names: Arc::clone(types),
            signature: Signature::any(1, Volatility::Stable),
        }),
        pg_size_pretty_udf(),
        ScalarUDF::new_from_impl(ExpandArray {
            signature: Signature::any(1, Volatility::Immutable),
        }),
        ScalarUDF::new_from_impl(JsonBuildObject {
            signature: Signature::variadic_any(Volatility::Stable),
        }),
        ScalarUDF::new_from_impl(Format {
            signature: Signature::variadic_any(Volatility::Stable),
        }),
    ];
    for name in ["pg_table_size", "pg_indexes_size"] {
        // Sizes are not tracked per relation over SQL; psql's `\dt+` shows 0 bytes.
        udfs.push(datafusion::logical_expr::create_udf(
            name,
            vec![DataType::Int32],
            DataType::Int64,
            Volatility::Stable,
            Arc::new(|args: &[ColumnarValue]| {
                let rows = match args.first() {
                    Some(ColumnarValue::Array(a)) => a.len(),
                    _ => return Ok(ColumnarValue::Scalar(ScalarValue::Int64(Some(0)))),
                };
                Ok(ColumnarValue::Array(Arc::new(
                    datafusion::arrow::array::Int64Array::from(vec![0; rows]),
                )))
            }),
        ));
    }
    for name in [
        "pg_type_is_visible",
        "pg_function_is_visible",
        "pg_opclass_is_visible",
        "pg_operator_is_visible",
        "pg_collation_is_visible",
        "pg_conversion_is_visible",
        "pg_ts_config_is_visible",
    ] {
        udfs.push(ScalarUDF::new_from_impl(Visible {
            name,
            signature: Signature::any(1, Volatility::Stable),
        }));
    }
    udfs
}

fn function(name: &str, args: Vec<Expr>) -> Expr {
    Expr::Function(ast::Function {
        name: ObjectName::from(vec![Ident::new(name)]),
        uses_odbc_syntax: false,
        parameters: FunctionArguments::None,
        args: FunctionArguments::List(FunctionArgumentList {
            duplicate_treatment: None,
            args: args
                .into_iter()
                .map(|e| FunctionArg::Unnamed(FunctionArgExpr::Expr(e)))
                .collect(),
            clauses: vec![],
        }),
        filter: None,
        null_treatment: None,
        over: None,
        within_group: vec![],
    })
}

/// The unnamed expression arguments of a call (`None` when any is named or a wildcard).
fn plain_args(args: &FunctionArguments) -> Option<Vec<Expr>> {
    let FunctionArguments::List(list) = args else {
        return Some(Vec::new());
    };
    list.args
        .iter()
        .map(|a| match a {
            FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => Some(e.clone()),
            _ => None,
        })
        .collect()
}

fn parse_expr(sql: &str) -> Option<Expr> {
    Parser::new(&PostgreSqlDialect {})
        .try_with_sql(sql)
        .ok()?
        .parse_expr()
        .ok()
}

/// Rewrites PostgreSQL-only expressions into ones DataFusion plans:
///
/// - `ARRAY(SELECT …)` → `(SELECT array_agg(v) FROM (SELECT …) AS _ls_array(v))`;
/// - `generate_subscripts(a, d)` → `unnest(generate_series(1, array_length(a, d)))`;
/// - `[information_schema.]_pg_expandarray(a)` → `unnest(pg_expandarray_list(a))`;
/// - `(composite).field` → `get_field(composite, 'field')`;
/// - `to_regclass(name)` → the relation's oid from `pg_class`, NULL when there is none;
/// - `x::json` / `x::jsonb` → `x` (JSON is text here).
/// - `FROM unnest(a) x` → `FROM unnest(a) x(x)` (a one-column function names its column
///   after the alias, as in PostgreSQL).
pub(crate) fn rewrite(statement: &mut Statement) {
    let _ = visit_expressions_mut(statement, |expr| {
        rewrite_expr(expr);
        ControlFlow::<()>::Continue(())
    });
    let _ = statement.visit(&mut FunctionAliases);
    let _ = statement.visit(&mut TableOids);
    let _ = statement.visit(&mut RepeatedColumns);
}

/// PostgreSQL lets a SELECT list name a column twice (`SELECT c.oid, c.* FROM pg_class c`,
/// as DBeaver reads catalogs); DataFusion refuses two output columns of one name.
/// datafusion-pg-catalog aliases the first `__alias_oid` in the outermost SELECT; this does
/// the same in subqueries, so such a query can be wrapped (`SELECT count(*) FROM (…) q`, as
/// BI tools wrap their users' SQL). A reference to the column from outside reads the
/// wildcard's copy, which holds the same value.
struct RepeatedColumns;

impl VisitorMut for RepeatedColumns {
    type Break = ();

    fn post_visit_query(&mut self, query: &mut ast::Query) -> ControlFlow<()> {
        let ast::SetExpr::Select(select) = query.body.as_mut() else {
            return ControlFlow::Continue(());
        };
        let mut qualifiers: Vec<String> = Vec::new();
        let mut plain = false;
        for item in &select.projection {
            match item {
                ast::SelectItem::QualifiedWildcard(
                    ast::SelectItemQualifiedWildcardKind::ObjectName(name),
                    _,
                ) => qualifiers.push(name.to_string().to_ascii_lowercase()),
                ast::SelectItem::Wildcard(_) => plain = true,
                _ => {}
            }
        }
        if qualifiers.is_empty() && !plain {
            return ControlFlow::Continue(());
        }
        for item in &mut select.projection {
            let ast::SelectItem::UnnamedExpr(expr) = item else {
                continue;
            };
            let column = match expr {
                Expr::Identifier(ident) if plain => ident.clone(),
                Expr::CompoundIdentifier(parts) if parts.len() > 1 => {
                    let qualifier = parts[..parts.len() - 1]
                        .iter()
                        .map(|p| p.to_string())
                        .collect::<Vec<_>>()
                        .join(".")
                        .to_ascii_lowercase();
                    match parts.last() {
                        Some(last) if qualifiers.contains(&qualifier) => last.clone(),
                        _ => continue,
                    }
                }
                _ => continue,
            };
            *item = ast::SelectItem::ExprWithAlias {
                expr: expr.clone(),
                alias: Ident::new(format!("__alias_{}", column.value)),
            };
        }
        ControlFlow::Continue(())
    }
}

/// Writes `x.tableoid`, where `x` names a catalog table in [`TABLE_OIDS`] in the same
/// SELECT's FROM, as that table's oid. Inner queries go first (`post_visit_query`), so a
/// reference is resolved in the innermost SELECT that names its qualifier.
struct TableOids;

impl VisitorMut for TableOids {
    type Break = ();

    fn post_visit_query(&mut self, query: &mut ast::Query) -> ControlFlow<()> {
        let ast::SetExpr::Select(select) = query.body.as_mut() else {
            return ControlFlow::Continue(());
        };
        let mut oids: HashMap<String, i32> = HashMap::new();
        for table in &select.from {
            for factor in
                std::iter::once(&table.relation).chain(table.joins.iter().map(|j| &j.relation))
            {
                let TableFactor::Table { name, alias, .. } = factor else {
                    continue;
                };
                let table_name = last_name(name);
                let Some((_, oid)) = TABLE_OIDS.iter().find(|(t, _)| *t == table_name) else {
                    continue;
                };
                let qualifier = alias
                    .as_ref()
                    .map(|a| a.name.value.to_ascii_lowercase())
                    .unwrap_or(table_name);
                oids.insert(qualifier, *oid);
            }
        }
        if oids.is_empty() {
            return ControlFlow::Continue(());
        }
        // A selected `x.tableoid` keeps its name once it is a number.
        for item in &mut select.projection {
            if let ast::SelectItem::UnnamedExpr(Expr::CompoundIdentifier(parts)) = item
                && let [_, column] = parts.as_slice()
                && column.value.eq_ignore_ascii_case("tableoid")
            {
                let alias = Ident::new("tableoid");
                *item = ast::SelectItem::ExprWithAlias {
                    expr: Expr::CompoundIdentifier(parts.clone()),
                    alias,
                };
            }
        }
        let _ = visit_expressions_mut(select.as_mut(), |expr| {
            if let Expr::CompoundIdentifier(parts) = expr
                && let [qualifier, column] = parts.as_slice()
                && column.value.eq_ignore_ascii_case("tableoid")
                && let Some(oid) = oids.get(&qualifier.value.to_ascii_lowercase())
            {
                *expr = Expr::value(Value::Number(oid.to_string(), false));
            }
            ControlFlow::<()>::Continue(())
        });
        ControlFlow::Continue(())
    }
}

/// One-column set-returning functions in `FROM` whose alias names their column.
const SINGLE_COLUMN_FUNCTIONS: &[&str] = &["unnest", "generate_series", "generate_subscripts"];

/// Scalar functions clients call in FROM, where PostgreSQL gives a one-row relation whose
/// column is named after the alias (Grafana: `FROM generate_series(…) AS i,
/// string_to_array(current_setting('search_path'), ',') s`). DataFusion takes only table
/// functions there, so `f(args) s` becomes `(SELECT f(args) AS s) AS s`.
const SCALAR_FUNCTIONS_IN_FROM: &[&str] = &[
    "string_to_array",
    "regexp_split_to_array",
    "current_setting",
    "current_schemas",
];

/// `f(args) [AS] alias` for one of [`SCALAR_FUNCTIONS_IN_FROM`], as a one-row derived table.
fn scalar_function_relation(factor: &TableFactor) -> Option<TableFactor> {
    let TableFactor::Table {
        name,
        args: Some(args),
        alias,
        ..
    } = factor
    else {
        return None;
    };
    let function = last_name(name);
    if !SCALAR_FUNCTIONS_IN_FROM.contains(&function.as_str()) {
        return None;
    }
    let (relation, column) = match alias {
        Some(a) if a.columns.len() > 1 => return None,
        Some(a) => (
            a.name.clone(),
            a.columns
                .first()
                .map(|c| c.name.clone())
                .unwrap_or_else(|| a.name.clone()),
        ),
        None => (Ident::new(function.clone()), Ident::new(function.clone())),
    };
    let call = args
        .args
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    let sql = format!("SELECT * FROM (SELECT {name}({call}) AS {column}) AS {relation}");
    let statement = Parser::parse_sql(&PostgreSqlDialect {}, &sql)
        .ok()?
        .into_iter()
        .next()?;
    let Statement::Query(query) = statement else {
        return None;
    };
    let ast::SetExpr::Select(select) = *query.body else {
        return None;
    };
    select.from.into_iter().next().map(|t| t.relation)
}

struct FunctionAliases;

impl VisitorMut for FunctionAliases {
    type Break = ();

    fn pre_visit_table_factor(&mut self, factor: &mut TableFactor) -> ControlFlow<()> {
        if let Some(relation) = scalar_function_relation(factor) {
            *factor = relation;
            return ControlFlow::Continue(());
        }
        if let TableFactor::Table {
            name,
            args: Some(args),
            alias: Some(alias),
            ..
        } = factor
            && alias.columns.is_empty()
            && name.0.last().and_then(|p| p.as_ident()).is_some_and(|i| {
                let function = i.value.to_ascii_lowercase();
                // `unnest(a, b)` has a column per array; the others have one column whatever
                // their arguments (`generate_series(1, n) AS i`, as Grafana writes it).
                SINGLE_COLUMN_FUNCTIONS.contains(&function.as_str())
                    && (function != "unnest" || args.args.len() == 1)
            })
        {
            alias.columns = vec![TableAliasColumnDef::from_name(alias.name.value.clone())];
        }
        if let TableFactor::UNNEST {
            alias: Some(alias),
            array_exprs,
            with_offset: false,
            ..
        } = factor
            && alias.columns.is_empty()
            && array_exprs.len() == 1
        {
            alias.columns = vec![TableAliasColumnDef::from_name(alias.name.value.clone())];
        }
        ControlFlow::Continue(())
    }
}

/// The oid of the relation a name (possibly schema-qualified or quoted) names; NULL for none.
fn regclass_lookup(name: &Expr) -> Option<Expr> {
    parse_expr(&format!(
        "(SELECT max(c.oid) FROM pg_catalog.pg_class c WHERE c.relname = \
         btrim(regexp_replace(CAST({name} AS TEXT), '^.*\\.', ''), '\"'))"
    ))
}

fn rewrite_expr(expr: &mut Expr) {
    match expr {
        // `user` is PostgreSQL's reserved spelling of `current_user` (Grafana's search-path
        // constraint compares schema names with it); the parser reads it as a function
        // without parentheses, which DataFusion would take for a column.
        Expr::Function(f)
            if matches!(f.args, FunctionArguments::None) && last_name(&f.name) == "user" =>
        {
            // As `current_user` already is by the time this runs (no SET ROLE here).
            *expr = function("session_user", Vec::new());
        }
        Expr::Function(f) => {
            let name = last_name(&f.name);
            if name == "array"
                && let FunctionArguments::Subquery(query) = &f.args
            {
                if let Some(new) = array_over_unnest(query) {
                    *expr = new;
                    return;
                }
                let sql = format!("(SELECT array_agg(_ls_array.v) FROM ({query}) AS _ls_array(v))");
                if let Some(new) = parse_expr(&sql) {
                    *expr = new;
                }
                return;
            }
            let Some(args) = plain_args(&f.args) else {
                return;
            };
            match (name.as_str(), args.as_slice()) {
                ("generate_subscripts", [array, dim]) => {
                    let len = function("array_length", vec![array.clone(), dim.clone()]);
                    let series = function(
                        "generate_series",
                        vec![Expr::value(Value::Number("1".to_owned(), false)), len],
                    );
                    *expr = function("unnest", vec![series]);
                }
                ("generate_subscripts", [array]) => {
                    let len = function("array_length", vec![array.clone()]);
                    let series = function(
                        "generate_series",
                        vec![Expr::value(Value::Number("1".to_owned(), false)), len],
                    );
                    *expr = function("unnest", vec![series]);
                }
                ("_pg_expandarray", [array]) => {
                    *expr = function("unnest", vec![function(EXPAND_ARRAY, vec![array.clone()])]);
                }
                ("to_regclass", [name]) => {
                    if let Some(new) = regclass_lookup(name) {
                        *expr = new;
                    }
                }
                _ => {}
            }
        }
        // `CAST(<expression> AS regclass)` (Metabase: `format('%I.%I', schema, table)::regclass`):
        // a name computed per row is looked up like `to_regclass`; literals are left to the
        // type planner.
        Expr::Cast {
            expr: inner,
            data_type: ast::DataType::Regclass,
            ..
        } if !matches!(inner.as_ref(), Expr::Value(_)) => {
            if let Some(new) = regclass_lookup(inner) {
                *expr = new;
            }
        }
        Expr::CompoundFieldAccess { root, access_chain }
            if matches!(root.as_ref(), Expr::Nested(_))
                && access_chain
                    .iter()
                    .all(|a| matches!(a, AccessExpr::Dot(Expr::Identifier(_)))) =>
        {
            let mut out = match root.as_ref() {
                Expr::Nested(inner) => inner.as_ref().clone(),
                other => other.clone(),
            };
            for access in access_chain.iter() {
                if let AccessExpr::Dot(Expr::Identifier(field)) = access {
                    // Unquoted names fold to lower case, as everywhere in PostgreSQL.
                    let name = match field.quote_style {
                        Some(_) => field.value.clone(),
                        None => field.value.to_lowercase(),
                    };
                    out = function(
                        "get_field",
                        vec![out, Expr::value(Value::SingleQuotedString(name))],
                    );
                }
            }
            *expr = out;
        }
        Expr::Subquery(query) => {
            if let Some(name) = regproc_lookup_name(query) {
                // `'pg_catalog.array_in'::regproc`: pg_proc's `proname` is unqualified.
                let bare = name.strip_prefix("pg_catalog.").unwrap_or(&name).to_owned();
                if let Some(new) = parse_expr(&format!(
                    "(SELECT oid FROM pg_catalog.pg_proc WHERE proname = '{}')",
                    bare.replace('\'', "''")
                )) {
                    *expr = new;
                }
                return;
            }
            aggregate_correlated_scalar(query);
        }
        Expr::BinaryOp {
            left,
            op: ast::BinaryOperator::Eq | ast::BinaryOperator::NotEq,
            right,
        } => {
            // `typinput = 'array_in'::regproc`: the catalog holds regproc columns as names
            // (`typinput` is `array_in`), so compare with the name rather than an oid.
            if let Some(name) = regproc_compared(left, right) {
                **right = name;
            } else if let Some(name) = regproc_compared(right, left) {
                **left = name;
            }
        }
        Expr::Cast {
            expr: inner,
            data_type,
            ..
        } if is_json_type(data_type) => {
            *expr = Expr::Nested(inner.clone());
        }
        _ => {}
    }
}

/// `ARRAY(SELECT e(x) FROM unnest(a) x [WHERE p(x)])` as
/// `array_transform([array_filter(a, x -> p(x))], x -> e(x))`: no subquery, so `a` may name
/// a column of the outer query (psql's `\d+` reads `unnest(tc.reloptions)`), which
/// DataFusion cannot plan inside a subquery's `FROM`. `None` for any other shape.
fn array_over_unnest(query: &ast::Query) -> Option<Expr> {
    if query.with.is_some()
        || query.order_by.is_some()
        || query.limit_clause.is_some()
        || query.fetch.is_some()
    {
        return None;
    }
    let ast::SetExpr::Select(select) = query.body.as_ref() else {
        return None;
    };
    let no_group = match &select.group_by {
        ast::GroupByExpr::Expressions(exprs, modifiers) => exprs.is_empty() && modifiers.is_empty(),
        ast::GroupByExpr::All(_) => false,
    };
    if select.distinct.is_some() || !no_group || select.having.is_some() {
        return None;
    }
    let ([item], [from]) = (select.projection.as_slice(), select.from.as_slice()) else {
        return None;
    };
    let body = match item {
        ast::SelectItem::UnnamedExpr(e) | ast::SelectItem::ExprWithAlias { expr: e, .. } => e,
        _ => return None,
    };
    if !from.joins.is_empty() {
        return None;
    }
    let (array, alias) = match &from.relation {
        TableFactor::Table {
            name,
            args: Some(args),
            alias: Some(alias),
            with_ordinality: false,
            ..
        } if is_unnest(name) => match args.args.as_slice() {
            [FunctionArg::Unnamed(FunctionArgExpr::Expr(a))] => (a.clone(), alias),
            _ => return None,
        },
        TableFactor::Function {
            name,
            args,
            alias: Some(alias),
            with_ordinality: false,
            ..
        } if is_unnest(name) => match args.as_slice() {
            [FunctionArg::Unnamed(FunctionArgExpr::Expr(a))] => (a.clone(), alias),
            _ => return None,
        },
        TableFactor::UNNEST {
            alias: Some(alias),
            array_exprs,
            with_offset: false,
            with_ordinality: false,
            ..
        } => match array_exprs.as_slice() {
            [a] => (a.clone(), alias),
            _ => return None,
        },
        _ => return None,
    };
    let param = match alias.columns.as_slice() {
        [] => alias.name.clone(),
        [column] => column.name.clone(),
        _ => return None,
    };
    // `x.x` (the alias qualifying its column) reads as the bare parameter.
    let unqualify = |e: &Expr| -> Expr {
        let mut e = e.clone();
        let _ = visit_expressions_mut(&mut e, |e| {
            if let Expr::CompoundIdentifier(parts) = e
                && let [table, column] = parts.as_slice()
                && table.value == alias.name.value
                && column.value == param.value
            {
                *e = Expr::Identifier(param.clone());
            }
            ControlFlow::<()>::Continue(())
        });
        e
    };
    let lambda = |body: Expr| {
        Expr::Lambda(ast::LambdaFunction {
            params: ast::OneOrManyWithParens::One(ast::LambdaFunctionParameter {
                name: param.clone(),
                data_type: None,
            }),
            body: Box::new(body),
            syntax: ast::LambdaSyntax::Arrow,
        })
    };
    let mut array = array;
    if let Some(filter) = &select.selection {
        array = function("array_filter", vec![array, lambda(unqualify(filter))]);
    }
    let body = unqualify(body);
    if matches!(&body, Expr::Identifier(i) if i.value == param.value) {
        return Some(array);
    }
    Some(function("array_transform", vec![array, lambda(body)]))
}

fn is_unnest(name: &ObjectName) -> bool {
    last_name(name) == "unnest"
}

/// The last part of `name`, lowercased (`pg_catalog.UNNEST` → `unnest`); empty when it is
/// not an identifier.
pub(crate) fn last_name(name: &ObjectName) -> String {
    name.0
        .last()
        .and_then(|p| p.as_ident())
        .map(|i| i.value.to_ascii_lowercase())
        .unwrap_or_default()
}

/// `regproc` columns of the catalog tables, which datafusion-pg-catalog holds as function
/// names (`pg_type.typinput` is `array_in`, not an oid).
const REGPROC_COLUMNS: &[&str] = &[
    "typinput",
    "typoutput",
    "typreceive",
    "typsend",
    "typmodin",
    "typmodout",
    "typanalyze",
    "typsubscript",
    "oprcode",
    "oprrest",
    "oprjoin",
];

fn is_regproc_column(expr: &Expr) -> bool {
    let name = match expr {
        Expr::Identifier(i) => i,
        Expr::CompoundIdentifier(parts) => match parts.last() {
            Some(i) => i,
            None => return false,
        },
        _ => return false,
    };
    REGPROC_COLUMNS.contains(&name.value.to_ascii_lowercase().as_str())
}

/// The function name `other` looks up, as a string literal, when `column` is a regproc
/// column and `other` the rewrite of `'name'::regproc`.
fn regproc_compared(column: &Expr, other: &Expr) -> Option<Expr> {
    if !is_regproc_column(column) {
        return None;
    }
    let Expr::Subquery(query) = other else {
        return None;
    };
    let name = regproc_lookup_name(query)?;
    let bare = name.strip_prefix("pg_catalog.").unwrap_or(&name).to_owned();
    Some(Expr::value(Value::SingleQuotedString(bare)))
}

/// The function name of datafusion-pg-catalog's rewrite of `'name'::regproc`,
/// `(SELECT oid FROM pg_catalog.pg_proc WHERE proname = 'name')`.
fn regproc_lookup_name(query: &ast::Query) -> Option<String> {
    let ast::SetExpr::Select(select) = query.body.as_ref() else {
        return None;
    };
    let ([ast::SelectItem::UnnamedExpr(Expr::Identifier(oid))], [from]) =
        (select.projection.as_slice(), select.from.as_slice())
    else {
        return None;
    };
    let TableFactor::Table {
        name, alias: None, ..
    } = &from.relation
    else {
        return None;
    };
    if !oid.value.eq_ignore_ascii_case("oid")
        || !from.joins.is_empty()
        || !name.to_string().eq_ignore_ascii_case("pg_catalog.pg_proc")
    {
        return None;
    }
    match &select.selection {
        Some(Expr::BinaryOp {
            left,
            op: ast::BinaryOperator::Eq,
            right,
        }) if matches!(&**left, Expr::Identifier(i) if i.value.eq_ignore_ascii_case("proname")) => {
            match &**right {
                Expr::Value(v) => match &v.value {
                    Value::SingleQuotedString(s) => Some(s.clone()),
                    _ => None,
                },
                _ => None,
            }
        }
        _ => None,
    }
}

/// Aggregates PostgreSQL evaluates without a subquery's help, so a scalar subquery using one
/// already yields one row.
pub(crate) const AGGREGATES: &[&str] = &[
    "count",
    "sum",
    "min",
    "max",
    "avg",
    "array_agg",
    "string_agg",
    "bool_and",
    "bool_or",
    "every",
    "first_value",
    "last_value",
];

/// A correlated scalar subquery without an aggregate, `(SELECT c.relkind = 'c' FROM pg_class
/// c WHERE c.oid = t.typrelid)` (pgjdbc's `getTypeInfo`), as `(SELECT max(…) …)`: DataFusion
/// plans correlated scalar subqueries only when aggregated. For the at most one row such a
/// subquery may give in PostgreSQL, `max` of it is that row's value, and NULL for none.
fn aggregate_correlated_scalar(query: &mut ast::Query) {
    if query.with.is_some()
        || query.order_by.is_some()
        || query.limit_clause.is_some()
        || query.fetch.is_some()
    {
        return;
    }
    let ast::SetExpr::Select(select) = query.body.as_mut() else {
        return;
    };
    let no_group = match &select.group_by {
        ast::GroupByExpr::Expressions(exprs, modifiers) => exprs.is_empty() && modifiers.is_empty(),
        ast::GroupByExpr::All(_) => false,
    };
    if select.distinct.is_some() || !no_group || select.having.is_some() {
        return;
    }
    let bound = bound_names(&select.from);
    if bound.is_empty() {
        return;
    }
    let Some(selection) = &select.selection else {
        return;
    };
    let mut correlated = false;
    let mut aggregated = false;
    let mut check = |e: &Expr| {
        let _ = ast::visit_expressions(e, |e| {
            match e {
                Expr::CompoundIdentifier(parts) if parts.len() >= 2 => {
                    let qualifier = parts[parts.len() - 2].value.to_ascii_lowercase();
                    if !bound.contains(&qualifier) {
                        correlated = true;
                    }
                }
                Expr::Function(f) => {
                    let name = last_name(&f.name);
                    if AGGREGATES.contains(&name.as_str()) || f.over.is_some() {
                        aggregated = true;
                    }
                }
                _ => {}
            }
            ControlFlow::<()>::Continue(())
        });
    };
    check(selection);
    let [item] = select.projection.as_mut_slice() else {
        return;
    };
    let value = match item {
        ast::SelectItem::UnnamedExpr(e) | ast::SelectItem::ExprWithAlias { expr: e, .. } => e,
        _ => return,
    };
    check(value);
    if correlated && !aggregated {
        *value = function("max", vec![value.clone()]);
    }
}

/// The names a `FROM` list binds: aliases, else the tables' own names, lower-cased.
fn bound_names(from: &[ast::TableWithJoins]) -> Vec<String> {
    let mut names = Vec::new();
    let factors = from
        .iter()
        .flat_map(|t| std::iter::once(&t.relation).chain(t.joins.iter().map(|j| &j.relation)));
    for factor in factors {
        let (name, alias) = match factor {
            TableFactor::Table { name, alias, .. } | TableFactor::Function { name, alias, .. } => {
                (Some(name), alias)
            }
            TableFactor::Derived { alias, .. } | TableFactor::UNNEST { alias, .. } => (None, alias),
            _ => return Vec::new(),
        };
        match (alias, name) {
            (Some(alias), _) => names.push(alias.name.value.to_ascii_lowercase()),
            (None, Some(name)) => {
                if let Some(last) = name.0.last().and_then(|p| p.as_ident()) {
                    names.push(last.value.to_ascii_lowercase());
                }
            }
            (None, None) => {}
        }
    }
    names
}

fn is_json_type(data_type: &ast::DataType) -> bool {
    match data_type {
        ast::DataType::JSON | ast::DataType::JSONB => true,
        ast::DataType::Custom(name, _) => {
            name.0.last().and_then(|p| p.as_ident()).is_some_and(|i| {
                i.value.eq_ignore_ascii_case("json") || i.value.eq_ignore_ascii_case("jsonb")
            })
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_print_as_postgres_does() {
        assert_eq!(pg_size_pretty(8192), "8192 bytes");
        assert_eq!(pg_size_pretty(10 * 1024), "10 kB");
        assert_eq!(pg_size_pretty(123_456_789), "118 MB");
    }

    #[test]
    fn type_names_accept_sql_spellings() {
        let mut oids = HashMap::new();
        oids.insert("int4".to_owned(), 23);
        oids.insert("_int4".to_owned(), 1007);
        oids.insert("timestamptz".to_owned(), 1184);
        oids.insert("varchar".to_owned(), 1043);
        let names = TypeNames { oids };
        assert_eq!(names.lookup("integer"), Some(23));
        assert_eq!(names.lookup("pg_catalog.int4"), Some(23));
        assert_eq!(names.lookup("int4[]"), Some(1007));
        assert_eq!(names.lookup("timestamp with time zone"), Some(1184));
        assert_eq!(names.lookup("character varying(20)"), Some(1043));
        assert_eq!(names.lookup("hstore"), None);
    }

    #[test]
    fn rewrites_postgres_only_syntax() {
        let sql = "SELECT array(SELECT 1), generate_subscripts(i.indkey, 1), \
                   (information_schema._pg_expandarray(i.indkey)).n, attributes::jsonb \
                   FROM pg_index i";
        let mut s = Parser::parse_sql(&PostgreSqlDialect {}, sql)
            .ok()
            .and_then(|v| v.into_iter().next())
            .expect("parses");
        rewrite(&mut s);
        let text = s.to_string();
        assert!(text.contains("array_agg(_ls_array.v)"), "{text}");
        assert!(
            text.contains("unnest(generate_series(1, array_length(i.indkey, 1)))"),
            "{text}"
        );
        assert!(
            text.contains("get_field(unnest(pg_expandarray_list(i.indkey)), 'n')"),
            "{text}"
        );
        assert!(!text.to_ascii_lowercase().contains("jsonb"), "{text}");
    }

    fn rewritten(sql: &str) -> String {
        let mut s = Parser::parse_sql(&PostgreSqlDialect {}, sql)
            .ok()
            .and_then(|v| v.into_iter().next())
            .expect("parses");
        rewrite(&mut s);
        s.to_string()
    }

    #[test]
    fn array_of_unnest_becomes_a_lambda() {
        // psql's `\d+` table query.
        let text = rewritten(
            "SELECT pg_catalog.array_to_string(c.reloptions || array(select 'toast.' || x \
             from pg_catalog.unnest(tc.reloptions) x), ', ') FROM pg_catalog.pg_class c \
             LEFT JOIN pg_catalog.pg_class tc ON (c.reltoastrelid = tc.oid)",
        );
        assert!(
            text.contains("array_transform(tc.reloptions, x -> 'toast.' || x)"),
            "{text}"
        );
        let text =
            rewritten("SELECT ARRAY(SELECT u.v FROM unnest(a.b) AS u(v) WHERE v > 1) FROM a");
        assert!(text.contains("array_filter(a.b, v -> v > 1)"), "{text}");
        assert!(!text.contains("array_transform"), "{text}");
        // Other shapes keep the array_agg rewrite.
        let text = rewritten("SELECT ARRAY(SELECT x FROM unnest(a.b) x ORDER BY 1) FROM a");
        assert!(text.contains("array_agg(_ls_array.v)"), "{text}");
    }

    #[test]
    fn regproc_literals_compare_as_names() {
        // pgjdbc's TypeInfoCache, through datafusion-pg-catalog's rewrites first.
        let parser = datafusion_pg_catalog::sql::PostgresCompatibilityParser::new();
        let mut statements = parser
            .parse(
                "SELECT typinput='pg_catalog.array_in'::regproc as is_array, \
                 'pg_catalog.int4in'::regproc AS f FROM pg_catalog.pg_type",
            )
            .expect("parses");
        let s = statements.first_mut().expect("one statement");
        rewrite(s);
        let text = s.to_string();
        assert!(text.contains("typinput = 'array_in' AS is_array"), "{text}");
        assert!(text.contains("proname = 'int4in'"), "{text}");
    }

    #[test]
    fn correlated_scalar_subqueries_are_aggregated() {
        // pgjdbc's getTypeInfo.
        let text = rewritten(
            "SELECT t.typname FROM pg_catalog.pg_type t WHERE (t.typrelid = 0 OR \
             (SELECT c.relkind = 'c' FROM pg_catalog.pg_class c WHERE c.oid = t.typrelid))",
        );
        assert!(text.contains("SELECT max(c.relkind = 'c') FROM"), "{text}");
        // Uncorrelated, or already aggregated: unchanged.
        for sql in [
            "SELECT (SELECT c.oid FROM pg_class c WHERE c.relname = 'logs')",
            "SELECT (SELECT count(*) FROM pg_class c WHERE c.oid = t.typrelid) FROM pg_type t",
        ] {
            assert!(!rewritten(sql).contains("max("), "{sql}");
        }
    }

    #[test]
    fn tableoid_is_the_catalog_tables_oid() {
        // pgAdmin's index and constraint nodes.
        let text = rewritten(
            "SELECT cls.tableoid FROM pg_catalog.pg_index idx JOIN pg_catalog.pg_class cls \
             ON cls.oid = indexrelid LEFT JOIN pg_catalog.pg_constraint con \
             ON con.tableoid = 2606 WHERE (SELECT c.tableoid FROM pg_class c LIMIT 1) > 0",
        );
        assert!(text.contains("SELECT 1259 AS tableoid FROM"), "{text}");
        assert!(text.contains("ON 2606 = 2606"), "{text}");
        assert!(
            text.contains("SELECT 1259 AS tableoid FROM pg_class c"),
            "{text}"
        );
        // A table that is not a catalog table keeps the reference.
        let text = rewritten("SELECT l.tableoid FROM logs l");
        assert!(text.contains("l.tableoid"), "{text}");
    }

    #[test]
    fn a_repeated_column_is_aliased_in_subqueries() {
        let text = rewritten("SELECT count(*) FROM (SELECT t.oid, t.* FROM pg_type t) q");
        assert!(text.contains("t.oid AS __alias_oid, t.*"), "{text}");
        let text = rewritten("SELECT q.x FROM (SELECT a.oid, b.* FROM a, b) q");
        assert!(text.contains("SELECT a.oid, b.*"), "{text}");
    }

    #[test]
    fn generate_series_names_its_column_after_the_alias() {
        let text = rewritten("SELECT i FROM generate_series(1, 3) AS i");
        assert!(text.contains("generate_series(1, 3) AS i (i)"), "{text}");
        let text = rewritten("SELECT * FROM unnest(a, b) AS u");
        assert!(!text.contains("u (u)"), "{text}");
    }

    #[test]
    fn scalar_functions_in_from_are_one_row_relations() {
        let text =
            rewritten("SELECT s[1] FROM string_to_array(current_setting('search_path'), ',') s");
        assert!(
            text.contains(
                "FROM (SELECT string_to_array(current_setting('search_path'), ',') AS s) AS s"
            ),
            "{text}"
        );
        let text = rewritten("SELECT x FROM unnest(a) x");
        assert!(text.contains("UNNEST(a) x (x)"), "{text}");
    }

    #[test]
    fn user_is_current_user() {
        let text = rewritten("SELECT user");
        assert!(text.contains("SELECT session_user()"), "{text}");
        assert!(rewritten("SELECT \"user\" FROM t").contains("\"user\""));
    }
}
