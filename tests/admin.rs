//! The admin API's status pages and dashboard page, against a real gateway: each page's
//! shape, the token required for data (never for the page, which holds none), methods.
#![allow(clippy::unwrap_used)] // a test may panic: that is how it fails

mod common;

use common::{client, free_port, Gateway, Mocks};

const TOKEN: &str = "status-admin-token-0123456789";

#[tokio::test]
async fn status_pages_answer_json_with_the_token_and_nothing_without() {
    let users = Mocks::start(&["user"]);
    let admin = free_port();
    let section = format!(
        "admin: {{ listen: \"127.0.0.1:{admin}\" }}\nupstreams:\n  users: {{ backends: [\"{}\"] }}\nroutes:\n  - {{ name: users, match: {{ path: {{ prefix: \"/users/\" }} }}, upstream: users, auth: public }}\n",
        users.addr("user")
    );
    let gw = Gateway::start(&section, &[("ADMIN_TOKEN", TOKEN.to_string())]).await;
    let c = client();
    // Traffic the pages then show: two proxied requests.
    for _ in 0..2 {
        let r = c.get(gw.url("/users/1")).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    let get = |page: &str, token: Option<&str>| {
        let mut req = c.get(format!("http://127.0.0.1:{admin}/status/{page}"));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send()
    };
    for page in [
        "routes",
        "upstreams",
        "issuers",
        "limits",
        "cache",
        "config",
        "traffic",
    ] {
        for token in [None, Some("wrong-token-wrong-token")] {
            let r = get(page, token).await.unwrap();
            assert_eq!(r.status(), 401, "{page} without the token");
            let body = r.text().await.unwrap();
            assert!(
                !body.contains("users"),
                "{page} leaks without the token: {body}"
            );
        }
        let r = get(page, Some(TOKEN)).await.unwrap();
        assert_eq!(r.status(), 200, "{page}");
        let v: serde_json::Value = r.json().await.unwrap();
        match page {
            "routes" => assert!(
                v["routes"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|r| r["name"] == "users"),
                "{v}"
            ),
            "upstreams" => {
                let g = &v["upstreams"].as_array().unwrap()[0];
                assert_eq!(g["group"], "users", "{v}");
                assert_eq!(g["backends"][0]["address"], users.addr("user"), "{v}");
                assert_eq!(g["backends"][0]["breaker"], "closed", "{v}");
            }
            "issuers" => assert_eq!(v["hs256"], true, "{v}"),
            "limits" => assert_eq!(v["policies"][0]["name"], "default", "{v}"),
            "cache" => assert_eq!(v["store"], "embedded", "{v}"),
            "config" => assert_eq!(v["generation"], 1, "{v}"),
            "traffic" => {
                let users = v["routes"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|r| r["route"] == "users")
                    .unwrap_or_else(|| panic!("{v}"))
                    .clone();
                assert_eq!(users["requests"], 2.0, "{v}");
                assert_eq!(users["errors"], 0.0, "{v}");
            }
            _ => unreachable!(),
        }
    }
    let r = get("nothing", Some(TOKEN)).await.unwrap();
    assert_eq!(r.status(), 404);
    let r = c
        .post(format!("http://127.0.0.1:{admin}/status/routes"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    // A purge on the embedded store has no replica to announce it to: `announced` is null.
    let r = c
        .post(format!("http://127.0.0.1:{admin}/cache/invalidate"))
        .bearer_auth(TOKEN)
        .body(r#"{"tags":["user:1"]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["announced"], serde_json::Value::Null, "{v}");
    assert_eq!(v["invalidated"], 0, "{v}");
    // The page itself needs no token and carries no data; scripts only its own.
    let r = c
        .get(format!("http://127.0.0.1:{admin}/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let csp = r.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("connect-src 'self'"),
        "{csp}"
    );
    let page = r.text().await.unwrap();
    assert!(page.contains("<title>gateway</title>") && !page.contains(&users.addr("user")));
    assert!(
        !page.contains("http://") && !page.contains("https://"),
        "no outside resource"
    );
}

#[tokio::test]
async fn a_purge_says_announced_false_only_when_the_announcement_failed() {
    let redis = common::Redis::start();
    let mocks = Mocks::start(&["user", "order", "product", "recommendation"]);
    let admin = free_port();
    let mut env = common::service_env(&mocks);
    env.push(("REDIS_ADDR", redis.addr()));
    env.push(("ADMIN_TOKEN", TOKEN.to_string()));
    let section = format!(
        "admin: {{ listen: \"127.0.0.1:{admin}\" }}\n{}",
        common::profile_aggregate_with(
            2000,
            r#"ttl_seconds: 60, key: "profile:{id}", tags: ["user:{id}"]"#
        )
    );
    let gw = Gateway::start(&section, &env).await;
    let bearer = common::token_with_roles("admin-1", &["admin"]);
    let purge = async |id: u32| -> serde_json::Value {
        let r = client()
            .get(gw.url(&format!("/api/profile/{id}")))
            .bearer_auth(&bearer)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        // The entry is written after the answer went out.
        common::eventually(
            "the entry written",
            std::time::Duration::from_secs(5),
            async || !redis.keys(&format!("profile:{id}#*")).is_empty(),
        )
        .await;
        let r = client()
            .post(format!("http://127.0.0.1:{admin}/cache/invalidate"))
            .bearer_auth(TOKEN)
            .json(&serde_json::json!({"tags": [format!("user:{id}")]}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.json().await.unwrap()
    };
    let publish_errors = async || {
        common::metric_sum(
            &gw.metrics().await,
            r#"store_errors_total{backend="redis",op="publish"}"#,
        )
    };
    let v = purge(1).await;
    assert_eq!(
        (&v["invalidated"], &v["announced"]),
        (&1.into(), &true.into()),
        "{v}"
    );
    // Redis refuses PUBLISH (an ACL without it) while everything else works: the entry is
    // still deleted, and the answer says the replicas were not told.
    let mut c = redis.conn().unwrap();
    let _: () = redis::cmd("ACL")
        .arg(&["SETUSER", "default", "-publish"][..])
        .query(&mut c)
        .unwrap();
    let v = purge(2).await;
    assert_eq!(
        (&v["invalidated"], &v["announced"]),
        (&1.into(), &false.into()),
        "{v}"
    );
    assert_eq!(publish_errors().await, 1.0);
    assert!(redis.keys("profile:2#*").is_empty(), "deleted all the same");
    let _: () = redis::cmd("ACL")
        .arg(&["SETUSER", "default", "+publish"][..])
        .query(&mut c)
        .unwrap();
    let v = purge(3).await;
    assert_eq!(
        (&v["invalidated"], &v["announced"]),
        (&1.into(), &true.into()),
        "{v}"
    );
    assert_eq!(publish_errors().await, 1.0);
}
