//! Deployment files checked against the code: docker-compose.yml and the Dockerfile (no Docker
//! engine here, so statically), the Kubernetes manifests (kubernetes-validate + consistency), the
//! Prometheus config (promtool) and the Grafana dashboard (every query evaluated by a real
//! Prometheus scraping a live gateway).
#![allow(clippy::unwrap_used)] // a test may panic: that is how it fails

mod common;

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{client, eventually, free_port, service_env, token, Gateway, Mocks, Proc, Redis};
use gateway::config::ENV_VARS;
use serde_yaml::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn yaml(path: &str) -> Value {
    let text = std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut v: Value = serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"));
    // docker compose honours YAML merge keys (`<<: *image`); so must this reader.
    v.apply_merge().unwrap_or_else(|e| panic!("{path}: {e}"));
    v
}

fn yaml_docs(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .filter(|v: &Value| !v.is_null())
        .collect()
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        other => serde_yaml::to_string(other).unwrap().trim().to_string(),
    }
}

/// The port of a `host:port` listen value.
fn listen_port(v: &Value) -> u16 {
    s(v).rsplit(':').next().unwrap().parse().unwrap()
}

/// Runs `gateway -t` on a conf text; returns the conf's gateway listen ports on success.
fn check_conf(text: &str) -> (u16, u16) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.yaml");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(common::gateway_bin())
        .args(["-t", "-c"])
        .arg(&path)
        .env("JWT_SECRET", common::SECRET)
        .env("ADMIN_TOKEN", "a-deployment-admin-token")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "gateway -t rejects it: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_yaml::from_str(text).unwrap();
    (
        listen_port(&v["gateway"]["listen"]),
        listen_port(&v["gateway"]["metrics_listen"]),
    )
}

#[test]
fn compose_and_dockerfile_agree_with_the_code() {
    let compose = yaml("docker-compose.yml");
    let services = compose["services"].as_mapping().expect("services");
    let names: BTreeSet<String> = services.keys().map(s).collect();
    for want in ["gateway", "mocks", "redis", "prometheus", "grafana"] {
        assert!(names.contains(want), "compose lacks {want}");
    }
    let svc = |n: &str| &compose["services"][n];
    let ports = |n: &str| -> Vec<String> {
        svc(n)["ports"]
            .as_sequence()
            .map(|p| p.iter().map(s).collect())
            .unwrap_or_default()
    };

    // The gateway's environment: only variables the gateway reads.
    let env = svc("gateway")["environment"]
        .as_mapping()
        .expect("gateway env");
    for (k, _) in env {
        assert!(
            ENV_VARS.contains(&s(k).as_str()),
            "compose sets {} which the gateway does not read",
            s(k)
        );
    }
    assert_eq!(
        s(&svc("gateway")["environment"]["JWT_SECRET"]),
        "super-secret-key"
    );
    assert_eq!(
        s(&svc("gateway")["environment"]["REDIS_ADDR"]),
        "redis:6379"
    );
    for (var, port) in [
        ("USER_SERVICE_URL", 8081),
        ("ORDER_SERVICE_URL", 8082),
        ("PRODUCT_SERVICE_URL", 8083),
        ("RECOMMENDATION_SERVICE_URL", 8084),
    ] {
        let url = s(&svc("gateway")["environment"][var]);
        assert_eq!(url, format!("http://mocks:{port}"), "{var}");
        assert!(
            ports("mocks").contains(&format!("{port}:{port}")),
            "mocks must publish {port}"
        );
    }

    // Spans go to a compose service that takes OTLP/HTTP on the endpoint's port.
    let otlp = s(&svc("gateway")["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"]);
    let (host, port) = otlp
        .strip_prefix("http://")
        .and_then(|h| h.split_once(':'))
        .expect("OTEL_EXPORTER_OTLP_ENDPOINT is http://host:port");
    assert!(
        names.contains(host),
        "no compose service {host} for the spans"
    );
    assert_eq!(
        s(&svc(host)["environment"]["COLLECTOR_OTLP_ENABLED"]),
        "true"
    );
    assert!(ports(host).contains(&format!("{port}:{port}")));
    gateway::config::Config::from_yaml(
        &std::fs::read_to_string(root().join("deploy/compose/gateway.yaml")).unwrap(),
        &|k: &str| match k {
            "OTEL_EXPORTER_OTLP_ENDPOINT" => Some(otlp.clone()),
            "JWT_SECRET" => Some("super-secret-key".to_string()),
            "ADMIN_TOKEN" => Some("a-deployment-admin-token".to_string()),
            _ => None,
        },
        gateway::config::LoadMode::Check,
    )
    .map(|c| assert!(c.tracing.is_some(), "compose traces"))
    .unwrap_or_else(|e| panic!("compose conf: {e}"));

    // The gateway trusts the mocks' provider under the name the provider puts in its tokens.
    let idp_issuer = s(&svc("mocks")["environment"]["IDP_ISSUER"]);
    assert_eq!(idp_issuer, "http://mocks:8085");
    assert!(ports("mocks").contains(&"8085:8085".to_string()));
    let compose_conf: Value = serde_yaml::from_str(
        &std::fs::read_to_string(root().join("deploy/compose/gateway.yaml")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        s(&compose_conf["gateway"]["auth"]["issuers"][0]["issuer"]),
        idp_issuer
    );

    // Every mounted host path exists; the gateway's conf validates and matches its ports.
    for (name, _) in services {
        if let Some(vols) = svc(&s(name))["volumes"].as_sequence() {
            for v in vols {
                let host = s(v).split(':').next().unwrap().to_string();
                assert!(
                    root().join(&host).exists(),
                    "{} mounts missing {host}",
                    s(name)
                );
            }
        }
    }
    let conf_mount = svc("gateway")["volumes"][0].as_str().unwrap().to_string();
    let (host, target) = conf_mount.split_once(':').unwrap();
    let target = target.trim_end_matches(":ro");
    assert_eq!(
        s(&svc("gateway")["command"][1]),
        target,
        "the gateway reads the mounted conf"
    );
    let (http, metrics) = check_conf(&std::fs::read_to_string(root().join(host)).unwrap());
    assert_eq!(
        s(&svc("gateway")["environment"]["HTTP_PORT"]),
        http.to_string()
    );
    assert_eq!(
        s(&svc("gateway")["environment"]["METRICS_PORT"]),
        metrics.to_string()
    );
    assert!(ports("gateway").contains(&format!("{http}:{http}")));
    assert!(ports("gateway").contains(&format!("{metrics}:{metrics}")));
    // The admin API: published on the host's loopback only, on the port the conf names.
    let conf: Value =
        serde_yaml::from_str(&std::fs::read_to_string(root().join(host)).unwrap()).unwrap();
    let admin = listen_port(&conf["gateway"]["admin"]["listen"]);
    assert_eq!(
        s(&svc("gateway")["environment"]["ADMIN_PORT"]),
        admin.to_string()
    );
    assert!(ports("gateway").contains(&format!("127.0.0.1:{admin}:{admin}")));
    assert_eq!(ports("prometheus"), vec!["9090:9090"]);
    assert_eq!(ports("grafana"), vec!["3000:3000"]);
    assert_eq!(
        s(&svc("grafana")["environment"]["GF_SECURITY_ADMIN_PASSWORD"]),
        "admin"
    );

    // depends_on waits for healthchecks that exist.
    for (dep, cond) in svc("gateway")["depends_on"].as_mapping().unwrap() {
        assert_eq!(s(&cond["condition"]), "service_healthy");
        assert!(
            svc(&s(dep))["healthcheck"]["test"].is_sequence(),
            "{} has no healthcheck",
            s(dep)
        );
    }

    // The Dockerfile: stages referenced exist, copied sources exist, the binaries compose runs
    // are built, and the runtime is non-root with the right signal, ports and health check.
    let build = &svc("gateway")["build"];
    let context = root().join(s(&build["context"]));
    let dockerfile_path = context.join(s(&build["dockerfile"]));
    let dockerfile = std::fs::read_to_string(&dockerfile_path).expect("Dockerfile");
    let mut stages = BTreeSet::new();
    let mut last_user = String::new();
    for line in dockerfile.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.first().copied() {
            Some("FROM") => {
                if let Some(i) = words.iter().position(|w| w.eq_ignore_ascii_case("AS")) {
                    stages.insert(words[i + 1].to_string());
                }
            }
            Some("COPY") => {
                if let Some(from) = words.iter().find_map(|w| w.strip_prefix("--from=")) {
                    assert!(stages.contains(from), "COPY --from={from}: no such stage");
                } else {
                    for src in &words[1..words.len() - 1] {
                        assert!(context.join(src).exists(), "COPY source {src} is missing");
                    }
                }
            }
            Some("USER") => last_user = words[1].to_string(),
            _ => {}
        }
    }
    assert!(stages.contains("builder") && stages.contains("runtime"));
    assert!(
        !last_user.is_empty() && last_user != "root" && last_user != "0",
        "runs as root"
    );
    assert!(dockerfile.contains("STOPSIGNAL SIGTERM"));
    assert!(dockerfile.contains("EXPOSE 8080 9091"));
    // Exec form, honouring HTTP_PORT (`gateway health`): no shell, no curl in the image.
    assert!(
        dockerfile.contains("HEALTHCHECK") && dockerfile.contains("CMD [\"gateway\", \"health\"]")
    );
    assert!(
        !dockerfile.contains("FROM rust:1-") && !dockerfile.contains(":latest"),
        "pinned bases"
    );
    assert!(
        dockerfile.contains("echo 'fn main() {}' > src/main.rs"),
        "a dependency layer built before the sources are copied"
    );
    assert!(dockerfile.contains("apt-get install -y --no-install-recommends cmake"));
    assert!(dockerfile.contains("-p gateway -p mocks"));
    assert_eq!(s(&svc("mocks")["entrypoint"][0]), "mocks");
    assert!(dockerfile.contains("/usr/local/bin/mocks"));
    assert!(dockerfile.contains("COPY deploy/container.yaml /etc/gateway/gateway.yaml"));
    let lint = root().join("target/lintenv/bin/hadolint");
    let out = Command::new(&lint)
        .arg(&dockerfile_path)
        .output()
        .expect("hadolint (make test installs tests/requirements-lint.txt)");
    assert!(
        out.status.success(),
        "hadolint: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(s(&svc("mocks")["environment"]["MOCKS_HOST"]), "0.0.0.0");

    // Prometheus scrapes the compose gateway's metrics port; Grafana finds Prometheus and the
    // dashboards where compose mounts them.
    let prom = yaml("deploy/prometheus/prometheus.yml");
    assert_eq!(
        s(&prom["scrape_configs"][0]["static_configs"][0]["targets"][0]),
        format!("gateway:{metrics}")
    );
    assert_eq!(s(&prom["global"]["scrape_interval"]), "5s");
    let out = Command::new("promtool")
        .args(["check", "rules"])
        .arg(root().join("deploy/prometheus/alerts.yml"))
        .output()
        .expect("promtool");
    assert!(
        out.status.success(),
        "promtool check rules: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Every alert fires on the series that mean trouble and not on healthy ones.
    let out = Command::new("promtool")
        .args(["test", "rules", "alerts_test.yml"])
        .current_dir(root().join("deploy/prometheus"))
        .output()
        .expect("promtool");
    assert!(
        out.status.success(),
        "promtool test rules: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new("promtool")
        .args(["check", "config"])
        .arg(root().join("deploy/prometheus/prometheus.yml"))
        .output()
        .expect("promtool is installed (make test installs the prometheus package)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ds = yaml("deploy/grafana/provisioning/datasources/prometheus.yml");
    assert_eq!(s(&ds["datasources"][0]["url"]), "http://prometheus:9090");
    let dashboards = yaml("deploy/grafana/provisioning/dashboards/dashboards.yml");
    let dash_path = s(&dashboards["providers"][0]["options"]["path"]);
    let grafana_vols: Vec<String> = svc("grafana")["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(s)
        .collect();
    assert!(
        grafana_vols
            .iter()
            .any(|v| v.contains(&format!(":{dash_path}"))),
        "{grafana_vols:?}"
    );
}

fn kubernetes_validate() -> PathBuf {
    let local = root().join("target/pyenv/bin/kubernetes-validate");
    if local.exists() {
        local
    } else {
        PathBuf::from("kubernetes-validate")
    }
}

#[test]
fn kubernetes_manifests_validate_and_agree_with_the_code() {
    let dir = root().join("deploy/k8s");
    let kustomization = yaml("deploy/k8s/kustomization.yaml");
    let files: Vec<PathBuf> = kustomization["resources"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|r| dir.join(s(r)))
        .collect();
    for f in &files {
        assert!(f.exists(), "kustomization lists missing {}", f.display());
    }
    let out = Command::new(kubernetes_validate())
        .args(["--strict"])
        .args(&files)
        .output()
        .expect("kubernetes-validate is installed (make test installs it)");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let docs: Vec<Value> = files.iter().flat_map(|f| yaml_docs(f)).collect();
    let find = |kind: &str, name: &str| -> &Value {
        docs.iter()
            .find(|d| s(&d["kind"]) == kind && s(&d["metadata"]["name"]) == name)
            .unwrap_or_else(|| panic!("no {kind}/{name}"))
    };
    let cm = find("ConfigMap", "gateway-config");
    let conf_text = s(&cm["data"]["gateway.yaml"]);
    let (http, metrics) = check_conf(&conf_text);
    let conf: Value = serde_yaml::from_str(&conf_text).unwrap();
    let grace: u64 = s(&conf["grace_period_seconds"]).parse().unwrap();

    let deploy = find("Deployment", "gateway");
    let spec = &deploy["spec"]["template"]["spec"];
    assert_eq!(s(&deploy["spec"]["replicas"]), "3");
    let c = &spec["containers"][0];
    let ports: HashMap<String, u16> = c["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|p| (s(&p["name"]), s(&p["containerPort"]).parse().unwrap()))
        .collect();
    assert_eq!(ports["http"], http);
    assert_eq!(ports["metrics"], metrics);
    assert_eq!(s(&c["readinessProbe"]["httpGet"]["path"]), "/readyz");
    assert_eq!(s(&c["livenessProbe"]["httpGet"]["path"]), "/healthz");
    for probe in ["readinessProbe", "livenessProbe"] {
        assert!(
            ports.contains_key(&s(&c[probe]["httpGet"]["port"])),
            "{probe} port"
        );
    }
    assert!(
        c["resources"]["requests"]["cpu"].is_string()
            && c["resources"]["limits"]["memory"].is_string()
    );
    for e in c["env"].as_sequence().unwrap() {
        assert!(
            ENV_VARS.contains(&s(&e["name"]).as_str()),
            "env {} is not read by the gateway",
            s(&e["name"])
        );
    }
    for var in ["JWT_SECRET", "ADMIN_TOKEN"] {
        let secret_ref = c["env"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|e| s(&e["name"]) == var)
            .unwrap_or_else(|| panic!("{var} env"));
        let secret = find(
            "Secret",
            &s(&secret_ref["valueFrom"]["secretKeyRef"]["name"]),
        );
        assert!(
            secret["stringData"][s(&secret_ref["valueFrom"]["secretKeyRef"]["key"]).as_str()]
                .is_string()
        );
    }
    // The admin API: on the port the conf names, behind its own Service, never the client one.
    let admin_port = listen_port(&conf["gateway"]["admin"]["listen"]);
    assert_eq!(ports["admin"], admin_port);
    let service_ports = |name: &str| -> Vec<String> {
        find("Service", name)["spec"]["ports"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|p| s(&p["targetPort"]))
            .collect()
    };
    assert_eq!(service_ports("gateway-admin"), ["admin"]);
    assert!(!service_ports("gateway").contains(&"admin".to_string()));
    // The collector's address comes from an optional ConfigMap key: absent, tracing is off.
    let otel = c["env"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|e| s(&e["name"]) == "OTEL_EXPORTER_OTLP_ENDPOINT")
        .expect("OTEL_EXPORTER_OTLP_ENDPOINT env");
    let cm_ref = &otel["valueFrom"]["configMapKeyRef"];
    assert_eq!(cm_ref["optional"].as_bool(), Some(true));
    find("ConfigMap", &s(&cm_ref["name"]));
    let pre_stop: u64 = s(&c["lifecycle"]["preStop"]["exec"]["command"][1])
        .parse()
        .unwrap();
    let termination: u64 = s(&spec["terminationGracePeriodSeconds"]).parse().unwrap();
    assert!(
        termination > pre_stop + grace,
        "drain time must exceed preStop + grace period"
    );
    let mount = c["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|m| s(&m["name"]) == "config")
        .unwrap();
    assert_eq!(
        format!("{}/gateway.yaml", s(&mount["mountPath"])),
        s(&c["args"][1])
    );

    let svc = find("Service", "gateway");
    for p in svc["spec"]["ports"].as_sequence().unwrap() {
        assert!(
            ports.contains_key(&s(&p["targetPort"])),
            "service targets unknown port"
        );
    }
    let labels = &deploy["spec"]["template"]["metadata"]["labels"];
    for sel in [
        &svc["spec"]["selector"],
        &find("PodDisruptionBudget", "gateway")["spec"]["selector"]["matchLabels"],
    ] {
        for (k, v) in sel.as_mapping().unwrap() {
            assert_eq!(
                &labels[s(k).as_str()],
                v,
                "selector does not match the pods"
            );
        }
    }
    let hpa = find("HorizontalPodAutoscaler", "gateway");
    assert_eq!(s(&hpa["spec"]["scaleTargetRef"]["name"]), "gateway");
    assert_eq!(s(&hpa["spec"]["metrics"][0]["resource"]["name"]), "cpu");
    // REDIS_ADDR reaches the StatefulSet's pods: its host is a Service that selects them, its
    // port is that Service's port, which targets the port the container listens on.
    let redis_env = c["env"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|e| s(&e["name"]) == "REDIS_ADDR")
        .unwrap();
    let addr = s(&redis_env["value"]);
    let (host, port) = addr.split_once(':').expect("REDIS_ADDR is host:port");
    let sts = find("StatefulSet", "redis");
    let redis_svc = find("Service", host);
    assert_eq!(
        s(&sts["spec"]["serviceName"]),
        host,
        "the StatefulSet's service"
    );
    let pod_labels = &sts["spec"]["template"]["metadata"]["labels"];
    for (k, v) in redis_svc["spec"]["selector"].as_mapping().unwrap() {
        assert_eq!(
            &pod_labels[s(k).as_str()],
            v,
            "redis Service selects the pods"
        );
    }
    let svc_port = redis_svc["spec"]["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|p| p["port"].as_u64().map(|n| n.to_string()) == Some(port.to_string()))
        .expect("REDIS_ADDR's port is a port of the redis Service");
    let container_ports = &sts["spec"]["template"]["spec"]["containers"][0]["ports"];
    assert!(
        container_ports
            .as_sequence()
            .unwrap()
            .iter()
            .any(|p| p["name"] == svc_port["targetPort"]
                || p["containerPort"] == svc_port["targetPort"]),
        "the Service targets a port the redis container listens on"
    );
    let mock_svc = find("Service", "mocks");
    let mock_ports: Vec<String> = mock_svc["spec"]["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|p| s(&p["port"]))
        .collect();
    assert_eq!(mock_ports, vec!["8081", "8082", "8083", "8084", "8085"]);
    // The gateway trusts the mocks' provider under the name the provider puts in its tokens.
    let mocks = find("Deployment", "mocks");
    let env = &mocks["spec"]["template"]["spec"]["containers"][0]["env"];
    let idp_issuer = env
        .as_sequence()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "IDP_ISSUER")
        .map(|e| s(&e["value"]))
        .expect("the mocks' IDP_ISSUER");
    assert_eq!(
        s(&conf["gateway"]["auth"]["issuers"][0]["issuer"]),
        idp_issuer
    );
    assert_eq!(idp_issuer, "http://mocks:8085");
}

/// Metric names a PromQL expression selects (`name{…}` or `name[…]`).
fn metric_names(expr: &str) -> Vec<String> {
    let bytes = expr.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        if c.is_ascii_alphabetic() || c == b'_' {
            let start = i;
            while i < bytes.len()
                && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_' || bytes[i] == b':')
            {
                i += 1;
            }
            let name = &expr[start..i];
            let prev = if start > 0 { bytes[start - 1] } else { b' ' };
            let in_string = expr[..start].matches('"').count() % 2 == 1;
            if !in_string
                && prev != b'{'
                && prev != b','
                && matches!(bytes.get(i), Some(b'{') | Some(b'['))
            {
                out.push(name.to_string());
            }
        } else {
            i += 1;
        }
    }
    out
}

fn dashboard_queries() -> Vec<String> {
    let text =
        std::fs::read_to_string(root().join("deploy/grafana/dashboards/gateway.json")).unwrap();
    let dash: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(dash["panels"][0]["datasource"]["uid"], "prometheus");
    dash["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .map(|t| t["expr"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn dashboard_queries_work_against_a_live_gateway() {
    let redis = Redis::start();
    let mocks = Mocks::start(&["user", "order", "product", "recommendation"]);
    let mut env = service_env(&mocks);
    env.push(("REDIS_ADDR", redis.addr()));
    // With an HTTPS listener, so the certificate panel has its series.
    let ca = common::TestCa::new();
    let leaf = ca.leaf("site", &["site.test"], 30);
    // The profile with an in-process tier, so the cache panel's series exist.
    let aggregate = common::profile_aggregate_with(
        10_000,
        r#"ttl_seconds: 30, key: "profile:{id}", local: {}"#,
    );
    let section = format!(
        "rate_limit: {{ per_minute: 1000 }}\nupstreams:\n  users:\n    backends: [\"{}\"]\nroutes:\n  - {{ prefix: \"/users/\", upstream: users }}\ntls:\n  listen: \"127.0.0.1:{}\"\n  certificates: [{{ cert: \"{}\", key: \"{}\" }}]\n{aggregate}",
        mocks.addr("user"),
        free_port(),
        leaf.cert.display(),
        leaf.key.display()
    );
    let gw = Gateway::start(&section, &env).await;
    let t = token("1");
    for path in ["/api/profile/1", "/api/profile/1", "/users/1"] {
        let r = client()
            .get(gw.url(path))
            .bearer_auth(&t)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
    }
    let r = client()
        .get(gw.url("/users/1"))
        .bearer_auth("bad")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    let scrape = gw.metrics().await;
    let mut check = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool");
    {
        use std::io::Write;
        check
            .stdin
            .take()
            .unwrap()
            .write_all(scrape.as_bytes())
            .unwrap();
    }
    let out = check.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let queries = dashboard_queries();
    assert!(queries.len() >= 10);
    for q in &queries {
        let names = metric_names(q);
        assert!(!names.is_empty(), "no metric found in {q}");
        for n in names {
            assert!(
                scrape
                    .lines()
                    .any(|l| l.starts_with(&format!("{n}{{")) || l.starts_with(&format!("{n} "))),
                "dashboard uses {n}, which /metrics does not export"
            );
        }
    }

    // A real Prometheus scrapes the gateway and evaluates every dashboard query.
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let conf = dir.path().join("prometheus.yml");
    std::fs::write(
        &conf,
        format!(
            "global: {{ scrape_interval: 1s }}\nscrape_configs:\n  - job_name: gateway\n    static_configs:\n      - targets: [\"127.0.0.1:{}\"]\n",
            gw.metrics_port
        ),
    )
    .unwrap();
    // Installed by `make test`.
    let _prom = Proc::spawn(
        "prometheus",
        Command::new("prometheus")
            .arg(format!("--config.file={}", conf.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}")),
    );
    let query = async |q: &str| -> serde_json::Value {
        match client()
            .get(format!("http://127.0.0.1:{port}/api/v1/query"))
            .query(&[("query", q)])
            .send()
            .await
        {
            Ok(r) => r.json().await.unwrap_or(serde_json::Value::Null),
            Err(_) => serde_json::Value::Null,
        }
    };
    eventually(
        "prometheus scraped the gateway twice",
        Duration::from_secs(30),
        async || {
            let v = query("count_over_time(up{job=\"gateway\"}[1m])").await;
            v["data"]["result"][0]["value"][1]
                .as_str()
                .is_some_and(|n| n.parse::<f64>().unwrap_or(0.0) >= 2.0)
        },
    )
    .await;
    for q in &queries {
        let v = query(q).await;
        assert_eq!(v["status"], "success", "{q}: {v}");
    }
    let v = query("sum(http_requests_total{job=\"gateway\"})").await;
    let total: f64 = v["data"]["result"][0]["value"][1]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(total >= 4.0, "prometheus sees the traffic: {v}");
}

#[test]
fn metric_names_are_extracted_from_promql() {
    assert_eq!(
        metric_names(r#"sum(rate(a_total{status=~"5.."}[5m])) / sum(rate(b_total[5m]))"#),
        vec!["a_total", "b_total"]
    );
    assert_eq!(
        metric_names("histogram_quantile(0.9, sum by (le) (rate(h_bucket[5m])))"),
        vec!["h_bucket"]
    );
}

/// Versions below these carry request-smuggling (pingora-core) and claim-type (jsonwebtoken)
/// advisories.
#[test]
fn lockfile_has_no_known_vulnerable_versions() {
    let lock = std::fs::read_to_string(root().join("Cargo.lock")).expect("Cargo.lock is committed");
    let lock: toml_like::Lock = toml_like::parse(&lock);
    for (name, min) in [("pingora-core", (0, 8, 0)), ("jsonwebtoken", (10, 3, 0))] {
        let versions = lock.versions(name);
        assert!(!versions.is_empty(), "{name} is not in Cargo.lock");
        for v in versions {
            assert!(v >= min, "{name} {v:?} is below {min:?}");
        }
    }
}

/// Just enough of Cargo.lock's format: `[[package]]` blocks with `name` and `version`.
mod toml_like {
    pub struct Lock(Vec<(String, (u64, u64, u64))>);

    pub fn parse(text: &str) -> Lock {
        let mut out = Vec::new();
        let mut name = None;
        for line in text.lines() {
            if line == "[[package]]" {
                name = None;
            } else if let Some(n) = line.strip_prefix("name = ") {
                name = Some(n.trim_matches('"').to_string());
            } else if let (Some(v), Some(n)) = (line.strip_prefix("version = "), name.take()) {
                let mut parts = v
                    .trim_matches('"')
                    .split(['.', '-', '+'])
                    .map(|p| p.parse().unwrap_or(0));
                let v = (
                    parts.next().unwrap_or(0),
                    parts.next().unwrap_or(0),
                    parts.next().unwrap_or(0),
                );
                out.push((n, v));
            }
        }
        Lock(out)
    }

    impl Lock {
        pub fn versions(&self, name: &str) -> Vec<(u64, u64, u64)> {
            self.0
                .iter()
                .filter(|(n, _)| n == name)
                .map(|(_, v)| *v)
                .collect()
        }
    }
}

#[test]
fn the_kubernetes_manifests_pass_checkov_with_every_skip_explained() {
    let out = Command::new(root().join("target/lintenv/bin/checkov"))
        .args([
            "-d",
            "deploy/k8s",
            "--framework",
            "kubernetes",
            "--compact",
            "--skip-download",
        ])
        .current_dir(root())
        .output()
        .expect("checkov (make test installs tests/requirements-lint.txt)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Failed checks: 0,"), "checkov: {text}");
    // Each accepted finding carries its reason (`checkov.io/skipN: ID=why`).
    for f in std::fs::read_dir(root().join("deploy/k8s")).unwrap() {
        let text = std::fs::read_to_string(f.unwrap().path()).unwrap();
        for line in text.lines().filter(|l| l.contains("checkov.io/skip")) {
            let why = line.split_once('=').map_or("", |(_, w)| w.trim());
            assert!(why.len() > 20, "a skip without a reason: {line}");
        }
    }
}

#[tokio::test]
async fn the_images_conf_becomes_ready_alone_and_its_health_check_follows_http_port() {
    let dir = tempfile::tempdir().unwrap();
    let (port, metrics) = (common::free_port(), common::free_port());
    let mut gw = common::Proc::spawn(
        "gateway (container conf)",
        Command::new(common::gateway_bin())
            .args(["-c"])
            .arg(root().join("deploy/container.yaml"))
            .current_dir(dir.path())
            .env("JWT_SECRET", common::SECRET)
            .env("HTTP_PORT", port.to_string())
            .env("METRICS_PORT", metrics.to_string())
            .env("RUST_LOG", "warn"),
    );
    let url = format!("http://127.0.0.1:{port}/readyz");
    common::eventually(
        "ready with nothing else running",
        std::time::Duration::from_secs(30),
        async || reqwest::get(&url).await.is_ok_and(|r| r.status() == 200),
    )
    .await;
    let health = |port: Option<u16>| {
        let mut cmd = Command::new(common::gateway_bin());
        cmd.arg("health").env_remove("HTTP_PORT");
        if let Some(p) = port {
            cmd.env("HTTP_PORT", p.to_string());
        }
        cmd.status().unwrap().code()
    };
    assert_eq!(health(Some(port)), Some(0));
    assert_eq!(health(Some(common::free_port())), Some(1), "nothing there");
    gw.kill();
}
