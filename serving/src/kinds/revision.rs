//! Revision (`serving.knative.dev/v1`): an immutable snapshot of a template, run as a pool of
//! instances. Made by its Configuration; its status shows whether its instances get ready
//! (`ResourcesAvailable`, `ContainerHealthy`, `Ready`; `Active` while it has instances) and
//! how many run (`actualReplicas`, `desiredReplicas`).

use super::{reason_cell, CONFIGURATION_LABEL, GROUP, SERVICE_LABEL};
use crate::autoscaler::Scaling;
use crate::pool::{Pool, PoolSpec};
use crate::spec::{check_spec, RevisionSpec};
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
    kind: "Revision",
    plural: "revisions",
    short_names: &["rev"],
    addressable: false,
    columns: &[
        "CONFIG",
        "GENERATION",
        "READY",
        "REASON",
        "ACTUAL",
        "DESIRED",
    ],
};

pub struct Revision(pub Arc<Serving>);

/// Failed starts in a row after which a revision that was ready is `Ready=False`.
const FAILURES_TO_FAIL: u32 = 3;

impl Revision {
    fn settings(&self, r: &Resource) -> Result<(RevisionSpec, Scaling), String> {
        let spec: RevisionSpec = r.spec_as()?;
        let scaling = Scaling::resolve(
            &self.0.config.defaults,
            &r.metadata.annotations,
            spec.container_concurrency(),
        )
        .map_err(|e| {
            e.iter()
                .map(|e| format!("{}: {}", e.key, e.message))
                .collect::<Vec<_>>()
                .join("; ")
        })?;
        Ok((spec, scaling))
    }
}

#[async_trait]
impl Kind for Revision {
    fn info(&self) -> &'static KindInfo {
        &INFO
    }

    fn validate(&self, r: &Resource, errors: &mut FieldErrors) {
        if let Some(spec) = errors.decode::<RevisionSpec>("spec", &r.spec) {
            check_spec(
                "spec",
                &spec,
                &r.metadata.annotations,
                "metadata.annotations",
                &self.0.config.defaults,
                errors,
            );
        }
    }

    fn validate_update(&self, old: &Resource, new: &Resource, errors: &mut FieldErrors) {
        if old.spec != new.spec || old.metadata.annotations != new.metadata.annotations {
            errors.push(
                "spec",
                "a Revision is immutable: change its Configuration's template instead",
            );
        }
    }

    async fn reconcile(&self, _cp: &ControlPlane, r: &Resource, _pass: Flags) -> Reconciled {
        let old = &r.status;
        let (spec, scaling) = match self.settings(r) {
            Ok(s) => s,
            Err(e) => {
                let c = condition(old, "Ready", "False", Some("InvalidSpec"), Some(&e));
                return Reconciled::done(json!({
                    "observedGeneration": r.metadata.generation,
                    "conditions": [c],
                }));
            }
        };
        let configuration = r
            .metadata
            .labels
            .get(CONFIGURATION_LABEL)
            .cloned()
            .unwrap_or_default();
        let service = r
            .metadata
            .labels
            .get(SERVICE_LABEL)
            .cloned()
            .unwrap_or_else(|| configuration.clone());
        let env = vec![
            ("K_SERVICE".to_string(), service),
            ("K_CONFIGURATION".to_string(), configuration),
            ("K_REVISION".to_string(), r.metadata.name.clone()),
        ];
        // Ready once stays ready (stored: a restart of Ferry does not make it Unknown again)
        // unless its instances keep failing.
        let was_ready = control::status::ready(old) == Some(true);
        let s = &self.0;
        let pool = s.ensure_pool(r, || {
            let initial = if was_ready {
                scaling.min_scale
            } else {
                scaling.initial_scale
            };
            let spec = PoolSpec {
                key: r.key(),
                uid: r.metadata.uid.clone(),
                spec,
                scaling,
                env,
                initial,
                initial_reached: was_ready,
            };
            Pool::start(spec, s.spawner.clone(), s.hooks(), s.stop.child_token())
        });
        let o = pool.observed();
        // With `initial-scale: 0` there is no deployment probe: ready at zero, as in Knative.
        let ready = was_ready
            || o.ever_ready
            || (o.desired == 0 && o.instances == 0 && pool.scaling.initial_scale == 0);
        // A revision that has served fails only when its instances keep failing.
        let failing = o
            .failure
            .as_ref()
            .filter(|_| !ready || o.failures >= FAILURES_TO_FAIL);
        let conditions = match (failing, ready) {
            (Some(f), _) => vec![
                condition(old, "ResourcesAvailable", "True", None, None),
                condition(
                    old,
                    "ContainerHealthy",
                    "False",
                    Some(&f.reason),
                    Some(&f.message),
                ),
                condition(old, "Ready", "False", Some(&f.reason), Some(&f.message)),
            ],
            (None, false) => {
                let m = "waiting for the first instance to pass its readiness probe";
                vec![
                    condition(
                        old,
                        "ResourcesAvailable",
                        "Unknown",
                        Some("Deploying"),
                        Some(m),
                    ),
                    condition(
                        old,
                        "ContainerHealthy",
                        "Unknown",
                        Some("Deploying"),
                        Some(m),
                    ),
                    condition(old, "Ready", "Unknown", Some("Deploying"), Some(m)),
                ]
            }
            (None, true) => vec![
                condition(old, "ResourcesAvailable", "True", None, None),
                condition(old, "ContainerHealthy", "True", None, None),
                condition(old, "Ready", "True", None, None),
            ],
        };
        let mut conditions = conditions;
        conditions.push(if o.instances > 0 {
            condition(old, "Active", "True", None, None)
        } else {
            condition(
                old,
                "Active",
                "False",
                Some("NoTraffic"),
                Some("The target is not receiving traffic."),
            )
        });
        // `actualReplicas` and `desiredReplicas` change all the time: they are added when the
        // revision is read (`observe`), not stored.
        Reconciled::done(json!({
            "observedGeneration": r.metadata.generation,
            "conditions": conditions,
        }))
    }

    async fn finalize(&self, _cp: &ControlPlane, r: &Resource) -> Result<(), ControlError> {
        self.0.remove_pool(&r.key()).await;
        Ok(())
    }

    async fn release(&self, _cp: &ControlPlane, key: &Key) {
        self.0.remove_pool(key).await;
    }

    async fn observe(&self, _cp: &ControlPlane, r: &mut Resource) {
        if let Some(p) = self.0.pool(&r.key()).filter(|p| p.uid == r.metadata.uid) {
            let o = p.observed();
            if let Value::Object(m) = &mut r.status {
                m.insert("actualReplicas".into(), json!(o.ready));
                m.insert("desiredReplicas".into(), json!(o.desired));
            }
        }
    }

    fn row(&self, r: &Resource) -> Vec<String> {
        let label = |k: &str| r.metadata.labels.get(k).cloned().unwrap_or_default();
        vec![
            label(CONFIGURATION_LABEL),
            label(super::GENERATION_LABEL),
            control::kind::ready_cell(r),
            reason_cell(r),
            cell(r, "/status/actualReplicas"),
            cell(r, "/status/desiredReplicas"),
        ]
    }
}
