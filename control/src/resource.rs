//! Resources as the control plane stores them, and what every kind's validation shares.
//!
//! A resource is kept as the user wrote it (`apiVersion`, `kind`, `metadata`, `spec`) plus the
//! fields the server owns (`metadata.uid`, `generation`, `creationTimestamp`, and `status`), so
//! `ferry get -o yaml` gives back what `ferry apply` took. Each kind reads its `spec` through a
//! typed struct of its own (`kinds/`); validation is pure and reports every problem of a
//! document at once, each with its field path, as Knative's webhook does.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

/// `metadata` of a resource.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Metadata {
    pub name: String,
    pub namespace: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub uid: String,
    #[serde(default)]
    pub generation: i64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub creation_timestamp: String,
    /// The prefix the name was made from, when it was (`metadata.generateName`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generate_name: Option<String>,
    /// The name was made in this apply: if it is taken, another is made.
    #[serde(skip)]
    pub generated: bool,
}

/// One resource: what the user applied plus what the server keeps about it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Resource {
    pub api_version: String,
    /// The kind's name (`Broker`, `PingSource`), as the registry knows it.
    pub kind: String,
    pub metadata: Metadata,
    #[serde(default)]
    pub spec: Value,
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub status: Value,
}

impl Resource {
    pub fn key(&self) -> Key {
        Key::new(&self.kind, &self.metadata.namespace, &self.metadata.name)
    }

    /// The spec as the kind's typed struct (validation made sure it decodes).
    pub fn spec_as<T: DeserializeOwned>(&self) -> Result<T, String> {
        serde_path_to_error::deserialize(&self.spec)
            .map_err(|e| format!("spec.{}: {}", e.path(), e.inner()))
    }

    /// The `Ready` condition: `Some(true)` when True.
    pub fn ready(&self) -> Option<bool> {
        crate::status::ready(&self.status)
    }

    /// Whether Ferry made this resource itself (a system broker or trigger).
    pub fn is_system(&self) -> bool {
        self.metadata.labels.get(SYSTEM_LABEL).map(String::as_str) == Some("true")
    }
}

/// An environment variable of a process (a container's `env` entry in Knative and Tekton
/// YAML; `valueFrom` has no Kubernetes objects to read here and is refused as unknown).
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnvVar {
    pub name: String,
    #[serde(default)]
    pub value: String,
}

/// The label of resources Ferry makes itself: users may read them, not change them.
pub const SYSTEM_LABEL: &str = "ferry.dev/system";
/// On a system trigger: the node whose in-process handler it delivers to (only that node runs
/// it); on a resource: the node that owns its work.
pub const NODE_ANNOTATION: &str = "ferry.dev/node";

/// A resource's identity: its kind's name, namespace and name (`Kind/namespace/name`, which is
/// also its key in the store).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Key {
    pub kind: String,
    pub namespace: String,
    pub name: String,
}

impl Key {
    pub fn new(kind: &str, namespace: &str, name: &str) -> Self {
        Self {
            kind: kind.to_string(),
            namespace: namespace.to_string(),
            name: name.to_string(),
        }
    }
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}/{}", self.kind, self.namespace, self.name)
    }
}

/// One problem with one field of one document.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldError {
    /// 1-based position of the document in what was applied.
    pub document: usize,
    /// Dotted path of the field (`spec.delivery.backoffDelay`); empty for the whole document.
    pub field: String,
    pub message: String,
}

/// The problems found in one document.
#[derive(Debug, Default)]
pub struct FieldErrors {
    pub document: usize,
    pub list: Vec<FieldError>,
}

impl FieldErrors {
    pub fn new(document: usize) -> Self {
        Self {
            document,
            list: Vec::new(),
        }
    }

    pub fn push(&mut self, field: &str, message: impl Into<String>) {
        self.list.push(FieldError {
            document: self.document,
            field: field.to_string(),
            message: message.into(),
        });
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// As a closure, for validators written as `err(field, message)`.
    pub fn sink(&mut self) -> impl FnMut(&str, String) + '_ {
        move |field, message| self.push(field, message)
    }

    /// Decodes `value` (at `path`) into `T`, reporting where it does not fit: an unknown field,
    /// a wrong type, a missing required field.
    pub fn decode<T: DeserializeOwned>(&mut self, path: &str, value: &Value) -> Option<T> {
        match serde_path_to_error::deserialize::<_, T>(value) {
            Ok(t) => Some(t),
            Err(e) => {
                let inner = e.path().to_string();
                // The path names the field that did not fit (an unknown one included).
                let field = if inner == "." || inner.is_empty() {
                    path.to_string()
                } else {
                    format!("{path}.{inner}")
                };
                self.push(&field, e.inner().to_string());
                None
            }
        }
    }
}

/// The envelope of one applied document, checked: `apiVersion`, `kind`, `metadata` (with the
/// namespace defaulted), `spec`; nothing else at the top level. `None` without a `kind`; a
/// missing `apiVersion` or `metadata` comes back empty (and is in `errors`).
pub fn envelope(
    errors: &mut FieldErrors,
    doc: &Value,
) -> Option<(String, String, Metadata, Value)> {
    let Some(obj) = doc.as_object() else {
        errors.push(
            "",
            "a resource must be a mapping with apiVersion, kind, metadata and spec",
        );
        return None;
    };
    for key in obj.keys() {
        if !["apiVersion", "kind", "metadata", "spec", "status"].contains(&key.as_str()) {
            errors.push(key, "unknown field");
        }
    }
    let kind = match obj.get("kind") {
        None => {
            errors.push("kind", "required");
            None
        }
        Some(Value::String(k)) => Some(k.clone()),
        Some(other) => {
            errors.push("kind", format!("{other} must be a string"));
            None
        }
    };
    let api_version = match obj.get("apiVersion") {
        None => {
            errors.push("apiVersion", "required");
            None
        }
        Some(Value::String(v)) => Some(v.clone()),
        Some(other) => {
            errors.push("apiVersion", format!("{other} must be a string"));
            None
        }
    };
    let metadata = validate_metadata(obj.get("metadata"), &mut errors.sink());
    let spec = obj
        .get("spec")
        .cloned()
        .unwrap_or(Value::Object(Default::default()));
    // What is missing is reported already; the kind's own checks still run on the rest.
    Some((
        api_version.unwrap_or_default(),
        kind?,
        metadata.unwrap_or_default(),
        spec,
    ))
}

fn validate_metadata(meta: Option<&Value>, err: &mut impl FnMut(&str, String)) -> Option<Metadata> {
    let Some(meta) = meta.and_then(Value::as_object) else {
        err("metadata", "required: a mapping with at least name".into());
        return None;
    };
    for key in meta.keys() {
        if ![
            "name",
            "generateName",
            "namespace",
            "labels",
            "annotations",
            "uid",
            "generation",
            "creationTimestamp",
        ]
        .contains(&key.as_str())
        {
            err(&format!("metadata.{key}"), "unknown field".into());
        }
    }
    let prefix = meta.get("generateName").and_then(Value::as_str);
    if let Some(p) = prefix.filter(|p| p.len() > MAX_GENERATE_NAME) {
        err(
            "metadata.generateName",
            format!("{p:?} is longer than {MAX_GENERATE_NAME} characters (five are added)"),
        );
    }
    let named = meta.get("name").is_some_and(|n| !n.is_null());
    let generated = prefix.filter(|_| !named).map(generate_name);
    let name = match meta
        .get("name")
        .and_then(Value::as_str)
        .or(generated.as_deref())
    {
        Some(n) => {
            if let Some(problem) = dns_label_problem(n) {
                let field = match meta.get("name") {
                    Some(_) => "metadata.name",
                    None => "metadata.generateName",
                };
                err(field, format!("{n:?} {problem}"));
            }
            n.to_string()
        }
        None => {
            err("metadata.name", "required (or generateName)".into());
            String::new()
        }
    };
    let namespace = match meta.get("namespace") {
        None | Some(Value::Null) => DEFAULT_NAMESPACE.to_string(),
        Some(Value::String(ns)) => {
            if let Some(problem) = dns_label_problem(ns) {
                err("metadata.namespace", format!("{ns:?} {problem}"));
            }
            ns.clone()
        }
        Some(_) => {
            err("metadata.namespace", "must be a string".into());
            String::new()
        }
    };
    let mut string_map = |field: &str| -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        match meta.get(field) {
            None | Some(Value::Null) => {}
            Some(Value::Object(m)) => {
                for (k, v) in m {
                    match v.as_str() {
                        Some(s) => {
                            out.insert(k.clone(), s.to_string());
                        }
                        None => err(&format!("metadata.{field}.{k}"), "must be a string".into()),
                    }
                }
            }
            Some(_) => err(
                &format!("metadata.{field}"),
                "must be a mapping of strings".into(),
            ),
        }
        out
    };
    let labels = string_map("labels");
    let annotations = string_map("annotations");
    Some(Metadata {
        name,
        namespace,
        labels,
        annotations,
        generate_name: prefix.map(str::to_string),
        generated: generated.is_some(),
        ..Metadata::default()
    })
}

/// The longest `generateName`: a name is at most 63 characters.
const MAX_GENERATE_NAME: usize = 58;

/// A name made from `metadata.generateName`: the prefix and five random characters, as
/// Kubernetes makes them (each apply of such a document creates a new resource).
pub fn generate_name(prefix: &str) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let random = uuid::Uuid::new_v4();
    let suffix: String = random
        .as_bytes()
        .iter()
        .take(5)
        .map(|b| char::from(ALPHABET[usize::from(*b) % ALPHABET.len()]))
        .collect();
    format!("{prefix}{suffix}")
}

/// The namespace of a resource that names none.
pub const DEFAULT_NAMESPACE: &str = "default";

/// Why `s` is not a DNS-1123 label (what Kubernetes names are), if it is not.
pub fn dns_label_problem(s: &str) -> Option<&'static str> {
    if s.is_empty() || s.len() > 63 {
        return Some("must be 1 to 63 characters");
    }
    let ok_chars = s
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    let ok_ends = !s.starts_with('-') && !s.ends_with('-');
    (!ok_chars || !ok_ends).then_some(
        "must consist of lower-case letters, digits and '-', and start and end with a letter or digit",
    )
}

/// A Knative `Destination`: a `uri`, a `ref` to an addressable resource, or both (the `uri`
/// then relative to the `ref`'s address).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Destination {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    pub reference: Option<Reference>,
    #[serde(default, rename = "CACerts", skip_serializing_if = "Option::is_none")]
    pub ca_certs: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
}

/// A Knative `KReference`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Reference {
    pub kind: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
}

/// A Knative `DeliverySpec` (what `validate_delivery` checks the values of).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeliverySpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff_policy: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff_delay: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_max: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter_sink: Option<Destination>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
}

impl DeliverySpec {
    /// The dispatcher's policy for it.
    pub fn policy(&self) -> dispatcher::policy::DeliveryPolicy {
        let json = serde_json::to_value(self).unwrap_or(Value::Null);
        dispatcher::policy::DeliveryPolicy::from_spec(&json)
    }
}

/// Knative's `CloudEventOverrides`: extensions set on every event a source sends.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CeOverrides {
    #[serde(default)]
    pub extensions: BTreeMap<String, String>,
}

/// Checks a Knative `DeliverySpec` at `path`.
pub fn validate_delivery(path: &str, value: &Value, err: &mut impl FnMut(&str, String)) {
    let Some(obj) = value.as_object() else {
        err(path, "must be a mapping".into());
        return;
    };
    for (key, v) in obj {
        let field = format!("{path}.{key}");
        match key.as_str() {
            "retry" => match v.as_i64() {
                Some(n) if n >= 0 => {}
                _ => err(&field, format!("{v} must be a non-negative integer")),
            },
            "backoffPolicy" => match v.as_str() {
                Some("linear") | Some("exponential") => {}
                _ => err(&field, format!("{v} must be \"linear\" or \"exponential\"")),
            },
            "backoffDelay" | "timeout" | "retryAfterMax" => match v.as_str().map(parse_duration) {
                Some(Ok(d)) if key == "timeout" && d.is_zero() => {
                    err(&field, "must be greater than zero".into())
                }
                Some(Ok(_)) => {}
                _ => err(
                    &field,
                    format!("{v} is not an ISO-8601 duration (like PT0.2S or PT1M)"),
                ),
            },
            "deadLetterSink" => validate_destination(&field, v, err),
            "format" => match v.as_str() {
                Some("json") | Some("binary") => {}
                _ => err(&field, format!("{v} must be \"json\" or \"binary\"")),
            },
            _ => err(&field, "unknown field".into()),
        }
    }
}

/// Checks a Knative `Destination` (`uri`, `ref`, or both).
pub fn validate_destination(path: &str, value: &Value, err: &mut impl FnMut(&str, String)) {
    let Some(obj) = value.as_object() else {
        err(path, "must be a mapping with uri or ref".into());
        return;
    };
    if !obj.contains_key("uri") && !obj.contains_key("ref") {
        err(path, "needs uri or ref".into());
    }
    for (key, v) in obj {
        let field = format!("{path}.{key}");
        match key.as_str() {
            "uri" => match v.as_str() {
                Some(u) if obj.contains_key("ref") || url::Url::parse(u).is_ok() => {}
                _ => err(&field, format!("{v} is not an absolute URL")),
            },
            "ref" => match v.as_object() {
                Some(r) => {
                    for required in ["kind", "name"] {
                        if !r.get(required).is_some_and(Value::is_string) {
                            err(&format!("{field}.{required}"), "required".into());
                        }
                    }
                    for (k, v) in r {
                        match k.as_str() {
                            "kind" | "name" | "namespace" | "apiVersion" => {
                                if !v.is_string() {
                                    err(&format!("{field}.{k}"), "must be a string".into());
                                }
                            }
                            _ => err(&format!("{field}.{k}"), "unknown field".into()),
                        }
                    }
                }
                None => err(
                    &field,
                    "must be a mapping with kind, name, namespace, apiVersion".into(),
                ),
            },
            "CACerts" | "audience" => {}
            _ => err(&field, "unknown field".into()),
        }
    }
}

/// Checks an ISO-8601 duration annotation (`PT10S`), if present.
pub fn validate_duration_annotation(
    annotations: &BTreeMap<String, String>,
    name: &str,
    err: &mut impl FnMut(&str, String),
) {
    if let Some(v) = annotations.get(name) {
        match parse_duration(v) {
            Ok(d) if !d.is_zero() => {}
            _ => err(
                &format!("metadata.annotations.{name}"),
                format!("{v:?} is not a positive ISO-8601 duration (like PT10S)"),
            ),
        }
    }
}

pub use dispatcher::policy::parse_duration;

/// A duration in Go's syntax (Knative's annotations and `@every` use it): numbers with units `ns`, `us`, `µs`, `ms`, `s`, `m`, `h`
/// (`1h30m`, `1.5s`, `300ms`).
pub fn parse_go_duration(s: &str) -> Result<std::time::Duration, String> {
    if s.is_empty() {
        return Err("empty".into());
    }
    if s == "0" {
        return Ok(std::time::Duration::ZERO);
    }
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("{s:?}: a number needs a unit"))?;
        let number: f64 = rest[..num_len]
            .parse()
            .map_err(|_| format!("{s:?}: {:?} is not a number", &rest[..num_len]))?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let seconds = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            other => return Err(format!("{s:?}: unknown unit {other:?}")),
        };
        total += number * seconds;
        rest = &rest[unit_len..];
    }
    std::time::Duration::try_from_secs_f64(total).map_err(|e| format!("{s:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn durations() {
        assert_eq!(
            parse_duration("PT0.2S").unwrap(),
            std::time::Duration::from_millis(200)
        );
        assert_eq!(
            parse_duration("PT1M").unwrap(),
            std::time::Duration::from_secs(60)
        );
        assert!(parse_duration("5s").is_err());
    }

    #[test]
    fn decode_reports_the_path_of_an_unknown_field() {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct Spec {
            sink: Destination,
        }
        let mut errors = FieldErrors::new(1);
        let got: Option<Spec> = errors.decode(
            "spec",
            &json!({"sink": {"ref": {"kind": "Broker", "name": "b", "nmae": "x"}}}),
        );
        assert!(got.is_none());
        assert_eq!(errors.list[0].field, "spec.sink.ref.nmae");
        assert!(
            errors.list[0].message.contains("unknown field"),
            "{:?}",
            errors.list
        );
    }

    #[test]
    fn envelope_defaults_the_namespace_and_names_bad_fields() {
        let mut errors = FieldErrors::new(2);
        let got = envelope(
            &mut errors,
            &json!({"apiVersion": "x/v1", "kind": "K", "metadata": {"name": "Bad_Name"}, "extra": 1}),
        );
        let (_, _, meta, _) = got.unwrap();
        assert_eq!(meta.namespace, "default");
        let mut fields: Vec<&str> = errors.list.iter().map(|e| e.field.as_str()).collect();
        fields.sort();
        assert_eq!(fields, ["extra", "metadata.name"]);
        assert!(errors.list.iter().all(|e| e.document == 2));
    }
}
