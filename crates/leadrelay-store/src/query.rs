//! Queries over the log, the leads and the register, with keyset cursors.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use leadrelay_domain::event::Outcome;
use leadrelay_domain::event::{EventType, RegisterStatus};
use leadrelay_domain::rules::RuleSet;
use leadrelay_domain::time::Millis;
use serde::Serialize;

/// The largest page any list answers.
pub const MAX_PAGE: usize = 1000;

/// A position in an ordered list: the time and the sequence number of the last item seen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cursor {
    pub time: Millis,
    pub seq: i64,
}

impl Cursor {
    /// The opaque text form handed to clients.
    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(format!("v1:{}:{}", self.time, self.seq))
    }

    pub fn decode(text: &str) -> Option<Self> {
        let bytes = URL_SAFE_NO_PAD.decode(text.trim()).ok()?;
        let text = String::from_utf8(bytes).ok()?;
        let mut parts = text.split(':');
        if parts.next()? != "v1" {
            return None;
        }
        let time = parts.next()?.parse().ok()?;
        let seq = parts.next()?.parse().ok()?;
        if parts.next().is_some() {
            return None;
        }
        Some(Self { time, seq })
    }
}

/// The lists a cursor pages: one handed out by a list (in one order) is refused by another,
/// rather than silently starting somewhere else.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CursorList {
    Events,
    Leads,
    /// The register and the not-integrated collection.
    Transfers,
}

impl CursorList {
    fn as_str(self) -> &'static str {
        match self {
            Self::Events => "events",
            Self::Leads => "leads",
            Self::Transfers => "transfers",
        }
    }
}

impl Cursor {
    /// The text handed to API clients: the position, the list and the order it pages.
    pub fn encode_for(&self, list: CursorList, sort: SortOrder) -> String {
        URL_SAFE_NO_PAD.encode(format!("v2:{}:{}:{}:{}", list.as_str(), sort.as_str(), self.time, self.seq))
    }

    /// Reads a cursor handed out by [`Cursor::encode_for`] for this list and order; the error
    /// says what is wrong with it.
    pub fn decode_for(text: &str, list: CursorList, sort: SortOrder) -> Result<Self, String> {
        const NOT_OURS: &str = "not a cursor this API handed out";
        let bytes = URL_SAFE_NO_PAD.decode(text.trim()).map_err(|_| NOT_OURS.to_owned())?;
        let text = String::from_utf8(bytes).map_err(|_| NOT_OURS.to_owned())?;
        let parts: Vec<&str> = text.split(':').collect();
        let [version, cursor_list, cursor_sort, time, seq] = parts[..] else { return Err(NOT_OURS.to_owned()) };
        if version != "v2" {
            return Err(NOT_OURS.to_owned());
        }
        let (Ok(time), Ok(seq)) = (time.parse(), seq.parse()) else { return Err(NOT_OURS.to_owned()) };
        if cursor_list != list.as_str() {
            return Err(format!("this cursor pages {cursor_list}, not {}; start without a cursor", list.as_str()));
        }
        if cursor_sort != sort.as_str() {
            return Err(format!(
                "this cursor pages in sort={cursor_sort} order; ask with sort={cursor_sort}, or start without a cursor"
            ));
        }
        Ok(Self { time, seq })
    }
}

impl Serialize for Cursor {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.encode())
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SortOrder {
    Asc,
    #[default]
    Desc,
}

impl SortOrder {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Asc => "asc",
            Self::Desc => "desc",
        }
    }
}

/// One page of a list and where the next one starts.
#[derive(Clone, Debug, Serialize)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<Cursor>,
}

/// Filters of `GET /api/v1/events` (SPEC 5).
#[derive(Clone, Debug, Default)]
pub struct EventQuery {
    pub lead_id: Option<String>,
    pub event_type: Option<EventType>,
    pub status: Option<RegisterStatus>,
    pub source_id: Option<String>,
    pub destination_id: Option<String>,
    pub flow_id: Option<String>,
    pub start: Option<Millis>,
    pub end: Option<Millis>,
    pub rules: Option<RuleSet>,
    /// `rules` as each flow's fields read them (`lead.state eq "Texas"` as `TX` where `state`
    /// is a state), by flow id; an event of a flow not here meets `rules` as written.
    pub typed_rules: std::collections::HashMap<String, RuleSet>,
    pub limit: usize,
    pub sort: SortOrder,
    pub cursor: Option<Cursor>,
}

impl EventQuery {
    /// Reads `rules` against each configured flow's field types, refusing what a flow's
    /// fields cannot answer (a part a type lacks, an ordering against something that is not a
    /// value of the type).
    pub fn type_rules(&mut self, config: &leadrelay_domain::config::Config) -> Result<(), String> {
        let Some(rules) = &self.rules else { return Ok(()) };
        for flow in config.flows.values() {
            if self.flow_id.as_deref().is_some_and(|only| only != flow.id) {
                continue;
            }
            let field_type = |name: &str| flow.field(name).map(|field| field.field_type);
            if let Some(problem) = leadrelay_domain::typed_rules::problems_under(rules, "lead.", &field_type).first() {
                return Err(format!("{problem} (in flow {})", flow.id));
            }
            let type_of = |path: &str| path.strip_prefix("lead.").and_then(field_type);
            let typed = leadrelay_domain::typed_rules::typed(rules, &type_of);
            if typed != *rules {
                self.typed_rules.insert(flow.id.clone(), typed);
            }
        }
        Ok(())
    }
}

/// Filters of `GET /api/v1/leads`.
#[derive(Clone, Debug, Default)]
pub struct LeadQuery {
    pub flow_id: Option<String>,
    pub source_id: Option<String>,
    pub outcome: Option<Outcome>,
    pub start: Option<Millis>,
    pub end: Option<Millis>,
    pub limit: usize,
    pub sort: SortOrder,
    pub cursor: Option<Cursor>,
}

/// Filters of `GET /api/v1/register` (SPEC 5).
#[derive(Clone, Debug, Default)]
pub struct RegisterQuery {
    pub status: Option<RegisterStatus>,
    pub lead_id: Option<String>,
    pub source_id: Option<String>,
    pub destination_id: Option<String>,
    pub flow_id: Option<String>,
    pub start: Option<Millis>,
    pub end: Option<Millis>,
    pub limit: usize,
    pub sort: SortOrder,
    pub cursor: Option<Cursor>,
}

/// The overview report's window: transfers created from `start` (inclusive) to `end`
/// (exclusive), counted per UTC day.
#[derive(Clone, Copy, Debug)]
pub struct OverviewQuery {
    pub start: Millis,
    pub end: Millis,
}

/// Upper bounds (exclusive, in ms) of the delivery latency buckets the overview counts in;
/// bucket `i` holds latencies below `LATENCY_BOUNDS_MS[i]` and at or above the bound before
/// it, and the last bucket (`LATENCY_BOUNDS_MS.len()`) everything slower.
pub const LATENCY_BOUNDS_MS: [i64; 11] =
    [100, 250, 500, 1_000, 2_500, 5_000, 10_000, 30_000, 60_000, 300_000, 1_800_000];

/// One group of the overview: transfers of one UTC day, status, source and destination, and,
/// for delivered transfers, one latency bucket (from arrival to delivery).
#[derive(Clone, Debug, PartialEq)]
pub struct OverviewRow {
    /// Days since 1970-01-01, UTC.
    pub day: i64,
    pub status: RegisterStatus,
    pub source_id: String,
    pub destination_id: Option<String>,
    /// An index into the latency buckets (see [`LATENCY_BOUNDS_MS`]); `None` for transfers that
    /// were not delivered.
    pub latency_bucket: Option<usize>,
    pub count: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        let cursor = Cursor { time: 1_705_329_045_123, seq: 42 };
        assert_eq!(Cursor::decode(&cursor.encode()), Some(cursor));
        assert_eq!(Cursor::decode("not a cursor"), None);
        assert_eq!(Cursor::decode(&URL_SAFE_NO_PAD.encode("v1:1:2:3")), None);
    }
}
