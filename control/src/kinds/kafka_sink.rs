//! KafkaSink (`eventing.knative.dev/v1alpha1`): its topic exists and the ingress writes to it
//! at `{ingress}/kafkasinks/{namespace}/{name}`.

use super::kafka_validate::{kafka_options, validate_kafka_sink};
use crate::kind::{cell, ready_cell, Flags, Kind, KindInfo, Reconciled};
use crate::plane::ControlPlane;
use crate::resource::{FieldErrors, Key, Resource};
use crate::status::{status, NotReady};
use async_trait::async_trait;
use serde::Deserialize;
use serde_json::Value;

pub struct KafkaSink;

/// `spec` of a KafkaSink.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Spec {
    pub topic: String,
    pub bootstrap_servers: Vec<String>,
    /// `binary` (default) or `structured`.
    #[serde(default)]
    pub content_mode: Option<String>,
    #[serde(default)]
    pub num_partitions: Option<i32>,
    #[serde(default)]
    pub replication_factor: Option<i32>,
    /// SASL and TLS to the cluster, from a secret.
    #[serde(default)]
    pub auth: Option<super::kafka_auth::Auth>,
    /// Kept, not interpreted.
    #[serde(default)]
    pub delivery: Option<Value>,
}

static INFO: KindInfo = KindInfo {
    group: "eventing.knative.dev",
    version: "v1alpha1",
    kind: "KafkaSink",
    plural: "kafkasinks",
    short_names: &[],
    addressable: true,
    columns: &["READY", "URL"],
};

const CONDITIONS: &[&str] = &["TopicReady", "Addressable", "Ready"];

#[async_trait]
impl Kind for KafkaSink {
    fn info(&self) -> &'static KindInfo {
        &INFO
    }

    fn validate(&self, r: &Resource, errors: &mut FieldErrors) {
        validate_kafka_sink(&r.spec, &mut errors.sink());
        if errors.is_empty() {
            errors.decode::<Spec>("spec", &r.spec);
        }
    }

    async fn reconcile(&self, cp: &ControlPlane, r: &Resource, _pass: Flags) -> Reconciled {
        let (ns, name) = (&r.metadata.namespace, &r.metadata.name);
        let spec: Spec = match r.spec_as() {
            Ok(s) => s,
            Err(e) => {
                let f = NotReady::new("TopicReady", "InvalidSpec", e);
                return Reconciled::done(status(
                    &r.status,
                    r.metadata.generation,
                    CONDITIONS,
                    Some(&f),
                ));
            }
        };
        let security = match &spec.auth {
            None => Ok(Default::default()),
            Some(auth) => super::kafka_auth::sink_security(&cp.config().secrets_dir, ns, auth),
        };
        let security = match security {
            Ok(s) => s,
            Err(m) => {
                cp.sinks().remove(ns, name);
                let f = NotReady::new("TopicReady", "SecretUnavailable", m);
                return Reconciled::retry(status(
                    &r.status,
                    r.metadata.generation,
                    CONDITIONS,
                    Some(&f),
                ));
            }
        };
        let options = kafka_options(
            &spec.bootstrap_servers,
            cp.config().sink_batch_records,
            security,
        );
        let mode = match spec.content_mode.as_deref() {
            Some("structured") => broker::kafka::ContentMode::Structured,
            _ => broker::kafka::ContentMode::Binary,
        };
        let opened = broker::kafka::TopicWriter::open(
            &options,
            &spec.topic,
            mode,
            spec.num_partitions,
            spec.replication_factor,
        )
        .await;
        match opened {
            Ok(writer) => {
                cp.sinks().set(ns, name, writer);
                let url = format!("{}/kafkasinks/{ns}/{name}", cp.config().ingress_url);
                Reconciled::done(super::ingress_address(cp, r, CONDITIONS, INFO.group, url))
            }
            Err(e) => {
                cp.sinks().remove(ns, name);
                let f = NotReady::new("TopicReady", "TopicUnavailable", e.to_string());
                Reconciled::retry(status(
                    &r.status,
                    r.metadata.generation,
                    CONDITIONS,
                    Some(&f),
                ))
            }
        }
    }

    async fn release(&self, cp: &ControlPlane, key: &Key) {
        // The topic is the user's: deleting the sink leaves it (and its records) alone.
        cp.sinks().remove(&key.namespace, &key.name);
    }

    fn row(&self, r: &Resource) -> Vec<String> {
        vec![ready_cell(r), cell(r, "/status/address/url")]
    }
}
