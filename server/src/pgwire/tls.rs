//! TLS for the PostgreSQL listener: a certificate chain and private key in PEM files
//! (`[pg] tls_cert`, `tls_key`), served with rustls and its ring provider. Clients ask for
//! TLS with SSLRequest (libpq's `sslmode`), or open it directly (PostgreSQL 17's
//! `sslnegotiation=direct`, ALPN `postgresql`); clients that do not ask still connect in
//! the clear, as with PostgreSQL's `ssl = on` (use `sslmode=require` on the client to
//! insist). Over TLS, SCRAM offers channel binding (`SCRAM-SHA-256-PLUS`,
//! `tls-server-end-point`) with the server certificate (see `auth`).

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, bail};
use pgwire::tokio::TlsAcceptor;
use pgwire::tokio::tokio_rustls::rustls;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The listener's TLS: the acceptor, and the certificate chain it presents (PEM), which
/// SCRAM channel binding hashes.
#[derive(Clone)]
pub struct PgTls {
    pub(crate) acceptor: TlsAcceptor,
    pub(crate) cert_pem: Arc<Vec<u8>>,
}

/// Builds the TLS acceptor from `cert` (PEM: the server certificate first, then any
/// intermediates) and `key` (PEM: PKCS#8, PKCS#1 or SEC1). Errors name the config key.
pub fn acceptor(cert: &Path, key: &Path) -> anyhow::Result<PgTls> {
    let cert_pem = std::fs::read(cert)
        .with_context(|| format!("pg.tls_cert = {}: cannot read the file", cert.display()))?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            anyhow::anyhow!(
                "pg.tls_cert = {}: not a PEM certificate: {e}",
                cert.display()
            )
        })?;
    if chain.is_empty() {
        bail!(
            "pg.tls_cert = {}: no PEM certificate (-----BEGIN CERTIFICATE-----) in the file",
            cert.display()
        );
    }
    let key_pem = std::fs::read(key)
        .with_context(|| format!("pg.tls_key = {}: cannot read the file", key.display()))?;
    let private_key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        anyhow::anyhow!(
            "pg.tls_key = {}: no PEM private key (PKCS#8, PKCS#1 or SEC1) in the file: {e}",
            key.display()
        )
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("pg TLS: the ring provider supports no TLS version")?
        .with_no_client_auth()
        .with_single_cert(chain, private_key)
        .map_err(|e| {
            anyhow::anyhow!(
                "pg.tls_cert = {} and pg.tls_key = {} do not make a usable TLS identity: {e}",
                cert.display(),
                key.display()
            )
        })?;
    // PostgreSQL 17 clients negotiating TLS directly offer ALPN `postgresql`.
    config.alpn_protocols = vec![b"postgresql".to_vec()];
    Ok(PgTls {
        acceptor: TlsAcceptor::from(Arc::new(config)),
        cert_pem: Arc::new(cert_pem),
    })
}
