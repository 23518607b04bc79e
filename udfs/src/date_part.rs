//! PostgreSQL's `date_part` and `EXTRACT` for seconds: with their fraction.
//!
//! DataFusion's `date_part('second', t)` is the whole seconds (an `Int32`), and
//! `'milliseconds'` whole milliseconds; PostgreSQL gives the seconds with their fraction,
//! to the microsecond: `extract(second FROM '2026-01-01 10:00:05.25'::timestamp)` is 5.25,
//! `extract(milliseconds FROM …)` 5250 (5250.123 at `05.250123`). Here those two fields are
//! `float8`, computed from DataFusion's nanoseconds of the minute and cut to the
//! microsecond, as PostgreSQL keeps timestamps; every other field (`microseconds` included,
//! whose whole number is already PostgreSQL's) is DataFusion's unchanged.
//!
//! `date_part(…)` calls reach [`DatePart`] by name; `EXTRACT(field FROM t)` reaches it
//! through [`ExtractPlanner`], which must come before DataFusion's own planners (see
//! [`ExtractPlanner`]).

use std::str::FromStr;
use std::sync::Arc;

use datafusion::arrow::array::{Array, AsArray, Float64Array};
use datafusion::arrow::compute::kernels::cast_utils::IntervalUnit;
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Int64Type};
use datafusion::common::{Result, ScalarValue, exec_err};
use datafusion::logical_expr::expr::ScalarFunction;
use datafusion::logical_expr::planner::{ExprPlanner, PlannerResult};
use datafusion::logical_expr::preimage::PreimageResult;
use datafusion::logical_expr::simplify::SimplifyContext;
use datafusion::logical_expr::{
    ColumnarValue, Documentation, Expr, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF,
    ScalarUDFImpl, Signature,
};

/// `date_part(field, t)`: `second` and `millisecond(s)` with their fraction, as a `float8`;
/// the other fields DataFusion's.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct DatePart {
    builtin: ScalarUDF,
}

impl DatePart {
    /// Over DataFusion's `date_part`.
    pub fn new() -> Self {
        Self {
            builtin: datafusion::functions::datetime::date_part()
                .as_ref()
                .clone(),
        }
    }
}

impl Default for DatePart {
    fn default() -> Self {
        Self::new()
    }
}

/// The fields this function computes itself.
#[derive(Debug, Clone, Copy)]
enum Fractional {
    Second,
    Millisecond,
}

impl Fractional {
    /// The field a `date_part` first argument names, if it is one of these. Spellings as
    /// DataFusion reads them (`s`, `sec`, `seconds`, `ms`, `msec`, `milliseconds`, …), quotes
    /// allowed.
    fn of(part: &ScalarValue) -> Option<Self> {
        let part = part.try_as_str().flatten()?;
        let part = part.trim_matches(|c| c == '\'' || c == '"');
        match IntervalUnit::from_str(part).ok()? {
            IntervalUnit::Second => Some(Self::Second),
            IntervalUnit::Millisecond => Some(Self::Millisecond),
            _ => None,
        }
    }

    fn micros_per_unit(self) -> f64 {
        match self {
            Self::Second => 1_000_000.0,
            Self::Millisecond => 1_000.0,
        }
    }
}

impl ScalarUDFImpl for DatePart {
    fn name(&self) -> &str {
        "date_part"
    }

    fn aliases(&self) -> &[String] {
        self.builtin.aliases()
    }

    fn signature(&self) -> &Signature {
        self.builtin.signature()
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        self.builtin.return_type(arg_types)
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        let fractional = args
            .scalar_arguments
            .first()
            .copied()
            .flatten()
            .and_then(Fractional::of);
        match (fractional, args.arg_fields.get(1)) {
            (Some(_), Some(value)) => Ok(Arc::new(Field::new(
                self.name(),
                DataType::Float64,
                value.is_nullable(),
            ))),
            _ => self.builtin.return_field_from_args(args),
        }
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let fractional = match args.args.first() {
            Some(ColumnarValue::Scalar(part)) => Fractional::of(part),
            _ => None,
        };
        let Some(fractional) = fractional else {
            return self.builtin.invoke_with_args(args);
        };
        let [_, value] = args.args.as_slice() else {
            return exec_err!("date_part takes two arguments");
        };
        // DataFusion's nanoseconds of the minute (seconds included), as an Int64.
        let nanos = self.builtin.invoke_with_args(ScalarFunctionArgs {
            args: vec![
                ColumnarValue::Scalar(ScalarValue::Utf8(Some("nanosecond".to_owned()))),
                value.clone(),
            ],
            arg_fields: args.arg_fields.clone(),
            number_rows: args.number_rows,
            return_field: Arc::new(Field::new(self.name(), DataType::Int64, true)),
            config_options: Arc::clone(&args.config_options),
        })?;
        // Cut to the microsecond (toward zero), then in the field's unit.
        let unit = fractional.micros_per_unit();
        let convert = |ns: i64| (ns / 1_000) as f64 / unit;
        match nanos {
            ColumnarValue::Scalar(ScalarValue::Int64(ns)) => {
                Ok(ColumnarValue::Scalar(ScalarValue::Float64(ns.map(convert))))
            }
            ColumnarValue::Array(array) => {
                let Some(ns) = array.as_primitive_opt::<Int64Type>() else {
                    return exec_err!("date_part: nanoseconds as {}", array.data_type());
                };
                let seconds: Float64Array = ns.unary(convert);
                Ok(ColumnarValue::Array(Arc::new(seconds)))
            }
            ColumnarValue::Scalar(other) => {
                exec_err!("date_part: nanoseconds as {}", other.data_type())
            }
        }
    }

    fn preimage(
        &self,
        args: &[Expr],
        lit_expr: &Expr,
        info: &SimplifyContext,
    ) -> Result<PreimageResult> {
        self.builtin.preimage(args, lit_expr, info)
    }

    fn documentation(&self) -> Option<&Documentation> {
        self.builtin.documentation()
    }
}

/// Plans `EXTRACT(field FROM t)` as [`DatePart`]. DataFusion's own datetime planner names
/// its `date_part` directly rather than by name, and a session asks its planners in order,
/// so this one must be first in the session's list
/// (`SessionStateBuilder::expr_planners`), as `logsphere_engine::query::base_session`
/// puts it.
#[derive(Debug, Default)]
pub struct ExtractPlanner;

impl ExprPlanner for ExtractPlanner {
    fn plan_extract(&self, args: Vec<Expr>) -> Result<PlannerResult<Vec<Expr>>> {
        Ok(PlannerResult::Planned(Expr::ScalarFunction(
            ScalarFunction::new_udf(Arc::new(ScalarUDF::new_from_impl(DatePart::new())), args),
        )))
    }
}

#[cfg(test)]
mod tests;
