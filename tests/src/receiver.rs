//! A tiny webhook receiver on 127.0.0.1, over http or https (a fresh private CA and a
//! certificate for 127.0.0.1 and localhost): it records `(Idempotency-Key, body)` of every
//! POST and answers 500 while it is told to fail, then 200.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

type Seen = Arc<Mutex<Vec<(String, serde_json::Value)>>>;

/// A running receiver; it lives as long as the test process.
pub struct Receiver {
    /// The URL to POST to.
    pub url: String,
    seen: Seen,
    fail_next: Arc<AtomicUsize>,
    ca: Option<tempfile::TempDir>,
}

impl Receiver {
    /// An http receiver answering 500 to the first `fail_first` requests.
    pub fn start(fail_first: usize) -> Self {
        Self::spawn(fail_first, None)
    }

    /// An https receiver answering 500 to the first `fail_first` requests; its CA's
    /// certificate is at [`Receiver::ca_file`].
    pub fn start_tls(fail_first: usize) -> Self {
        Self::spawn(fail_first, Some(tls_fixture()))
    }

    fn spawn(
        fail_first: usize,
        tls: Option<(Arc<rustls::ServerConfig>, tempfile::TempDir)>,
    ) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a receiver");
        let addr = listener.local_addr().expect("receiver address");
        let scheme = if tls.is_some() { "https" } else { "http" };
        let url = format!("{scheme}://{addr}/hook");
        let seen: Seen = Arc::default();
        let fail_next = Arc::new(AtomicUsize::new(fail_first));
        let (config, ca) = match tls {
            Some((config, dir)) => (Some(config), Some(dir)),
            None => (None, None),
        };
        let (log, fail) = (Arc::clone(&seen), Arc::clone(&fail_next));
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(tcp) = stream else { continue };
                let (log, fail) = (Arc::clone(&log), Arc::clone(&fail));
                let config = config.clone();
                std::thread::spawn(move || match config {
                    None => serve(tcp, &log, &fail),
                    Some(config) => {
                        let Ok(conn) = rustls::ServerConnection::new(config) else {
                            return;
                        };
                        let mut tls = rustls::StreamOwned::new(conn, tcp);
                        serve(&mut tls, &log, &fail);
                        tls.conn.send_close_notify();
                        let _ = tls.flush();
                    }
                });
            }
        });
        Self {
            url,
            seen,
            fail_next,
            ca,
        }
    }

    /// The PEM file of the CA that signed an https receiver's certificate.
    pub fn ca_file(&self) -> PathBuf {
        self.ca
            .as_ref()
            .map(|d| d.path().join("ca.pem"))
            .expect("an https receiver")
    }

    /// Answers 500 to the next `n` requests.
    pub fn fail_next(&self, n: usize) {
        self.fail_next.store(n, Ordering::SeqCst);
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<(String, serde_json::Value)> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Waits (at most 20 s) until `done` holds for the requests so far; returns them.
    pub async fn wait(
        &self,
        done: impl Fn(&[(String, serde_json::Value)]) -> bool,
    ) -> Vec<(String, serde_json::Value)> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let got = self.requests();
            if done(&got) || Instant::now() > deadline {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Reads one POST, records it, answers it.
fn serve<S: Read + Write>(mut stream: S, log: &Seen, fail: &AtomicUsize) {
    let mut reader = BufReader::new(&mut stream);
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() || !line.starts_with("POST ") {
        return;
    }
    let (mut key, mut len) = (String::new(), 0usize);
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = h.split_once(':') {
            match name.trim().to_ascii_lowercase().as_str() {
                "idempotency-key" => key = value.trim().to_string(),
                "content-length" => len = value.trim().parse().unwrap_or(0),
                _ => {}
            }
        }
    }
    let mut body = vec![0; len];
    if reader.read_exact(&mut body).is_err() {
        return;
    }
    drop(reader);
    let body = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    log.lock()
        .unwrap_or_else(|p| p.into_inner())
        .push((key, body));
    let failing = fail
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    let status = if failing {
        "500 Internal Server Error"
    } else {
        "200 OK"
    };
    let _ = stream.write_all(
        format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").as_bytes(),
    );
    let _ = stream.flush();
}

/// A private CA (its PEM in a temp dir) and a server config with a certificate it signed
/// for 127.0.0.1 and localhost.
fn tls_fixture() -> (Arc<rustls::ServerConfig>, tempfile::TempDir) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "LogSphere test CA");
    let ca_cert = ca_params.self_signed(&ca_key).expect("CA certificate");
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().expect("server key");
    let cert = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
        .expect("server params")
        .signed_by(&key, &issuer)
        .expect("server certificate");
    let dir = tempfile::tempdir().expect("temp dir");
    let ca_pem = pem::encode(&pem::Pem::new("CERTIFICATE", ca_cert.der().to_vec()));
    write(&dir.path().join("ca.pem"), ca_pem.as_bytes());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .expect("server TLS config");
    (Arc::new(config), dir)
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}
