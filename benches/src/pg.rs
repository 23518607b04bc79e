//! A blocking PostgreSQL-protocol client for the benches: one tokio-postgres connection
//! driven by its own current-thread runtime, so bench threads can query without async.

use anyhow::Context;
use tokio_postgres::Row;

use crate::server::Server;

/// One connection to a bench server.
pub struct Pg {
    runtime: tokio::runtime::Runtime,
    client: tokio_postgres::Client,
}

impl Pg {
    /// Connects to `server` as `logsphere`.
    pub fn connect(server: &Server) -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start tokio")?;
        let conn_str = format!(
            "host={} port={} user=logsphere dbname=logsphere",
            server.pg.ip(),
            server.pg.port()
        );
        let client = runtime.block_on(async {
            let (client, connection) = tokio_postgres::connect(&conn_str, tokio_postgres::NoTls)
                .await
                .with_context(|| format!("cannot connect to {conn_str}"))?;
            tokio::spawn(async move {
                let _ = connection.await;
            });
            anyhow::Ok(client)
        })?;
        Ok(Self { runtime, client })
    }

    /// Runs one statement (simple protocol), e.g. a `CREATE CONTINUOUS QUERY`.
    pub fn execute(&self, sql: &str) -> anyhow::Result<()> {
        self.runtime
            .block_on(self.client.batch_execute(sql))
            .with_context(|| sql.to_string())
    }

    /// Runs a query (extended protocol) and returns its rows.
    pub fn query(&self, sql: &str) -> anyhow::Result<Vec<Row>> {
        self.runtime
            .block_on(self.client.query(sql, &[]))
            .with_context(|| sql.to_string())
    }

    /// The one `i64` a query returns.
    pub fn query_i64(&self, sql: &str) -> anyhow::Result<i64> {
        let rows = self.query(sql)?;
        let row = rows
            .first()
            .with_context(|| format!("{sql} returned no row"))?;
        row.try_get(0)
            .with_context(|| format!("{sql}: not a bigint"))
    }
}
