//! Serving's kinds (`serving.knative.dev/v1`), each one module implementing [`control::Kind`]:
//!
//! - `service.rs`: Service: owns a Configuration and a Route of the same name.
//! - `configuration.rs`: Configuration: a new immutable Revision per template change;
//!   keeps `--revision-history` revisions no route targets.
//! - `revision.rs`: Revision: its instances (a [`crate::pool::Pool`]).
//! - `route.rs`: Route: traffic targets into the gateway's routing table.

mod configuration;
mod revision;
mod route;
mod service;

use crate::Serving;
use control::status::condition;
use control::{Registry, Resource};
use serde_json::Value;
use std::sync::Arc;

pub const GROUP: &str = "serving.knative.dev";
pub const API_VERSION: &str = "serving.knative.dev/v1";
/// The Service a Configuration, Route or Revision belongs to.
pub const SERVICE_LABEL: &str = "serving.knative.dev/service";
/// The Configuration a Revision was made from.
pub const CONFIGURATION_LABEL: &str = "serving.knative.dev/configuration";
/// The Configuration's generation a Revision was made from.
pub const GENERATION_LABEL: &str = "serving.knative.dev/configurationGeneration";
/// A revision annotated `"true"` is never collected.
pub const NO_GC_ANNOTATION: &str = "serving.knative.dev/no-gc";

/// Registers the four kinds, in reconcile order.
pub fn register(registry: &mut Registry, serving: &Arc<Serving>) {
    registry.register(revision::Revision(serving.clone()));
    registry.register(configuration::Configuration(serving.clone()));
    registry.register(route::Route(serving.clone()));
    registry.register(service::Service(serving.clone()));
}

/// Reports every field of `spec` not in `allowed`.
fn only_fields(r: &Resource, allowed: &[&str], errors: &mut control::FieldErrors) {
    for k in r.spec.as_object().into_iter().flat_map(|o| o.keys()) {
        if !allowed.contains(&k.as_str()) {
            errors.push(&format!("spec.{k}"), "unknown field");
        }
    }
}

/// The reason of the `Ready` condition, for a column.
fn reason_cell(r: &Resource) -> String {
    r.status
        .get("conditions")
        .and_then(Value::as_array)
        .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
        .and_then(|c| c["reason"].as_str())
        .unwrap_or("")
        .to_string()
}

/// A condition of ours that mirrors `from`'s `Ready` (Unknown until `from` has observed its
/// latest generation).
fn mirror(old: &Value, ty: &str, from: Option<&Resource>, what: &str) -> Value {
    let Some(from) = from else {
        return condition(
            old,
            ty,
            "Unknown",
            Some("NotFound"),
            Some(&format!("{what} does not exist yet")),
        );
    };
    let observed = from
        .status
        .get("observedGeneration")
        .and_then(Value::as_i64);
    if observed != Some(from.metadata.generation) {
        return condition(
            old,
            ty,
            "Unknown",
            Some("OutOfDate"),
            Some(&format!("{what} has not reconciled its latest change yet")),
        );
    }
    let ready = from
        .status
        .get("conditions")
        .and_then(Value::as_array)
        .and_then(|c| c.iter().find(|c| c["type"] == "Ready"));
    match ready {
        Some(c) => condition(
            old,
            ty,
            c["status"].as_str().unwrap_or("Unknown"),
            c["reason"].as_str(),
            c["message"].as_str(),
        ),
        None => condition(old, ty, "Unknown", None, None),
    }
}

/// `Ready` summing up `conditions`: True when all are, False with the first False's reason,
/// else Unknown with the first Unknown's.
fn ready_of(old: &Value, conditions: &[Value]) -> Value {
    let first = |status: &str| conditions.iter().find(|c| c["status"] == status);
    let (status, c) = match (first("False"), first("Unknown")) {
        (Some(c), _) => ("False", Some(c)),
        (None, Some(c)) => ("Unknown", Some(c)),
        (None, None) => ("True", None),
    };
    condition(
        old,
        "Ready",
        status,
        c.and_then(|c| c["reason"].as_str()),
        c.and_then(|c| c["message"].as_str()),
    )
}
