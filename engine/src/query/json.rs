//! PostgreSQL's JSON operators over JSON text (the `attributes` column).
//!
//! [`datafusion_functions_json`] brings the JSON functions (`json_get_str`, `json_as_text`,
//! `json_contains`, …) and a planner for `->>` and `?`. [`PgJsonPlanner`], consulted before
//! it, gives the rest PostgreSQL's meaning:
//!
//! - `j -> k` → `json_get_json(j, k)`: the value as JSON text (`"alice"`, `{"b":1}`), so
//!   `->` chains and prints as PostgreSQL prints `json`;
//! - `j #> '{a,b}'` / `j #>> '{a,b}'` → `json_get_json(j, 'a', 'b')` /
//!   `json_as_text(j, 'a', 'b')`: the path is a text-array literal, integer elements index
//!   arrays;
//! - `a @> b` / `a <@ b` → [`jsonb_contains`](jsonb_contains_udf)`(a, b)`: PostgreSQL's
//!   `jsonb` containment, when both sides are text;
//! - `j ?| ARRAY['a','b']` / `j ?& '{a,b}'` → `jsonb_exists_any(j, 'a', 'b')` /
//!   `jsonb_exists_all(j, 'a', 'b')`: whether any / all of the keys are top-level keys of an
//!   object (or strings of a top-level array), as in PostgreSQL.
//!
//! PostgreSQL's path functions are aliases of the same functions: `json[b]_extract_path(j,
//! k, …)` is `j #> '{k,…}'`, `json[b]_extract_path_text` is `#>>`.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, BooleanArray, StringArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::DataType;
use datafusion::common::{DFSchema, Result, ScalarValue, plan_err};
use datafusion::execution::FunctionRegistry;
use datafusion::logical_expr::expr::{Alias, ScalarFunction};
use datafusion::logical_expr::planner::{ExprPlanner, PlannerResult, RawBinaryExpr};
use datafusion::logical_expr::{
    ColumnarValue, Expr, ExprSchemable, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
    Volatility, create_udf,
};
use datafusion::prelude::SessionContext;
use datafusion::sql::sqlparser::ast::BinaryOperator;
use datafusion_functions_json::udfs::{json_as_text_udf, json_get_json_udf};
use serde_json::Value;

/// Registers the JSON functions and operators on `ctx`.
pub fn register(ctx: &SessionContext) -> Result<()> {
    let state = ctx.state_ref();
    let mut state = state.write();
    state.register_expr_planner(Arc::new(PgJsonPlanner))?;
    datafusion_functions_json::register_all(&mut *state)?;
    state.register_udf(Arc::new(jsonb_contains_udf()))?;
    state.register_udf(Arc::new(ScalarUDF::new_from_impl(KeysExist::new(true))))?;
    state.register_udf(Arc::new(ScalarUDF::new_from_impl(KeysExist::new(false))))?;
    let extract = json_get_json_udf()
        .as_ref()
        .clone()
        .with_aliases(["json_extract_path", "jsonb_extract_path"]);
    state.register_udf(Arc::new(extract))?;
    let extract_text = json_as_text_udf()
        .as_ref()
        .clone()
        .with_aliases(["json_extract_path_text", "jsonb_extract_path_text"]);
    state.register_udf(Arc::new(extract_text))?;
    Ok(())
}

/// `jsonb_exists_any(j, k, …)` / `jsonb_exists_all(j, k, …)`: PostgreSQL's `?|` / `?&`
/// with the keys as arguments. NULL when `j` is NULL or not JSON; NULL keys are ignored.
#[derive(Debug, PartialEq, Eq, Hash)]
struct KeysExist {
    any: bool,
    signature: Signature,
}

impl KeysExist {
    fn new(any: bool) -> Self {
        Self {
            any,
            signature: Signature::variadic(vec![DataType::Utf8], Volatility::Immutable),
        }
    }
}

/// Whether `key` is a top-level key of `j` (an object) or a string element (an array).
fn has_key(j: &Value, key: &str) -> bool {
    match j {
        Value::Object(m) => m.contains_key(key),
        Value::Array(a) => a.iter().any(|v| v.as_str() == Some(key)),
        _ => false,
    }
}

impl ScalarUDFImpl for KeysExist {
    fn name(&self) -> &str {
        if self.any {
            "jsonb_exists_any"
        } else {
            "jsonb_exists_all"
        }
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(DataType::Boolean)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let scalar = args
            .args
            .iter()
            .all(|a| matches!(a, ColumnarValue::Scalar(_)));
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let columns = arrays
            .iter()
            .map(|a| cast(a, &DataType::Utf8))
            .collect::<Result<Vec<_>, _>>()?;
        let columns: Vec<&StringArray> = columns
            .iter()
            .filter_map(|c| c.as_any().downcast_ref::<StringArray>())
            .collect();
        let Some((json, keys)) = columns.split_first() else {
            return plan_err!("{} needs a JSON value and keys", self.name());
        };
        let out: BooleanArray = (0..json.len())
            .map(|row| {
                let j: Value =
                    serde_json::from_str(json.is_valid(row).then(|| json.value(row))?).ok()?;
                let mut present = keys
                    .iter()
                    .filter(|k| k.is_valid(row))
                    .map(|k| has_key(&j, k.value(row)));
                Some(if self.any {
                    present.any(|p| p)
                } else {
                    present.all(|p| p)
                })
            })
            .collect();
        let out: ArrayRef = Arc::new(out);
        if scalar {
            Ok(ColumnarValue::Scalar(ScalarValue::try_from_array(&out, 0)?))
        } else {
            Ok(ColumnarValue::Array(out))
        }
    }
}

/// `jsonb_contains(a, b)`: whether JSON text `a` contains `b` as PostgreSQL's `jsonb @>`
/// decides it; NULL when either is NULL or not JSON.
pub fn jsonb_contains_udf() -> ScalarUDF {
    create_udf(
        "jsonb_contains",
        vec![DataType::Utf8, DataType::Utf8],
        DataType::Boolean,
        Volatility::Immutable,
        Arc::new(|args: &[ColumnarValue]| {
            let arrays = ColumnarValue::values_to_arrays(args)?;
            let a = cast(&arrays[0], &DataType::Utf8)?;
            let b = cast(&arrays[1], &DataType::Utf8)?;
            let a = a.as_any().downcast_ref::<StringArray>().expect("utf8");
            let b = b.as_any().downcast_ref::<StringArray>().expect("utf8");
            let out: BooleanArray = a
                .iter()
                .zip(b.iter())
                .map(|(a, b)| {
                    let a: Value = serde_json::from_str(a?).ok()?;
                    let b: Value = serde_json::from_str(b?).ok()?;
                    Some(contains(&a, &b, true))
                })
                .collect();
            let out: ArrayRef = Arc::new(out);
            if args.iter().all(|a| matches!(a, ColumnarValue::Scalar(_))) {
                Ok(ColumnarValue::Scalar(ScalarValue::try_from_array(&out, 0)?))
            } else {
                Ok(ColumnarValue::Array(out))
            }
        }),
    )
}

/// PostgreSQL's jsonb containment: objects contain a subset of their pairs, arrays any
/// subset of their elements (order and duplicates ignored); at the top level an array also
/// contains a scalar it holds.
fn contains(a: &Value, b: &Value, top: bool) -> bool {
    match (a, b) {
        (Value::Object(a), Value::Object(b)) => b
            .iter()
            .all(|(k, bv)| a.get(k).is_some_and(|av| contains(av, bv, false))),
        (Value::Array(a), Value::Array(b)) => b.iter().all(|bv| {
            a.iter().any(|av| {
                !bv.is_array() && !bv.is_object() && scalar_eq(av, bv) || container_contains(av, bv)
            })
        }),
        (Value::Array(a), b) if top && !b.is_object() => a.iter().any(|av| scalar_eq(av, b)),
        (a, b) => scalar_eq(a, b),
    }
}

fn container_contains(a: &Value, b: &Value) -> bool {
    matches!(
        (a, b),
        (Value::Object(_), Value::Object(_)) | (Value::Array(_), Value::Array(_))
    ) && contains(a, b, false)
}

fn scalar_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x == y || x.as_f64() == y.as_f64(),
        (Value::Object(_) | Value::Array(_), _) | (_, Value::Object(_) | Value::Array(_)) => false,
        _ => a == b,
    }
}

/// Plans `->`, `#>`, `#>>`, `@>` and `<@` over JSON text (see the module docs).
#[derive(Debug, Default)]
pub struct PgJsonPlanner;

impl ExprPlanner for PgJsonPlanner {
    fn plan_binary_op(
        &self,
        expr: RawBinaryExpr,
        schema: &DFSchema,
    ) -> Result<PlannerResult<RawBinaryExpr>> {
        let (func, symbol) = match expr.op {
            BinaryOperator::Arrow => (json_get_json_udf(), "->"),
            BinaryOperator::HashArrow => (json_get_json_udf(), "#>"),
            BinaryOperator::HashLongArrow => (json_as_text_udf(), "#>>"),
            BinaryOperator::AtArrow | BinaryOperator::ArrowAt => {
                if !is_text(&expr.left, schema) || !is_text(&expr.right, schema) {
                    return Ok(PlannerResult::Original(expr));
                }
                let (a, b, symbol) = if expr.op == BinaryOperator::AtArrow {
                    (expr.left, expr.right, "@>")
                } else {
                    (expr.right, expr.left, "<@")
                };
                let name = format!("{} {symbol} {}", repr(&a), repr(&b));
                return Ok(planned(Arc::new(jsonb_contains_udf()), vec![a, b], name));
            }
            BinaryOperator::QuestionPipe | BinaryOperator::QuestionAnd => {
                if !is_text(&expr.left, schema) {
                    return Ok(PlannerResult::Original(expr));
                }
                let (udf, symbol) = if expr.op == BinaryOperator::QuestionPipe {
                    (KeysExist::new(true), "?|")
                } else {
                    (KeysExist::new(false), "?&")
                };
                let name = format!("{} {symbol} {}", repr(&expr.left), repr(&expr.right));
                let mut args = vec![expr.left];
                args.extend(key_list(&expr.right)?);
                return Ok(planned(Arc::new(ScalarUDF::new_from_impl(udf)), args, name));
            }
            _ => return Ok(PlannerResult::Original(expr)),
        };
        let name = format!("{} {symbol} {}", repr(&expr.left), repr(&expr.right));
        let mut args = vec![expr.left];
        if symbol == "->" {
            args.push(expr.right);
        } else {
            args.extend(path_elements(&expr.right)?);
        }
        Ok(planned(func, args, name))
    }
}

fn planned(func: Arc<ScalarUDF>, args: Vec<Expr>, name: String) -> PlannerResult<RawBinaryExpr> {
    PlannerResult::Planned(Expr::Alias(Alias::new(
        Expr::ScalarFunction(ScalarFunction { func, args }),
        None::<&str>,
        name,
    )))
}

fn is_text(expr: &Expr, schema: &DFSchema) -> bool {
    matches!(
        expr.get_type(schema),
        Ok(DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8)
    )
}

/// The keys of `?|` / `?&`: `ARRAY['a', 'b']` or a text-array literal `'{a,b}'`.
fn key_list(keys: &Expr) -> Result<Vec<Expr>> {
    match keys {
        Expr::ScalarFunction(f) if f.func.name() == "make_array" => Ok(f.args.clone()),
        Expr::Alias(a) => key_list(&a.expr),
        Expr::Cast(c) => key_list(&c.expr),
        Expr::TryCast(c) => key_list(&c.expr),
        other => Ok(path_elements(other)
            .map_err(|_| {
                datafusion::common::DataFusionError::Plan(format!(
                    "the keys of ?| and ?& must be ARRAY['a', …] or a text-array literal such as \
                     '{{a,b}}', not {other}"
                ))
            })?
            .into_iter()
            .map(|e| match e {
                // Keys are text even when they look like numbers.
                Expr::Literal(ScalarValue::Int64(Some(i)), m) => {
                    Expr::Literal(ScalarValue::Utf8(Some(i.to_string())), m)
                }
                e => e,
            })
            .collect()),
    }
}

/// `'{a,0,"b c"}'` → `'a', 0, 'b c'`.
fn path_elements(path: &Expr) -> Result<Vec<Expr>> {
    let text = match path {
        Expr::Literal(
            ScalarValue::Utf8(Some(s))
            | ScalarValue::Utf8View(Some(s))
            | ScalarValue::LargeUtf8(Some(s)),
            _,
        ) => s.clone(),
        Expr::Cast(c) => return path_elements(&c.expr),
        Expr::TryCast(c) => return path_elements(&c.expr),
        Expr::Alias(a) => return path_elements(&a.expr),
        other => {
            return plan_err!(
                "the path of #> and #>> must be a text literal such as '{{a,b}}', not {other}"
            );
        }
    };
    let inner = text.trim();
    let Some(inner) = inner.strip_prefix('{').and_then(|s| s.strip_suffix('}')) else {
        return plan_err!("malformed JSON path {text:?}: expected '{{key,key,…}}'");
    };
    if inner.trim().is_empty() {
        return Ok(vec![]);
    }
    Ok(inner
        .split(',')
        .map(|e| {
            let e = e.trim();
            let e = e
                .strip_prefix('"')
                .and_then(|s| s.strip_suffix('"'))
                .unwrap_or(e);
            match e.parse::<i64>() {
                Ok(i) => Expr::Literal(ScalarValue::Int64(Some(i)), None),
                Err(_) => Expr::Literal(ScalarValue::Utf8(Some(e.to_owned())), None),
            }
        })
        .collect())
}

fn repr(expr: &Expr) -> String {
    match expr {
        Expr::Column(c) => c.name.clone(),
        Expr::Alias(a) => a.name.clone(),
        Expr::Literal(ScalarValue::Utf8(Some(v)) | ScalarValue::Utf8View(Some(v)), _) => {
            format!("'{v}'")
        }
        Expr::Cast(c) => repr(&c.expr),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(a: &str, b: &str) -> bool {
        contains(
            &serde_json::from_str(a).unwrap(),
            &serde_json::from_str(b).unwrap(),
            true,
        )
    }

    #[test]
    fn containment_follows_postgres() {
        assert!(c(r#"{"a":1,"b":{"c":2,"d":3}}"#, r#"{"b":{"c":2}}"#));
        assert!(!c(r#"{"a":1}"#, r#"{"a":2}"#));
        assert!(c(r#"{"tags":["x","y"]}"#, r#"{"tags":["y"]}"#));
        assert!(c("[1,2,3]", "[3,1]"));
        assert!(c("[1,2,3]", "2"));
        assert!(!c(r#"{"a":[1]}"#, r#"{"a":1}"#));
        assert!(c("1.0", "1"));
        assert!(!c(r#"{"a":{"b":1}}"#, r#"{"b":1}"#));
    }

    #[test]
    fn paths_split_into_keys_and_indexes() {
        let lit = Expr::Literal(ScalarValue::Utf8(Some("{a, 0,\"b c\"}".into())), None);
        let got = path_elements(&lit).unwrap();
        assert_eq!(got.len(), 3);
        assert_eq!(got[1], Expr::Literal(ScalarValue::Int64(Some(0)), None));
        assert_eq!(
            got[2],
            Expr::Literal(ScalarValue::Utf8(Some("b c".into())), None)
        );
    }
}
