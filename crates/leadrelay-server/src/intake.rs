//! Intake: `POST`/`GET /api/v1/sources/{source_id}/submit`. Reads the body (JSON, form or
//! query string), checks the source key and the limits, runs the pipeline's decisions and
//! commits everything before answering.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use leadrelay_domain::config::DeliveryMode;
use leadrelay_domain::event::Outcome;
use leadrelay_domain::pipeline::{decide, prepare, Intake};
use leadrelay_domain::time::now_millis;
use leadrelay_store::{CommitOutcome, IdempotencyRecord, Lease, StoredAnswer, Submission};
use serde_json::{Map, Value};
use subtle::ConstantTimeEq;
use tokio::sync::watch;

use crate::{ApiError, ApiResult, AppState};

/// A commit can find that a concurrent submission changed the duplicate answer; deciding
/// again is cheap, and a handful of tries always settles.
const MAX_DECISIONS: usize = 5;

/// The submissions of this node that carry an idempotency key and are waiting for their
/// realtime destinations: a retry with the same key that arrives meanwhile waits for the
/// first answer, with the outcomes, instead of answering the commit before the calls.
#[derive(Default)]
pub(crate) struct RealtimeWaits(std::sync::Mutex<WaitsByKey>);

/// By source and idempotency key: which submission announced the wait, and where its final
/// answer will come.
type WaitsByKey = HashMap<(String, String), (u64, watch::Receiver<Option<StoredAnswer>>)>;

/// A submission's announced wait. Dropping it withdraws the announcement (whether the answer
/// was given, the submitter hung up or the task failed), so no entry outlives its submission.
pub(crate) struct AnnouncedWait {
    state: Arc<AppState>,
    entry: (String, String),
    id: u64,
    answer: watch::Sender<Option<StoredAnswer>>,
}

impl AnnouncedWait {
    fn answer(self, answer: StoredAnswer) {
        self.answer.send_replace(Some(answer));
    }
}

impl Drop for AnnouncedWait {
    fn drop(&mut self) {
        let mut waits = self.state.realtime_waits.lock();
        // Only this submission's own announcement: another may have the key since.
        if waits.get(&self.entry).is_some_and(|(id, _)| *id == self.id) {
            waits.remove(&self.entry);
        }
    }
}

impl RealtimeWaits {
    fn lock(&self) -> std::sync::MutexGuard<'_, WaitsByKey> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Announces a submission about to wait for its realtime destinations, unless another
    /// submission with the key already waits (the commit makes this one a replay of it).
    fn begin(state: &Arc<AppState>, source_id: &str, key: &str) -> Option<AnnouncedWait> {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let entry = (source_id.to_owned(), key.to_owned());
        let mut waits = state.realtime_waits.lock();
        if waits.contains_key(&entry) {
            return None;
        }
        let id = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (answer, receiver) = watch::channel(None);
        waits.insert(entry.clone(), (id, receiver));
        drop(waits);
        Some(AnnouncedWait { state: state.clone(), entry, id, answer })
    }

    /// The answer to replay for a key: the first submission's final answer when it is still
    /// waiting for its destinations here, else the stored one.
    async fn replay(&self, source_id: &str, key: &str, stored: StoredAnswer) -> StoredAnswer {
        let waiting = self.lock().get(&(source_id.to_owned(), key.to_owned())).map(|(_, receiver)| receiver.clone());
        let Some(mut waiting) = waiting else { return stored };
        // The first submission's task may end without an answer: what was stored stands.
        let answer = waiting.wait_for(Option::is_some).await.ok().and_then(|answer| answer.clone());
        answer.unwrap_or(stored)
    }
}

pub fn routes() -> Router<Arc<AppState>> {
    // Landing pages post leads from the visitor's browser, from their own origin: intake
    // answers any origin (it needs no cookie; a source key, when set, is the credential).
    let cors = tower_http::cors::CorsLayer::new()
        .allow_origin(tower_http::cors::Any)
        .allow_methods([axum::http::Method::GET, axum::http::Method::POST])
        .allow_headers([
            CONTENT_TYPE,
            axum::http::HeaderName::from_static("idempotency-key"),
            axum::http::HeaderName::from_static("x-source-key"),
        ])
        .expose_headers([axum::http::HeaderName::from_static("idempotent-replayed")])
        .max_age(std::time::Duration::from_secs(3600));
    Router::new()
        .route(
            "/api/v1/sources/{source_id}/submit",
            get(submit).post(submit).head(refuse_method).fallback(refuse_method),
        )
        .layer(cors)
}

/// Only `GET` and `POST` submit. `HEAD` never does: link checkers and mail scanners probe
/// GET-submit URLs with it, and each probe would otherwise be a lead, charged and delivered.
async fn refuse_method() -> axum::response::Response {
    use axum::response::IntoResponse;
    let mut response = axum::http::StatusCode::METHOD_NOT_ALLOWED.into_response();
    response.headers_mut().insert(axum::http::header::ALLOW, axum::http::HeaderValue::from_static("GET, POST"));
    response
}

/// Reads a body into a map of submitted fields, by content type.
fn parse_body(headers: &HeaderMap, body: &[u8]) -> ApiResult<Map<String, Value>> {
    // Some Windows tools start UTF-8 text with a byte order mark; it is not part of the body.
    let body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    let content_type = headers.get(CONTENT_TYPE).and_then(|value| value.to_str().ok()).unwrap_or("");
    let media_type = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    let is_json = media_type == "application/json" || media_type.ends_with("+json");
    let is_form = media_type == "application/x-www-form-urlencoded";
    let looks_like_json = body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
    // `curl -d '{…}'` and most HTTP libraries label any body they are given as a form; a
    // JSON object sent that way is still a JSON object (no form field starts with `{`).
    if is_form && looks_like_json {
        if let Ok(Value::Object(map)) = exact_json(body) {
            return Ok(map);
        }
    }
    if is_json || (media_type.is_empty() && looks_like_json) {
        let value: Value = exact_json(body)
            .map_err(|error| ApiError::bad_request("invalid_json", format!("body is not valid JSON: {error}")))?;
        match value {
            Value::Object(map) => Ok(map),
            _ => Err(ApiError::bad_request("invalid_json", "body must be a JSON object of fields")),
        }
    } else if is_form || media_type.is_empty() {
        let charset = content_type.split(';').skip(1).find_map(|parameter| {
            let (name, value) = parameter.split_once('=')?;
            name.trim().eq_ignore_ascii_case("charset").then(|| value.trim().trim_matches('"').to_owned())
        });
        let encoding = match charset {
            None => None,
            Some(label) => Some(form_encoding(&label).ok_or_else(|| {
                ApiError::UnsupportedMediaType(format!(
                    "charset {label:?} cannot be a form's: send UTF-8, or name a known charset such as \
                             ISO-8859-1"
                ))
            })?),
        };
        Ok(fields_of(form_pairs(body, encoding)))
    } else {
        Err(ApiError::UnsupportedMediaType(format!(
            "content type {media_type:?} is not supported: send application/json, application/x-www-form-urlencoded, multipart/form-data, or a query string"
        )))
    }
}

/// A JSON body as written: a number that a double cannot hold exactly (more than 15
/// significant digits, or out of range like `1e400`) is kept as the text it was written as,
/// since the raw value of a field is kept (SPEC 4) and a lead is never refused for it.
fn exact_json(body: &[u8]) -> serde_json::Result<Value> {
    if !may_hold_inexact_numbers(body) {
        return serde_json::from_slice(body);
    }
    let raw: &serde_json::value::RawValue = serde_json::from_slice(body)?;
    exact_value(raw)
}

/// Whether a body has a run of 16 digits or more (dots between them counted out) or an
/// exponent: only then can a number in it lose digits as a double. Strings count too, which
/// only sends them the slower, exact way.
fn may_hold_inexact_numbers(body: &[u8]) -> bool {
    let mut digits = 0;
    let mut previous = 0u8;
    for &byte in body {
        match byte {
            b'0'..=b'9' => {
                digits += 1;
                if digits >= 16 {
                    return true;
                }
            }
            b'.' => {}
            b'e' | b'E' if previous.is_ascii_digit() || previous == b'.' => return true,
            _ => digits = 0,
        }
        previous = byte;
    }
    false
}

fn exact_value(raw: &serde_json::value::RawValue) -> serde_json::Result<Value> {
    let text = raw.get();
    match text.as_bytes().first() {
        Some(b'{') => {
            let members: indexmap::IndexMap<String, &serde_json::value::RawValue> = serde_json::from_str(text)?;
            members
                .into_iter()
                .map(|(name, value)| Ok((name, exact_value(value)?)))
                .collect::<serde_json::Result<Map<String, Value>>>()
                .map(Value::Object)
        }
        Some(b'[') => {
            let items: Vec<&serde_json::value::RawValue> = serde_json::from_str(text)?;
            items.into_iter().map(exact_value).collect::<serde_json::Result<Vec<Value>>>().map(Value::Array)
        }
        Some(b'-' | b'0'..=b'9') => {
            let significant = text
                .split(['e', 'E'])
                .next()
                .unwrap_or_default()
                .trim_start_matches('-')
                .chars()
                .filter(char::is_ascii_digit)
                .collect::<String>();
            let significant = significant.trim_start_matches('0').trim_end_matches('0').len();
            let is_integer = !text.contains(['.', 'e', 'E']);
            match serde_json::from_str::<serde_json::Number>(text) {
                Ok(number) if is_integer && (number.is_i64() || number.is_u64()) => Ok(Value::Number(number)),
                Ok(number) if !is_integer && significant <= 15 && number.as_f64().is_some_and(f64::is_finite) => {
                    Ok(Value::Number(number))
                }
                _ => Ok(Value::String(text.to_owned())),
            }
        }
        _ => serde_json::from_str(text),
    }
}

/// The boundary of a `multipart/form-data` body (what `fetch` sends for a `FormData`), if the
/// body is one.
fn multipart_boundary(headers: &HeaderMap) -> Option<ApiResult<String>> {
    let content_type = headers.get(CONTENT_TYPE).and_then(|value| value.to_str().ok())?;
    let media_type = content_type.split(';').next().unwrap_or("").trim();
    media_type.eq_ignore_ascii_case("multipart/form-data").then(|| {
        multer::parse_boundary(content_type).map_err(|error| {
            ApiError::bad_request(
                "invalid_multipart",
                format!("multipart/form-data without a usable boundary: {error}"),
            )
        })
    })
}

/// The text fields of a `multipart/form-data` body. A file input left empty is skipped; a file
/// is refused, since a lead's fields are text.
async fn multipart_fields(boundary: String, body: axum::body::Bytes) -> ApiResult<Map<String, Value>> {
    let invalid = |error: multer::Error| ApiError::bad_request("invalid_multipart", format!("multipart body: {error}"));
    let mut multipart =
        multer::Multipart::new(futures::stream::once(async move { Ok::<_, std::convert::Infallible>(body) }), boundary);
    let mut pairs = Vec::new();
    while let Some(field) = multipart.next_field().await.map_err(invalid)? {
        let Some(name) = field.name().map(str::to_owned) else {
            return Err(ApiError::bad_request("invalid_multipart", "a multipart part has no field name"));
        };
        let file_name = field.file_name().map(str::to_owned);
        let charset = field
            .content_type()
            .and_then(|content_type| content_type.get_param("charset"))
            .and_then(|label| form_encoding(label.as_str()));
        // Read as a form's values are.
        let text = decode_text(field.bytes().await.map_err(invalid)?.to_vec(), charset);
        match file_name {
            Some(file) if !file.is_empty() || !text.is_empty() => {
                return Err(ApiError::bad_request(
                    "invalid_multipart",
                    format!("{name}: files are not taken as lead fields (got {file:?}); send text fields only"),
                ));
            }
            Some(_) => continue,
            None => pairs.push((name, text)),
        }
    }
    Ok(fields_of(pairs))
}

/// Whether the request carries an API token that may submit to any source in place of its
/// key: a `source` token (SPEC 8: submit only) or an `admin` one.
async fn submits_with_token(state: &AppState, headers: &HeaderMap) -> ApiResult<bool> {
    let token = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split_once(' '))
        .and_then(|(scheme, token)| scheme.eq_ignore_ascii_case("bearer").then_some(token.trim()));
    let Some(token) = token else { return Ok(false) };
    let hash = crate::hash_token(token);
    let record = state.store.find_token(&hash).await?;
    Ok(record.is_some_and(|record| {
        bool::from(record.hash.ct_eq(&hash))
            && matches!(record.role, leadrelay_store::Role::Source | leadrelay_store::Role::Admin)
    }))
}

/// Whether reading a body failed because it did not arrive in time (the error is wrapped
/// once or twice on its way up).
fn is_body_timeout(error: &(dyn std::error::Error + 'static)) -> bool {
    std::iter::successors(Some(error), |error| error.source())
        .any(|error| error.downcast_ref::<tower_http::timeout::TimeoutError>().is_some())
}

fn parse_query(query: Option<&str>) -> ApiResult<Map<String, Value>> {
    let Some(query) = query.filter(|query| !query.is_empty()) else { return Ok(Map::new()) };
    Ok(fields_of(form_pairs(query.as_bytes(), None)))
}

/// The name and value pairs of a form body or a query string, percent-decoded and read in
/// `encoding` when the request names one. Without one, UTF-8 is expected; a legacy page
/// that sends its own 8-bit encoding unlabelled (browsers send a page's encoding and say
/// nothing) is read as Windows-1252, the superset of ISO-8859-1 browsers use for it, so
/// `Jos%E9` is `José`, never a replacement character.
/// A form value's bytes as text: in the labelled charset; unlabelled, UTF-8, or else what
/// browsers of legacy pages send without saying (Windows-1252), never a replacement character
/// for a letter.
fn decode_text(bytes: Vec<u8>, encoding: Option<&'static encoding_rs::Encoding>) -> String {
    match encoding {
        Some(encoding) => encoding.decode_without_bom_handling(&bytes).0.into_owned(),
        None => match String::from_utf8(bytes) {
            Ok(text) => text,
            Err(error) => encoding_rs::WINDOWS_1252.decode_without_bom_handling(error.as_bytes()).0.into_owned(),
        },
    }
}

/// The encoding a charset label names, if a form can be in it: a form's names and separators
/// are ASCII, so a charset that writes them otherwise (UTF-16) cannot be, nor one that decodes
/// everything as a replacement character.
fn form_encoding(label: &str) -> Option<&'static encoding_rs::Encoding> {
    encoding_rs::Encoding::for_label_no_replacement(label.as_bytes()).filter(|encoding| encoding.is_ascii_compatible())
}

fn form_pairs(body: &[u8], encoding: Option<&'static encoding_rs::Encoding>) -> Vec<(String, String)> {
    let decode = |part: &[u8]| -> String {
        let spaced: Vec<u8> = part.iter().map(|byte| if *byte == b'+' { b' ' } else { *byte }).collect();
        let bytes: Vec<u8> = percent_encoding::percent_decode(&spaced).collect();
        decode_text(bytes, encoding)
    };
    body.split(|byte| *byte == b'&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| match pair.iter().position(|byte| *byte == b'=') {
            Some(at) => (decode(&pair[..at]), decode(&pair[at + 1..])),
            None => (decode(pair), String::new()),
        })
        .collect()
}

/// Form or query pairs as fields. A name given more than once (a group of checkboxes, a
/// multiple select) keeps every value, in order, as an array, as a JSON body would send it.
fn fields_of(pairs: Vec<(String, String)>) -> Map<String, Value> {
    let mut fields = Map::new();
    for (name, value) in pairs {
        match fields.get_mut(&name) {
            None => {
                fields.insert(name, Value::String(value));
            }
            Some(Value::Array(values)) => values.push(Value::String(value)),
            Some(first) => *first = Value::Array(vec![first.take(), Value::String(value)]),
        }
    }
    fields
}

fn check_limits(fields: &Map<String, Value>, settings: &crate::Settings) -> ApiResult<()> {
    if fields.len() > settings.max_fields {
        return Err(ApiError::bad_request(
            "too_many_fields",
            format!("a submission may carry at most {} fields, this one has {}", settings.max_fields, fields.len()),
        ));
    }
    for (name, value) in fields {
        if name.is_empty() || name.len() > 256 {
            return Err(ApiError::bad_request("invalid_field_name", "field names must be 1 to 256 bytes long"));
        }
        let length = match value {
            Value::String(text) => text.len(),
            Value::Array(_) | Value::Object(_) => value.to_string().len(),
            _ => 0,
        };
        if length > settings.max_field_bytes {
            return Err(ApiError::bad_request(
                "field_too_long",
                format!("field {name:?} is {length} bytes long; at most {} are accepted", settings.max_field_bytes),
            ));
        }
    }
    Ok(())
}

fn answer_response(answer: &StoredAnswer, replayed: bool) -> Response {
    let status = StatusCode::from_u16(answer.http_status).unwrap_or(StatusCode::OK);
    let mut response =
        (status, [(CONTENT_TYPE, HeaderValue::from_static("application/json"))], answer.body_json.clone())
            .into_response();
    if replayed {
        response.headers_mut().insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    response
}

/// Submit a lead: JSON, form-encoded, or a query string.
#[utoipa::path(
    method(get, post),
    path = "/api/v1/sources/{source_id}/submit",
    tag = "intake",
    params(
        ("source_id" = String, Path, description = "The source's id"),
        ("Idempotency-Key" = Option<String>, Header, description = "The same key answers the first answer again and creates nothing"),
        ("X-Source-Key" = Option<String>, Header, description = "The source's key, when it has one (or the `key` parameter)"),
    ),
    request_body(content = Object, description = "The lead's fields", content_type = "application/json"),
    responses(
        (status = 201, description = "Accepted and stored", body = crate::openapi::SubmitAnswerDoc),
        (status = 200, description = "Stored but rejected; `reason` says why", body = crate::openapi::SubmitAnswerDoc),
        (status = 400, description = "Unparseable body or a field over the limits", body = crate::openapi::ErrorBody),
        (status = 401, description = "Wrong or missing source key", body = crate::openapi::ErrorBody),
        (status = 404, description = "Unknown source", body = crate::openapi::ErrorBody),
        (status = 413, description = "Body too large", body = crate::openapi::ErrorBody),
        (status = 415, description = "Unsupported content type", body = crate::openapi::ErrorBody),
        (status = 503, description = "Could not be stored; nothing was written", body = crate::openapi::ErrorBody),
    ),
    security(())
)]
pub(crate) async fn submit(
    State(state): State<Arc<AppState>>,
    Path(source_id): Path<String>,
    request: Request,
) -> ApiResult<Response> {
    let received_at = now_millis();
    let arrived = tokio::time::Instant::now();
    // The body is read before anything is answered, a 404 included: a client that sent one
    // keeps its connection for the next request.
    let (parts, body) = request.into_parts();
    let limit = state.settings.max_body_bytes;
    let declared =
        parts.headers.get(axum::http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    if declared.is_some_and(|length| length > limit) {
        return Err(ApiError::PayloadTooLarge { limit });
    }
    let body = axum::body::to_bytes(Body::new(body), limit).await.map_err(|error| {
        let inner = error.into_inner();
        if inner.downcast_ref::<http_body_util::LengthLimitError>().is_some() {
            ApiError::PayloadTooLarge { limit }
        } else if is_body_timeout(inner.as_ref()) {
            ApiError::RequestTimeout { seconds: state.settings.body_timeout.as_secs().max(1) }
        } else {
            ApiError::bad_request("invalid_body", format!("could not read the body: {inner}"))
        }
    })?;

    let mut config = state.config();
    if !config.sources.contains_key(&source_id) {
        // Created a moment ago by another process or node, perhaps: look in the store.
        config = state.config_since(arrived).await?;
    }
    let Some(source) = config.sources.get(&source_id) else {
        return Err(ApiError::not_found("source_not_found", format!("no source {source_id:?}")));
    };
    let Some(flow) = config.flows.get(&source.flow_id) else {
        return Err(ApiError::not_found("source_not_found", format!("source {source_id:?} has no flow")));
    };

    let mut fields = parse_query(parts.uri.query())?;
    let from_body = match multipart_boundary(&parts.headers) {
        Some(boundary) => multipart_fields(boundary?, body).await?,
        None => parse_body(&parts.headers, &body)?,
    };
    for (name, value) in from_body {
        fields.insert(name, value);
    }

    if let Some(expected) = &source.key {
        let header_key = parts.headers.get("x-source-key").and_then(|value| value.to_str().ok()).map(str::to_owned);
        let given = header_key.or_else(|| fields.get("key").and_then(Value::as_str).map(str::to_owned));
        let matches = given.is_some_and(|given| bool::from(given.as_bytes().ct_eq(expected.as_bytes())));
        if !matches && !submits_with_token(&state, &parts.headers).await? {
            return Err(ApiError::Unauthorized(
                "wrong or missing source key: send it as X-Source-Key or the key parameter, or send a source \
                 token as Authorization: Bearer",
            ));
        }
        fields.shift_remove("key");
    }
    check_limits(&fields, &state.settings)?;

    let idempotency_key = match parts.headers.get("idempotency-key") {
        None => None,
        Some(value) => {
            let key = value.to_str().ok().map(str::trim).filter(|key| !key.is_empty() && key.len() <= 255).ok_or_else(
                || {
                    ApiError::bad_request(
                        "invalid_idempotency_key",
                        "Idempotency-Key must be 1 to 255 visible ASCII characters",
                    )
                },
            )?;
            Some(key.to_owned())
        }
    };
    if let Some(key) = &idempotency_key {
        if let Some(answer) = state.store.idempotent_answer(&source.id, key).await? {
            let answer = state.realtime_waits.replay(&source.id, key, answer).await;
            return Ok(answer_response(&answer, true));
        }
    }

    let destinations = flow.destinations.iter().filter_map(|id| config.destinations.get(id)).collect();
    let intake = Intake { flow, source, destinations, rules: &config.rules };
    let mut prepared = prepare(&intake, fields, received_at);
    // The commit re-checks duplicates atomically, so asking first only pays when it saves
    // work that a duplicate would waste: the flow's enhancement calls.
    let mut duplicate = match &prepared.duplicate_query {
        Some(query) if !flow.enhancements.is_empty() => state.store.find_duplicate(query).await?,
        _ => None,
    };
    if prepared.needs_enhancements(flow, duplicate.as_ref()) {
        let mut snapshot = Map::new();
        leadrelay_domain::lead::place_fields(&mut snapshot, prepared.fields.clone());
        let values = leadrelay_delivery::request::lead_fields(&Value::Object(snapshot));
        prepared.enhancements = state.delivery.enhance(&flow.enhancements, prepared.lead_id.as_str(), &values).await;
    }
    for _ in 0..MAX_DECISIONS {
        let decision = decide(&intake, &prepared, duplicate.as_ref(), now_millis());
        let http_status = match decision.answer.outcome {
            Outcome::Success => StatusCode::CREATED,
            _ => StatusCode::OK,
        };
        let answer = StoredAnswer {
            http_status: http_status.as_u16(),
            body_json: serde_json::to_string(&decision.answer)
                .map_err(|error| ApiError::Internal(error.to_string()))?,
        };
        let idempotency = idempotency_key.as_ref().map(|key| IdempotencyRecord {
            source_id: source.id.clone(),
            key: key.clone(),
            answer: answer.clone(),
        });
        let queued = decision.transfers.iter().any(|transfer| transfer.queued && !transfer.realtime);
        let realtime: Vec<String> =
            decision.transfers.iter().filter(|t| t.realtime).map(|t| t.id.as_str().to_owned()).collect();
        let mut answer_now = decision.answer.clone();
        let mut submission = Submission::from_decision(decision, idempotency);
        if !realtime.is_empty() {
            let lease = intake
                .destinations
                .iter()
                .filter(|destination| destination.mode == DeliveryMode::Realtime)
                .map(|destination| leadrelay_delivery::lease_ms(destination))
                .max()
                .unwrap_or(0);
            submission.realtime_lease =
                Some(Lease { owner: state.delivery.realtime_owner(), until: now_millis() + lease });
        }
        // Announced before the commit, so that a retry that finds the committed answer waits
        // for the outcomes; withdrawn unless this submission goes on to wait for them.
        let final_answer = match (&idempotency_key, realtime.is_empty()) {
            (Some(key), false) => RealtimeWaits::begin(&state, &source.id, key),
            _ => None,
        };
        let committed = state.store.commit_submission(submission).await;
        let final_answer = final_answer.filter(|_| matches!(committed, Ok(CommitOutcome::Committed)));
        match committed? {
            CommitOutcome::Committed if realtime.is_empty() => {
                if queued {
                    state.delivery.wake();
                }
                return Ok(answer_response(&answer, false));
            }
            CommitOutcome::Committed => {
                if queued {
                    state.delivery.wake();
                }
                // In a task of its own: a submitter that hangs up must not cancel the recording
                // of a delivery already made, nor of the answer the idempotency key keeps.
                let (store, delivery, live) = (state.store.clone(), state.delivery.clone(), config.clone());
                let (source_id, key) = (source.id.clone(), idempotency_key.clone());
                let answer_before_calls = answer.clone();
                let task = tokio::spawn(async move {
                    let mut deliveries = delivery.deliver_realtime(&live, &realtime).await;
                    deliveries.append(&mut answer_now.deliveries);
                    answer_now.deliveries = deliveries;
                    let body =
                        serde_json::to_string(&answer_now).map_err(|error| ApiError::Internal(error.to_string()))?;
                    let answer = StoredAnswer { http_status: answer.http_status, body_json: body };
                    if let Some(key) = key {
                        // The key answers this again, with the outcomes, not the answer of the
                        // commit before the calls.
                        if let Err(error) = store.replace_idempotent_answer(&source_id, &key, answer.clone()).await {
                            tracing::warn!(%error, "keeping the realtime answer for the idempotency key failed");
                        }
                        if let Some(final_answer) = final_answer {
                            final_answer.answer(answer.clone());
                        }
                    }
                    Ok::<_, ApiError>(answer)
                });
                // The lead is committed whatever happened to the calls: a task that failed
                // answers what was committed (the dispatcher delivers what is left).
                return Ok(match task.await {
                    Ok(Ok(delivered)) => answer_response(&delivered, false),
                    Ok(Err(error)) => {
                        tracing::error!(%error, "the realtime answer could not be written; answering the committed one");
                        answer_response(&answer_before_calls, false)
                    }
                    Err(error) => {
                        tracing::error!(%error, "realtime deliveries failed; they continue in the background");
                        answer_response(&answer_before_calls, false)
                    }
                });
            }
            CommitOutcome::Replay(stored) => {
                let stored = match &idempotency_key {
                    Some(key) => state.realtime_waits.replay(&source.id, key, stored).await,
                    None => stored,
                };
                return Ok(answer_response(&stored, true));
            }
            CommitOutcome::DuplicateChanged(actual) => duplicate = actual,
        }
    }
    Err(ApiError::Unavailable("the duplicate check did not settle under concurrent submissions".to_owned()))
}
