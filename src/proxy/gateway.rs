//! The gateway's own methods beside the phases: building it on a first snapshot, what the
//! reloader, admin API and purge feed take from it, and refusing a request whose body cannot
//! be trusted.

use std::sync::Arc;

use arc_swap::ArcSwap;
use pingora::proxy::Session;
use pingora::Result;

use super::{admin, body, respond, Ctx, Gateway};
use crate::config::Config;
use crate::error::GatewayError;
use crate::snapshot::{Shared, Snapshot};
use crate::store::{MemoryKv, RedisStore, Store};

impl Gateway {
    /// The live snapshot and what a reload needs to build the next one.
    pub(crate) fn live(&self) -> (Arc<ArcSwap<Snapshot>>, Arc<Shared>) {
        (self.live.clone(), self.shared.clone())
    }

    /// The admin API over this gateway's live configuration and store, behind `token`.
    pub(crate) fn admin_api(&self, token: String) -> admin::AdminApi {
        admin::AdminApi::new(self.live.clone(), token)
    }

    /// The subscription through which purges made on other replicas reach this one's
    /// aggregates (with Redis only).
    pub(crate) fn invalidation_feed(
        &self,
    ) -> Option<crate::store::InvalidationFeed<impl Fn(crate::store::FeedEvent<'_>) + Send + Sync>>
    {
        let redis = self.shared.redis.clone()?;
        let live = self.live.clone();
        Some(crate::store::InvalidationFeed::new(redis, move |event| {
            live.load().aggregates.on_feed(event)
        }))
    }

    /// Answers `err` and closes the connection: the request's body was not (fully) read, so
    /// the next bytes on it are not a request.
    pub(super) async fn refuse(
        &self,
        session: &mut Session,
        ctx: &Ctx,
        err: &GatewayError,
    ) -> Result<bool> {
        session.as_downstream_mut().set_keepalive(None);
        respond::error(session, err, &ctx.local_headers()).await?;
        Ok(true)
    }

    /// Builds the gateway on the first snapshot of `config` (`hash`: its file's fingerprint).
    pub(crate) fn new(
        config: Config,
        hash: String,
        redis: Option<Arc<RedisStore>>,
        tracer: Option<Arc<crate::trace::Tracer>>,
    ) -> std::result::Result<Gateway, String> {
        let store = Arc::new(match &redis {
            Some(r) => Store::Redis(r.clone()),
            None => Store::Memory(MemoryKv::default()),
        });
        let shared = Arc::new(Shared {
            store,
            redis,
            tracer,
        });
        let body_budget = body::BodyBudget::new(config.limits.body_buffer_total);
        let first = Snapshot::build(config, hash, 1, &shared, None)?;
        Ok(Gateway {
            live: Arc::new(ArcSwap::from_pointee(first)),
            shared,
            body_budget,
        })
    }
}
