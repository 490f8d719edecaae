//! PingSource schedules, as Knative's parser (robfig/cron's standard parser) reads them: five
//! cron fields (`*/5 * * * *`), the descriptors `@yearly` `@annually` `@monthly` `@weekly`
//! `@daily` `@midnight` `@hourly`, `@every <duration>` (Go's duration syntax: `2s`, `1m30s`,
//! `1.5h`; under a second counts as a second), and a `CRON_TZ=<zone> ` or `TZ=<zone> `
//! prefix. The cron fields are croner's; the time zone is the source's `timezone`, else the
//! prefix's, else the machine's.

use crate::resource::parse_go_duration;
use chrono::{DateTime, Local, TimeZone, Utc};
use std::str::FromStr;
use std::time::Duration;

/// The longest `@every`.
const MAX_EVERY: Duration = Duration::from_secs(365 * 24 * 3600);

#[derive(Clone, Debug)]
pub enum Schedule {
    /// Cron fields, read in a time zone.
    Cron { cron: Box<croner::Cron>, zone: Zone },
    /// A fixed interval from the previous tick.
    Every(Duration),
}

/// Where cron fields are read.
#[derive(Clone, Copy, Debug)]
pub enum Zone {
    Local,
    Named(chrono_tz::Tz),
}

impl Schedule {
    /// Parses a schedule; `timezone` is the PingSource's `spec.timezone`. An error starting
    /// with "timezone" is about the time zone.
    pub fn parse(schedule: &str, timezone: Option<&str>) -> Result<Self, String> {
        let mut text = schedule.trim();
        let mut zone_name = None;
        for prefix in ["CRON_TZ=", "TZ="] {
            if let Some(rest) = text.strip_prefix(prefix) {
                let (zone, rest) = rest.split_once(char::is_whitespace).ok_or_else(|| {
                    format!("{schedule:?}: {prefix} needs a zone and then the schedule")
                })?;
                zone_name = Some(zone);
                text = rest.trim();
            }
        }
        if let (Some(_), Some(_)) = (zone_name, timezone) {
            return Err(
                "timezone: give it in spec.timezone or in the schedule's CRON_TZ=, not both".into(),
            );
        }
        let zone = match timezone.or(zone_name) {
            None => Zone::Local,
            Some(z) => Zone::Named(chrono_tz::Tz::from_str(z).map_err(|_| {
                format!("timezone: {z:?} is not an IANA time zone (like Europe/Paris)")
            })?),
        };
        if let Some(every) = text.strip_prefix("@every") {
            let d = parse_go_duration(every.trim()).map_err(|e| {
                format!("{schedule:?}: @every takes a duration like 2s or 1m30s: {e}")
            })?;
            if d > MAX_EVERY {
                return Err(format!("{schedule:?}: @every is at most 8760h (a year)"));
            }
            return Ok(Schedule::Every(d.max(Duration::from_secs(1))));
        }
        let pattern = if text.eq_ignore_ascii_case("@midnight") {
            "@daily"
        } else {
            text
        };
        let cron = croner::parser::CronParser::builder()
            .seconds(croner::parser::Seconds::Disallowed)
            .year(croner::parser::Year::Disallowed)
            .build()
            .parse(pattern)
            .map_err(|e| format!("{schedule:?} is not a cron schedule: {e}"))?;
        Ok(Schedule::Cron {
            cron: Box::new(cron),
            zone,
        })
    }

    /// The first tick after `t`.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Schedule::Every(d) => t.checked_add_signed(chrono::Duration::from_std(*d).ok()?),
            Schedule::Cron { cron, zone } => match zone {
                Zone::Local => next_in(cron, &Local, t),
                Zone::Named(tz) => next_in(cron, tz, t),
            },
        }
    }
}

fn next_in<Tz: TimeZone>(cron: &croner::Cron, tz: &Tz, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
    cron.find_next_occurrence(&t.with_timezone(tz), false)
        .ok()
        .map(|n| n.with_timezone(&Utc))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn cron_fields_and_descriptors_in_a_zone() {
        let s = Schedule::parse("*/15 * * * *", Some("UTC")).unwrap();
        assert_eq!(
            s.next_after(at("2026-01-01T10:07:00Z")),
            Some(at("2026-01-01T10:15:00Z"))
        );
        let hourly = Schedule::parse("@hourly", Some("UTC")).unwrap();
        assert_eq!(
            hourly.next_after(at("2026-01-01T10:07:00Z")),
            Some(at("2026-01-01T11:00:00Z"))
        );
        let midnight = Schedule::parse("@midnight", Some("Europe/Paris")).unwrap();
        assert_eq!(
            midnight.next_after(at("2026-01-01T10:07:00Z")),
            Some(at("2026-01-01T23:00:00Z"))
        );
        let prefixed = Schedule::parse("CRON_TZ=America/New_York 0 9 * * *", None).unwrap();
        assert_eq!(
            prefixed.next_after(at("2026-01-01T10:07:00Z")),
            Some(at("2026-01-01T14:00:00Z"))
        );
    }

    #[test]
    fn every_takes_go_durations() {
        let s = Schedule::parse("@every 2s", None).unwrap();
        assert_eq!(
            s.next_after(at("2026-01-01T10:00:00Z")),
            Some(at("2026-01-01T10:00:02Z"))
        );
        assert_eq!(parse_go_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_go_duration("1.5h"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_go_duration("300ms"), Ok(Duration::from_millis(300)));
        let short = Schedule::parse("@every 100ms", None).unwrap();
        assert!(matches!(short, Schedule::Every(d) if d == Duration::from_secs(1)));
        assert!(parse_go_duration("2 s").is_err());
        assert!(parse_go_duration("2").is_err());
        assert!(parse_go_duration("5d").is_err());
        assert!(Schedule::parse("@every 3000000000h", None).is_err());
    }

    #[test]
    fn bad_schedules_and_zones_are_named() {
        assert!(Schedule::parse("* * *", None)
            .unwrap_err()
            .contains("not a cron schedule"));
        assert!(Schedule::parse("61 * * * *", None).is_err());
        assert!(Schedule::parse("@every", None)
            .unwrap_err()
            .contains("@every"));
        let zone = Schedule::parse("* * * * *", Some("Mars/Olympus")).unwrap_err();
        assert!(zone.starts_with("timezone"), "{zone}");
        let both = Schedule::parse("TZ=UTC * * * * *", Some("UTC")).unwrap_err();
        assert!(both.starts_with("timezone"), "{both}");
    }
}
