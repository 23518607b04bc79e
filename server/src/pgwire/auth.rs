//! Connection startup: authentication (none on loopback-only setups, SCRAM-SHA-256 with
//! configured users) and the parameters a client is told about once it is in.

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use futures::Sink;
use pgwire::api::auth::sasl::SASLAuthStartupHandler;
use pgwire::api::auth::sasl::scram::{SCRAM_ITERATIONS, ScramAuth, gen_salted_password};
use pgwire::api::auth::{
    AuthSource, LoginInfo, Password, ServerParameterProvider, StartupHandler,
    finish_authentication, protocol_negotiation, save_startup_parameters_to_metadata,
};
use pgwire::api::{ClientInfo, METADATA_USER, PgWireConnectionState, PidSecretKeyGenerator};
use pgwire::error::{PgWireError, PgWireResult};
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};

use super::backend::{Backend, Backends};
use super::session::{SharedVars, lock};
use crate::config::PgUser;

/// The configured users' SCRAM secrets, derived once at startup.
pub(crate) struct Credentials {
    users: HashMap<String, ScramSecret>,
    /// Answers for unknown users, so a login attempt cannot tell "no such user" from "wrong
    /// password": both fail the proof check with 28P01.
    decoy: ScramSecret,
}

#[derive(Clone)]
struct ScramSecret {
    salt: Vec<u8>,
    salted_password: Vec<u8>,
}

impl ScramSecret {
    fn derive(password: &str) -> Self {
        let salt = uuid::Uuid::new_v4().as_bytes().to_vec();
        let salted_password = gen_salted_password(password, &salt, SCRAM_ITERATIONS);
        Self {
            salt,
            salted_password,
        }
    }
}

impl Credentials {
    /// Hashes every configured password (PBKDF2, 4096 rounds: milliseconds each).
    pub(crate) fn new(users: &[PgUser]) -> Self {
        let users = users
            .iter()
            .map(|u| (u.name.clone(), ScramSecret::derive(&u.password)))
            .collect();
        Self {
            users,
            decoy: ScramSecret::derive(&uuid::Uuid::new_v4().to_string()),
        }
    }
}

impl Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("users", &self.users.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct CredentialsSource(Arc<Credentials>);

#[async_trait]
impl AuthSource for CredentialsSource {
    async fn get_password(&self, login: &LoginInfo) -> PgWireResult<Password> {
        let user = login.user().ok_or(PgWireError::UserNameRequired)?;
        let secret = self.0.users.get(user).unwrap_or(&self.0.decoy);
        Ok(Password::new(
            Some(secret.salt.clone()),
            secret.salted_password.clone(),
        ))
    }
}

/// What every connection's startup needs from the server.
pub(crate) struct StartupContext {
    pub(crate) credentials: Option<Arc<Credentials>>,
    pub(crate) pids: Arc<dyn PidSecretKeyGenerator>,
}

/// One connection's startup handler.
pub(crate) struct Authenticator {
    method: Method,
    authenticated: AtomicBool,
    backend: Arc<Backend>,
    backends: Arc<Backends>,
}

enum Method {
    /// No password: only allowed when the server listens on loopback (checked in config).
    Trust {
        parameters: SessionParameters,
        pids: Arc<dyn PidSecretKeyGenerator>,
    },
    Scram(Box<SASLAuthStartupHandler<SessionParameters>>),
}

impl Authenticator {
    /// A startup handler for one connection whose parameters live in `vars`.
    pub(crate) fn new(
        startup: &StartupContext,
        vars: SharedVars,
        backend: Arc<Backend>,
        backends: Arc<Backends>,
    ) -> Self {
        let parameters = SessionParameters { vars };
        let method = match &startup.credentials {
            None => Method::Trust {
                parameters,
                pids: Arc::clone(&startup.pids),
            },
            Some(credentials) => {
                let scram = ScramAuth::new(Arc::new(CredentialsSource(Arc::clone(credentials))));
                let handler = SASLAuthStartupHandler::new(Arc::new(parameters))
                    .with_scram(scram)
                    .with_pid_secret_key_generator(Arc::clone(&startup.pids));
                Method::Scram(Box::new(handler))
            }
        };
        Self {
            method,
            authenticated: AtomicBool::new(false),
            backend,
            backends,
        }
    }
}

#[async_trait]
impl StartupHandler for Authenticator {
    async fn on_startup<C>(
        &self,
        client: &mut C,
        message: PgWireFrontendMessage,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        match &self.method {
            Method::Trust { parameters, pids } => {
                if let PgWireFrontendMessage::Startup(ref startup) = message {
                    protocol_negotiation(client, startup).await?;
                    save_startup_parameters_to_metadata(client, startup);
                    if !client.metadata().contains_key(METADATA_USER) {
                        return Err(PgWireError::UserNameRequired);
                    }
                    let (pid, secret_key) = pids.generate(client);
                    client.set_pid_and_secret_key(pid, secret_key);
                    finish_authentication(client, parameters).await?;
                }
            }
            Method::Scram(handler) => handler.on_startup(client, message).await?,
        }
        if matches!(client.state(), PgWireConnectionState::ReadyForQuery)
            && !self.authenticated.swap(true, Ordering::Relaxed)
        {
            let user = client
                .metadata()
                .get(METADATA_USER)
                .map(String::as_str)
                .unwrap_or("");
            let method = match self.method {
                Method::Trust { .. } => "trust",
                Method::Scram(_) => "scram-sha-256",
            };
            // Reachable by CancelRequest and listed in pg_stat_activity from now on.
            let (pid, secret_key) = client.pid_and_secret_key();
            self.backends
                .register(&self.backend, pid, secret_key.to_bytes());
            tracing::info!(peer = %client.socket_addr(), user, method, "pg client authenticated");
        }
        Ok(())
    }
}

/// The ParameterStatus messages sent after authentication: the connection's reported
/// parameters, after applying the ones the client sent in its startup packet (pgjdbc sends
/// `TimeZone`, `DateStyle`, `extra_float_digits`; psql `application_name`).
struct SessionParameters {
    vars: SharedVars,
}

/// Startup-packet keys that are not run-time parameters.
const NOT_PARAMETERS: &[&str] = &["user", "database", "options", "replication"];

impl ServerParameterProvider for SessionParameters {
    fn server_parameters<C>(&self, client: &C) -> Option<HashMap<String, String>>
    where
        C: ClientInfo,
    {
        let mut vars = lock(&self.vars);
        for (key, value) in client.metadata() {
            if NOT_PARAMETERS.contains(&key.as_str()) {
                continue;
            }
            if let Err(e) = vars.set_startup(key, value) {
                tracing::debug!(peer = %client.socket_addr(), parameter = %key, error = %e, "startup parameter ignored");
            }
        }
        // `options=-c statement_timeout=5s` (libpq's PGOPTIONS), as PostgreSQL reads it.
        if let Some(options) = client.metadata().get("options") {
            for (key, value) in command_line_options(options) {
                if let Err(e) = vars.set_startup(&key, &value) {
                    tracing::debug!(peer = %client.socket_addr(), parameter = %key, error = %e, "startup option ignored");
                }
            }
        }
        if let Some(user) = client.metadata().get(METADATA_USER) {
            vars.set_login(user);
        }
        Some(vars.reported().into_iter().collect())
    }
}

/// The `-c name=value` / `--name=value` settings of a startup packet's `options`
/// (space-separated; a backslash escapes the next character).
fn command_line_options(options: &str) -> Vec<(String, String)> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut chars = options.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => word.extend(chars.next()),
            c if c.is_whitespace() => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            c => word.push(c),
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    let mut settings = Vec::new();
    let mut words = words.into_iter();
    while let Some(word) = words.next() {
        let setting = if word == "-c" {
            words.next()
        } else if let Some(rest) = word.strip_prefix("--") {
            Some(rest.to_owned())
        } else {
            word.strip_prefix("-c").map(str::to_owned)
        };
        if let Some((name, value)) = setting.as_deref().and_then(|s| s.split_once('=')) {
            settings.push((name.replace('-', "_"), value.to_owned()));
        }
    }
    settings
}

#[cfg(test)]
mod option_tests {
    #[test]
    fn reads_dash_c_options() {
        assert_eq!(
            super::command_line_options(
                "-c statement_timeout=2s --application-name=my\\ app -cDateStyle=ISO"
            ),
            vec![
                ("statement_timeout".to_owned(), "2s".to_owned()),
                ("application_name".to_owned(), "my app".to_owned()),
                ("DateStyle".to_owned(), "ISO".to_owned()),
            ]
        );
    }
}
