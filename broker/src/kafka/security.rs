//! How Ferry's Kafka clients authenticate and encrypt: librdkafka's `security.protocol`, SASL
//! (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512) and TLS with PEM certificates. The same settings serve
//! the cluster Ferry keeps its brokers in (`ferry serve --kafka-*`) and the clusters of
//! KafkaSources (`spec.net`) and KafkaSinks (`spec.auth`). Secrets are never printed: `Debug`
//! shows whether they are set, not what they are.

use rdkafka::config::ClientConfig;

/// `security.protocol`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Protocol {
    #[default]
    Plaintext,
    Ssl,
    SaslPlaintext,
    SaslSsl,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Plaintext => "plaintext",
            Protocol::Ssl => "ssl",
            Protocol::SaslPlaintext => "sasl_plaintext",
            Protocol::SaslSsl => "sasl_ssl",
        }
    }

    pub fn sasl(self) -> bool {
        matches!(self, Protocol::SaslPlaintext | Protocol::SaslSsl)
    }

    pub fn tls(self) -> bool {
        matches!(self, Protocol::Ssl | Protocol::SaslSsl)
    }
}

impl std::str::FromStr for Protocol {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "plaintext" => Ok(Self::Plaintext),
            "ssl" => Ok(Self::Ssl),
            "sasl_plaintext" => Ok(Self::SaslPlaintext),
            "sasl_ssl" => Ok(Self::SaslSsl),
            _ => Err(format!(
                "{s:?}: use PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL"
            )),
        }
    }
}

/// `sasl.mechanism`s Ferry's librdkafka has (GSSAPI/Kerberos is not built in).
pub const MECHANISMS: &[&str] = &["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"];

/// A Kafka client's credentials and trust.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct KafkaSecurity {
    pub protocol: Protocol,
    /// `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512` (with a SASL protocol).
    pub mechanism: Option<String>,
    pub username: Option<String>,
    pub password: Option<String>,
    /// PEM CA certificates trusted for the brokers' certificates (else the system's).
    pub ca_pem: Option<String>,
    /// PEM client certificate and key (TLS client authentication).
    pub cert_pem: Option<String>,
    pub key_pem: Option<String>,
}

impl std::fmt::Debug for KafkaSecurity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSecurity")
            .field("protocol", &self.protocol)
            .field("mechanism", &self.mechanism)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "(set)"))
            .field("ca_pem", &self.ca_pem.as_ref().map(|_| "(set)"))
            .field("cert_pem", &self.cert_pem.as_ref().map(|_| "(set)"))
            .field("key_pem", &self.key_pem.as_ref().map(|_| "(set)"))
            .finish()
    }
}

impl KafkaSecurity {
    /// What is inconsistent, if anything (a SASL protocol without a user, a mechanism Ferry
    /// does not have, TLS material without TLS).
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.protocol.sasl() {
            match self.mechanism.as_deref() {
                Some(m) if MECHANISMS.contains(&m) => {}
                Some(m) => p.push(format!(
                    "SASL mechanism {m:?} is not supported (use {})",
                    MECHANISMS.join(", ")
                )),
                None => p.push("a SASL protocol needs a mechanism".into()),
            }
            if self.username.as_deref().is_none_or(str::is_empty) {
                p.push("a SASL protocol needs a user".into());
            }
            if self.password.is_none() {
                p.push("a SASL protocol needs a password".into());
            }
        } else if self.mechanism.is_some() || self.username.is_some() || self.password.is_some() {
            p.push(format!(
                "SASL settings are given but the protocol is {} (use SASL_PLAINTEXT or SASL_SSL)",
                self.protocol.as_str().to_ascii_uppercase()
            ));
        }
        if !self.protocol.tls() && (self.ca_pem.is_some() || self.cert_pem.is_some()) {
            p.push(format!(
                "TLS certificates are given but the protocol is {} (use SSL or SASL_SSL)",
                self.protocol.as_str().to_ascii_uppercase()
            ));
        }
        if self.cert_pem.is_some() != self.key_pem.is_some() {
            p.push("a client certificate needs its key, and a key its certificate".into());
        }
        p
    }

    /// Sets these on a client's configuration.
    pub fn apply(&self, c: &mut ClientConfig) {
        if self.protocol == Protocol::Plaintext {
            return;
        }
        c.set("security.protocol", self.protocol.as_str());
        let pairs = [
            ("sasl.mechanism", &self.mechanism),
            ("sasl.username", &self.username),
            ("sasl.password", &self.password),
            ("ssl.ca.pem", &self.ca_pem),
            ("ssl.certificate.pem", &self.cert_pem),
            ("ssl.key.pem", &self.key_pem),
        ];
        for (key, value) in pairs {
            if let Some(v) = value {
                c.set(key, v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_do_not_show_in_debug_output() {
        let s = KafkaSecurity {
            protocol: Protocol::SaslSsl,
            mechanism: Some("SCRAM-SHA-512".into()),
            username: Some("ferry".into()),
            password: Some("hunter2".into()),
            key_pem: Some("-----BEGIN PRIVATE KEY-----".into()),
            cert_pem: Some("cert".into()),
            ..Default::default()
        };
        let shown = format!("{s:?}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("PRIVATE"),
            "{shown}"
        );
        assert!(s.problems().is_empty(), "{:?}", s.problems());
    }

    #[test]
    fn inconsistent_settings_are_named() {
        let sasl_without_user = KafkaSecurity {
            protocol: Protocol::SaslPlaintext,
            mechanism: Some("GSSAPI".into()),
            ..Default::default()
        };
        let p = sasl_without_user.problems();
        assert!(p.iter().any(|m| m.contains("GSSAPI")), "{p:?}");
        assert!(p.iter().any(|m| m.contains("user")), "{p:?}");
        let tls_material_in_plaintext = KafkaSecurity {
            ca_pem: Some("ca".into()),
            ..Default::default()
        };
        assert_eq!(tls_material_in_plaintext.problems().len(), 1);
        assert!("SASL_SSL".parse::<Protocol>().is_ok());
        assert!("tls".parse::<Protocol>().is_err());
    }

    #[test]
    fn librdkafka_takes_every_protocol_and_mechanism() {
        // Built without `ssl` (or SASL SCRAM, which needs it), librdkafka refuses these.
        for (protocol, mechanism) in [
            (Protocol::Ssl, None),
            (Protocol::SaslSsl, Some("SCRAM-SHA-512")),
            (Protocol::SaslSsl, Some("SCRAM-SHA-256")),
            (Protocol::SaslPlaintext, Some("PLAIN")),
        ] {
            let s = KafkaSecurity {
                protocol,
                mechanism: mechanism.map(str::to_string),
                username: mechanism.map(|_| "u".to_string()),
                password: mechanism.map(|_| "p".to_string()),
                ..Default::default()
            };
            let mut c = ClientConfig::new();
            c.set("bootstrap.servers", "127.0.0.1:9")
                .set("compression.type", "zstd");
            s.apply(&mut c);
            let made: Result<rdkafka::producer::BaseProducer, _> = c.create();
            assert!(made.is_ok(), "{protocol:?} {mechanism:?}: {:?}", made.err());
        }
    }
}
