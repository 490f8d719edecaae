//! Route (`serving.knative.dev/v1`): traffic targets (a revision by name, or a
//! configuration's latest ready revision), percents summing to 100, tags with hosts of their
//! own. Resolved into the gateway's table: `{name}.{ns}.{domain}` splits by percent,
//! `{tag}-{name}.{ns}.{domain}` goes to the tag's revision. Until every target resolves, the
//! table keeps what it had (a new revision that never gets ready takes no traffic).

use super::{ready_of, reason_cell, GROUP};
use crate::gateway::Destinations;
use crate::spec::{validate_traffic, TrafficTarget};
use crate::Serving;
use async_trait::async_trait;
use control::kind::{cell, Flags, Kind, KindInfo, Reconciled};
use control::status::condition;
use control::{ControlPlane, FieldErrors, Key, Resource};
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;

static INFO: KindInfo = KindInfo {
    group: GROUP,
    version: "v1",
    kind: "Route",
    plural: "routes",
    short_names: &["rt"],
    addressable: true,
    columns: &["URL", "READY", "REASON"],
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteSpec {
    #[serde(default)]
    traffic: Vec<TrafficTarget>,
}

pub struct Route(pub Arc<Serving>);

/// A Route's conditions: traffic assigned, ingress ready, no certificate (no TLS), `Ready`.
fn conditions(old: &Value, assigned: Value, ingress: Value) -> Vec<Value> {
    let certificate = condition(
        old,
        "CertificateProvisioned",
        "True",
        Some("TLSNotEnabled"),
        None,
    );
    let mut c = vec![assigned, ingress, certificate];
    c.push(ready_of(old, &c));
    c
}

impl Route {
    /// The revision each target names, or why one does not resolve.
    /// The revision each target names, or why one does not resolve: `(status, message)`,
    /// Unknown while a configuration's first revision is on its way, False when it failed or
    /// a named revision does not exist (as Knative says it).
    fn resolve(
        &self,
        cp: &ControlPlane,
        ns: &str,
        targets: &[TrafficTarget],
    ) -> Result<Vec<String>, (&'static str, String)> {
        targets
            .iter()
            .map(|t| match (&t.revision_name, &t.configuration_name) {
                (Some(rev), _) => match cp.find("Revision", ns, rev) {
                    Ok(Some(_)) => Ok(rev.clone()),
                    _ => Err((
                        "False",
                        format!("Revision {rev:?} referenced in traffic not found."),
                    )),
                },
                (None, Some(cfg)) => {
                    let c = cp.find("Configuration", ns, cfg).ok().flatten();
                    let ready = c.as_ref().and_then(|c| {
                        c.status["latestReadyRevisionName"]
                            .as_str()
                            .map(str::to_string)
                    });
                    match (ready, c) {
                        (Some(rev), _) => Ok(rev),
                        (None, Some(c)) if c.ready() != Some(false) => Err((
                            "Unknown",
                            format!(
                                "Configuration {cfg:?} is waiting for a Revision to become ready."
                            ),
                        )),
                        _ => Err((
                            "False",
                            format!("Configuration {cfg:?} does not have any ready Revision."),
                        )),
                    }
                }
                (None, None) => Err((
                    "False",
                    "a target names neither a revision nor a configuration".into(),
                )),
            })
            .collect()
    }
}

#[async_trait]
impl Kind for Route {
    fn info(&self) -> &'static KindInfo {
        &INFO
    }

    fn validate(&self, r: &Resource, errors: &mut FieldErrors) {
        super::only_fields(r, &["traffic"], errors);
        validate_traffic(
            "spec.traffic",
            r.spec.get("traffic"),
            &r.metadata.name,
            true,
            errors,
        );
    }

    async fn reconcile(&self, cp: &ControlPlane, r: &Resource, _pass: Flags) -> Reconciled {
        let old = &r.status;
        let (ns, name) = (r.metadata.namespace.as_str(), r.metadata.name.as_str());
        let s = &self.0;
        let host = s.host(name, ns);
        let url = s.url(&host);
        let spec: RouteSpec = match r.spec_as() {
            Ok(spec) => spec,
            Err(e) => {
                let c = condition(old, "Ready", "False", Some("InvalidSpec"), Some(&e));
                return Reconciled::done(
                    json!({"observedGeneration": r.metadata.generation, "conditions": [c]}),
                );
            }
        };
        let mut status = json!({
            "observedGeneration": r.metadata.generation,
            "url": url,
            "address": {"url": url},
        });
        let revisions = match self.resolve(cp, ns, &spec.traffic) {
            Err((state, why)) => {
                let assigned = condition(
                    old,
                    "AllTrafficAssigned",
                    state,
                    Some("RevisionMissing"),
                    Some(&why),
                );
                let ingress = condition(old, "IngressReady", "Unknown", None, None);
                status["conditions"] = json!(conditions(old, assigned, ingress));
                if let Some(t) = old.get("traffic") {
                    status["traffic"] = t.clone();
                }
                return Reconciled::done(status);
            }
            Ok(revs) => revs,
        };
        let rev_key = |rev: &str| Key::new("Revision", ns, rev);
        let mut main: Vec<(Key, u32)> = Vec::new();
        let mut hosts = Vec::new();
        let mut traffic = Vec::new();
        for (t, rev) in spec.traffic.iter().zip(&revisions) {
            let percent = t.percent.unwrap_or(0);
            if percent > 0 {
                match main.iter_mut().find(|(k, _)| k.name == *rev) {
                    Some((_, p)) => *p += percent,
                    None => main.push((rev_key(rev), percent)),
                }
            }
            let mut entry = json!({
                "revisionName": rev,
                "latestRevision": t.follows_latest(),
                "percent": percent,
            });
            if let Some(c) = &t.configuration_name {
                entry["configurationName"] = json!(c);
            }
            if let Some(tag) = &t.tag {
                let tag_host = s.host(&format!("{tag}-{name}"), ns);
                entry["tag"] = json!(tag);
                entry["url"] = json!(s.url(&tag_host));
                hosts.push((
                    tag_host,
                    Destinations {
                        targets: vec![(rev_key(rev), 100)],
                    },
                ));
            }
            traffic.push(entry);
        }
        hosts.push((host, Destinations { targets: main }));
        let assigned = condition(old, "AllTrafficAssigned", "True", None, None);
        match s.routes.set(&r.key(), hosts) {
            Ok(again) => {
                for k in again {
                    cp.requeue(k);
                }
                let ingress = condition(old, "IngressReady", "True", None, None);
                status["conditions"] = json!(conditions(old, assigned, ingress));
                status["traffic"] = json!(traffic);
            }
            Err(why) => {
                // The table keeps what it had: so does the status (what GC protects).
                let ingress = condition(
                    old,
                    "IngressReady",
                    "False",
                    Some("DomainConflict"),
                    Some(&why),
                );
                status["conditions"] = json!(conditions(old, assigned, ingress));
                if let Some(t) = old.get("traffic") {
                    status["traffic"] = t.clone();
                }
            }
        }
        Reconciled::done(status)
    }

    async fn release(&self, cp: &ControlPlane, key: &Key) {
        for k in self.0.routes.remove(key) {
            cp.requeue(k);
        }
    }

    fn depends_on(&self, _cp: &ControlPlane, r: &Resource) -> Vec<Key> {
        let ns = &r.metadata.namespace;
        r.spec
            .get("traffic")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|t| {
                if let Some(rev) = t["revisionName"].as_str() {
                    Some(Key::new("Revision", ns, rev))
                } else {
                    t["configurationName"]
                        .as_str()
                        .map(|c| Key::new("Configuration", ns, c))
                }
            })
            .collect()
    }

    fn row(&self, r: &Resource) -> Vec<String> {
        vec![
            cell(r, "/status/url"),
            control::kind::ready_cell(r),
            reason_cell(r),
        ]
    }
}
