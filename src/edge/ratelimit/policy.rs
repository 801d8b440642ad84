//! Which policies apply to a request, what each counts it by, and the one verdict the answer
//! reports.
//!
//! The default per-IP policy and the named `ip` and `header:` policies are counted before
//! authentication (a flood of bad tokens stays limited); `sub` and `claim:` policies after it,
//! only for a verified caller (a bad token never consumes a user's budget). A request must pass
//! every policy that applies; the first refusal stops the count, so a refused request does not
//! use the budgets of the policies after it.
//!
//! The engines that count are `limiter` (fixed windows over `memory` and `redis`) and `gcra`.

use std::net::IpAddr;
use std::sync::Arc;

use http::{HeaderMap, HeaderValue};

use super::decision::{Decision, LimitBackend, Subject};
use super::gcra::Gcra;
use super::limiter::RateLimiter;
use crate::config::{
    Algorithm, OnStoreError, PolicyConfig, PolicyKey, RateLimitConfig, DEFAULT_POLICY,
};
use crate::edge::auth::Identity;
use crate::error::GatewayError;
use crate::headers;
use crate::metrics;
use crate::store::RedisStore;

enum Engine {
    Window(RateLimiter),
    Gcra(Gcra),
}

/// One policy with its counters and its metric children.
struct Policy {
    name: Arc<str>,
    /// `None` for the default per-IP policy.
    config: Option<PolicyConfig>,
    /// For `claim:` policies, where the claim's value sits in [`Identity::limit_claims`].
    claim: Option<usize>,
    engine: Engine,
    /// This policy's member of `RateLimit-Policy`.
    item: HeaderValue,
    /// `rate_limit_decisions_total` children resolved once: [allowed, limited, denied] ×
    /// backend, so the per-request cost is an atomic add rather than a labelled lookup.
    decisions: [[prometheus::IntCounter; 4]; 3],
}

impl Policy {
    fn new(
        name: &str,
        config: Option<PolicyConfig>,
        claim: Option<usize>,
        engine: Engine,
        item: String,
    ) -> Policy {
        let child = |result: &str, backend: LimitBackend| {
            metrics::RATE_LIMIT_DECISIONS.with_label_values(&[name, result, backend.as_str()])
        };
        let backends = [
            LimitBackend::Redis,
            LimitBackend::Memory,
            LimitBackend::Fallback,
            LimitBackend::Unavailable,
        ];
        Policy {
            name: name.into(),
            config,
            claim,
            engine,
            // Digits, `;`, `=`, and a name of [a-z0-9_-]: always a valid header value.
            item: HeaderValue::from_str(&item).unwrap_or(HeaderValue::from_static("0")),
            decisions: [
                backends.map(|b| child("allowed", b)),
                backends.map(|b| child("limited", b)),
                backends.map(|b| child("denied", b)),
            ],
        }
    }

    fn applies(&self, scope: Scope<'_>) -> bool {
        match scope.names {
            Some(names) => names.iter().any(|n| **n == *self.name),
            None => self.config.as_ref().is_none_or(|c| c.covers(scope.path)),
        }
    }

    fn on_store_error(&self) -> OnStoreError {
        self.config
            .as_ref()
            .map_or(OnStoreError::Local, |c| c.on_store_error)
    }

    /// What this policy counts the request by; `None` when it has nothing to count (no client
    /// address where one is needed). A missing header or claim falls back to the client
    /// address, so leaving it out does not escape the policy.
    fn subject(
        &self,
        client: Option<IpAddr>,
        headers: &HeaderMap,
        identity: Option<&Identity>,
    ) -> Option<Subject> {
        let ip = client.map(Subject::Ip);
        let Some(cfg) = &self.config else {
            return ip;
        };
        match &cfg.key {
            PolicyKey::Ip => ip,
            PolicyKey::Header(name) => headers
                .get(name)
                .filter(|v| !v.is_empty())
                .map(|v| Subject::of(v.as_bytes()))
                .or(ip),
            PolicyKey::Sub => identity.map(|i| Subject::of(i.sub.as_bytes())).or(ip),
            PolicyKey::Claim(_) => identity
                .and_then(|i| i.limit_claims.get(self.claim?)?.as_deref())
                .map(|v| Subject::of(v.as_bytes()))
                .or(ip),
        }
    }

    /// Counts the request and decides, applying `on_store_error` when Redis did not answer.
    async fn decide(&self, who: Subject, now_us: u64) -> Decision {
        let mut d = match &self.engine {
            Engine::Window(w) => w.count(who, now_us / 1_000_000).await,
            Engine::Gcra(g) => g.check(who, now_us).await,
        };
        if d.backend == LimitBackend::Fallback {
            match self.on_store_error() {
                OnStoreError::Local => {}
                OnStoreError::Allow => {
                    d.allowed = true;
                    d.backend = LimitBackend::Unavailable;
                }
                OnStoreError::Deny => {
                    d.allowed = false;
                    d.backend = LimitBackend::Unavailable;
                }
            }
        }
        let result = match (d.allowed, d.backend) {
            (true, _) => 0,
            (false, LimitBackend::Unavailable) => 2,
            (false, _) => 1,
        };
        self.decisions[result][d.backend as usize].inc();
        d
    }

    /// The same policy with `previous`'s in-memory state when both count the same things the
    /// same way (key and algorithm): a new limit, burst or routes apply to the counts so far,
    /// as they do on Redis, whose keys carry over by name.
    fn continuing(mut self, previous: &Policy) -> Policy {
        let same = match (&self.config, &previous.config) {
            (None, None) => true,
            (Some(a), Some(b)) => a.key == b.key && a.algorithm == b.algorithm,
            _ => false,
        };
        if same {
            match (&mut self.engine, &previous.engine) {
                (Engine::Window(new), Engine::Window(old)) => new.memory = old.memory.clone(),
                (Engine::Gcra(new), Engine::Gcra(old)) => new.memory = old.memory.clone(),
                _ => {}
            }
        }
        self
    }
}

/// What the limits decided for one request: the decision its `RateLimit-*` headers show and
/// every policy that counted it.
#[derive(Debug, Clone)]
pub struct RateVerdict {
    /// The refusing decision, else the most restrictive one (fewest requests left).
    pub shown: Decision,
    /// The policy `shown` came from.
    pub policy: Arc<str>,
    /// `RateLimit-Policy`: every policy that counted the request.
    pub policies: HeaderValue,
}

impl RateVerdict {
    /// Whether the request may proceed.
    pub fn allowed(&self) -> bool {
        self.shown.allowed
    }

    /// Refused because the store did not answer and the policy denies meanwhile.
    pub fn denied(&self) -> bool {
        !self.shown.allowed && self.shown.backend == LimitBackend::Unavailable
    }

    /// `RateLimit-Limit`, `-Remaining`, `-Reset` and `-Policy` header pairs.
    pub fn headers(&self) -> [(&'static str, HeaderValue); 4] {
        let [a, b, c] = self.shown.headers();
        [a, b, c, (headers::RATELIMIT_POLICY, self.policies.clone())]
    }

    /// The answer refusing the request: 429 naming the policy, or 503 when the store is down
    /// and the policy denies; `None` when admitted.
    pub fn refusal(&self) -> Option<GatewayError> {
        if self.shown.allowed {
            return None;
        }
        Some(if self.denied() {
            GatewayError::Unavailable(
                format!(
                    "rate limit store unavailable and policy `{}` denies meanwhile",
                    self.policy
                )
                .into(),
            )
        } else {
            GatewayError::RateLimited {
                retry_after_secs: self.shown.reset_secs,
                policy: self.policy.clone(),
            }
        })
    }

    /// Adds `d` of `p`: the verdict shows a refusal, else the fewest remaining.
    fn add(verdict: &mut Option<RateVerdict>, p: &Policy, d: Decision) {
        let Some(v) = verdict else {
            *verdict = Some(RateVerdict {
                shown: d,
                policy: p.name.clone(),
                policies: p.item.clone(),
            });
            return;
        };
        let mut list = Vec::with_capacity(v.policies.len() + 2 + p.item.len());
        list.extend_from_slice(v.policies.as_bytes());
        list.extend_from_slice(b", ");
        list.extend_from_slice(p.item.as_bytes());
        if let Ok(h) = HeaderValue::from_bytes(&list) {
            v.policies = h;
        }
        let tighter = !d.allowed
            || (v.shown.allowed
                && (d.remaining, std::cmp::Reverse(d.reset_secs))
                    < (v.shown.remaining, std::cmp::Reverse(v.shown.reset_secs)));
        if tighter {
            v.shown = d;
            v.policy = p.name.clone();
        }
    }
}

/// Which policies count a request: those whose `routes` cover its path, or exactly those
/// its route lists.
#[derive(Debug, Clone, Copy)]
pub struct Scope<'a> {
    /// The request's path.
    pub path: &'a str,
    /// The route's `rate_limit` list, when it has one.
    pub names: Option<&'a [Box<str>]>,
}

impl<'a> Scope<'a> {
    /// The policies that cover `path`.
    pub fn path(path: &'a str) -> Self {
        Scope { path, names: None }
    }
}

/// Every rate-limit policy of the conf.
pub struct Limits {
    default: Policy,
    /// Named `ip` and `header:` policies, in conf order.
    before: Vec<Policy>,
    /// Named `sub` and `claim:` policies, in conf order.
    after: Vec<Policy>,
}

impl Limits {
    /// The default per-IP policy and the named ones, on `redis` when given.
    pub fn new(cfg: &RateLimitConfig, redis: Option<Arc<RedisStore>>) -> Limits {
        let window = cfg.window.as_secs().max(1);
        let default = Policy::new(
            DEFAULT_POLICY,
            None,
            None,
            Engine::Window(RateLimiter::new(cfg, redis.clone())),
            format!("{};w={window};name=\"{DEFAULT_POLICY}\"", cfg.limit),
        );
        let claims = Limits::claim_paths(cfg);
        let (mut before, mut after) = (Vec::new(), Vec::new());
        for p in &cfg.policies {
            let window = p.window.as_secs().max(1);
            let prefix = format!("ratelimit:{}:", p.name);
            let (engine, item) = match p.algorithm {
                Algorithm::FixedWindow => (
                    Engine::Window(RateLimiter::windows(p.limit, window, redis.clone(), prefix)),
                    format!("{};w={window};name=\"{}\"", p.limit, p.name),
                ),
                Algorithm::Gcra => (
                    Engine::Gcra(Gcra::new(p.limit, window, p.burst, redis.clone(), prefix)),
                    format!(
                        "{};w={window};burst={};name=\"{}\"",
                        p.limit, p.burst, p.name
                    ),
                ),
            };
            let claim = match &p.key {
                PolicyKey::Claim(path) => claims.iter().position(|c| c == path),
                _ => None,
            };
            let policy = Policy::new(&p.name, Some(p.clone()), claim, engine, item);
            if p.key.after_auth() {
                after.push(policy);
            } else {
                before.push(policy);
            }
        }
        Limits {
            default,
            before,
            after,
        }
    }

    /// The claim paths the `claim:` policies count by, each once, in conf order: what the
    /// verifier must read out of every token into [`Identity::limit_claims`].
    pub fn claim_paths(cfg: &RateLimitConfig) -> Vec<Vec<String>> {
        let mut paths: Vec<Vec<String>> = Vec::new();
        for p in &cfg.policies {
            if let PolicyKey::Claim(path) = &p.key {
                if !paths.contains(path) {
                    paths.push(path.clone());
                }
            }
        }
        paths
    }

    /// These limits with `previous`'s in-memory counts for every policy that kept its name, key
    /// and algorithm (the default policy always), so a reload does not hand out fresh budgets.
    pub fn continuing(mut self, previous: &Limits) -> Limits {
        self.default = self.default.continuing(&previous.default);
        let carry = |list: Vec<Policy>, old: &[Policy]| -> Vec<Policy> {
            list.into_iter()
                .map(|p| match old.iter().find(|o| o.name == p.name) {
                    Some(o) => p.continuing(o),
                    None => p,
                })
                .collect()
        };
        self.before = carry(self.before, &previous.before);
        self.after = carry(self.after, &previous.after);
        self
    }

    /// Whether any policy counts verified callers (so the caller's verdict is still open after
    /// authentication).
    pub fn counts_callers(&self) -> bool {
        !self.after.is_empty()
    }

    /// The policies counted before authentication, at `now_us` (Unix microseconds); `None`
    /// when none applied (no client address).
    pub async fn before_auth(
        &self,
        client: Option<IpAddr>,
        scope: Scope<'_>,
        headers: &HeaderMap,
        now_us: u64,
    ) -> Option<RateVerdict> {
        let mut verdict = None;
        if self.before.is_empty() {
            // The common case, kept free of the policy walk: the default policy alone.
            if !self.default.applies(scope) {
                return None;
            }
            let d = self.default.decide(Subject::Ip(client?), now_us).await;
            RateVerdict::add(&mut verdict, &self.default, d);
            return verdict;
        }
        let all = std::iter::once(&self.default).chain(&self.before);
        Limits::count(&mut verdict, all, client, scope, headers, None, now_us).await;
        verdict
    }

    /// The policies counted after authentication, for the verified `identity`, added to
    /// `verdict` (from [`before_auth`](Self::before_auth)).
    pub async fn after_auth(
        &self,
        verdict: &mut Option<RateVerdict>,
        client: Option<IpAddr>,
        scope: Scope<'_>,
        identity: &Identity,
        now_us: u64,
    ) {
        let empty = HeaderMap::new();
        Limits::count(
            verdict,
            self.after.iter(),
            client,
            scope,
            &empty,
            Some(identity),
            now_us,
        )
        .await;
    }

    async fn count<'a>(
        verdict: &mut Option<RateVerdict>,
        policies: impl Iterator<Item = &'a Policy>,
        client: Option<IpAddr>,
        scope: Scope<'_>,
        headers: &HeaderMap,
        identity: Option<&Identity>,
        now_us: u64,
    ) {
        for p in policies {
            if verdict.as_ref().is_some_and(|v| !v.allowed()) {
                return;
            }
            if !p.applies(scope) {
                continue;
            }
            let Some(who) = p.subject(client, headers, identity) else {
                continue;
            };
            let d = p.decide(who, now_us).await;
            RateVerdict::add(verdict, p, d);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const T: u64 = 1_700_000_040 * 1_000_000;

    fn limits(yaml_policies: Vec<PolicyConfig>) -> Limits {
        Limits::new(
            &RateLimitConfig {
                limit: 100,
                window: Duration::from_secs(60),
                trusted_proxies: vec![],
                policies: yaml_policies,
            },
            None,
        )
    }

    fn policy(name: &str, key: PolicyKey, limit: u64, routes: &[&str]) -> PolicyConfig {
        PolicyConfig {
            name: name.into(),
            key,
            limit,
            window: Duration::from_secs(60),
            algorithm: Algorithm::FixedWindow,
            burst: limit,
            routes: routes.iter().map(|r| r.to_string()).collect(),
            on_store_error: OnStoreError::Local,
        }
    }

    fn caller(sub: &str, tenant: Option<&str>) -> Identity {
        Identity {
            sub: sub.into(),
            roles: vec![],
            forwarded: Box::default(),
            limit_claims: vec![tenant.map(str::to_string)].into_boxed_slice(),
            scopes: Vec::new(),
        }
    }

    #[tokio::test]
    async fn users_behind_one_address_have_their_own_budgets() {
        let l = limits(vec![policy("per-user", PolicyKey::Sub, 2, &[])]);
        let ip = Some(IpAddr::from([203, 0, 113, 9]));
        let h = HeaderMap::new();
        for user in ["alice", "bob"] {
            for i in 0..3 {
                let mut v = l.before_auth(ip, Scope::path("/x"), &h, T).await;
                l.after_auth(&mut v, ip, Scope::path("/x"), &caller(user, None), T)
                    .await;
                let v = v.unwrap();
                assert_eq!(v.allowed(), i < 2, "{user} #{i}");
                if i == 2 {
                    assert_eq!(&*v.policy, "per-user");
                    let e = v.refusal().unwrap();
                    assert_eq!(e.status(), 429);
                    assert!(e.to_string().contains("per-user"), "{e}");
                }
            }
        }
        // The shown decision is the tighter one, and the policy header lists both.
        let mut v = l.before_auth(ip, Scope::path("/x"), &h, T).await;
        l.after_auth(&mut v, ip, Scope::path("/x"), &caller("carol", None), T)
            .await;
        let v = v.unwrap();
        assert_eq!((v.shown.limit, v.shown.remaining), (2, 1));
        assert_eq!(
            v.policies.to_str().unwrap(),
            r#"100;w=60;name="default", 2;w=60;name="per-user""#
        );
    }

    #[tokio::test]
    async fn routes_scope_a_policy_and_missing_keys_fall_back_to_the_address() {
        let l = limits(vec![
            policy(
                "keys",
                PolicyKey::Header(http::HeaderName::from_static("x-api-key")),
                1,
                &["/api/"],
            ),
            policy("tenant", PolicyKey::Claim(vec!["tenant".into()]), 1, &[]),
        ]);
        let ip = Some(IpAddr::from([203, 0, 113, 10]));
        let mut key_a = HeaderMap::new();
        key_a.insert("x-api-key", HeaderValue::from_static("a"));
        assert!(l
            .before_auth(ip, Scope::path("/api/1"), &key_a, T)
            .await
            .unwrap()
            .allowed());
        assert!(!l
            .before_auth(ip, Scope::path("/api/1"), &key_a, T)
            .await
            .unwrap()
            .allowed());
        assert!(
            l.before_auth(ip, Scope::path("/echo/"), &key_a, T)
                .await
                .unwrap()
                .allowed(),
            "out of the policy's routes"
        );
        // No key: counted by the address (once, then limited).
        let none = HeaderMap::new();
        assert!(l
            .before_auth(ip, Scope::path("/api/1"), &none, T)
            .await
            .unwrap()
            .allowed());
        assert!(!l
            .before_auth(ip, Scope::path("/api/1"), &none, T)
            .await
            .unwrap()
            .allowed());
        // Claims: one tenant shares one budget; none falls back to the address.
        let ip2 = Some(IpAddr::from([203, 0, 113, 11]));
        for (who, tenant, ok) in [
            ("u1", Some("acme"), true),
            ("u2", Some("acme"), false),
            ("u3", Some("umbrella"), true),
            ("u4", None, true),
            ("u5", None, false),
        ] {
            let mut v = None;
            l.after_auth(&mut v, ip2, Scope::path("/echo/"), &caller(who, tenant), T)
                .await;
            assert_eq!(v.unwrap().allowed(), ok, "{who}");
        }
    }

    #[tokio::test]
    async fn a_refusal_stops_the_count() {
        let l = limits(vec![
            policy("first", PolicyKey::Ip, 1, &[]),
            policy("second", PolicyKey::Ip, 5, &[]),
        ]);
        let ip = Some(IpAddr::from([203, 0, 113, 12]));
        let h = HeaderMap::new();
        assert!(l
            .before_auth(ip, Scope::path("/"), &h, T)
            .await
            .unwrap()
            .allowed());
        for _ in 0..3 {
            let v = l.before_auth(ip, Scope::path("/"), &h, T).await.unwrap();
            assert_eq!(&*v.policy, "first");
        }
        // `second` saw only the admitted request.
        let fresh = limits(vec![policy("second", PolicyKey::Ip, 5, &[])]).continuing(&l);
        let v = fresh
            .before_auth(ip, Scope::path("/"), &h, T)
            .await
            .unwrap();
        assert_eq!(v.shown.remaining, 3, "{v:?}");
    }
}
