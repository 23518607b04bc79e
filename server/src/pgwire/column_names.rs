//! Output column names as PostgreSQL gives them (its `FigureColname`): `count(*)` is
//! `count`, `now()` is `now`, `x::text` is `x`, `CASE …` is `case`, and an expression with
//! no name of its own is `?column?`. DataFusion names a column after the whole expression
//! (`count(*)`, `Int64(1) + Int64(1)`), which BI tools show as headers and some key rows on.
//!
//! Names come from the SELECT list of the parsed statement, so only plain queries get them;
//! explicit aliases and wildcard expansions keep DataFusion's names, which already match.

use datafusion::sql::sqlparser::ast::{
    self, DataType as SqlType, Expr, Ident, Query, SelectItem, SetExpr, Statement,
};

/// The name PostgreSQL gives an expression it cannot name.
const UNNAMED: &str = "?column?";

/// The prefix of the alias datafusion-pg-catalog gives a column the SELECT list repeats
/// (`SELECT n.oid, n.* …`, DBeaver's catalog reads): DataFusion refuses two columns of one
/// name, so the first becomes `__alias_oid`, which PostgreSQL would have called `oid`.
const DUPLICATE_ALIAS_PREFIX: &str = "__alias_";

/// PostgreSQL's name for each of the `width` output columns of `statement`, `None` where
/// DataFusion's name already agrees (aliases, columns expanded from `*`). `None` overall when
/// the statement is not a query or its SELECT list cannot be matched to `width` columns.
pub(crate) fn output_names(statement: &Statement, width: usize) -> Option<Vec<Option<String>>> {
    let Statement::Query(query) = statement else {
        return None;
    };
    let items = select_list(query)?;
    let named: Vec<Option<Option<String>>> = items.iter().map(item_name).collect();
    // `Some(name)` for one column, `None` for a wildcard of unknown width: match the items
    // before the first wildcard from the front and those after the last from the back.
    let first_wild = named.iter().position(Option::is_none);
    let mut out = vec![None; width];
    match first_wild {
        None => {
            if named.len() != width {
                return None;
            }
            for (slot, name) in out.iter_mut().zip(named) {
                *slot = name.flatten();
            }
        }
        Some(first) => {
            let last = named.iter().rposition(Option::is_none).unwrap_or(first);
            let tail = named.len() - last - 1;
            if first + tail > width {
                return None;
            }
            for (slot, name) in out.iter_mut().zip(&named[..first]) {
                slot.clone_from(&name.clone().flatten());
            }
            for (slot, name) in out[width - tail..].iter_mut().zip(&named[last + 1..]) {
                slot.clone_from(&name.clone().flatten());
            }
        }
    }
    Some(out)
}

/// The SELECT list naming a query's columns: for a set operation, its leftmost SELECT.
fn select_list(query: &Query) -> Option<&[SelectItem]> {
    let mut body = query.body.as_ref();
    loop {
        match body {
            SetExpr::Select(select) => return Some(&select.projection),
            SetExpr::Query(inner) => body = inner.body.as_ref(),
            SetExpr::SetOperation { left, .. } => body = left.as_ref(),
            _ => return None,
        }
    }
}

/// `None` for a wildcard; `Some(None)` for an aliased column (DataFusion already uses the
/// alias); `Some(Some(name))` otherwise.
fn item_name(item: &SelectItem) -> Option<Option<String>> {
    match item {
        SelectItem::UnnamedExpr(expr) => {
            Some(Some(figure(expr).unwrap_or_else(|| UNNAMED.to_owned())))
        }
        SelectItem::ExprWithAlias { expr, alias } => {
            // Only the alias the rewrite made, `__alias_<the expression's own name>`.
            let own = figure(expr)
                .filter(|own| alias.value.strip_prefix(DUPLICATE_ALIAS_PREFIX) == Some(own));
            Some(own)
        }
        SelectItem::ExprWithAliases { .. }
        | SelectItem::QualifiedWildcard(..)
        | SelectItem::Wildcard(_) => None,
    }
}

/// An identifier as PostgreSQL folds it: unquoted names are lower-cased.
fn ident(ident: &Ident) -> String {
    match ident.quote_style {
        Some(_) => ident.value.clone(),
        None => ident.value.to_lowercase(),
    }
}

/// The last part of a (possibly schema-qualified) name.
fn last_part(name: &ast::ObjectName) -> Option<String> {
    name.0.last().and_then(|p| p.as_ident()).map(ident)
}

/// PostgreSQL's `FigureColnameInternal`: a name when the expression carries one.
fn figure(expr: &Expr) -> Option<String> {
    match expr {
        Expr::Identifier(i) => Some(ident(i)),
        Expr::CompoundIdentifier(parts) => parts.last().map(ident),
        Expr::Function(f) => last_part(&f.name),
        Expr::Nested(inner) => figure(inner),
        Expr::Cast {
            expr, data_type, ..
        } => figure(expr).or_else(|| type_name(data_type)),
        Expr::TypedString(typed) => type_name(&typed.data_type),
        Expr::Case { .. } => Some("case".to_owned()),
        Expr::Exists { .. } => Some("exists".to_owned()),
        Expr::Array(_) => Some("array".to_owned()),
        Expr::Interval(_) => Some("interval".to_owned()),
        Expr::Extract { .. } => Some("extract".to_owned()),
        Expr::Substring { .. } => Some("substring".to_owned()),
        Expr::Position { .. } => Some("position".to_owned()),
        Expr::Trim { .. } => Some("btrim".to_owned()),
        Expr::Ceil { .. } => Some("ceil".to_owned()),
        Expr::Floor { .. } => Some("floor".to_owned()),
        Expr::AtTimeZone { .. } => Some("timezone".to_owned()),
        Expr::Subquery(query) => {
            select_list(query)
                .and_then(|items| items.first())
                .and_then(|item| match item {
                    SelectItem::UnnamedExpr(e) => figure(e),
                    SelectItem::ExprWithAlias { alias, .. } => Some(ident(alias)),
                    _ => None,
                })
        }
        _ => None,
    }
}

/// The name of a cast's target type, as `SELECT 1::int` reports it (`int4`).
fn type_name(data_type: &SqlType) -> Option<String> {
    let name = match data_type {
        SqlType::Int(_) | SqlType::Integer(_) | SqlType::Int4(_) => "int4",
        SqlType::BigInt(_) | SqlType::Int8(_) => "int8",
        SqlType::SmallInt(_) | SqlType::Int2(_) => "int2",
        SqlType::Real | SqlType::Float4 => "float4",
        SqlType::DoublePrecision | SqlType::Float8 | SqlType::Double(_) => "float8",
        SqlType::Boolean | SqlType::Bool => "bool",
        SqlType::Text => "text",
        SqlType::Varchar(_) | SqlType::CharacterVarying(_) => "varchar",
        SqlType::Numeric(_) | SqlType::Decimal(_) => "numeric",
        SqlType::Date => "date",
        SqlType::Timestamp(_, ast::TimezoneInfo::Tz | ast::TimezoneInfo::WithTimeZone) => {
            "timestamptz"
        }
        SqlType::Timestamp(..) => "timestamp",
        SqlType::Interval { .. } => "interval",
        SqlType::Custom(name, _) => return last_part(name),
        _ => return None,
    };
    Some(name.to_owned())
}

#[cfg(test)]
mod tests;
