//! Live configuration: `SIGHUP` (or `gateway.reload.watch`) re-reads the conf file, checks it
//! exactly as start-up does, and swaps in a new snapshot; requests in flight finish on the one
//! they started with. An invalid file changes nothing.
//!
//! Keys that need new sockets or a new process (listeners, TLS listener settings, Redis, the
//! connection-level limits, Pingora's own keys) are reported as "needs an upgrade" and keep
//! their running values until one happens.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use parking_lot::Mutex;

use crate::config::{fingerprint_loaded, fingerprint_text, Config, LoadMode, ProcessEnv};
use crate::metrics;
use crate::snapshot::{Shared, Snapshot};

/// What one reload attempt did (`config_reload_total{result}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// A new snapshot serves new requests.
    Applied,
    /// The file is what already runs.
    Unchanged,
    /// The file could not be read or is invalid; the running snapshot stays.
    Error,
}

impl Outcome {
    /// Every outcome, for priming.
    pub(crate) const ALL: [Outcome; 3] = [Outcome::Applied, Outcome::Unchanged, Outcome::Error];

    /// The metric label.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Outcome::Applied => "ok",
            Outcome::Unchanged => "unchanged",
            Outcome::Error => "error",
        }
    }
}

/// Creates the reload series at 0 and marks the first configuration as generation 1.
pub(crate) fn prime() {
    for outcome in Outcome::ALL {
        metrics::CONFIG_RELOADS.with_label_values(&[outcome.label()]);
    }
    metrics::CONFIG_GENERATION.set(1);
}

/// The background service that reloads the configuration.
pub struct Reloader {
    live: Arc<ArcSwap<Snapshot>>,
    shared: Arc<Shared>,
    /// The conf file; `None`: started without one (nothing to re-read).
    path: Option<String>,
    /// Poll interval when `gateway.reload.watch` is on.
    watch: Option<Duration>,
    /// Fingerprint of the text last tried, so a watched invalid file is reported once.
    last_seen: Mutex<String>,
    /// The text of the running configuration (for Pingora's keys outside `gateway:`).
    applied: Mutex<String>,
}

impl Reloader {
    /// A reloader over the gateway's live snapshot, built from `applied` (the file's text).
    pub(crate) fn new(
        live: Arc<ArcSwap<Snapshot>>,
        shared: Arc<Shared>,
        path: Option<String>,
        applied: String,
    ) -> Reloader {
        let current = live.load();
        let watch = current
            .config
            .reload
            .watch
            .then_some(current.config.reload.interval);
        let last_seen = Mutex::new(current.hash.clone());
        drop(current);
        Reloader {
            live,
            shared,
            path,
            watch,
            last_seen,
            applied: Mutex::new(applied),
        }
    }

    /// Re-reads the file and applies it. `forced` (a signal) tries even when the text is the
    /// one tried last; a poll that finds it again is not counted.
    pub(crate) fn reload(&self, forced: bool) -> Outcome {
        match self.try_reload(forced) {
            Ok(Some(outcome)) => self.count(outcome),
            Ok(None) => Outcome::Unchanged,
            Err(e) => {
                tracing::error!(file = self.path.as_deref().unwrap_or(""), error = %e, "configuration not reloaded; the running configuration stays");
                self.count(Outcome::Error)
            }
        }
    }

    /// `Ok(None)`: nothing new since the last try (a poll); `Err`: why the file is refused.
    fn try_reload(&self, forced: bool) -> Result<Option<Outcome>, String> {
        let Some(path) = &self.path else {
            tracing::warn!("reload asked, but the gateway was started without a conf file (-c)");
            return Ok(Some(Outcome::Unchanged));
        };
        // What was read (or why it could not be), so that a watched file is judged once.
        let read = Config::read(path);
        let seen = match &read {
            Ok(text) => fingerprint_text(text),
            Err(e) => e.to_string(),
        };
        if std::mem::replace(&mut *self.last_seen.lock(), seen.clone()) == seen && !forced {
            return Ok(None);
        }
        let text = read.map_err(|e| e.to_string())?;
        // Parsed before comparing: the files it names (API keys) may have changed alone.
        let mut config =
            Config::from_yaml(&text, &ProcessEnv, LoadMode::Run).map_err(|e| e.to_string())?;
        let hash = fingerprint_loaded(&text, &config);
        let current = self.live.load_full();
        if current.hash == hash {
            tracing::info!(
                generation = current.generation,
                "configuration file unchanged"
            );
            return Ok(Some(Outcome::Unchanged));
        }
        let mut needs_upgrade = keep_process_keys(&current.config, &mut config);
        if pingora_keys_changed(&self.applied.lock(), &text) {
            needs_upgrade.push("Pingora's server keys (threads, …)");
        }
        let generation = current.generation + 1;
        let next = Snapshot::build(
            config,
            hash.clone(),
            generation,
            &self.shared,
            Some(&current),
        )?;
        next.start_tasks();
        self.live.store(Arc::new(next));
        *self.applied.lock() = text;
        metrics::CONFIG_GENERATION.set(generation as i64);
        let _ = metrics::CONFIG_INFO.remove_label_values(&[&current.hash]);
        metrics::CONFIG_INFO.with_label_values(&[&hash]).set(1);
        if !needs_upgrade.is_empty() {
            tracing::warn!(keys = %needs_upgrade.join(", "), "configuration reloaded, but these keys need an upgrade (-u) or a restart to change; their running values stay");
        }
        tracing::info!(generation, config_hash = %hash, "configuration reloaded");
        Ok(Some(Outcome::Applied))
    }

    fn count(&self, outcome: Outcome) -> Outcome {
        metrics::CONFIG_RELOADS
            .with_label_values(&[outcome.label()])
            .inc();
        outcome
    }
}

/// Puts back the running values of keys a reload cannot change, and names them.
fn keep_process_keys(old: &Config, new: &mut Config) -> Vec<&'static str> {
    let mut pending = Vec::new();
    macro_rules! keep {
        ($($field:ident).+, $name:expr) => {
            if old.$($field).+ != new.$($field).+ {
                new.$($field).+ = old.$($field).+.clone();
                pending.push($name);
            }
        };
    }
    keep!(listen, "gateway.listen");
    keep!(metrics_listen, "gateway.metrics_listen");
    keep!(tls, "gateway.tls");
    keep!(redis, "gateway.redis");
    keep!(reload, "gateway.reload");
    keep!(tracing, "gateway.tracing");
    keep!(admin, "gateway.admin");
    keep!(h2c, "gateway.h2c");
    keep!(listen_retry, "gateway.listen_retry_seconds");
    keep!(access_format, "gateway.log.access_format");
    keep!(
        limits.header_read_timeout,
        "gateway.limits.header_read_timeout_ms"
    );
    keep!(
        limits.keepalive_timeout,
        "gateway.limits.keepalive_timeout_ms"
    );
    keep!(limits.pipeline_depth, "gateway.limits.pipeline_depth");
    keep!(
        limits.body_buffer_total,
        "gateway.limits.request_body_buffer_total_bytes"
    );
    keep!(
        limits.max_connections_per_ip,
        "gateway.limits.max_connections_per_ip"
    );
    keep!(
        rate_limit.trusted_proxies,
        "gateway.rate_limit.trusted_proxies"
    );
    pending
}

/// Whether anything outside `gateway:` (Pingora's own keys) differs from the running file.
fn pingora_keys_changed(running: &str, text: &str) -> bool {
    let outside = |t: &str| -> Option<String> {
        let mut v: serde_yaml::Value = serde_yaml::from_str(t).ok()?;
        if let Some(m) = v.as_mapping_mut() {
            m.remove("gateway");
        }
        serde_yaml::to_string(&v).ok()
    };
    outside(running) != outside(text)
}

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for Reloader {
    async fn start(&self, mut shutdown: pingora::server::ShutdownWatch) {
        // Health checks and key refresh of the first snapshot start here, on the runtime.
        self.live.load().start_tasks();
        let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGHUP: reload by signal is off");
                None
            }
        };
        let mut tick = tokio::time::interval(self.watch.unwrap_or(Duration::from_secs(3600)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                Some(()) = async { match hangup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => {
                    tracing::info!("SIGHUP: reloading the configuration");
                    self.reload(true);
                }
                _ = tick.tick(), if self.watch.is_some() => {
                    self.reload(false);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(admin_token: &str) -> Config {
        let yaml = r#"
gateway:
  admin: { listen: "127.0.0.1:9092" }
  upstreams:
    users: { backends: ["127.0.0.1:1"] }
  routes:
    - { prefix: "/api/users/", upstream: users }
"#;
        let token = admin_token.to_string();
        let env = move |k: &str| match k {
            "JWT_SECRET" => Some("s".to_string()),
            "ADMIN_TOKEN" => Some(token.clone()),
            _ => None,
        };
        Config::from_yaml(yaml, &env, LoadMode::Run).expect("test config")
    }

    #[test]
    fn a_changed_admin_token_is_named_as_needing_a_restart_and_the_running_one_stays() {
        let old = config("first-token-0123456789");
        let mut new = config("second-token-0123456789");
        assert_eq!(keep_process_keys(&old, &mut new), vec!["gateway.admin"]);
        assert_eq!(new.admin, old.admin, "the running token stays");
        let mut same = config("first-token-0123456789");
        assert!(keep_process_keys(&old, &mut same).is_empty());
    }
}
