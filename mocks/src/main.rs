//! The four mock microservices behind the gateway (user, order, product, recommendation), in one
//! process, for tests and demos: `GET /users/{id}` (an object), `/orders/user/{id}`, `/products`, `/products/{id}`
//! and `/recommendations/{id}` (arrays), the defaults docs/AGGREGATES.md's service table lists, plus fault
//! injection.
//!
//! Every service answers:
//! - its API route(s) and `GET /healthz`;
//! - `PUT /__faults` with `{"delay_ms":N,"status":S,"fail_next":K,"down":bool,"body":"invalid_json"|"html"|"large","large_bytes":N}`
//!   (status S for the next K calls, or for every call when K is absent; `down` answers 503 on
//!   every route except `/__faults` and `/__stats`);
//! - `DELETE /__faults` to reset, `GET /__stats` for per-route request counts.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use clap::Parser;

mod collector;
mod idp;
use serde::Deserialize;
use serde_json::{json, Value};

/// Command line: which services to run and where.
#[derive(Parser, Debug)]
#[command(
    name = "mocks",
    about = "Mock user/order/product/recommendation services"
)]
struct Args {
    /// Address to bind (use 0.0.0.0 in containers).
    #[arg(long, env = "MOCKS_HOST", default_value = "127.0.0.1")]
    host: String,
    /// User service port.
    #[arg(long, env = "USER_PORT", default_value_t = 8081)]
    user_port: u16,
    /// Order service port.
    #[arg(long, env = "ORDER_PORT", default_value_t = 8082)]
    order_port: u16,
    /// Product service port.
    #[arg(long, env = "PRODUCT_PORT", default_value_t = 8083)]
    product_port: u16,
    /// Recommendation service port.
    #[arg(long, env = "RECOMMENDATION_PORT", default_value_t = 8084)]
    recommendation_port: u16,
    /// Identity provider port.
    #[arg(long, env = "IDP_PORT", default_value_t = 8085)]
    idp_port: u16,
    /// The identity provider's `iss` (default: `http://{host}:{idp_port}`).
    #[arg(long, env = "IDP_ISSUER")]
    idp_issuer: Option<String>,
    /// OTLP/HTTP trace collector port (`--services collector`; not started by default).
    #[arg(long, env = "COLLECTOR_PORT", default_value_t = 4318)]
    collector_port: u16,
    /// Comma-separated subset of services to run (user,order,product,recommendation,idp,
    /// collector).
    #[arg(
        long,
        env = "MOCKS_SERVICES",
        default_value = "user,order,product,recommendation,idp"
    )]
    services: String,
}

/// Fault settings of one service, as set by `PUT /__faults`.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Faults {
    /// Added before every answer.
    #[serde(default)]
    delay_ms: u64,
    /// Status to answer with instead of the real one.
    #[serde(default)]
    status: Option<u16>,
    /// Apply `status` to only this many more calls.
    #[serde(default)]
    fail_next: Option<u64>,
    /// Answer 503 to everything but the control routes.
    #[serde(default)]
    down: bool,
    /// Replace the body: `invalid_json`, `html` or `large`.
    #[serde(default)]
    body: Option<String>,
    /// Size of the `large` body (default 2 MiB).
    #[serde(default)]
    large_bytes: Option<usize>,
}

/// One service's mutable state.
#[derive(Default)]
struct ServiceState {
    faults: Faults,
    stats: BTreeMap<String, u64>,
}

type Shared = Arc<Mutex<ServiceState>>;

fn lock(state: &Shared) -> std::sync::MutexGuard<'_, ServiceState> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

fn user_id(id: &str) -> Option<u32> {
    id.parse::<u32>().ok().filter(|n| (1..=1000).contains(n))
}

const PRODUCTS: [(&str, &str, f64); 6] = [
    ("p-1", "Mechanical keyboard", 89.0),
    ("p-2", "USB-C dock", 129.5),
    ("p-3", "27\" monitor", 299.99),
    ("p-4", "Noise-cancelling headphones", 199.0),
    ("p-5", "Webcam", 59.9),
    ("p-6", "Desk lamp", 34.5),
];

fn product(i: usize) -> Value {
    let (id, name, price) = PRODUCTS[i % PRODUCTS.len()];
    json!({"id": id, "name": name, "price": price})
}

fn user_doc(n: u32) -> Value {
    json!({"id": n.to_string(), "name": format!("User {n}"), "email": format!("user{n}@example.com")})
}

fn orders_doc(n: u32) -> Value {
    let count = 1 + (n % 3) as usize;
    let statuses = ["pending", "shipped", "delivered"];
    Value::Array(
        (0..count)
            .map(|k| {
                json!({
                    "id": format!("o-{n}-{}", k + 1),
                    "amount": ((n as usize * 37 + k * 13) % 500) as f64 + 0.99,
                    "status": statuses[(n as usize + k) % 3],
                })
            })
            .collect(),
    )
}

fn recommendations_doc(n: u32) -> Value {
    Value::Array((0..3).map(|k| product(n as usize + k)).collect())
}

/// Applies faults and counts the call; `Err` is the faulty answer to give instead.
async fn gate(state: &Shared, route: &str) -> Result<(), Response> {
    let (faults, fail) = {
        let mut s = lock(state);
        *s.stats.entry(route.to_string()).or_insert(0) += 1;
        let faults = s.faults.clone();
        let fail = match (faults.status, faults.fail_next) {
            (Some(status), Some(n)) if n > 0 => {
                s.faults.fail_next = Some(n - 1);
                Some(status)
            }
            (Some(_), Some(_)) => None,
            (Some(status), None) => Some(status),
            (None, _) => None,
        };
        (faults, fail)
    };
    if faults.delay_ms > 0 {
        delay(Duration::from_millis(faults.delay_ms)).await;
    }
    if faults.down {
        return Err(error(StatusCode::SERVICE_UNAVAILABLE, "down"));
    }
    if let Some(status) = fail {
        let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return Err(error(code, "injected fault"));
    }
    match faults.body.as_deref() {
        Some("invalid_json") => Err((
            [(header::CONTENT_TYPE, "application/json")],
            "{\"id\": 1, oops",
        )
            .into_response()),
        Some("html") => Err((
            [(header::CONTENT_TYPE, "text/html")],
            "<html><body>502 Bad Gateway</body></html>",
        )
            .into_response()),
        Some("large") => {
            let n = faults.large_bytes.unwrap_or(2 * 1024 * 1024);
            let mut body = String::with_capacity(n + 4);
            body.push_str("[\"");
            body.extend(std::iter::repeat_n('x', n.saturating_sub(4)));
            body.push_str("\"]");
            Err(([(header::CONTENT_TYPE, "application/json")], body).into_response())
        }
        _ => Ok(()),
    }
}

/// Waits `d` precisely: tokio's timer wheel rounds every sleep up to the next millisecond, which
/// would add ~1 ms per hop to the latency benchmarks' ideal figures.
async fn delay(d: Duration) {
    if tokio::task::spawn_blocking(move || std::thread::sleep(d))
        .await
        .is_err()
    {
        tokio::time::sleep(d).await;
    }
}

fn error(code: StatusCode, message: &str) -> Response {
    (
        code,
        Json(json!({"error": code.as_u16(), "message": message})),
    )
        .into_response()
}

async fn put_faults(State(state): State<Shared>, body: axum::body::Bytes) -> Response {
    match serde_json::from_slice::<Faults>(&body) {
        Ok(f) => {
            lock(&state).faults = f;
            Json(json!({"ok": true})).into_response()
        }
        Err(e) => error(
            StatusCode::BAD_REQUEST,
            &format!("bad faults document: {e}"),
        ),
    }
}

async fn delete_faults(State(state): State<Shared>) -> Response {
    lock(&state).faults = Faults::default();
    Json(json!({"ok": true})).into_response()
}

async fn stats(State(state): State<Shared>) -> Response {
    let s = lock(&state);
    let total: u64 = s.stats.values().sum();
    Json(json!({"requests": s.stats, "total": total})).into_response()
}

async fn healthz(State(state): State<Shared>) -> Response {
    match gate_health(&state) {
        true => Json(json!({"status": "ok"})).into_response(),
        false => error(StatusCode::SERVICE_UNAVAILABLE, "down"),
    }
}

fn gate_health(state: &Shared) -> bool {
    let mut s = lock(state);
    *s.stats.entry("/healthz".into()).or_insert(0) += 1;
    !s.faults.down
}

fn control(router: Router<Shared>) -> Router<Shared> {
    router
        .route("/healthz", get(healthz))
        .route(
            "/__faults",
            axum::routing::put(put_faults).delete(delete_faults),
        )
        .route("/__stats", get(stats))
}

fn user_service() -> Router<Shared> {
    control(Router::new().route(
        "/users/{id}",
        get(
            |State(s): State<Shared>, Path(id): Path<String>| async move {
                if let Err(r) = gate(&s, "/users/{id}").await {
                    return r;
                }
                match user_id(&id) {
                    Some(n) => Json(user_doc(n)).into_response(),
                    None => error(StatusCode::NOT_FOUND, "user not found"),
                }
            },
        ),
    ))
}

fn order_service() -> Router<Shared> {
    control(Router::new().route(
        "/orders/user/{id}",
        get(
            |State(s): State<Shared>, Path(id): Path<String>| async move {
                if let Err(r) = gate(&s, "/orders/user/{id}").await {
                    return r;
                }
                Json(user_id(&id).map(orders_doc).unwrap_or_else(|| json!([]))).into_response()
            },
        ),
    ))
}

fn product_service() -> Router<Shared> {
    control(
        Router::new()
            .route(
                "/products",
                get(|State(s): State<Shared>| async move {
                    if let Err(r) = gate(&s, "/products").await {
                        return r;
                    }
                    Json(Value::Array((0..PRODUCTS.len()).map(product).collect())).into_response()
                }),
            )
            .route(
                "/products/{id}",
                get(
                    |State(s): State<Shared>, Path(id): Path<String>| async move {
                        if let Err(r) = gate(&s, "/products/{id}").await {
                            return r;
                        }
                        match PRODUCTS.iter().position(|(p, _, _)| *p == id) {
                            Some(i) => Json(product(i)).into_response(),
                            None => error(StatusCode::NOT_FOUND, "no such product"),
                        }
                    },
                ),
            ),
    )
}

fn recommendation_service() -> Router<Shared> {
    control(Router::new().route(
        "/recommendations/{id}",
        get(
            |State(s): State<Shared>, Path(id): Path<String>| async move {
                if let Err(r) = gate(&s, "/recommendations/{id}").await {
                    return r;
                }
                Json(
                    user_id(&id)
                        .map(recommendations_doc)
                        .unwrap_or_else(|| json!([])),
                )
                .into_response()
            },
        ),
    ))
}

async fn serve(name: &'static str, addr: SocketAddr, router: Router<Shared>) -> anyhow::Result<()> {
    let app = router
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such route") })
        .with_state(Shared::default());
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("{name} service cannot bind {addr}"))?;
    println!("mocks: {name} service on http://{addr}");
    axum::serve(listener, app.into_make_service())
        .with_graceful_shutdown(shutdown())
        .await
        .with_context(|| format!("{name} service failed"))
}

async fn shutdown() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let wanted: Vec<&str> = args.services.split(',').map(str::trim).collect();
    let addr = |port: u16| -> anyhow::Result<SocketAddr> {
        format!("{}:{port}", args.host)
            .parse()
            .with_context(|| format!("bad --host {}", args.host))
    };
    let mut tasks = tokio::task::JoinSet::new();
    for name in &wanted {
        let (name, port, router): (&'static str, u16, Router<Shared>) = match *name {
            "user" => ("user", args.user_port, user_service()),
            "order" => ("order", args.order_port, order_service()),
            "product" => ("product", args.product_port, product_service()),
            "recommendation" => (
                "recommendation",
                args.recommendation_port,
                recommendation_service(),
            ),
            "idp" => {
                let issuer = args
                    .idp_issuer
                    .clone()
                    .unwrap_or_else(|| format!("http://{}:{}", args.host, args.idp_port));
                let idp = tokio::task::spawn_blocking(move || idp::Idp::new(issuer)).await??;
                (
                    "idp",
                    args.idp_port,
                    idp::service(Arc::new(Mutex::new(idp))),
                )
            }
            "collector" => ("collector", args.collector_port, collector::service()),
            other => anyhow::bail!("unknown service `{other}` in --services"),
        };
        let a = addr(port)?;
        tasks.spawn(serve(name, a, router));
    }
    while let Some(res) = tasks.join_next().await {
        res??;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_is_deterministic_and_bounded() {
        assert_eq!(user_id("1"), Some(1));
        assert_eq!(user_id("1000"), Some(1000));
        assert_eq!(user_id("1001"), None);
        assert_eq!(user_id("abc"), None);
        assert_eq!(orders_doc(7), orders_doc(7));
        assert!(!orders_doc(3).as_array().unwrap().is_empty());
        assert_eq!(recommendations_doc(5).as_array().unwrap().len(), 3);
    }
}
