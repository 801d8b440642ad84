//! The bench's WebSocket and gRPC ends (`make bench`, scenario 16), fast enough that the
//! gateway between them is what gets measured:
//!
//! - `grpc-server PORT`: an h2c server answering every call with one gRPC message and
//!   `grpc-status: 0` in trailers (the h2 crate, as a gRPC server's transport).
//! - `ws-server PORT`: a WebSocket echo server, a thread per connection (tungstenite).
//! - `ws-load URL CONNECTIONS SECONDS`: that many connections, each sending a 32-byte message
//!   and waiting for its echo in a loop; prints `{"messages": N, "seconds": S}`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a bench tool: a failure ends the run

use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tungstenite::Message;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("grpc-server") => grpc_server(args[2].parse().unwrap()),
        Some("ws-server") => ws_server(args[2].parse().unwrap()),
        Some("ws-load") => ws_load(
            &args[2],
            args[3].parse().unwrap(),
            Duration::from_secs(args[4].parse().unwrap()),
        ),
        _ => {
            eprintln!("usage: protocol_bench grpc-server PORT | ws-server PORT | ws-load URL CONNECTIONS SECONDS");
            std::process::exit(2);
        }
    }
}

/// HelloReply { message: "Hello bench" }, framed as one gRPC message.
fn reply() -> Bytes {
    let msg = b"Hello bench";
    let mut out = vec![0u8, 0, 0, 0, (msg.len() + 2) as u8, 0x0a, msg.len() as u8];
    out.extend_from_slice(msg);
    Bytes::from(out)
}

fn grpc_server(port: u16) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        println!("ready");
        loop {
            let Ok((socket, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let Ok(mut conn) = h2::server::handshake(socket).await else {
                    return;
                };
                while let Some(Ok((req, mut respond))) = conn.accept().await {
                    tokio::spawn(async move {
                        let mut body = req.into_body();
                        while let Some(chunk) = body.data().await {
                            let Ok(chunk) = chunk else { return };
                            let _ = body.flow_control().release_capacity(chunk.len());
                        }
                        let resp = http::Response::builder()
                            .header("content-type", "application/grpc")
                            .body(())
                            .unwrap();
                        let Ok(mut send) = respond.send_response(resp, false) else {
                            return;
                        };
                        let _ = send.send_data(reply(), false);
                        let mut trailers = http::HeaderMap::new();
                        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
                        let _ = send.send_trailers(trailers);
                    });
                }
            });
        }
    });
}

fn ws_server(port: u16) {
    let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
    println!("ready");
    for stream in listener.incoming().flatten() {
        std::thread::spawn(move || {
            let _ = stream.set_nodelay(true);
            let Ok(mut ws) = tungstenite::accept(stream) else {
                return;
            };
            while let Ok(msg) = ws.read() {
                if msg.is_close() {
                    break;
                }
                if (msg.is_text() || msg.is_binary()) && ws.send(msg).is_err() {
                    break;
                }
            }
        });
    }
}

fn ws_load(url: &str, conns: usize, seconds: Duration) {
    let count = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let addr = url
        .trim_start_matches("ws://")
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let threads: Vec<_> = (0..conns)
        .map(|_| {
            let (count, stop, url, addr) =
                (count.clone(), stop.clone(), url.to_string(), addr.clone());
            std::thread::spawn(move || {
                let stream = TcpStream::connect(&addr).unwrap();
                stream.set_nodelay(true).unwrap();
                let (mut ws, _) = tungstenite::client(url.as_str(), stream).unwrap();
                let payload = "x".repeat(32);
                while !stop.load(Ordering::Relaxed) {
                    ws.send(Message::text(payload.clone())).unwrap();
                    loop {
                        if ws.read().unwrap().is_text() {
                            break;
                        }
                    }
                    count.fetch_add(1, Ordering::Relaxed);
                }
                let _ = ws.close(None);
            })
        })
        .collect();
    let started = Instant::now();
    std::thread::sleep(seconds);
    stop.store(true, Ordering::Relaxed);
    let n = count.load(Ordering::Relaxed);
    let secs = started.elapsed().as_secs_f64();
    for t in threads {
        let _ = t.join();
    }
    println!("{{\"messages\": {n}, \"seconds\": {secs:.3}}}");
}
