//! Reconciling a KafkaSource (KS-01..KS-07): one runner per topic, each a member of the
//! source's consumer group on the source's own Kafka cluster, whose records become CloudEvents
//! (`dispatcher::source`) delivered to the sink with the source's delivery policy. In Kafka
//! mode every node runs the runners, and the group shares the partitions among the nodes.

use super::kafka_validate::{kafka_options, validate_kafka_source};
use super::trigger::DEFAULT_MAX_IN_FLIGHT;
use super::trigger::{address_print, subscriber_at};
use crate::kind::{cell, ready_cell, Flags, Kind, KindInfo, Reconciled};
use crate::plane::{ControlError, ControlPlane};
use crate::resource::{CeOverrides, DeliverySpec, Destination, FieldErrors, Key, Resource};
use crate::status::{self, NotReady};
use async_trait::async_trait;
use broker::{EventLog, StartAt, Topic};
use dispatcher::filter::Filter;
use dispatcher::policy::DeliveryPolicy;
use dispatcher::source::{decoder, KeyType, SourceInfo, KEY_TYPE_LABEL};
use dispatcher::{Feed, TriggerSpec};
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;

pub struct KafkaSource;

/// `spec` of a KafkaSource.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Spec {
    pub bootstrap_servers: Vec<String>,
    pub topics: Vec<String>,
    /// Default `knative-kafka-source-<uid>`.
    #[serde(default)]
    pub consumer_group: Option<String>,
    /// Accepted; each node runs one consumer per topic.
    #[serde(default)]
    pub consumers: Option<i64>,
    /// `latest` (default) or `earliest`.
    #[serde(default)]
    pub initial_offset: Option<String>,
    /// `ordered` (default) or `unordered`.
    #[serde(default)]
    pub ordering: Option<String>,
    pub sink: Destination,
    #[serde(default)]
    pub delivery: Option<DeliverySpec>,
    #[serde(default)]
    pub ce_overrides: Option<CeOverrides>,
    /// SASL and TLS to the cluster, from secrets.
    #[serde(default)]
    pub net: Option<super::kafka_auth::Net>,
}

/// The typed spec of a stored source (validation made sure it decodes).
fn spec_of(r: &Resource) -> Result<Spec, String> {
    r.spec_as()
}

static INFO: KindInfo = KindInfo {
    group: "sources.knative.dev",
    version: "v1beta1",
    kind: "KafkaSource",
    plural: "kafkasources",
    short_names: &[],
    addressable: false,
    columns: &["TOPICS", "SINK", "READY"],
};

const CONDITIONS: &[&str] = &["SinkProvided", "InitialOffsetsCommitted", "Ready"];

#[async_trait]
impl Kind for KafkaSource {
    fn info(&self) -> &'static KindInfo {
        &INFO
    }

    fn validate(&self, r: &Resource, errors: &mut FieldErrors) {
        validate_kafka_source(&r.spec, &r.metadata.labels, &mut errors.sink());
        if errors.is_empty() {
            errors.decode::<Spec>("spec", &r.spec);
        }
    }

    async fn reconcile(&self, cp: &ControlPlane, r: &Resource, _pass: Flags) -> Reconciled {
        let mut sink_uri = None;
        let outcome = start(cp, r, &mut sink_uri).await;
        if outcome.is_err() {
            stop(cp, &r.metadata.namespace, &r.metadata.name, &[]).await;
        }
        let failure = outcome.as_ref().err();
        let mut s = status::status(&r.status, r.metadata.generation, CONDITIONS, failure);
        if let Some(uri) = sink_uri {
            s["sinkUri"] = Value::String(uri);
        }
        let retry = failure.is_some_and(|f| f.condition == "InitialOffsetsCommitted");
        Reconciled {
            status: s,
            retry,
            requeue_after: None,
        }
    }

    /// Stops the runners of a deleted source and forgets their retries and dead letters (of
    /// its topics, whether they run on this node or not). Its topics and its group's offsets
    /// are the user's: left alone.
    async fn finalize(&self, cp: &ControlPlane, r: &Resource) -> Result<(), ControlError> {
        let ns = &r.metadata.namespace;
        let prefix = runner_name(&r.metadata.name, "");
        let mut names = runner_names(r);
        names.extend(cp.dispatcher().running(ns, &prefix).await);
        names.sort();
        names.dedup();
        for name in names {
            cp.dispatcher().forget(ns, &name).await?;
        }
        Ok(())
    }

    async fn release(&self, cp: &ControlPlane, key: &Key) {
        stop(cp, &key.namespace, &key.name, &[]).await;
    }

    fn depends_on(&self, cp: &ControlPlane, r: &Resource) -> Vec<Key> {
        let ns = &r.metadata.namespace;
        let mut keys: Vec<Key> = cp.referenced(r.spec.get("sink"), ns).into_iter().collect();
        keys.extend(cp.referenced(r.spec.pointer("/delivery/deadLetterSink"), ns));
        keys
    }

    fn row(&self, r: &Resource) -> Vec<String> {
        vec![
            cell(r, "/spec/topics"),
            cell(r, "/status/sinkUri"),
            ready_cell(r),
        ]
    }

    fn deliveries(&self, r: &Resource) -> Option<Vec<(String, String)>> {
        let ns = &r.metadata.namespace;
        Some(
            runner_names(r)
                .into_iter()
                .map(|n| (ns.clone(), n))
                .collect(),
        )
    }
}

/// The name of the runner of one topic of a source (its key in metrics and the delivery
/// store): `<source>#<topic>`, as in the events' `source`.
fn runner_name(source: &str, topic: &str) -> String {
    format!("{source}#{topic}")
}

/// The source's consumer group: `spec.consumerGroup`, else `knative-kafka-source-<uid>`.
fn group_of(r: &Resource, spec: &Spec) -> String {
    spec.consumer_group
        .clone()
        .unwrap_or_else(|| format!("knative-kafka-source-{}", r.metadata.uid))
}

/// The names of a source's runners, one per topic.
fn runner_names(r: &Resource) -> Vec<String> {
    topics_of(r)
        .iter()
        .map(|t| runner_name(&r.metadata.name, t))
        .collect()
}

fn topics_of(r: &Resource) -> Vec<String> {
    spec_of(r).map(|s| s.topics).unwrap_or_default()
}

/// Stops the runners of source `ns/name`'s topics, but those in `keep`.
async fn stop(cp: &ControlPlane, ns: &str, name: &str, keep: &[String]) {
    let prefix = runner_name(name, "");
    for runner in cp.dispatcher().running(ns, &prefix).await {
        if !keep.contains(&runner) {
            cp.dispatcher().stop(ns, &runner).await;
        }
    }
}

async fn start(
    cp: &ControlPlane,
    r: &Resource,
    sink_uri: &mut Option<String>,
) -> Result<(), NotReady> {
    let (ns, name) = (&r.metadata.namespace, &r.metadata.name);
    let spec = spec_of(r).map_err(|e| NotReady::new("SinkProvided", "InvalidSpec", e))?;
    let sink = cp
        .resolve_address(&spec.sink, ns)
        .map_err(|m| NotReady::new("SinkProvided", "SinkNotFound", m))?;
    *sink_uri = Some(sink.url.clone());
    let sender = crate::auth::subject_of("KafkaSource", ns, name);
    let policy = spec
        .delivery
        .as_ref()
        .map_or_else(DeliveryPolicy::default, DeliverySpec::policy);
    let dead_letter = match spec
        .delivery
        .as_ref()
        .and_then(|d| d.dead_letter_sink.as_ref())
    {
        None => None,
        Some(dls) => Some(
            cp.resolve_address(dls, ns)
                .map_err(|m| NotReady::new("SinkProvided", "DeadLetterSinkNotFound", m))?,
        ),
    };
    let subscriber = subscriber_at(cp, &sink, &sender, &policy, "SinkProvided").await?;
    let dead_letter_subscriber = match &dead_letter {
        None => None,
        Some(a) => Some(subscriber_at(cp, a, &sender, &policy, "SinkProvided").await?),
    };
    let key_type = r
        .metadata
        .labels
        .get(KEY_TYPE_LABEL)
        .and_then(|t| KeyType::parse(t))
        .unwrap_or(KeyType::String);
    let overrides = spec
        .ce_overrides
        .iter()
        .flat_map(|o| o.extensions.iter())
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let security = match &spec.net {
        None => Default::default(),
        Some(net) => super::kafka_auth::source_security(&cp.config().secrets_dir, ns, net)
            .map_err(|m| NotReady::new("InitialOffsetsCommitted", "SecretUnavailable", m))?,
    };
    let options = kafka_options(
        &spec.bootstrap_servers,
        cp.config().sink_batch_records,
        security,
    );
    let info = SourceInfo {
        namespace: ns.clone(),
        name: name.clone(),
        key_type,
        overrides,
    };
    let log: Arc<dyn EventLog> = Arc::new(
        broker::KafkaLog::external(options, decoder(info)).map_err(|e| {
            NotReady::new("InitialOffsetsCommitted", "KafkaUnavailable", e.to_string())
        })?,
    );
    let group = group_of(r, &spec);
    let latest = spec.initial_offset.as_deref() != Some("earliest");
    let ordered = spec.ordering.as_deref() != Some("unordered");
    let topics = spec.topics.clone();
    let mut layout = Vec::new();
    for topic in &topics {
        let t = Topic::new("", topic);
        let unavailable = |e: broker::LogError| {
            NotReady::new(
                "InitialOffsetsCommitted",
                "TopicUnavailable",
                format!("topic {topic:?}: {e}"),
            )
        };
        let ends = log.watermarks(&t).await.map_err(unavailable)?;
        let committed = log.committed(&t, &group).await.map_err(unavailable)?;
        layout.push((t, ends, committed));
    }
    // A group with offsets already runs (here or on other nodes), and Kafka refuses commits
    // from outside a group with members: a partition new to it then starts at its end when
    // first assigned (`auto.offset.reset=latest`) instead.
    let running = layout
        .iter()
        .any(|(_, _, committed)| committed.iter().any(Option::is_some));
    for (t, ends, committed) in &layout {
        let topic = &t.name;
        let unavailable = |e: broker::LogError| {
            NotReady::new(
                "InitialOffsetsCommitted",
                "TopicUnavailable",
                format!("topic {topic:?}: {e}"),
            )
        };
        // KS-06: with `latest`, a partition the group never read starts at its end as of now,
        // committed before the source is Ready; with `earliest` it starts at the beginning.
        if latest {
            let missing: Vec<broker::Position> = ends
                .iter()
                .zip(committed)
                .enumerate()
                .filter(|(_, (_, c))| c.is_none())
                .map(|(p, (w, _))| broker::Position {
                    partition: p as u32,
                    offset: w.end,
                })
                .collect();
            if !missing.is_empty() {
                match log.commit(t, &group, &missing).await {
                    Ok(()) => {}
                    Err(e) if running => tracing::info!(
                        source = %format!("{ns}/{name}"), topic = %topic, error = %e,
                        "new partitions start at their end when first assigned"
                    ),
                    Err(e) => return Err(unavailable(e)),
                }
            }
        }
    }
    stop(cp, ns, name, &runner_names(r)).await;
    let fingerprint_base = json!({
        "spec": r.spec,
        "labels": r.metadata.labels,
        "annotations": r.metadata.annotations,
        "sink": address_print(&sink),
        "deadLetterSink": dead_letter.as_ref().map(address_print),
        "group": group,
        "uid": r.metadata.uid,
    });
    for topic in &topics {
        let runner = TriggerSpec {
            namespace: ns.clone(),
            name: runner_name(name, topic),
            topic: Topic::new("", topic),
            filter: Filter::Everything,
            subscriber: subscriber.clone(),
            dead_letter: dead_letter_subscriber.clone(),
            policy: policy.clone(),
            ordered,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            feed: Some(Feed {
                log: log.clone(),
                group: group.clone(),
                start: if latest {
                    StartAt::Latest
                } else {
                    StartAt::Earliest
                },
            }),
            instance: r.metadata.uid.clone(),
        };
        let fingerprint = json!({"base": fingerprint_base, "topic": topic}).to_string();
        cp.dispatcher().run(runner, fingerprint).await;
    }
    Ok(())
}
