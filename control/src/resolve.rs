//! Addresses: a Knative `Destination` resolved to a URL. A `ref` names any resource whose
//! kind is addressable, and resolves to its `status.address.url` (Knative's duck type), with a
//! `uri` beside it taken relative to that address (D-07). `handler:NAME` names one of Ferry's
//! in-process subscribers (a system trigger's controller).

use crate::plane::ControlPlane;
use crate::resource::{Destination, Key};
use dispatcher::outbound::Address;
use serde_json::Value;

/// The scheme of an in-process subscriber's address.
pub const HANDLER_SCHEME: &str = "handler:";

impl ControlPlane {
    /// The URL a `Destination` (as stored, JSON) stands for in `namespace`.
    pub fn resolve(&self, dest: &Value, namespace: &str) -> Result<String, String> {
        let dest: Destination =
            serde_json::from_value(dest.clone()).map_err(|e| format!("not a destination: {e}"))?;
        self.resolve_destination(&dest, namespace)
    }

    pub fn resolve_destination(
        &self,
        dest: &Destination,
        namespace: &str,
    ) -> Result<String, String> {
        self.resolve_address(dest, namespace).map(|a| a.url)
    }

    /// A `Destination` resolved to where deliveries go: its URL, the audience its receiver
    /// expects a token for and the CA certificates of its HTTPS certificate — the
    /// destination's own `audience` and `CACerts`, else those its `ref`'s address publishes.
    pub fn resolve_address(&self, dest: &Destination, namespace: &str) -> Result<Address, String> {
        let Some(r) = &dest.reference else {
            let url = dest
                .uri
                .clone()
                .ok_or_else(|| "the destination has neither uri nor ref".to_string())?;
            // A URL of Ferry's own ingress is a broker's or sink's address: the same audience
            // and CA as a `ref` to it would give.
            let own = self.own_address(&url);
            return Ok(Address {
                audience: dest
                    .audience
                    .clone()
                    .or_else(|| own.as_ref().map(|(aud, _)| aud.clone())),
                ca_certs: dest.ca_certs.clone().or_else(|| own.and_then(|(_, ca)| ca)),
                url,
            });
        };
        let kind_name = &r.kind;
        let ns = r.namespace.as_deref().unwrap_or(namespace);
        let kind = self.registry().find(kind_name).ok_or_else(|| {
            format!("cannot resolve a {kind_name}: Ferry has no resources of that kind")
        })?;
        let info = kind.info();
        if !info.addressable {
            return Err(format!("a {} has no address", info.kind));
        }
        let target = self
            .find(info.kind, ns, &r.name)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("{} {ns}/{} does not exist", info.kind, r.name))?;
        let published = |field: &str| {
            target
                .status
                .pointer(&format!("/address/{field}"))
                .and_then(Value::as_str)
                .map(str::to_string)
        };
        let audience = dest.audience.clone().or_else(|| published("audience"));
        let ca_certs = dest.ca_certs.clone().or_else(|| published("CACerts"));
        let base = target
            .status
            .pointer("/address/url")
            .and_then(Value::as_str)
            .ok_or_else(|| {
                format!(
                    "{} {ns}/{} has no address (not Ready, or not addressable)",
                    info.kind, r.name
                )
            })?;
        let url = match &dest.uri {
            None => base.to_string(),
            Some(rel) => url::Url::parse(&format!("{}/", base.trim_end_matches('/')))
                .and_then(|b| b.join(rel.trim_start_matches('/')))
                .map(|u| u.to_string())
                .map_err(|e| format!("uri {rel:?} relative to {base}: {e}"))?,
        };
        Ok(Address {
            url,
            audience,
            ca_certs,
        })
    }

    /// For a URL under the ingress's (`{ingress}/NS/BROKER`, `{ingress}/kafkasinks/NS/NAME`):
    /// the audience of that broker or sink, and the CA of Ferry's certificate (`--tls-ca`).
    fn own_address(&self, url: &str) -> Option<(String, Option<String>)> {
        let base = format!("{}/", self.config().ingress_url.trim_end_matches('/'));
        let path = url.strip_prefix(&base)?;
        let path = path.split(['?', '#']).next().unwrap_or_default();
        let parts: Vec<&str> = path.trim_end_matches('/').split('/').collect();
        let audience = match parts.as_slice() {
            ["kafkasinks", ns, name] => {
                crate::auth::audience("eventing.knative.dev", "KafkaSink", ns, name)
            }
            [ns, name] => crate::auth::audience("eventing.knative.dev", "Broker", ns, name),
            _ => return None,
        };
        Some((audience, self.config().address_ca.clone()))
    }

    /// The resource a destination's `ref` names, as a dependency (`None` for a plain URI or a
    /// kind Ferry does not have).
    pub fn referenced(&self, dest: Option<&Value>, namespace: &str) -> Option<Key> {
        let r = dest?.get("ref")?;
        let kind = self.registry().find(r.get("kind")?.as_str()?)?;
        let ns = r
            .get("namespace")
            .and_then(Value::as_str)
            .unwrap_or(namespace);
        Some(Key::new(kind.info().kind, ns, r.get("name")?.as_str()?))
    }
}

/// The paths of every `uri` under `value` that names an in-process handler (`handler:NAME`).
pub fn handler_uris(value: &Value, path: &str) -> Vec<String> {
    let mut found = Vec::new();
    match value {
        Value::Object(m) => {
            for (k, v) in m {
                let here = format!("{path}.{k}");
                if k == "uri" && v.as_str().is_some_and(|u| u.starts_with(HANDLER_SCHEME)) {
                    found.push(here);
                } else {
                    found.extend(handler_uris(v, &here));
                }
            }
        }
        Value::Array(a) => {
            for (i, v) in a.iter().enumerate() {
                found.extend(handler_uris(v, &format!("{path}[{i}]")));
            }
        }
        _ => {}
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn handler_uris_are_found_wherever_they_are() {
        let spec = json!({
            "subscriber": {"uri": "handler:autoscaler"},
            "delivery": {"deadLetterSink": {"uri": "http://x/"}},
            "list": [{"uri": "handler:x"}],
        });
        let mut found = handler_uris(&spec, "spec");
        found.sort();
        assert_eq!(found, ["spec.list[0].uri", "spec.subscriber.uri"]);
    }
}
