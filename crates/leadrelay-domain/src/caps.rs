//! Delivery caps: how many leads a destination takes per hour, day, week, month or in total,
//! counted in the cap's time zone, optionally only for leads matching the cap's rules. Only
//! successful deliveries count; the lowest cap reached stops the delivery.

use chrono::{Datelike, Duration, NaiveDateTime, TimeZone, Timelike, Utc};
use chrono_tz::Tz;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::config::{Cap, CapWindow, Destination};
use crate::lead::LeadView;
use crate::rules::{CompiledRuleSet, RuleSet};
use crate::time::Millis;

/// One cap that applies to a lead now: the counter it uses and its limit.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CapWindowKey {
    pub destination_id: String,
    /// Names the cap by its definition (window, time zone, rules), so an edited cap counts
    /// afresh and an unchanged one keeps its count.
    pub cap_key: String,
    pub window_start: Millis,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ApplicableCap {
    pub key: CapWindowKey,
    pub max: u64,
    pub window: CapWindow,
}

impl ApplicableCap {
    /// The reason a lead is skipped: `Daily cap reached (100/100)`.
    pub fn reached(&self, count: u64) -> String {
        format!("{} cap reached ({count}/{})", self.label(), self.max)
    }

    /// The window as a reason names it: `Daily`.
    pub fn label(&self) -> &'static str {
        match self.window {
            CapWindow::Hour => "Hourly",
            CapWindow::Day => "Daily",
            CapWindow::Week => "Weekly",
            CapWindow::Month => "Monthly",
            CapWindow::Total => "Total",
        }
    }
}

fn cap_key(cap: &Cap) -> String {
    let mut hasher = Sha256::new();
    hasher.update(serde_json::json!([cap.window, cap.time_zone, cap.rules]).to_string().as_bytes());
    hex::encode(&hasher.finalize()[..8])
}

/// A local wall-clock time as an instant; a time that a DST change skipped counts from the
/// first instant after the gap.
fn instant(tz: Tz, local: NaiveDateTime) -> Millis {
    match tz.from_local_datetime(&local).earliest() {
        Some(moment) => moment.timestamp_millis(),
        None => tz.from_utc_datetime(&(local - Duration::hours(1))).timestamp_millis() + 3_600_000,
    }
}

/// The start of the window that contains `now`, in the time zone.
pub fn window_start(window: CapWindow, tz: Tz, now: Millis) -> Millis {
    let Some(utc) = Utc.timestamp_millis_opt(now).single() else { return 0 };
    let local = utc.with_timezone(&tz).naive_local();
    let midnight = |date: chrono::NaiveDate| date.and_hms_opt(0, 0, 0).unwrap_or(local);
    match window {
        CapWindow::Total => 0,
        CapWindow::Hour => instant(tz, local.date().and_hms_opt(local.hour(), 0, 0).unwrap_or(local)),
        CapWindow::Day => instant(tz, midnight(local.date())),
        CapWindow::Week => {
            let monday = local.date() - Duration::days(i64::from(local.weekday().num_days_from_monday()));
            instant(tz, midnight(monday))
        }
        CapWindow::Month => instant(tz, midnight(local.date().with_day(1).unwrap_or(local.date()))),
    }
}

/// The caps of a destination that apply to a lead (its snapshot) at `now`; `rules` are the
/// caps' compiled rules ([`crate::compiled::CompiledRules::cap_rules`], read as the flows'
/// field types), in the order of the caps.
pub fn applicable_caps(
    destination: &Destination,
    rules: &[Option<(RuleSet, CompiledRuleSet)>],
    snapshot: &Value,
    now: Millis,
) -> Vec<ApplicableCap> {
    destination
        .caps
        .iter()
        .enumerate()
        .filter(|(index, cap)| {
            let Some(written) = &cap.rules else { return true };
            match rules.get(*index) {
                Some(Some((source, compiled))) if source == written => compiled.matches(&LeadView(snapshot)),
                // Compiled for another version of the destination: compile these as written.
                _ => written.compile().matches(&LeadView(snapshot)),
            }
        })
        .map(|(_, cap)| {
            let tz: Tz = cap.time_zone.parse().unwrap_or(Tz::UTC);
            ApplicableCap {
                key: CapWindowKey {
                    destination_id: destination.id.clone(),
                    cap_key: cap_key(cap),
                    window_start: window_start(cap.window, tz, now),
                },
                max: cap.max,
                window: cap.window,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::time::format_millis;

    fn at(text: &str) -> Millis {
        chrono::DateTime::parse_from_rfc3339(text).unwrap().timestamp_millis()
    }

    #[track_caller]
    fn check(window: CapWindow, zone: &str, now: &str, expected: &str) {
        let tz: Tz = zone.parse().unwrap();
        assert_eq!(format_millis(window_start(window, tz, at(now))), expected);
    }

    #[test]
    fn windows_start_at_local_boundaries() {
        // 03:30 UTC is 21:30 the day before in Chicago (UTC-6 in January).
        check(CapWindow::Day, "America/Chicago", "2024-01-16T03:30:00Z", "2024-01-15T06:00:00.000Z");
        check(CapWindow::Day, "UTC", "2024-01-16T03:30:00Z", "2024-01-16T00:00:00.000Z");
        check(CapWindow::Hour, "Asia/Kolkata", "2024-01-16T03:50:00Z", "2024-01-16T03:30:00.000Z");
        // 2024-01-17 is a Wednesday.
        check(CapWindow::Week, "UTC", "2024-01-17T12:00:00Z", "2024-01-15T00:00:00.000Z");
        check(CapWindow::Month, "Europe/Paris", "2024-03-10T12:00:00Z", "2024-02-29T23:00:00.000Z");
        check(CapWindow::Total, "UTC", "2024-03-10T12:00:00Z", "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn a_day_with_a_dst_change_still_starts_at_local_midnight() {
        check(CapWindow::Day, "America/New_York", "2024-03-10T15:00:00Z", "2024-03-10T05:00:00.000Z");
        check(CapWindow::Day, "America/New_York", "2024-03-11T15:00:00Z", "2024-03-11T04:00:00.000Z");
    }

    #[test]
    fn rule_scoped_caps_apply_only_to_matching_leads() {
        let destination: Destination = serde_json::from_value(json!({
            "id": "buyer", "url": "https://buyer.example.com",
            "caps": [{"window": "day", "max": 100},
                     {"window": "day", "max": 5, "rules": {"all": [{"field": "state", "op": "eq", "value": "TX"}]}}]
        }))
        .unwrap();
        let texan = json!({"state": {"raw": "TX", "value": "TX"}});
        let other = json!({"state": {"raw": "CA", "value": "CA"}});
        let now = at("2024-01-16T12:00:00Z");
        assert_eq!(applicable_caps(&destination, &[], &texan, now).len(), 2);
        let caps = applicable_caps(&destination, &[], &other, now);
        assert_eq!(caps.len(), 1);
        assert_eq!(caps[0].max, 100);
        assert_eq!(caps[0].reached(100), "Daily cap reached (100/100)");
    }

    #[test]
    fn cap_rules_read_their_operands_as_the_flows_field_types() {
        let config: crate::config::ConfigDocument = crate::config::parse_value(json!({
            "flows": [{"id": "f", "fields": [{"name": "state", "type": "state"}], "destinations": ["buyer"]}],
            "destinations": [{"id": "buyer", "url": "https://buyer.example.com",
                              "caps": [{"window": "day", "max": 5, "rules": {"all": [{"field": "state", "op": "eq", "value": "Texas"}]}}]}]
        }))
        .unwrap();
        let (config, _) =
            crate::config::Config::default().change(crate::config::ConfigChange::Apply(config), 0).unwrap();
        let compiled = crate::compiled::CompiledRules::new(&config);
        let destination = &config.destinations["buyer"];
        let texan = json!({"state": {"raw": "tx", "value": "TX", "valid": true}});
        let now = at("2024-01-16T12:00:00Z");
        assert_eq!(applicable_caps(destination, compiled.cap_rules("buyer"), &texan, now).len(), 1, "Texas is TX");
    }
}
