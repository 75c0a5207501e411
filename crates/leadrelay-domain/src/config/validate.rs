//! Whole-configuration validation: each object on its own, then the references between them.

use std::collections::HashSet;

use base64::Engine;
use chrono_tz::Tz;

use super::{Auth, BodyFormat, Config, ConfigError, Destination, DestinationKind, Flow, HttpMethod, Source};
use crate::ids::validate_slug;

/// Most fields a flow may declare; submissions are limited separately.
const MAX_FIELDS: usize = 500;

impl Config {
    /// Checks every object and every reference; collects all problems, each naming where it is.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        for flow in self.flows.values() {
            validate_flow(self, flow, &mut problems);
        }
        for source in self.sources.values() {
            validate_source(self, source, &mut problems);
        }
        for destination in self.destinations.values() {
            validate_destination(destination, &mut problems);
            // The destination's filter and caps meet the fields of every flow that lists it.
            let rule_sets = destination.filter.iter().map(|rules| ("filter".to_owned(), rules)).chain(
                destination
                    .caps
                    .iter()
                    .enumerate()
                    .filter_map(|(index, cap)| Some((format!("caps[{index}].rules"), cap.rules.as_ref()?))),
            );
            for (at, rules) in rule_sets {
                for flow in self.flows.values().filter(|flow| flow.destinations.contains(&destination.id)) {
                    let type_of = |name: &str| flow.field(name).map(|field| field.field_type);
                    for problem in crate::typed_rules::problems(rules, &type_of) {
                        problems.push(format!("destinations[{}].{at}.{problem} (in flow {})", destination.id, flow.id));
                    }
                }
            }
        }
        // A masked copy (what operator and viewer tokens read) written back would replace
        // real secrets with the mask.
        for kind in super::ConfigKind::ALL {
            let collection = match kind {
                super::ConfigKind::Flow => "flows",
                super::ConfigKind::Source => "sources",
                super::ConfigKind::Destination => "destinations",
            };
            for object in self.list(kind) {
                for (place, value) in super::redact::secret_places(&object) {
                    if super::redact::is_mask(value) {
                        problems.push(format!(
                            "{collection}[{}].{place}: \"***\" is the mask read-only tokens see, not a value; write \
                             the real one",
                            object.id()
                        ));
                    }
                }
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError { problems })
        }
    }
}

/// A field name: 1–64 characters of letters, digits and `_`, not the reserved `appended`.
pub fn validate_field_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 64 || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(format!("invalid field name {name:?}: use 1-64 characters of A-Z, a-z, 0-9 and '_'"));
    }
    if crate::lead::LEAD_ATTRIBUTES.contains(&name) {
        return Err(format!("field name {name:?} is reserved for the lead's own attribute"));
    }
    Ok(())
}

fn validate_flow(config: &Config, flow: &Flow, problems: &mut Vec<String>) {
    let at = format!("flows[{}]", flow.id);
    if let Err(problem) = validate_slug(&flow.id) {
        problems.push(format!("{at}.id: {problem}"));
    }
    if flow.fields.len() > MAX_FIELDS {
        problems.push(format!("{at}.fields: at most {MAX_FIELDS} fields"));
    }
    let mut names = HashSet::new();
    for field in &flow.fields {
        if let Err(problem) = validate_field_name(&field.name) {
            problems.push(format!("{at}.fields[{}]: {problem}", field.name));
        }
        if !names.insert(field.name.as_str()) {
            problems.push(format!("{at}.fields[{}]: declared twice", field.name));
        }
    }
    if let Some(duplicates) = &flow.duplicates {
        if duplicates.keys.is_empty() {
            problems.push(format!("{at}.duplicates.keys: name at least one field"));
        }
        let mut keys = HashSet::new();
        for key in &duplicates.keys {
            if !names.contains(key.as_str()) {
                problems.push(format!("{at}.duplicates.keys: {key:?} is not a field of this flow"));
            }
            if !keys.insert(key.as_str()) {
                problems.push(format!("{at}.duplicates.keys: {key:?} is listed twice"));
            }
        }
        if duplicates.window_days == 0 || duplicates.window_days > 3650 {
            problems.push(format!("{at}.duplicates.window_days: must be between 1 and 3650"));
        }
    }
    let mut filter_names = HashSet::new();
    for filter in &flow.filters {
        if filter.name.trim().is_empty() {
            problems.push(format!("{at}.filters: every filter needs a name"));
        }
        if !filter_names.insert(filter.name.as_str()) {
            problems.push(format!("{at}.filters[{}]: name used twice", filter.name));
        }
    }
    let type_of = |name: &str| flow.field(name).map(|field| field.field_type);
    for filter in &flow.filters {
        for problem in crate::typed_rules::problems(&filter.rules, &type_of) {
            problems.push(format!("{at}.filters[{}].rules.{problem}", filter.name));
        }
    }
    let mut enhancement_names = HashSet::new();
    for enhancement in &flow.enhancements {
        if validate_field_name(&enhancement.name).is_err() {
            problems.push(format!(
                "{at}.enhancements[{}]: name must be 1-64 characters of A-Z, a-z, 0-9 and '_'",
                enhancement.name
            ));
        }
        if !enhancement_names.insert(enhancement.name.as_str()) {
            problems.push(format!("{at}.enhancements[{}]: name used twice", enhancement.name));
        }
        if let Err(problem) = validate_http_url(&enhancement.url) {
            problems.push(format!("{at}.enhancements[{}].url: {problem}", enhancement.name));
        }
        if enhancement.timeout_ms == 0 || enhancement.timeout_ms > 60_000 {
            problems.push(format!("{at}.enhancements[{}].timeout_ms: must be between 1 and 60000", enhancement.name));
        }
        for (name, value) in &enhancement.headers {
            let header_at = format!("{at}.enhancements[{}].headers.{name}", enhancement.name);
            if !is_header_name(name) {
                problems.push(format!("{at}.enhancements[{}].headers: invalid header name {name:?}", enhancement.name));
            }
            check_header_value(&header_at, value, problems);
            if FRAMING_HEADERS.iter().any(|framing| framing.eq_ignore_ascii_case(name)) {
                problems.push(format!("{header_at}: {FRAMING_REASON}"));
            }
        }
    }
    let mut seen_destinations = HashSet::new();
    for destination in &flow.destinations {
        if !config.destinations.contains_key(destination) {
            problems.push(format!("{at}.destinations: unknown destination {destination:?}"));
        }
        if !seen_destinations.insert(destination.as_str()) {
            problems.push(format!("{at}.destinations: {destination:?} listed twice"));
        }
    }
    if flow.statuses.is_empty() {
        problems.push(format!("{at}.statuses: name at least one status"));
    }
    let mut statuses = HashSet::new();
    for status in &flow.statuses {
        if status.trim().is_empty() || !statuses.insert(status.as_str()) {
            problems.push(format!("{at}.statuses: {status:?} is empty or listed twice"));
        }
    }
}

fn validate_source(config: &Config, source: &Source, problems: &mut Vec<String>) {
    let at = format!("sources[{}]", source.id);
    if let Err(problem) = validate_slug(&source.id) {
        problems.push(format!("{at}.id: {problem}"));
    }
    if !config.flows.contains_key(&source.flow_id) {
        problems.push(format!("{at}.flow_id: unknown flow {:?}", source.flow_id));
    }
    if let Some(key) = &source.key {
        if key.trim().is_empty() {
            problems.push(format!("{at}.key: must not be empty (use null for no key)"));
        }
    }
    check_price(&at, source.price, problems);
    if let (Some(rules), Some(flow)) = (&source.filter, config.flows.get(&source.flow_id)) {
        let type_of = |name: &str| flow.field(name).map(|field| field.field_type);
        for problem in crate::typed_rules::problems(rules, &type_of) {
            problems.push(format!("{at}.filter.{problem}"));
        }
    }
    for (from, to) in &source.field_map {
        if from.is_empty() {
            problems.push(format!("{at}.field_map: an empty name cannot be mapped"));
        }
        if let Err(problem) = validate_field_name(to) {
            problems.push(format!("{at}.field_map[{from}]: {problem}"));
        }
    }
}

/// Prices are money: at least 0, below a billion, at most 6 decimal places. (Within those
/// bounds every engine writes a price with the same digits.)
fn check_price(at: &str, price: Option<f64>, problems: &mut Vec<String>) {
    if let Some(price) = price {
        let micros = price * 1_000_000.0;
        let whole_micros = (micros - micros.round()).abs() < 1e-6;
        if !price.is_finite() || !(0.0..1e9).contains(&price) || !whole_micros {
            problems.push(format!("{at}.price: must be a number from 0 to 999999999.999999 with at most 6 decimals"));
        }
    }
}

/// An absolute `http` or `https` URL with a host.
pub fn validate_http_url(text: &str) -> Result<url::Url, String> {
    // Servers refuse far shorter request lines; a longer URL could never be delivered to.
    const MAX_URL: usize = 8192;
    if text.len() > MAX_URL {
        return Err(format!("URL is {} bytes long; the most a server takes is about {MAX_URL}", text.len()));
    }
    let url = url::Url::parse(text).map_err(|error| format!("invalid URL {text:?}: {error}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("URL {text:?} must use http or https"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("URL {text:?} has no host"));
    }
    Ok(url)
}

/// A JSON path as users write it: RFC 9535 (`$.data.id`), or the same without `$.` (`data.id`).
pub fn parse_json_path(text: &str) -> Result<serde_json_path::JsonPath, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("a JSON path must not be empty".to_owned());
    }
    let full = if text.starts_with('$') { text.to_owned() } else { format!("$.{text}") };
    serde_json_path::JsonPath::parse(&full).map_err(|error| format!("invalid JSON path {text:?}: {error}"))
}

/// Parses `200-399` or `201` into an inclusive range.
pub fn parse_status_range(text: &str) -> Result<(u16, u16), String> {
    let parse = |part: &str| part.trim().parse::<u16>().ok().filter(|code| (100..=599).contains(code));
    let range = match text.split_once('-') {
        Some((low, high)) => parse(low).zip(parse(high)),
        None => parse(text).map(|code| (code, code)),
    };
    match range {
        Some((low, high)) if low <= high => Ok((low, high)),
        _ => Err(format!("invalid status range {text:?}: use e.g. \"200-399\" or \"201\"")),
    }
}

fn is_header_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_!#$%&'*+.^`|~".contains(&b))
}

/// A header value can hold no line break or other control character (a YAML `|` block ends
/// its text with one): no request with it could be sent, so it is refused here rather than
/// failing every delivery.
fn check_header_value(at: &str, value: &str, problems: &mut Vec<String>) {
    if let Some(bad) = value.chars().find(|&c| c != '\t' && c.is_ascii_control()) {
        problems.push(format!("{at}: a header value cannot contain the control character {bad:?}"));
    }
}

fn validate_destination(destination: &Destination, problems: &mut Vec<String>) {
    let at = format!("destinations[{}]", destination.id);
    if let Err(problem) = validate_slug(&destination.id) {
        problems.push(format!("{at}.id: {problem}"));
    }
    if destination.kind == DestinationKind::Ga4 {
        match &destination.ga4 {
            None => problems.push(format!("{at}.ga4: a ga4 destination needs measurement_id and api_secret")),
            Some(ga4) if ga4.measurement_id.trim().is_empty() || ga4.api_secret.trim().is_empty() => {
                problems.push(format!("{at}.ga4: measurement_id and api_secret must not be empty"))
            }
            Some(ga4) if ga4.event_name.is_empty() || ga4.event_name.len() > 40 => {
                problems.push(format!("{at}.ga4.event_name: must be 1 to 40 characters"))
            }
            Some(_) => {}
        }
        // A Measurement Protocol event is a JSON POST leadrelay builds; settings that would
        // shape another request would be ignored, so they are refused.
        if destination.method != HttpMethod::POST {
            problems.push(format!("{at}.method: a ga4 destination always POSTs its event; leave method out"));
        }
        if destination.format != BodyFormat::Json {
            problems.push(format!("{at}.format: a ga4 destination always sends its event as JSON; leave format out"));
        }
        if destination.body_template.is_some() {
            problems.push(format!(
                "{at}.body_template: a ga4 destination sends a Measurement Protocol event (ga4.event_name); leave \
                 body_template out"
            ));
        }
    } else if destination.ga4.is_some() {
        problems.push(format!("{at}.ga4: only for kind ga4"));
    }
    match (&destination.kind, &destination.url) {
        (DestinationKind::Webhook, None) => problems.push(format!("{at}.url: a webhook destination needs a url")),
        (_, Some(url)) => {
            if let Err(problem) = validate_http_url(url) {
                problems.push(format!("{at}.url: {problem}"));
            }
        }
        _ => {}
    }
    if destination.kind == DestinationKind::Email {
        problems.push(format!("{at}.kind: email destinations are not supported by this version yet"));
    }
    // A GET carries no body (servers drop one), so its fields can only travel in the URL.
    if destination.kind == DestinationKind::Webhook
        && destination.method == HttpMethod::GET
        && destination.format != BodyFormat::Query
    {
        problems.push(format!(
            "{at}.method: a GET sends no body, so format {} would lose the lead: use format query (the fields \
             in the URL) or another method",
            destination.format.as_str()
        ));
    }
    for (name, value) in &destination.headers {
        if !is_header_name(name) {
            problems.push(format!("{at}.headers: invalid header name {name:?}"));
        }
        check_header_value(&format!("{at}.headers.{name}"), value, problems);
        if let Some(why) = reserved_header(name) {
            problems.push(format!("{at}.headers.{name}: {why}"));
        }
        if destination.auth.is_some() && name.eq_ignore_ascii_case(auth_header_name(destination.auth.as_ref())) {
            problems.push(format!("{at}.headers.{name}: auth sets this header already; keep one of the two"));
        }
    }
    match &destination.auth {
        Some(Auth::Header { name, value }) => {
            if !is_header_name(name) {
                problems.push(format!("{at}.auth.name: invalid header name {name:?}"));
            }
            if let Some(why) = reserved_header(name) {
                problems.push(format!("{at}.auth.name: {name}: {why}"));
            }
            check_header_value(&format!("{at}.auth.value"), value, problems);
        }
        Some(Auth::Bearer { token }) => check_header_value(&format!("{at}.auth.token"), token, problems),
        Some(Auth::Basic { .. }) | None => {}
    }
    if let Err(problem) = parse_status_range(&destination.success.status) {
        problems.push(format!("{at}.success.status: {problem}"));
    }
    if let Some(pattern) = &destination.success.body_regex {
        if let Err(error) = regex::RegexBuilder::new(pattern).size_limit(1 << 20).build() {
            problems.push(format!("{at}.success.body_regex: invalid regex: {error}"));
        }
    }
    if destination.success.json_equals.is_some() && destination.success.json_path.is_none() {
        problems.push(format!("{at}.success.json_equals: needs a json_path"));
    }
    if let Some(path) = &destination.success.json_path {
        if let Err(problem) = parse_json_path(path) {
            problems.push(format!("{at}.success.json_path: {problem}"));
        }
    }
    for (name, path) in &destination.capture {
        if let Err(problem) = parse_json_path(path) {
            problems.push(format!("{at}.capture.{name}: {problem}"));
        }
    }
    if let Some(template) = &destination.body_template {
        if let Err(problem) = check_template(template) {
            problems.push(format!("{at}.body_template: {problem}"));
        }
    }
    if destination.circuit_breaker.as_ref().is_some_and(|breaker| breaker.failures == 0 || breaker.failures > 100_000) {
        problems.push(format!("{at}.circuit_breaker.failures: must be between 1 and 100000"));
    }
    if destination.concurrency == 0 || destination.concurrency > 1000 {
        problems.push(format!("{at}.concurrency: must be between 1 and 1000"));
    }
    if destination.timeout_ms == 0 || destination.timeout_ms > 120_000 {
        problems.push(format!("{at}.timeout_ms: must be between 1 and 120000"));
    }
    let retry = &destination.retry;
    if retry.max_attempts == 0 || retry.max_attempts > 100 {
        problems.push(format!("{at}.retry.max_attempts: must be between 1 and 100"));
    }
    if retry.schedule_ms.is_empty() && retry.max_attempts > 1 {
        problems.push(format!("{at}.retry.schedule_ms: name at least one delay"));
    }
    if retry.schedule_ms.iter().any(|delay| *delay > 30 * 86_400_000) {
        problems.push(format!("{at}.retry.schedule_ms: a delay may be at most 30 days"));
    }
    if !(0.0..=1.0).contains(&retry.jitter) {
        problems.push(format!("{at}.retry.jitter: must be between 0 and 1"));
    }
    for (index, cap) in destination.caps.iter().enumerate() {
        if cap.max == 0 {
            problems.push(format!("{at}.caps[{index}].max: must be at least 1"));
        }
        if cap.time_zone.parse::<Tz>().is_err() {
            problems.push(format!("{at}.caps[{index}].time_zone: unknown time zone {:?}", cap.time_zone));
        }
    }
    check_price(&at, destination.price, problems);
    if let Some(secret) = &destination.signing_secret {
        let decoded =
            secret.strip_prefix("whsec_").and_then(|key| base64::engine::general_purpose::STANDARD.decode(key).ok());
        if decoded.is_none_or(|key| key.len() < 16 || key.len() > 64) {
            problems
                .push(format!("{at}.signing_secret: must be \"whsec_\" followed by base64 of 16 to 64 random bytes"));
        }
    }
    for (index, previous) in destination.previous_signing_secrets.iter().flatten().enumerate() {
        if !previous.secret.starts_with("whsec_") {
            problems.push(format!("{at}.previous_signing_secrets[{index}].secret: must start with \"whsec_\""));
        }
        if chrono::DateTime::parse_from_rfc3339(&previous.until).is_err() {
            problems.push(format!("{at}.previous_signing_secrets[{index}].until: must be an ISO 8601 time"));
        }
    }
    if let Some(proxy) = &destination.proxy {
        let valid = url::Url::parse(proxy).is_ok_and(|url| matches!(url.scheme(), "http" | "https"));
        if !valid {
            problems.push(format!("{at}.proxy: must be an http or https URL"));
        }
    }
}

/// The headers of the Standard Webhooks signature, which every webhook carries as signed.
const SIGNATURE_HEADERS: [&str; 3] = ["webhook-id", "webhook-timestamp", "webhook-signature"];

/// Headers that frame the message on the wire: set from the body actually sent, never by
/// configuration (a wrong `Content-Length` would cut the body the log says was sent).
const FRAMING_HEADERS: [&str; 8] =
    ["content-length", "transfer-encoding", "connection", "host", "te", "trailer", "upgrade", "keep-alive"];

const FRAMING_REASON: &str = "set by the HTTP client from the request it sends and cannot be configured";

/// Why a header cannot be configured (in `headers` or as `auth.name`), if it cannot.
fn reserved_header(name: &str) -> Option<&'static str> {
    let is = |names: &[&str]| names.iter().any(|reserved| reserved.eq_ignore_ascii_case(name));
    if is(&SIGNATURE_HEADERS) {
        Some("set by leadrelay on every webhook (Standard Webhooks signature) and cannot be configured")
    } else if is(&FRAMING_HEADERS) {
        Some(FRAMING_REASON)
    } else {
        None
    }
}

/// The header an `auth` block sets.
fn auth_header_name(auth: Option<&Auth>) -> &str {
    match auth {
        Some(Auth::Header { name, .. }) => name,
        _ => "Authorization",
    }
}

/// The most steps (MiniJinja's fuel) rendering one `body_template` may take: far more than any
/// payload needs, far less than a second of work.
pub const TEMPLATE_FUEL: u64 = 200_000;

/// Refuses a template that does not compile, or that names a filter, test or function
/// MiniJinja does not have: those are looked up only when the template runs, so a trial run
/// over an empty lead finds the ones outside conditions before any lead meets them.
fn check_template(template: &str) -> Result<(), String> {
    let mut environment = minijinja::Environment::new();
    environment.set_undefined_behavior(minijinja::UndefinedBehavior::Chainable);
    environment.set_fuel(Some(TEMPLATE_FUEL));
    let compiled = environment.template_from_str(template).map_err(|error| error.to_string())?;
    let empty = minijinja::context! { lead => minijinja::context! { fields => minijinja::context! {} } };
    match compiled.render(empty) {
        Err(error)
            if matches!(
                error.kind(),
                minijinja::ErrorKind::UnknownFilter
                    | minijinja::ErrorKind::UnknownTest
                    | minijinja::ErrorKind::UnknownFunction
                    | minijinja::ErrorKind::UnknownMethod
            ) =>
        {
            Err(error.to_string())
        }
        Err(error) if error.kind() == minijinja::ErrorKind::OutOfFuel => Err(format!(
            "the template does too much work to render (over {TEMPLATE_FUEL} steps even for an empty lead)"
        )),
        _ => Ok(()),
    }
}
