//! Slow and vanished clients: counted in metrics the moment they happen, logged only as one
//! summary line per interval. An attack of a thousand aborted slow requests is a thousand
//! metric increments and one log line, not a thousand ERROR lines from Pingora's proxy
//! (those are silenced by `suppress_error_log` and by the log filter here, which `logging`
//! installs: Pingora's lines about such clients are classified and counted, not written).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tracing_subscriber::layer::{Context, Filter};

use crate::metrics;

/// How often the summary line is written (when anything happened).
pub(crate) const SUMMARY_INTERVAL: Duration = Duration::from_secs(10);

/// Where in the request a client was cut or went away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Before the end of the request header.
    Header,
    /// While the request body was read.
    Body,
    /// While the response was written (a client that does not read).
    Response,
}

impl Phase {
    /// Every phase, for priming the metrics.
    pub(crate) const ALL: [Phase; 3] = [Phase::Header, Phase::Body, Phase::Response];

    /// The `phase` label.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Phase::Header => "header",
            Phase::Body => "body",
            Phase::Response => "response",
        }
    }
}

/// Something a client did that the gateway defends against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ClientEvent {
    /// Cut for being too slow.
    Timeout(Phase),
    /// Closed or reset the connection mid-request.
    Aborted(Phase),
    /// Refused at accept: its address holds `max_connections_per_ip` already.
    Refused,
}

impl ClientEvent {
    fn index(self) -> usize {
        match self {
            ClientEvent::Timeout(p) => p as usize,
            ClientEvent::Aborted(p) => 3 + p as usize,
            ClientEvent::Refused => 6,
        }
    }
}

/// Events since the last summary.
#[derive(Default)]
pub(crate) struct Tally([AtomicU64; 7]);

impl Tally {
    fn add(&self, e: ClientEvent) {
        self.0[e.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// The summary of what happened since the last one (and starts a new count); `None` when
    /// nothing did.
    fn take(&self) -> Option<String> {
        let n: Vec<u64> = self
            .0
            .iter()
            .map(|c| c.swap(0, Ordering::Relaxed))
            .collect();
        if n.iter().all(|&c| c == 0) {
            return None;
        }
        Some(format!(
            "slow or vanished clients in the last {} s: timeouts header={} body={} response={}, \
             aborted header={} body={} response={}, refused per_ip={} (metrics: client_timeouts_total, \
             client_aborts_total, connections_refused_total)",
            SUMMARY_INTERVAL.as_secs(),
            n[0],
            n[1],
            n[2],
            n[3],
            n[4],
            n[5],
            n[6]
        ))
    }
}

static TALLY: Tally = Tally([const { AtomicU64::new(0) }; 7]);

/// The `reason` label of a connection refused at accept.
const PER_IP: &str = "per_ip";

/// The `reason` label of an h2 connection cut for resetting streams in a loop.
const RAPID_RESET: &str = "rapid_reset";

/// Creates this module's series at 0: client timeouts and aborts by phase, refusals, and the
/// h2 cut when the gateway serves TLS (h2 is only offered there).
pub(crate) fn prime(serves_tls: bool) {
    for phase in Phase::ALL {
        metrics::CLIENT_TIMEOUTS.with_label_values(&[phase.label()]);
        metrics::CLIENT_ABORTS.with_label_values(&[phase.label()]);
    }
    metrics::CONNECTIONS_REFUSED.with_label_values(&[PER_IP]);
    if serves_tls {
        metrics::H2_CONNECTIONS_CUT.with_label_values(&[RAPID_RESET]);
    }
}

/// Counts `e` in its metric and in the next summary line.
pub(crate) fn report(e: ClientEvent) {
    match e {
        ClientEvent::Timeout(p) => metrics::CLIENT_TIMEOUTS
            .with_label_values(&[p.label()])
            .inc(),
        ClientEvent::Aborted(p) => metrics::CLIENT_ABORTS.with_label_values(&[p.label()]).inc(),
        ClientEvent::Refused => metrics::CONNECTIONS_REFUSED
            .with_label_values(&[PER_IP])
            .inc(),
    }
    TALLY.add(e);
}

/// Writes the summary line every [`SUMMARY_INTERVAL`] when anything happened.
pub(crate) struct SummaryService;

#[async_trait]
impl BackgroundService for SummaryService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tick = tokio::time::interval(SUMMARY_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => {
                    if let Some(line) = TALLY.take() {
                        tracing::warn!("{line}");
                    }
                    return;
                }
            }
            if let Some(line) = TALLY.take() {
                tracing::warn!("{line}");
            }
        }
    }
}

/// Drops Pingora's per-connection ERROR line for a client that stalled or went away before
/// its request header was complete (Pingora offers no hook for that one): such clients are
/// counted in `client_timeouts_total` / `client_aborts_total` and summarised once per interval
/// (below), so a slowloris attack cannot flood the log. Failed TLS handshakes are
/// counted in `tls_handshake_errors_total` instead of logged. Every other line passes.
pub(crate) struct QuietClientErrors;

/// A line about a client that is counted instead of written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClientLine {
    /// h2's line for a connection it cut for resetting streams in a loop (rapid reset).
    RapidReset,
    /// Pingora's one trace of a failed or timed-out TLS handshake (it offers no hook).
    Handshake,
    /// Pingora's per-request line for a client that was too slow or went away (counted by
    /// the connection wrapper and `fail_to_proxy`, not here).
    ClientFailure,
    /// Pingora's ERROR when a pooled upstream connection was taken by another request first
    /// (a harmless race: a new connection is opened): counted, and said at DEBUG.
    PoolRace,
    /// Pingora's health-change line (a backend's Debug form): the gateway says it itself,
    /// once, in its own words.
    HealthChange,
}

impl ClientLine {
    fn of(event: &tracing::Event<'_>) -> Option<ClientLine> {
        let meta = event.metadata();
        if *meta.level() == tracing::Level::WARN && meta.target().starts_with("h2::") {
            let mut seen = PingoraLine::default();
            event.record(&mut seen);
            let cut = seen.message.contains("reset") && seen.message.contains("reached limit");
            return cut.then_some(ClientLine::RapidReset);
        }
        if meta.target().starts_with("pingora_load_balancing") || meta.target() == "log" {
            let mut seen = PingoraLine::default();
            event.record(&mut seen);
            if seen.from_balancer
                && (seen.message.contains(" becomes unhealthy")
                    || seen.message.ends_with(" becomes healthy"))
            {
                return Some(ClientLine::HealthChange);
            }
        }
        if *meta.level() != tracing::Level::ERROR {
            return None;
        }
        let mut seen = PingoraLine::default();
        event.record(&mut seen);
        if seen.from_connectors && seen.message == "failed to acquire reusable stream" {
            Some(ClientLine::PoolRace)
        } else if seen.from_listener && seen.message.starts_with("Downstream handshake") {
            Some(ClientLine::Handshake)
        } else if seen.from_proxy && is_client_failure(&seen.message) {
            Some(ClientLine::ClientFailure)
        } else {
            None
        }
    }
}

impl<S> Filter<S> for QuietClientErrors {
    fn enabled(&self, _meta: &tracing::Metadata<'_>, _cx: &Context<'_, S>) -> bool {
        true
    }

    /// No level is refused here. Without a hint, `RUST_LOG.and(this)` would have none either
    /// and the process-wide maximum would become TRACE: `log` records below `RUST_LOG`'s level
    /// (Pingora's `debug!`s) would be built only to be dropped.
    fn max_level_hint(&self) -> Option<tracing_subscriber::filter::LevelFilter> {
        Some(tracing_subscriber::filter::LevelFilter::TRACE)
    }

    fn event_enabled(&self, event: &tracing::Event<'_>, _cx: &Context<'_, S>) -> bool {
        // One line per scanner, attacking connection or slow client would flood the log.
        ClientLine::of(event).is_none()
    }
}

/// Counts what `QuietClientErrors` keeps out of the log. A layer of its own, beside the
/// writer and not under `RUST_LOG`, so that `RUST_LOG=error` or `off` does not stop the
/// metrics.
pub(crate) struct CountClientErrors;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for CountClientErrors {
    fn on_event(&self, event: &tracing::Event<'_>, _cx: Context<'_, S>) {
        match ClientLine::of(event) {
            Some(ClientLine::RapidReset) => metrics::H2_CONNECTIONS_CUT
                .with_label_values(&[RAPID_RESET])
                .inc(),
            Some(ClientLine::Handshake) => metrics::TLS_HANDSHAKE_ERRORS.inc(),
            Some(ClientLine::PoolRace) => {
                metrics::UPSTREAM_POOL_RACES.inc();
                tracing::debug!(
                    "a pooled upstream connection was taken by another request first; a new one was opened"
                );
            }
            Some(ClientLine::ClientFailure | ClientLine::HealthChange) | None => {}
        }
    }
}

/// The message and origin of a line bridged from Pingora's `log` records.
#[derive(Default)]
struct PingoraLine {
    message: String,
    from_proxy: bool,
    /// From Pingora's accept loop (`services::listening`), where TLS handshakes fail.
    from_listener: bool,
    /// From Pingora's connectors (the upstream connection pool).
    from_connectors: bool,
    /// From Pingora's load balancer (its health checks).
    from_balancer: bool,
}

impl tracing::field::Visit for PingoraLine {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == "log.target" {
            self.from_proxy = value.starts_with("pingora_proxy");
            self.from_listener = value.starts_with("pingora_core::services::listening");
            self.from_connectors = value.starts_with("pingora_core::connectors");
            self.from_balancer = value.starts_with("pingora_load_balancing");
        }
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            use std::fmt::Write as _;
            let _ = write!(self.message, "{value:?}");
        }
    }
}

/// Pingora's lines for a request header that failed to arrive, or an error answer the
/// client was no longer there to read.
fn is_client_failure(message: &str) -> bool {
    (message.starts_with("Fail to proxy: ") && message.contains("downstream session type"))
        || message.starts_with("failed to send error response to downstream")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_one_summary_and_a_quiet_interval_is_none() {
        let t = Tally::default();
        assert_eq!(t.take(), None);
        for _ in 0..500 {
            t.add(ClientEvent::Aborted(Phase::Body));
        }
        t.add(ClientEvent::Timeout(Phase::Header));
        t.add(ClientEvent::Refused);
        let line = t.take().unwrap();
        assert!(line.contains("timeouts header=1 body=0"), "{line}");
        assert!(line.contains("aborted header=0 body=500"), "{line}");
        assert!(line.contains("refused per_ip=1"), "{line}");
        assert_eq!(t.take(), None, "counts start again");
    }

    #[test]
    fn only_pingoras_client_failure_lines_are_quiet() {
        assert!(is_client_failure(
            "Fail to proxy: Downstream ReadError context: request header not received within the deadline, downstream session type: HTTP/1.1"
        ));
        assert!(is_client_failure(
            "failed to send error response to downstream: Downstream WriteError"
        ));
        assert!(!is_client_failure(
            "Fail to proxy: Upstream ConnectRefused, status: 502, tries: 1"
        ));
    }

    #[test]
    fn the_written_lines_keep_rust_logs_level_as_the_maximum() {
        use tracing_subscriber::filter::{FilterExt as _, LevelFilter};
        let hint = |directives: &str| {
            let f = tracing_subscriber::EnvFilter::new(directives).and(QuietClientErrors);
            Filter::<tracing_subscriber::Registry>::max_level_hint(&f)
        };
        assert_eq!(hint("info"), Some(LevelFilter::INFO));
        assert_eq!(hint("warn,pingora=error"), Some(LevelFilter::WARN));
    }
}
