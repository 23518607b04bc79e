//! The parts of `information_schema` DataFusion's own lacks and BI tools read:
//! `columns` with PostgreSQL's `data_type` names, 1-based `ordinal_position` and
//! `udt_name` (Grafana, Metabase, DBeaver), and the constraint views (`table_constraints`,
//! `key_column_usage`, …), empty since LogSphere's tables have no keys.
//!
//! DataFusion answers `information_schema.*` itself, so these live in a schema of their
//! own, [`SCHEMA`], and [`rewrite`] points references to them there.

use std::ops::ControlFlow;
use std::sync::Arc;

use arrow_pg::datatypes::into_pg_type;
use async_trait::async_trait;
use datafusion::arrow::array::{ArrayRef, Int64Builder, RecordBatch, StringBuilder};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::{CatalogProviderList, MemTable, SchemaProvider, TableProvider};
use datafusion::error::Result;
use datafusion::sql::sqlparser::ast::{Ident, ObjectNamePart, Statement, visit_relations_mut};
use datafusion_pg_catalog::pg_catalog::catalog_info::CatalogInfo;

/// Where the replacement views live (`pg_`-prefixed, so tools that hide system schemas hide it).
pub(crate) const SCHEMA: &str = "pg_ls_information_schema";

/// Views served from [`SCHEMA`] instead of DataFusion's `information_schema`.
const VIEWS: &[&str] = &[
    "schemata",
    "tables",
    "views",
    "columns",
    "table_constraints",
    "key_column_usage",
    "referential_constraints",
    "constraint_column_usage",
    "check_constraints",
];

/// `information_schema.<view>` (optionally catalog-qualified) → `pg_ls_information_schema.<view>`
/// for the views in [`VIEWS`].
pub(crate) fn rewrite(statement: &mut Statement) {
    let _ = visit_relations_mut(statement, |name| {
        let parts: Vec<String> = name
            .0
            .iter()
            .map(|p| {
                p.as_ident()
                    .map(|i| i.value.to_ascii_lowercase())
                    .unwrap_or_default()
            })
            .collect();
        if let [.., schema, view] = parts.as_slice()
            && schema == "information_schema"
            && VIEWS.contains(&view.as_str())
        {
            name.0 = vec![
                ObjectNamePart::Identifier(Ident::new(SCHEMA)),
                ObjectNamePart::Identifier(Ident::new(view.clone())),
            ];
        }
        ControlFlow::<()>::Continue(())
    });
}

fn utf8(name: &str) -> Field {
    Field::new(name, DataType::Utf8, true)
}

fn text_schema(columns: &[&str]) -> SchemaRef {
    Arc::new(Schema::new(
        columns.iter().map(|c| utf8(c)).collect::<Vec<_>>(),
    ))
}

fn constraint_schema(view: &str) -> Option<SchemaRef> {
    let columns: &[&str] = match view {
        "table_constraints" => &[
            "constraint_catalog",
            "constraint_schema",
            "constraint_name",
            "table_catalog",
            "table_schema",
            "table_name",
            "constraint_type",
            "is_deferrable",
            "initially_deferred",
            "enforced",
            "nulls_distinct",
        ],
        "key_column_usage" => {
            return Some(Arc::new(Schema::new(vec![
                utf8("constraint_catalog"),
                utf8("constraint_schema"),
                utf8("constraint_name"),
                utf8("table_catalog"),
                utf8("table_schema"),
                utf8("table_name"),
                utf8("column_name"),
                Field::new("ordinal_position", DataType::Int64, true),
                Field::new("position_in_unique_constraint", DataType::Int64, true),
            ])));
        }
        "referential_constraints" => &[
            "constraint_catalog",
            "constraint_schema",
            "constraint_name",
            "unique_constraint_catalog",
            "unique_constraint_schema",
            "unique_constraint_name",
            "match_option",
            "update_rule",
            "delete_rule",
        ],
        "constraint_column_usage" => &[
            "table_catalog",
            "table_schema",
            "table_name",
            "column_name",
            "constraint_catalog",
            "constraint_schema",
            "constraint_name",
        ],
        "check_constraints" => &[
            "constraint_catalog",
            "constraint_schema",
            "constraint_name",
            "check_clause",
        ],
        _ => return None,
    };
    Some(text_schema(columns))
}

/// PostgreSQL's `information_schema.columns.data_type` for a `pg_type` name.
fn sql_type_name(typname: &str) -> String {
    match typname {
        "int2" => "smallint",
        "int4" => "integer",
        "int8" => "bigint",
        "float4" => "real",
        "float8" => "double precision",
        "bool" => "boolean",
        "varchar" => "character varying",
        "bpchar" => "character",
        "timestamptz" => "timestamp with time zone",
        "timestamp" => "timestamp without time zone",
        "timetz" => "time with time zone",
        "time" => "time without time zone",
        t if t.starts_with('_') => "ARRAY",
        t => t,
    }
    .to_owned()
}

/// DataFusion's `information_schema` listings that would show [`SCHEMA`] itself, with the
/// column naming a row's schema.
fn listing_schema_column(view: &str) -> Option<&'static str> {
    match view {
        "schemata" => Some("schema_name"),
        "tables" | "views" => Some("table_schema"),
        _ => None,
    }
}

/// The schema provider behind [`SCHEMA`].
#[derive(Debug)]
pub(crate) struct InformationSchemaExtras {
    catalogs: Arc<dyn CatalogProviderList>,
}

impl InformationSchemaExtras {
    pub(crate) fn new(catalogs: Arc<dyn CatalogProviderList>) -> Self {
        Self { catalogs }
    }

    /// DataFusion's own `information_schema.<view>` without the rows of [`SCHEMA`] (Grafana's
    /// schema and table pickers list `information_schema.schemata` and `.tables`).
    async fn listing_without_extras(
        &self,
        view: &str,
        schema_column: &str,
    ) -> Result<Option<Arc<dyn TableProvider>>> {
        use datafusion::prelude::{col, lit};
        let provider = datafusion::catalog::information_schema::InformationSchemaProvider::new(
            Arc::clone(&self.catalogs),
        );
        let Some(table) = provider.table(view).await? else {
            return Ok(None);
        };
        let plan = datafusion::logical_expr::LogicalPlanBuilder::scan(
            view,
            datafusion::datasource::provider_as_source(table),
            None,
        )?
        .filter(col(schema_column).not_eq(lit(SCHEMA)))?
        .build()?;
        Ok(Some(Arc::new(datafusion::catalog::view::ViewTable::new(
            plan, None,
        ))))
    }

    async fn columns(&self) -> Result<Arc<dyn TableProvider>> {
        let names = [
            "table_catalog",
            "table_schema",
            "table_name",
            "column_name",
            "ordinal_position",
            "column_default",
            "is_nullable",
            "data_type",
            "character_maximum_length",
            "numeric_precision",
            "numeric_scale",
            "datetime_precision",
            "udt_catalog",
            "udt_schema",
            "udt_name",
            "is_identity",
            "is_generated",
            "is_updatable",
        ];
        let ints = [
            "ordinal_position",
            "character_maximum_length",
            "numeric_precision",
            "numeric_scale",
            "datetime_precision",
        ];
        let schema = Arc::new(Schema::new(
            names
                .iter()
                .map(|n| {
                    if ints.contains(n) {
                        Field::new(*n, DataType::Int64, true)
                    } else {
                        utf8(n)
                    }
                })
                .collect::<Vec<_>>(),
        ));
        let mut text: Vec<StringBuilder> = (0..names.len()).map(|_| StringBuilder::new()).collect();
        let mut nums: Vec<Int64Builder> = (0..names.len()).map(|_| Int64Builder::new()).collect();
        for catalog_name in CatalogProviderList::catalog_names(self.catalogs.as_ref()) {
            let Some(catalog) = self.catalogs.catalog(&catalog_name) else {
                continue;
            };
            for schema_name in catalog.schema_names() {
                if schema_name == SCHEMA {
                    continue;
                }
                let Some(provider) = catalog.schema(&schema_name) else {
                    continue;
                };
                for table_name in provider.table_names() {
                    let Some(table) = provider.table(&table_name).await? else {
                        continue;
                    };
                    for (i, field) in table.schema().fields().iter().enumerate() {
                        let typname = into_pg_type(field.data_type())
                            .map(|t| t.name().to_owned())
                            .unwrap_or_else(|_| "text".to_owned());
                        let precision = match typname.as_str() {
                            "int2" => Some(16),
                            "int4" => Some(32),
                            "int8" => Some(64),
                            "float4" => Some(24),
                            "float8" => Some(53),
                            _ => None,
                        };
                        let datetime = typname.starts_with("timestamp").then_some(6);
                        let row: [Option<String>; 18] = [
                            Some(catalog_name.clone()),
                            Some(schema_name.clone()),
                            Some(table_name.clone()),
                            Some(field.name().clone()),
                            None,
                            None,
                            Some(if field.is_nullable() { "YES" } else { "NO" }.to_owned()),
                            Some(sql_type_name(&typname)),
                            None,
                            None,
                            None,
                            None,
                            Some(catalog_name.clone()),
                            Some("pg_catalog".to_owned()),
                            Some(typname.clone()),
                            Some("NO".to_owned()),
                            Some("NEVER".to_owned()),
                            Some("NO".to_owned()),
                        ];
                        for (c, value) in row.into_iter().enumerate() {
                            let n = names[c];
                            if ints.contains(&n) {
                                nums[c].append_option(match n {
                                    "ordinal_position" => Some(i as i64 + 1),
                                    "numeric_precision" => precision,
                                    "datetime_precision" => datetime,
                                    _ => None,
                                });
                            } else {
                                text[c].append_option(value);
                            }
                        }
                    }
                }
            }
        }
        let arrays: Vec<ArrayRef> = names
            .iter()
            .enumerate()
            .map(|(c, n)| -> ArrayRef {
                if ints.contains(n) {
                    Arc::new(nums[c].finish())
                } else {
                    Arc::new(text[c].finish())
                }
            })
            .collect();
        let batch = RecordBatch::try_new(Arc::clone(&schema), arrays)?;
        Ok(Arc::new(MemTable::try_new(schema, vec![vec![batch]])?))
    }
}

#[async_trait]
impl SchemaProvider for InformationSchemaExtras {
    fn table_names(&self) -> Vec<String> {
        VIEWS.iter().map(|v| (*v).to_owned()).collect()
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        let name = name.to_ascii_lowercase();
        if let Some(column) = listing_schema_column(&name) {
            return self.listing_without_extras(&name, column).await;
        }
        let table: Arc<dyn TableProvider> = if name == "columns" {
            self.columns().await?
        } else {
            match constraint_schema(&name) {
                Some(schema) => Arc::new(MemTable::try_new(schema, vec![vec![]])?),
                None => return Ok(None),
            }
        };
        // As views, so DataFusion's `information_schema.tables` does not list them among
        // the BASE TABLEs table pickers show.
        let plan = datafusion::logical_expr::LogicalPlanBuilder::scan(
            name.as_str(),
            datafusion::datasource::provider_as_source(table),
            None,
        )?
        .build()?;
        Ok(Some(Arc::new(datafusion::catalog::view::ViewTable::new(
            plan, None,
        ))))
    }

    fn table_exist(&self, name: &str) -> bool {
        VIEWS.contains(&name.to_ascii_lowercase().as_str())
    }
}

/// The catalog list as `pg_catalog` should see it: without [`SCHEMA`], so `pg_namespace`
/// and `pg_class` (and the tools that list tables from them) do not show it.
#[derive(Debug, Clone)]
pub(crate) struct WithoutExtras(pub(crate) Arc<dyn CatalogProviderList>);

#[async_trait]
impl CatalogInfo for WithoutExtras {
    async fn catalog_names(&self) -> Result<Vec<String>> {
        CatalogInfo::catalog_names(&self.0).await
    }

    async fn schema_names(&self, catalog_name: &str) -> Result<Option<Vec<String>>> {
        Ok(CatalogInfo::schema_names(&self.0, catalog_name)
            .await?
            .map(|names| names.into_iter().filter(|n| n != SCHEMA).collect()))
    }

    async fn table_names(
        &self,
        catalog_name: &str,
        schema_name: &str,
    ) -> Result<Option<Vec<String>>> {
        if schema_name == SCHEMA {
            return Ok(None);
        }
        CatalogInfo::table_names(&self.0, catalog_name, schema_name).await
    }

    async fn table_schema(
        &self,
        catalog_name: &str,
        schema_name: &str,
        table_name: &str,
    ) -> Result<Option<SchemaRef>> {
        CatalogInfo::table_schema(&self.0, catalog_name, schema_name, table_name).await
    }

    async fn table_type(
        &self,
        catalog_name: &str,
        schema_name: &str,
        table_name: &str,
    ) -> Result<Option<datafusion::datasource::TableType>> {
        CatalogInfo::table_type(&self.0, catalog_name, schema_name, table_name).await
    }
}
