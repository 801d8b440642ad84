//! The admin API, on its own listener (`gateway.admin.listen`), never on the client port:
//! cached aggregates purged by key or by tag, and inspected. Every call needs the bearer token
//! from `gateway.admin.token_env`, answers JSON, and is logged (who, what, how many).
//!
//! - `DELETE /cache/{aggregate}/{key…}`: purges one entry (`key` as the aggregate's key
//!   template renders it, e.g. `profile:42`).
//! - `POST /cache/invalidate` with `{"tags":["user:42"]}`: purges every entry carrying any of
//!   the tags, across replicas (the tags live in the shared store; in-process copies are
//!   dropped through the invalidation feed).
//! - `GET /cache/{aggregate}/{key…}`: the entry's age, remaining TTL, tags and staleness.
//! - `GET /status/{routes,upstreams,issuers,limits,cache,config,traffic}`: the live state
//!   (`status.rs`), and `GET /` the dashboard page that shows it (no data without the token).

use std::sync::Arc;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use http::{Method, Response};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

use crate::aggregate::PurgeKind;
use crate::error::GatewayError;
use crate::snapshot::Snapshot;

/// Largest request body the admin API reads.
const MAX_BODY: usize = 64 * 1024;
/// Most tags one invalidation may name.
const MAX_TAGS: usize = 1000;

/// The admin API's HTTP application.
pub struct AdminApi {
    live: Arc<ArcSwap<Snapshot>>,
    token: String,
}

impl AdminApi {
    /// The admin API over the gateway's live configuration and shared store.
    pub(crate) fn new(live: Arc<ArcSwap<Snapshot>>, token: String) -> Self {
        AdminApi { live, token }
    }

    fn authorized(&self, session: &ServerSession) -> bool {
        let given = session
            .req_header()
            .headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        // Constant time over the token's length: a wrong guess learns nothing of how close
        // it came.
        given.len() == self.token.len()
            && openssl::memcmp::eq(given.as_bytes(), self.token.as_bytes())
    }

    async fn serve(
        &self,
        session: &mut ServerSession,
    ) -> Result<(u16, serde_json::Value), GatewayError> {
        if !self.authorized(session) {
            return Err(GatewayError::Unauthorized {
                message: "the admin API needs its bearer token".into(),
                token_given: session
                    .req_header()
                    .headers
                    .contains_key(http::header::AUTHORIZATION),
            });
        }
        let method = session.req_header().method.clone();
        let path = session.req_header().uri.path().to_string();
        if let Some(page) = path.strip_prefix("/status/") {
            if method != Method::GET {
                return Err(GatewayError::MethodNotAllowed {
                    message: "use GET".into(),
                    allow: "GET".into(),
                });
            }
            let snap = self.live.load_full();
            let body = match page {
                "routes" => super::status::routes(&snap),
                "upstreams" => super::status::upstreams(&snap),
                "issuers" => super::status::issuers(&snap),
                "limits" => super::status::limits(&snap),
                "cache" => super::status::cache(&snap),
                "config" => super::status::config(&snap),
                "traffic" => super::status::traffic(),
                _ => return Err(GatewayError::NotFound("no such status page".into())),
            };
            return Ok((200, body));
        }
        if path == "/routes" {
            if method != Method::GET {
                return Err(GatewayError::MethodNotAllowed {
                    message: "use GET".into(),
                    allow: "GET".into(),
                });
            }
            let snap = self.live.load_full();
            let rows = super::routes::table_rows(&snap.config);
            return Ok((
                200,
                serde_json::json!({ "generation": snap.generation, "routes": rows }),
            ));
        }
        if path == "/cache/invalidate" {
            if method != Method::POST {
                return Err(GatewayError::MethodNotAllowed {
                    message: "use POST".into(),
                    allow: "POST".into(),
                });
            }
            let tags = read_tags(session).await?;
            let snap = self.live.load_full();
            let purged = snap
                .aggregates
                .invalidate_tags(tags.clone())
                .await
                .map_err(unavailable)?;
            PurgeKind::Tag.count(purged.count);
            return Ok((
                200,
                serde_json::json!({ "tags": tags, "invalidated": purged.count, "announced": announced(&snap, purged.announced) }),
            ));
        }
        let (name, key) =
            entry_path(&path).ok_or_else(|| GatewayError::NotFound("no such admin path".into()))?;
        let snap = self.live.load_full();
        let aggregate = snap
            .aggregates
            .named(name)
            .filter(|a| a.cached())
            .ok_or_else(|| {
                GatewayError::NotFound(format!("no cached aggregate named `{name}`").into())
            })?;
        match method {
            Method::DELETE => {
                let purged = aggregate.purge(key).await.map_err(unavailable)?;
                PurgeKind::Key.count(purged.count);
                Ok((
                    200,
                    serde_json::json!({ "aggregate": name, "key": key, "invalidated": purged.count, "announced": announced(&snap, purged.announced) }),
                ))
            }
            Method::GET => match aggregate.inspect(key).await.map_err(unavailable)? {
                Some(info) => Ok((200, serde_json::json!({ "aggregate": name, "entry": info }))),
                None => Err(GatewayError::NotFound(
                    format!("`{key}` is not cached").into(),
                )),
            },
            _ => Err(GatewayError::MethodNotAllowed {
                message: "use GET or DELETE".into(),
                allow: "GET, DELETE".into(),
            }),
        }
    }
}

/// Whether the purge was announced to the other replicas: `null` on the embedded store, where
/// there are none to tell (one process holds the only copy).
fn announced(snap: &Snapshot, announced: bool) -> serde_json::Value {
    if snap.config.redis.kind() == "embedded" {
        serde_json::Value::Null
    } else {
        announced.into()
    }
}

fn unavailable(e: crate::store::StoreError) -> GatewayError {
    GatewayError::Unavailable(format!("the cache store did not answer: {e}").into())
}

/// `(aggregate, key)` of `/cache/{aggregate}/{key…}`; `None` for anything else, a key that
/// climbs (`..`) or holds control characters included.
fn entry_path(path: &str) -> Option<(&str, &str)> {
    let (name, key) = path.strip_prefix("/cache/")?.split_once('/')?;
    // The name is checked by looking it up; only the key needs rules of its own.
    let key_ok = !key.is_empty()
        && key.len() <= 512
        && !key
            .split('/')
            .any(|s| s == ".." || s == "." || s.is_empty())
        && !key.bytes().any(|b| b.is_ascii_control());
    (!name.is_empty() && key_ok).then_some((name, key))
}

/// The `tags` of an invalidation body.
async fn read_tags(session: &mut ServerSession) -> Result<Vec<String>, GatewayError> {
    let mut body = Vec::new();
    while let Some(chunk) = session
        .read_request_body()
        .await
        .map_err(|_| GatewayError::BadRequest("the request body could not be read".into()))?
    {
        if body.len() + chunk.len() > MAX_BODY {
            return Err(GatewayError::PayloadTooLarge(
                format!("the body is over {MAX_BODY} bytes").into(),
            ));
        }
        body.extend_from_slice(&chunk);
    }
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Invalidate {
        tags: Vec<String>,
    }
    let parsed: Invalidate = serde_json::from_slice(&body).map_err(|e| {
        GatewayError::BadRequest(format!("expected {{\"tags\":[\"…\"]}}: {e}").into())
    })?;
    if parsed.tags.is_empty() || parsed.tags.len() > MAX_TAGS {
        return Err(GatewayError::BadRequest(
            format!("name 1 to {MAX_TAGS} tags").into(),
        ));
    }
    if parsed.tags.iter().any(|t| t.is_empty() || t.len() > 512) {
        return Err(GatewayError::BadRequest("a tag is 1 to 512 bytes".into()));
    }
    Ok(parsed.tags)
}

/// The dashboard: one page, everything embedded (no build step, no CDN). It holds no data:
/// what it shows comes from `/status/*` with the token the operator enters.
const DASHBOARD: &str = include_str!("dashboard.html");

#[async_trait]
impl ServeHttp for AdminApi {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        if req.uri.path() == "/" && req.method == Method::GET {
            return Response::builder()
                .status(200)
                .header(http::header::CONTENT_TYPE, "text/html; charset=utf-8")
                .header(http::header::CACHE_CONTROL, "no-store")
                .header(
                    "content-security-policy",
                    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src data:; frame-ancestors 'none'",
                )
                .header("x-content-type-options", "nosniff")
                .body(DASHBOARD.as_bytes().to_vec())
                .unwrap_or_else(|_| Response::new(Vec::new()));
        }
        let client = session
            .client_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let method = session.req_header().method.to_string();
        let path = session.req_header().uri.path().to_string();
        let (status, body, extra) = match self.serve(session).await {
            Ok((status, body)) => {
                tracing::info!(target: "gateway::admin", %client, %method, %path, status, result = %body, "admin call");
                (status, body.to_string().into_bytes(), Vec::new())
            }
            Err(e) => {
                tracing::warn!(target: "gateway::admin", %client, %method, %path, status = e.status(), error = %e, "admin call refused");
                (e.status(), e.body(), e.extra_headers())
            }
        };
        let mut resp = Response::builder()
            .status(status)
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::CACHE_CONTROL, "no-store");
        for (name, value) in extra {
            resp = resp.header(name, value);
        }
        resp.body(body)
            .unwrap_or_else(|_| Response::new(Vec::new()))
    }
}

#[cfg(test)]
mod tests {
    use super::entry_path;

    #[test]
    fn only_plain_entry_paths_are_read() {
        assert_eq!(
            entry_path("/cache/profile/profile:42"),
            Some(("profile", "profile:42"))
        );
        assert_eq!(entry_path("/cache/doc/a/b"), Some(("doc", "a/b")));
        for bad in [
            "/cache/profile",
            "/cache/profile/",
            "/cache/profile/../x",
            "/cache/profile/a/../../x",
            "/cache/profile/a//b",
            "/cache/profile/a\u{1}b",
            "/other/profile/x",
        ] {
            assert_eq!(entry_path(bad), None, "{bad}");
        }
    }
}
