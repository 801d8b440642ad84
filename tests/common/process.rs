//! Processes and readiness: free ports, polling, process guards that kill on drop, the binaries
//! under test, and measurements of a process (RSS) or of samples (quantiles).

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::Once;
use std::time::{Duration, Instant};

/// A port nobody listens on right now, for a child process to bind.
///
/// Taken below the kernel's ephemeral range (32768 and up), in turn: a port the kernel handed
/// out for `bind(0)` could be taken by any outgoing connection's local end (the gateway's to
/// its upstreams, a client's) between this pick and the child's bind. Each test binary starts
/// at its own offset; cargo runs the binaries one after another.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        (std::process::id() * 97) % SPAN,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..SPAN {
        let port = (LOW + NEXT.fetch_add(1, Ordering::SeqCst) % SPAN) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {LOW}..{}", LOW + SPAN)
}

/// Polls until something accepts TCP connections on `port`.
pub fn wait_for_port(port: u16, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("nothing listened on port {port} within {timeout:?}");
}

/// Polls `check` until it is true or `timeout` passes.
pub async fn eventually(what: &str, timeout: Duration, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out after {timeout:?} waiting for: {what}");
}

/// A child process killed (SIGKILL) and reaped when dropped.
///
/// A process started with [`Proc::spawn`] writes its stdout and stderr to two files under
/// `target/tmp/test-logs/` instead of the terminal: a suite of real processes would otherwise
/// print hundreds of lines no one reads. When the test fails (the guard is dropped while the
/// thread panics), the tail of each file and its path are printed with the test's output and the
/// files are kept; when it passes, they are deleted.
pub struct Proc {
    pub name: String,
    pub child: Child,
    /// The files its stdout and stderr go to (none for a process with outputs of its own).
    pub logs: Option<Logs>,
    /// Reaped already: by [`Proc::kill`] or by [`Proc::wait_exit`] seeing it exit.
    reaped: bool,
}

/// Where a [`Proc`]'s stdout and stderr go.
pub struct Logs {
    pub stdout: PathBuf,
    pub stderr: PathBuf,
}

/// Lines of each log printed when a test fails.
const TAIL_LINES: usize = 200;

impl Logs {
    /// Two new files for a process called `name`, named after the running test (libtest names
    /// each test's thread after the test).
    fn create(name: &str) -> Logs {
        use std::sync::atomic::{AtomicU32, Ordering};
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("test-logs");
        std::fs::create_dir_all(&dir).expect("create target/tmp/test-logs");
        let clean = |s: &str| -> String {
            s.chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
                .collect()
        };
        let test = std::thread::current()
            .name()
            .filter(|n| *n != "main")
            .map(clean)
            .unwrap_or_else(|| "test".into());
        let stem = format!(
            "{}.{test}.{}.{}-{}",
            env!("CARGO_CRATE_NAME"),
            clean(name),
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        Logs {
            stdout: dir.join(format!("{stem}.stdout.log")),
            stderr: dir.join(format!("{stem}.stderr.log")),
        }
    }

    /// Both files, whole (what the process wrote so far; "" for a file it never wrote).
    pub fn read(&self) -> (String, String) {
        let read = |p: &PathBuf| {
            std::fs::read(p)
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default()
        };
        (read(&self.stdout), read(&self.stderr))
    }

    /// Prints the last lines of each non-empty file and where the whole file is.
    fn print_tail(&self, name: &str, pid: u32) {
        for path in [&self.stdout, &self.stderr] {
            let text = std::fs::read(path)
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default();
            if text.is_empty() {
                continue;
            }
            let lines: Vec<&str> = text.lines().collect();
            let from = lines.len().saturating_sub(TAIL_LINES);
            eprintln!(
                "---- {name} (pid {pid}): last {} of {} lines of {} ----",
                lines.len() - from,
                lines.len(),
                path.display()
            );
            for l in &lines[from..] {
                eprintln!("{l}");
            }
        }
    }

    fn remove(&self) {
        let _ = std::fs::remove_file(&self.stdout);
        let _ = std::fs::remove_file(&self.stderr);
    }
}

impl Proc {
    /// Starts `cmd` with its stdout and stderr on log files (see [`Proc`]).
    pub fn spawn(name: &str, cmd: &mut Command) -> Proc {
        let logs = Logs::create(name);
        let file = |p: &PathBuf| std::fs::File::create(p).expect("create a log file");
        cmd.stdout(file(&logs.stdout)).stderr(file(&logs.stderr));
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("{name} starts ({:?}): {e}", cmd.get_program()));
        Proc {
            name: name.into(),
            child,
            logs: Some(logs),
            reaped: false,
        }
    }

    /// Guards a child the caller started with outputs of its own choosing.
    pub fn new(name: &str, child: Child) -> Proc {
        Proc {
            name: name.into(),
            child,
            logs: None,
            reaped: false,
        }
    }

    /// Sends SIGTERM (graceful shutdown) without waiting.
    pub fn terminate(&self) {
        signal(self.child.id(), "TERM");
    }

    /// Sends `sig` (e.g. "QUIT").
    pub fn signal(&self, sig: &str) {
        signal(self.child.id(), sig);
    }

    /// Kills the process now and waits for it.
    pub fn kill(&mut self) {
        if self.reaped {
            return;
        }
        // A process that died before the test meant it to (a crash prints nothing) is named
        // in the failing test's output.
        if let Ok(Some(status)) = self.child.try_wait() {
            eprintln!(
                "{} (pid {}) had exited by itself: {status}",
                self.name,
                self.child.id()
            );
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.reaped = true;
    }

    /// Waits up to `timeout` for the process to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                self.reaped = true;
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
        if let Some(logs) = &self.logs {
            if std::thread::panicking() {
                logs.print_tail(&self.name, self.child.id());
            } else {
                logs.remove();
            }
        }
    }
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .args([format!("-{sig}"), pid.to_string()])
        .status();
}

/// Directory of the binaries cargo built for this test run.
fn bin_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_gateway"))
        .parent()
        .expect("binary has a directory")
        .to_path_buf()
}

/// The gateway binary under test.
pub fn gateway_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_gateway"))
}

/// The mocks binary (workspace member), built on demand when a bare `cargo test` skipped it.
pub fn mocks_bin() -> PathBuf {
    static BUILD: Once = Once::new();
    let path = bin_dir().join("mocks");
    BUILD.call_once(|| {
        if !path.exists() {
            let status = Command::new(env!("CARGO"))
                .args(["build", "-p", "mocks"])
                .status()
                .expect("cargo runs");
            assert!(status.success(), "building the mocks failed");
        }
    });
    path
}

/// The `q`-quantile of `samples` (sorted in place).
pub fn quantile(samples: &mut [Duration], q: f64) -> Duration {
    samples.sort();
    if samples.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1;
    samples[idx]
}

/// Resident set size of a process in KiB, from /proc (0 when it is gone).
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// CPU seconds (user + system) a process has used, from /proc (0 when it is gone).
pub fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces) start at state (field 3).
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15, i.e. 11 and 12 after the state.
    (ticks(11) + ticks(12)) / 100.0
}
