//! The composition root: a configuration snapshot, everything built from one conf file that requests read. The
//! gateway holds the current one; each request keeps the one it started with (`Ctx`), and a
//! reload (`crate::reload`) builds the next from the previous, keeping what did not change.

use std::sync::Arc;

use crate::aggregate::Aggregates;
use crate::config::Config;
use crate::edge::Edge;
use crate::proxy::compress::Compressor;
use crate::proxy::routes::RouteTable;
use crate::rebuild::Rebuild;
use crate::store::{RedisStore, Store};

/// What every snapshot shares: they outlive reloads (a changed Redis address needs a restart).
pub(crate) struct Shared {
    pub(crate) store: Arc<Store>,
    pub(crate) redis: Option<Arc<RedisStore>>,
    /// The process's tracer (`gateway.tracing` is a process key: a reload keeps it).
    pub(crate) tracer: Option<Arc<crate::trace::Tracer>>,
}

/// One configuration, built: a request reads the snapshot it started with until it ends.
pub(crate) struct Snapshot {
    /// 1 at start, +1 for each reload applied.
    pub(crate) generation: u64,
    /// Fingerprint of the conf file's text (the `config_hash` label).
    pub(crate) hash: String,
    pub(crate) config: Arc<Config>,
    pub(crate) routes: RouteTable,
    pub(crate) edge: Edge,
    pub(crate) aggregates: Aggregates,
    /// Response compression (`None`: answers go out as they are).
    pub(crate) compress: Option<Arc<Compressor>>,
}

impl Snapshot {
    /// Builds the parts of `config`, keeping from `previous` those whose settings did not
    /// change: upstream groups (health), service clients (breakers), aggregates (in-flight
    /// builds), identity providers (keys), the limiter's counts, the compression memo.
    pub(crate) fn build(
        config: Config,
        hash: String,
        generation: u64,
        shared: &Shared,
        previous: Option<&Snapshot>,
    ) -> std::result::Result<Snapshot, String> {
        let config = Arc::new(config);
        crate::error::set_realm(&config.auth.realm);
        let edge = Edge::new(&config, shared.redis.clone(), previous.map(|p| &p.edge));
        let aggregates = Aggregates::build(
            &config,
            shared.store.clone(),
            previous.map(|p| &p.aggregates),
        )?;
        let routes = RouteTable::build(&config, &aggregates, previous.map(|p| &p.routes));
        let compress = config.compression.as_ref().map(|c| {
            let old = previous.and_then(|p| p.compress.as_ref());
            Compressor::rebuild(c, old, || Compressor::new(c.clone()))
        });
        Ok(Snapshot {
            generation,
            hash,
            config,
            routes,
            edge,
            aggregates,
            compress,
        })
    }

    /// Starts what runs beside requests for parts that are new: health checks, key refresh.
    /// Needs the runtime, so it is called by the reload service, not at build.
    pub(crate) fn start_tasks(&self) {
        self.routes.start_checks();
        self.edge.start_key_refresh();
    }
}
