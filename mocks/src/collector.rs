//! A trace collector for benchmarks and demos: `POST /v1/traces` takes an OTLP/HTTP protobuf
//! export, decodes it (as a real collector must) and counts its spans; `GET /__stats` →
//! `{"exports", "spans", "bad"}`. Nothing is stored.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message;
use serde_json::json;

#[derive(Default)]
struct Counts {
    exports: AtomicU64,
    spans: AtomicU64,
    bad: AtomicU64,
}

async fn export(State(c): State<Arc<Counts>>, body: Bytes) -> impl IntoResponse {
    let Ok(req) = ExportTraceServiceRequest::decode(body) else {
        c.bad.fetch_add(1, Ordering::Relaxed);
        return (
            StatusCode::BAD_REQUEST,
            [(header::CONTENT_TYPE, "text/plain")],
            Vec::new(),
        );
    };
    let spans: usize = req
        .resource_spans
        .iter()
        .flat_map(|r| &r.scope_spans)
        .map(|s| s.spans.len())
        .sum();
    c.exports.fetch_add(1, Ordering::Relaxed);
    c.spans.fetch_add(spans as u64, Ordering::Relaxed);
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/x-protobuf")],
        ExportTraceServiceResponse::default().encode_to_vec(),
    )
}

/// The collector's routes (state of its own; `S` is whatever the caller's router carries).
pub fn service<S: Clone + Send + Sync + 'static>() -> Router<S> {
    let counts = Arc::new(Counts::default());
    Router::new()
        .route("/v1/traces", post(export))
        .route(
            "/__stats",
            get(|State(c): State<Arc<Counts>>| async move {
                Json(json!({
                    "exports": c.exports.load(Ordering::Relaxed),
                    "spans": c.spans.load(Ordering::Relaxed),
                    "bad": c.bad.load(Ordering::Relaxed),
                }))
            }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .with_state(counts)
}
