//! `gateway.auth.api_keys`: machine clients that present a key in a header instead of a token.
//! The keys file holds only each key's SHA-256 with the identity it stands for, so a leaked
//! file (or conf repository) grants nothing; it is read with the conf, so a reload adds and
//! revokes keys.

use serde::Deserialize;

use super::check::{invalid, ConfigError};

/// `api_keys` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ApiKeysFile {
    #[serde(default = "default_header")]
    header: String,
    keys_file: String,
}

fn default_header() -> String {
    "X-Api-Key".into()
}

/// The keys file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysDoc {
    keys: Vec<KeyEntry>,
}

/// One key as written in the keys file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyEntry {
    sha256: String,
    sub: String,
    #[serde(default)]
    roles: Vec<String>,
    #[serde(default)]
    scopes: Vec<String>,
    /// For people: who holds the key (never used to decide anything).
    #[serde(default)]
    #[allow(dead_code)]
    name: Option<String>,
}

/// The API keys accepted, checked.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKeysConfig {
    /// The request header that carries the key.
    pub header: http::HeaderName,
    /// Where the keys were read from (for messages).
    pub file: String,
    /// The keys, by digest.
    pub keys: Vec<ApiKey>,
}

impl std::fmt::Debug for ApiKeysConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKeysConfig")
            .field("header", &self.header)
            .field("file", &self.file)
            .field("keys", &self.keys.len())
            .finish()
    }
}

/// One accepted key: the SHA-256 of its text and who presents it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    /// SHA-256 of the key as the client sends it.
    pub digest: [u8; 32],
    /// The caller's id (`X-User-Id`, `key: sub` limits).
    pub sub: String,
    /// Roles for routes' `require.roles`.
    pub roles: Vec<String>,
    /// Scopes for routes' `require.scopes`.
    pub scopes: Vec<String>,
}

/// Headers a key must not travel in: they carry other credentials or frame the request.
const RESERVED: [&str; 6] = [
    "authorization",
    "cookie",
    "host",
    "content-length",
    "transfer-encoding",
    "x-user-id",
];

impl ApiKeysFile {
    /// Reads and checks the keys file.
    pub(super) fn resolve(self) -> Result<ApiKeysConfig, ConfigError> {
        const KEY: &str = "gateway.auth.api_keys";
        let header = http::HeaderName::from_bytes(self.header.as_bytes()).map_err(|_| {
            invalid(
                format!("{KEY}.header"),
                format!("`{}` is not a header name", self.header),
            )
        })?;
        if RESERVED.contains(&header.as_str()) {
            return Err(invalid(
                format!("{KEY}.header"),
                format!(
                    "`{}` carries something else; choose another header",
                    self.header
                ),
            ));
        }
        let file_key = format!("{KEY}.keys_file");
        let text = std::fs::read_to_string(&self.keys_file)
            .map_err(|e| invalid(&file_key, format!("{}: {e}", self.keys_file)))?;
        let doc: KeysDoc = serde_yaml::from_str(&text).map_err(|e| {
            invalid(
                &file_key,
                format!(
                    "{}: {e} (expected `keys:` with entries {{ sha256, sub, roles, scopes }})",
                    self.keys_file
                ),
            )
        })?;
        let mut keys: Vec<ApiKey> = Vec::with_capacity(doc.keys.len());
        for (i, k) in doc.keys.into_iter().enumerate() {
            let at = |field: &str| format!("{}: keys[{i}].{field}", self.keys_file);
            let mut digest = [0u8; 32];
            if const_hex::decode_to_slice(k.sha256.trim(), &mut digest).is_err() {
                return Err(invalid(
                    &file_key,
                    format!(
                        "{}: 64 hex digits, the SHA-256 of the key (`gateway apikey` prints it)",
                        at("sha256")
                    ),
                ));
            }
            if k.sub.is_empty() || k.sub.bytes().any(|b| b < 0x20 || b == 0x7f) {
                return Err(invalid(
                    &file_key,
                    format!("{}: not empty, no control characters", at("sub")),
                ));
            }
            for (field, list) in [("roles", &k.roles), ("scopes", &k.scopes)] {
                if list
                    .iter()
                    .any(|x| x.is_empty() || x.contains(char::is_whitespace))
                {
                    return Err(invalid(
                        &file_key,
                        format!("{}: words without spaces", at(field)),
                    ));
                }
            }
            if let Some(j) = keys.iter().position(|o| o.digest == digest) {
                return Err(invalid(
                    &file_key,
                    format!("{}: the same key as keys[{j}]", at("sha256")),
                ));
            }
            keys.push(ApiKey {
                digest,
                sub: k.sub,
                roles: k.roles,
                scopes: k.scopes,
            });
        }
        Ok(ApiKeysConfig {
            header,
            file: self.keys_file,
            keys,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(keys: &str, header: Option<&str>) -> Result<ApiKeysConfig, String> {
        let dir = std::env::temp_dir().join(format!(
            "apikeys-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("keys.yaml");
        std::fs::write(&file, keys).unwrap();
        let f = ApiKeysFile {
            header: header.unwrap_or("X-Api-Key").into(),
            keys_file: file.to_string_lossy().into(),
        };
        let r = f.resolve().map_err(|e| e.to_string());
        let _ = std::fs::remove_dir_all(&dir);
        r
    }

    const D1: &str = "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae";
    const D2: &str = "fcde2b2edba56bf408601fb721fe9b5c338d10ee429ea04fae5511b68fbf8fb9";

    #[test]
    fn keys_are_read_with_their_identities() {
        let c = resolve(
            &format!("keys:\n  - {{ sha256: {D1}, sub: svc-a, roles: [reader], scopes: [api], name: 'team a' }}\n  - {{ sha256: {D2}, sub: svc-b }}\n"),
            None,
        )
        .unwrap();
        assert_eq!(c.header, "x-api-key");
        assert_eq!(c.keys.len(), 2);
        assert_eq!(c.keys[0].sub, "svc-a");
        assert_eq!(c.keys[0].roles, ["reader"]);
        assert_eq!(c.keys[0].digest[..2], [0x2c, 0x26]);
        assert!(
            !format!("{c:?}").contains(D1),
            "digests stay out of debug output"
        );
    }

    #[test]
    fn every_mistake_is_named() {
        for (keys, header, want) in [
            (
                "keys:\n  - { sha256: abc, sub: a }\n".to_string(),
                None,
                "keys[0].sha256: 64 hex digits",
            ),
            (
                format!("keys:\n  - {{ sha256: {D1}, sub: '' }}\n"),
                None,
                "keys[0].sub",
            ),
            (
                format!("keys:\n  - {{ sha256: {D1}, sub: a, roles: ['a b'] }}\n"),
                None,
                "keys[0].roles",
            ),
            (
                format!("keys:\n  - {{ sha256: {D1}, sub: a }}\n  - {{ sha256: {D1}, sub: b }}\n"),
                None,
                "keys[1].sha256: the same key as keys[0]",
            ),
            (
                format!("keys:\n  - {{ sha256: {D1}, sub: a, role: x }}\n"),
                None,
                "unknown field `role`",
            ),
            ("nokeys: 1\n".to_string(), None, "expected `keys:`"),
            (
                format!("keys: []\n# {D1}"),
                Some("Authorization"),
                "choose another header",
            ),
            (
                "keys: []\n".to_string(),
                Some("bad header"),
                "is not a header name",
            ),
        ] {
            let e = resolve(&keys, header).unwrap_err();
            assert!(e.contains(want), "{keys}: {e}");
        }
        let missing = ApiKeysFile {
            header: default_header(),
            keys_file: "/nonexistent/keys.yaml".into(),
        }
        .resolve()
        .unwrap_err()
        .to_string();
        assert!(
            missing.contains("gateway.auth.api_keys.keys_file")
                && missing.contains("/nonexistent/keys.yaml"),
            "{missing}"
        );
    }
}
