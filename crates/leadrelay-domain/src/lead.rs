//! Leads: the mutable current state of one submission, its JSON snapshot, and how rule
//! paths (`state`, `email.domain`, `appended.x.y`) find values in it.

use indexmap::IndexMap;
use serde_json::{Map, Value};

use crate::event::Outcome;
use crate::ids::LeadId;
use crate::rules::Resolve;
use crate::time::{format_millis, Millis};

/// The current state of a lead. Its history is the events.
/// `outcome` stays empty while the submission is being processed.
#[derive(Clone, Debug, PartialEq)]
pub struct LeadRecord {
    pub id: LeadId,
    pub flow_id: String,
    pub source_id: String,
    pub created_at: Millis,
    pub updated_at: Millis,
    /// The flow's lead status (`new`, `working`, `sold`, …).
    pub status: String,
    /// Whether the submission was accepted (`success`) or rejected (`failure`).
    pub outcome: Option<Outcome>,
    pub reason: Option<String>,
    pub duplicate_of: Option<LeadId>,
    /// What the lead cost: the source's price.
    pub cost: Option<f64>,
    /// Parsed field objects (`raw`, `value`, `valid`, components), by field name.
    pub fields: IndexMap<String, Map<String, Value>>,
    /// Enhancement data, by enhancement name.
    pub appended: Map<String, Value>,
}

impl LeadRecord {
    /// The complete snapshot stored with every event and served by the API: the lead's
    /// attributes, each field object at the top level under its name (`lead.email.domain`),
    /// then `appended`. A submitted field whose name is an attribute's (see
    /// [`LEAD_ATTRIBUTES`]) cannot sit beside it, so it goes under `fields` instead.
    pub fn snapshot(&self) -> Value {
        // Built by hand rather than through `json!`: serializing `fields` into a new tree costs
        // several times a clone, and every event of a submission needs a snapshot.
        let mut snapshot = Map::with_capacity(12 + self.fields.len());
        snapshot.insert("id".into(), Value::String(self.id.to_string()));
        snapshot.insert("flow_id".into(), Value::String(self.flow_id.clone()));
        snapshot.insert("source_id".into(), Value::String(self.source_id.clone()));
        snapshot.insert("status".into(), Value::String(self.status.clone()));
        snapshot.insert("outcome".into(), self.outcome.map(|outcome| outcome.as_str().into()).unwrap_or(Value::Null));
        snapshot.insert("reason".into(), self.reason.clone().map(Value::String).unwrap_or(Value::Null));
        snapshot.insert(
            "duplicate_of".into(),
            self.duplicate_of.as_ref().map(|id| Value::String(id.to_string())).unwrap_or(Value::Null),
        );
        snapshot.insert("cost".into(), self.cost.map(Value::from).unwrap_or(Value::Null));
        snapshot.insert("created_at".into(), Value::String(format_millis(self.created_at)));
        snapshot.insert("updated_at".into(), Value::String(format_millis(self.updated_at)));
        place_fields(&mut snapshot, self.fields.iter().map(|(name, field)| (name.clone(), field.clone())));
        snapshot.insert("appended".into(), Value::Object(self.appended.clone()));
        Value::Object(snapshot)
    }
}

/// Puts field objects into a snapshot: at the top level under their names, except those named
/// like a lead attribute, which go under `fields`.
pub fn place_fields(snapshot: &mut Map<String, Value>, fields: impl IntoIterator<Item = (String, Map<String, Value>)>) {
    let mut shadowed = Map::new();
    for (name, field) in fields {
        if is_attribute(&name) {
            shadowed.insert(name, Value::Object(field));
        } else {
            snapshot.insert(name, Value::Object(field));
        }
    }
    if !shadowed.is_empty() {
        snapshot.insert("fields".into(), Value::Object(shadowed));
    }
}

fn is_attribute(name: &str) -> bool {
    LEAD_ATTRIBUTES.contains(&name)
}

/// The field objects of a snapshot, by name: the top-level entries that are not lead
/// attributes, and those under `fields` (where a field named like an attribute goes, and where
/// snapshots written before fields moved to the top level keep all of them).
pub fn snapshot_fields(snapshot: &Value) -> impl Iterator<Item = (&String, &Map<String, Value>)> {
    let top = snapshot.as_object().into_iter().flatten().filter(|(name, _)| !is_attribute(name));
    let nested = snapshot.get("fields").and_then(Value::as_object).into_iter().flatten();
    top.chain(nested).filter_map(|(name, value)| Some((name, value.as_object()?)))
}

fn walk<'a>(mut value: &'a Value, segments: std::str::Split<'_, char>) -> Option<&'a Value> {
    for segment in segments {
        value = match value {
            Value::Object(map) => map.get(segment)?,
            Value::Array(items) => items.get(segment.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(value)
}

/// Resolves rule paths against a lead snapshot: the lead's own attributes (`source_id`,
/// `status`, …, see [`LEAD_ATTRIBUTES`]), `appended.…`, a field name (and its components), or
/// `fields.NAME…` (which also reaches a field named like an attribute).
pub struct LeadView<'a>(pub &'a Value);

/// The lead's own attributes in its snapshot. No flow field may take one of these names, and
/// a rule path that starts with one always means the attribute, never a submitted field of
/// that name (so a submitter cannot pose as another source, or as not a duplicate).
pub const LEAD_ATTRIBUTES: [&str; 12] = [
    "id",
    "flow_id",
    "source_id",
    "status",
    "outcome",
    "reason",
    "duplicate_of",
    "cost",
    "created_at",
    "updated_at",
    "fields",
    "appended",
];

fn resolve_in_lead<'a>(lead: &'a Value, path: &str) -> Option<&'a Value> {
    let mut segments = path.split('.');
    let first = segments.next()?;
    let field = |name: &str| {
        let nested = lead.get("fields").and_then(|fields| fields.get(name));
        nested.or_else(|| if is_attribute(name) { None } else { lead.get(name) })
    };
    if first == "fields" {
        // `fields.status` reaches a submitted field whose name is also an attribute's.
        return walk(field(segments.next()?)?, segments);
    }
    if is_attribute(first) {
        return walk(lead.get(first)?, segments);
    }
    walk(field(first)?, segments)
}

impl Resolve for LeadView<'_> {
    fn resolve(&self, path: &str) -> Option<&Value> {
        resolve_in_lead(self.0, path)
    }
}

/// Resolves rule paths against an event's JSON: `lead.…` reads the snapshot through
/// [`LeadView`]; anything else names event fields (`type`, `status`, `data.…`).
pub struct EventView<'a>(pub &'a Value);

impl Resolve for EventView<'_> {
    fn resolve(&self, path: &str) -> Option<&Value> {
        if let Some(rest) = path.strip_prefix("lead.") {
            return resolve_in_lead(self.0.get("lead")?, rest);
        }
        walk(self.0, path.split('.'))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn snapshot() -> Value {
        json!({
            "id": "lead_x", "source_id": "web", "status": "new",
            "state": {"raw": "texas", "value": "TX", "valid": true},
            "email": {"raw": "A@X.COM", "value": "a@x.com", "valid": true, "domain": "x.com"},
            "appended": {"phone_check": {"carrier": "acme"}}
        })
    }

    #[test]
    fn lead_paths_find_fields_components_appended_and_attributes() {
        let lead = snapshot();
        let view = LeadView(&lead);
        assert_eq!(view.resolve("state").and_then(|v| v.get("value")), Some(&json!("TX")));
        assert_eq!(view.resolve("email.domain"), Some(&json!("x.com")));
        assert_eq!(view.resolve("appended.phone_check.carrier"), Some(&json!("acme")));
        assert_eq!(view.resolve("source_id"), Some(&json!("web")));
        assert_eq!(view.resolve("fields.email.domain"), Some(&json!("x.com")));
        assert_eq!(view.resolve("nothing.here"), None);
    }

    #[test]
    fn snapshots_written_with_fields_nested_still_resolve() {
        let lead = json!({"id": "lead_x", "fields": {"email": {"value": "a@x.com", "domain": "x.com"}}});
        assert_eq!(LeadView(&lead).resolve("email.domain"), Some(&json!("x.com")));
        assert_eq!(LeadView(&lead).resolve("fields.email.domain"), Some(&json!("x.com")));
        let names: Vec<&String> = snapshot_fields(&lead).map(|(name, _)| name).collect();
        assert_eq!(names, ["email"]);
    }

    #[test]
    fn submitted_fields_cannot_pose_as_lead_attributes() {
        let lead = json!({"source_id": "web", "duplicate_of": "lead_1",
                          "fields": {"source_id": {"raw": "partner", "value": "partner", "valid": true}}});
        let view = LeadView(&lead);
        assert_eq!(view.resolve("source_id"), Some(&json!("web")));
        assert_eq!(view.resolve("duplicate_of"), Some(&json!("lead_1")));
        assert_eq!(view.resolve("fields.source_id.value"), Some(&json!("partner")));
    }

    #[test]
    fn event_paths_reach_into_the_snapshot_under_lead() {
        let event = json!({"type": "source.accepted", "data": {"n": 1}, "lead": snapshot()});
        let view = EventView(&event);
        assert_eq!(view.resolve("type"), Some(&json!("source.accepted")));
        assert_eq!(view.resolve("data.n"), Some(&json!(1)));
        assert_eq!(view.resolve("lead.email.domain"), Some(&json!("x.com")));
    }

    #[test]
    fn the_snapshot_is_the_record_as_json() {
        let mut fields = IndexMap::new();
        fields.insert(
            "state".to_owned(),
            json!({"raw": "tx", "value": "TX", "valid": true}).as_object().cloned().unwrap(),
        );
        fields.insert("status".to_owned(), json!({"raw": "sold", "value": "sold"}).as_object().cloned().unwrap());
        let record = LeadRecord {
            id: LeadId::generate(),
            flow_id: "solar".into(),
            source_id: "web".into(),
            created_at: 0,
            updated_at: 1000,
            status: "new".into(),
            outcome: Some(Outcome::Success),
            reason: None,
            duplicate_of: None,
            cost: Some(2.5),
            fields,
            appended: Map::new(),
        };
        assert_eq!(
            record.snapshot(),
            json!({
                "id": record.id, "flow_id": "solar", "source_id": "web", "status": "new", "outcome": "success",
                "reason": null, "duplicate_of": null, "cost": 2.5,
                "created_at": format_millis(0), "updated_at": format_millis(1000),
                "state": {"raw": "tx", "value": "TX", "valid": true},
                "fields": {"status": {"raw": "sold", "value": "sold"}}, "appended": {}
            })
        );
        let snapshot = record.snapshot();
        let names: Vec<&String> = snapshot_fields(&snapshot).map(|(name, _)| name).collect();
        assert_eq!(names, ["state", "status"]);
    }
}
