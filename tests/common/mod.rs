//! Test harness: real processes (gateway, mocks, redis-server) and small real HTTP upstreams on
//! free 127.0.0.1 ports, readiness by polling, and guards that kill every process on drop.
//!
//! - `process`: ports, polling, process guards, binaries, RSS and quantiles.
//! - `gateway`: the gateway under test, tokens, clients.
//! - `mocks`: the mock services.
//! - `redis`: a real redis-server.
//! - `upstream`: the echo server and the raw recorder.
//! - `fault`: the fault-injecting TCP proxy.
//! - `pool`: an upstream with a fixed pool of blocking workers.
//! - `certs`: a throwaway CA and leaf certificates (Debian's `openssl`).
//! - `otlp`: a real OTLP/HTTP trace receiver (decoding with `opentelemetry-proto`).
//! - `oidc`: a real OpenID provider (panva's `oidc-provider` on Node.js, `tests/oidc/`).
//! - `py`: Python programs with PyPI libraries (`tests/py/`: WebSocket and gRPC).
// Every test binary compiles this whole harness and uses a part of it.
#![allow(dead_code, unused_imports)]

mod certs;
mod fault;
mod gateway;
mod mocks;
mod oidc;
mod otlp;
mod pool;
mod process;
mod py;
mod redis;
mod upstream;

pub use certs::*;
pub use fault::*;
pub use gateway::*;
pub use mocks::*;
pub use oidc::*;
pub use otlp::*;
pub use pool::*;
pub use process::*;
pub use py::*;
pub use redis::*;
pub use upstream::*;
