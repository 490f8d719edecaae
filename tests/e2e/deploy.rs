//! deploy/: the Grafana dashboard and the compose file's monitoring wiring refer to what Ferry
//! really exports and to files that exist.

use std::collections::BTreeSet;
use std::path::Path;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The `ferry_*` metric names in `text` (a histogram's `_bucket` series as the histogram).
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("ferry_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        // A histogram's series are the histogram.
        let name = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        names.insert(name.to_string());
        rest = &tail[end..];
    }
    names
}

#[test]
fn the_dashboard_shows_only_documented_metrics() {
    let text = std::fs::read_to_string(root().join("deploy/grafana/ferry-dashboard.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).unwrap();
    let used = metric_names(&text);
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let documented: BTreeSet<String> = readme
        .lines()
        .filter(|l| l.starts_with("| `ferry_"))
        .flat_map(metric_names)
        .collect();
    let missing: Vec<_> = used.difference(&documented).collect();
    assert!(
        missing.is_empty(),
        "not in README's metrics table: {missing:?}"
    );
    // What the issue asks to see: ingest rate and latency, deliveries by outcome, lag, retry
    // queue and dead letters per trigger.
    for needed in [
        "ferry_ingress_events_total",
        "ferry_ingress_request_seconds",
        "ferry_dispatch_deliveries_total",
        "ferry_dispatch_lag",
        "ferry_dispatch_retry_queue",
        "ferry_dispatch_dead_letter_store",
    ] {
        assert!(used.contains(needed), "the dashboard lacks {needed}");
    }
    assert!(dashboard["panels"].as_array().unwrap().len() > 6);
}

#[test]
fn compose_wires_prometheus_grafana_and_a_trace_collector() {
    let compose = root().join("deploy/compose");
    let text = std::fs::read_to_string(compose.join("docker-compose.yaml")).unwrap();
    let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).unwrap();
    let services = doc["services"].as_mapping().unwrap();
    for s in ["prometheus", "grafana", "jaeger"] {
        assert!(services.contains_key(s), "no {s} service");
    }
    // Every file a service mounts exists.
    for service in services.values() {
        for volume in service["volumes"].as_sequence().into_iter().flatten() {
            let host = volume.as_str().unwrap().split(':').next().unwrap();
            assert!(compose.join(host).exists(), "{host} is mounted but missing");
        }
    }
    let scrape = std::fs::read_to_string(compose.join("prometheus.yml")).unwrap();
    let scrape: serde_yaml_ng::Value = serde_yaml_ng::from_str(&scrape).unwrap();
    let targets = &scrape["scrape_configs"][0]["static_configs"][0]["targets"];
    for node in ["ferry-1", "ferry-2", "ferry-3"] {
        assert!(services.contains_key(node));
        assert!(
            targets
                .as_sequence()
                .unwrap()
                .iter()
                .any(|t| t.as_str() == Some(&format!("{node}:8090"))),
            "{node} is not scraped"
        );
    }
}

/// Safe by default: auth on, the admin token from a secret, the control API published
/// nowhere, probes and scraping on the ops port, a NetworkPolicy guarding the API.
#[test]
fn deploy_is_safe_by_default() {
    let docker = std::fs::read_to_string(root().join("deploy/Dockerfile")).unwrap();
    assert!(
        docker.contains("FERRY_AUTH=tokens"),
        "the image turns auth on"
    );
    assert!(docker.contains("FERRY_OPS_LISTEN=0.0.0.0:8090"));
    let expose = docker.lines().find(|l| l.starts_with("EXPOSE")).unwrap();
    assert!(
        !expose.contains("8081"),
        "the image exposes the API: {expose}"
    );

    let compose =
        std::fs::read_to_string(root().join("deploy/compose/docker-compose.yaml")).unwrap();
    let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(&compose).unwrap();
    assert!(doc["secrets"]["ferry-admin-token"].is_mapping());
    for node in ["ferry-1", "ferry-2", "ferry-3"] {
        let service = &doc["services"][node];
        for port in service["ports"].as_sequence().into_iter().flatten() {
            let port = port.as_str().unwrap();
            assert!(!port.ends_with(":8081"), "{node} publishes the API: {port}");
        }
    }
    // The merged anchor gives every node the secret.
    assert!(compose.contains("FERRY_ADMIN_TOKEN_FILE: /run/secrets/ferry-admin-token"));

    for file in ["embedded.yaml", "kafka.yaml"] {
        let text = std::fs::read_to_string(root().join("deploy/kubernetes").join(file)).unwrap();
        let docs: Vec<serde_yaml_ng::Value> = serde_yaml_ng::Deserializer::from_str(&text)
            .map(|d| serde::Deserialize::deserialize(d).unwrap())
            .collect();
        let of_kind = |kind: &str| docs.iter().find(|d| d["kind"].as_str() == Some(kind));
        let service = of_kind("Service").unwrap();
        for port in service["spec"]["ports"].as_sequence().unwrap() {
            assert_ne!(
                port["targetPort"].as_i64(),
                Some(8081),
                "{file}: the Service exposes the API"
            );
        }
        let workload = of_kind("StatefulSet")
            .or_else(|| of_kind("Deployment"))
            .unwrap();
        let container = &workload["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(
            container["readinessProbe"]["httpGet"]["port"].as_str(),
            Some("ops"),
            "{file}"
        );
        assert_eq!(
            container["livenessProbe"]["httpGet"]["port"].as_str(),
            Some("ops"),
            "{file}"
        );
        let env = container["env"].as_sequence().unwrap();
        assert!(
            env.iter()
                .any(|e| e["name"].as_str() == Some("FERRY_ADMIN_TOKEN_FILE")),
            "{file}"
        );
        let volumes = workload["spec"]["template"]["spec"]["volumes"]
            .as_sequence()
            .unwrap();
        assert!(
            volumes
                .iter()
                .any(|v| v["secret"]["secretName"].as_str() == Some("ferry-admin-token")),
            "{file}"
        );
        let policy = of_kind("NetworkPolicy").unwrap_or_else(|| panic!("{file}: no NetworkPolicy"));
        let rules = policy["spec"]["ingress"].as_sequence().unwrap();
        let api_rule = rules
            .iter()
            .find(|r| r["ports"][0]["port"].as_i64() == Some(8081))
            .unwrap_or_else(|| panic!("{file}: no rule for the API port"));
        assert!(
            api_rule["from"].is_sequence(),
            "{file}: the API is open to every pod"
        );
    }
}
