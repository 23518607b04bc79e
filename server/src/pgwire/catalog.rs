//! `pg_catalog` and the PostgreSQL functions clients call on connect, installed into each
//! connection's session.
//!
//! datafusion-pg-catalog's `setup_pg_catalog` decodes its ~60 static tables (Arrow dumps of
//! a real PostgreSQL) on every call. [`PgCatalog::load`] decodes them once per server and
//! [`PgCatalog::install`] shares them with every connection; the dynamic tables (`pg_class`,
//! `pg_attribute`, …) are still built from the connection's own catalog.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, StringBuilder};
use datafusion::arrow::datatypes::DataType;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::FunctionRegistry;
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, TypeSignature,
    Volatility,
};
use datafusion::prelude::SessionContext;
use datafusion::scalar::ScalarValue;
use datafusion_pg_catalog::pg_catalog::context::{PgCatalogContextProvider, Role};
use datafusion_pg_catalog::pg_catalog::{
    self as pgc, PgCatalogSchemaProvider, PgCatalogStaticTables, array_bounds_udf, format_type,
    generate_series_arg_coercion, has_privilege_udf, oid_type_planner, pg_get_expr_udf,
    quote_ident_udf,
};
use pgwire::error::PgWireError;

use super::info_schema;
use super::pg_compat::{self, PgCatalogOverlay, TypeNames};
use super::session::{SharedVars, lock};
use super::unknown_literals::UnknownLiterals;

/// The shared, decoded part of `pg_catalog`.
pub(crate) struct PgCatalog {
    static_tables: Arc<PgCatalogStaticTables>,
    roles: ConfiguredRoles,
    types: Arc<TypeNames>,
}

impl PgCatalog {
    /// Decodes the static catalog tables; `role_names` become the rows of `pg_roles`.
    pub(crate) fn load(role_names: Vec<String>) -> Result<Self> {
        let static_tables = Arc::new(PgCatalogStaticTables::try_new()?);
        let types = Arc::new(TypeNames::from_pg_type(static_tables.pg_type.data()));
        Ok(Self {
            static_tables,
            types,
            roles: ConfiguredRoles {
                names: Arc::new(role_names),
            },
        })
    }

    /// Registers `pg_catalog` in `catalog_name` of `ctx`, plus the PostgreSQL functions
    /// (datafusion-pg-catalog's, then LogSphere's `current_setting` and `version`).
    ///
    /// Mirrors `datafusion_pg_catalog::setup_pg_catalog` 0.19, with the static tables shared.
    pub(crate) fn install(
        &self,
        ctx: &SessionContext,
        catalog_name: &str,
        vars: SharedVars,
    ) -> Result<()> {
        let schema = PgCatalogSchemaProvider::try_new(
            info_schema::WithoutExtras(ctx.state().catalog_list().clone()),
            Arc::clone(&self.static_tables),
            // By value: datafusion-pg-catalog's blanket impl for `Arc<T>` recurses forever.
            self.roles.clone(),
        )?;
        let catalog = ctx.catalog(catalog_name).ok_or_else(|| {
            DataFusionError::Configuration(format!("catalog {catalog_name} is not registered"))
        })?;
        catalog.register_schema(
            info_schema::SCHEMA,
            Arc::new(info_schema::InformationSchemaExtras::new(
                ctx.state().catalog_list().clone(),
            )),
        )?;
        catalog.register_schema(
            "pg_catalog",
            Arc::new(PgCatalogOverlay::new(Arc::new(schema))),
        )?;

        for udf in [
            pgc::create_current_database_udf(catalog_name),
            pgc::create_current_schema_udf(),
            pgc::create_current_schemas_udf(),
            pgc::create_pg_get_userbyid_udf(),
            has_privilege_udf::create_has_privilege_udf("has_table_privilege"),
            has_privilege_udf::create_has_privilege_udf("has_schema_privilege"),
            has_privilege_udf::create_has_privilege_udf("has_database_privilege"),
            has_privilege_udf::create_has_privilege_udf("has_any_column_privilege"),
            pgc::create_pg_table_is_visible(),
            format_type::create_format_type_udf(),
            pg_get_expr_udf::create_pg_get_expr_udf(),
            pgc::create_pg_get_partkeydef_udf(),
            pgc::create_pg_relation_is_publishable_udf(),
            pgc::create_pg_get_statisticsobjdef_columns_udf(),
            pgc::create_pg_encoding_to_char_udf(),
            pgc::create_pg_backend_pid_udf(),
            pgc::create_pg_relation_size_udf(),
            pgc::create_pg_total_relation_size_udf(),
            pgc::create_pg_stat_get_numscans(),
            pgc::create_pg_get_constraintdef(),
            pgc::create_pg_get_partition_ancestors_udf(),
            quote_ident_udf::create_quote_ident_udf(),
            quote_ident_udf::create_parse_ident_udf(),
            array_bounds_udf::create_array_upper_udf(),
            array_bounds_udf::create_array_lower_udf(),
        ] {
            ctx.register_udf(udf);
        }
        ctx.register_udtf(
            "pg_get_keywords",
            self.static_tables.pg_get_keywords.clone(),
        );

        {
            let state = ctx.state_ref();
            let existing = state.read().clone();
            let mut new_state = SessionStateBuilder::new_from_existing(existing)
                .with_type_planner(Arc::new(oid_type_planner::PgOidTypePlanner))
                .build();
            new_state.register_function_rewrite(Arc::new(UnknownLiterals))?;
            new_state.register_expr_planner(Arc::new(UnknownLiterals))?;
            *state.write() = new_state;
        }
        generate_series_arg_coercion::CoerceIntArgsToBigInt::widen(ctx);

        ctx.register_udf(session_user_udf(Arc::clone(&vars)));
        ctx.register_udf(ScalarUDF::new_from_impl(CurrentSetting::new(Arc::clone(
            &vars,
        ))));
        ctx.register_udf(ScalarUDF::new_from_impl(SetConfig::new(vars)));
        ctx.register_udf(version_udf());
        for udf in pg_compat::udfs(&self.types) {
            ctx.register_udf(udf);
        }
        for name in [
            "col_description",
            "obj_description",
            "shobj_description",
            "pg_get_indexdef",
            "pg_get_serial_sequence",
            "pg_get_viewdef",
            "pg_get_triggerdef",
            "pg_get_functiondef",
            "pg_get_function_identity_arguments",
            "pg_get_function_result",
            "pg_get_function_arguments",
        ] {
            ctx.register_udf(ScalarUDF::new_from_impl(NullText::new(name)));
        }
        Ok(())
    }
}

/// `pg_roles` rows: the configured users (or the login name when there are none).
#[derive(Debug, Clone)]
struct ConfiguredRoles {
    names: Arc<Vec<String>>,
}

#[async_trait::async_trait]
impl PgCatalogContextProvider for ConfiguredRoles {
    async fn roles(&self) -> Vec<String> {
        self.names.as_ref().clone()
    }

    async fn role(&self, name: &str) -> Option<Role> {
        self.names
            .iter()
            .find(|n| n.as_str() == name)
            .map(|n| Role {
                name: n.clone(),
                is_superuser: false,
                can_login: true,
                can_create_db: false,
                can_create_role: false,
                can_create_user: false,
                can_replication: false,
                grants: Vec::new(),
                inherited_roles: Vec::new(),
            })
    }
}

/// `session_user` (and `current_user`, which the SQL rewrites turn into it): the login user.
fn session_user_udf(vars: SharedVars) -> ScalarUDF {
    datafusion::logical_expr::create_udf(
        "session_user",
        vec![],
        DataType::Utf8,
        Volatility::Stable,
        Arc::new(move |_args: &[ColumnarValue]| {
            let user = lock(&vars)
                .get("session_authorization")
                .unwrap_or_default()
                .to_owned();
            Ok(ColumnarValue::Scalar(ScalarValue::Utf8(Some(user))))
        }),
    )
}

/// `version()`: a PostgreSQL-shaped version string (pgAdmin, DataGrip and Grafana parse it).
fn version_udf() -> ScalarUDF {
    let version = format!(
        "PostgreSQL {} on {}, compiled by rustc",
        super::session::SERVER_VERSION,
        std::env::consts::ARCH
    );
    datafusion::logical_expr::create_udf(
        "version",
        vec![],
        DataType::Utf8,
        Volatility::Immutable,
        Arc::new(move |_args: &[ColumnarValue]| {
            Ok(ColumnarValue::Scalar(ScalarValue::Utf8(Some(
                version.clone(),
            ))))
        }),
    )
}

/// A session's parameters as a UDF holds them: equal and hashed by identity, so a UDF
/// equals another only over the same session.
#[derive(Debug, Clone)]
struct SessionVars(SharedVars);

impl PartialEq for SessionVars {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for SessionVars {}

impl Hash for SessionVars {
    fn hash<H: Hasher>(&self, state: &mut H) {
        (Arc::as_ptr(&self.0) as usize).hash(state);
    }
}

/// `current_setting(name [, missing_ok])`: the connection's run-time parameters, as SHOW
/// reports them (Grafana reads `server_version_num` and `search_path` this way).
#[derive(Debug, PartialEq, Eq, Hash)]
struct CurrentSetting {
    vars: SessionVars,
    signature: Signature,
}

impl CurrentSetting {
    fn new(vars: SharedVars) -> Self {
        let signature = Signature::one_of(
            vec![
                TypeSignature::Exact(vec![DataType::Utf8]),
                TypeSignature::Exact(vec![DataType::Utf8, DataType::Boolean]),
            ],
            Volatility::Stable,
        );
        Self {
            vars: SessionVars(vars),
            signature,
        }
    }
}

impl ScalarUDFImpl for CurrentSetting {
    fn name(&self) -> &str {
        "current_setting"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let names = arrays.first().ok_or_else(|| {
            DataFusionError::Plan("current_setting() needs a parameter name".to_owned())
        })?;
        let names = datafusion::arrow::compute::cast(names, &DataType::Utf8)?;
        let names = names.as_string::<i32>();
        let missing_ok = match arrays.get(1) {
            Some(a) => Some(datafusion::arrow::compute::cast(a, &DataType::Boolean)?),
            None => None,
        };
        let vars = lock(&self.vars.0);
        let mut out = StringBuilder::with_capacity(names.len(), names.len() * 8);
        for row in 0..names.len() {
            if names.is_null(row) {
                out.append_null();
                continue;
            }
            let name = names.value(row);
            match vars.get(name) {
                Some(v) => out.append_value(v),
                None => {
                    let ok = missing_ok
                        .as_ref()
                        .map(|a| {
                            let a = a.as_boolean();
                            !a.is_null(row) && a.value(row)
                        })
                        .unwrap_or(false);
                    if !ok {
                        return Err(DataFusionError::Execution(format!(
                            "unrecognized configuration parameter \"{name}\""
                        )));
                    }
                    out.append_null();
                }
            }
        }
        let array: ArrayRef = Arc::new(out.finish());
        if array.len() == 1
            && args
                .args
                .iter()
                .all(|a| matches!(a, ColumnarValue::Scalar(_)))
        {
            return Ok(ColumnarValue::Scalar(ScalarValue::try_from_array(
                &array, 0,
            )?));
        }
        Ok(ColumnarValue::Array(array))
    }
}

/// `set_config(name, value, is_local)`: sets a run-time parameter of the connection as SET
/// does and returns its new value (pgAdmin sets `bytea_output` this way on connect).
/// Transaction-local settings (`is_local` true) are refused: nothing would undo them at the
/// end of the transaction.
#[derive(Debug, PartialEq, Eq, Hash)]
struct SetConfig {
    vars: SessionVars,
    signature: Signature,
}

impl SetConfig {
    fn new(vars: SharedVars) -> Self {
        let signature = Signature::exact(
            vec![DataType::Utf8, DataType::Utf8, DataType::Boolean],
            Volatility::Volatile,
        );
        Self {
            vars: SessionVars(vars),
            signature,
        }
    }
}

impl ScalarUDFImpl for SetConfig {
    fn name(&self) -> &str {
        "set_config"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let [names, values, local] = arrays.as_slice() else {
            return Err(DataFusionError::Plan(
                "set_config() takes a name, a value and is_local".to_owned(),
            ));
        };
        let (Some(names), Some(values), Some(local)) = (
            names.as_string_opt::<i32>(),
            values.as_string_opt::<i32>(),
            local.as_boolean_opt(),
        ) else {
            return Err(DataFusionError::Plan(
                "set_config() takes (text, text, boolean)".to_owned(),
            ));
        };
        let mut vars = lock(&self.vars.0);
        let mut out = StringBuilder::with_capacity(names.len(), names.len() * 8);
        for row in 0..names.len() {
            if names.is_null(row) {
                return Err(DataFusionError::Execution(
                    "SET requires parameter name".to_owned(),
                ));
            }
            let name = names.value(row);
            if !local.is_null(row) && local.value(row) {
                return Err(DataFusionError::NotImplemented(format!(
                    "set_config('{name}', …, true): transaction-local settings are not supported; \
                     pass false to set it for the session"
                )));
            }
            if name.to_ascii_lowercase().starts_with("datafusion.") {
                return Err(DataFusionError::NotImplemented(format!(
                    "set_config('{name}', …): DataFusion options are changed with SET"
                )));
            }
            if values.is_null(row) {
                // NULL resets to the default, as in PostgreSQL.
                vars.reset(name);
            } else {
                vars.set(name, values.value(row)).map_err(|e| match e {
                    PgWireError::UserError(info) => {
                        DataFusionError::External(Box::new(super::errors::SqlStateError {
                            code: info.code,
                            message: info.message,
                        }))
                    }
                    other => DataFusionError::Configuration(other.to_string()),
                })?;
            }
            out.append_option(vars.get(name));
        }
        let array: ArrayRef = Arc::new(out.finish());
        if array.len() == 1
            && args
                .args
                .iter()
                .all(|a| matches!(a, ColumnarValue::Scalar(_)))
        {
            return Ok(ColumnarValue::Scalar(ScalarValue::try_from_array(
                &array, 0,
            )?));
        }
        Ok(ColumnarValue::Array(array))
    }
}

/// A catalog function LogSphere has nothing to answer with (comments, index definitions):
/// returns NULL text for any arguments, as PostgreSQL does for objects without one.
#[derive(Debug, PartialEq, Eq, Hash)]
struct NullText {
    name: &'static str,
    signature: Signature,
}

impl NullText {
    fn new(name: &'static str) -> Self {
        Self {
            name,
            signature: Signature::variadic_any(Volatility::Stable),
        }
    }
}

impl ScalarUDFImpl for NullText {
    fn name(&self) -> &str {
        self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(&self, _args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        Ok(ColumnarValue::Scalar(ScalarValue::Utf8(None)))
    }
}
