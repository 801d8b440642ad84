//! A real OpenID provider: panva's `oidc-provider` (npm, pinned in `tests/oidc/package.json`;
//! `make test-deps` installs it) run by `node tests/oidc/server.mjs` on a free port.
//!
//! What it issues (see `tests/oidc/server.mjs`): client-credentials access tokens for
//! `svc-acme`/`acme-secret` and `svc-globex`/`globex-secret`, as JWTs (`typ: at+jwt`,
//! `aud: gateway`) for the resource `urn:gateway[:ALG][:ttlN]` (`aud: other-api` for
//! `urn:other`) or opaque for `urn:opaque`; RFC 7662 introspection and RFC 7009 revocation; ID
//! tokens for client `web` through its authorization-code flow; custom claims (`roles`,
//! `realm_access.roles`, `tenant`, `org`, `https://gateway.example/roles`).
//!
//! Key sets are named (`A`, `B`, …): each is five private keys (RS256, PS256, P-256, Ed25519,
//! P-384) written by `tests/oidc/gen-keys.mjs` into this instance's directory on first use. The
//! provider names each key by its RFC 7638 thumbprint ([`Oidc::kids`]). [`Oidc::rotate`]
//! swaps the key list inside the running process: the issuer never goes down for a rotation.
//!
//! Every request it serves is one JSON line on its stdout ([`Oidc::requests`]): `m`, `p`, `s`,
//! `ms`, `cc` (Cache-Control), `ua` (User-Agent), the harness's own requests included.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use base64::Engine as _;
use serde_json::Value;

use super::{client, eventually, free_port, Proc};

/// The nonce of the authorization request behind [`Oidc::id_token`].
pub const ID_TOKEN_NONCE: &str = "n1";

/// A running `oidc-provider`.
pub struct Oidc {
    pub proc: Proc,
    pub port: u16,
    /// The key sets' files (`NAME.json`, private JWKS).
    pub keys_dir: tempfile::TempDir,
}

/// `tests/oidc/` in the source tree.
fn oidc_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/oidc")
}

/// Writes every key set of `sets` that `dir` does not have yet (`gen-keys.mjs DIR NAME`).
async fn ensure_keys(dir: &Path, sets: &[&str]) {
    for set in sets {
        if dir.join(format!("{set}.json")).exists() {
            continue;
        }
        let mut cmd = node();
        cmd.arg(oidc_dir().join("gen-keys.mjs")).arg(dir).arg(set);
        let out = tokio::process::Command::from(cmd)
            .output()
            .await
            .expect("node runs tests/oidc/gen-keys.mjs");
        assert!(
            out.status.success(),
            "gen-keys.mjs {set}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// `node` with only PATH from the environment (no NODE_OPTIONS from a developer's shell).
fn node() -> Command {
    let mut cmd = Command::new("node");
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .current_dir(oidc_dir());
    cmd
}

impl Oidc {
    /// Generates the key sets `keys` (first = signing priority), starts the provider with them
    /// and waits until its discovery document answers 200.
    pub async fn start(keys: &[&str]) -> Oidc {
        assert!(
            oidc_dir().join("node_modules/oidc-provider").is_dir(),
            "oidc-provider is not installed: run `make test-deps` (npm ci --prefix tests/oidc)"
        );
        let keys_dir = tempfile::Builder::new()
            .prefix("oidc-keys.")
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .expect("a key directory under target/tmp");
        ensure_keys(keys_dir.path(), keys).await;
        let port = free_port();
        let proc = Proc::spawn(
            "oidc-provider",
            node()
                .arg(oidc_dir().join("server.mjs"))
                .env("PORT", port.to_string())
                .env("KEYS", keys.join(","))
                .env("KEYS_DIR", keys_dir.path()),
        );
        let oidc = Oidc {
            proc,
            port,
            keys_dir,
        };
        let url = oidc.url("/.well-known/openid-configuration");
        eventually(
            "oidc-provider serves its discovery document",
            Duration::from_secs(20),
            async || matches!(client().get(&url).send().await, Ok(r) if r.status() == 200),
        )
        .await;
        oidc
    }

    /// `http://127.0.0.1:PORT`, the `iss` of everything it issues.
    pub fn issuer(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// URL of `path` on the provider.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.issuer())
    }

    /// The kids of key set `set` (generated if new), in file order: RS256, PS256, ES256 (P-256),
    /// Ed25519, ES384 (P-384). Computed here from the key file as RFC 7638 thumbprints (SHA-256,
    /// base64url), the kid oidc-provider gives a key without one.
    pub async fn kids(&self, set: &str) -> Vec<String> {
        ensure_keys(self.keys_dir.path(), &[set]).await;
        let path = self.keys_dir.path().join(format!("{set}.json"));
        let text = std::fs::read_to_string(&path).expect("a key set file");
        let jwks: Value = serde_json::from_str(&text).expect("a key set is JSON");
        let keys = jwks["keys"].as_array().expect("a JWKS");
        keys.iter().map(thumbprint).collect()
    }

    /// A client-credentials access token for `resource` (`urn:gateway[:ALG][:ttlN]`,
    /// `urn:other`, `urn:opaque`); the test fails unless the provider answers 200.
    pub async fn token(&self, client_id: &str, secret: &str, resource: &str) -> String {
        let (status, body) = self
            .post_form(
                "/token",
                Some((client_id, secret)),
                &[("grant_type", "client_credentials"), ("resource", resource)],
            )
            .await;
        assert_eq!(
            status, 200,
            "POST /token for {client_id} {resource}: {body}"
        );
        body["access_token"]
            .as_str()
            .unwrap_or_else(|| panic!("no access_token in {body}"))
            .to_string()
    }

    /// An ID token for client `web` (subject `user-1`, nonce [`ID_TOKEN_NONCE`]) from the
    /// provider's authorization-code flow with its dev login and consent pages, exchanged at
    /// `/token` (`tests/oidc/id-token.mjs`). oidc-provider signs it RS256 with no `typ` header and
    /// puts no `at_hash` in it; see [`Oidc::hybrid_id_token`] for one with `at_hash`.
    pub async fn id_token(&self) -> String {
        self.id_token_flow("code").await
    }

    /// As [`Oidc::id_token`], through the hybrid flow (`response_type=code id_token token`): the
    /// ID token of the authorization response, with `at_hash` and `c_hash`.
    pub async fn hybrid_id_token(&self) -> String {
        self.id_token_flow("hybrid").await
    }

    async fn id_token_flow(&self, mode: &str) -> String {
        let mut cmd = node();
        cmd.arg(oidc_dir().join("id-token.mjs"))
            .arg(self.port.to_string())
            .arg(ID_TOKEN_NONCE)
            .arg(mode);
        let out = tokio::process::Command::from(cmd)
            .output()
            .await
            .expect("node runs tests/oidc/id-token.mjs");
        assert!(
            out.status.success(),
            "id-token.mjs {mode}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .expect("a token is ASCII")
            .trim()
            .to_string()
    }

    /// RFC 7662 introspection of `token`, authenticated as `svc-acme` (any client may
    /// introspect any token here); the test fails unless the provider answers 200. A JWT is not
    /// introspected: oidc-provider answers 400 `unsupported_token_type` (so this fails).
    pub async fn introspect(&self, token: &str) -> Value {
        let (status, body) = self
            .post_form(
                "/token/introspection",
                Some(("svc-acme", "acme-secret")),
                &[("token", token)],
            )
            .await;
        assert_eq!(status, 200, "POST /token/introspection: {body}");
        body
    }

    /// RFC 7009 revocation of `token` by the client it was issued to (another client's request
    /// is answered 200 and revokes nothing); the test fails unless the provider answers 200.
    pub async fn revoke(&self, client_id: &str, secret: &str, token: &str) {
        let (status, body) = self
            .post_form(
                "/token/revocation",
                Some((client_id, secret)),
                &[("token", token)],
            )
            .await;
        assert_eq!(status, 200, "POST /token/revocation: {body}");
    }

    /// Swaps the provider's key list for `sets` (first = signing priority; new sets are
    /// generated) inside the running process, and returns the kids it now publishes. Requests
    /// in flight finish on the old list; the first request after this returns sees the new one.
    pub async fn rotate(&self, sets: &[&str]) -> Vec<String> {
        ensure_keys(self.keys_dir.path(), sets).await;
        let joined = sets.join(",");
        let (status, body) = self
            .post_form("/__keys", None, &[("sets", joined.as_str())])
            .await;
        assert_eq!(status, 200, "POST /__keys sets={joined}: {body}");
        assert_eq!(body["sets"], serde_json::json!(sets), "{body}");
        strings(&body["kids"])
    }

    /// From now on every request but the harness's [`Oidc::up`] answers 503 (discovery, JWKS,
    /// token, introspection alike).
    pub async fn down(&self) {
        let (status, body) = self.post_form("/__down", None, &[]).await;
        assert_eq!(status, 200, "POST /__down: {body}");
    }

    /// Serves again after [`Oidc::down`].
    pub async fn up(&self) {
        let (status, body) = self.post_form("/__up", None, &[]).await;
        assert_eq!(status, 200, "POST /__up: {body}");
    }

    /// The published JWKS (`GET /jwks`, which shows in [`Oidc::requests`] too); the test fails
    /// unless it answers 200.
    pub async fn jwks(&self) -> Value {
        let r = client()
            .get(self.url("/jwks"))
            .send()
            .await
            .expect("GET /jwks");
        assert_eq!(r.status(), 200, "GET /jwks");
        r.json().await.expect("a JWKS")
    }

    /// The kids of the published JWKS, in order (a `GET /jwks`, as [`Oidc::jwks`]).
    pub async fn jwks_kids(&self) -> Vec<String> {
        let jwks = self.jwks().await;
        let keys = jwks["keys"].as_array().expect("a JWKS has keys");
        keys.iter()
            .map(|k| k["kid"].as_str().unwrap_or("").to_string())
            .collect()
    }

    /// Everything the provider wrote on stdout so far: one JSON line per request served.
    pub fn requests_log(&self) -> String {
        self.proc
            .logs
            .as_ref()
            .expect("the provider logs to files")
            .read()
            .0
    }

    /// The logged requests (parsed lines) whose path is `path`, in order: for fetch counts
    /// (`.len()`), statuses (`["s"]`), User-Agents (`["ua"]`), Cache-Control (`["cc"]`).
    pub fn requests(&self, path: &str) -> Vec<Value> {
        self.requests_log()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["p"] == path)
            .collect()
    }

    /// POSTs a form (with HTTP Basic client authentication when given); status and JSON body
    /// (`null` for an empty or non-JSON body).
    async fn post_form(
        &self,
        path: &str,
        basic: Option<(&str, &str)>,
        form: &[(&str, &str)],
    ) -> (u16, Value) {
        let mut req = client().post(self.url(path)).form(form);
        if let Some((id, secret)) = basic {
            req = req.basic_auth(id, Some(secret));
        }
        let r = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {path}: {e}"));
        let status = r.status().as_u16();
        let text = r.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }
}

/// A JSON array of strings as a vector ("" for a non-string).
fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .map(|s| s.as_str().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// The RFC 7638 thumbprint of a JWK (its required public members, in lexicographic order).
fn thumbprint(jwk: &Value) -> String {
    let members: &[&str] = match jwk["kty"].as_str() {
        Some("RSA") => &["e", "kty", "n"],
        Some("EC") => &["crv", "kty", "x", "y"],
        Some("OKP") => &["crv", "kty", "x"],
        other => panic!("a key type without a thumbprint here: {other:?}"),
    };
    let fields: Vec<String> = members
        .iter()
        .map(|m| format!("{}:{}", Value::from(*m), jwk[*m]))
        .collect();
    let canonical = format!("{{{}}}", fields.join(","));
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, canonical.as_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest.as_ref())
}

/// One base64url part of a compact JWT, decoded as JSON.
fn jwt_part(token: &str, index: usize) -> Value {
    let part = token
        .split('.')
        .nth(index)
        .unwrap_or_else(|| panic!("not a compact JWT: {token}"));
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .unwrap_or_else(|e| panic!("JWT part {index} is not base64url: {e}"));
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("JWT part {index} is not JSON: {e}"))
}

/// The decoded protected header of a compact JWT (not verified).
pub fn header_of(token: &str) -> Value {
    jwt_part(token, 0)
}

/// The decoded claims of a compact JWT (not verified).
pub fn claims_of(token: &str) -> Value {
    jwt_part(token, 1)
}

/// The `kid` of a JWT's header ("" when it has none).
pub fn kid_of(token: &str) -> String {
    header_of(token)["kid"].as_str().unwrap_or("").to_string()
}

/// `token` with its header's `kid` replaced and a signature that verifies nothing (a
/// request naming a key nobody publishes).
pub fn forge_with_kid(token: &str, kid: &str) -> String {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut header = header_of(token);
    header["kid"] = Value::from(kid);
    let payload = token.split('.').nth(1).unwrap_or_default();
    format!(
        "{}.{payload}.{}",
        b64.encode(serde_json::to_vec(&header).unwrap_or_default()),
        b64.encode([7u8; 64])
    )
}
