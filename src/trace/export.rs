//! The way out for finished spans: a bounded queue filled by request tasks without waiting,
//! and one background task that sends batches to the collector over OTLP/HTTP.
//!
//! Not the SDK's `BatchSpanProcessor`: it keeps its dropped-span count to itself (we must
//! show it as `tracing_spans_dropped_total`) and runs its own thread with a blocking client.
//! Here the queue is a `tokio` channel (`try_send` never waits), the task is a Pingora
//! background service, and a batch is encoded by [`super::otlp`] and POSTed with the
//! `reqwest` client the gateway already has (one kept-alive connection to the collector).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{Span, SpanData, SpanProcessor};
use opentelemetry_sdk::Resource;
use parking_lot::Mutex;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::sync::{mpsc, Notify};

use super::otlp::Encoder;
use crate::config::TracingConfig;
use crate::metrics;

/// Spans per export request (the SDK's default batch size).
const BATCH: usize = 512;
/// The longest a finished span waits for a batch to fill.
const LINGER: Duration = Duration::from_millis(500);
/// How long the spans still queued at shutdown may take to go out.
const SHUTDOWN_FLUSH: Duration = Duration::from_secs(2);

/// Spans queued so far (a running count), and the wake-up: the export task is woken once
/// per [`BATCH`] spans (or by its [`LINGER`] timer), never once per span. A wake-up per span
/// cost a thread switch per span: at 100% sampling, half the proxy's throughput on one core.
#[derive(Debug, Default)]
struct Pending {
    spans: AtomicUsize,
    wake: Notify,
}

/// `tracing_spans_dropped_total{reason="queue_full"}`, resolved once: a full queue drops
/// spans at the request rate.
static QUEUE_FULL: std::sync::LazyLock<prometheus::IntCounter> =
    std::sync::LazyLock::new(|| metrics::TRACING_SPANS_DROPPED.with_label_values(&["queue_full"]));

/// The span processor: every sampled span, once ended, into the queue or counted as dropped.
#[derive(Debug)]
pub(crate) struct Queue {
    tx: mpsc::Sender<SpanData>,
    pending: Arc<Pending>,
}

impl SpanProcessor for Queue {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        if self.tx.try_send(span).is_err() {
            QUEUE_FULL.inc();
            return;
        }
        if (self.pending.spans.fetch_add(1, Ordering::Relaxed) + 1).is_multiple_of(BATCH) {
            self.pending.wake.notify_one();
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }
}

/// The background task that sends queued spans to the collector.
pub struct ExportService {
    rx: Mutex<Option<mpsc::Receiver<SpanData>>>,
    pending: Arc<Pending>,
    http: reqwest::Client,
    encoder: Mutex<Option<Encoder>>,
    resource: Resource,
    endpoint: String,
    timeout: Duration,
    capacity: usize,
}

impl ExportService {
    /// The queue (for the tracer) and the task that drains it.
    pub(crate) fn new(config: &TracingConfig) -> Result<(Queue, ExportService), String> {
        let (tx, rx) = mpsc::channel(config.max_queue);
        let pending = Arc::new(Pending::default());
        let resource = Resource::builder()
            .with_service_name(config.service_name.clone())
            .with_attribute(opentelemetry::KeyValue::new(
                "service.version",
                env!("CARGO_PKG_VERSION"),
            ))
            .build();
        let attributes: Vec<KeyValue> = resource
            .iter()
            .map(|(k, v)| KeyValue::new(k.clone(), v.clone()))
            .collect();
        let encoder = Encoder::new(&attributes, "gateway", env!("CARGO_PKG_VERSION"));
        let http = reqwest::Client::builder()
            .no_proxy()
            .pool_max_idle_per_host(1)
            .tcp_nodelay(true)
            .connect_timeout(config.export_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("gateway.tracing: the export client: {e}"))?;
        Ok((
            Queue {
                tx,
                pending: pending.clone(),
            },
            ExportService {
                rx: Mutex::new(Some(rx)),
                pending,
                http,
                encoder: Mutex::new(Some(encoder)),
                resource,
                endpoint: config.endpoint.clone(),
                timeout: config.export_timeout,
                capacity: config.max_queue,
            },
        ))
    }

    /// `service.name` and the rest, for the tracer provider.
    pub(crate) fn resource(&self) -> &Resource {
        &self.resource
    }
}

/// Takes up to [`BATCH`] queued spans without waiting. `false` when the queue is closed and
/// empty.
fn take(rx: &mut mpsc::Receiver<SpanData>, batch: &mut Vec<SpanData>) -> bool {
    while batch.len() < BATCH {
        match rx.try_recv() {
            Ok(s) => batch.push(s),
            Err(mpsc::error::TryRecvError::Empty) => return true,
            Err(mpsc::error::TryRecvError::Disconnected) => return !batch.is_empty(),
        }
    }
    true
}

/// Whether the collector failed last time: a failure is logged when it starts and when it
/// ends, not once per batch.
struct Health {
    failing: bool,
}

impl ExportService {
    /// One POST of `body` (`n` spans); its outcome counted, a change of health logged.
    async fn send(&self, body: Vec<u8>, n: usize, timeout: Duration, health: &mut Health) {
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
                metrics::TRACING_EXPORTS.with_label_values(&["ok"]).inc();
                if health.failing {
                    tracing::info!(endpoint = %self.endpoint, "trace export recovered");
                    health.failing = false;
                }
            }
            Err(e) => {
                metrics::TRACING_SPANS_DROPPED
                    .with_label_values(&["export_failed"])
                    .inc_by(n);
                metrics::TRACING_EXPORTS.with_label_values(&["error"]).inc();
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
        let (Some(mut rx), Some(mut encoder)) = (self.rx.lock().take(), self.encoder.lock().take())
        else {
            return;
        };
        let mut health = Health { failing: false };
        let mut batch = Vec::with_capacity(BATCH);
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                _ = self.pending.wake.notified() => {}
                _ = tokio::time::sleep(LINGER) => {}
            }
            metrics::TRACING_QUEUE.set((self.capacity - rx.capacity()) as i64);
            // Everything queued now goes out, a batch at a time.
            loop {
                let open = take(&mut rx, &mut batch);
                let taken = batch.len();
                if taken > 0 {
                    let mut body = Vec::new();
                    encoder.encode(&batch, &mut body);
                    // Spans are dropped here, before the wait for the collector.
                    batch.clear();
                    self.send(body, taken, self.timeout, &mut health).await;
                }
                if !open {
                    return;
                }
                if taken < BATCH {
                    break;
                }
            }
        }
        // What was queued before the shutdown goes out in one last, short, attempt.
        rx.close();
        while let Ok(s) = rx.try_recv() {
            batch.push(s);
        }
        if !batch.is_empty() {
            let timeout = self.timeout.min(SHUTDOWN_FLUSH);
            for chunk in batch.chunks(BATCH) {
                let mut body = Vec::new();
                encoder.encode(chunk, &mut body);
                self.send(body, chunk.len(), timeout, &mut health).await;
            }
        }
    }
}
