//! A TCP proxy in front of a real server that injects faults (refuse, stall, delay, reset), for
//! Redis and service failures that a stopped process cannot imitate.

use std::net::TcpStream;
use std::time::Duration;

use super::free_port;

/// What the fault proxy does to connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Relay faithfully.
    Pass,
    /// Relay, but hold each connection this many ms before its first byte goes through.
    Delay(u64),
    /// Accept and read, never forward or answer.
    Stall,
    /// Hold this many ms, then reset the connection without forwarding anything.
    StallThenCut(u64),
    /// Accept and close at once.
    Reset,
    /// Not listening at all: connections are refused.
    Refuse,
}

/// A TCP relay between the gateway and a dependency that can add latency, stall, cut or refuse.
/// Changing the fault also cuts every connection open at that moment.
pub struct FaultProxy {
    pub port: u16,
    fault: tokio::sync::watch::Sender<(Fault, u64)>,
    task: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    /// Relays 127.0.0.1:`port` (free) → 127.0.0.1:`target`.
    pub async fn start(target: u16) -> FaultProxy {
        let port = free_port();
        let (tx, rx) = tokio::sync::watch::channel((Fault::Pass, 0u64));
        let task = tokio::spawn(async move {
            let mut rx = rx;
            loop {
                let (fault, _) = *rx.borrow_and_update();
                if fault == Fault::Refuse {
                    if rx.changed().await.is_err() {
                        return;
                    }
                    continue;
                }
                let listener = match tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
                    Ok(l) => l,
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                };
                loop {
                    tokio::select! {
                        changed = rx.changed() => {
                            if changed.is_err() { return; }
                            if rx.borrow().0 == Fault::Refuse { break; }
                        }
                        accepted = listener.accept() => {
                            let Ok((client, _)) = accepted else { continue };
                            let rx = rx.clone();
                            tokio::spawn(relay(client, target, rx));
                        }
                    }
                }
            }
        });
        // Wait until it listens.
        for _ in 0..200 {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        FaultProxy {
            port,
            fault: tx,
            task,
        }
    }

    /// Switches the fault (and cuts open connections).
    pub fn set(&self, fault: Fault) {
        self.fault.send_modify(|(f, generation)| {
            *f = fault;
            *generation += 1;
        });
    }

    /// `host:port` of the proxy.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn relay(
    mut client: tokio::net::TcpStream,
    target: u16,
    mut rx: tokio::sync::watch::Receiver<(Fault, u64)>,
) {
    let (fault, generation) = *rx.borrow_and_update();
    let cut = async move {
        loop {
            if rx.changed().await.is_err() || rx.borrow().1 != generation {
                return;
            }
        }
    };
    let work = async move {
        match fault {
            Fault::Reset | Fault::Refuse => {}
            Fault::Stall => {
                let mut sink = [0u8; 4096];
                use tokio::io::AsyncReadExt;
                while matches!(client.read(&mut sink).await, Ok(n) if n > 0) {}
            }
            Fault::StallThenCut(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
            Fault::Pass | Fault::Delay(_) => {
                if let Fault::Delay(ms) = fault {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                }
                if let Ok(mut upstream) =
                    tokio::net::TcpStream::connect(("127.0.0.1", target)).await
                {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                }
            }
        }
    };
    tokio::select! {
        _ = cut => {}
        _ = work => {}
    }
}
