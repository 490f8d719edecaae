//! The resolved configuration checked as a whole: every problem reported at once.

use super::ServeConfig;
use anyhow::bail;

impl ServeConfig {
    /// Why this configuration would serve without authentication where others can reach it
    /// (`--auth none` on an address other than loopback, without `--insecure-no-auth`).
    fn unprotected(&self) -> Vec<String> {
        use control::auth::AuthMode;
        if self.auth.mode != AuthMode::None || self.insecure_no_auth {
            return Vec::new();
        }
        let mut problems: Vec<String> = [
            ("ingress-listen", self.ingress_listen),
            ("api-listen", self.api_listen),
        ]
        .into_iter()
        .filter(|(_, addr)| !addr.ip().is_loopback())
        .map(|(flag, addr)| {
            format!(
                "{flag}: {addr} is not a loopback address and auth is none: anyone who can reach it \
                 could change every resource and read every event. Use --auth tokens (README, \
                 \"Security\"), listen on 127.0.0.1, or pass --insecure-no-auth to accept this"
            )
        })
        .collect();
        if self.auth.admin_token_file.is_some() {
            problems.push("admin-token-file: used only with --auth tokens".to_string());
        }
        problems
    }

    /// Reports every problem at once.
    pub(super) fn validate(&self, mut problems: Vec<String>) -> anyhow::Result<()> {
        problems.extend(self.unprotected());
        if let Some(k) = &self.kafka {
            // librdkafka wants it longer than the producer's 1 ms linger.
            if k.produce_timeout.is_some_and(|t| t.as_millis() < 10) {
                problems.push("kafka-produce-timeout: must be at least 10ms".to_string());
            }
        }
        if let Some(endpoint) = &self.otlp_endpoint {
            let http = url::Url::parse(endpoint)
                .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.has_host());
            if !http {
                problems.push(format!(
                    "otlp-endpoint: {endpoint:?} is not an http(s) URL (e.g. http://127.0.0.1:4318)"
                ));
            }
        }
        if !(1..=1024).contains(&self.partitions) {
            problems.push(format!(
                "partitions: {} must be between 1 and 1024",
                self.partitions
            ));
        }
        for (name, zero) in [
            (
                "ingress-max-connections",
                self.ingress_server.max_connections == 0,
            ),
            ("ingress-max-in-flight", self.ingress.max_in_flight == 0),
            (
                "ingress-max-buffered-bytes",
                self.ingress.max_buffered_bytes < 1024,
            ),
            (
                "ingress-header-timeout",
                self.ingress_server.header_timeout.is_zero(),
            ),
            ("ingress-body-timeout", self.ingress.body_timeout.is_zero()),
        ] {
            if zero {
                problems.push(format!("{name}: too small (at least 1, or 1024 bytes)"));
            }
        }
        if self.pipelines_max_running_tasks == 0 {
            problems.push("pipelines-max-running-tasks must be at least 1".into());
        }
        if self.pipelines_max_result_size == 0 {
            problems.push("pipelines-max-result-size must be at least 1 byte".into());
        }
        if self.max_event_size == 0 {
            problems.push("max-event-size: must be greater than 0".to_string());
        }
        if self.retention.is_zero() {
            problems.push("retention: must be greater than 0".to_string());
        }
        if self.dead_letter_retention.is_zero() {
            problems.push("dead-letter-retention: must be greater than 0".to_string());
        }
        if let Some(k) = &self.kafka {
            if k.bootstrap.trim().is_empty() {
                problems.push("kafka: the bootstrap servers are empty".to_string());
            }
            if k.replication_factor < 1 {
                problems.push(format!(
                    "kafka-replication-factor: {} must be at least 1",
                    k.replication_factor
                ));
            }
            if let Some(m) = k.min_insync_replicas {
                if m < 1 || m > k.replication_factor {
                    problems.push(format!(
                        "kafka-min-insync-replicas: {m} must be between 1 and the replication factor ({})",
                        k.replication_factor
                    ));
                }
            }
        }
        if let Some(url) = &self.ingress_url {
            if url::Url::parse(url).is_err() {
                problems.push(format!("ingress-url: {url:?} is not a URL"));
            }
        }
        let domain = &self.serving_domain;
        if domain.is_empty()
            || domain
                .split('.')
                .any(|l| control::resource::dns_label_problem(l).is_some())
        {
            problems.push(format!(
                "serving-domain: {domain:?} is not a domain (DNS labels joined by dots)"
            ));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            bail!("invalid configuration:\n  {}", problems.join("\n  "))
        }
    }
}
