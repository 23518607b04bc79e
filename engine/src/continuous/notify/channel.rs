//! The push channels of a `NOTIFY (…)` list, checked at CREATE: option names and values,
//! URLs, CA files and Kafka brokers are refused there with the reason, never at delivery.

use std::path::PathBuf;
use std::time::Duration;

use datafusion::sql::sqlparser::ast::{Expr, Value};
use logsphere_sql::Channel;

use super::super::CqError;
use super::super::alerts::Alert;
use super::NotifyConfig;

/// A channel events are delivered to (`TABLE` is not one: another part writes it).
#[derive(Debug, Clone)]
pub(crate) enum NotifyChannel {
    Webhook(Webhook),
    Kafka(KafkaTopic),
}

/// `WEBHOOK 'http[s]://…' WITH (timeout = '5s', retries = 5, ca_file = '…', insecure = false)`.
#[derive(Debug, Clone)]
pub(crate) struct Webhook {
    pub url: String,
    /// Fast retries after the first attempt (then the slow re-queue of [`super::RetryPolicy`]).
    pub retries: u32,
    /// Built once per CQ: its TLS roots (webpki, or `ca_file`) and timeout.
    pub agent: ureq::Agent,
}

/// `KAFKA 'topic' WITH (brokers = 'host:port,…', timeout = '30s', retries = 5)`.
#[derive(Debug, Clone)]
pub(crate) struct KafkaTopic {
    pub topic: String,
    /// From `WITH (brokers = …)`, else `[notify] kafka_brokers`.
    pub brokers: String,
    /// librdkafka's `message.timeout.ms`: how long one attempt may take in all.
    pub timeout: Duration,
    pub retries: u32,
}

const DEFAULT_RETRIES: u32 = 5;

impl NotifyChannel {
    /// The deliverable channels of a NOTIFY list (`TABLE` is skipped), or why one is wrong.
    pub(crate) fn from_channels(
        channels: &[Channel],
        config: &NotifyConfig,
    ) -> Result<Vec<Self>, CqError> {
        channels
            .iter()
            .filter_map(|c| match c {
                Channel::Table(_) => None,
                Channel::Webhook { url, options } => {
                    Some(Webhook::new(url, options).map(NotifyChannel::Webhook))
                }
                Channel::Kafka { topic, options } => {
                    Some(KafkaTopic::new(topic, options, config).map(NotifyChannel::Kafka))
                }
            })
            .collect()
    }

    /// How the channel is named in `alert_events.channel` and in event ids.
    pub(crate) fn name(&self) -> String {
        match self {
            NotifyChannel::Webhook(h) => format!("webhook {}", h.url),
            NotifyChannel::Kafka(k) => format!("kafka {}", k.topic),
        }
    }

    /// The body an event of `kind` (`status`: firing, resolved) sends on this channel.
    pub(crate) fn payload(
        &self,
        alert: &Alert,
        event_id: &str,
        kind: &str,
        status: &str,
    ) -> String {
        match self {
            NotifyChannel::Webhook(_) => super::payload(alert, status),
            NotifyChannel::Kafka(_) => super::kafka::value(alert, event_id, kind, status),
        }
    }

    /// Fast retries after a failed first attempt.
    pub(crate) fn retries(&self) -> u32 {
        match self {
            NotifyChannel::Webhook(h) => h.retries,
            NotifyChannel::Kafka(k) => k.retries,
        }
    }
}

fn invalid(channel: &str, reason: impl std::fmt::Display) -> CqError {
    CqError::Notify {
        channel: channel.to_string(),
        reason: reason.to_string(),
    }
}

impl Webhook {
    fn new(url: &str, options: &[(String, Expr)]) -> Result<Self, CqError> {
        let name = format!("WEBHOOK '{url}'");
        let https = url.starts_with("https://");
        if !https && !url.starts_with("http://") {
            return Err(invalid(
                &name,
                "the URL must start with http:// or https://",
            ));
        }
        let (mut timeout, mut retries) = (Duration::from_secs(5), DEFAULT_RETRIES);
        let (mut ca_file, mut insecure) = (None::<PathBuf>, false);
        for (key, value) in options {
            let key = key.to_ascii_lowercase();
            if key == "timeout" {
                timeout = duration(&name, &key, value)?;
                continue;
            }
            let text = literal(value)
                .ok_or_else(|| invalid(&name, format!("{key} must be a literal, not `{value}`")))?;
            match key.as_str() {
                "retries" => retries = count(&name, &key, &text)?,
                "ca_file" => ca_file = Some(PathBuf::from(text)),
                "insecure" => insecure = flag(&name, &key, &text)?,
                _ => {
                    return Err(invalid(
                        &name,
                        format!(
                            "unknown option {key} (known: timeout, retries, ca_file, insecure)"
                        ),
                    ));
                }
            }
        }
        if (ca_file.is_some() || insecure) && !https {
            return Err(invalid(
                &name,
                "ca_file and insecure apply to https:// URLs only",
            ));
        }
        let mut tls = ureq::tls::TlsConfig::builder()
            .provider(ureq::tls::TlsProvider::Rustls)
            .disable_verification(insecure);
        if let Some(path) = &ca_file {
            tls = tls.root_certs(ca_roots(&name, path)?);
        }
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(timeout))
            .tls_config(tls.build())
            .build();
        Ok(Self {
            url: url.to_string(),
            retries,
            agent: ureq::Agent::new_with_config(config),
        })
    }
}

/// The certificates of a PEM file, as the only roots a webhook trusts.
fn ca_roots(name: &str, path: &std::path::Path) -> Result<ureq::tls::RootCerts, CqError> {
    let pem = std::fs::read(path)
        .map_err(|e| invalid(name, format!("cannot read ca_file {}: {e}", path.display())))?;
    let mut certs = Vec::new();
    for item in ureq::tls::parse_pem(&pem) {
        match item {
            Ok(ureq::tls::PemItem::Certificate(c)) => certs.push(c),
            Ok(_) => {}
            Err(e) => {
                return Err(invalid(name, format!("ca_file {}: {e}", path.display())));
            }
        }
    }
    if certs.is_empty() {
        return Err(invalid(
            name,
            format!("ca_file {} holds no PEM certificate", path.display()),
        ));
    }
    Ok(ureq::tls::RootCerts::new_with_certs(&certs))
}

impl KafkaTopic {
    fn new(
        topic: &str,
        options: &[(String, Expr)],
        config: &NotifyConfig,
    ) -> Result<Self, CqError> {
        let name = format!("KAFKA '{topic}'");
        if topic.is_empty() {
            return Err(invalid(&name, "the topic name is empty"));
        }
        let mut brokers = config.kafka_brokers.clone();
        let (mut timeout, mut retries) = (Duration::from_secs(30), DEFAULT_RETRIES);
        for (key, value) in options {
            let key = key.to_ascii_lowercase();
            if key == "timeout" {
                timeout = duration(&name, &key, value)?;
                continue;
            }
            let text = literal(value)
                .ok_or_else(|| invalid(&name, format!("{key} must be a literal, not `{value}`")))?;
            match key.as_str() {
                "brokers" => brokers = Some(text),
                "retries" => retries = count(&name, &key, &text)?,
                _ => {
                    return Err(invalid(
                        &name,
                        format!("unknown option {key} (known: brokers, timeout, retries)"),
                    ));
                }
            }
        }
        let brokers = brokers.filter(|b| !b.trim().is_empty()).ok_or_else(|| {
            invalid(
                &name,
                "no Kafka brokers: set [notify] kafka_brokers in the config file (or the \
                 environment variable LOGSPHERE_NOTIFY_KAFKA_BROKERS), or write \
                 KAFKA 'topic' WITH (brokers = 'host:port')",
            )
        })?;
        if timeout < Duration::from_millis(1) {
            return Err(invalid(&name, "timeout must be at least 1 ms"));
        }
        Ok(Self {
            topic: topic.to_string(),
            brokers,
            timeout,
            retries,
        })
    }
}

fn literal(e: &Expr) -> Option<String> {
    match e {
        Expr::Value(v) => match &v.value {
            Value::SingleQuotedString(s) | Value::DoubleQuotedString(s) => Some(s.clone()),
            Value::Number(n, _) => Some(n.clone()),
            Value::Boolean(b) => Some(b.to_string()),
            _ => None,
        },
        Expr::Identifier(id) => Some(id.value.clone()),
        _ => None,
    }
}

/// The same grammar as the CQ's own durations (`'1h'`, `'90 minutes'`, `INTERVAL '5' SECOND`).
fn duration(name: &str, key: &str, value: &Expr) -> Result<Duration, CqError> {
    logsphere_sql::duration_of_expr(value)
        .map_err(|why| invalid(name, format!("{key} = {value} is not a duration: {why}")))
}

fn count(name: &str, key: &str, text: &str) -> Result<u32, CqError> {
    text.parse()
        .map_err(|_| invalid(name, format!("{key} = {text} is not a whole number ≥ 0")))
}

fn flag(name: &str, key: &str, text: &str) -> Result<bool, CqError> {
    match text.to_ascii_lowercase().as_str() {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(invalid(
            name,
            format!("{key} = {text} is not true or false"),
        )),
    }
}
