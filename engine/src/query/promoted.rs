//! Scans of `logs` that read promoted fields (`fields`): each input (the hot batches, or
//! a group of cold files with the same promoted columns) is read in its own shape, then
//! projected to the table's: a column the input has is passed through (or cast to the
//! table type), one it lacks is computed from `attributes`.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use datafusion::catalog::Session;
use datafusion::common::{Column, DFSchema, Result};
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::logical_expr::expr::ScalarFunction;
use datafusion::logical_expr::{Expr, ScalarUDF, cast, lit};
use datafusion::physical_expr::projection::ProjectionExpr;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::projection::ProjectionExec;

use crate::catalog::ColdFile;
use crate::cold::ColdStore;
use crate::fields::FileColumn;
use crate::fields::{ATTRIBUTES, FieldExtract, FieldType, PromotedField, file_schema};
use crate::model::logs_schema;

/// One column of the table a scan wants.
#[derive(Debug, Clone)]
pub(crate) enum Wanted<'a> {
    /// A fixed column, by index in [`logs_schema`].
    Fixed(usize),
    /// A promoted field.
    Promoted(&'a PromotedField),
}

/// How one input holds a wanted promoted field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Held {
    /// As a column of this type, which casts exactly to the table type.
    Column(FieldType),
    /// Not (or not usably): computed from `attributes`.
    Attributes,
}

/// The hot batches (shaped like [`logs_schema`]) as the wanted columns.
pub(crate) fn hot_plan(
    state: &dyn Session,
    partitions: &[Vec<arrow::array::RecordBatch>],
    wanted: &[Wanted<'_>],
) -> Result<Arc<dyn ExecutionPlan>> {
    let held = vec![Held::Attributes; wanted.len()];
    let inner = inner_projection(wanted, &held);
    let mem = MemorySourceConfig::try_new_exec(partitions, logs_schema(), Some(inner))?;
    adapt(state, mem, wanted, &held)
}

/// The cold files as the wanted columns: one Parquet scan per set of files that hold the
/// wanted fields alike.
pub(crate) async fn cold_plans(
    state: &dyn Session,
    cold: &ColdStore,
    files: &[&ColdFile],
    wanted: &[Wanted<'_>],
    filters: &[Expr],
    limit: Option<usize>,
) -> Result<Vec<Arc<dyn ExecutionPlan>>> {
    let mut groups: BTreeMap<Vec<Held>, Vec<&ColdFile>> = BTreeMap::new();
    for f in files {
        let held = wanted
            .iter()
            .map(|w| match w {
                Wanted::Fixed(_) => Held::Attributes,
                Wanted::Promoted(p) => f
                    .columns
                    .iter()
                    .find(|c| c.name == p.name && c.kind.casts_exactly_to(p.kind))
                    .map_or(Held::Attributes, |c| Held::Column(c.kind)),
            })
            .collect();
        groups.entry(held).or_default().push(*f);
    }
    let mut plans = Vec::with_capacity(groups.len());
    for (held, files) in groups {
        // The group's shape: the fixed columns, then the wanted fields it holds.
        let columns: Vec<FileColumn> = wanted
            .iter()
            .zip(&held)
            .filter_map(|(w, h)| match (w, h) {
                (Wanted::Promoted(p), Held::Column(k)) => Some(FileColumn {
                    name: p.name.clone(),
                    kind: *k,
                    values: 0,
                }),
                _ => None,
            })
            .collect();
        let schema = file_schema(&columns);
        let inner = inner_projection(wanted, &held);
        // Filters prune only on columns this group has with the table's type.
        let fixed = logs_schema();
        let usable: HashSet<&str> = fixed
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .chain(wanted.iter().zip(&held).filter_map(|(w, h)| match (w, h) {
                (Wanted::Promoted(p), Held::Column(k)) if *k == p.kind => Some(p.name.as_str()),
                _ => None,
            }))
            .collect();
        let filters: Vec<Expr> = filters
            .iter()
            .filter(|f| {
                f.column_refs()
                    .iter()
                    .all(|c| usable.contains(c.name.as_str()))
            })
            .cloned()
            .collect();
        let scan = super::tables::scan_cold_files(
            state,
            cold,
            &files,
            schema,
            Some(&inner),
            &filters,
            limit,
        )
        .await?;
        plans.push(adapt(state, scan, wanted, &held)?);
    }
    Ok(plans)
}

/// Indices (in the input's shape: fixed columns, then the held fields in wanted order)
/// that the input must produce: the wanted fixed columns, `attributes` when a field is
/// computed from it, and the held fields.
fn inner_projection(wanted: &[Wanted<'_>], held: &[Held]) -> Vec<usize> {
    let fixed = logs_schema().fields().len();
    let mut out: Vec<usize> = Vec::new();
    let mut next_held = fixed;
    let mut needs_attributes = false;
    for (w, h) in wanted.iter().zip(held) {
        match (w, h) {
            (Wanted::Fixed(i), _) => out.push(*i),
            (Wanted::Promoted(_), Held::Column(_)) => {
                out.push(next_held);
                next_held += 1;
            }
            (Wanted::Promoted(_), Held::Attributes) => needs_attributes = true,
        }
    }
    if needs_attributes && !out.contains(&ATTRIBUTES) {
        out.push(ATTRIBUTES);
    }
    let mut seen = HashSet::new();
    out.retain(|i| seen.insert(*i));
    out
}

/// Projects `input` to the wanted columns, in order, with the table's types.
fn adapt(
    state: &dyn Session,
    input: Arc<dyn ExecutionPlan>,
    wanted: &[Wanted<'_>],
    held: &[Held],
) -> Result<Arc<dyn ExecutionPlan>> {
    let df_schema = DFSchema::try_from(input.schema().as_ref().clone())?;
    let column = |name: &str| Expr::Column(Column::new_unqualified(name));
    let fixed = logs_schema();
    let mut exprs = Vec::with_capacity(wanted.len());
    for (w, h) in wanted.iter().zip(held) {
        let (expr, name) = match (w, h) {
            (Wanted::Fixed(i), _) => {
                let name = fixed.field(*i).name().clone();
                (column(&name), name)
            }
            (Wanted::Promoted(p), Held::Column(k)) => {
                let e = column(&p.name);
                let e = if *k == p.kind {
                    e
                } else {
                    cast(e, p.kind.data_type())
                };
                (e, p.name.clone())
            }
            (Wanted::Promoted(p), Held::Attributes) => {
                let udf = Arc::new(ScalarUDF::new_from_impl(FieldExtract::new(p.kind)));
                let e = Expr::ScalarFunction(ScalarFunction::new_udf(
                    udf,
                    vec![column("attributes"), lit(p.name.clone())],
                ));
                (e, p.name.clone())
            }
        };
        exprs.push(ProjectionExpr {
            expr: state.create_physical_expr(expr, &df_schema)?,
            alias: name,
        });
    }
    Ok(Arc::new(ProjectionExec::try_new(exprs, input)?))
}
