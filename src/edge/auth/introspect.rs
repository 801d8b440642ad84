//! Opaque tokens (RFC 7662): a bearer token that is not a JWT is sent to the issuer's
//! introspection endpoint (HTTP Basic with the gateway's client credentials), once per token
//! at a time however many requests carry it, and the answer is kept by the token's SHA-256 —
//! never the token itself: active for `cache_seconds` (never past the token's `exp`), inactive
//! for ten seconds, an endpoint that failed for one second (so a crowd of requests does not
//! retry it one after another).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use parking_lot::Mutex;
use serde_json::Value;

use super::claims::ClaimReader;
use super::error::AuthError;
use super::identity::Identity;
use super::provider::{Provider, FETCH_TIMEOUT};
use crate::config::IntrospectionConfig;

/// How long an `active: false` answer is reused.
const INACTIVE_FOR: Duration = Duration::from_secs(10);
/// How long a failed call is reused (the requests that waited for it all get 503).
const FAILED_FOR: Duration = Duration::from_secs(1);
/// Answers remembered; when full, expired ones go, then everything (bounded memory).
const MAX_ENTRIES: usize = 16_384;
/// Calls to the endpoint at once; more wait their turn (within the fetch timeout).
const MAX_CALLS: usize = 64;
/// The largest introspection answer read.
const MAX_BODY: usize = 64 * 1024;

/// What the endpoint said about one token.
#[derive(Clone)]
enum Answer {
    /// The caller, and the token's `exp` when the answer gave one.
    Active(Arc<Identity>, Option<u64>),
    Inactive,
    Failed,
}

/// One token's answer, or the call that will give it.
struct Slot {
    cell: tokio::sync::OnceCell<(Answer, Instant)>,
}

/// Introspects one issuer's opaque tokens.
pub(super) struct Introspector {
    config: IntrospectionConfig,
    provider: Arc<Provider>,
    http: reqwest::Client,
    claims: Arc<ClaimReader>,
    leeway: u64,
    slots: Mutex<HashMap<[u8; 32], Arc<Slot>>>,
    calls: tokio::sync::Semaphore,
}

impl Introspector {
    /// An introspector for `provider`'s issuer.
    pub(super) fn new(
        config: IntrospectionConfig,
        provider: Arc<Provider>,
        http: reqwest::Client,
        claims: Arc<ClaimReader>,
        leeway: u64,
    ) -> Introspector {
        Introspector {
            config,
            provider,
            http,
            claims,
            leeway,
            slots: Mutex::new(HashMap::new()),
            calls: tokio::sync::Semaphore::new(MAX_CALLS),
        }
    }

    fn issuer(&self) -> &str {
        &self.provider.config().issuer
    }

    /// The identity behind an opaque `token`.
    pub(super) async fn identify(&self, token: &str) -> Result<Arc<Identity>, AuthError> {
        let digest: [u8; 32] =
            aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes())
                .as_ref()
                .try_into()
                .unwrap_or([0; 32]);
        let answer = loop {
            let slot = self.slot(digest);
            let (answer, until) = slot
                .cell
                .get_or_init(|| async {
                    let answer = self.call(token).await;
                    let label = match &answer {
                        Answer::Active(..) => "active",
                        Answer::Inactive => "inactive",
                        Answer::Failed => "error",
                    };
                    crate::metrics::INTROSPECTION
                        .with_label_values(&[self.issuer(), label])
                        .inc();
                    let until = Instant::now() + self.keep(&answer);
                    (answer, until)
                })
                .await
                .clone();
            if Instant::now() < until {
                break answer;
            }
            // Expired: the next caller asks again (this one included).
            let mut slots = self.slots.lock();
            if slots.get(&digest).is_some_and(|s| Arc::ptr_eq(s, &slot)) {
                slots.remove(&digest);
            }
        };
        match answer {
            Answer::Active(who, _) => Ok(who),
            Answer::Inactive => Err(AuthError::InactiveToken),
            Answer::Failed => Err(AuthError::IntrospectionUnavailable {
                retry_after_secs: 1,
            }),
        }
    }

    /// The slot for `digest`, made when absent.
    fn slot(&self, digest: [u8; 32]) -> Arc<Slot> {
        let mut slots = self.slots.lock();
        if let Some(s) = slots.get(&digest) {
            return s.clone();
        }
        if slots.len() >= MAX_ENTRIES {
            let now = Instant::now();
            slots.retain(|_, s| s.cell.get().is_none_or(|(_, until)| *until > now));
            if slots.len() >= MAX_ENTRIES {
                slots.clear();
            }
        }
        let s = Arc::new(Slot {
            cell: tokio::sync::OnceCell::new(),
        });
        slots.insert(digest, s.clone());
        s
    }

    /// How long `answer` is reused.
    fn keep(&self, answer: &Answer) -> Duration {
        match answer {
            Answer::Active(_, exp) => {
                let left = exp
                    .map(|exp| Duration::from_secs(exp.saturating_sub(crate::clock::unix_now())))
                    .unwrap_or(self.config.cache);
                self.config.cache.min(left)
            }
            Answer::Inactive => INACTIVE_FOR,
            Answer::Failed => FAILED_FOR,
        }
    }

    /// One call to the endpoint.
    async fn call(&self, token: &str) -> Answer {
        let Ok(_turn) = tokio::time::timeout(FETCH_TIMEOUT, self.calls.acquire()).await else {
            return Answer::Failed;
        };
        let Some(endpoint) = self
            .config
            .endpoint
            .clone()
            .or_else(|| self.provider.discovered_introspection())
        else {
            tracing::warn!(issuer = self.issuer(), "no introspection endpoint: the discovery document names none (or was not fetched yet)");
            return Answer::Failed;
        };
        let asked = tokio::time::timeout(FETCH_TIMEOUT, self.post(endpoint.as_str(), token)).await;
        match asked {
            Ok(Ok(body)) => self.read(&body),
            Ok(Err(e)) => {
                tracing::warn!(issuer = self.issuer(), error = %e, "token introspection failed");
                Answer::Failed
            }
            Err(_) => {
                tracing::warn!(
                    issuer = self.issuer(),
                    "token introspection gave no answer within {FETCH_TIMEOUT:?}"
                );
                Answer::Failed
            }
        }
    }

    async fn post(&self, url: &str, token: &str) -> Result<Vec<u8>, String> {
        // client_secret_basic: both parts form-encoded first (RFC 6749 2.3.1).
        let enc = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
        let basic = base64::engine::general_purpose::STANDARD.encode(format!(
            "{}:{}",
            enc(&self.config.client_id),
            enc(&self.config.client_secret)
        ));
        let form: String = form_urlencoded::Serializer::new(String::new())
            .append_pair("token", token)
            .append_pair("token_type_hint", "access_token")
            .finish();
        let mut resp = self
            .http
            .post(url)
            .header("Authorization", format!("Basic {basic}"))
            .header("Content-Type", "application/x-www-form-urlencoded")
            .header("Accept", "application/json")
            .body(form)
            .send()
            .await
            .map_err(|e| format!("{url}: {}", crate::error::chain(&e)))?;
        if !resp.status().is_success() {
            return Err(format!("{url}: status {}", resp.status()));
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| format!("{url}: {}", crate::error::chain(&e)))?
        {
            if body.len() + chunk.len() > MAX_BODY {
                return Err(format!("{url}: larger than {MAX_BODY} bytes"));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    /// The answer in an endpoint's JSON: active only when `active` is `true`, the token is
    /// in its validity window, and names this issuer and audience where it says them.
    fn read(&self, body: &[u8]) -> Answer {
        let Ok(v) = serde_json::from_slice::<Value>(body) else {
            tracing::warn!(
                issuer = self.issuer(),
                "token introspection answered something that is not JSON"
            );
            return Answer::Failed;
        };
        if v.get("active") != Some(&Value::Bool(true)) {
            return Answer::Inactive;
        }
        let now = crate::clock::unix_now();
        let config = self.provider.config();
        let exp = v.get("exp").and_then(Value::as_u64);
        if exp.is_some_and(|e| e + self.leeway < now)
            || v.get("nbf")
                .and_then(Value::as_u64)
                .is_some_and(|n| n > now + self.leeway)
        {
            return Answer::Inactive;
        }
        if v.get("iss")
            .and_then(Value::as_str)
            .is_some_and(|i| i != config.issuer)
        {
            return Answer::Inactive;
        }
        if !config.audiences.is_empty() {
            let named = |a: &str| config.audiences.iter().any(|x| x == a);
            let ok = match v.get("aud") {
                None => true,
                Some(Value::String(a)) => named(a),
                Some(Value::Array(list)) => list.iter().filter_map(Value::as_str).any(named),
                Some(_) => false,
            };
            if !ok {
                return Answer::Inactive;
            }
        }
        if v.get("token_type").and_then(Value::as_str) == Some("refresh_token") {
            return Answer::Inactive;
        }
        // Client-credentials tokens often carry only the client: it is the caller.
        let sub = ["sub", "client_id", "username"]
            .iter()
            .find_map(|k| v.get(k).and_then(Value::as_str).filter(|s| !s.is_empty()));
        let Some(sub) = sub.filter(|s| super::claims::sendable(s)) else {
            return Answer::Inactive;
        };
        let Ok(forwarded) = self.claims.forwarded(&v) else {
            return Answer::Inactive;
        };
        let who = Identity {
            sub: sub.to_string(),
            roles: self.claims.roles(&v),
            forwarded,
            limit_claims: self.claims.limit_values(&v),
            scopes: self.claims.scopes(&v),
        };
        Answer::Active(Arc::new(who), exp)
    }
}

/// Whether a bearer token is opaque: not three dot-separated parts whose first is base64url
/// JSON (a JWS).
pub(super) fn is_opaque(token: &str) -> bool {
    let mut parts = token.split('.');
    let (Some(header), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return true;
    };
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header.trim_end_matches('='))
        .ok()
        .and_then(|h| serde_json::from_slice::<Value>(&h).ok())
        .is_none_or(|h| !h.is_object())
}
