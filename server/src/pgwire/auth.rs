//! Connection startup: authentication (none on loopback-only setups, SCRAM-SHA-256 with
//! configured users) and the parameters a client is told about once it is in.

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use futures::Sink;
use pgwire::api::auth::sasl::scram::{SCRAM_ITERATIONS, ScramAuth, gen_salted_password};
use pgwire::api::auth::sasl::{SASLAuthStartupHandler, SCRAM_SHA_256_PLUS_METHOD};
use pgwire::api::auth::{
    AuthSource, LoginInfo, Password, ServerParameterProvider, StartupHandler,
    finish_authentication, protocol_negotiation, save_startup_parameters_to_metadata,
};
use pgwire::api::{ClientInfo, METADATA_USER, PgWireConnectionState, PidSecretKeyGenerator};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::startup::PasswordMessageFamily;
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
    /// The TLS certificate chain (PEM) SCRAM channel binding hashes; `None` without TLS or
    /// when the certificate's signature algorithm has no `tls-server-end-point` hash.
    pub(crate) channel_binding: Option<Arc<Vec<u8>>>,
    pub(crate) pids: Arc<dyn PidSecretKeyGenerator>,
}

/// `cert_pem` if SCRAM can bind to it (RFC 5929 `tls-server-end-point` needs the hash of
/// the certificate's signature algorithm: RSA or ECDSA with SHA-1/256/384/512).
pub(crate) fn channel_binding_cert(cert_pem: &Arc<Vec<u8>>) -> Option<Arc<Vec<u8>>> {
    let mut probe = ScramAuth::new(Arc::new(CredentialsSource(Arc::new(Credentials {
        users: HashMap::new(),
        decoy: ScramSecret {
            salt: Vec::new(),
            salted_password: Vec::new(),
        },
    }))));
    match probe.configure_certificate(cert_pem) {
        Ok(()) => Some(Arc::clone(cert_pem)),
        Err(e) => {
            tracing::warn!(
                error = %e,
                "pg.tls_cert: SCRAM channel binding (SCRAM-SHA-256-PLUS) is off: the \
                 certificate's signature algorithm has no tls-server-end-point hash; clients \
                 with channel_binding=require cannot connect"
            );
            None
        }
    }
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
    Scram(Box<Scram>),
}

/// SCRAM-SHA-256 for one connection, with channel binding (`SCRAM-SHA-256-PLUS`) when it
/// came over TLS and the certificate allows it, as PostgreSQL offers it.
struct Scram {
    /// Offers SCRAM-SHA-256 only: connections without TLS.
    plain: SASLAuthStartupHandler<SessionParameters>,
    /// Offers SCRAM-SHA-256-PLUS too: TLS connections.
    plus: Option<SASLAuthStartupHandler<SessionParameters>>,
    /// Whether the connection uses `plus` (decided at its startup message).
    bound: AtomicBool,
    /// The SASLInitialResponse has been checked.
    started: AtomicBool,
    /// The client chose SCRAM-SHA-256-PLUS (and so bound to the TLS channel).
    plus_chosen: AtomicBool,
}

impl Scram {
    fn handler(&self) -> &SASLAuthStartupHandler<SessionParameters> {
        match &self.plus {
            Some(plus) if self.bound.load(Ordering::Relaxed) => plus,
            _ => &self.plain,
        }
    }

    /// PostgreSQL's checks of the SCRAM mechanism against the client's channel-binding flag
    /// (`read_client_first_message`): PLUS needs `p=tls-server-end-point`, plain SCRAM
    /// must not bind, and a client that could bind but thinks this server cannot (`y`) is
    /// refused where the server offered binding (a downgrade).
    fn check_initial(&self, message: &PasswordMessageFamily) -> PgWireResult<()> {
        let PasswordMessageFamily::Raw(body) = message else {
            return Ok(());
        };
        let Ok(initial) = PasswordMessageFamily::Raw(body.clone()).into_sasl_initial_response()
        else {
            // Not a SASLInitialResponse: the handler reports it.
            return Ok(());
        };
        let offered_plus = self.bound.load(Ordering::Relaxed);
        let plus = initial.auth_method == SCRAM_SHA_256_PLUS_METHOD;
        self.plus_chosen.store(plus, Ordering::Relaxed);
        if plus && !offered_plus {
            return Err(fatal(
                "client selected an invalid SASL authentication mechanism",
                None,
            ));
        }
        let data = initial.data.as_deref().unwrap_or_default();
        match data.first() {
            Some(b'p') if !plus => Err(fatal(
                "malformed SCRAM message",
                Some(
                    "The client selected SCRAM-SHA-256 without channel binding, but the SCRAM \
                     message includes channel binding data.",
                ),
            )),
            Some(b'p') => {
                let name = data
                    .get(2..)
                    .and_then(|d| d.split(|b| *b == b',').next())
                    .unwrap_or_default();
                if name == b"tls-server-end-point" {
                    Ok(())
                } else {
                    Err(fatal(
                        &format!(
                            "unsupported SCRAM channel-binding type \"{}\"",
                            String::from_utf8_lossy(name)
                        ),
                        None,
                    ))
                }
            }
            Some(b'y' | b'n') if plus => Err(fatal(
                "malformed SCRAM message",
                Some(
                    "The client selected SCRAM-SHA-256-PLUS, but the SCRAM message does not \
                     include channel binding data.",
                ),
            )),
            Some(b'y') if offered_plus => Err(fatal(
                "SCRAM channel binding negotiation error",
                Some(
                    "The client supports SCRAM channel binding but thinks the server does not.  \
                     However, this server does support channel binding.",
                ),
            )),
            _ => Ok(()),
        }
    }
}

/// A FATAL protocol violation (08P01) during authentication: the connection closes.
fn fatal(message: &str, detail: Option<&str>) -> PgWireError {
    let mut info = ErrorInfo::new(
        "FATAL".to_owned(),
        PROTOCOL_VIOLATION.to_owned(),
        message.to_owned(),
    );
    info.detail = detail.map(str::to_owned);
    PgWireError::UserError(Box::new(info))
}

/// SQLSTATE `protocol_violation`.
const PROTOCOL_VIOLATION: &str = "08P01";

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
                let parameters = Arc::new(parameters);
                let source = Arc::new(CredentialsSource(Arc::clone(credentials)));
                let handler = |scram: ScramAuth| {
                    SASLAuthStartupHandler::new(Arc::clone(&parameters))
                        .with_scram(scram)
                        .with_pid_secret_key_generator(Arc::clone(&startup.pids))
                };
                let plus = startup.channel_binding.as_ref().and_then(|pem| {
                    let mut scram = ScramAuth::new(Arc::clone(&source) as Arc<dyn AuthSource>);
                    // Checked at startup (`channel_binding_cert`).
                    scram.configure_certificate(pem).ok()?;
                    Some(handler(scram))
                });
                Method::Scram(Box::new(Scram {
                    plain: handler(ScramAuth::new(source)),
                    plus,
                    bound: AtomicBool::new(false),
                    started: AtomicBool::new(false),
                    plus_chosen: AtomicBool::new(false),
                }))
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
            Method::Scram(scram) => {
                match &message {
                    PgWireFrontendMessage::Startup(_) => {
                        scram.bound.store(
                            client.is_secure() && scram.plus.is_some(),
                            Ordering::Relaxed,
                        );
                    }
                    PgWireFrontendMessage::PasswordMessageFamily(m)
                        if !scram.started.swap(true, Ordering::Relaxed) =>
                    {
                        scram.check_initial(m)?;
                    }
                    _ => {}
                }
                scram.handler().on_startup(client, message).await?;
            }
        }
        if matches!(client.state(), PgWireConnectionState::ReadyForQuery)
            && !self.authenticated.swap(true, Ordering::Relaxed)
        {
            let user = client
                .metadata()
                .get(METADATA_USER)
                .map(String::as_str)
                .unwrap_or("");
            let method = match &self.method {
                Method::Trust { .. } => "trust",
                Method::Scram(scram) if scram.plus_chosen.load(Ordering::Relaxed) => {
                    "scram-sha-256-plus"
                }
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

#[cfg(test)]
mod channel_binding_tests {
    use std::sync::Mutex;

    use bytes::{Bytes, BytesMut};
    use pgwire::api::auth::sasl::SCRAM_SHA_256_METHOD;
    use pgwire::messages::Message;
    use pgwire::messages::startup::SASLInitialResponse;

    use super::*;
    use crate::pgwire::session::SessionVars;

    /// A connection's SCRAM state, over TLS with binding offered (`bound`) or not.
    fn scram(bound: bool) -> Scram {
        let source = Arc::new(CredentialsSource(Arc::new(Credentials::new(&[]))));
        let parameters = Arc::new(SessionParameters {
            vars: Arc::new(Mutex::new(SessionVars::new(""))),
        });
        Scram {
            plain: SASLAuthStartupHandler::new(parameters).with_scram(ScramAuth::new(source)),
            plus: None,
            bound: AtomicBool::new(bound),
            started: AtomicBool::new(false),
            plus_chosen: AtomicBool::new(false),
        }
    }

    fn initial(mechanism: &str, client_first: &str) -> PasswordMessageFamily {
        let message = SASLInitialResponse::new(
            mechanism.to_owned(),
            Some(Bytes::from(client_first.to_owned())),
        );
        let mut body = BytesMut::new();
        message.encode_body(&mut body).unwrap();
        PasswordMessageFamily::Raw(body)
    }

    /// The SQLSTATE and message of a refusal.
    fn refused(scram: &Scram, message: &PasswordMessageFamily) -> (String, String) {
        match scram.check_initial(message) {
            Err(PgWireError::UserError(info)) => {
                assert_eq!(info.severity, "FATAL");
                (info.code, info.message)
            }
            other => panic!("not refused: {other:?}"),
        }
    }

    #[test]
    fn mechanism_and_binding_flag_must_agree_as_in_postgresql() {
        let plus = SCRAM_SHA_256_PLUS_METHOD;
        let plain = SCRAM_SHA_256_METHOD;
        let bound = scram(true);
        assert!(
            bound
                .check_initial(&initial(plus, "p=tls-server-end-point,,n=,r=abc"))
                .is_ok()
        );
        assert!(bound.check_initial(&initial(plain, "n,,n=,r=abc")).is_ok());
        // A client that could bind but believes this server cannot: a downgrade.
        let (code, message) = refused(&bound, &initial(plain, "y,,n=,r=abc"));
        assert_eq!(
            (code.as_str(), message.as_str()),
            ("08P01", "SCRAM channel binding negotiation error")
        );
        refused(&bound, &initial(plus, "n,,n=,r=abc"));
        refused(&bound, &initial(plain, "p=tls-server-end-point,,n=,r=abc"));
        let (_, message) = refused(&bound, &initial(plus, "p=tls-unique,,n=,r=abc"));
        assert!(message.contains("tls-unique"), "{message}");
        // Without TLS (or binding) the server offers no PLUS, and y is fine.
        let clear = scram(false);
        refused(&clear, &initial(plus, "p=tls-server-end-point,,n=,r=abc"));
        assert!(clear.check_initial(&initial(plain, "y,,n=,r=abc")).is_ok());
    }
}
