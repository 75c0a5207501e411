//! The configuration objects of SPEC 5a: flows, sources and destinations, exactly as users write them.

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::fields::FieldType;
use crate::rules::RuleSet;

fn default_true() -> bool {
    true
}

fn no_secrets(secrets: &Option<Vec<PreviousSecret>>) -> bool {
    secrets.as_ref().is_none_or(Vec::is_empty)
}

/// A pipeline definition: fields, validation, duplicates, filters, enhancements, destinations.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Flow {
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub fields: Vec<FieldDef>,
    /// Reject leads with neither a valid phone nor a valid email (SPEC 4); on by default.
    #[serde(default = "default_true")]
    pub require_contact: bool,
    #[serde(default)]
    pub duplicates: Option<Duplicates>,
    #[serde(default)]
    pub filters: Vec<Filter>,
    #[serde(default)]
    pub enhancements: Vec<Enhancement>,
    #[serde(default)]
    pub destinations: Vec<String>,
    #[serde(default = "default_statuses")]
    pub statuses: Vec<String>,
}

fn default_statuses() -> Vec<String> {
    vec!["new".to_owned()]
}

impl Flow {
    pub fn field(&self, name: &str) -> Option<&FieldDef> {
        self.fields.iter().find(|field| field.name == name)
    }

    /// The status a new lead starts in: the first of the flow's statuses.
    pub fn initial_status(&self) -> &str {
        self.statuses.first().map(String::as_str).unwrap_or("new")
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldDef {
    pub name: String,
    #[serde(default, rename = "type")]
    pub field_type: FieldType,
    #[serde(default)]
    pub required: bool,
    #[serde(default)]
    pub pii: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum DuplicateMatch {
    #[default]
    Any,
    All,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum DuplicatePolicy {
    #[default]
    Reject,
    Link,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Duplicates {
    pub keys: Vec<String>,
    #[serde(default, rename = "match")]
    pub match_mode: DuplicateMatch,
    #[serde(default = "default_window_days")]
    pub window_days: u32,
    #[serde(default)]
    pub policy: DuplicatePolicy,
}

fn default_window_days() -> u32 {
    30
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Filter {
    pub name: String,
    pub rules: RuleSet,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Enhancement {
    pub name: String,
    pub url: String,
    #[serde(default)]
    pub method: HttpMethod,
    #[serde(default = "default_enhancement_timeout")]
    pub timeout_ms: u64,
    #[serde(default)]
    pub headers: IndexMap<String, String>,
}

fn default_enhancement_timeout() -> u64 {
    2000
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    WebForm,
    #[default]
    Api,
    Chat,
    Email,
    Telephony,
    Vendor,
}

/// Where leads come from; belongs to one flow.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Source {
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub name: String,
    pub flow_id: String,
    #[serde(default)]
    pub kind: SourceKind,
    /// When set, submissions must carry it (`X-Source-Key` header or `key` parameter).
    #[serde(default)]
    pub key: Option<String>,
    /// What a lead from this source costs; recorded as the lead's cost.
    #[serde(default)]
    pub price: Option<f64>,
    /// Renames submitted fields: `{"e-mail": "email"}`.
    #[serde(default)]
    pub field_map: IndexMap<String, String>,
    #[serde(default)]
    pub filter: Option<RuleSet>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum DestinationKind {
    #[default]
    Webhook,
    Ga4,
    Email,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum HttpMethod {
    #[serde(alias = "get")]
    GET,
    #[default]
    #[serde(alias = "post")]
    POST,
    #[serde(alias = "put")]
    PUT,
    #[serde(alias = "patch")]
    PATCH,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum BodyFormat {
    #[default]
    Json,
    Form,
    Query,
    Xml,
}

impl BodyFormat {
    /// The name a configuration writes (`json`, `form`, `query`, `xml`).
    pub fn as_str(self) -> &'static str {
        match self {
            BodyFormat::Json => "json",
            BodyFormat::Form => "form",
            BodyFormat::Query => "query",
            BodyFormat::Xml => "xml",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryMode {
    #[default]
    Background,
    Realtime,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, tag = "type", rename_all = "snake_case")]
pub enum Auth {
    Basic { username: String, password: String },
    Bearer { token: String },
    Header { name: String, value: String },
}

/// When a destination's answer counts as accepted.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Success {
    /// An inclusive range of HTTP statuses, `200-399`, or one status, `201`.
    #[serde(default = "default_status_range")]
    pub status: String,
    #[serde(default)]
    pub body_contains: Option<String>,
    #[serde(default)]
    pub body_regex: Option<String>,
    #[serde(default)]
    pub json_path: Option<String>,
    #[serde(default)]
    pub json_equals: Option<Value>,
}

fn default_status_range() -> String {
    "200-399".to_owned()
}

impl Default for Success {
    fn default() -> Self {
        Self {
            status: default_status_range(),
            body_contains: None,
            body_regex: None,
            json_path: None,
            json_equals: None,
        }
    }
}

/// `max_attempts` counts the first attempt; `schedule_ms[i]` is the delay before retry `i+1`,
/// the last entry repeating.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    #[serde(default = "default_schedule")]
    pub schedule_ms: Vec<u64>,
    #[serde(default = "default_jitter")]
    pub jitter: f64,
}

fn default_max_attempts() -> u32 {
    6
}

fn default_schedule() -> Vec<u64> {
    vec![10_000, 60_000, 300_000, 1_800_000, 7_200_000]
}

fn default_jitter() -> f64 {
    0.2
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self { max_attempts: default_max_attempts(), schedule_ms: default_schedule(), jitter: default_jitter() }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CapWindow {
    Hour,
    Day,
    Week,
    Month,
    Total,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cap {
    pub window: CapWindow,
    pub max: u64,
    #[serde(default = "default_time_zone")]
    pub time_zone: String,
    #[serde(default)]
    pub rules: Option<RuleSet>,
}

fn default_time_zone() -> String {
    "UTC".to_owned()
}

fn default_timeout() -> u64 {
    5000
}

/// Where leads go: a CRM, a buyer, a partner, analytics.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Destination {
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub kind: DestinationKind,
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub method: HttpMethod,
    #[serde(default)]
    pub format: BodyFormat,
    #[serde(default)]
    pub headers: IndexMap<String, String>,
    #[serde(default)]
    pub auth: Option<Auth>,
    #[serde(default)]
    pub body_template: Option<String>,
    #[serde(default)]
    pub success: Success,
    #[serde(default = "default_timeout")]
    pub timeout_ms: u64,
    #[serde(default)]
    pub retry: RetryPolicy,
    #[serde(default)]
    pub mode: DeliveryMode,
    #[serde(default)]
    pub caps: Vec<Cap>,
    #[serde(default)]
    pub filter: Option<RuleSet>,
    /// Revenue recorded when this destination accepts a lead.
    #[serde(default)]
    pub price: Option<f64>,
    #[serde(default)]
    pub signing_secret: Option<String>,
    /// Secrets replaced within the last day: webhooks are signed with them too, so receivers
    /// can switch secrets without dropping a message. Kept by leadrelay when the secret changes;
    /// absent in a write keeps them, `[]` ends the overlap at once (a leaked old secret).
    #[serde(default, skip_serializing_if = "no_secrets")]
    pub previous_signing_secrets: Option<Vec<PreviousSecret>>,
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// An outbound proxy URL, for CRMs that allow-list a fixed egress address.
    #[serde(default)]
    pub proxy: Option<String>,
    /// Values to keep from a JSON answer, by name: `{"buyer_id": "$.data.id", "price": "$.price"}`.
    /// A captured `price` is the delivery's revenue.
    #[serde(default)]
    pub capture: IndexMap<String, String>,
    /// Most deliveries in flight to this destination at once (per node).
    #[serde(default = "default_concurrency")]
    pub concurrency: u32,
    /// Google Analytics 4 settings, for `kind: ga4`.
    #[serde(default)]
    pub ga4: Option<Ga4Settings>,
    /// Disables the destination after this many technical failures in a row; its transfers
    /// are held until a person enables it again. Off when absent.
    #[serde(default)]
    pub circuit_breaker: Option<CircuitBreaker>,
}

/// A GA4 Measurement Protocol stream. The destination's `url` defaults to Google's collect
/// endpoint; set it to send elsewhere (a proxy, or a test receiver).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ga4Settings {
    pub measurement_id: String,
    pub api_secret: String,
    /// The event sent for a lead.
    #[serde(default = "default_ga4_event")]
    pub event_name: String,
    /// The lead field holding the visitor's GA client id (`_ga` cookie); the lead id otherwise.
    #[serde(default)]
    pub client_id_field: Option<String>,
}

fn default_ga4_event() -> String {
    "generate_lead".to_owned()
}

/// Google's Measurement Protocol endpoint.
pub const GA4_COLLECT_URL: &str = "https://www.google-analytics.com/mp/collect";

/// A replaced signing secret, still used until `until` (an ISO 8601 time).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreviousSecret {
    pub secret: String,
    pub until: String,
}

impl PreviousSecret {
    /// Whether the overlap still runs at `now`.
    pub fn in_force(&self, now: crate::time::Millis) -> bool {
        chrono::DateTime::parse_from_rfc3339(&self.until).is_ok_and(|until| until.timestamp_millis() > now)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CircuitBreaker {
    /// Consecutive technical failures (timeouts, connection errors, 5xx, 429) that trip it.
    pub failures: u32,
}

fn default_concurrency() -> u32 {
    16
}
