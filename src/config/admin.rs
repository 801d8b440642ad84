//! `gateway.admin`: the operators' API (cache purge and inspection) on a listener of its own,
//! behind a bearer token read from the environment, never from the conf file.

use std::net::SocketAddr;

use serde::Deserialize;

use super::check::{invalid, ConfigError, Env, LoadMode};

/// `gateway.admin` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct AdminFile {
    listen: Option<String>,
    token_env: Option<String>,
}

/// The admin API as the gateway runs it (`Config::admin` is `None` without a listener).
#[derive(Clone, PartialEq, Eq)]
pub struct AdminConfig {
    /// Where the admin API listens (`ADMIN_PORT` replaces the port).
    pub listen: SocketAddr,
    /// The bearer token every call must carry.
    pub token: String,
}

impl std::fmt::Debug for AdminConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token: configs are logged on reload errors.
        f.debug_struct("AdminConfig")
            .field("listen", &self.listen)
            .finish_non_exhaustive()
    }
}

/// Shortest token accepted: anything shorter is guessable.
const MIN_TOKEN: usize = 16;

/// Resolves `gateway.admin`; `others` are the addresses it must not share. `-t` (`Check`)
/// checks the token as start does, since a `-t` that passes must mean the gateway starts.
pub(super) fn resolve_admin(
    file: AdminFile,
    env: &dyn Env,
    others: &[SocketAddr],
    _mode: LoadMode,
) -> Result<Option<AdminConfig>, ConfigError> {
    let Some(listen) = file.listen else {
        if file.token_env.is_some() {
            return Err(invalid(
                "gateway.admin.listen",
                "the admin API needs a listen address (e.g. 127.0.0.1:9092)",
            ));
        }
        return Ok(None);
    };
    let port = env.var("ADMIN_PORT").filter(|v| !v.trim().is_empty());
    let listen = super::check::parse_listen(
        "gateway.admin.listen",
        &listen,
        port.map(|p| ("ADMIN_PORT", p)),
    )?;
    if others.contains(&listen) {
        return Err(invalid(
            "gateway.admin.listen",
            "must differ from the client, metrics and TLS listeners",
        ));
    }
    let var = file.token_env.unwrap_or_else(|| "ADMIN_TOKEN".into());
    if var.trim().is_empty() {
        return Err(invalid(
            "gateway.admin.token_env",
            "names the environment variable holding the admin token",
        ));
    }
    let token = env.var(&var).unwrap_or_default().trim().to_string();
    if token.len() < MIN_TOKEN {
        return Err(invalid(
            "gateway.admin.token_env",
            format!(
                "`{var}` must hold the admin bearer token, at least {MIN_TOKEN} characters \
                 (it is {})",
                if token.is_empty() { "unset" } else { "shorter" }
            ),
        ));
    }
    Ok(Some(AdminConfig { listen, token }))
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, LoadMode};

    fn load(yaml: &str, vars: &[(&str, &str)]) -> Result<Config, String> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .chain([("JWT_SECRET".to_string(), "s".to_string())])
            .collect();
        let env = move |k: &str| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        Config::from_yaml(yaml, &env, LoadMode::Run).map_err(|e| e.to_string())
    }

    #[test]
    fn the_admin_api_needs_a_listener_and_a_long_token_from_the_environment() {
        assert!(load("gateway: {}", &[]).unwrap().admin.is_none());
        let token = "0123456789abcdef0123";
        let c = load(
            "gateway: {admin: {listen: '127.0.0.1:9092'}}",
            &[("ADMIN_TOKEN", token), ("ADMIN_PORT", "9100")],
        )
        .unwrap();
        let a = c.admin.unwrap();
        assert_eq!(a.listen.to_string(), "127.0.0.1:9100");
        assert_eq!(a.token, token);
        assert!(!format!("{a:?}").contains(token), "never logged");
        let checked = Config::from_yaml(
            "gateway: {admin: {listen: '127.0.0.1:9092'}}",
            &|_: &str| None,
            LoadMode::Check,
        );
        assert!(
            checked.is_err(),
            "-t checks the token as start does: {checked:?}"
        );
        let own = load(
            "gateway: {admin: {listen: '127.0.0.1:9092', token_env: OPS_TOKEN}}",
            &[("OPS_TOKEN", token)],
        );
        assert!(own.is_ok());
        for (yaml, vars, want) in [
            (
                "gateway: {admin: {listen: '127.0.0.1:9092'}}",
                vec![],
                "unset",
            ),
            (
                "gateway: {admin: {listen: '127.0.0.1:9092'}}",
                vec![("ADMIN_TOKEN", "short")],
                "shorter",
            ),
            (
                "gateway: {admin: {token_env: X}}",
                vec![],
                "gateway.admin.listen",
            ),
            (
                "gateway: {admin: {listen: '0.0.0.0:9091'}}",
                vec![("ADMIN_TOKEN", token)],
                "must differ",
            ),
            (
                "gateway: {admin: {listen: 'nowhere'}}",
                vec![("ADMIN_TOKEN", token)],
                "gateway.admin.listen",
            ),
        ] {
            let err = load(yaml, &vars).unwrap_err();
            assert!(err.contains(want), "{yaml}: {err}");
        }
    }
}
