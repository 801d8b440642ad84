//! Slow and vanished clients: counted in metrics the moment they happen, logged only as one
//! summary line per interval. An attack of a thousand aborted slow requests is a thousand
//! metric increments and one log line, not a thousand ERROR lines from Pingora's proxy
//! (those are silenced by `suppress_error_log` and the log filter in `logging`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

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

/// Counts `e` in its metric and in the next summary line.
pub(crate) fn report(e: ClientEvent) {
    match e {
        ClientEvent::Timeout(p) => metrics::CLIENT_TIMEOUTS
            .with_label_values(&[p.label()])
            .inc(),
        ClientEvent::Aborted(p) => metrics::CLIENT_ABORTS.with_label_values(&[p.label()]).inc(),
        ClientEvent::Refused => metrics::CONNECTIONS_REFUSED
            .with_label_values(&["per_ip"])
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
}
