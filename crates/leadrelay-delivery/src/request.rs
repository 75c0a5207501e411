//! The request a destination receives for a lead: URL, method, headers, auth and a body in
//! the destination's format (`json`, `form`, `query`, `xml`) or rendered from its MiniJinja
//! `body_template`. Building it does no IO.

use base64::Engine;
use indexmap::IndexMap;
use leadrelay_domain::config::{Auth, BodyFormat, Destination, DestinationKind, HttpMethod, GA4_COLLECT_URL};
use leadrelay_domain::lead::{snapshot_fields, LEAD_ATTRIBUTES};
use serde_json::{json, Map, Value};

/// Why a request could not be built; a configuration problem, so never retried.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("destination has no URL")]
    NoUrl,
    #[error("destination URL {url:?} is invalid: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("body_template failed: {0}")]
    Template(String),
    #[error("body_template did not render valid JSON: {0}")]
    TemplateJson(String),
    #[error("destination kind {0} cannot be delivered by this build")]
    Kind(&'static str),
}

/// The context a delivery happens in: what the template sees as `event`.
#[derive(Clone, Debug)]
pub struct DeliveryContext<'a> {
    pub transfer_id: &'a str,
    /// Stable across every attempt of one transfer, so receivers can de-duplicate.
    pub webhook_id: &'a str,
    pub attempt: u32,
    pub timestamp: &'a str,
}

/// A request ready to send.
#[derive(Clone, Debug, PartialEq)]
pub struct OutboundRequest {
    pub method: HttpMethod,
    pub url: url::Url,
    /// In the order they are sent; names as configured.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl OutboundRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(key, _)| key.eq_ignore_ascii_case(name)).map(|(_, value)| value.as_str())
    }
}

/// The lead's fields as a destination receives them: each field's normalised value (its raw
/// value when it has none), by name.
pub fn lead_fields(snapshot: &Value) -> Map<String, Value> {
    snapshot_fields(snapshot).map(|(name, field)| (name.clone(), field_value(field))).collect()
}

fn field_value(field: &Map<String, Value>) -> Value {
    match field.get("value") {
        Some(Value::Null) | None => field.get("raw").cloned().unwrap_or(Value::Null),
        Some(value) => value.clone(),
    }
}

/// What `body_template` sees as `lead`: the lead's attributes and `appended`, each field's
/// value at the top level (`{{ lead.email }}`, a plain string or number, so that `==`, `in`
/// and tests of truth work as on any value), and the field objects with their parts under
/// `fields` (`{{ lead.fields.email.domain }}`). No field can shadow an attribute.
fn template_lead(snapshot: &Value) -> Value {
    let mut lead = Map::new();
    let mut objects = Map::new();
    for (name, field) in snapshot_fields(snapshot) {
        objects.insert(name.clone(), Value::Object(field.clone()));
        if !LEAD_ATTRIBUTES.contains(&name.as_str()) {
            lead.insert(name.clone(), field_value(field));
        }
    }
    for attribute in LEAD_ATTRIBUTES {
        if let Some(value) = snapshot.get(attribute).filter(|_| attribute != "fields") {
            lead.insert(attribute.to_owned(), value.clone());
        }
    }
    lead.insert("fields".to_owned(), Value::Object(objects));
    Value::Object(lead)
}

/// How a string printed by a template is escaped for the destination's format, so that a
/// lead's `"`, `<` or `&` cannot break (or add to) the document: inside a JSON string, as
/// XML text, or URL-encoded. Numbers, booleans, lists and maps print as they are, as do
/// `| safe` and `| tojson`; nothing prints as nothing.
fn escape_for(format: BodyFormat, text: &str) -> String {
    match format {
        BodyFormat::Json => {
            let quoted = Value::String(text.to_owned()).to_string();
            quoted[1..quoted.len() - 1].to_owned()
        }
        BodyFormat::Xml => quick_xml::escape::escape(xml_chars(text).as_ref()).into_owned(),
        BodyFormat::Form | BodyFormat::Query => url::form_urlencoded::byte_serialize(text.as_bytes()).collect(),
    }
}

/// Renders a destination's `body_template`.
pub fn render_template(
    template: &str,
    snapshot: &Value,
    destination: &Destination,
    context: &DeliveryContext<'_>,
) -> Result<String, BuildError> {
    let mut environment = minijinja::Environment::new();
    environment.set_undefined_behavior(minijinja::UndefinedBehavior::Chainable);
    // A template's work is bounded: one that loops for long fails its delivery, and never
    // holds a worker thread that intake and other deliveries need.
    environment.set_fuel(Some(leadrelay_domain::config::TEMPLATE_FUEL));
    let format = destination.format;
    environment.set_formatter(move |out, _state, value| {
        if value.is_undefined() || value.is_none() {
            return Ok(());
        }
        let text = value.to_string();
        let is_text = value.kind() == minijinja::value::ValueKind::String;
        let printed = if is_text && !value.is_safe() { escape_for(format, &text) } else { text };
        out.write_str(&printed).map_err(minijinja::Error::from)
    });
    let event = json!({
        "transfer_id": context.transfer_id,
        "webhook_id": context.webhook_id,
        "attempt": context.attempt,
        "timestamp": context.timestamp,
        "lead_id": snapshot.get("id"),
        "destination_id": destination.id,
    });
    let destination_value = json!({"id": destination.id, "name": destination.name});
    environment
        .render_str(
            template,
            minijinja::context! {
                lead => minijinja::Value::from_serialize(template_lead(snapshot)),
                event => minijinja::Value::from_serialize(event),
                destination => minijinja::Value::from_serialize(destination_value),
            },
        )
        .map_err(|error| BuildError::Template(error.to_string()))
}

fn text_of(value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

/// The fields as name-value pairs for a form body or a query string: a list (a group of
/// checkboxes) gives one pair per item under the same name, as a browser's form sends it; a
/// map is sent as its JSON text.
pub(crate) fn form_pairs<'a>(fields: impl IntoIterator<Item = (&'a String, &'a Value)>) -> Vec<(String, String)> {
    let mut pairs = Vec::new();
    for (name, value) in fields {
        match value {
            Value::Array(items) => pairs.extend(items.iter().map(|item| (name.clone(), text_of(item)))),
            other => pairs.push((name.clone(), text_of(other))),
        }
    }
    pairs
}

/// XML 1.0 allows no control character but tab and line breaks, even escaped: text pasted
/// from office documents carries them (`\u{7}`, `\u{b}`), and a buyer's parser would refuse
/// the whole document. Each becomes U+FFFD, so the value shows something was there.
fn xml_chars(text: &str) -> std::borrow::Cow<'_, str> {
    let allowed =
        |c: char| !matches!(c, '\u{0}'..='\u{8}' | '\u{b}' | '\u{c}' | '\u{e}'..='\u{1f}' | '\u{fffe}' | '\u{ffff}');
    if text.chars().all(allowed) {
        return std::borrow::Cow::Borrowed(text);
    }
    std::borrow::Cow::Owned(text.chars().map(|c| if allowed(c) { c } else { '\u{fffd}' }).collect())
}

/// XML element names allow fewer characters than field names; others become `_`.
fn xml_name(name: &str) -> String {
    let mut out: String =
        name.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.') { c } else { '_' }).collect();
    if !out.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') {
        out.insert(0, '_');
    }
    out
}

fn xml_document(fields: &Map<String, Value>) -> Vec<u8> {
    use quick_xml::events::{BytesDecl, BytesEnd, BytesStart, Event};
    let mut writer = quick_xml::Writer::new(Vec::new());
    // Writing into a Vec cannot fail.
    let _ = writer.write_event(Event::Decl(BytesDecl::new("1.0", Some("UTF-8"), None)));
    let _ = writer.write_event(Event::Start(BytesStart::new("lead")));
    for (name, value) in fields {
        xml_element(&mut writer, &xml_name(name), value);
    }
    let _ = writer.write_event(Event::End(BytesEnd::new("lead")));
    writer.into_inner()
}

/// One field as XML: a list repeats its element once per item, a map nests an element per
/// key, and anything else is the element's text.
fn xml_element(writer: &mut quick_xml::Writer<Vec<u8>>, name: &str, value: &Value) {
    use quick_xml::events::{BytesEnd, BytesStart, BytesText, Event};
    if let Value::Array(items) = value {
        for item in items {
            xml_element(writer, name, item);
        }
        return;
    }
    // Writing into a Vec cannot fail.
    let _ = writer.write_event(Event::Start(BytesStart::new(name)));
    match value {
        Value::Object(map) => {
            for (key, inner) in map {
                xml_element(writer, &xml_name(key), inner);
            }
        }
        other => {
            let _ = writer.write_event(Event::Text(BytesText::new(&xml_chars(&text_of(other)))));
        }
    }
    let _ = writer.write_event(Event::End(BytesEnd::new(name)));
}

/// Builds the request a webhook destination receives for a lead snapshot.
pub fn build_request(
    destination: &Destination,
    snapshot: &Value,
    context: &DeliveryContext<'_>,
) -> Result<OutboundRequest, BuildError> {
    match destination.kind {
        DestinationKind::Webhook => {}
        DestinationKind::Ga4 => return ga4_request(destination, snapshot),
        DestinationKind::Email => return Err(BuildError::Kind("email")),
    }
    let raw_url = destination.url.as_deref().ok_or(BuildError::NoUrl)?;
    let mut url = url::Url::parse(raw_url)
        .map_err(|error| BuildError::BadUrl { url: raw_url.to_owned(), reason: error.to_string() })?;
    let fields = lead_fields(snapshot);
    let rendered = match &destination.body_template {
        Some(template) => Some(render_template(template, snapshot, destination, context)?),
        None => None,
    };

    let mut headers: IndexMap<String, String> = IndexMap::new();
    let mut body = Vec::new();
    let method = destination.method;
    match destination.format {
        BodyFormat::Json => {
            body = match rendered {
                Some(text) => {
                    serde_json::from_str::<Value>(&text)
                        .map_err(|error| BuildError::TemplateJson(error.to_string()))?;
                    text.into_bytes()
                }
                None => Value::Object(fields).to_string().into_bytes(),
            };
            headers.insert("Content-Type".to_owned(), "application/json".to_owned());
        }
        BodyFormat::Form => {
            body = match rendered {
                Some(text) => text.into_bytes(),
                None => serde_urlencoded::to_string(form_pairs(&fields)).unwrap_or_default().into_bytes(),
            };
            headers.insert("Content-Type".to_owned(), "application/x-www-form-urlencoded".to_owned());
        }
        BodyFormat::Query => {
            match rendered {
                Some(text) => {
                    let query = text.trim().trim_start_matches('?').to_owned();
                    let joined = match url.query() {
                        Some(existing) if !existing.is_empty() => format!("{existing}&{query}"),
                        _ => query,
                    };
                    url.set_query(Some(&joined));
                }
                None => {
                    let mut pairs = url.query_pairs_mut();
                    for (name, value) in form_pairs(&fields) {
                        pairs.append_pair(&name, &value);
                    }
                }
            };
        }
        BodyFormat::Xml => {
            body = match rendered {
                Some(text) => text.into_bytes(),
                None => xml_document(&fields),
            };
            headers.insert("Content-Type".to_owned(), "application/xml".to_owned());
        }
    }
    apply_auth_and_headers(destination, &mut url, &mut headers);
    // A POST whose fields travel in the URL still says its body is empty (RFC 9110 §8.6):
    // some servers answer one without a length with 411.
    if body.is_empty() && method != HttpMethod::GET {
        headers.insert("Content-Length".to_owned(), "0".to_owned());
    }
    Ok(OutboundRequest { method, url, headers: headers.into_iter().collect(), body })
}

fn basic(username: &str, password: &str) -> String {
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}")))
}

/// Takes the credentials written in a URL out of it, as the `Authorization: Basic` value they
/// stand for.
pub fn take_url_credentials(url: &mut url::Url) -> Option<String> {
    if url.username().is_empty() && url.password().is_none() {
        return None;
    }
    let decode = |part: &str| percent_encoding::percent_decode_str(part).decode_utf8_lossy().into_owned();
    let authorization = basic(&decode(url.username()), &decode(url.password().unwrap_or_default()));
    // Clearing the user info of a URL that has some cannot fail.
    let _ = url.set_username("");
    let _ = url.set_password(None);
    Some(authorization)
}

/// Sets what a destination's `auth`, URL credentials and `headers` ask for, and leadrelay's
/// `User-Agent`; the URL is left without credentials.
fn apply_auth_and_headers(destination: &Destination, url: &mut url::Url, headers: &mut IndexMap<String, String>) {
    // Credentials written in the URL are sent as the `Authorization` header they stand for,
    // and the URL goes without them: the recorded request then shows that header (masked) as
    // it was sent. A configured `auth` wins over them.
    let url_credentials = take_url_credentials(url);
    match &destination.auth {
        Some(Auth::Basic { username, password }) => {
            headers.insert("Authorization".to_owned(), basic(username, password));
        }
        Some(Auth::Bearer { token }) => {
            headers.insert("Authorization".to_owned(), format!("Bearer {token}"));
        }
        Some(Auth::Header { name, value }) => {
            headers.insert(name.clone(), value.clone());
        }
        None => {
            if let Some(authorization) = url_credentials {
                headers.insert("Authorization".to_owned(), authorization);
            }
        }
    }
    headers.insert("User-Agent".to_owned(), concat!("leadrelay/", env!("CARGO_PKG_VERSION")).to_owned());
    // The destination's own headers win over the defaults (`Content-Type`, `User-Agent`);
    // configuration refuses one that `auth` or the signature sets.
    for (name, value) in &destination.headers {
        let existing = headers.keys().find(|key| key.eq_ignore_ascii_case(name)).cloned();
        if let Some(key) = existing {
            headers.shift_remove(&key);
        }
        headers.insert(name.clone(), value.clone());
    }
}

/// A GA4 Measurement Protocol event for a lead: `generate_lead` (or the configured name) with
/// the lead's id, source and flow, and the destination's price as its value.
fn ga4_request(destination: &Destination, snapshot: &Value) -> Result<OutboundRequest, BuildError> {
    let settings = destination.ga4.as_ref().ok_or(BuildError::NoUrl)?;
    let raw_url = destination.url.as_deref().unwrap_or(GA4_COLLECT_URL);
    let mut url = url::Url::parse(raw_url)
        .map_err(|error| BuildError::BadUrl { url: raw_url.to_owned(), reason: error.to_string() })?;
    url.query_pairs_mut()
        .append_pair("measurement_id", &settings.measurement_id)
        .append_pair("api_secret", &settings.api_secret);
    let fields = lead_fields(snapshot);
    let lead_id = snapshot.get("id").and_then(Value::as_str).unwrap_or_default();
    let client_id = settings
        .client_id_field
        .as_ref()
        .and_then(|name| fields.get(name))
        .map(text_of)
        .filter(|id| !id.is_empty())
        .unwrap_or_else(|| lead_id.to_owned());
    let mut params = json!({
        "lead_id": lead_id,
        "source_id": snapshot.get("source_id"),
        "flow_id": snapshot.get("flow_id"),
    });
    if let Some(price) = destination.price {
        params["value"] = json!(price);
        params["currency"] = json!("USD");
    }
    let body = json!({"client_id": client_id, "events": [{"name": settings.event_name, "params": params}]});
    // A server-side collector (a tagging server behind a gateway) may need auth and headers.
    let mut headers = IndexMap::new();
    headers.insert("Content-Type".to_owned(), "application/json".to_owned());
    apply_auth_and_headers(destination, &mut url, &mut headers);
    Ok(OutboundRequest {
        method: HttpMethod::POST,
        url,
        headers: headers.into_iter().collect(),
        body: body.to_string().into_bytes(),
    })
}

/// Header names whose values are secrets: shown as `***` wherever a request is recorded.
/// The configured `headers` count too: they usually carry API keys, and events are kept for good.
pub fn secret_headers(destination: &Destination) -> Vec<String> {
    let mut names = vec!["authorization".to_owned(), "proxy-authorization".to_owned()];
    if let Some(Auth::Header { name, .. }) = &destination.auth {
        names.push(name.to_ascii_lowercase());
    }
    names.extend(destination.headers.keys().map(|name| name.to_ascii_lowercase()));
    names
}

pub use leadrelay_domain::config::{redacted_url, secret_parameter};

#[cfg(test)]
mod tests {
    use super::*;

    fn destination(json: Value) -> Destination {
        let mut base = json!({"id": "crm", "name": "CRM", "url": "http://crm.test/leads"});
        base.as_object_mut().unwrap().extend(json.as_object().unwrap().clone());
        serde_json::from_value(base).unwrap()
    }

    fn snapshot() -> Value {
        json!({
            "id": "lead_1", "flow_id": "solar", "source_id": "web",
            "email": {"raw": " Ann@Example.com", "value": "ann@example.com", "valid": true},
            "state": {"raw": "tx", "value": "TX", "valid": true},
            "note": {"raw": "a < b & c", "value": "a < b & c"},
            "appended": {}
        })
    }

    fn context() -> DeliveryContext<'static> {
        DeliveryContext { transfer_id: "trf_1", webhook_id: "msg_1", attempt: 1, timestamp: "2024-01-15T14:30:45.123Z" }
    }

    #[test]
    fn json_format_sends_the_normalised_fields() {
        let request = build_request(&destination(json!({})), &snapshot(), &context()).unwrap();
        let body: Value = serde_json::from_slice(&request.body).unwrap();
        assert_eq!(body, json!({"email": "ann@example.com", "state": "TX", "note": "a < b & c"}));
        assert_eq!(request.header("content-type"), Some("application/json"));
    }

    #[test]
    fn form_and_query_formats_encode_the_fields() {
        let request = build_request(&destination(json!({"format": "form"})), &snapshot(), &context()).unwrap();
        assert_eq!(String::from_utf8(request.body).unwrap(), "email=ann%40example.com&state=TX&note=a+%3C+b+%26+c");
        let request = build_request(
            &destination(json!({"format": "query", "method": "GET", "url": "http://crm.test/in?campaign=7"})),
            &snapshot(),
            &context(),
        )
        .unwrap();
        assert_eq!(request.url.query(), Some("campaign=7&email=ann%40example.com&state=TX&note=a+%3C+b+%26+c"));
        assert!(request.body.is_empty());
        assert_eq!(request.header("content-length"), None, "a GET has no body to measure");
        let post = build_request(&destination(json!({"format": "query"})), &snapshot(), &context()).unwrap();
        assert_eq!(post.header("content-length"), Some("0"));
    }

    #[test]
    fn xml_bodies_hold_no_character_xml_forbids() {
        let mut lead = snapshot();
        lead["note"] = json!({"raw": "bell\u{7}char\u{b}\ttab", "value": "bell\u{7}char\u{b}\ttab"});
        let request = build_request(&destination(json!({"format": "xml"})), &lead, &context()).unwrap();
        let text = String::from_utf8(request.body).unwrap();
        assert!(text.contains("<note>bell\u{fffd}char\u{fffd}\ttab</note>"), "{text}");
        let template = destination(json!({"format": "xml", "body_template": "<n>{{ lead.note }}</n>"}));
        let request = build_request(&template, &lead, &context()).unwrap();
        assert_eq!(String::from_utf8(request.body).unwrap(), "<n>bell\u{fffd}char\u{fffd}\ttab</n>");
    }

    #[test]
    fn xml_format_escapes_values() {
        let request = build_request(&destination(json!({"format": "xml"})), &snapshot(), &context()).unwrap();
        let text = String::from_utf8(request.body).unwrap();
        assert!(text.contains("<note>a &lt; b &amp; c</note>"), "{text}");
        assert!(text.starts_with("<?xml"), "{text}");
    }

    #[test]
    fn body_template_sees_lead_event_and_destination() {
        let template = r#"{"e": {{ lead.email | tojson }}, "raw": {{ lead.fields.email.raw | tojson }}, "id": "{{ lead.id }}", "w": "{{ event.webhook_id }}", "d": "{{ destination.id }}"}"#;
        let request = build_request(&destination(json!({"body_template": template})), &snapshot(), &context()).unwrap();
        let body: Value = serde_json::from_slice(&request.body).unwrap();
        assert_eq!(
            body,
            json!({"e": "ann@example.com", "raw": " Ann@Example.com", "id": "lead_1", "w": "msg_1", "d": "crm"})
        );
    }

    #[test]
    fn template_fields_print_as_values_with_their_parts_under_fields() {
        let template = r#"{"mail": "{{ lead.email }}", "tx": {{ (lead.state == "TX") | tojson }}, "in": {{ (lead.state in ["CA", "TX"]) | tojson }}, "ok": {{ lead.fields.email.valid | tojson }}, "lead": "{{ event.lead_id }}", "none": "{{ lead.nothing }}{{ lead.reason }}", "list": {{ lead.appended.x.tags }}}"#;
        let mut snapshot = snapshot();
        snapshot["email"]["domain"] = json!("example.com");
        snapshot["reason"] = Value::Null;
        snapshot["appended"] = json!({"x": {"tags": ["a", "b"]}});
        let request = build_request(&destination(json!({"body_template": template})), &snapshot, &context()).unwrap();
        let body: Value = serde_json::from_slice(&request.body).unwrap();
        assert_eq!(
            body,
            json!({"mail": "ann@example.com", "tx": true, "in": true, "ok": true, "lead": "lead_1", "none": "", "list": ["a", "b"]})
        );
        let domain = build_request(
            &destination(json!({"body_template": "{\"d\": \"{{ lead.fields.email.domain }}\"}"})),
            &snapshot,
            &context(),
        )
        .unwrap();
        assert_eq!(serde_json::from_slice::<Value>(&domain.body).unwrap(), json!({"d": "example.com"}));
        // A value missing at any depth (no phone, an enhancement that failed) prints nothing.
        let missing =
            r#"{"area": "{{ lead.fields.phone.area }}", "carrier": "{{ lead.appended.phone_check.carrier }}"}"#;
        let request = build_request(&destination(json!({"body_template": missing})), &snapshot, &context()).unwrap();
        assert_eq!(serde_json::from_slice::<Value>(&request.body).unwrap(), json!({"area": "", "carrier": ""}));
    }

    #[test]
    fn template_values_are_escaped_for_the_format() {
        let mut snapshot = snapshot();
        snapshot["note"] = json!({"raw": "Jo \"x\" <b>&amp; é", "value": "Jo \"x\" <b>&amp; é"});
        let render = |format: &str, template: &str| {
            let destination = destination(json!({"format": format, "body_template": template}));
            let request = build_request(&destination, &snapshot, &context()).unwrap();
            (String::from_utf8(request.body).unwrap(), request.url.query().map(str::to_owned))
        };
        let (json_body, _) = render("json", r#"{"n": "{{ lead.note }}", "raw": {{ lead.note | tojson }}}"#);
        let parsed: Value = serde_json::from_str(&json_body).unwrap();
        assert_eq!(parsed, json!({"n": "Jo \"x\" <b>&amp; é", "raw": "Jo \"x\" <b>&amp; é"}));
        let (xml_body, _) = render("xml", "<lead><n>{{ lead.note }}</n><raw>{{ lead.note | safe }}</raw></lead>");
        assert!(xml_body.starts_with("<lead><n>Jo &quot;x&quot; &lt;b&gt;&amp;amp; é</n>"), "{xml_body}");
        let (form_body, _) = render("form", "name={{ lead.note }}&state={{ lead.state }}");
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(&form_body).unwrap();
        assert_eq!(
            pairs,
            [("name".to_owned(), "Jo \"x\" <b>&amp; é".to_owned()), ("state".to_owned(), "TX".to_owned())]
        );
        let (_, query) = render("query", "n={{ lead.note }}");
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(&query.unwrap()).unwrap();
        assert_eq!(pairs, [("n".to_owned(), "Jo \"x\" <b>&amp; é".to_owned())]);
    }

    #[test]
    fn a_json_template_that_renders_invalid_json_is_a_build_error() {
        let error = build_request(&destination(json!({"body_template": "{{ lead.email }}"})), &snapshot(), &context())
            .unwrap_err();
        assert!(matches!(error, BuildError::TemplateJson(_)), "{error}");
    }

    #[test]
    fn recorded_urls_hide_credentials_and_secret_parameters() {
        let url = url::Url::parse("https://user:pw@crm.test/in?api_key=k1&campaign=7&token=t&api_secret=s").unwrap();
        assert_eq!(redacted_url(&url), "https://crm.test/in?api_key=***&campaign=7&token=***&api_secret=***");
        let plain = url::Url::parse("https://crm.test/in?campaign=7").unwrap();
        assert_eq!(redacted_url(&plain), "https://crm.test/in?campaign=7");
        let hook = url::Url::parse("https://hooks.test/hooks/catch/123456/AbCdEf1234567890XyZqW/?x=1").unwrap();
        assert_eq!(redacted_url(&hook), "https://hooks.test/hooks/catch/123456/***/?x=1");
        // Where a lead went stays readable.
        let plain = url::Url::parse("https://crm.test/ok/crm-500/v2/leads").unwrap();
        assert_eq!(redacted_url(&plain), "https://crm.test/ok/crm-500/v2/leads");
    }

    #[test]
    fn auth_and_headers_are_set() {
        let request = build_request(
            &destination(
                json!({"auth": {"type": "basic", "username": "u", "password": "p"}, "headers": {"X-Api-Key": "k"}}),
            ),
            &snapshot(),
            &context(),
        )
        .unwrap();
        assert_eq!(request.header("authorization"), Some("Basic dTpw"));
        assert_eq!(request.header("x-api-key"), Some("k"));
        let request = build_request(
            &destination(json!({"auth": {"type": "header", "name": "X-Token", "value": "t"}})),
            &snapshot(),
            &context(),
        )
        .unwrap();
        assert_eq!(request.header("x-token"), Some("t"));
        // A destination's own User-Agent and Content-Type win over leadrelay's.
        let request = build_request(
            &destination(json!({"headers": {"user-agent": "acme-bridge/2", "Content-Type": "text/plain"}})),
            &snapshot(),
            &context(),
        )
        .unwrap();
        assert_eq!(request.header("User-Agent"), Some("acme-bridge/2"));
        assert_eq!(request.header("content-type"), Some("text/plain"));
        assert_eq!(request.headers.iter().filter(|(name, _)| name.eq_ignore_ascii_case("user-agent")).count(), 1);
    }

    #[test]
    fn credentials_in_the_url_are_sent_as_an_authorization_header() {
        let request =
            build_request(&destination(json!({"url": "http://ann:p%40ss@crm.test/leads"})), &snapshot(), &context())
                .unwrap();
        // ann:p@ss
        assert_eq!(request.header("authorization"), Some("Basic YW5uOnBAc3M="));
        assert_eq!(request.url.as_str(), "http://crm.test/leads");
        // A configured auth wins over them.
        let request = build_request(
            &destination(json!({"url": "http://ann:pw@crm.test/leads", "auth": {"type": "bearer", "token": "t"}})),
            &snapshot(),
            &context(),
        )
        .unwrap();
        assert_eq!(request.header("authorization"), Some("Bearer t"));
        assert_eq!(request.url.as_str(), "http://crm.test/leads");
    }
}
