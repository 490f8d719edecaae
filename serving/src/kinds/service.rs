//! Service (`serving.knative.dev/v1`, `ksvc`): a template and traffic, as a Configuration and
//! a Route of the same name that it owns (kept as it says, removed with it). Addressable at
//! `http://{name}.{ns}.{domain}[:port]` through the gateway, so a Trigger can deliver to it.

use super::{mirror, ready_of, reason_cell, API_VERSION, GROUP, SERVICE_LABEL};
use crate::spec::{validate_template, validate_traffic};
use crate::Serving;
use async_trait::async_trait;
use control::kind::{cell, Flags, Kind, KindInfo, Reconciled};
use control::status::condition;
use control::{ControlError, ControlPlane, FieldErrors, Key, Resource};
use serde_json::{json, Value};
use std::sync::Arc;

static INFO: KindInfo = KindInfo {
    group: GROUP,
    version: "v1",
    kind: "Service",
    plural: "services",
    short_names: &["ksvc", "kservice"],
    addressable: true,
    columns: &["URL", "LATESTCREATED", "LATESTREADY", "READY", "REASON"],
};

pub struct Service(pub Arc<Serving>);

/// The Route's traffic for the Service's: `latestRevision` targets name the configuration.
fn route_traffic(name: &str, traffic: Option<&Value>) -> Value {
    let targets = traffic
        .and_then(Value::as_array)
        .filter(|a| !a.is_empty())
        .cloned()
        .unwrap_or_else(|| vec![json!({"latestRevision": true, "percent": 100})]);
    let targets: Vec<Value> = targets
        .into_iter()
        .map(|mut t| {
            if let Value::Object(m) = &mut t {
                m.remove("url");
                if !m.contains_key("revisionName") {
                    m.insert("configurationName".into(), json!(name));
                    m.insert("latestRevision".into(), json!(true));
                }
            }
            t
        })
        .collect();
    Value::Array(targets)
}

/// Whether a Configuration or Route is the one Service `name` made.
fn owned_by(r: &Resource, name: &str) -> bool {
    r.metadata.labels.get(SERVICE_LABEL).map(String::as_str) == Some(name)
}

#[async_trait]
impl Kind for Service {
    fn info(&self) -> &'static KindInfo {
        &INFO
    }

    fn validate(&self, r: &Resource, errors: &mut FieldErrors) {
        super::only_fields(r, &["template", "traffic"], errors);
        validate_template(
            "spec.template",
            r.spec.get("template"),
            &r.metadata.name,
            &self.0.config.defaults,
            errors,
        );
        validate_traffic(
            "spec.traffic",
            r.spec.get("traffic"),
            &r.metadata.name,
            false,
            errors,
        );
    }

    async fn reconcile(&self, cp: &ControlPlane, r: &Resource, pass: Flags) -> Reconciled {
        let old = &r.status;
        let (ns, name) = (r.metadata.namespace.as_str(), r.metadata.name.as_str());
        let url = self.0.url(&self.0.host(name, ns));
        let mut status = json!({
            "observedGeneration": r.metadata.generation,
            "url": url,
            "address": {"url": url},
        });
        // A Configuration or Route of that name made by someone else is not taken over.
        for kind in ["Configuration", "Route"] {
            let theirs = cp
                .find(kind, ns, name)
                .ok()
                .flatten()
                .filter(|x| !owned_by(x, name));
            if theirs.is_some() {
                let m =
                    format!("there is an existing {kind} {name:?} that this Service does not own");
                let c = condition(old, "Ready", "False", Some("NotOwned"), Some(&m));
                status["conditions"] = json!([c]);
                return Reconciled::done(status);
            }
        }
        if pass.write {
            let owned = |kind: &str, spec: Value| {
                json!({
                    "apiVersion": API_VERSION,
                    "kind": kind,
                    "metadata": {"name": name, "namespace": ns, "labels": {SERVICE_LABEL: name}},
                    "spec": spec,
                })
            };
            let template = r.spec.get("template").cloned().unwrap_or(Value::Null);
            for doc in [
                owned("Configuration", json!({"template": template})),
                owned(
                    "Route",
                    json!({"traffic": route_traffic(name, r.spec.get("traffic"))}),
                ),
            ] {
                if let Err(e) = cp.apply_owned(&doc).await {
                    let m = format!(
                        "cannot apply its {}: {e}",
                        doc["kind"].as_str().unwrap_or("")
                    );
                    let c = condition(old, "Ready", "False", Some("Failed"), Some(&m));
                    status["conditions"] = json!([c]);
                    return Reconciled::retry(status);
                }
            }
        }
        let config = cp.find("Configuration", ns, name).ok().flatten();
        let route = cp.find("Route", ns, name).ok().flatten();
        let mut c = vec![
            mirror(
                old,
                "ConfigurationsReady",
                config.as_ref(),
                &format!("Configuration {name:?}"),
            ),
            mirror(
                old,
                "RoutesReady",
                route.as_ref(),
                &format!("Route {name:?}"),
            ),
        ];
        c.push(ready_of(old, &c));
        status["conditions"] = json!(c);
        if let Some(cfg) = &config {
            for k in ["latestCreatedRevisionName", "latestReadyRevisionName"] {
                if let Some(v) = cfg.status.get(k) {
                    status[k] = v.clone();
                }
            }
        }
        if let Some(t) = route.as_ref().and_then(|r| r.status.get("traffic")) {
            status["traffic"] = t.clone();
        }
        Reconciled::done(status)
    }

    async fn finalize(&self, cp: &ControlPlane, r: &Resource) -> Result<(), ControlError> {
        let (ns, name) = (&r.metadata.namespace, &r.metadata.name);
        for kind in ["Route", "Configuration"] {
            let mine = cp.find(kind, ns, name)?.is_some_and(|x| owned_by(&x, name));
            if !mine {
                continue;
            }
            match cp.delete(kind, ns, name).await {
                Ok(_) | Err(ControlError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn depends_on(&self, _cp: &ControlPlane, r: &Resource) -> Vec<Key> {
        let (ns, name) = (&r.metadata.namespace, &r.metadata.name);
        vec![
            Key::new("Configuration", ns, name),
            Key::new("Route", ns, name),
        ]
    }

    fn row(&self, r: &Resource) -> Vec<String> {
        vec![
            cell(r, "/status/url"),
            cell(r, "/status/latestCreatedRevisionName"),
            cell(r, "/status/latestReadyRevisionName"),
            control::kind::ready_cell(r),
            reason_cell(r),
        ]
    }
}
