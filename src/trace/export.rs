//! The way out for finished spans: a bounded queue filled by request tasks without waiting,
//! and one background task that sends batches to the collector over OTLP/HTTP.
//!
//! Not the SDK's `BatchSpanProcessor`: it keeps its dropped-span count to itself (we must
//! show it as `tracing_spans_dropped_total`) and runs its own thread with a blocking client.
//! Here the queue holds spans already encoded (a request task writes its span, then copies
//! it in under a lock held for that copy only), the task is a Pingora background service,
//! and a batch goes out as one body behind the resource header, POSTed with the `reqwest`
//! client the gateway already has (one kept-alive connection to the collector).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use opentelemetry::KeyValue;
use parking_lot::Mutex;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::sync::Notify;

use super::otlp::{Encoder, Record};
use crate::config::TracingConfig;
use crate::metrics;

/// The export task is woken when this many spans wait; it sends everything waiting as one
/// request (more than this when spans queued while it was sending, never over `max_queue`).
const BATCH: usize = 512;
/// The longest a finished span waits for a batch to fill.
const LINGER: Duration = Duration::from_millis(500);
/// How long the spans still queued at shutdown may take to go out.
const SHUTDOWN_FLUSH: Duration = Duration::from_secs(2);

/// `tracing_spans_dropped_total{reason="queue_full"}`, resolved once: a full queue drops
/// spans at the request rate.
static QUEUE_FULL: std::sync::LazyLock<prometheus::IntCounter> = std::sync::LazyLock::new(|| {
    metrics::TRACING_SPANS_DROPPED.with_label_values(&[Dropped::QueueFull.label()])
});

/// Why a finished span was not exported (`tracing_spans_dropped_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dropped {
    /// The export queue was full.
    QueueFull,
    /// The collector did not take its batch.
    ExportFailed,
}

impl Dropped {
    /// Every reason, for priming.
    pub(crate) const ALL: [Dropped; 2] = [Dropped::QueueFull, Dropped::ExportFailed];

    /// The `reason` label.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Dropped::QueueFull => "queue_full",
            Dropped::ExportFailed => "export_failed",
        }
    }
}

/// Creates the export's series at 0.
pub(crate) fn prime() {
    for reason in Dropped::ALL {
        metrics::TRACING_SPANS_DROPPED.with_label_values(&[reason.label()]);
    }
    for result in metrics::Outcome::ALL {
        metrics::TRACING_EXPORTS.with_label_values(&[result.label()]);
    }
}

/// Finished spans waiting for export, already encoded, one after another behind the room
/// the request's header will take.
#[derive(Debug, Default)]
struct Waiting {
    bytes: Vec<u8>,
    spans: usize,
}

/// Where finished spans go: a bounded queue (`max_queue` spans) filled by request tasks
/// without waiting, and the wake-up of the export task, once per [`BATCH`] spans (a wake-up
/// per span cost a thread switch per span: half the proxy's throughput at 100% sampling).
#[derive(Debug)]
pub(crate) struct Sink {
    waiting: Mutex<Waiting>,
    wake: Notify,
    capacity: usize,
    /// Free bytes at the front of each batch, for the request header.
    room: usize,
}

thread_local! {
    /// Where a span is written before its copy into the queue (one buffer per thread, reused:
    /// no allocation per span, and the lock is held for the copy only).
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl Sink {
    /// Queues `span`, ended now, or counts it dropped when the queue is full.
    pub(crate) fn finish(&self, span: &Record) {
        SCRATCH.with_borrow_mut(|one| {
            one.clear();
            span.write(SystemTime::now(), one);
            let mut w = self.waiting.lock();
            if w.spans >= self.capacity {
                drop(w);
                QUEUE_FULL.inc();
                return;
            }
            if w.bytes.is_empty() {
                w.bytes.resize(self.room, 0);
            }
            w.bytes.extend_from_slice(one);
            w.spans += 1;
            let full = w.spans == BATCH;
            drop(w);
            if full {
                self.wake.notify_one();
            }
        });
    }

    /// Everything waiting: its bytes and how many spans they hold. The next batch starts in
    /// a buffer as large as this one was (growing one from empty again copied each batch
    /// about twice over).
    fn take(&self) -> (Vec<u8>, usize) {
        let mut w = self.waiting.lock();
        let n = std::mem::take(&mut w.spans);
        let capacity = w.bytes.capacity();
        (
            std::mem::replace(&mut w.bytes, Vec::with_capacity(capacity)),
            n,
        )
    }
}

/// The background task that sends queued spans to the collector.
pub struct ExportService {
    sink: Arc<Sink>,
    http: reqwest::Client,
    encoder: Encoder,
    endpoint: String,
    timeout: Duration,
}

impl ExportService {
    /// The queue (for the tracer) and the task that drains it.
    pub(crate) fn new(config: &TracingConfig) -> Result<(Arc<Sink>, ExportService), String> {
        let resource = [
            KeyValue::new("service.name", config.service_name.clone()),
            KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
        ];
        let encoder = Encoder::new(&resource, "gateway", env!("CARGO_PKG_VERSION"));
        let sink = Arc::new(Sink {
            waiting: Mutex::new(Waiting::default()),
            wake: Notify::new(),
            capacity: config.max_queue,
            room: encoder.header_room(),
        });
        let http = crate::trust::http_client_builder()
            .no_proxy()
            .pool_max_idle_per_host(1)
            .tcp_nodelay(true)
            .connect_timeout(config.export_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("gateway.tracing: the export client: {e}"))?;
        Ok((
            sink.clone(),
            ExportService {
                sink,
                http,
                encoder,
                endpoint: config.endpoint.clone(),
                timeout: config.export_timeout,
            },
        ))
    }
}

/// Whether the collector failed last time: a failure is logged when it starts and when it
/// ends, not once per batch.
struct Health {
    failing: bool,
}

impl ExportService {
    /// One POST of `body` (`n` spans); its outcome counted, a change of health logged.
    async fn send(&self, body: bytes::Bytes, n: usize, timeout: Duration, health: &mut Health) {
        let n = n as u64;
        let post = self
            .http
            .post(&self.endpoint)
            .header(http::header::CONTENT_TYPE, "application/x-protobuf")
            .body(body)
            .send();
        let result = match tokio::time::timeout(timeout, post).await {
            Ok(Ok(r)) if r.status().is_success() => {
                // Read the (small) answer so the connection goes back to the pool.
                let _ = r.bytes().await;
                Ok(())
            }
            Ok(Ok(r)) => Err(format!("the collector answered {}", r.status())),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {} ms", timeout.as_millis())),
        };
        match result {
            Ok(()) => {
                metrics::TRACING_SPANS_EXPORTED.inc_by(n);
                metrics::TRACING_EXPORTS
                    .with_label_values(&[metrics::Outcome::Ok.label()])
                    .inc();
                if health.failing {
                    tracing::info!(endpoint = %self.endpoint, "trace export recovered");
                    health.failing = false;
                }
            }
            Err(e) => {
                metrics::TRACING_SPANS_DROPPED
                    .with_label_values(&[Dropped::ExportFailed.label()])
                    .inc_by(n);
                metrics::TRACING_EXPORTS
                    .with_label_values(&[metrics::Outcome::Error.label()])
                    .inc();
                if !health.failing {
                    tracing::warn!(endpoint = %self.endpoint, error = %e, "trace export failed: spans are dropped (and counted) until the collector answers");
                    health.failing = true;
                }
            }
        }
    }
}

#[async_trait]
impl BackgroundService for ExportService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut health = Health { failing: false };
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                _ = self.sink.wake.notified() => {}
                _ = tokio::time::sleep(LINGER) => {}
            }
            let (spans, n) = self.sink.take();
            metrics::TRACING_QUEUE.set(n as i64);
            if n > 0 {
                let body = self.encoder.request(spans);
                self.send(body, n, self.timeout, &mut health).await;
            }
        }
        // What was queued before the shutdown goes out in one last, short, attempt.
        let (spans, n) = self.sink.take();
        if n > 0 {
            let body = self.encoder.request(spans);
            self.send(body, n, self.timeout.min(SHUTDOWN_FLUSH), &mut health)
                .await;
        }
    }
}
