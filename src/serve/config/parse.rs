//! Parsers of `ferry serve`'s flag and file values.

use broker::FsyncMode;
use std::time::Duration;

pub(super) fn parse_protocol(s: &str) -> Result<broker::kafka::security::Protocol, String> {
    s.parse()
}

pub(super) fn parse_mode(s: &str) -> Result<control::kinds::event_policy::DefaultMode, String> {
    s.parse()
}

pub(super) fn parse_net(s: &str) -> Result<ipnet::IpNet, String> {
    dispatcher::outbound::parse_net(s)
}

pub(super) fn parse_auth(s: &str) -> Result<control::auth::AuthMode, String> {
    s.parse()
}

pub(super) fn parse_fsync(s: &str) -> Result<FsyncMode, String> {
    match s {
        "always" => Ok(FsyncMode::Always),
        "never" => Ok(FsyncMode::Never),
        _ => Err(format!("{s:?}: use always or never")),
    }
}

pub(super) fn parse_humantime(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{s:?}: {e} (like 30s, 12h or 7d)"))
}

pub(super) mod mode_opt {
    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<control::kinds::event_policy::DefaultMode>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|s| s.parse().map_err(serde::de::Error::custom))
            .transpose()
    }
}

pub(super) mod protocol_opt {
    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<broker::kafka::security::Protocol>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|s| s.parse().map_err(serde::de::Error::custom))
            .transpose()
    }
}

pub(super) mod nets {
    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Vec<ipnet::IpNet>>, D::Error> {
        Option::<Vec<String>>::deserialize(d)?
            .map(|list| {
                list.iter()
                    .map(|s| dispatcher::outbound::parse_net(s).map_err(serde::de::Error::custom))
                    .collect()
            })
            .transpose()
    }
}

pub(super) mod humantime_serde_opt {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        match Option::<String>::deserialize(d)? {
            None => Ok(None),
            Some(s) => super::parse_humantime(&s)
                .map(Some)
                .map_err(serde::de::Error::custom),
        }
    }
}
