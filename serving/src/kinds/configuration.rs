//! Configuration (`serving.knative.dev/v1`): every change of `spec.template` makes a new
//! Revision, `{name}-00001`, `-00002`, … (the Configuration's generation; or the template's
//! own `metadata.name`). Its status follows the latest created revision and names the latest
//! ready one; revisions no route targets are kept up to `--revision-history`, oldest removed.

use super::{
    reason_cell, API_VERSION, CONFIGURATION_LABEL, GENERATION_LABEL, GROUP, NO_GC_ANNOTATION,
    SERVICE_LABEL,
};
use crate::spec::{validate_template, Template};
use crate::Serving;
use async_trait::async_trait;
use control::kind::{cell, Flags, Kind, KindInfo, Reconciled};
use control::status::condition;
use control::{ControlError, ControlPlane, FieldErrors, Key, Resource};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::sync::Arc;

static INFO: KindInfo = KindInfo {
    group: GROUP,
    version: "v1",
    kind: "Configuration",
    plural: "configurations",
    short_names: &["config", "cfg"],
    addressable: false,
    columns: &["LATESTCREATED", "LATESTREADY", "READY", "REASON"],
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigurationSpec {
    template: Template,
}

pub struct Configuration(pub Arc<Serving>);

/// The revisions made from configuration `namespace/name`, oldest first.
fn revisions_of(
    cp: &ControlPlane,
    namespace: &str,
    name: &str,
) -> Result<Vec<Resource>, ControlError> {
    let mut revs: Vec<Resource> = cp
        .list("Revision", Some(namespace))?
        .into_iter()
        .filter(|r| {
            r.metadata
                .labels
                .get(CONFIGURATION_LABEL)
                .map(String::as_str)
                == Some(name)
        })
        .collect();
    revs.sort_by_key(generation);
    Ok(revs)
}

fn generation(r: &Resource) -> i64 {
    r.metadata
        .labels
        .get(GENERATION_LABEL)
        .and_then(|g| g.parse().ok())
        .unwrap_or(0)
}

/// A status with `ready` as its condition that keeps the latest revisions' names it had (a
/// failure to make a revision does not make the route forget what it serves).
fn kept(old: &Value, gen: i64, ready: Value) -> Value {
    let mut status = json!({"observedGeneration": gen, "conditions": [ready]});
    for k in ["latestCreatedRevisionName", "latestReadyRevisionName"] {
        if let Some(v) = old.get(k) {
            status[k] = v.clone();
        }
    }
    status
}

/// `{name}-{generation:05}`, cut to 63 characters.
fn revision_name(name: &str, generation: i64) -> String {
    let suffix = format!("-{generation:05}");
    let mut base = name.to_string();
    base.truncate(63 - suffix.len());
    format!("{}{suffix}", base.trim_end_matches('-'))
}

impl Configuration {
    /// Removes the oldest revisions no route targets beyond the history limit.
    async fn collect(&self, cp: &ControlPlane, revs: &[Resource], keep: &BTreeSet<String>) {
        let Some(namespace) = revs.first().map(|r| r.metadata.namespace.as_str()) else {
            return;
        };
        // What any route targets or asks for, by status or by spec; unknown: collect nothing.
        let routes = match cp.list("Route", Some(namespace)) {
            Ok(routes) => routes,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list routes; no revision collected");
                return;
            }
        };
        let named = |traffic: Option<&Value>| -> Vec<String> {
            traffic
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|t| t["revisionName"].as_str().map(str::to_string))
                .collect()
        };
        let routed: BTreeSet<String> = routes
            .iter()
            .flat_map(|r| {
                let mut n = named(r.status.get("traffic"));
                n.extend(named(r.spec.get("traffic")));
                n
            })
            .collect();
        let candidates: Vec<&Resource> = revs
            .iter()
            .filter(|r| !keep.contains(&r.metadata.name) && !routed.contains(&r.metadata.name))
            .filter(|r| {
                r.metadata
                    .annotations
                    .get(NO_GC_ANNOTATION)
                    .map(String::as_str)
                    != Some("true")
            })
            .collect();
        let excess = candidates
            .len()
            .saturating_sub(self.0.config.revision_history);
        for r in candidates.into_iter().take(excess) {
            tracing::info!(revision = %r.key(), "collecting a revision no route targets");
            if let Err(e) = cp
                .delete("Revision", &r.metadata.namespace, &r.metadata.name)
                .await
            {
                tracing::warn!(revision = %r.key(), error = %e, "cannot collect a revision");
            }
        }
    }
}

#[async_trait]
impl Kind for Configuration {
    fn info(&self) -> &'static KindInfo {
        &INFO
    }

    fn validate(&self, r: &Resource, errors: &mut FieldErrors) {
        super::only_fields(r, &["template"], errors);
        validate_template(
            "spec.template",
            r.spec.get("template"),
            &r.metadata.name,
            &self.0.config.defaults,
            errors,
        );
    }

    async fn reconcile(&self, cp: &ControlPlane, r: &Resource, pass: Flags) -> Reconciled {
        let old = &r.status;
        let (ns, name) = (&r.metadata.namespace, &r.metadata.name);
        let spec: ConfigurationSpec = match r.spec_as() {
            Ok(s) => s,
            Err(e) => {
                let c = condition(old, "Ready", "False", Some("InvalidSpec"), Some(&e));
                return Reconciled::done(
                    json!({"observedGeneration": r.metadata.generation, "conditions": [c]}),
                );
            }
        };
        let gen = r.metadata.generation;
        let unreadable = |e: ControlError| {
            let m = format!("cannot read its revisions: {e}");
            let c = condition(old, "Ready", "Unknown", Some("StoreUnavailable"), Some(&m));
            Reconciled::retry(kept(old, gen, c))
        };
        let mut revs = match revisions_of(cp, ns, name) {
            Ok(revs) => revs,
            Err(e) => return unreadable(e),
        };
        let rev_name = spec
            .template
            .metadata
            .name
            .clone()
            .unwrap_or_else(|| revision_name(name, gen));
        if pass.write && !revs.iter().any(|x| generation(x) == gen) {
            if let Ok(Some(taken)) = cp.find("Revision", ns, &rev_name) {
                let m = format!(
                    "revision {rev_name:?} already exists (from generation {}): a template's metadata.name must change with the template",
                    generation(&taken)
                );
                let c = condition(old, "Ready", "False", Some("RevisionNameTaken"), Some(&m));
                return Reconciled::done(kept(old, gen, c));
            }
            let mut labels = spec.template.metadata.labels.clone();
            labels.insert(CONFIGURATION_LABEL.into(), name.clone());
            labels.insert(GENERATION_LABEL.into(), gen.to_string());
            if let Some(svc) = r.metadata.labels.get(SERVICE_LABEL) {
                labels.insert(SERVICE_LABEL.into(), svc.clone());
            }
            let doc = json!({
                "apiVersion": API_VERSION,
                "kind": "Revision",
                "metadata": {
                    "name": rev_name,
                    "namespace": ns,
                    "labels": labels,
                    "annotations": spec.template.metadata.annotations,
                },
                "spec": spec.template.spec,
            });
            if let Err(e) = cp.apply_owned(&doc).await {
                let m = format!("cannot create revision {rev_name}: {e}");
                let c = condition(old, "Ready", "False", Some("RevisionFailed"), Some(&m));
                return Reconciled::retry(kept(old, gen, c));
            }
            revs = match revisions_of(cp, ns, name) {
                Ok(revs) => revs,
                Err(e) => return unreadable(e),
            };
        }
        let latest = revs.iter().rev().find(|x| generation(x) == gen);
        // The latest ready revision only moves forward: an older one that is ready does not
        // take the place of a newer one that failed after serving (its route keeps it).
        let stored_ready = r.status["latestReadyRevisionName"]
            .as_str()
            .and_then(|n| revs.iter().find(|x| x.metadata.name == n));
        let newest_ready = revs.iter().rev().find(|x| x.ready() == Some(true));
        let latest_ready = match (newest_ready, stored_ready) {
            (Some(n), Some(s)) if generation(s) > generation(n) => Some(s),
            (None, s) => s,
            (n, _) => n,
        };
        let ready = match latest {
            None => condition(old, "Ready", "Unknown", Some("Deploying"), None),
            Some(l) => match control::status::condition_status(&l.status, "Ready") {
                Some("True") => condition(old, "Ready", "True", None, None),
                Some("False") => {
                    let why = l.status["conditions"]
                        .as_array()
                        .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
                        .and_then(|c| c["message"].as_str())
                        .unwrap_or("");
                    let m = format!("Revision {:?} failed with message: {why}", l.metadata.name);
                    condition(old, "Ready", "False", Some("RevisionFailed"), Some(&m))
                }
                _ => condition(
                    old,
                    "Ready",
                    "Unknown",
                    Some("Deploying"),
                    Some(&format!(
                        "waiting for revision {:?} to be ready",
                        l.metadata.name
                    )),
                ),
            },
        };
        let mut status = json!({"observedGeneration": gen, "conditions": [ready]});
        if let Some(l) = latest {
            status["latestCreatedRevisionName"] = json!(l.metadata.name);
        }
        if let Some(l) = latest_ready {
            status["latestReadyRevisionName"] = json!(l.metadata.name);
        }
        if pass.write {
            let keep: BTreeSet<String> = [latest, latest_ready]
                .into_iter()
                .flatten()
                .map(|x| x.metadata.name.clone())
                .collect();
            self.collect(cp, &revs, &keep).await;
        }
        Reconciled::done(status)
    }

    async fn finalize(&self, cp: &ControlPlane, r: &Resource) -> Result<(), ControlError> {
        for rev in revisions_of(cp, &r.metadata.namespace, &r.metadata.name)? {
            match cp
                .delete("Revision", &rev.metadata.namespace, &rev.metadata.name)
                .await
            {
                Ok(_) | Err(ControlError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// The latest created revision (its name is known without reading the store: this runs
    /// for every status written), the latest ready one, and the Route of the same name (a
    /// Service's).
    fn depends_on(&self, _cp: &ControlPlane, r: &Resource) -> Vec<Key> {
        let ns = &r.metadata.namespace;
        let latest = r
            .spec
            .pointer("/template/metadata/name")
            .and_then(Value::as_str)
            .map_or_else(
                || revision_name(&r.metadata.name, r.metadata.generation),
                str::to_string,
            );
        let mut keys = vec![Key::new("Revision", ns, &latest)];
        if let Some(ready) = r.status["latestReadyRevisionName"].as_str() {
            keys.push(Key::new("Revision", ns, ready));
        }
        // Its Service's Route: when its traffic moves on, what it left may be collected.
        keys.push(Key::new("Route", ns, &r.metadata.name));
        keys
    }

    fn row(&self, r: &Resource) -> Vec<String> {
        vec![
            cell(r, "/status/latestCreatedRevisionName"),
            cell(r, "/status/latestReadyRevisionName"),
            control::kind::ready_cell(r),
            reason_cell(r),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revision_names_count_generations_and_fit() {
        assert_eq!(revision_name("hello", 1), "hello-00001");
        assert_eq!(revision_name("hello", 123456), "hello-123456");
        let long = "a".repeat(70);
        assert_eq!(revision_name(&long, 2).len(), 63);
    }
}
