//! PingSource (`sources.knative.dev/v1`): an event on a cron schedule, sent to a sink.
//!
//! Each tick becomes an event (`dev.knative.sources.ping` from
//! `/apis/v1/namespaces/{ns}/pingsources/{name}`, `time` the tick) published into the system
//! broker `ferry-system/pingsources`; a system trigger owned by the source
//! (`ferry-system/pingsource-{ns}-{name}`) delivers them to the sink with retries and dead
//! letters like any trigger. Only the node holding the PingSource lease fires ticks (a
//! one-partition group on that broker), so in Kafka mode one node fires each tick. A tick
//! missed while Ferry was down is not made up for, as in Knative.
//!
//! `schedule.rs` parses schedules (cron, descriptors, `@every`) and finds the next tick.

mod schedule;

use crate::kind::{cell, ready_cell, Flags, Kind, KindInfo, Reconciled};
use crate::lease::Lease;
use crate::plane::{ControlError, ControlPlane};
use crate::resource::{
    validate_destination, CeOverrides, Destination, FieldErrors, Key, Resource, SYSTEM_LABEL,
};
use crate::status::{self, NotReady};
use crate::system::BrokerLayout;
use async_trait::async_trait;
use base64::Engine as _;
use broker::{Publisher, Topic};
use cloudevent::ext::SYSTEM_NAMESPACE;
use cloudevent::EventBuilder;
pub use schedule::Schedule;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The type of a PingSource's events.
pub const PING_EVENT_TYPE: &str = "dev.knative.sources.ping";
/// The system broker ticks go through.
pub const PING_BROKER: &str = "pingsources";
/// How long ticks are kept in it.
const PING_RETENTION: Duration = Duration::from_secs(24 * 3600);

static INFO: KindInfo = KindInfo {
    group: "sources.knative.dev",
    version: "v1",
    kind: "PingSource",
    plural: "pingsources",
    short_names: &[],
    addressable: false,
    columns: &["SCHEDULE", "SINK", "READY"],
};

const CONDITIONS: &[&str] = &["SinkProvided", "Deployed", "Ready"];

/// `spec` of a PingSource.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PingSpec {
    /// Cron schedule; Knative's default is every minute.
    #[serde(default)]
    schedule: Option<String>,
    /// IANA time zone the schedule is read in (default: the machine's).
    #[serde(default)]
    timezone: Option<String>,
    /// Media type of the data.
    #[serde(default)]
    content_type: Option<String>,
    /// The event's data, as text.
    #[serde(default)]
    data: Option<String>,
    /// The event's data, base64 (exclusive with `data`).
    #[serde(default)]
    data_base64: Option<String>,
    sink: Destination,
    #[serde(default)]
    ce_overrides: Option<CeOverrides>,
}

impl PingSpec {
    fn schedule_text(&self) -> &str {
        self.schedule.as_deref().unwrap_or("* * * * *")
    }

    fn data(&self) -> Result<Option<Vec<u8>>, String> {
        match (&self.data, &self.data_base64) {
            (Some(_), Some(_)) => Err("data and dataBase64 are mutually exclusive".into()),
            (Some(d), None) => Ok(Some(d.clone().into_bytes())),
            (None, Some(b)) => base64::engine::general_purpose::STANDARD
                .decode(b)
                .map(Some)
                .map_err(|e| format!("not valid base64: {e}")),
            (None, None) => Ok(None),
        }
    }
}

/// A running schedule: what it was built from, and how to stop it.
struct Running {
    fingerprint: String,
    stop: CancellationToken,
}

#[derive(Default)]
pub struct PingSource {
    running: Mutex<HashMap<Key, Running>>,
    /// Joined on the first reconcile, held by one node of the cluster.
    lease: tokio::sync::OnceCell<Lease>,
}

/// The start of the names of PingSources' triggers in `ferry-system` (kept for them).
pub const TRIGGER_PREFIX: &str = "pingsource-";

/// The label of a PingSource's trigger that names its source (`ns.name`: both are DNS labels,
/// so the dot is unambiguous).
const OWNER_LABEL: &str = "sources.knative.dev/pingsource";

/// The system trigger that delivers a source's ticks: `pingsource-{ns}-{name}-{hash}`, the hash
/// of `ns/name` keeping `a-b/c` and `a/b-c` apart, the readable part cut to fit 63 characters.
pub fn trigger_name(namespace: &str, name: &str) -> String {
    let h = broker::event::fnv1a(format!("{namespace}/{name}").as_bytes());
    let hash = format!("{:08x}", h as u32);
    let mut readable = format!("{TRIGGER_PREFIX}{namespace}-{name}");
    readable.truncate(63 - hash.len() - 1);
    format!("{}-{hash}", readable.trim_end_matches('-'))
}

fn owner_label(namespace: &str, name: &str) -> String {
    format!("{namespace}.{name}")
}

/// The `source` of a PingSource's events.
pub fn event_source(namespace: &str, name: &str) -> String {
    format!("/apis/v1/namespaces/{namespace}/pingsources/{name}")
}

impl PingSource {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Running>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn stop_schedule(&self, key: &Key) {
        if let Some(r) = self.lock().remove(key) {
            r.stop.cancel();
        }
    }

    /// Starts (or restarts, when it changed) the source's schedule.
    async fn run_schedule(
        &self,
        cp: &ControlPlane,
        r: &Resource,
        spec: &PingSpec,
        schedule: Schedule,
    ) -> Result<(), String> {
        let fingerprint = json!({"spec": r.spec, "uid": r.metadata.uid}).to_string();
        let key = r.key();
        if self
            .lock()
            .get(&key)
            .is_some_and(|run| run.fingerprint == fingerprint)
        {
            return Ok(());
        }
        let lease = self
            .lease
            .get_or_init(|| async {
                Lease::join(
                    cp.log().clone(),
                    Topic::new(SYSTEM_NAMESPACE, PING_BROKER),
                    "ferry-pingsource-scheduler".into(),
                    cp.shutdown_token().clone(),
                )
            })
            .await
            .clone();
        let mut template = EventBuilder::new(
            PING_EVENT_TYPE,
            &event_source(&r.metadata.namespace, &r.metadata.name),
        );
        if let Some(data) = spec.data()? {
            match &spec.content_type {
                Some(ct) => template = template.data(ct, data),
                None => template = template.bytes(data),
            }
        }
        for (name, value) in spec.ce_overrides.iter().flat_map(|o| &o.extensions) {
            template = template.attr(name, value.as_str());
        }
        let stop = cp.shutdown_token().child_token();
        let ticker = Ticker {
            key: key.clone(),
            schedule,
            template,
            publisher: cp.publisher().clone(),
            lease,
            stop: stop.clone(),
        };
        tokio::spawn(ticker.run());
        if let Some(old) = self.lock().insert(key, Running { fingerprint, stop }) {
            old.stop.cancel();
        }
        Ok(())
    }
}

/// One source's schedule at work.
struct Ticker {
    key: Key,
    schedule: Schedule,
    template: EventBuilder,
    publisher: Arc<Publisher>,
    lease: Lease,
    stop: CancellationToken,
}

impl Ticker {
    async fn run(self) {
        let topic = Topic::new(SYSTEM_NAMESPACE, PING_BROKER);
        let mut last = dispatcher::clock::now_utc();
        loop {
            let Some(next) = self.schedule.next_after(last) else {
                tracing::warn!(source = %self.key, "the schedule has no next tick");
                return;
            };
            let now = dispatcher::clock::now_utc();
            if next + chrono::Duration::seconds(1) < now {
                // Ticks missed (the machine slept, a publish hung) are not made up for.
                last = now;
                continue;
            }
            let wait = (next - now).to_std().unwrap_or_default();
            tokio::select! {
                _ = self.stop.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            last = next;
            if !self.lease.held() {
                continue;
            }
            let event = self
                .template
                .clone()
                .id(uuid::Uuid::new_v4().to_string())
                .time(next)
                .build();
            let published = match event {
                Ok(e) => self
                    .publisher
                    .publish_one(&topic, e)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            match published {
                Ok(()) => tracing::debug!(source = %self.key, tick = %next, "ping"),
                Err(e) => {
                    tracing::warn!(source = %self.key, error = %e, "a tick could not be published")
                }
            }
        }
    }
}

#[async_trait]
impl Kind for PingSource {
    fn info(&self) -> &'static KindInfo {
        &INFO
    }

    fn validate(&self, r: &Resource, errors: &mut FieldErrors) {
        match r.spec.get("sink") {
            None => {
                errors.push("spec.sink", "required");
                return;
            }
            Some(sink) => {
                validate_destination("spec.sink", sink, &mut errors.sink());
                if !errors.is_empty() {
                    return;
                }
            }
        }
        let Some(spec) = errors.decode::<PingSpec>("spec", &r.spec) else {
            return;
        };
        let zone_ok = match spec.timezone.as_deref() {
            Some(tz) => match Schedule::parse("* * * * *", Some(tz)) {
                Ok(_) => true,
                Err(e) => {
                    errors.push("spec.timezone", e);
                    false
                }
            },
            None => true,
        };
        let zone = spec.timezone.as_deref().filter(|_| zone_ok);
        if let Err(e) = Schedule::parse(spec.schedule_text(), zone) {
            errors.push("spec.schedule", e);
        }
        if let Err(e) = spec.data() {
            let field = if spec.data.is_some() && spec.data_base64.is_some() {
                "spec.data"
            } else {
                "spec.dataBase64"
            };
            errors.push(field, e);
        }
        if spec.content_type.as_deref().is_some_and(str::is_empty) {
            errors.push("spec.contentType", "must not be empty");
        }
        for name in spec.ce_overrides.iter().flat_map(|o| o.extensions.keys()) {
            let ok = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
                && ![
                    "specversion",
                    "id",
                    "source",
                    "type",
                    "time",
                    "datacontenttype",
                    "data",
                ]
                .contains(&name.as_str());
            if !ok {
                errors.push(
                    &format!("spec.ceOverrides.extensions.{name}"),
                    "an extension name is a-z and 0-9 only, and not a core attribute",
                );
            }
        }
    }

    async fn reconcile(&self, cp: &ControlPlane, r: &Resource, pass: Flags) -> Reconciled {
        let mut sink_uri = None;
        let outcome = self.start(cp, r, pass.write, &mut sink_uri).await;
        if outcome.is_err() {
            self.stop_schedule(&r.key());
        }
        let failure = outcome.as_ref().err();
        let mut s = status::status(&r.status, r.metadata.generation, CONDITIONS, failure);
        if let Some(uri) = sink_uri {
            s["sinkUri"] = Value::String(uri);
        }
        Reconciled {
            status: s,
            retry: failure.is_some_and(|f| {
                matches!(f.reason, "SystemBrokerUnavailable" | "TriggerNotApplied")
            }),
            requeue_after: None,
        }
    }

    async fn finalize(&self, cp: &ControlPlane, r: &Resource) -> Result<(), ControlError> {
        self.stop_schedule(&r.key());
        let trigger = trigger_name(&r.metadata.namespace, &r.metadata.name);
        let owner = owner_label(&r.metadata.namespace, &r.metadata.name);
        if let Some(t) = cp.find("Trigger", SYSTEM_NAMESPACE, &trigger)? {
            if t.metadata.labels.get(OWNER_LABEL) == Some(&owner) {
                if let Some(kind) = cp.registry().kind("Trigger").cloned() {
                    match cp.delete_resource(&kind, t.key()).await {
                        // Gone meanwhile (deleted with another delete of the source).
                        Ok(()) | Err(ControlError::NotFound { .. }) => {}
                        Err(e) => return Err(e),
                    }
                }
            }
        }
        Ok(())
    }

    async fn release(&self, _cp: &ControlPlane, key: &Key) {
        self.stop_schedule(key);
    }

    fn depends_on(&self, cp: &ControlPlane, r: &Resource) -> Vec<Key> {
        let ns = &r.metadata.namespace;
        let mut keys: Vec<Key> = cp.referenced(r.spec.get("sink"), ns).into_iter().collect();
        keys.push(Key::new(
            "Trigger",
            SYSTEM_NAMESPACE,
            &trigger_name(ns, &r.metadata.name),
        ));
        keys
    }

    fn row(&self, r: &Resource) -> Vec<String> {
        let schedule = cell(r, "/spec/schedule");
        vec![
            if schedule.is_empty() {
                "* * * * *".into()
            } else {
                schedule
            },
            cell(r, "/status/sinkUri"),
            ready_cell(r),
        ]
    }

    fn reserves(&self, kind: &str, namespace: &str, name: &str) -> bool {
        kind == "Trigger" && namespace == SYSTEM_NAMESPACE && name.starts_with(TRIGGER_PREFIX)
    }

    fn deliveries(&self, r: &Resource) -> Option<Vec<(String, String)>> {
        Some(vec![(
            SYSTEM_NAMESPACE.to_string(),
            trigger_name(&r.metadata.namespace, &r.metadata.name),
        )])
    }
}

impl PingSource {
    /// `owner`: this node writes what the source owns (its system broker and trigger);
    /// another node's change only converges the schedule here.
    async fn start(
        &self,
        cp: &ControlPlane,
        r: &Resource,
        owner: bool,
        sink_uri: &mut Option<String>,
    ) -> Result<(), NotReady> {
        let (ns, name) = (&r.metadata.namespace, &r.metadata.name);
        let spec: PingSpec = r
            .spec_as()
            .map_err(|e| NotReady::new("Deployed", "InvalidSpec", e))?;
        let schedule = Schedule::parse(spec.schedule_text(), spec.timezone.as_deref())
            .map_err(|e| NotReady::new("Deployed", "InvalidSchedule", e))?;
        let uri = cp
            .resolve_destination(&spec.sink, ns)
            .map_err(|m| NotReady::new("SinkProvided", "NotFound", m))?;
        *sink_uri = Some(uri);
        if owner {
            cp.ensure_system_broker(
                PING_BROKER,
                BrokerLayout::default()
                    .partitions(1)
                    .retention(PING_RETENTION),
            )
            .await
            .map_err(|e| NotReady::new("Deployed", "SystemBrokerUnavailable", e.to_string()))?;
        }
        // The trigger that delivers this source's ticks: its sink, with refs made explicit
        // (the trigger lives in ferry-system).
        let mut sink = spec.sink.clone();
        if let Some(reference) = &mut sink.reference {
            reference.namespace.get_or_insert_with(|| ns.clone());
        }
        let trigger = trigger_name(ns, name);
        let doc = json!({
            "apiVersion": "eventing.knative.dev/v1",
            "kind": "Trigger",
            "metadata": {
                "name": trigger,
                "namespace": SYSTEM_NAMESPACE,
                "labels": {SYSTEM_LABEL: "true", OWNER_LABEL: owner_label(ns, name)},
                "annotations": {
                    super::trigger::SENDER_ANNOTATION:
                        crate::auth::subject_of("PingSource", ns, name),
                },
            },
            "spec": {
                "broker": PING_BROKER,
                "filters": [{"exact": {"source": event_source(ns, name)}}],
                "subscriber": sink,
            },
        });
        if owner {
            cp.apply_system(&doc)
                .await
                .map_err(|e| NotReady::new("Deployed", "TriggerNotApplied", e.to_string()))?;
        }
        let t = cp
            .find("Trigger", SYSTEM_NAMESPACE, &trigger)
            .map_err(|e| NotReady::new("Deployed", "TriggerNotApplied", e.to_string()))?;
        let owner = owner_label(ns, name);
        let t = match t {
            None => {
                return Err(NotReady::new(
                    "Deployed",
                    "TriggerNotReady",
                    format!("trigger {SYSTEM_NAMESPACE}/{trigger} is not there yet"),
                ))
            }
            Some(t) if t.metadata.labels.get(OWNER_LABEL) != Some(&owner) => {
                return Err(NotReady::new(
                    "Deployed",
                    "TriggerNameTaken",
                    format!("trigger {SYSTEM_NAMESPACE}/{trigger} belongs to something else"),
                ))
            }
            Some(t) => t,
        };
        if t.ready() != Some(true) {
            let message = t
                .status
                .get("conditions")
                .and_then(Value::as_array)
                .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
                .and_then(|c| c["message"].as_str())
                .unwrap_or("not Ready yet")
                .to_string();
            return Err(NotReady::new(
                "Deployed",
                "TriggerNotReady",
                format!("trigger {SYSTEM_NAMESPACE}/{trigger}: {message}"),
            ));
        }
        self.run_schedule(cp, r, &spec, schedule)
            .await
            .map_err(|e| NotReady::new("Deployed", "InvalidData", e))
    }
}
