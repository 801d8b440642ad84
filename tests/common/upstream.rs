//! Small real HTTP upstreams in the test process: an echo server that records what it saw, and
//! a raw-socket recorder for what an HTTP library would hide (framing, upgrades).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request};
use axum::response::Response;
use axum::Router;

/// What the echo upstream saw, per request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub uri: String,
    pub headers: Vec<(String, String)>,
    /// The connection it came on (the gateway's end), to count connections exactly.
    pub peer: Option<SocketAddr>,
}

impl Seen {
    /// All values of header `name`.
    pub fn header(&self, name: &str) -> Vec<String> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
            .collect()
    }
}

/// An in-process HTTP upstream that records requests and echoes bodies back (streaming).
pub struct EchoServer {
    pub port: u16,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl EchoServer {
    /// Starts on a free port. `/healthz` → 200; `/slow?ms=N` waits N ms; anything else echoes.
    pub async fn start() -> EchoServer {
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let rec = seen.clone();
        let app = Router::new().fallback(move |req: Request| {
            let rec = rec.clone();
            async move { echo(req, rec).await }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind echo");
        let port = listener.local_addr().expect("addr").port();
        let task = tokio::spawn(async move {
            let app = app.into_make_service_with_connect_info::<SocketAddr>();
            let _ = axum::serve(listener, app).await;
        });
        EchoServer { port, seen, task }
    }

    /// Requests recorded so far, excluding health checks.
    pub fn requests(&self) -> Vec<Seen> {
        self.seen
            .lock()
            .map(|v| {
                v.iter()
                    .filter(|s| !s.uri.starts_with("/healthz"))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Header `name` of the last request seen (names lower-case).
    pub fn last_header(&self, name: &str) -> Option<String> {
        self.requests()
            .pop()?
            .headers
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn echo(req: Request, rec: Arc<Mutex<Vec<Seen>>>) -> Response {
    let seen = Seen {
        method: req.method().to_string(),
        uri: req.uri().to_string(),
        headers: req
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        peer: req
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0),
    };
    if let Ok(mut v) = rec.lock() {
        v.push(seen);
    }
    let path = req.uri().path().to_string();
    if path == "/healthz" {
        return Response::new(Body::from("ok"));
    }
    if path.ends_with("/slow") {
        let ms: u64 = req
            .uri()
            .query()
            .and_then(|q| q.strip_prefix("ms="))
            .and_then(|v| v.parse().ok())
            .unwrap_or(500);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        return Response::new(Body::from("slow done"));
    }
    // `…/fail-once/<key>`: 503 the first time any echo server of this test process sees the
    // key, then echoes (a backend that fails once).
    if let Some((_, key)) = path.split_once("/fail-once/") {
        static SEEN: Mutex<Vec<String>> = Mutex::new(Vec::new());
        let first = SEEN.lock().map(|mut v| {
            let first = !v.iter().any(|k| k == key);
            if first {
                v.push(key.to_string());
            }
            first
        });
        if first.unwrap_or(false) {
            let mut resp = Response::new(Body::from("failing once"));
            *resp.status_mut() = axum::http::StatusCode::SERVICE_UNAVAILABLE;
            return resp;
        }
    }
    // `/cc/<cache-control>/<id>`: a JSON document with that `Cache-Control` (a service saying
    // how long its answer keeps).
    if let Some(rest) = path.strip_prefix("/cc/") {
        if let Some((cc, id)) = rest.split_once('/') {
            let mut resp = Response::new(Body::from(format!(r#"{{"id":"{id}"}}"#)));
            resp.headers_mut().insert(
                "content-type",
                axum::http::HeaderValue::from_static("application/json"),
            );
            if let Ok(v) = axum::http::HeaderValue::from_str(cc) {
                resp.headers_mut().insert("cache-control", v);
            }
            return resp;
        }
    }
    // `X-Echo-Response-Header: name: value` → that header on the answer (a service's own).
    let extra: Vec<(String, String)> = req
        .headers()
        .get_all("x-echo-response-header")
        .iter()
        .filter_map(|v| v.to_str().ok()?.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut resp = Response::new(Body::from_stream(req.into_body().into_data_stream()));
    let h = resp.headers_mut();
    h.insert("x-upstream", axum::http::HeaderValue::from_static("echo"));
    for (n, v) in extra {
        if let (Ok(n), Ok(v)) = (
            axum::http::HeaderName::from_bytes(n.as_bytes()),
            axum::http::HeaderValue::from_str(&v),
        ) {
            h.append(n, v);
        }
    }
    resp
}

/// How the raw recording upstream answers.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum RecorderMode {
    /// `200 ok` to every request (keep-alive).
    Ok,
    /// `101 Switching Protocols`, then echo every byte back.
    Upgrade,
    /// `101` the instant a connection is accepted, before the request, then echo (the
    /// ordering that broke Pingora's own upgrade path, cloudflare/pingora#946).
    InstantUpgrade,
}

/// A raw TCP upstream that records exactly the bytes it received on each connection.
pub struct Recorder {
    pub port: u16,
    pub conns: Arc<Mutex<Vec<Vec<u8>>>>,
    task: tokio::task::JoinHandle<()>,
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

impl Recorder {
    /// Starts on a free port.
    pub async fn start(mode: RecorderMode) -> Recorder {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let conns: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
        let all = conns.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let all = all.clone();
                let idx = {
                    let mut v = all.lock().unwrap();
                    v.push(Vec::new());
                    v.len() - 1
                };
                tokio::spawn(async move {
                    let mut pending: Vec<u8> = Vec::new();
                    let mut buf = vec![0u8; 65536];
                    let mut upgraded = false;
                    if mode == RecorderMode::InstantUpgrade {
                        // The 101 goes out on accept, so it is waiting in the socket when the
                        // gateway reads its response. The request head is then recorded but not
                        // echoed.
                        let head = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n";
                        if s.write_all(head).await.is_err() {
                            return;
                        }
                        while find(&pending, b"\r\n\r\n").is_none() {
                            match s.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => {
                                    all.lock().unwrap()[idx].extend_from_slice(&buf[..n]);
                                    pending.extend_from_slice(&buf[..n]);
                                }
                            }
                        }
                        let end = find(&pending, b"\r\n\r\n").unwrap_or(0) + 4;
                        let rest = pending.split_off(end);
                        if !rest.is_empty() && s.write_all(&rest).await.is_err() {
                            return;
                        }
                        upgraded = true;
                    }
                    loop {
                        let n = match s.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        all.lock().unwrap()[idx].extend_from_slice(&buf[..n]);
                        if upgraded {
                            if s.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                            continue;
                        }
                        pending.extend_from_slice(&buf[..n]);
                        // Answer every complete request head (+ chunked or sized body) we hold.
                        while let Some(end) = find(&pending, b"\r\n\r\n") {
                            let head =
                                String::from_utf8_lossy(&pending[..end]).to_ascii_lowercase();
                            let mut total = end + 4;
                            if head.contains("transfer-encoding: chunked") {
                                match find(&pending[total..], b"0\r\n\r\n") {
                                    Some(i) => total += i + 5,
                                    None => break,
                                }
                            } else if let Some(cl) = head
                                .lines()
                                .find_map(|l| l.strip_prefix("content-length:"))
                                .and_then(|v| v.trim().parse::<usize>().ok())
                            {
                                if pending.len() < total + cl {
                                    break;
                                }
                                total += cl;
                            }
                            pending.drain(..total);
                            let reply: &[u8] = if mode != RecorderMode::Ok {
                                upgraded = true;
                                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
                            } else {
                                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
                            };
                            if s.write_all(reply).await.is_err() {
                                return;
                            }
                            if upgraded {
                                if !pending.is_empty() {
                                    let rest = std::mem::take(&mut pending);
                                    let _ = s.write_all(&rest).await;
                                }
                                break;
                            }
                        }
                    }
                });
            }
        });
        Recorder { port, conns, task }
    }

    /// Everything received, all connections concatenated.
    pub fn received(&self) -> String {
        let v = self.conns.lock().unwrap();
        v.iter()
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect::<Vec<_>>()
            .join("\n=====\n")
    }

    /// Number of request lines received (counts `HTTP/1.1\r\n` request lines).
    pub fn request_count(&self) -> usize {
        self.received().matches(" HTTP/1.1\r\n").count()
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}
