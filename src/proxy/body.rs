//! Request bodies on proxied routes: read whole before a backend is chosen, so that a client
//! trickling its body holds only the gateway (a task and a few KiB), never a backend worker;
//! or streamed, with a bound on each pause. Every body is capped in size, and buffered bytes
//! count against one process-wide budget.
//!
//! How a buffered body reaches the backend: Pingora keeps what is read before proxying in its
//! retry buffer (64 KiB, [`MAX_BODY_BUFFER`]) and sends it first, then streams whatever is left.
//! That is also why a retry after a connect failure resends the body. The buffer drops all it
//! holds when one read overshoots it, so chunked bodies (size unknown) are read with a cap per
//! read set on the connection's stream, and stop being buffered well before 64 KiB.
//!
//! When the budget is spent, new bodies stream instead of waiting for room: the budget only
//! fills with bytes that actually arrived, so a full budget means clients sending fast, and a
//! fast body holds a backend only briefly. Refusing them (503) would turn a memory bound into
//! an outage for ordinary uploads.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use pingora::proxy::Session;

use crate::config::{BodyPolicy, MAX_BODY_BUFFER};
use crate::conn::report::{report, ClientEvent, Phase};
use crate::conn::set_read_cap;
use crate::error::GatewayError;
use crate::metrics;

/// The most one read may return while a chunked body is buffered.
const CHUNKED_READ_CAP: usize = 16 * 1024;
const _: () = assert!(CHUNKED_READ_CAP <= u16::MAX as usize);
/// Chunked bodies are buffered up to here, so the last capped read still fits Pingora's buffer.
const CHUNKED_BUFFER_MAX: usize = MAX_BODY_BUFFER - CHUNKED_READ_CAP;

/// How a request body was read (the `mode` label of `request_bodies_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyMode {
    /// Read whole before a backend was chosen.
    Buffered,
    /// Sent on as it arrived (buffering off, or larger than the buffer).
    Streamed,
    /// Would have been buffered, but the budget was spent: streamed.
    BudgetExhausted,
    /// Refused with 413.
    TooLarge,
}

impl BodyMode {
    /// Every mode, for priming the metric.
    pub(crate) const ALL: [BodyMode; 4] = [
        BodyMode::Buffered,
        BodyMode::Streamed,
        BodyMode::BudgetExhausted,
        BodyMode::TooLarge,
    ];

    /// The `mode` label.
    pub(crate) fn label(self) -> &'static str {
        match self {
            BodyMode::Buffered => "buffered",
            BodyMode::Streamed => "streamed",
            BodyMode::BudgetExhausted => "budget_exhausted",
            BodyMode::TooLarge => "too_large",
        }
    }

    /// Creates `request_bodies_total` at 0 for every mode.
    pub(crate) fn prime() {
        for mode in BodyMode::ALL {
            metrics::REQUEST_BODIES.with_label_values(&[mode.label()]);
        }
    }

    fn count(self) {
        // Resolved once: this runs for every request with a body.
        static COUNTERS: std::sync::LazyLock<[prometheus::IntCounter; 4]> =
            std::sync::LazyLock::new(|| {
                BodyMode::ALL.map(|m| metrics::REQUEST_BODIES.with_label_values(&[m.label()]))
            });
        COUNTERS[self as usize].inc();
    }
}

/// The bytes every buffered body together may hold (`limits.request_body_buffer_total_bytes`).
#[derive(Debug)]
pub(crate) struct BodyBudget {
    total: usize,
    used: AtomicUsize,
}

/// Budget one request holds; given back when the request ends (its `Ctx` drops).
#[derive(Debug)]
pub(crate) struct Held {
    budget: Arc<BodyBudget>,
    bytes: usize,
}

impl BodyBudget {
    /// A budget of `total` bytes.
    pub(crate) fn new(total: usize) -> Arc<Self> {
        Arc::new(BodyBudget {
            total,
            used: AtomicUsize::new(0),
        })
    }

    /// Takes `n` more bytes for `held`; `false` (nothing taken) when they do not fit.
    fn take(&self, held: &mut Held, n: usize) -> bool {
        let fits = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(n).filter(|&u| u <= self.total)
            })
            .is_ok();
        if fits {
            held.bytes += n;
            metrics::REQUEST_BODY_BUFFERED.add(n as i64);
        }
        fits
    }

    /// Bytes held right now.
    #[cfg(test)]
    fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if self.bytes > 0 {
            self.budget.used.fetch_sub(self.bytes, Ordering::AcqRel);
            metrics::REQUEST_BODY_BUFFERED.sub(self.bytes as i64);
        }
    }
}

/// What reading the body decided.
#[derive(Debug, Default)]
pub(crate) struct Prepared {
    /// Budget this request holds until it ends (given back on drop).
    _held: Option<Held>,
    /// The client got `100 Continue` from the gateway (the backend must not be asked again).
    pub(crate) continue_sent: bool,
    /// Bytes read that Pingora's retry buffer could not keep, to be sent ahead of the rest
    /// (never expected: only a read larger than the per-read cap, see the module doc).
    pub(crate) unsent: Vec<Bytes>,
}

/// A refusal: the answer, and what to count it as.
#[derive(Debug)]
pub(crate) struct Refusal {
    /// What the client is told (the connection closes after it).
    pub(crate) error: GatewayError,
}

/// The declared `Content-Length`, when the body is framed by one.
fn declared_length(session: &Session) -> Option<u64> {
    let h = &session.req_header().headers;
    if h.contains_key(http::header::TRANSFER_ENCODING) {
        return None;
    }
    h.get(http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// A body over the cap: 413, counted.
fn too_large(max: u64) -> Refusal {
    BodyMode::TooLarge.count();
    Refusal {
        error: GatewayError::PayloadTooLarge(
            format!("request body larger than {max} bytes").into(),
        ),
    }
}

/// Refuses a body whose declared size is over `max` before a byte of it is read.
pub(crate) fn check_declared(session: &Session, max: u64) -> Result<(), Refusal> {
    match declared_length(session) {
        Some(n) if n > max => Err(too_large(max)),
        _ => Ok(()),
    }
}

/// Reads the body of a proxied request as `policy` says, before a backend is chosen. `Ok`:
/// go on proxying (with whatever was not read streaming behind); `Err(Some)`: answer the
/// refusal and close; `Err(None)`: the client went away (nothing to answer).
pub(crate) async fn prepare(
    session: &mut Session,
    policy: &BodyPolicy,
    budget: &Arc<BodyBudget>,
) -> Result<Prepared, Option<Refusal>> {
    // A gRPC call's messages stream both ways: waiting for the end of its body first would
    // stall every streaming call.
    if session.as_mut().is_body_empty()
        || session.is_upgrade_req()
        || super::grpc::is_grpc(session.req_header())
    {
        return Ok(Prepared::default());
    }
    // For a streamed body (or the part after the buffer): the longest pause between reads.
    session.set_read_timeout(Some(policy.read_timeout));
    let declared = declared_length(session);
    let limit = match declared {
        Some(n) if n > policy.buffer_bytes as u64 => 0,
        Some(n) => n as usize,
        None => policy.buffer_bytes.min(CHUNKED_BUFFER_MAX),
    };
    if limit == 0 {
        BodyMode::Streamed.count();
        return Ok(Prepared::default());
    }
    let mut held = Held {
        budget: budget.clone(),
        bytes: 0,
    };
    let mut continue_sent = false;
    if session
        .req_header()
        .headers
        .get(http::header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
    {
        // The client waits for this before sending a body we are about to wait for.
        if session.write_continue_response().await.is_err() {
            return Err(None);
        }
        continue_sent = true;
    }
    let chunked = declared.is_none();
    if chunked {
        set_read_cap(session, CHUNKED_READ_CAP as u16);
    }
    session.as_mut().enable_retry_buffering();
    // The whole-body deadline below bounds every read; Pingora's own per-read timeout would
    // only race it.
    session.set_read_timeout(None);
    let mut kept = Vec::new();
    let read = pingora_timeout::timeout(
        policy.read_timeout,
        read_up_to(
            session,
            limit,
            policy.max_bytes,
            budget,
            &mut held,
            chunked.then_some(&mut kept),
        ),
    )
    .await;
    if chunked {
        set_read_cap(session, 0);
    }
    session.set_read_timeout(Some(policy.read_timeout));
    let mode = match read {
        Err(_elapsed) => {
            report(ClientEvent::Timeout(Phase::Body));
            return Err(Some(Refusal {
                error: GatewayError::RequestTimeout(
                    format!(
                        "request body not received within {} ms",
                        policy.read_timeout.as_millis()
                    )
                    .into(),
                ),
            }));
        }
        Ok(Err(ReadStop::TooLarge)) => return Err(Some(too_large(policy.max_bytes))),
        Ok(Err(ReadStop::Gone)) => return Err(None),
        Ok(Err(ReadStop::Malformed)) => return Err(Some(malformed())),
        Ok(Ok(mode)) => mode,
    };
    mode.count();
    let unsent = if session.as_ref().retry_buffer_truncated() {
        if session.as_mut().is_body_done() {
            // Read whole but not kept: nothing would send it. Not reachable with the read cap
            // (see the module doc); refused rather than sent without its body.
            return Err(Some(too_large(CHUNKED_BUFFER_MAX as u64)));
        }
        kept
    } else {
        Vec::new()
    };
    Ok(Prepared {
        _held: Some(held),
        continue_sent,
        unsent,
    })
}

/// Why buffering stopped early.
enum ReadStop {
    /// Past `max_request_body_bytes`.
    TooLarge,
    /// The client closed or the read failed.
    Gone,
    /// The body's framing is broken (bad chunk size, missing CRLF).
    Malformed,
}

/// Whether a body read failed on the client's framing (a chunk Pingora's reader refused),
/// rather than on the connection.
pub(crate) fn is_malformed(e: &pingora::Error) -> bool {
    // Pingora's reader raises its own `InvalidChunk` type, from a module it does not export.
    matches!(e.etype(), pingora::ErrorType::Custom("InvalidChunk"))
}

/// The refusal of a body whose framing is broken, counted as `chunked`.
pub(crate) fn malformed() -> Refusal {
    crate::metrics::HTTP_REJECTED
        .with_label_values(&["chunked"])
        .inc();
    Refusal {
        error: GatewayError::BadRequest("the request body's chunked framing is malformed".into()),
    }
}

/// Reads until the body ends or `limit` bytes are in; the mode says which.
/// With `kept`, every chunk is also kept there (chunked bodies, in case Pingora's buffer drops
/// them).
async fn read_up_to(
    session: &mut Session,
    limit: usize,
    max: u64,
    budget: &BodyBudget,
    held: &mut Held,
    mut kept: Option<&mut Vec<Bytes>>,
) -> Result<BodyMode, ReadStop> {
    let mut total = 0usize;
    loop {
        let chunk = match session.read_request_body().await {
            Ok(Some(c)) => c,
            Ok(None) => return Ok(BodyMode::Buffered),
            Err(e) if is_malformed(&e) => return Err(ReadStop::Malformed),
            Err(_) => return Err(ReadStop::Gone),
        };
        total += chunk.len();
        let len = chunk.len();
        if let Some(kept) = kept.as_mut() {
            kept.push(chunk);
        }
        if total as u64 > max {
            return Err(ReadStop::TooLarge);
        }
        if !budget.take(held, len) {
            return Ok(BodyMode::BudgetExhausted);
        }
        if total >= limit {
            return Ok(if session.as_mut().is_body_done() {
                BodyMode::Buffered
            } else {
                BodyMode::Streamed
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(budget: &Arc<BodyBudget>) -> Held {
        Held {
            budget: budget.clone(),
            bytes: 0,
        }
    }

    #[test]
    fn the_budget_refuses_what_does_not_fit_and_takes_it_back_on_drop() {
        let budget = BodyBudget::new(100);
        let (mut a, mut b) = (held(&budget), held(&budget));
        assert!(budget.take(&mut a, 60));
        assert!(!budget.take(&mut b, 41), "over the total");
        assert!(budget.take(&mut b, 40), "exactly the rest");
        assert_eq!(budget.used(), 100);
        drop(a);
        assert_eq!(budget.used(), 40);
        drop(b);
        assert_eq!(budget.used(), 0);
    }
}
