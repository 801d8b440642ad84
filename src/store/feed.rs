//! The invalidation feed between replicas: one Redis pub/sub subscription per process, on
//! which every purge is announced, so that copies held in each replica's memory (the
//! aggregates' local tiers) and writes racing the purge are dropped everywhere within
//! milliseconds. The subscription is pinged every second; while it is down, the store says so
//! ([`RedisStore::subscribed`]) and in-process copies are neither read nor kept.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;

use super::redis::RedisStore;
use crate::metrics;

/// The channel every replica publishes purges on and listens to.
pub const CHANNEL: &str = "gateway:cache:invalidate";
/// How often the subscription is checked with a PING: a Redis gone without closing the
/// connection (a failover behind a VIP, a cut cable) is noticed within about this.
const PING_EVERY: Duration = Duration::from_secs(1);
/// Longest pause between attempts to subscribe again.
const MAX_PAUSE: Duration = Duration::from_secs(2);

/// Which way an invalidation message went (`cache_invalidation_messages_total{direction}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Direction {
    /// Published to the other replicas.
    Sent,
    /// Heard from another replica and applied.
    Received,
    /// Heard, but not a message this gateway can read.
    Bad,
}

impl Direction {
    /// Every direction, for priming the metric.
    pub(crate) const ALL: [Direction; 3] = [Direction::Sent, Direction::Received, Direction::Bad];

    /// The `direction` label.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Direction::Sent => "sent",
            Direction::Received => "received",
            Direction::Bad => "bad",
        }
    }

    /// Counts one message.
    pub(crate) fn count(self) {
        crate::metrics::CACHE_INVALIDATION_MESSAGES
            .with_label_values(&[self.label()])
            .inc();
    }
}

/// What the feed tells its listener.
#[derive(Debug)]
pub enum FeedEvent<'a> {
    /// Subscribed (again): anything announced before may have been missed.
    Joined,
    /// An announcement (from any replica, this one included).
    Message(&'a [u8]),
    /// The subscription is gone.
    Lost,
}

/// Keeps the subscription up and hands every event to `on`.
pub struct InvalidationFeed<F> {
    redis: Arc<RedisStore>,
    on: F,
}

impl<F: Fn(FeedEvent<'_>) + Send + Sync> InvalidationFeed<F> {
    /// The feed of `redis`, handing events to `on`.
    pub fn new(redis: Arc<RedisStore>, on: F) -> Self {
        InvalidationFeed { redis, on }
    }

    /// Subscribes, or says why not.
    async fn join(&self, attempt: usize) -> Result<redis::aio::PubSub, String> {
        let bound = self.redis.connect_timeout() * 2;
        let joined = tokio::time::timeout(bound, async {
            let mut ps = self.redis.subscriber(attempt).await?;
            ps.subscribe(CHANNEL).await?;
            Ok::<_, redis::RedisError>(ps)
        })
        .await;
        match joined {
            Ok(Ok(ps)) => Ok(ps),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {bound:?}")),
        }
    }

    /// Relays events until the subscription fails or the server shuts down (`true`).
    async fn relay(
        &self,
        ps: redis::aio::PubSub,
        shutdown: &mut pingora::server::ShutdownWatch,
    ) -> bool {
        let (mut sink, mut stream) = ps.split();
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ping.tick().await;
        let bound = self.redis.connect_timeout();
        loop {
            tokio::select! {
                _ = shutdown.changed() => return true,
                msg = stream.next() => match msg {
                    Some(m) => (self.on)(FeedEvent::Message(m.get_payload_bytes())),
                    None => return false,
                },
                _ = ping.tick() => {
                    let pong = tokio::time::timeout(bound, sink.ping::<redis::Value>()).await;
                    if !matches!(pong, Ok(Ok(_))) {
                        return false;
                    }
                }
            }
        }
    }
}

#[async_trait::async_trait]
impl<F: Fn(FeedEvent<'_>) + Send + Sync> pingora::services::background::BackgroundService
    for InvalidationFeed<F>
{
    async fn start(&self, mut shutdown: pingora::server::ShutdownWatch) {
        let mut attempt = 0usize;
        let mut pause = Duration::ZERO;
        let mut warned = false;
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(pause) => {}
            }
            let ps = match self.join(attempt).await {
                Ok(ps) => ps,
                Err(e) => {
                    metrics::STORE_ERRORS
                        .with_label_values(&["redis", super::redis::Op::Subscribe.label()])
                        .inc();
                    if !warned {
                        tracing::warn!(error = %e, "cannot subscribe to cache invalidations; in-process cache copies are not used until it can (retrying)");
                        warned = true;
                    }
                    attempt = attempt.wrapping_add(1);
                    pause = (pause * 2).clamp(Duration::from_millis(100), MAX_PAUSE);
                    continue;
                }
            };
            if warned {
                tracing::info!("subscribed to cache invalidations again");
            }
            (self.on)(FeedEvent::Joined);
            self.redis.set_subscribed(true);
            let stopping = self.relay(ps, &mut shutdown).await;
            self.redis.set_subscribed(false);
            (self.on)(FeedEvent::Lost);
            if stopping {
                return;
            }
            metrics::STORE_ERRORS
                .with_label_values(&["redis", super::redis::Op::Subscribe.label()])
                .inc();
            tracing::warn!("the cache invalidation subscription was lost; resubscribing");
            warned = true;
            pause = Duration::from_millis(100);
        }
    }
}
