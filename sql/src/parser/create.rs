//! `CREATE [OR REPLACE] CONTINUOUS QUERY [IF NOT EXISTS] name { clause } AS query`.
//!
//! Clauses come in any order, each at most once; the first word of each picks its parser.

use std::time::Duration;

use datafusion::sql::sqlparser::ast::{Expr, Ident, Value};
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::tokenizer::{Location, Token};

use super::LogSphereParser;
use crate::ast::{
    AlertSpec, CQ_OPTION_NAMES, Channel, CqOptions, CreateContinuousQuery,
    DEFAULT_EVENT_TIME_COLUMN, DEFAULT_WATERMARK, EmitPolicy, LateAction, Mode, StartFrom,
};
use crate::detect::word;
use crate::duration::{INTERVAL_FORMS, duration_of_expr};
use crate::error::ParseError;

const CLAUSES: &str = "EVENT TIME, PROCESSING TIME, WATERMARK, ALLOWED LATENESS, EMIT, INTO, ALERT, NOTIFY, \
                       START FROM, MODE, COMMENT, WITH";

/// A `key = expr` entry of a `WITH (…)` or `LABELS (…)` list, with where its parts start.
pub(super) struct Entry {
    pub(super) key: String,
    key_at: Location,
    pub(super) value: Expr,
    value_at: Location,
}

/// Remembers which clauses (or options) a list has had, to refuse repeats.
#[derive(Default)]
pub(super) struct Seen(Vec<String>);

impl LogSphereParser<'_> {
    pub(super) fn parse_create_cq(&mut self) -> Result<CreateContinuousQuery, ParseError> {
        let start = self.here();
        self.expect_words(&["CREATE"])?;
        let or_replace = self.parse_words(&["OR", "REPLACE"]);
        self.expect_words(&["CONTINUOUS", "QUERY"])?;
        let if_not_exists = self
            .p()
            .parse_keywords(&[Keyword::IF, Keyword::NOT, Keyword::EXISTS]);
        let name = self.parse_name()?;

        let mut cq = Clauses::default();
        let mut seen = Seen::default();
        loop {
            let Some(clause) = word(&self.peek().token) else {
                return Err(self.clause_expected());
            };
            match clause.as_str() {
                "AS" => break,
                "EVENT" => {
                    self.begin_clause(&mut seen, &["EVENT", "TIME"])?;
                    cq.event_time = Some(self.parse_ident()?);
                }
                "PROCESSING" => {
                    self.begin_clause(&mut seen, &["PROCESSING", "TIME"])?;
                    cq.processing_time = true;
                }
                "WATERMARK" => {
                    cq.watermark = Some(self.duration_clause(&mut seen, &["WATERMARK"])?);
                }
                "ALLOWED" => {
                    cq.allowed_lateness =
                        self.duration_clause(&mut seen, &["ALLOWED", "LATENESS"])?;
                    if self.parse_words(&["ON", "LATE"]) {
                        cq.on_late = self.parse_late_action()?;
                    }
                }
                "EMIT" => {
                    self.begin_clause(&mut seen, &["EMIT"])?;
                    cq.emit = Some(self.parse_emit_policy()?);
                }
                "INTO" => {
                    self.begin_clause(&mut seen, &["INTO"])?;
                    cq.into = Some(self.parse_name()?);
                }
                "ALERT" => {
                    self.begin_clause(&mut seen, &["ALERT"])?;
                    cq.alert = Some(self.parse_alert()?);
                }
                "NOTIFY" => {
                    self.begin_clause(&mut seen, &["NOTIFY"])?;
                    cq.notify = self.parse_notify()?;
                }
                "START" => {
                    self.begin_clause(&mut seen, &["START", "FROM"])?;
                    cq.start_from = self.parse_start_from()?;
                }
                "MODE" => {
                    self.begin_clause(&mut seen, &["MODE"])?;
                    cq.mode = if self.parse_word("ACTIVE") {
                        Mode::Active
                    } else if self.parse_word("SHADOW") {
                        Mode::Shadow
                    } else {
                        return Err(self.expected("ACTIVE or SHADOW after MODE", self.peek()));
                    };
                }
                "COMMENT" => {
                    self.begin_clause(&mut seen, &["COMMENT"])?;
                    cq.comment = Some(self.parse_string("a quoted comment after COMMENT")?);
                }
                "WITH" => {
                    self.begin_clause(&mut seen, &["WITH"])?;
                    let entries = self.parse_entries("option")?;
                    let (with_options, options) = cq_options(entries)?;
                    cq.with_options = with_options;
                    cq.options = options;
                }
                "SELECT" | "VALUES" | "TABLE" => {
                    return Err(self.expected("AS before the query body", self.peek()));
                }
                _ => return Err(self.clause_expected()),
            }
        }
        if cq.processing_time && cq.event_time.is_some() {
            return Err(ParseError::at(
                start,
                "EVENT TIME and PROCESSING TIME exclude each other; give at most one",
            ));
        }

        self.expect_words(&["AS"])?;
        let body_start = self.here();
        if self.peek().token == Token::EOF {
            return Err(self.expected("a query after AS", self.peek()));
        }
        let query = self.p().parse_query()?;
        let end = self.last_end();
        Ok(CreateContinuousQuery {
            name,
            or_replace,
            if_not_exists,
            event_time: cq
                .event_time
                .unwrap_or_else(|| Ident::new(DEFAULT_EVENT_TIME_COLUMN)),
            processing_time: cq.processing_time,
            watermark: cq.watermark.unwrap_or(DEFAULT_WATERMARK),
            allowed_lateness: cq.allowed_lateness,
            on_late: cq.on_late,
            emit: cq.emit,
            into: cq.into,
            alert: cq.alert,
            notify: cq.notify,
            start_from: cq.start_from,
            mode: cq.mode,
            comment: cq.comment,
            with_options: cq.with_options,
            options: cq.options,
            query,
            sql_text: self.source.slice(start, end),
            body_sql: self.source.slice(body_start, end),
        })
    }

    /// Consumes a clause's leading words, refusing a clause `seen` already has.
    pub(super) fn begin_clause(
        &mut self,
        seen: &mut Seen,
        words: &[&str],
    ) -> Result<(), ParseError> {
        let name = words.join(" ");
        if seen.0.contains(&name) {
            return Err(ParseError::at(
                self.here(),
                format!("{name} specified more than once; each may appear at most once"),
            ));
        }
        seen.0.push(name);
        self.expect_words(words)
    }

    /// A clause that is its words and an interval (`COOLDOWN '5m'`).
    pub(super) fn duration_clause(
        &mut self,
        seen: &mut Seen,
        words: &[&str],
    ) -> Result<Duration, ParseError> {
        self.begin_clause(seen, words)?;
        self.parse_duration(&words.join(" "))
    }

    fn clause_expected(&self) -> ParseError {
        self.expected(
            &format!("a continuous query clause ({CLAUSES}) or AS <query>"),
            self.peek(),
        )
    }

    /// An interval: `INTERVAL '5 minutes'`, `INTERVAL '5' MINUTE` or a string `'5m'`.
    pub(super) fn parse_duration(&mut self, what: &str) -> Result<Duration, ParseError> {
        let at = self.here();
        let expr = if self.p().parse_keyword(Keyword::INTERVAL) {
            self.p().parse_interval()?
        } else if matches!(self.peek().token, Token::SingleQuotedString(_)) {
            Expr::value(Value::SingleQuotedString(self.p().parse_literal_string()?))
        } else {
            return Err(self.expected(
                &format!("an interval after {what} ({INTERVAL_FORMS})"),
                self.peek(),
            ));
        };
        duration_of_expr(&expr).map_err(|message| ParseError::at(at, message))
    }

    fn parse_late_action(&mut self) -> Result<LateAction, ParseError> {
        Ok(if self.parse_word("DROP") {
            LateAction::Drop
        } else if self.parse_word("UPDATE") {
            LateAction::Update
        } else if self.parse_word("RECOMPUTE") {
            LateAction::Recompute
        } else if self.parse_word("INTO") {
            LateAction::Into(self.parse_name()?)
        } else {
            return Err(self.expected(
                "DROP, UPDATE, RECOMPUTE or INTO <table> after ON LATE",
                self.peek(),
            ));
        })
    }

    fn parse_emit_policy(&mut self) -> Result<EmitPolicy, ParseError> {
        Ok(if self.parse_words(&["ON", "THRESHOLD"]) {
            EmitPolicy::OnThreshold
        } else if self.parse_words(&["ON", "WINDOW", "CLOSE"]) {
            EmitPolicy::OnWindowClose
        } else if self.parse_words(&["ON", "UPDATE"]) {
            EmitPolicy::OnUpdate
        } else if self.parse_word("EVERY") {
            EmitPolicy::Every(self.parse_duration("EMIT EVERY")?)
        } else {
            return Err(self.expected(
                "ON THRESHOLD, ON WINDOW CLOSE, ON UPDATE or EVERY <interval> after EMIT",
                self.peek(),
            ));
        })
    }

    fn parse_start_from(&mut self) -> Result<StartFrom, ParseError> {
        let call_follows = self.df.parser.peek_nth_token_ref(1).token == Token::LParen;
        if !call_follows && self.parse_word("NOW") {
            return Ok(StartFrom::Now);
        }
        if self.parse_word("EARLIEST") {
            return Ok(StartFrom::Earliest);
        }
        if matches!(self.peek().token, Token::EOF | Token::SemiColon) || self.peek_word("AS") {
            return Err(self.expected("NOW, EARLIEST or a timestamp after START FROM", self.peek()));
        }
        Ok(StartFrom::Timestamp(Box::new(self.parse_expr()?)))
    }

    /// `'(' key '=' expr {',' key '=' expr} ')'`, refusing a repeated key.
    pub(super) fn parse_entries(&mut self, what: &str) -> Result<Vec<Entry>, ParseError> {
        self.expect_token(Token::LParen)?;
        let mut entries: Vec<Entry> = Vec::new();
        loop {
            let key_at = self.here();
            let key = self.parse_key(&format!("{what} name"))?;
            if entries.iter().any(|e| e.key.eq_ignore_ascii_case(&key)) {
                return Err(ParseError::at(
                    key_at,
                    format!("{what} {key} specified more than once"),
                ));
            }
            self.expect_token(Token::Eq)?;
            let value_at = self.here();
            let value = self.parse_expr()?;
            entries.push(Entry {
                key,
                key_at,
                value,
                value_at,
            });
            if !self.p().consume_token(&Token::Comma) {
                break;
            }
        }
        self.expect_token(Token::RParen)?;
        Ok(entries)
    }

    /// A key: `name`, `dotted.name` or `'any text'`, as written.
    pub(super) fn parse_key(&mut self, what: &str) -> Result<String, ParseError> {
        match &self.peek().token {
            Token::SingleQuotedString(_) => self.parse_string(what),
            Token::Word(_) => {
                let mut key = self.parse_ident()?.value;
                while self.p().consume_token(&Token::Period) {
                    key.push('.');
                    key.push_str(&self.parse_ident()?.value);
                }
                Ok(key)
            }
            _ => Err(self.expected(what, self.peek())),
        }
    }
}

/// The clauses seen so far, before defaults are applied.
#[derive(Default)]
struct Clauses {
    event_time: Option<Ident>,
    processing_time: bool,
    watermark: Option<Duration>,
    allowed_lateness: Duration,
    on_late: LateAction,
    emit: Option<EmitPolicy>,
    into: Option<datafusion::sql::sqlparser::ast::ObjectName>,
    alert: Option<AlertSpec>,
    notify: Vec<Channel>,
    start_from: StartFrom,
    mode: Mode,
    comment: Option<String>,
    with_options: Vec<(String, Expr)>,
    options: CqOptions,
}

/// Checks a continuous query's `WITH (…)` entries against the knobs the engine knows.
fn cq_options(entries: Vec<Entry>) -> Result<(Vec<(String, Expr)>, CqOptions), ParseError> {
    let mut options = CqOptions::default();
    let mut raw = Vec::with_capacity(entries.len());
    for Entry {
        key,
        key_at,
        value,
        value_at,
    } in entries
    {
        let key = key.to_ascii_lowercase();
        let duration = || {
            duration_of_expr(&value)
                .map(Some)
                .map_err(|message| ParseError::at(value_at, format!("{key}: {message}")))
        };
        match key.as_str() {
            "max_keys" => {
                options.max_keys = Some(positive_integer(&value).ok_or_else(|| {
                    ParseError::at(
                        value_at,
                        format!("max_keys must be a positive whole number, found: {value}"),
                    )
                })?)
            }
            "checkpoint_interval" => options.checkpoint_interval = duration()?,
            "idle_timeout" => options.idle_timeout = duration()?,
            "max_ingest_delay" => options.max_ingest_delay = duration()?,
            "max_notify_delay" => options.max_notify_delay = duration()?,
            "alert_retention" => options.alert_retention = duration()?,
            _ => {
                return Err(ParseError::at(
                    key_at,
                    format!(
                        "unknown continuous query option {key}; known options: {}",
                        CQ_OPTION_NAMES.join(", ")
                    ),
                ));
            }
        }
        raw.push((key, value));
    }
    Ok((raw, options))
}

fn positive_integer(expr: &Expr) -> Option<u64> {
    match expr {
        Expr::Value(v) => match &v.value {
            Value::Number(n, _) => n.parse().ok().filter(|n| *n > 0),
            _ => None,
        },
        _ => None,
    }
}
