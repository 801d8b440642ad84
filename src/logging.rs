//! Logs that never make a request wait: every line (the access log on stdout, everything else
//! on stderr) goes through a bounded queue to a writer thread of its own. When the reader
//! cannot keep up (a stuck log shipper, a full pipe), lines are dropped and counted in
//! `log_lines_dropped_total{stream}`; requests go on.
//!
//! Hand-written rather than `tracing-appender`'s non-blocking writer for two reasons: its worker
//! thread does not survive the fork of Pingora's `-d` (daemon) mode, after which its queue
//! would only fill up, and the access log, which is not a `tracing` event, shares the same
//! queue type here.
//!
//! Format: JSON lines by default; human-readable text when stderr is a terminal, with
//! Pingora's own start-up chatter at `warn`. `LOG_FORMAT=json|text` forces either. The access
//! log is one JSON line per request whatever the format.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::LazyLock;
use std::time::Duration;

use parking_lot::RwLock;
use tracing_subscriber::filter::FilterExt as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::Layer as _;

use crate::conn::report::{CountClientErrors, QuietClientErrors};
use crate::metrics;

/// Lines a stream may have queued; past this a line is dropped. At a few hundred bytes a
/// line this bounds each queue to a few MiB.
const QUEUE_LINES: usize = 8192;

/// Which standard stream a writer owns (also the metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// The access log.
    Stdout,
    /// Every other log line.
    Stderr,
}

impl Stream {
    /// Every stream, for priming the metric.
    pub const ALL: [Stream; 2] = [Stream::Stdout, Stream::Stderr];

    /// The `stream` label.
    pub fn label(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

enum Msg {
    Line(Vec<u8>),
    Flush(SyncSender<()>),
}

/// The sending side of a stream's queue, and the fork generation its thread was started in.
struct Worker {
    generation: u64,
    tx: SyncSender<Msg>,
}

/// One stream's queue and writer thread, started on first use (and again in a forked child,
/// which inherits the queue but not the thread).
pub struct LineWriter {
    stream: Stream,
    worker: RwLock<Option<Worker>>,
}

/// Bumped in the child of every fork (see [`watch_forks`]).
static FORK_GENERATION: AtomicU64 = AtomicU64::new(0);

static STDOUT: LazyLock<LineWriter> = LazyLock::new(|| LineWriter::new(Stream::Stdout));
static STDERR: LazyLock<LineWriter> = LazyLock::new(|| LineWriter::new(Stream::Stderr));

/// The access log's writer.
pub fn stdout() -> &'static LineWriter {
    &STDOUT
}

/// The writer of every other log line.
pub fn stderr() -> &'static LineWriter {
    &STDERR
}

impl LineWriter {
    fn new(stream: Stream) -> Self {
        LineWriter {
            stream,
            worker: RwLock::new(None),
        }
    }

    /// Queues one complete line (with its newline); never blocks.
    pub fn write_line(&self, line: Vec<u8>) {
        let generation = FORK_GENERATION.load(Ordering::Relaxed);
        {
            let worker = self.worker.read();
            if let Some(w) = worker.as_ref().filter(|w| w.generation == generation) {
                return self.send(&w.tx, line);
            }
        }
        let mut worker = self.worker.write();
        if worker.as_ref().is_none_or(|w| w.generation != generation) {
            *worker = self.spawn(generation);
        }
        match worker.as_ref() {
            Some(w) => self.send(&w.tx, line),
            None => self.dropped(),
        }
    }

    fn send(&self, tx: &SyncSender<Msg>, line: Vec<u8>) {
        match tx.try_send(Msg::Line(line)) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => self.dropped(),
        }
    }

    fn dropped(&self) {
        metrics::LOG_LINES_DROPPED
            .with_label_values(&[self.stream.label()])
            .inc();
    }

    fn spawn(&self, generation: u64) -> Option<Worker> {
        let (tx, rx) = mpsc::sync_channel(QUEUE_LINES);
        let stream = self.stream;
        let spawned = std::thread::Builder::new()
            .name(format!("log-{}", stream.label()))
            .spawn(move || drain(stream, rx));
        // Without a thread the lines are dropped and counted: logging never stops serving.
        spawned.ok().map(|_| Worker { generation, tx })
    }

    /// Waits up to `timeout` for the queued lines to be written (at exit).
    pub fn flush(&self, timeout: Duration) {
        let tx = match self.worker.read().as_ref() {
            Some(w) => w.tx.clone(),
            None => return,
        };
        let (ack_tx, ack_rx) = mpsc::sync_channel(1);
        let deadline = std::time::Instant::now() + timeout;
        let mut msg = Msg::Flush(ack_tx);
        // The queue may be full of lines the reader is slow to take: retry until the deadline.
        loop {
            match tx.try_send(msg) {
                Ok(()) => break,
                Err(TrySendError::Full(m)) if std::time::Instant::now() < deadline => {
                    msg = m;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(_) => return,
            }
        }
        let _ = ack_rx.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()));
    }
}

/// The writer thread: takes lines in arrival order, writes them in batches, and counts the ones
/// the stream refused.
fn drain(stream: Stream, rx: Receiver<Msg>) {
    let mut out: Box<dyn Write> = match stream {
        Stream::Stdout => Box::new(std::io::stdout()),
        Stream::Stderr => Box::new(std::io::stderr()),
    };
    let mut batch: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut lines = 0u64;
    let write_batch = |out: &mut Box<dyn Write>, batch: &mut Vec<u8>, lines: &mut u64| {
        if batch.is_empty() {
            return;
        }
        if out.write_all(batch).and_then(|()| out.flush()).is_err() {
            metrics::LOG_LINES_DROPPED
                .with_label_values(&[stream.label()])
                .inc_by(*lines);
        }
        batch.clear();
        *lines = 0;
    };
    loop {
        let msg = match rx.try_recv() {
            Ok(m) => m,
            Err(mpsc::TryRecvError::Empty) => {
                write_batch(&mut out, &mut batch, &mut lines);
                match rx.recv() {
                    Ok(m) => m,
                    Err(_) => return,
                }
            }
            Err(mpsc::TryRecvError::Disconnected) => break,
        };
        match msg {
            Msg::Line(line) => {
                batch.extend_from_slice(&line);
                lines += 1;
                if batch.len() >= 64 * 1024 {
                    write_batch(&mut out, &mut batch, &mut lines);
                }
            }
            Msg::Flush(ack) => {
                write_batch(&mut out, &mut batch, &mut lines);
                let _ = ack.send(());
            }
        }
    }
    write_batch(&mut out, &mut batch, &mut lines);
}

/// Makes writer threads restart in a forked child (Pingora's daemon mode forks after the
/// first lines were logged, and threads do not survive a fork).
fn watch_forks() {
    extern "C" fn in_child() {
        FORK_GENERATION.fetch_add(1, Ordering::Relaxed);
    }
    // SAFETY: the handler only bumps an atomic, which is async-signal-safe and allowed in a
    // child between fork and exec.
    unsafe {
        libc::pthread_atfork(None, None, Some(in_child));
    }
}

/// A `tracing` writer: each event is one buffer, queued as one line when the event is done.
struct EventWriter(Vec<u8>);

impl Write for EventWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for EventWriter {
    fn drop(&mut self) {
        if !self.0.is_empty() {
            stderr().write_line(std::mem::take(&mut self.0));
        }
    }
}

/// The format `init` chose.
static FORMAT: std::sync::OnceLock<Format> = std::sync::OnceLock::new();

/// The log format in effect (JSON before `init`).
pub fn format() -> Format {
    FORMAT.get().copied().unwrap_or(Format::Json)
}

/// The log format in effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One JSON object per line (pipes, containers, log shippers).
    Json,
    /// Human-readable lines (a terminal).
    Text,
}

impl Format {
    /// `LOG_FORMAT` when it is `json` or `text`, else text on a terminal and JSON elsewhere.
    pub fn choose(log_format: Option<&str>, stderr_is_terminal: bool) -> Format {
        match log_format.map(|v| v.trim().to_ascii_lowercase()).as_deref() {
            Some("json") => Format::Json,
            Some("text") => Format::Text,
            _ if stderr_is_terminal => Format::Text,
            _ => Format::Json,
        }
    }

    /// The filter when `RUST_LOG` is unset: a person at a terminal does not need Pingora's
    /// start-up chatter, a log pipeline keeps it.
    pub fn default_filter(self) -> &'static str {
        match self {
            Format::Json => "info",
            Format::Text => {
                "info,pingora=warn,pingora_core=warn,pingora_proxy=warn,pingora_load_balancing=warn"
            }
        }
    }
}

/// The redis client logs a WARN per reconnect attempt and per slot refresh: during a Redis
/// Cluster failover that was a hundred lines in 300 ms. The gateway says once (rate-limited)
/// that Redis failed and counts every failure, so the client's own lines are kept to errors
/// unless `RUST_LOG` names `redis` itself.
fn quiet_redis_client(directives: String) -> String {
    let named = directives
        .split(',')
        .any(|d| d.trim_start().starts_with("redis"));
    if named {
        directives
    } else {
        format!("{directives},redis=error")
    }
}

/// Sets up `tracing` (which also collects Pingora's `log` records) on the non-blocking stderr
/// writer. Unknown `LOG_FORMAT` values are reported once and ignored.
pub fn init() {
    watch_forks();
    let log_format = std::env::var("LOG_FORMAT").ok();
    let format = Format::choose(log_format.as_deref(), std::io::stderr().is_terminal());
    let _ = FORMAT.set(format);
    // A blank RUST_LOG (`RUST_LOG=` in a compose file) counts as unset.
    let directives = std::env::var("RUST_LOG")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| format.default_filter().to_string());
    let directives = quiet_redis_client(directives);
    let filter = tracing_subscriber::EnvFilter::try_new(&directives)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format.default_filter()));
    let layer =
        tracing_subscriber::fmt::layer().with_writer(|| EventWriter(Vec::with_capacity(256)));
    // `RUST_LOG` filters the written lines only; the counting layer sees WARN and above.
    let quiet = filter.and(QuietClientErrors);
    let registry = tracing_subscriber::registry()
        .with(CountClientErrors.with_filter(tracing_subscriber::filter::LevelFilter::WARN));
    let _ = match format {
        Format::Json => registry
            .with(layer.json().with_current_span(false).with_filter(quiet))
            .try_init(),
        Format::Text => registry
            .with(
                layer
                    .with_ansi(std::io::stderr().is_terminal())
                    .with_target(false)
                    .with_filter(quiet),
            )
            .try_init(),
    };
    if let Some(v) = log_format.filter(|v| !matches!(v.trim(), "json" | "text" | "")) {
        tracing::warn!("LOG_FORMAT=`{v}` is neither `json` nor `text`; ignored");
    }
}

/// Creates `log_lines_dropped_total` for both streams at 0.
pub fn prime() {
    for stream in Stream::ALL {
        metrics::LOG_LINES_DROPPED.with_label_values(&[stream.label()]);
    }
}

/// Writes out what both queues hold, waiting at most `timeout` each (at exit).
pub fn flush(timeout: Duration) {
    stdout().flush(timeout);
    stderr().flush(timeout);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_redis_clients_retry_warnings_are_quiet_unless_asked_for() {
        assert_eq!(quiet_redis_client("info".into()), "info,redis=error");
        assert_eq!(
            quiet_redis_client("warn,redis=debug".into()),
            "warn,redis=debug"
        );
    }

    #[test]
    fn format_follows_log_format_then_the_terminal() {
        assert_eq!(Format::choose(Some("json"), true), Format::Json);
        assert_eq!(Format::choose(Some("TEXT"), false), Format::Text);
        assert_eq!(Format::choose(None, true), Format::Text);
        assert_eq!(Format::choose(None, false), Format::Json);
        assert_eq!(Format::choose(Some("yaml"), false), Format::Json);
    }
}
