//! An upstream like most app servers: a fixed pool of worker threads, each held by one
//! connection until it has read the whole request body and answered. A slow body that reaches
//! it holds a worker for as long as the client dawdles; that is what the gateway must prevent.
//!
//! Routes: `POST` anything → `{"bytes":N}` after reading the body; `GET /big` → `big_bytes`
//! of `x`; any other `GET` → `ok`. One request per connection (`Connection: close`), so that
//! an idle pooled connection from the gateway never sits on a worker.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What the pool saw.
#[derive(Default)]
pub struct PoolStats {
    /// Requests answered.
    pub requests: AtomicU64,
    /// POST bodies read whole.
    pub posts: AtomicU64,
    /// POST bodies whose bytes took longer than 200 ms to arrive after their header.
    pub slow_bodies: AtomicU64,
    /// Workers inside a request now (from its request line to its answer or its end), and the
    /// most at once: a request that finds every worker busy waits in the accept queue.
    pub busy: AtomicU64,
    pub max_busy: AtomicU64,
}

/// A running worker pool.
pub struct PoolServer {
    pub port: u16,
    pub stats: Arc<PoolStats>,
    stop: Arc<AtomicBool>,
    workers: usize,
}

impl PoolServer {
    /// `workers` threads on a free port; `GET /big` answers `big_bytes` bytes.
    pub fn start(workers: usize, big_bytes: usize) -> PoolServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind pool");
        let port = listener.local_addr().expect("addr").port();
        let stats = Arc::new(PoolStats::default());
        let stop = Arc::new(AtomicBool::new(false));
        for _ in 0..workers {
            let listener = listener.try_clone().expect("clone listener");
            let (stats, stop) = (stats.clone(), stop.clone());
            std::thread::spawn(move || {
                while let Ok((conn, _)) = listener.accept() {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let _ = serve(conn, &stats, big_bytes);
                }
            });
        }
        PoolServer {
            port,
            stats,
            stop,
            workers,
        }
    }

    /// A counter's value.
    pub fn get(&self, c: fn(&PoolStats) -> &AtomicU64) -> u64 {
        c(&self.stats).load(Ordering::Relaxed)
    }
}

impl Drop for PoolServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake every worker blocked in accept.
        for _ in 0..self.workers {
            let _ = TcpStream::connect(("127.0.0.1", self.port));
        }
    }
}

fn serve(conn: TcpStream, stats: &PoolStats, big_bytes: usize) -> std::io::Result<()> {
    // A worker is never held for ever, even by a client that sends nothing.
    conn.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Ok(()); // a bare connect (a TCP health check): no request
    }
    let now = stats.busy.fetch_add(1, Ordering::SeqCst) + 1;
    stats.max_busy.fetch_max(now, Ordering::SeqCst);
    let answered = request(reader, line, conn, stats, big_bytes);
    stats.busy.fetch_sub(1, Ordering::SeqCst);
    answered
}

/// Reads the rest of the request that starts with `line` and answers it.
fn request(
    mut reader: BufReader<TcpStream>,
    line: String,
    conn: TcpStream,
    stats: &PoolStats,
    big_bytes: usize,
) -> std::io::Result<()> {
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let path = parts.next().unwrap_or("").to_string();
    let mut length = 0usize;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 {
            return Ok(());
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                length = v.trim().parse().unwrap_or(0);
            }
        }
    }
    let header_done = Instant::now();
    let body = if method == "POST" {
        let mut got = 0usize;
        let mut buf = vec![0u8; 64 * 1024];
        while got < length {
            let n = reader.read(&mut buf[..(length - got).min(64 * 1024)])?;
            if n == 0 {
                return Ok(());
            }
            got += n;
        }
        stats.posts.fetch_add(1, Ordering::Relaxed);
        if header_done.elapsed() > Duration::from_millis(200) {
            stats.slow_bodies.fetch_add(1, Ordering::Relaxed);
        }
        format!("{{\"bytes\":{got}}}").into_bytes()
    } else if path == "/big" {
        vec![b'x'; big_bytes]
    } else {
        b"ok".to_vec()
    };
    let mut w = conn;
    write!(
        w,
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    w.write_all(&body)?;
    stats.requests.fetch_add(1, Ordering::Relaxed);
    Ok(())
}
