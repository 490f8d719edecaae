//! Every transition of a run as a CloudEvent in the system broker `ferry-system/pipelines`
//! (../shared/ARCHITECTURE.md):
//!
//! - Tekton's own: `dev.tekton.event.{taskrun,pipelinerun}.{started,running,successful,failed,
//!   unknown}.v1`, `subject` the run's name, `source`
//!   `/apis/tekton.dev/v1/namespaces/{ns}/{taskruns|pipelineruns}/{name}`, data
//!   `{"taskRun": ...}` / `{"pipelineRun": ...}` (the run as `-o json` shows it);
//! - Ferry's: `dev.ferry.pipelines.taskrun.queued.v1` (a TaskRun to run) and
//!   `dev.ferry.pipelines.pipelinerun.changed.v1` (look at a run again: created, its spec
//!   changed, a timeout passed, Ferry restarted).
//!
//! Every event of a PipelineRun and its TaskRuns has the PipelineRun as `partitionkey`
//! (`{ns}/{name}`), so one run's events stay in order, and the node that owns the run as
//! `ferrynode`. Each node's two system triggers consume its own runs' events:
//! `pipelines-scheduler-{node}` (ordered per run; run events and TaskRuns' ends) drives the
//! PipelineRun ([`crate::driver`]), `pipelines-executor-{node}` (queued TaskRuns) runs them
//! ([`crate::worker`]). Both keep Knative's default retries: these events are work, not
//! samples.

use crate::kinds::{PIPELINE_RUN_LABEL, PIPELINE_RUN_UID_ANNOTATION};
use crate::{Pipelines, PipelinesError};
use broker::Topic;
use cloudevent::ext::{PARTITION_KEY, SYSTEM_NAMESPACE};
use cloudevent::{Event, EventBuilder};
use control::{BrokerLayout, ControlPlane, Resource, SystemTrigger};
use dispatcher::subscriber::{Handler, HandlerError};
use futures::FutureExt;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

/// The system broker of runs' events.
pub const PIPELINES_BROKER: &str = "pipelines";
/// The system triggers, one pair per node: `pipelines-scheduler-{node}`,
/// `pipelines-executor-{node}`.
pub const SCHEDULER_TRIGGER: &str = "pipelines-scheduler";
pub const EXECUTOR_TRIGGER: &str = "pipelines-executor";
/// The extension attribute naming the node that owns a run (and handles its events).
pub const NODE_ATTR: &str = "ferrynode";
pub const QUEUED_TYPE: &str = "dev.ferry.pipelines.taskrun.queued.v1";
pub const CHANGED_TYPE: &str = "dev.ferry.pipelines.pipelinerun.changed.v1";
/// How long run events are kept.
const RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

/// What happened to a run (the `{what}` of Tekton's event types).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    Started,
    Running,
    Successful,
    Failed,
    Unknown,
}

impl Transition {
    fn word(self) -> &'static str {
        match self {
            Transition::Started => "started",
            Transition::Running => "running",
            Transition::Successful => "successful",
            Transition::Failed => "failed",
            Transition::Unknown => "unknown",
        }
    }
}

/// `dev.tekton.event.{taskrun|pipelinerun}.{what}.v1`.
pub fn tekton_type(kind: &str, what: Transition) -> String {
    format!(
        "dev.tekton.event.{}.{}.v1",
        kind.to_ascii_lowercase(),
        what.word()
    )
}

/// What `queued` and `changed` events carry.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct RunRef {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// Why (`changed`): `created`, `spec`, `timeout`, `restart`, `slot`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub why: String,
    /// The generation the publisher saw: a node whose copy is older waits for it (Kafka).
    #[serde(default)]
    pub generation: i64,
}

impl RunRef {
    pub fn of(r: &Resource, why: &str) -> Self {
        Self {
            namespace: r.metadata.namespace.clone(),
            name: r.metadata.name.clone(),
            uid: r.metadata.uid.clone(),
            why: why.into(),
            generation: r.metadata.generation,
        }
    }
}

/// The node that owns the run `r` (runs its tasks, drives it): a TaskRun's
/// `ferry.dev/node` annotation (a PipelineRun's TaskRuns are its node's), else its
/// `status.node`, else `me` (it is new here).
pub fn owner(r: &Resource, me: &str) -> String {
    // Only a PipelineRun's TaskRun (made by its scheduler) is taken at its annotation's word.
    let child = r.kind == "TaskRun"
        && r.metadata
            .annotations
            .contains_key(PIPELINE_RUN_UID_ANNOTATION);
    r.metadata
        .annotations
        .get(control::resource::NODE_ANNOTATION)
        .filter(|_| child)
        .cloned()
        .or_else(|| r.status["node"].as_str().map(str::to_string))
        .unwrap_or_else(|| me.to_string())
}

/// The `partitionkey` of a run's events: its PipelineRun's (or its own, for a TaskRun of its
/// own).
pub fn partition_key(r: &Resource) -> String {
    let owner = match (r.kind.as_str(), r.metadata.labels.get(PIPELINE_RUN_LABEL)) {
        ("TaskRun", Some(pr)) => pr.as_str(),
        _ => r.metadata.name.as_str(),
    };
    format!("{}/{owner}", r.metadata.namespace)
}

fn source(r: &Resource) -> String {
    format!(
        "/apis/tekton.dev/v1/namespaces/{}/{}s/{}",
        r.metadata.namespace,
        r.kind.to_ascii_lowercase(),
        r.metadata.name
    )
}

async fn publish(cp: &ControlPlane, event: Result<Event, String>) -> Result<(), String> {
    let topic = Topic::new(SYSTEM_NAMESPACE, PIPELINES_BROKER);
    cp.publisher()
        .publish_own(&topic, event?)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Publishes Tekton's event for `what` happening to the run `r` (as it is now stored).
pub async fn transition(cp: &ControlPlane, r: &Resource, what: Transition) -> Result<(), String> {
    let field = match r.kind.as_str() {
        "TaskRun" => "taskRun",
        _ => "pipelineRun",
    };
    let doc = serde_json::to_value(r).map_err(|e| e.to_string())?;
    let event = EventBuilder::new(&tekton_type(&r.kind, what), &source(r))
        .subject(r.metadata.name.clone())
        .attr(PARTITION_KEY, partition_key(r))
        .attr(NODE_ATTR, owner(r, &cp.config().node))
        .json(&json!({ field: doc }))
        .build()
        .map_err(|e| e.to_string());
    publish(cp, event).await
}

/// Publishes Ferry's own event `ty` about the run `r`.
pub async fn internal(cp: &ControlPlane, ty: &str, r: &Resource, why: &str) -> Result<(), String> {
    let data = serde_json::to_value(RunRef::of(r, why)).map_err(|e| e.to_string())?;
    let event = EventBuilder::new(ty, &source(r))
        .subject(r.metadata.name.clone())
        .attr(PARTITION_KEY, partition_key(r))
        .attr(NODE_ATTR, owner(r, &cp.config().node))
        .json(&data)
        .build()
        .map_err(|e| e.to_string());
    publish(cp, event).await
}

/// The PipelineRun an event is about: `changed`/`started` carry it, a TaskRun's end names it
/// in its labels. `None`: not a PipelineRun's (a TaskRun of its own).
pub fn pipeline_run_of(e: &Event) -> Result<Option<RunRef>, HandlerError> {
    let bad = |m: String| HandlerError {
        retryable: false,
        message: format!("not a pipelines event: {m}"),
    };
    let data: Value = serde_json::from_slice(e.data.as_deref().unwrap_or_default())
        .map_err(|err| bad(err.to_string()))?;
    if e.attr_text("type").as_deref() == Some(CHANGED_TYPE) {
        return serde_json::from_value(data)
            .map(Some)
            .map_err(|err| bad(err.to_string()));
    }
    if let Some(pr) = data.get("pipelineRun") {
        let m = &pr["metadata"];
        return Ok(Some(RunRef {
            namespace: m["namespace"].as_str().unwrap_or_default().into(),
            name: m["name"].as_str().unwrap_or_default().into(),
            uid: m["uid"].as_str().unwrap_or_default().into(),
            why: String::new(),
            generation: 0,
        }));
    }
    let m = &data["taskRun"]["metadata"];
    let Some(name) = m["labels"][PIPELINE_RUN_LABEL].as_str() else {
        return Ok(None);
    };
    Ok(Some(RunRef {
        namespace: m["namespace"].as_str().unwrap_or_default().into(),
        name: name.into(),
        uid: m["annotations"][PIPELINE_RUN_UID_ANNOTATION]
            .as_str()
            .unwrap_or_default()
            .into(),
        why: String::new(),
        generation: 0,
    }))
}

/// The TaskRun whose end `e` announces (`taskrun.successful`/`failed`), if it is one:
/// (namespace, name, uid).
pub fn ended_task_run(e: &Event) -> Option<(String, String, String)> {
    let ty = e.attr_text("type")?;
    if ty != tekton_type("taskrun", Transition::Successful)
        && ty != tekton_type("taskrun", Transition::Failed)
    {
        return None;
    }
    let data: Value = serde_json::from_slice(e.data.as_deref().unwrap_or_default()).ok()?;
    let m = &data["taskRun"]["metadata"];
    Some((
        m["namespace"].as_str()?.into(),
        m["name"].as_str()?.into(),
        m["uid"].as_str()?.into(),
    ))
}

/// The TaskRun a `queued` event names.
pub fn queued(e: &Event) -> Result<RunRef, HandlerError> {
    serde_json::from_slice(e.data.as_deref().unwrap_or_default()).map_err(|err| HandlerError {
        retryable: false,
        message: format!("not a queued TaskRun: {err}"),
    })
}

/// The system broker and this node's two triggers: each takes the events of the runs this node
/// owns (`ferrynode`), so a run is driven and executed by one node (its workspaces are there).
pub(crate) async fn start(
    p: &Arc<Pipelines>,
    cp: &Arc<ControlPlane>,
) -> Result<(), PipelinesError> {
    // Before each node had its own (unfiltered triggers would take every node's runs).
    for legacy in [SCHEDULER_TRIGGER, EXECUTOR_TRIGGER] {
        cp.remove_system_trigger(legacy).await?;
    }
    let node = cp.config().node.clone();
    let scheduler = format!("{SCHEDULER_TRIGGER}-{node}");
    let executor = format!("{EXECUTOR_TRIGGER}-{node}");
    let mine = json!({"exact": {NODE_ATTR: node}});
    cp.ensure_system_broker(
        PIPELINES_BROKER,
        BrokerLayout::default().retention(RETENTION),
    )
    .await?;
    let weak = Arc::downgrade(p);
    let schedule = Handler::new(scheduler.clone(), move |e| {
        let p = weak.clone();
        async move {
            match p.upgrade() {
                Some(p) => crate::driver::on_event(&p, &e).await.map(|()| None),
                None => Ok(None),
            }
        }
        .boxed()
    });
    let types = [
        tekton_type("pipelinerun", Transition::Started),
        tekton_type("taskrun", Transition::Successful),
        tekton_type("taskrun", Transition::Failed),
        CHANGED_TYPE.to_string(),
    ];
    let any: Vec<Value> = types
        .iter()
        .map(|t| json!({"exact": {"type": t}}))
        .collect();
    cp.system_trigger(
        SystemTrigger::new(&scheduler, PIPELINES_BROKER, schedule)
            .filter(json!([mine.clone(), {"any": any}]))
            .ordered()
            .on_node(&node),
    )
    .await?;
    let weak = Arc::downgrade(p);
    let execute = Handler::new(executor.clone(), move |e| {
        let p = weak.clone();
        async move {
            match p.upgrade() {
                Some(p) => crate::worker::on_queued(&p, &e).await.map(|()| None),
                None => Ok(None),
            }
        }
        .boxed()
    });
    cp.system_trigger(
        SystemTrigger::new(&executor, PIPELINES_BROKER, execute)
            .filter(json!([mine, {"exact": {"type": QUEUED_TYPE}}]))
            .on_node(&node),
    )
    .await?;
    Ok(())
}
