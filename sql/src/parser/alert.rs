//! The `ALERT (…)` and `NOTIFY (…)` clauses: what a continuous query's output rows
//! trigger, and where notifications go.

use datafusion::sql::sqlparser::ast::Expr;
use datafusion::sql::sqlparser::tokenizer::Token;

use super::LogSphereParser;
use super::create::Seen;
use crate::ast::{AlertSpec, Channel, For};
use crate::detect::word;
use crate::duration::INTERVAL_FORMS;
use crate::error::ParseError;

const ALERT_OPTIONS: &str = "SEVERITY, DEDUP BY, FOR, KEEP FIRING FOR, COOLDOWN, RESOLVE AFTER, ABSENT FOR, LABELS, ANNOTATIONS";

impl LogSphereParser<'_> {
    /// `ALERT [ '(' alert_opt {',' alert_opt} ')' ]`.
    pub(super) fn parse_alert(&mut self) -> Result<AlertSpec, ParseError> {
        let mut alert = AlertSpec::default();
        if !self.p().consume_token(&Token::LParen) {
            return Ok(alert);
        }
        let mut seen = Seen::default();
        loop {
            let option = word(&self.peek().token).unwrap_or_default();
            match option.as_str() {
                "SEVERITY" => {
                    self.begin_clause(&mut seen, &["SEVERITY"])?;
                    alert.severity = Some(self.parse_expr()?);
                }
                "DEDUP" => {
                    self.begin_clause(&mut seen, &["DEDUP", "BY"])?;
                    alert.dedup_by = if self.p().consume_token(&Token::LParen) {
                        let columns = self.p().parse_comma_separated(|p| p.parse_identifier())?;
                        self.expect_token(Token::RParen)?;
                        columns
                    } else {
                        vec![self.parse_ident()?]
                    };
                }
                "FOR" => {
                    self.begin_clause(&mut seen, &["FOR"])?;
                    alert.for_ = Some(self.parse_for()?);
                }
                "KEEP" => {
                    alert.keep_firing_for =
                        Some(self.duration_clause(&mut seen, &["KEEP", "FIRING", "FOR"])?);
                }
                "COOLDOWN" => {
                    alert.cooldown = Some(self.duration_clause(&mut seen, &["COOLDOWN"])?);
                }
                "RESOLVE" => {
                    alert.resolve_after =
                        Some(self.duration_clause(&mut seen, &["RESOLVE", "AFTER"])?);
                }
                "ABSENT" => {
                    alert.absent_for = Some(self.duration_clause(&mut seen, &["ABSENT", "FOR"])?);
                }
                "LABELS" => {
                    self.begin_clause(&mut seen, &["LABELS"])?;
                    alert.labels = self
                        .parse_entries("label")?
                        .into_iter()
                        .map(|e| (e.key, e.value))
                        .collect();
                }
                "ANNOTATIONS" => {
                    self.begin_clause(&mut seen, &["ANNOTATIONS"])?;
                    alert.annotations = self.parse_annotations()?;
                }
                _ => {
                    return Err(
                        self.expected(&format!("alert option ({ALERT_OPTIONS})"), self.peek())
                    );
                }
            }
            if !self.p().consume_token(&Token::Comma) {
                break;
            }
        }
        if !self.p().consume_token(&Token::RParen) {
            return Err(self.expected(
                &format!(", or ) after an alert option (options: {ALERT_OPTIONS})"),
                self.peek(),
            ));
        }
        Ok(alert)
    }

    /// `FOR interval | FOR n WINDOWS`.
    fn parse_for(&mut self) -> Result<For, ParseError> {
        if let Token::Number(n, _) = &self.peek().token {
            let at = self.here();
            let windows = n
                .parse::<u64>()
                .map_err(|_| ParseError::at(at, format!("FOR {n} WINDOWS needs a whole number")))?;
            self.p().next_token();
            if !self.parse_word("WINDOWS") && !self.parse_word("WINDOW") {
                return Err(self.expected(
                    &format!("WINDOWS after FOR {windows} (or write FOR {INTERVAL_FORMS})"),
                    self.peek(),
                ));
            }
            return Ok(For::Windows(windows));
        }
        Ok(For::Duration(self.parse_duration("FOR")?))
    }

    /// `ANNOTATIONS '(' key '=' 'template' {',' …} ')'`.
    fn parse_annotations(&mut self) -> Result<Vec<(String, String)>, ParseError> {
        self.expect_token(Token::LParen)?;
        let mut annotations: Vec<(String, String)> = Vec::new();
        loop {
            let at = self.here();
            let key = self.parse_key("annotation name")?;
            if annotations.iter().any(|(k, _)| *k == key) {
                return Err(ParseError::at(
                    at,
                    format!("annotation {key} specified more than once"),
                ));
            }
            self.expect_token(Token::Eq)?;
            let template = self.parse_string("a quoted annotation template")?;
            annotations.push((key, template));
            if !self.p().consume_token(&Token::Comma) {
                break;
            }
        }
        self.expect_token(Token::RParen)?;
        Ok(annotations)
    }

    /// `NOTIFY '(' channel {',' channel} ')'`.
    pub(super) fn parse_notify(&mut self) -> Result<Vec<Channel>, ParseError> {
        self.expect_token(Token::LParen)?;
        let mut channels = Vec::new();
        loop {
            let channel = if self.parse_word("TABLE") {
                Channel::Table(self.parse_name()?)
            } else if self.parse_word("KAFKA") {
                let topic = self.parse_string("a quoted topic after KAFKA")?;
                Channel::Kafka {
                    topic,
                    options: self.parse_channel_options()?,
                }
            } else if self.parse_word("WEBHOOK") {
                let url = self.parse_string("a quoted URL after WEBHOOK")?;
                Channel::Webhook {
                    url,
                    options: self.parse_channel_options()?,
                }
            } else {
                return Err(self.expected(
                    "notification channel (TABLE name, KAFKA 'topic', WEBHOOK 'url')",
                    self.peek(),
                ));
            };
            channels.push(channel);
            if !self.p().consume_token(&Token::Comma) {
                break;
            }
        }
        self.expect_token(Token::RParen)?;
        Ok(channels)
    }

    /// `[WITH '(' key = expr, … ')']` after a channel.
    fn parse_channel_options(&mut self) -> Result<Vec<(String, Expr)>, ParseError> {
        if !self.parse_word("WITH") {
            return Ok(Vec::new());
        }
        Ok(self
            .parse_entries("option")?
            .into_iter()
            .map(|e| (e.key, e.value))
            .collect())
    }
}
