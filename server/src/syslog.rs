//! syslog over TCP and UDP (`[syslog]`): rsyslog's and syslog-ng's forwarding, network
//! devices. Every message goes through the syslog text decoder (RFC 5424 and RFC 3164, as
//! `POST /v1/logs?format=syslog`), batched into `Engine::ingest` — the same WAL (or Kafka)
//! path as HTTP.
//!
//! TCP framing is told per message (RFC 6587): a message that starts with a digit followed
//! by digits and a space is octet-counted (`LEN SP MSG`, RFC 5425's framing), anything else is
//! a line ended by LF or NUL. UDP is one message per datagram (RFC 5426).
//!
//! syslog has no acknowledgement: a message is stored at most `syslog.batch_ms` after it is
//! read, in one WAL write (and fsync) per batch. On shutdown the listeners stop reading and
//! what was read is stored before the engine stops. When storing fails the batch is retried
//! and reading waits (TCP senders are slowed by TCP's own flow control; UDP datagrams beyond
//! the socket's buffer are lost, as with any UDP receiver).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Context;
use logsphere_engine::ingest::{DecodeOptions, Format};
use logsphere_engine::{Engine, EngineError};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::config::SyslogConfig;

/// A batch is stored once it holds this many messages or bytes, whatever `batch_ms` says.
const BATCH_MESSAGES: usize = 10_000;
const BATCH_BYTES: usize = 4 * 1024 * 1024;

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct SyslogStats {
    /// Messages read over TCP, and over UDP.
    pub tcp_messages: AtomicU64,
    pub udp_messages: AtomicU64,
    /// TCP connections open now, and refused at `syslog.max_connections`.
    pub connections: AtomicUsize,
    pub connections_refused: AtomicU64,
    /// Attempts to store a batch that failed (each is retried).
    pub store_failures: AtomicU64,
}

/// The bound sockets (bound before the engine opens, so a taken port stops startup).
pub struct Listeners {
    tcp: Option<TcpListener>,
    udp: Option<UdpSocket>,
}

impl Listeners {
    /// Binds what `cfg` asks for; an error names the key.
    pub async fn bind(cfg: &SyslogConfig) -> anyhow::Result<Self> {
        let tcp = match cfg.tcp_listen {
            None => None,
            Some(a) => Some(
                TcpListener::bind(a)
                    .await
                    .with_context(|| format!("cannot listen on syslog.tcp_listen = {a}"))?,
            ),
        };
        let udp = match cfg.udp_listen {
            None => None,
            Some(a) => Some(
                UdpSocket::bind(a)
                    .await
                    .with_context(|| format!("cannot listen on syslog.udp_listen = {a}"))?,
            ),
        };
        Ok(Self { tcp, udp })
    }

    /// Whether any listener is configured.
    pub fn any(&self) -> bool {
        self.tcp.is_some() || self.udp.is_some()
    }
}

/// Serves until `shutdown` turns true, then stores what was read and returns.
pub async fn serve(
    listeners: Listeners,
    engine: Arc<Engine>,
    cfg: SyslogConfig,
    max_record_bytes: usize,
    stats: Arc<SyslogStats>,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let (tx, rx) = mpsc::channel::<Vec<u8>>(8192);
    if let Some(l) = listeners.tcp {
        tokio::spawn(accept(
            l,
            tx.clone(),
            cfg.max_connections,
            max_record_bytes,
            Arc::clone(&stats),
            shutdown.clone(),
        ));
    }
    if let Some(s) = listeners.udp {
        tokio::spawn(datagrams(
            s,
            tx.clone(),
            Arc::clone(&stats),
            shutdown.clone(),
        ));
    }
    drop(tx);
    let opts = DecodeOptions {
        max_record_bytes,
        default_topic: "logs".into(),
        origin: "syslog".into(),
        format: Format::Syslog,
        default_source: None,
        rejected: Vec::new(),
    };
    batch(
        rx,
        &engine,
        Duration::from_millis(cfg.batch_ms),
        &opts,
        &stats,
    )
    .await;
    Ok(())
}

/// Collects messages into batches and stores each; returns once every reader is gone.
async fn batch(
    mut rx: mpsc::Receiver<Vec<u8>>,
    engine: &Engine,
    interval: Duration,
    opts: &DecodeOptions,
    stats: &SyslogStats,
) {
    let mut body = Vec::new();
    let mut count = 0;
    let mut deadline = Instant::now();
    loop {
        let msg = tokio::select! {
            m = rx.recv() => m,
            _ = tokio::time::sleep_until(deadline), if count > 0 => {
                store(engine, std::mem::take(&mut body), count, opts, stats).await;
                count = 0;
                continue;
            }
        };
        let Some(msg) = msg else { break };
        if count == 0 {
            deadline = Instant::now() + interval;
        }
        body.extend_from_slice(&msg);
        body.push(b'\n');
        count += 1;
        if count >= BATCH_MESSAGES || body.len() >= BATCH_BYTES {
            store(engine, std::mem::take(&mut body), count, opts, stats).await;
            count = 0;
        }
    }
    if count > 0 {
        store(engine, body, count, opts, stats).await;
    }
}

/// Stores one batch, retrying while the engine refuses for a reason that may pass.
async fn store(
    engine: &Engine,
    body: Vec<u8>,
    count: usize,
    opts: &DecodeOptions,
    stats: &SyslogStats,
) {
    let body = bytes::Bytes::from(body);
    let mut backoff = Duration::from_millis(100);
    loop {
        match engine.ingest(body.clone(), None, opts.clone()).await {
            Ok(o) => {
                tracing::debug!(
                    accepted = o.accepted,
                    rejected = o.rejected,
                    "syslog batch stored"
                );
                return;
            }
            Err(EngineError::ShuttingDown) => {
                tracing::error!(
                    messages = count,
                    "syslog batch not stored: the engine is shutting down"
                );
                return;
            }
            Err(e) => {
                stats.store_failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(messages = count, error = %e, "syslog batch not stored yet; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

async fn accept(
    listener: TcpListener,
    tx: mpsc::Sender<Vec<u8>>,
    max_connections: usize,
    max_record_bytes: usize,
    stats: Arc<SyslogStats>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "syslog tcp accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = stopped(&mut shutdown) => return,
        };
        if stats.connections.load(Ordering::Relaxed) >= max_connections {
            stats.connections_refused.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%peer, max_connections, "syslog tcp connection refused: syslog.max_connections reached");
            continue;
        }
        stats.connections.fetch_add(1, Ordering::Relaxed);
        let (tx, shutdown, stats) = (tx.clone(), shutdown.clone(), Arc::clone(&stats));
        tokio::spawn(async move {
            if let Err(e) = connection(stream, tx, max_record_bytes, &stats, shutdown).await {
                tracing::debug!(%peer, error = %e, "syslog tcp connection ended");
            }
            stats.connections.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

async fn connection(
    mut stream: TcpStream,
    tx: mpsc::Sender<Vec<u8>>,
    max_record_bytes: usize,
    stats: &SyslogStats,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let mut framer = Framer::new(max_record_bytes);
    loop {
        while let Some(frame) = framer.next_frame() {
            stats.tcp_messages.fetch_add(1, Ordering::Relaxed);
            if tx.send(frame).await.is_err() {
                return Ok(());
            }
        }
        let n = tokio::select! {
            r = stream.read_buf(&mut framer.buf) => r?,
            _ = stopped(&mut shutdown) => return Ok(()),
        };
        if n == 0 {
            // The sender closed: a last line without its LF is still a message.
            if let Some(frame) = framer.finish() {
                stats.tcp_messages.fetch_add(1, Ordering::Relaxed);
                let _ = tx.send(frame).await;
            }
            return Ok(());
        }
    }
}

async fn datagrams(
    socket: UdpSocket,
    tx: mpsc::Sender<Vec<u8>>,
    stats: Arc<SyslogStats>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 65_536];
    loop {
        let n = tokio::select! {
            r = socket.recv_from(&mut buf) => match r {
                Ok((n, _)) => n,
                Err(e) => {
                    tracing::warn!(error = %e, "syslog udp receive failed");
                    continue;
                }
            },
            _ = stopped(&mut shutdown) => return,
        };
        let msg = buf[..n].trim_ascii_end();
        let msg = msg.strip_suffix(b"\0").unwrap_or(msg);
        if msg.iter().all(|c| c.is_ascii_whitespace() || *c == 0) {
            continue;
        }
        stats.udp_messages.fetch_add(1, Ordering::Relaxed);
        if tx.send(escape_lf(msg)).await.is_err() {
            return;
        }
    }
}

/// Returns once `shutdown` turns true (or its sender is gone).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}

/// A message with each LF inside it written as `#012` (rsyslog's escape), so one message
/// stays one line of the batch.
fn escape_lf(msg: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(msg.len());
    for &c in msg {
        if c == b'\n' {
            out.extend_from_slice(b"#012");
        } else {
            out.push(c);
        }
    }
    out
}

/// Splits a TCP byte stream into syslog messages (RFC 6587), holding at most about
/// `max` bytes of one message: a longer one is passed on cut to `max + 1` bytes (so the
/// decoder stores it as a dead letter, over `http.max_record_bytes`) and the rest skipped.
pub(crate) struct Framer {
    pub(crate) buf: Vec<u8>,
    max: usize,
    /// Bytes of an oversized octet-counted message still to skip.
    skip: usize,
    /// Skipping the rest of an oversized line.
    discard_line: bool,
}

impl Framer {
    pub(crate) fn new(max: usize) -> Self {
        Self {
            buf: Vec::with_capacity(64 * 1024),
            max,
            skip: 0,
            discard_line: false,
        }
    }

    /// The next complete message in the buffer, if there is one.
    pub(crate) fn next_frame(&mut self) -> Option<Vec<u8>> {
        if self.skip > 0 {
            let n = self.skip.min(self.buf.len());
            self.buf.drain(..n);
            self.skip -= n;
            if self.skip > 0 {
                return None;
            }
        }
        if self.discard_line {
            match self.buf.iter().position(|c| matches!(c, b'\n' | 0)) {
                Some(i) => {
                    self.buf.drain(..=i);
                    self.discard_line = false;
                }
                None => {
                    self.buf.clear();
                    return None;
                }
            }
        }
        let start = self
            .buf
            .iter()
            .position(|c| !matches!(c, b'\n' | b'\r' | 0));
        match start {
            None => {
                self.buf.clear();
                return None;
            }
            Some(i) => {
                self.buf.drain(..i);
            }
        }
        let digits = self.buf.iter().take_while(|c| c.is_ascii_digit()).count();
        if digits > 0 && digits <= 10 {
            if digits == self.buf.len() {
                return None; // the length is still arriving
            }
            if self.buf[digits] == b' ' {
                return self.octet_counted(digits);
            }
        }
        match self.buf.iter().position(|c| matches!(c, b'\n' | 0)) {
            // A line longer than the limit is cut as when its end has not arrived yet:
            // framing must not depend on how reads split the stream.
            Some(i) if i > self.max => {
                let frame = self.buf[..=self.max].to_vec();
                self.buf.drain(..=i);
                Some(frame)
            }
            Some(i) => {
                let mut frame: Vec<u8> = self.buf.drain(..=i).collect();
                frame.pop();
                if frame.last() == Some(&b'\r') {
                    frame.pop();
                }
                Some(frame)
            }
            None if self.buf.len() > self.max => {
                let frame = self.buf[..=self.max].to_vec();
                self.buf.clear();
                self.discard_line = true;
                Some(frame)
            }
            None => None,
        }
    }

    fn octet_counted(&mut self, digits: usize) -> Option<Vec<u8>> {
        let len: usize = std::str::from_utf8(&self.buf[..digits])
            .ok()?
            .parse()
            .ok()?;
        let body = digits + 1;
        if len > self.max {
            if self.buf.len() < body + self.max + 1 {
                return None;
            }
            let frame = self.buf[body..=body + self.max].to_vec();
            let have = self.buf.len() - body;
            self.skip = len.saturating_sub(have);
            let drop = body + len.min(have);
            self.buf.drain(..drop);
            return Some(frame);
        }
        if self.buf.len() < body + len {
            return None;
        }
        let frame: Vec<u8> = self.buf.drain(..body + len).skip(body).collect();
        // rsyslog's templates end a message with LF even when it is octet-counted.
        let frame = frame.trim_ascii_end();
        Some(escape_lf(frame.strip_suffix(b"\0").unwrap_or(frame)))
    }

    /// At the end of the stream: what is left, as a last message (a line without its LF,
    /// or a truncated octet-counted message as far as it came).
    pub(crate) fn finish(&mut self) -> Option<Vec<u8>> {
        if self.skip > 0 || self.discard_line {
            return None;
        }
        let rest = std::mem::take(&mut self.buf);
        let rest = rest.trim_ascii();
        (!rest.is_empty()).then(|| rest.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::Framer;

    fn frames(input: &[u8], max: usize) -> Vec<String> {
        let mut f = Framer::new(max);
        let mut out = Vec::new();
        // Byte by byte: framing must not depend on how reads split the stream.
        for b in input {
            f.buf.push(*b);
            while let Some(frame) = f.next_frame() {
                out.push(String::from_utf8_lossy(&frame).into_owned());
            }
        }
        out.extend(f.finish().map(|r| String::from_utf8_lossy(&r).into_owned()));
        out
    }

    #[test]
    fn octet_counting_and_lines_mix_per_message() {
        let input = b"13 <13>hello\nx \n<14>line one\n<15>nul ended\x00\r\n5 <1>ab18 <13>two\nlines here\n<9>tail";
        assert_eq!(
            frames(input, 100),
            vec![
                "<13>hello#012x",
                "<14>line one",
                "<15>nul ended",
                "<1>ab",
                "<13>two#012lines here",
                "<9>tail"
            ]
        );
    }

    #[test]
    fn oversized_messages_are_cut_and_the_stream_goes_on() {
        let mut input = b"30 ".to_vec();
        input.extend_from_slice(&[b'a'; 30]);
        input.extend_from_slice(b"<1>ok\n");
        input.extend_from_slice(&[b'b'; 25]);
        input.extend_from_slice(b"\n<2>fine\n");
        let got = frames(&input, 10);
        assert_eq!(
            got,
            vec![
                "a".repeat(11),
                "<1>ok".into(),
                "b".repeat(11),
                "<2>fine".into()
            ]
        );
    }

    #[test]
    fn a_line_starting_with_digits_is_a_line() {
        assert_eq!(
            frames(b"2026-12-07 app started\n", 100),
            vec!["2026-12-07 app started"]
        );
    }

    /// Frames of `input` fed in the chunk sizes `chunks` gives (cycled).
    fn frames_chunked(input: &[u8], max: usize, chunks: &[usize]) -> Vec<String> {
        let mut f = Framer::new(max);
        let mut out = Vec::new();
        let (mut at, mut i) = (0, 0);
        while at < input.len() {
            let n = chunks[i % chunks.len()].max(1).min(input.len() - at);
            f.buf.extend_from_slice(&input[at..at + n]);
            at += n;
            i += 1;
            while let Some(frame) = f.next_frame() {
                out.push(String::from_utf8_lossy(&frame).into_owned());
            }
            // What it holds stays bounded by the message limit, whatever the input.
            assert!(
                f.buf.len() <= 2 * max + n + 64,
                "holds {} bytes",
                f.buf.len()
            );
        }
        out.extend(f.finish().map(|r| String::from_utf8_lossy(&r).into_owned()));
        out
    }

    /// Bounded fuzzing of the framer (see `engine/src/ingest/fuzz.rs` for the decoders):
    /// random streams of octet counts (right, wrong, huge), lines, NULs and CRs, fed byte
    /// by byte and in random chunks, frame alike, never panic, and hold bounded memory.
    #[test]
    fn fuzz_framing_is_independent_of_chunking() {
        let budget = std::env::var("LOGSPHERE_FUZZ_SECS")
            .ok()
            .and_then(|s| s.parse::<f64>().ok())
            .unwrap_or(2.0);
        let started = std::time::Instant::now();
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            state.wrapping_mul(0x2545_f491_4f6c_dd1d)
        };
        let pieces: &[&[u8]] = &[
            b"13 <13>hello\nx ",
            b"<14>line one\n",
            b"\x00",
            b"\r\n",
            b"5 <1>ab",
            b"0 ",
            b"99999999999999999999 ",
            b"18 <13>two\nlines here",
            b"\n",
            b"<9>tail",
            b"12",
            b" ",
            b"<34>1 2026-11-24T10:00:00Z h app - - - m\n",
            b"\xff\xfe",
        ];
        let mut runs = 0u64;
        while runs < 200 || started.elapsed().as_secs_f64() < budget {
            let mut input = Vec::new();
            for _ in 0..next() % 24 {
                input.extend_from_slice(pieces[(next() % pieces.len() as u64) as usize]);
                if next() % 5 == 0 {
                    input.push(next() as u8);
                }
            }
            let max = 8 + (next() % 64) as usize;
            let chunks: Vec<usize> = (0..4).map(|_| 1 + (next() % 40) as usize).collect();
            let one = frames_chunked(&input, max, &[1]);
            let many = frames_chunked(&input, max, &chunks);
            assert_eq!(one, many, "input {input:?}, max {max}, chunks {chunks:?}");
            runs += 1;
        }
    }
}
