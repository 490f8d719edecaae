//! EventPolicy (`eventing.knative.dev/v1alpha1`): who may send which events to which brokers
//! and KafkaSinks of a namespace (enforced with `--auth tokens`, as Knative enforces it with
//! OIDC on).
//!
//! - `spec.to`: `ref` (a Broker or KafkaSink by name) or `selector` (`kind`/`apiVersion`
//!   optional, `matchLabels`); empty: every broker and sink of the namespace.
//! - `spec.from`: `sub` (a token's name or a JWT's `sub`, `*` matching any run of characters)
//!   or `ref` (a Ferry resource: its subject, `system:serviceaccount:NS:ferry-KIND-NAME`, is
//!   what its deliveries' tokens carry).
//! - `spec.filters`: Subscriptions API filters (`exact`, `prefix`, `suffix`, `all`, `any`,
//!   `not`, `cesql`), all of which an event must match.
//!
//! A request to an addressable that policies select is admitted when, for each of its events,
//! one of those policies has a `from` that names the sender and filters the event matches.
//! An addressable no policy selects gets `--default-authorization-mode`: `allow-all`,
//! `deny-all`, or `allow-same-namespace` (Knative's default: a token limited to the
//! namespace or one of every namespace; a JWT whose subject is
//! `system:serviceaccount:NAMESPACE:...`).

use crate::auth::{Auth, Home, Identity, Listener};
use crate::kind::{cell, ready_cell, Flags, Kind, KindInfo, Reconciled};
use crate::plane::ControlPlane;
use crate::resource::{FieldErrors, Key, Resource};
use crate::status::{status, NotReady};
use async_trait::async_trait;
use dispatcher::filter::Filter;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

/// `--default-authorization-mode`: what applies where no EventPolicy selects.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DefaultMode {
    AllowAll,
    DenyAll,
    #[default]
    AllowSameNamespace,
}

impl std::str::FromStr for DefaultMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "allow-all" => Ok(Self::AllowAll),
            "deny-all" => Ok(Self::DenyAll),
            "allow-same-namespace" => Ok(Self::AllowSameNamespace),
            _ => Err(format!(
                "{s:?}: use allow-all, deny-all or allow-same-namespace"
            )),
        }
    }
}

impl DefaultMode {
    fn name(self) -> &'static str {
        match self {
            Self::AllowAll => "allow-all",
            Self::DenyAll => "deny-all",
            Self::AllowSameNamespace => "allow-same-namespace",
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Spec {
    #[serde(default)]
    pub to: Vec<To>,
    #[serde(default)]
    pub from: Vec<From>,
    #[serde(default)]
    pub filters: Option<Value>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct To {
    #[serde(default, rename = "ref")]
    pub reference: Option<ToRef>,
    #[serde(default)]
    pub selector: Option<Selector>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ToRef {
    #[serde(default)]
    pub api_version: Option<String>,
    pub kind: String,
    pub name: String,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Selector {
    #[serde(default)]
    pub api_version: Option<String>,
    #[serde(default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct From {
    #[serde(default, rename = "ref")]
    pub reference: Option<FromRef>,
    #[serde(default)]
    pub sub: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FromRef {
    #[serde(default)]
    pub api_version: Option<String>,
    pub kind: String,
    pub name: String,
    #[serde(default)]
    pub namespace: Option<String>,
}

/// The kinds a policy can be about: what the ingress takes events for.
const TARGET_KINDS: &[&str] = &["Broker", "KafkaSink"];

fn target_kind(kind: &str) -> Option<&'static str> {
    TARGET_KINDS
        .iter()
        .find(|k| k.eq_ignore_ascii_case(kind))
        .copied()
}

/// One policy, compiled.
#[derive(Clone, Debug)]
struct Compiled {
    name: String,
    /// Empty: every addressable of the namespace.
    to: Vec<CompiledTo>,
    /// Subject patterns (`*` wildcards).
    from: Vec<String>,
    filter: Filter,
}

#[derive(Clone, Debug)]
enum CompiledTo {
    Ref {
        kind: &'static str,
        name: String,
    },
    Selector {
        kind: Option<&'static str>,
        labels: BTreeMap<String, String>,
    },
}

impl Compiled {
    fn deny_all(name: &str) -> Self {
        Self {
            name: name.to_string(),
            to: Vec::new(),
            from: Vec::new(),
            filter: Filter::Everything,
        }
    }

    fn selects_by_name(&self, kind: &str, name: &str) -> Option<bool> {
        if self.to.is_empty() {
            return Some(true);
        }
        let mut needs_labels = false;
        for t in &self.to {
            match t {
                CompiledTo::Ref { kind: k, name: n } if *k == kind && n == name => {
                    return Some(true)
                }
                CompiledTo::Selector { kind: k, .. } if k.is_none_or(|k| k == kind) => {
                    needs_labels = true
                }
                _ => {}
            }
        }
        (!needs_labels).then_some(false)
    }

    fn selects(&self, kind: &str, name: &str, labels: &BTreeMap<String, String>) -> bool {
        if let Some(known) = self.selects_by_name(kind, name) {
            return known;
        }
        self.to.iter().any(|t| match t {
            CompiledTo::Ref { kind: k, name: n } => *k == kind && n == name,
            CompiledTo::Selector {
                kind: k,
                labels: want,
            } => k.is_none_or(|k| k == kind) && want.iter().all(|(l, v)| labels.get(l) == Some(v)),
        })
    }

    fn admits(&self, subject: &str, event: &broker::Event) -> bool {
        self.from.iter().any(|p| glob(p, subject)) && self.filter.matches(event)
    }
}

/// `pattern` with `*` matching any run of characters, against `text`.
fn glob(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !text.starts_with(first) || text.len() < first.len() + last.len() || !text.ends_with(last) {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for middle in &parts[1..parts.len() - 1] {
        match rest.find(middle) {
            Some(at) => rest = &rest[at + middle.len()..],
            None => return false,
        }
    }
    true
}

/// The policies of every namespace, compiled, as the EventPolicy kind reconciles them.
#[derive(Default)]
pub struct PolicyTable {
    by_namespace: RwLock<HashMap<String, BTreeMap<String, Arc<Compiled>>>>,
}

impl PolicyTable {
    /// Compiles every stored policy, before the ingress takes requests: until then the table
    /// would be empty and every broker would get the default mode.
    pub fn load(&self, cp: &ControlPlane) -> Result<usize, crate::plane::ControlError> {
        let stored = cp.list(INFO.kind, None)?;
        for r in &stored {
            let (ns, name) = (&r.metadata.namespace, &r.metadata.name);
            let compiled = r
                .spec_as::<Spec>()
                .map_err(|e| vec![("spec".to_string(), e)])
                .and_then(|spec| compile(Some(cp), ns, name, &spec))
                .unwrap_or_else(|_| Compiled::deny_all(name));
            // A reconcile that ran meanwhile saw a state at least as new.
            self.set_if_absent(ns, compiled);
        }
        Ok(stored.len())
    }

    fn set(&self, ns: &str, compiled: Compiled) {
        if let Ok(mut t) = self.by_namespace.write() {
            t.entry(ns.to_string())
                .or_default()
                .insert(compiled.name.clone(), Arc::new(compiled));
        }
    }

    fn set_if_absent(&self, ns: &str, compiled: Compiled) {
        if let Ok(mut t) = self.by_namespace.write() {
            t.entry(ns.to_string())
                .or_default()
                .entry(compiled.name.clone())
                .or_insert_with(|| Arc::new(compiled));
        }
    }

    fn remove(&self, ns: &str, name: &str) {
        if let Ok(mut t) = self.by_namespace.write() {
            if let Some(m) = t.get_mut(ns) {
                m.remove(name);
                if m.is_empty() {
                    t.remove(ns);
                }
            }
        }
    }

    fn of(&self, ns: &str) -> Vec<Arc<Compiled>> {
        self.by_namespace
            .read()
            .ok()
            .and_then(|t| t.get(ns).map(|m| m.values().cloned().collect()))
            .unwrap_or_default()
    }
}

pub struct EventPolicy {
    table: Arc<PolicyTable>,
}

impl EventPolicy {
    pub fn new(table: Arc<PolicyTable>) -> Self {
        Self { table }
    }
}

static INFO: KindInfo = KindInfo {
    group: "eventing.knative.dev",
    version: "v1alpha1",
    kind: "EventPolicy",
    plural: "eventpolicies",
    short_names: &["ep"],
    addressable: false,
    columns: &["READY", "FROM"],
};

const CONDITIONS: &[&str] = &["Ready"];

/// Compiles a policy of namespace `ns`; the errors name their fields.
fn compile(
    cp: Option<&ControlPlane>,
    ns: &str,
    name: &str,
    spec: &Spec,
) -> Result<Compiled, Vec<(String, String)>> {
    let mut errors = Vec::new();
    let mut to = Vec::new();
    for (i, t) in spec.to.iter().enumerate() {
        let field = format!("spec.to[{i}]");
        match (&t.reference, &t.selector) {
            (Some(r), None) => match target_kind(&r.kind) {
                Some(kind) => to.push(CompiledTo::Ref {
                    kind,
                    name: r.name.clone(),
                }),
                None => errors.push((
                    format!("{field}.ref.kind"),
                    format!("{:?}: policies apply to Broker and KafkaSink", r.kind),
                )),
            },
            (None, Some(s)) => {
                let kind = match s.kind.as_deref().map(|k| (k, target_kind(k))) {
                    None => None,
                    Some((_, Some(k))) => Some(k),
                    Some((k, None)) => {
                        errors.push((
                            format!("{field}.selector.kind"),
                            format!("{k:?}: policies apply to Broker and KafkaSink"),
                        ));
                        None
                    }
                };
                to.push(CompiledTo::Selector {
                    kind,
                    labels: s.match_labels.clone(),
                });
            }
            _ => errors.push((field, "give exactly one of ref and selector".into())),
        }
    }
    if spec.from.is_empty() {
        errors.push((
            "spec.from".into(),
            "required: at least one sub or ref that may send".into(),
        ));
    }
    let mut from = Vec::new();
    for (i, f) in spec.from.iter().enumerate() {
        let field = format!("spec.from[{i}]");
        match (&f.reference, &f.sub) {
            (None, Some(sub)) if !sub.is_empty() => from.push(sub.clone()),
            (Some(r), None) => {
                let kind = cp
                    .and_then(|cp| cp.registry().find(&r.kind))
                    .map_or(r.kind.clone(), |k| k.info().kind.to_string());
                from.push(crate::auth::subject_of(
                    &kind,
                    r.namespace.as_deref().unwrap_or(ns),
                    &r.name,
                ));
            }
            _ => errors.push((field, "give exactly one of ref and a non-empty sub".into())),
        }
    }
    let filter = match Filter::compile(None, spec.filters.as_ref()) {
        Ok(f) => f,
        Err(errs) => {
            errors.extend(errs.into_iter().map(|e| (e.field, e.message)));
            Filter::Everything
        }
    };
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(Compiled {
        name: name.to_string(),
        to,
        from,
        filter,
    })
}

#[async_trait]
impl Kind for EventPolicy {
    fn info(&self) -> &'static KindInfo {
        &INFO
    }

    fn validate(&self, r: &Resource, errors: &mut FieldErrors) {
        let Some(spec) = errors.decode::<Spec>("spec", &r.spec) else {
            return;
        };
        if let Err(errs) = compile(None, &r.metadata.namespace, &r.metadata.name, &spec) {
            for (field, message) in errs {
                errors.push(&field, message);
            }
        }
    }

    async fn reconcile(&self, cp: &ControlPlane, r: &Resource, _pass: Flags) -> Reconciled {
        let (ns, name) = (&r.metadata.namespace, &r.metadata.name);
        let compiled = r
            .spec_as::<Spec>()
            .map_err(|e| vec![("spec".to_string(), e)])
            .and_then(|spec| compile(Some(cp), ns, name, &spec));
        match compiled {
            Ok(c) => {
                let from = c.from.clone();
                self.table.set(ns, c);
                let mut s = status(&r.status, r.metadata.generation, CONDITIONS, None);
                s["from"] = json!(from);
                Reconciled::done(s)
            }
            Err(errs) => {
                // Fail closed: a policy that does not compile lets nothing into its namespace
                // (rather than leaving its brokers to the default mode).
                self.table.set(ns, Compiled::deny_all(name));
                let text: Vec<String> = errs.iter().map(|(f, m)| format!("{f}: {m}")).collect();
                let f = NotReady::new("Ready", "InvalidSpec", text.join("; "));
                Reconciled::done(status(
                    &r.status,
                    r.metadata.generation,
                    CONDITIONS,
                    Some(&f),
                ))
            }
        }
    }

    async fn release(&self, _cp: &ControlPlane, key: &Key) {
        self.table.remove(&key.namespace, &key.name);
    }

    fn has_dependents(&self) -> bool {
        false
    }

    fn row(&self, r: &Resource) -> Vec<String> {
        vec![ready_cell(r), cell(r, "/status/from")]
    }
}

/// The ingress's admission by EventPolicies (and the default mode).
pub struct Policies {
    pub table: Arc<PolicyTable>,
    pub auth: Arc<Auth>,
    pub control: Arc<ControlPlane>,
    pub default: DefaultMode,
}

impl Policies {
    fn decide(
        &self,
        identity: &Identity,
        kind: &'static str,
        ns: &str,
        name: &str,
        events: &[broker::Event],
    ) -> Result<(), String> {
        let all = self.table.of(ns);
        let mut labels = None;
        let selecting: Vec<&Arc<Compiled>> = all
            .iter()
            .filter(|p| match p.selects_by_name(kind, name) {
                Some(known) => known,
                None => {
                    let labels = labels.get_or_insert_with(|| {
                        self.control
                            .find(kind, ns, name)
                            .ok()
                            .flatten()
                            .map(|r| r.metadata.labels)
                            .unwrap_or_default()
                    });
                    p.selects(kind, name, labels)
                }
            })
            .collect();
        let subject = &identity.subject;
        if selecting.is_empty() {
            let allowed = match self.default {
                DefaultMode::AllowAll => true,
                DefaultMode::DenyAll => false,
                DefaultMode::AllowSameNamespace => match identity.home() {
                    Home::Everywhere => true,
                    Home::In(home) => home == ns,
                    Home::Nowhere => false,
                },
            };
            return if allowed {
                Ok(())
            } else {
                Err(format!(
                    "no EventPolicy selects {kind} {ns}/{name}, and the default authorization \
                     mode {} does not let {subject:?} send to it",
                    self.default.name()
                ))
            };
        }
        for event in events {
            if !selecting.iter().any(|p| p.admits(subject, event)) {
                let names: Vec<&str> = selecting.iter().map(|p| p.name.as_str()).collect();
                return Err(format!(
                    "no EventPolicy of {kind} {ns}/{name} ({}) lets {subject:?} send event {:?} \
                     of type {:?}",
                    names.join(", "),
                    event.attr_text("id").unwrap_or_default(),
                    event.attr_text("type").unwrap_or_default(),
                ));
            }
        }
        Ok(())
    }
}

impl ingress::Admission for Policies {
    fn admit(
        &self,
        sender: &http::Extensions,
        to: ingress::Addressee<'_>,
        events: &[broker::Event],
    ) -> Result<(), String> {
        // No identity: auth is off, and policies are not enforced (as in Knative without OIDC).
        let Some(identity) = sender.get::<Identity>() else {
            return Ok(());
        };
        let (kind, ns, name) = match to {
            ingress::Addressee::Broker { namespace, name } => ("Broker", namespace, name),
            ingress::Addressee::KafkaSink { namespace, name } => ("KafkaSink", namespace, name),
        };
        let decided = self.decide(identity, kind, ns, name, events);
        if let Err(why) = &decided {
            self.auth.count_refusal(Listener::Ingress, "forbidden");
            tracing::warn!(subject = %identity.subject, to = %format!("{ns}/{name}"), reason = %why, "refused by event policy");
        }
        decided
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_match_with_wildcards() {
        assert!(glob("shop-*", "shop-producer"));
        assert!(glob(
            "system:serviceaccount:default:other-*",
            "system:serviceaccount:default:other-app"
        ));
        assert!(glob("*", "anything"));
        assert!(glob("a*c*e", "abcde"));
        assert!(!glob("a*c*e", "abde"));
        assert!(!glob("shop-*", "shop"));
        assert!(glob("exact", "exact"));
        assert!(!glob("exact", "exactly"));
        assert!(!glob("ab*ba", "aba"));
    }

    fn spec(v: Value) -> Spec {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn a_policy_selects_by_ref_kind_and_labels() {
        let p = compile(
            None,
            "shop",
            "p",
            &spec(json!({
                "to": [{"ref": {"kind": "Broker", "name": "orders"}},
                       {"selector": {"kind": "KafkaSink", "matchLabels": {"team": "a"}}}],
                "from": [{"sub": "x"}],
            })),
        )
        .unwrap();
        let none = BTreeMap::new();
        let team: BTreeMap<String, String> = [("team".to_string(), "a".to_string())].into();
        assert!(p.selects("Broker", "orders", &none));
        assert!(!p.selects("Broker", "other", &team));
        assert!(p.selects("KafkaSink", "s", &team));
        assert!(!p.selects("KafkaSink", "s", &none));
        assert_eq!(p.selects_by_name("Broker", "orders"), Some(true));
        assert_eq!(p.selects_by_name("Broker", "other"), Some(false));
        assert_eq!(p.selects_by_name("KafkaSink", "s"), None);
    }

    #[test]
    fn bad_policies_name_their_fields() {
        let errs = compile(
            None,
            "ns",
            "p",
            &spec(json!({
                "to": [{"ref": {"kind": "Trigger", "name": "t"}}, {}],
                "from": [{"sub": ""}],
                "filters": [{"cesql": "type = "}],
            })),
        )
        .unwrap_err();
        let fields: Vec<&str> = errs.iter().map(|(f, _)| f.as_str()).collect();
        assert!(fields.contains(&"spec.to[0].ref.kind"), "{errs:?}");
        assert!(fields.contains(&"spec.to[1]"), "{errs:?}");
        assert!(fields.contains(&"spec.from[0]"), "{errs:?}");
        assert!(
            fields.iter().any(|f| f.starts_with("spec.filters[0]")),
            "{errs:?}"
        );
        let errs = compile(None, "ns", "p", &spec(json!({"to": []}))).unwrap_err();
        assert_eq!(errs[0].0, "spec.from");
    }

    #[test]
    fn from_refs_become_the_resources_subjects() {
        let p = compile(
            None,
            "shop",
            "p",
            &spec(json!({
                "from": [{"ref": {"kind": "PingSource", "name": "tick"}},
                         {"ref": {"kind": "Trigger", "name": "t", "namespace": "other"}}],
            })),
        )
        .unwrap();
        assert_eq!(
            p.from,
            [
                "system:serviceaccount:shop:ferry-pingsource-tick",
                "system:serviceaccount:other:ferry-trigger-t"
            ]
        );
    }
}
