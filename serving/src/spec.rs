//! The shapes users write (`serving.knative.dev/v1`): a revision template (its metadata and a
//! pod-like spec with one container run as a local process) and traffic targets; and their
//! validation, every problem named with its field path.

use crate::autoscaler::{Defaults, Scaling};
use control::resource::dns_label_problem;
use control::FieldErrors;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::Duration;

/// Knative's `max-revision-timeout-seconds`.
pub const MAX_TIMEOUT_SECONDS: u64 = 600;
/// Knative's `revision-timeout-seconds`.
pub const DEFAULT_TIMEOUT_SECONDS: u64 = 300;
/// config-defaults `container-concurrency-max-limit`.
pub const MAX_CONTAINER_CONCURRENCY: u32 = 1000;
/// Environment variables the platform sets; a container may not set them.
const RESERVED_ENV: &[&str] = &["PORT", "K_SERVICE", "K_CONFIGURATION", "K_REVISION"];

/// `spec.template` of a Service or Configuration.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Template {
    #[serde(default)]
    pub metadata: TemplateMetadata,
    pub spec: RevisionSpec,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TemplateMetadata {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// A Revision's spec (the template's `spec`): what an instance runs.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RevisionSpec {
    pub containers: Vec<Container>,
    /// Most requests one instance handles at once; 0 (the default): no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_concurrency: Option<u32>,
    /// Longest a request may take (default 300, at most 600).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<u64>,
    /// Kept and shown; a local process runs as Ferry's user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
}

impl RevisionSpec {
    pub fn container_concurrency(&self) -> u32 {
        self.container_concurrency.unwrap_or(0)
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_seconds.unwrap_or(DEFAULT_TIMEOUT_SECONDS))
    }
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Container {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Kept and shown; a local runner does not pull it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    /// Ignored for binding: the process is told its port in `PORT`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<Port>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readiness_probe: Option<Probe>,
    /// Kept and shown (requests and limits of a container).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Value>,
}

pub use control::resource::EnvVar;

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Port {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_port: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
}

/// A readiness probe: an HTTP GET of a path, or (the default) a TCP connect, on `PORT`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Probe {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_get: Option<HttpGet>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_socket: Option<Value>,
    /// 0 (the default): probe aggressively at start (every 10 ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period_seconds: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_delay_seconds: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_threshold: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success_threshold: Option<u32>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpGet {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Ignored: probes go to `PORT`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_headers: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
}

/// One traffic target of a Route or Service.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrafficTarget {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub configuration_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest_revision: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<u32>,
    /// Status only; ignored in a spec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

impl TrafficTarget {
    /// `latestRevision` defaults to "no revisionName".
    pub fn follows_latest(&self) -> bool {
        self.latest_revision.unwrap_or(self.revision_name.is_none())
    }
}

/// Checks a template at `path` (`spec.template`); the owner's name for a user-given revision
/// name. Returns the decoded template when it decodes.
pub fn validate_template(
    path: &str,
    value: Option<&Value>,
    owner: &str,
    defaults: &Defaults,
    errors: &mut FieldErrors,
) -> Option<Template> {
    let Some(value) = value else {
        errors.push(path, "required");
        return None;
    };
    let t: Template = errors.decode(path, value)?;
    if let Some(name) = &t.metadata.name {
        if let Some(p) = dns_label_problem(name) {
            errors.push(&format!("{path}.metadata.name"), p);
        } else if !name.starts_with(&format!("{owner}-")) {
            errors.push(
                &format!("{path}.metadata.name"),
                format!("a revision name must start with {owner:?} and a dash"),
            );
        }
    }
    check_spec(
        &format!("{path}.spec"),
        &t.spec,
        &t.metadata.annotations,
        &format!("{path}.metadata.annotations"),
        defaults,
        errors,
    );
    Some(t)
}

/// Checks a revision's spec at `path`, and its annotations (at `annotations_path`).
pub fn check_spec(
    path: &str,
    spec: &RevisionSpec,
    annotations: &BTreeMap<String, String>,
    annotations_path: &str,
    defaults: &Defaults,
    errors: &mut FieldErrors,
) {
    let cpath = format!("{path}.containers");
    match spec.containers.len() {
        0 => errors.push(&cpath, "one container is required"),
        1 => {}
        _ => errors.push(
            &cpath,
            "exactly one container: Ferry runs one process per instance",
        ),
    }
    for (i, c) in spec.containers.iter().enumerate() {
        let here = format!("{cpath}[{i}]");
        if c.command.is_empty() || c.command[0].is_empty() {
            errors.push(
                &format!("{here}.command"),
                "required: Ferry runs the command as a local process and has no image to take an entrypoint from",
            );
        }
        for (j, e) in c.env.iter().enumerate() {
            if e.name.is_empty() || e.name.contains('=') || e.name.contains('\0') {
                errors.push(
                    &format!("{here}.env[{j}].name"),
                    "must be a non-empty name without '='",
                );
            } else if RESERVED_ENV.contains(&e.name.as_str()) {
                errors.push(
                    &format!("{here}.env[{j}].name"),
                    format!("{} is reserved: Ferry sets it", e.name),
                );
            }
        }
        if c.ports.len() > 1 {
            errors.push(&format!("{here}.ports"), "at most one port");
        }
        if let Some(p) = &c.readiness_probe {
            if p.http_get.is_some() && p.tcp_socket.is_some() {
                errors.push(
                    &format!("{here}.readinessProbe"),
                    "httpGet and tcpSocket are mutually exclusive",
                );
            }
            if let Some(path) = p.http_get.as_ref().and_then(|h| h.path.as_ref()) {
                if !path.starts_with('/') {
                    errors.push(
                        &format!("{here}.readinessProbe.httpGet.path"),
                        "must start with /",
                    );
                }
            }
        }
    }
    if let Some(cc) = spec.container_concurrency {
        if cc > MAX_CONTAINER_CONCURRENCY {
            errors.push(
                &format!("{path}.containerConcurrency"),
                format!("must be from 0 to {MAX_CONTAINER_CONCURRENCY}"),
            );
        }
    }
    if let Some(t) = spec.timeout_seconds {
        if t == 0 || t > MAX_TIMEOUT_SECONDS {
            errors.push(
                &format!("{path}.timeoutSeconds"),
                format!("must be from 1 to {MAX_TIMEOUT_SECONDS}"),
            );
        }
    }
    if let Err(list) = Scaling::resolve(defaults, annotations, spec.container_concurrency()) {
        for e in list {
            errors.push(&format!("{annotations_path}.{}", e.key), e.message);
        }
    }
}

/// Checks traffic targets at `path` of the route or service `name`; `route`: a Route's
/// (which may name a configuration).
pub fn validate_traffic(
    path: &str,
    value: Option<&Value>,
    name: &str,
    route: bool,
    errors: &mut FieldErrors,
) -> Vec<TrafficTarget> {
    let Some(value) = value.filter(|v| !v.is_null()) else {
        return Vec::new();
    };
    let Some(targets) = errors.decode::<Vec<TrafficTarget>>(path, value) else {
        return Vec::new();
    };
    let mut sum = 0u64;
    let mut tags: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, t) in targets.iter().enumerate() {
        let here = format!("{path}[{i}]");
        if t.configuration_name.is_some() && !route {
            errors.push(
                &format!("{here}.configurationName"),
                "a Service's traffic names revisions, or latestRevision: true",
            );
        }
        if t.revision_name.is_some() && t.configuration_name.is_some() {
            errors.push(
                &here,
                "revisionName and configurationName are mutually exclusive",
            );
        }
        if t.latest_revision == Some(true) && t.revision_name.is_some() {
            errors.push(
                &format!("{here}.latestRevision"),
                "latestRevision: true cannot name a revisionName",
            );
        }
        if t.latest_revision == Some(false) && t.revision_name.is_none() {
            errors.push(
                &format!("{here}.revisionName"),
                "required when latestRevision is false",
            );
        }
        if route && t.follows_latest() && t.configuration_name.is_none() {
            errors.push(
                &format!("{here}.configurationName"),
                "a Route's latestRevision target names its configurationName",
            );
        }
        if let Some(name) = &t.revision_name {
            if let Some(p) = dns_label_problem(name) {
                errors.push(&format!("{here}.revisionName"), p);
            }
        }
        let p = t.percent.unwrap_or(0);
        if p > 100 {
            errors.push(&format!("{here}.percent"), "must be from 0 to 100");
        }
        sum += u64::from(p);
        if let Some(tag) = &t.tag {
            if let Some(p) = dns_label_problem(tag) {
                errors.push(&format!("{here}.tag"), p);
            } else if tag.len() + 1 + name.len() > 63 {
                errors.push(
                    &format!("{here}.tag"),
                    format!("the tag's host label {tag}-{name} is longer than 63 characters"),
                );
            }
            if let Some(first) = tags.insert(tag, i) {
                errors.push(
                    &format!("{here}.tag"),
                    format!("tag {tag:?} is already used by {path}[{first}]"),
                );
            }
        }
    }
    if !targets.is_empty() && sum != 100 {
        errors.push(
            path,
            format!("the targets' percents add up to {sum}, not 100"),
        );
    }
    targets
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn errors_of(f: impl FnOnce(&mut FieldErrors)) -> Vec<String> {
        let mut e = FieldErrors::new(1);
        f(&mut e);
        e.list
            .into_iter()
            .map(|e| format!("{}: {}", e.field, e.message))
            .collect()
    }

    #[test]
    fn a_template_names_every_problem() {
        let t = json!({
            "metadata": {"annotations": {"autoscaling.knative.dev/target": "x"}},
            "spec": {"containerConcurrency": 2000, "timeoutSeconds": 601,
                     "containers": [{"image": "x", "env": [{"name": "PORT", "value": "1"}]}]}
        });
        let e = errors_of(|e| {
            validate_template("spec.template", Some(&t), "hello", &Defaults::default(), e);
        });
        let fields: Vec<&str> = e.iter().map(|l| l.split(':').next().unwrap()).collect();
        assert_eq!(
            fields,
            [
                "spec.template.spec.containers[0].command",
                "spec.template.spec.containers[0].env[0].name",
                "spec.template.spec.containerConcurrency",
                "spec.template.spec.timeoutSeconds",
                "spec.template.metadata.annotations.autoscaling.knative.dev/target",
            ],
            "{e:?}"
        );
    }

    #[test]
    fn traffic_must_add_up_and_tags_be_unique() {
        let t = json!([
            {"revisionName": "a-00001", "percent": 50, "tag": "x"},
            {"latestRevision": true, "percent": 40, "tag": "x"},
        ]);
        let e = errors_of(|e| {
            validate_traffic("spec.traffic", Some(&t), "a", false, e);
        });
        assert_eq!(
            e,
            [
                "spec.traffic[1].tag: tag \"x\" is already used by spec.traffic[0]",
                "spec.traffic: the targets' percents add up to 90, not 100",
            ]
        );
    }

    #[test]
    fn unknown_fields_are_named() {
        let t = json!({"spec": {"containers": [{"command": ["x"], "comand": ["y"]}]}});
        let e = errors_of(|e| {
            validate_template("spec.template", Some(&t), "a", &Defaults::default(), e);
        });
        assert_eq!(e.len(), 1);
        assert!(
            e[0].starts_with("spec.template.spec.containers[0]"),
            "{e:?}"
        );
        assert!(e[0].contains("comand"), "{e:?}");
    }
}
