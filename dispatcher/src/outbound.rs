//! Where deliveries may go and what they carry (Knative's transport encryption and OIDC for
//! senders, without Kubernetes):
//!
//! - an [`Address`] is a resolved destination: its URL, the `audience` its receiver expects a
//!   token for (a Ferry broker's, or the destination's own), and the CA certificates
//!   (Knative's `CACerts`) that sign its HTTPS certificate besides the system's roots;
//! - with an audience, each request carries `Authorization: Bearer <JWT>` for that audience,
//!   from the [`TokenSource`] (Ferry's own signing key), naming the sending resource;
//! - redirects are never followed (a 3xx is a failed delivery, dead-lettered);
//! - [`Networks`]: destinations in denied networks (by default link-local, where cloud
//!   metadata services answer, e.g. 169.254.169.254) are refused, checked when a trigger is
//!   reconciled (its `Ready` says why) and again for every address a host name resolves to.

use ipnet::IpNet;
use std::net::IpAddr;
use std::sync::Arc;

/// A resolved destination.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Address {
    pub url: String,
    /// Send a JWT for this audience with each request.
    pub audience: Option<String>,
    /// PEM CA certificates trusted for this destination besides the system's roots.
    pub ca_certs: Option<String>,
}

/// Mints the bearer tokens deliveries carry.
pub trait TokenSource: Send + Sync {
    /// A token saying `subject` sends, for `audience`.
    fn token(&self, subject: &str, audience: &str) -> Result<String, String>;
}

/// A [`TokenSource`] given later (Ferry's issuer needs the control plane, which starts after
/// the dispatcher): until then minting fails, and a delivery that needs a token is retried.
#[derive(Default)]
pub struct Deferred(std::sync::OnceLock<Arc<dyn TokenSource>>);

impl Deferred {
    pub fn set(&self, tokens: Arc<dyn TokenSource>) {
        let _ = self.0.set(tokens);
    }
}

impl TokenSource for Deferred {
    fn token(&self, subject: &str, audience: &str) -> Result<String, String> {
        match self.0.get() {
            Some(t) => t.token(subject, audience),
            None => Err("Ferry's issuer is not ready yet".into()),
        }
    }
}

/// Who sends a delivery and how it proves it: the subject and where its tokens come from.
#[derive(Clone)]
pub struct Credentials {
    pub subject: String,
    pub audience: String,
    pub tokens: Arc<dyn TokenSource>,
}

/// The destination networks deliveries may reach.
#[derive(Clone, Debug)]
pub struct Networks {
    /// If not empty, only these.
    pub allow: Vec<IpNet>,
    /// Never these (wins over `allow`).
    pub deny: Vec<IpNet>,
}

impl Default for Networks {
    /// Denies link-local networks (IPv4 169.254.0.0/16, IPv6 fe80::/10): cloud metadata
    /// services answer there.
    fn default() -> Self {
        Self {
            allow: Vec::new(),
            deny: default_deny(),
        }
    }
}

/// `--delivery-deny-cidr`'s default.
pub fn default_deny() -> Vec<IpNet> {
    ["169.254.0.0/16", "fe80::/10"]
        .iter()
        .filter_map(|n| n.parse().ok())
        .collect()
}

impl Networks {
    /// Why `ip` may not be delivered to, if it may not.
    pub fn refuses(&self, ip: IpAddr) -> Option<String> {
        // An IPv4 address written as IPv6 (::ffff:169.254.169.254) is the IPv4 address.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        if let Some(net) = self.deny.iter().find(|n| n.contains(&ip)) {
            return Some(format!(
                "{ip} is in the denied network {net} (--delivery-deny-cidr)"
            ));
        }
        if !self.allow.is_empty() && !self.allow.iter().any(|n| n.contains(&ip)) {
            return Some(format!(
                "{ip} is outside the allowed networks (--delivery-allow-cidr)"
            ));
        }
        None
    }

    /// Checks a destination URL: its scheme, and its host if written as an address or as a
    /// name that resolves now (a name that does not resolve yet is checked at delivery).
    pub async fn check(&self, url: &str) -> Result<(), String> {
        let parsed = url::Url::parse(url).map_err(|e| format!("{url:?} is not a URL: {e}"))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(format!("{url:?}: deliveries use http or https"));
        }
        let port = parsed.port_or_known_default().unwrap_or(80);
        match parsed.host() {
            None => Err(format!("{url:?} has no host")),
            Some(url::Host::Ipv4(ip)) => self.refuses(IpAddr::V4(ip)).map_or(Ok(()), Err),
            Some(url::Host::Ipv6(ip)) => self.refuses(IpAddr::V6(ip)).map_or(Ok(()), Err),
            Some(url::Host::Domain(name)) => {
                let Ok(addrs) = tokio::net::lookup_host((name, port)).await else {
                    return Ok(());
                };
                for a in addrs {
                    if let Some(why) = self.refuses(a.ip()) {
                        return Err(format!("{name} resolves to {}: {why}", a.ip()));
                    }
                }
                Ok(())
            }
        }
    }
}

/// Parses `--delivery-deny-cidr`/`--delivery-allow-cidr` values (`10.0.0.0/8`, or one
/// address).
pub fn parse_net(s: &str) -> Result<IpNet, String> {
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{s:?} is not a network (like 10.0.0.0/8) or an address"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_local_and_metadata_addresses_are_refused_by_default() {
        let n = Networks::default();
        for ip in ["169.254.169.254", "fe80::1", "::ffff:169.254.169.254"] {
            assert!(n.refuses(ip.parse().unwrap()).is_some(), "{ip}");
        }
        for ip in ["127.0.0.1", "10.1.2.3", "::1", "93.184.216.34"] {
            assert!(n.refuses(ip.parse().unwrap()).is_none(), "{ip}");
        }
    }

    #[test]
    fn an_allow_list_admits_only_its_networks_and_deny_wins() {
        let n = Networks {
            allow: vec![parse_net("10.0.0.0/8").unwrap()],
            deny: vec![parse_net("10.9.9.9").unwrap()],
        };
        assert!(n.refuses("10.1.1.1".parse().unwrap()).is_none());
        assert!(n.refuses("10.9.9.9".parse().unwrap()).is_some());
        assert!(n.refuses("192.168.1.1".parse().unwrap()).is_some());
        assert!(parse_net("nonsense").is_err());
    }

    #[tokio::test]
    async fn urls_are_checked_by_scheme_and_address() {
        let n = Networks::default();
        assert!(n
            .check("http://169.254.169.254/latest/meta-data")
            .await
            .is_err());
        assert!(n.check("http://[fe80::1]:8080/").await.is_err());
        assert!(n.check("ftp://example.com/").await.is_err());
        assert!(n.check("http://127.0.0.1:9/").await.is_ok());
    }
}
