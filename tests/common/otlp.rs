//! A real OTLP/HTTP trace receiver: decodes each export request with `opentelemetry-proto`'s
//! generated types and keeps the spans; or one that never answers (a stalled collector).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::Router;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use prost::Message;

/// One received span, ids in lowercase hex.
#[derive(Debug, Clone)]
pub struct RecvSpan {
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    pub name: String,
    /// `SpanKind`: 2 server, 3 client.
    pub kind: i32,
    pub attrs: HashMap<String, String>,
    /// `(trace_id, span_id)` of each link.
    pub links: Vec<(String, String)>,
    /// Status code: 0 unset, 1 ok, 2 error.
    pub status: i32,
    pub events: Vec<String>,
    /// The resource's `service.name`.
    pub service: String,
}

impl RecvSpan {
    /// An attribute's value as text ("" when absent).
    pub fn attr(&self, key: &str) -> &str {
        self.attrs.get(key).map_or("", String::as_str)
    }

    pub fn is_server(&self) -> bool {
        self.kind == 2
    }

    pub fn is_client(&self) -> bool {
        self.kind == 3
    }
}

fn text(kv: &KeyValue) -> String {
    match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
        Some(AnyValue::StringValue(s)) => s.clone(),
        Some(AnyValue::IntValue(i)) => i.to_string(),
        Some(AnyValue::BoolValue(b)) => b.to_string(),
        Some(AnyValue::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

type Spans = Arc<Mutex<Vec<RecvSpan>>>;

/// An OTLP/HTTP collector on a free 127.0.0.1 port.
pub struct Collector {
    pub port: u16,
    spans: Spans,
    /// Export requests that failed to decode (a test asserts there are none).
    pub bad_requests: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

async fn receive(
    State((spans, bad)): State<(Spans, Arc<Mutex<Vec<String>>>)>,
    body: Bytes,
) -> (StatusCode, [(&'static str, &'static str); 1], Vec<u8>) {
    let req = match ExportTraceServiceRequest::decode(body) {
        Ok(r) => r,
        Err(e) => {
            bad.lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(e.to_string());
            return (
                StatusCode::BAD_REQUEST,
                [("content-type", "text/plain")],
                Vec::new(),
            );
        }
    };
    let mut got = Vec::new();
    for rs in req.resource_spans {
        let service = rs
            .resource
            .iter()
            .flat_map(|r| r.attributes.iter())
            .find(|kv| kv.key == "service.name")
            .map(text)
            .unwrap_or_default();
        for ss in rs.scope_spans {
            for s in ss.spans {
                got.push(RecvSpan {
                    trace_id: hex(&s.trace_id),
                    span_id: hex(&s.span_id),
                    parent_span_id: hex(&s.parent_span_id),
                    name: s.name,
                    kind: s.kind,
                    attrs: s
                        .attributes
                        .iter()
                        .map(|kv| (kv.key.clone(), text(kv)))
                        .collect(),
                    links: s
                        .links
                        .iter()
                        .map(|l| (hex(&l.trace_id), hex(&l.span_id)))
                        .collect(),
                    status: s.status.map_or(0, |st| st.code),
                    events: s.events.into_iter().map(|e| e.name).collect(),
                    service: service.clone(),
                });
            }
        }
    }
    spans.lock().unwrap_or_else(|e| e.into_inner()).extend(got);
    (
        StatusCode::OK,
        [("content-type", "application/x-protobuf")],
        ExportTraceServiceResponse::default().encode_to_vec(),
    )
}

impl Collector {
    /// A collector that decodes and keeps every span.
    pub async fn start() -> Collector {
        let spans: Spans = Arc::default();
        let bad: Arc<Mutex<Vec<String>>> = Arc::default();
        let app = Router::new()
            .route("/v1/traces", post(receive))
            .with_state((spans.clone(), bad.clone()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind collector");
        let port = listener.local_addr().expect("addr").port();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Collector {
            port,
            spans,
            bad_requests: bad,
            task,
        }
    }

    /// A collector that accepts connections and reads, but never answers.
    pub async fn start_stalled() -> Collector {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind collector");
        let port = listener.local_addr().expect("addr").port();
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((mut s, _)) = listener.accept().await {
                held.push(tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    use tokio::io::AsyncReadExt;
                    while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
                }));
            }
        });
        Collector {
            port,
            spans: Arc::default(),
            bad_requests: Arc::default(),
            task,
        }
    }

    /// The base endpoint (`gateway.tracing.endpoint`).
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<RecvSpan> {
        self.spans.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The spans of one trace.
    pub fn trace(&self, trace_id: &str) -> Vec<RecvSpan> {
        self.spans()
            .into_iter()
            .filter(|s| s.trace_id == trace_id)
            .collect()
    }

    /// Waits until `done` holds for the spans received (export is batched: up to ~1 s).
    pub async fn wait_for(&self, what: &str, done: impl Fn(&[RecvSpan]) -> bool) -> Vec<RecvSpan> {
        let mut last = Vec::new();
        super::eventually(what, Duration::from_secs(15), async || {
            last = self.spans();
            done(&last)
        })
        .await;
        last
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `traceparent` parts: (trace id, parent span id, flags).
pub fn parse_traceparent(v: &str) -> Option<(String, String, String)> {
    let p: Vec<&str> = v.split('-').collect();
    (p.len() == 4 && p[0] == "00").then(|| (p[1].to_string(), p[2].to_string(), p[3].to_string()))
}
