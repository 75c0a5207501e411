//! Query parameters of the list endpoints, checked by name and turned into store queries.

use std::collections::HashMap;

use leadrelay_domain::event::{EventType, Outcome, RegisterStatus};
use leadrelay_domain::rules::RuleSet;
use leadrelay_domain::time::{parse_query_time, Millis};
use leadrelay_store::{Cursor, CursorList, EventQuery, LeadQuery, RegisterQuery, SortOrder, EVENT_FIELDS, MAX_PAGE};

use crate::{ApiError, ApiResult};

/// The raw parameters, each given at most once, all of them known to the endpoint.
pub struct Params(HashMap<String, String>);

fn invalid(name: &str, message: impl std::fmt::Display) -> ApiError {
    ApiError::bad_request("invalid_parameter", format!("{name}: {message}"))
}

impl Params {
    pub fn parse(query: Option<&str>, known: &[&str]) -> ApiResult<Self> {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query.unwrap_or(""))
            .map_err(|error| ApiError::bad_request("invalid_query", format!("query string is not valid: {error}")))?;
        let mut map = HashMap::new();
        for (name, value) in pairs {
            if !known.contains(&name.as_str()) {
                return Err(invalid(&name, format!("unknown parameter; known parameters are {}", known.join(", "))));
            }
            if map.insert(name.clone(), value).is_some() {
                return Err(invalid(&name, "given more than once"));
            }
        }
        Ok(Self(map))
    }

    pub fn text(&self, name: &str) -> Option<String> {
        self.0.get(name).map(|value| value.trim().to_owned()).filter(|value| !value.is_empty())
    }

    fn time(&self, name: &str, end_of_day: bool) -> ApiResult<Option<Millis>> {
        self.text(name)
            .map(|text| parse_query_time(&text, end_of_day).map_err(|error| invalid(name, error)))
            .transpose()
    }

    /// Takes a parameter out, for an endpoint that reads it its own way.
    pub fn take(&mut self, name: &str) -> Option<String> {
        let value = self.text(name);
        self.0.remove(name);
        value
    }

    pub fn limit(&self, default: usize) -> ApiResult<usize> {
        match self.text("limit") {
            None => Ok(default),
            Some(text) => match text.parse::<usize>() {
                Ok(limit) if (1..=MAX_PAGE).contains(&limit) => Ok(limit),
                _ => Err(invalid("limit", format!("must be a whole number from 1 to {MAX_PAGE}"))),
            },
        }
    }

    pub fn sort(&self, default: SortOrder) -> ApiResult<SortOrder> {
        match self.text("sort").as_deref() {
            None => Ok(default),
            Some("asc") => Ok(SortOrder::Asc),
            Some("desc") => Ok(SortOrder::Desc),
            Some(_) => Err(invalid("sort", "must be asc or desc")),
        }
    }

    /// The `cursor` of a list read in `sort` order; one handed out by another list or for the
    /// other order is refused.
    pub fn cursor(&self, list: CursorList, sort: SortOrder) -> ApiResult<Option<Cursor>> {
        self.text("cursor")
            .map(|text| Cursor::decode_for(&text, list, sort).map_err(|problem| invalid("cursor", problem)))
            .transpose()
    }

    /// One page of a list held whole in memory (configuration objects, tokens), in its own
    /// order: `limit` (1–1000, default 100) items after the one the `cursor` names, and the
    /// cursor of the next page when there is one. Items are `(id, item)`.
    pub fn page_of<T>(&self, items: Vec<(String, T)>) -> ApiResult<(Vec<T>, Option<String>)> {
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;
        use base64::Engine;
        let limit = self.limit(100)?;
        // The cursor names the last item seen and where it stood: when that item has been
        // deleted since, the next page starts where it stood.
        let start = match self.text("cursor") {
            None => 0,
            Some(text) => {
                let (position, after) = URL_SAFE_NO_PAD
                    .decode(&text)
                    .ok()
                    .and_then(|bytes| String::from_utf8(bytes).ok())
                    .and_then(|text| {
                        let (position, id) = text.strip_prefix("at:")?.split_once(':')?;
                        Some((position.parse::<usize>().ok()?, id.to_owned()))
                    })
                    .ok_or_else(|| invalid("cursor", "not a cursor this API handed out"))?;
                match items.iter().position(|(id, _)| *id == after) {
                    Some(found) => found + 1,
                    None => position.min(items.len()),
                }
            }
        };
        let more = items.len() > start + limit;
        let page: Vec<(String, T)> = items.into_iter().skip(start).take(limit).collect();
        let next = more
            .then(|| page.last().map(|(id, _)| URL_SAFE_NO_PAD.encode(format!("at:{}:{id}", start + page.len() - 1))))
            .flatten();
        Ok((page.into_iter().map(|(_, item)| item).collect(), next))
    }

    fn status(&self) -> ApiResult<Option<RegisterStatus>> {
        self.text("status")
            .map(|text| {
                RegisterStatus::parse(&text)
                    .ok_or_else(|| invalid("status", "must be one of new, success, skip, error"))
            })
            .transpose()
    }

    fn range(&self) -> ApiResult<(Option<Millis>, Option<Millis>)> {
        let start = self.time("start", false)?;
        let end = self.time("end", true)?;
        if let (Some(start), Some(end)) = (start, end) {
            if start > end {
                return Err(invalid("start", "must not be after end"));
            }
        }
        Ok((start, end))
    }

    /// A comma-separated list of top-level event fields.
    pub fn field_list(&self, name: &str) -> ApiResult<Option<Vec<String>>> {
        let Some(text) = self.text(name) else { return Ok(None) };
        let fields: Vec<String> =
            text.split(',').map(|field| field.trim().to_owned()).filter(|f| !f.is_empty()).collect();
        for field in &fields {
            if !EVENT_FIELDS.contains(&field.as_str()) {
                return Err(invalid(
                    name,
                    format!("unknown event field {field:?}; fields are {}", EVENT_FIELDS.join(", ")),
                ));
            }
        }
        Ok(Some(fields))
    }
}

pub const EVENT_PARAMS: &[&str] = &[
    "lead_id",
    "type",
    "status",
    "source_id",
    "destination_id",
    "flow_id",
    "start",
    "end",
    "rules",
    "include",
    "exclude",
    "limit",
    "sort",
    "cursor",
];

pub fn event_query(params: &Params, default_sort: SortOrder) -> ApiResult<EventQuery> {
    let event_type = params
        .text("type")
        .map(|text| EventType::parse(&text).ok_or_else(|| invalid("type", format!("unknown event type {text:?}"))))
        .transpose()?;
    let rules = params
        .text("rules")
        .map(|text| {
            let value: serde_json::Value =
                serde_json::from_str(&text).map_err(|error| invalid("rules", format!("not valid JSON: {error}")))?;
            let rules = RuleSet::from_json(&value).map_err(|error| invalid("rules", error))?;
            leadrelay_store::check_event_rules(&rules).map_err(|error| invalid("rules", error))?;
            Ok::<_, ApiError>(rules)
        })
        .transpose()?;
    let (start, end) = params.range()?;
    let sort = params.sort(default_sort)?;
    Ok(EventQuery {
        lead_id: params.text("lead_id"),
        event_type,
        status: params.status()?,
        source_id: params.text("source_id"),
        destination_id: params.text("destination_id"),
        flow_id: params.text("flow_id"),
        start,
        end,
        rules,
        typed_rules: Default::default(),
        limit: params.limit(100)?,
        sort,
        cursor: params.cursor(CursorList::Events, sort)?,
    })
}

pub const LEAD_PARAMS: &[&str] = &["flow_id", "source_id", "outcome", "start", "end", "limit", "sort", "cursor"];

pub fn lead_query(params: &Params) -> ApiResult<LeadQuery> {
    let outcome = params
        .text("outcome")
        .map(|text| Outcome::parse(&text).ok_or_else(|| invalid("outcome", "must be success, failure or error")))
        .transpose()?;
    let (start, end) = params.range()?;
    let sort = params.sort(SortOrder::Desc)?;
    Ok(LeadQuery {
        flow_id: params.text("flow_id"),
        source_id: params.text("source_id"),
        outcome,
        start,
        end,
        limit: params.limit(100)?,
        sort,
        cursor: params.cursor(CursorList::Leads, sort)?,
    })
}

pub const REGISTER_PARAMS: &[&str] =
    &["status", "lead_id", "source_id", "destination_id", "flow_id", "start", "end", "limit", "sort", "cursor"];

/// The filter of a bulk resend: the register's filters, and `not_integrated` for only the
/// abandoned transfers.
pub const RESEND_PARAMS: &[&str] =
    &["status", "lead_id", "source_id", "destination_id", "flow_id", "start", "end", "not_integrated"];

impl Params {
    /// Parameters given as a JSON object (a request body) rather than a query string.
    pub fn from_json(body: &[u8], known: &[&str]) -> ApiResult<Self> {
        let object = json_object_body(body, "filters")?;
        let mut pairs = Vec::new();
        for (name, value) in object {
            let text = match value {
                serde_json::Value::Null => continue,
                serde_json::Value::String(text) => text,
                serde_json::Value::Bool(_) | serde_json::Value::Number(_) => value.to_string(),
                _ => return Err(invalid(&name, "must be a string, a number or a boolean")),
            };
            pairs.push((name, text));
        }
        let query = serde_urlencoded::to_string(pairs).map_err(|error| ApiError::Internal(error.to_string()))?;
        Self::parse(Some(&query), known)
    }

    pub fn flag(&self, name: &str) -> ApiResult<bool> {
        match self.text(name).as_deref() {
            None | Some("false") => Ok(false),
            Some("true") => Ok(true),
            Some(other) => Err(invalid(name, format!("must be true or false, not {other:?}"))),
        }
    }
}

/// A request body that must be a JSON object (of `what`); an empty body is an empty object.
pub fn json_object_body(body: &[u8], what: &str) -> ApiResult<serde_json::Map<String, serde_json::Value>> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(serde_json::Map::new());
    }
    match serde_json::from_slice(body) {
        Ok(serde_json::Value::Object(object)) => Ok(object),
        Ok(_) => Err(ApiError::bad_request("invalid_json", format!("body must be a JSON object of {what}"))),
        Err(error) => Err(ApiError::bad_request("invalid_json", format!("body is not valid JSON: {error}"))),
    }
}

pub fn register_query(params: &Params) -> ApiResult<RegisterQuery> {
    let (start, end) = params.range()?;
    let sort = params.sort(SortOrder::Desc)?;
    Ok(RegisterQuery {
        status: params.status()?,
        lead_id: params.text("lead_id"),
        source_id: params.text("source_id"),
        destination_id: params.text("destination_id"),
        flow_id: params.text("flow_id"),
        start,
        end,
        limit: params.limit(100)?,
        sort,
        cursor: params.cursor(CursorList::Transfers, sort)?,
    })
}
