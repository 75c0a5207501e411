//! One delivery attempt over HTTP: build the request, sign it, send it through the guarded
//! client within the destination's timeout, read a bounded answer, and judge it. The request
//! sent and the response received are recorded (bodies capped at [`RECORDED_BODY_BYTES`],
//! secrets masked) for the attempt's event.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderMap, ACCEPT, HOST, RETRY_AFTER};
use hyper::Request;
use leadrelay_domain::config::{Destination, DestinationKind, HttpMethod};
use leadrelay_domain::time::{format_millis, Millis};
use serde_json::{json, Map, Value};

use crate::guard::{check_url, EgressPolicy, GuardedResolver, Lookup, Refusal, SystemLookup};
use crate::judge::{capture, judge, parse_retry_after, revenue, Verdict};
use crate::pool::{ConnectionPool, Origin, OutboundBody, TransportError};
use crate::request::{build_request, redacted_url, secret_headers, DeliveryContext, OutboundRequest};
use crate::signing;

/// How much of a request or response body an attempt's event keeps.
pub const RECORDED_BODY_BYTES: usize = 16 * 1024;

/// How much of a response's headers an attempt's event keeps, names and values together; the
/// headers past it are left out and the response says so.
pub const RECORDED_HEADER_BYTES: usize = 16 * 1024;

/// How much of a response is read to judge it; the rest is not read.
pub const READ_BODY_BYTES: usize = 1024 * 1024;

/// What one attempt produced.
#[derive(Clone, Debug)]
pub struct AttemptReport {
    pub started_at: Millis,
    pub duration_ms: i64,
    pub verdict: AttemptVerdict,
    pub response_code: Option<u16>,
    /// The request as sent (headers with secrets masked, body capped); `Null` when none could
    /// be built.
    pub request: Value,
    pub response: Value,
    pub captured: Map<String, Value>,
    pub price: Option<f64>,
}

/// The verdict of an attempt, with the cases that never reach the destination.
#[derive(Clone, Debug, PartialEq)]
pub enum AttemptVerdict {
    Judged(Verdict),
    /// The call cannot be made as configured (the guard refused the address, the template
    /// failed): retrying would not help, a person has to act.
    Blocked {
        reason: String,
    },
}

/// The HTTP clients of outbound calls: the guarded pool of direct connections, and a client
/// per outbound proxy.
pub struct HttpClients {
    policy: Arc<EgressPolicy>,
    resolver: Arc<GuardedResolver>,
    direct: ConnectionPool,
    proxied: Mutex<HashMap<String, reqwest::Client>>,
}

impl HttpClients {
    pub fn new(policy: EgressPolicy) -> Self {
        Self::with_lookup(policy, Arc::new(SystemLookup))
    }

    /// Clients that resolve names through `lookup` (tests give a table).
    pub fn with_lookup(policy: EgressPolicy, lookup: Arc<dyn Lookup>) -> Self {
        let policy = Arc::new(policy);
        let resolver = Arc::new(GuardedResolver::new(policy.clone(), lookup));
        let direct = ConnectionPool::new(resolver.clone());
        Self { policy, resolver, direct, proxied: Mutex::new(HashMap::new()) }
    }

    pub fn policy(&self) -> &EgressPolicy {
        &self.policy
    }

    /// The client of an outbound proxy. Redirects are not followed: a redirect could lead
    /// anywhere the guard would refuse, so destinations get no second hop (nor do direct calls).
    fn proxied(&self, proxy: &str) -> Result<reqwest::Client, String> {
        let mut clients = self.proxied.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(client) = clients.get(proxy) {
            return Ok(client.clone());
        }
        let proxy_setting = reqwest::Proxy::all(proxy).map_err(|error| format!("invalid proxy {proxy:?}: {error}"))?;
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .proxy(proxy_setting)
            .dns_resolver(self.resolver.clone())
            .pool_max_idle_per_host(64)
            .build()
            .map_err(|error| format!("proxy client: {error}"))?;
        clients.insert(proxy.to_owned(), client.clone());
        Ok(client)
    }

    /// Checks a destination host before a proxied call: the proxy resolves the name itself,
    /// so the guard resolves it here first.
    async fn check_proxied_target(&self, url: &url::Url) -> Result<(), Refusal> {
        check_url(&self.policy, url)?;
        if let Some(url::Host::Domain(host)) = url.host() {
            self.resolver.resolve_checked(host).await?;
        }
        Ok(())
    }
}

fn method_of(method: HttpMethod) -> hyper::Method {
    match method {
        HttpMethod::GET => hyper::Method::GET,
        HttpMethod::POST => hyper::Method::POST,
        HttpMethod::PUT => hyper::Method::PUT,
        HttpMethod::PATCH => hyper::Method::PATCH,
    }
}

fn method_name(method: HttpMethod) -> &'static str {
    match method {
        HttpMethod::GET => "GET",
        HttpMethod::POST => "POST",
        HttpMethod::PUT => "PUT",
        HttpMethod::PATCH => "PATCH",
    }
}

/// A body as recorded: UTF-8 text (lossy), cut at a character boundary within `limit` bytes.
fn recorded_body(body: &[u8], limit: usize) -> (String, bool) {
    let text = String::from_utf8_lossy(body);
    if text.len() <= limit {
        return (text.into_owned(), false);
    }
    let mut end = limit;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    (text[..end].to_owned(), true)
}

fn recorded_request(request: &OutboundRequest, secrets: &[String]) -> Value {
    let headers: Map<String, Value> = request
        .headers
        .iter()
        .map(|(name, value)| {
            let shown = if secrets.contains(&name.to_ascii_lowercase()) { "***" } else { value.as_str() };
            (name.clone(), Value::String(shown.to_owned()))
        })
        .collect();
    let (body, truncated) = recorded_body(&request.body, RECORDED_BODY_BYTES);
    json!({
        "method": method_name(request.method),
        "url": redacted_url(&request.url),
        "headers": headers,
        "body": body,
        "body_truncated": truncated,
    })
}

/// The first error in a chain that is the guard's refusal.
fn refusal_in(error: &(dyn std::error::Error + 'static)) -> Option<Refusal> {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(error) = current {
        if let Some(refusal) = error.downcast_ref::<Refusal>() {
            return Some(refusal.clone());
        }
        if let Some(boxed) = error.downcast_ref::<Box<Refusal>>() {
            return Some((**boxed).clone());
        }
        current = error.source();
    }
    None
}

/// Why a call failed, from its error chain: the guard's refusal, or a transport failure in
/// words an operator understands (`connecting`: it failed before a connection was made).
fn failure_in(error: &(dyn std::error::Error + 'static), connecting: bool) -> SendFailure {
    match refusal_in(error) {
        Some(refusal) => refused(refusal),
        None => SendFailure::Failed(describe_transport(error, connecting)),
    }
}

fn refused(refusal: Refusal) -> SendFailure {
    match refusal {
        // A name that does not resolve may resolve later: retried like any network error.
        Refusal::Unresolved { .. } => SendFailure::Failed(refusal.to_string()),
        _ => SendFailure::Blocked(refusal.to_string()),
    }
}

fn describe_transport(error: &(dyn std::error::Error + 'static), connecting: bool) -> String {
    let mut text = String::new();
    let mut current = Some(error);
    while let Some(inner) = current {
        if let Some(io) = inner.downcast_ref::<std::io::Error>() {
            return match io.kind() {
                std::io::ErrorKind::ConnectionRefused => "connection refused".to_owned(),
                std::io::ErrorKind::ConnectionReset => "connection reset by the destination".to_owned(),
                _ => format!("network error: {io}"),
            };
        }
        text = inner.to_string();
        current = inner.source();
    }
    if connecting {
        format!("could not connect: {text}")
    } else {
        format!("request failed: {text}")
    }
}

/// Signing secrets in force for a destination at `now`, as keys: its secret, and the ones it
/// replaced whose overlap still runs.
pub fn signing_keys(destination: &Destination, now: Millis) -> Vec<Vec<u8>> {
    let previous = destination.previous_signing_secrets.iter().flatten().filter(|previous| previous.in_force(now));
    destination
        .signing_secret
        .iter()
        .chain(previous.map(|previous| &previous.secret))
        .filter_map(|secret| signing::secret_key(secret).ok())
        .collect()
}

/// A response's headers as its event keeps them: up to [`RECORDED_HEADER_BYTES`], and
/// whether some were left out. A header that came several times keeps its values in order,
/// joined by `, ` (as HTTP combines them).
fn recorded_headers(headers: &HeaderMap) -> (Map<String, Value>, bool) {
    let mut kept = Map::new();
    let mut room = RECORDED_HEADER_BYTES;
    let mut truncated = false;
    for (name, value) in headers {
        let Ok(value) = value.to_str() else { continue };
        let size = name.as_str().len() + value.len();
        if size > room {
            truncated = true;
            continue;
        }
        room -= size;
        match kept.get_mut(name.as_str()) {
            Some(Value::String(earlier)) => {
                earlier.push_str(", ");
                earlier.push_str(value);
            }
            _ => {
                kept.insert(name.to_string(), Value::String(value.to_owned()));
            }
        }
    }
    (kept, truncated)
}

/// Why a TLS handshake failed, in words an operator understands.
fn tls_reason(error: &rustls::Error) -> String {
    use rustls::CertificateError as Problem;
    let rustls::Error::InvalidCertificate(problem) = error else { return format!("TLS handshake failed: {error}") };
    let what = match problem {
        Problem::UnknownIssuer => {
            "is not signed by an authority in Mozilla's list (self-signed, or a private CA)".to_owned()
        }
        Problem::Expired | Problem::ExpiredContext { .. } => "has expired".to_owned(),
        Problem::NotValidYet | Problem::NotValidYetContext { .. } => "is not valid yet".to_owned(),
        Problem::NotValidForName | Problem::NotValidForNameContext { .. } => {
            "is not valid for this host name".to_owned()
        }
        Problem::Revoked => "was revoked".to_owned(),
        Problem::BadSignature => "has a bad signature".to_owned(),
        Problem::InvalidPurpose | Problem::InvalidPurposeContext { .. } => "is not meant for a server".to_owned(),
        // The verifier names the rest in CamelCase (`CaUsedAsEndEntity`): told as words.
        Problem::Other(other) => format!("was refused: {}", words_of(&other.to_string())),
        other => format!("was refused: {}", words_of(&format!("{other:?}"))),
    };
    format!("TLS handshake failed: the destination's certificate {what}")
}

/// `CaUsedAsEndEntity` → `ca used as end entity`.
fn words_of(camel: &str) -> String {
    let mut words = String::with_capacity(camel.len() + 8);
    for (index, character) in camel.chars().enumerate() {
        if character.is_uppercase() && index > 0 {
            words.push(' ');
        }
        words.extend(character.to_lowercase());
    }
    words
}

/// What came back from a call: status, headers, and the body (at most [`READ_BODY_BYTES`]).
pub struct Answer {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
    /// False when the body was longer than what was read.
    pub complete: bool,
}

/// Why a call brought no answer.
#[derive(Clone, Debug, PartialEq)]
pub enum SendFailure {
    /// The guard (or the configuration) does not allow the call: a person has to act.
    Blocked(String),
    /// A technical failure (timeout, connection, a name that does not resolve now).
    Failed(String),
}

/// Sends a request through the guarded client (through `proxy` when given) within `timeout`,
/// for the whole exchange, body included.
pub async fn send(
    clients: &HttpClients,
    proxy: Option<&str>,
    request: &OutboundRequest,
    timeout: Duration,
) -> Result<Answer, SendFailure> {
    check_url(clients.policy(), &request.url).map_err(|refusal| SendFailure::Blocked(refusal.to_string()))?;
    let exchange = match proxy {
        None => {
            let origin = Origin::of(&request.url).map_err(|refusal| SendFailure::Blocked(refusal.to_string()))?;
            let outbound = direct_request(request).map_err(SendFailure::Blocked)?;
            futures::future::Either::Left(send_direct(&clients.direct, origin, outbound))
        }
        Some(proxy) => {
            let client = clients.proxied(proxy).map_err(SendFailure::Blocked)?;
            // The proxy is reached like any destination: the HTTP client connects to an
            // address literal without asking the resolver, so the guard checks it here.
            let proxy_url =
                url::Url::parse(proxy).map_err(|error| SendFailure::Blocked(format!("invalid proxy: {error}")))?;
            check_url(clients.policy(), &proxy_url)
                .map_err(|refusal| SendFailure::Blocked(format!("proxy refused: {refusal}")))?;
            clients
                .check_proxied_target(&request.url)
                .await
                .map_err(|refusal| SendFailure::Blocked(refusal.to_string()))?;
            futures::future::Either::Right(send_proxied(client, request))
        }
    };
    match tokio::time::timeout(timeout, exchange).await {
        Err(_) => Err(SendFailure::Failed(format!("timed out after {} ms", timeout.as_millis()))),
        Ok(result) => result,
    }
}

/// The request as it goes on a direct connection: the target in origin form, and `Host` and
/// `Accept: */*` unless the destination sets them.
fn direct_request(request: &OutboundRequest) -> Result<Request<OutboundBody>, String> {
    let url = &request.url;
    let target = &url[url::Position::BeforePath..url::Position::AfterQuery];
    let mut builder = Request::builder().method(method_of(request.method)).uri(target);
    let (mut has_host, mut has_accept) = (false, false);
    for (name, value) in &request.headers {
        has_host |= name.eq_ignore_ascii_case(HOST.as_str());
        has_accept |= name.eq_ignore_ascii_case(ACCEPT.as_str());
        builder = builder.header(name.as_str(), value.as_str());
    }
    if !has_host {
        let host = url.host_str().unwrap_or_default();
        builder = builder.header(
            HOST,
            match url.port() {
                Some(port) => format!("{host}:{port}"),
                None => host.to_owned(),
            },
        );
    }
    if !has_accept {
        builder = builder.header(ACCEPT, "*/*");
    }
    builder
        .body(Full::new(Bytes::from(request.body.clone())))
        .map_err(|error| format!("the request cannot be sent as configured: {error}"))
}

/// Adds a chunk of an answer's body; false once it has more than [`READ_BODY_BYTES`], which
/// are kept (the rest is not read). A body of exactly that size is read whole.
fn keep_reading(body: &mut Vec<u8>, chunk: &[u8]) -> bool {
    body.extend_from_slice(chunk);
    if body.len() <= READ_BODY_BYTES {
        return true;
    }
    body.truncate(READ_BODY_BYTES);
    false
}

/// One exchange on a pooled connection; the connection goes back once the answer was read
/// to the end.
async fn send_direct(
    pool: &ConnectionPool,
    origin: Origin,
    request: Request<OutboundBody>,
) -> Result<Answer, SendFailure> {
    let (response, connection) = pool.send(&origin, request).await.map_err(|error| match error {
        TransportError::Refused(refusal) => refused(refusal),
        // A name no certificate can be checked against: a person has to change the URL.
        error @ TransportError::ServerName(_) => SendFailure::Blocked(error.to_string()),
        // The TLS protocol failed (a certificate no trusted root vouches for, say); a socket
        // error during the handshake is told like any other.
        TransportError::Tls(error) => match error.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
            Some(tls) => SendFailure::Failed(tls_reason(tls)),
            None => failure_in(&error, true),
        },
        TransportError::Connect(error) => failure_in(&error, true),
        TransportError::Http(error) if error.is_parse_too_large() => SendFailure::Failed(format!(
            "the answer's head is too large to read (more than {} header lines, or about 400 KB)",
            crate::pool::MAX_RESPONSE_HEADERS
        )),
        TransportError::Http(error) => failure_in(&error, false),
    })?;
    let (parts, mut incoming) = response.into_parts();
    let mut body = Vec::new();
    let mut complete = true;
    while let Some(frame) = incoming.frame().await {
        let frame = frame.map_err(|error| failure_in(&error, false))?;
        let Ok(data) = frame.into_data() else { continue };
        if !keep_reading(&mut body, &data) {
            complete = false;
            break;
        }
    }
    if complete {
        pool.release(connection);
    }
    Ok(Answer { status: parts.status.as_u16(), headers: parts.headers, body, complete })
}

/// One exchange through an outbound proxy.
async fn send_proxied(client: reqwest::Client, request: &OutboundRequest) -> Result<Answer, SendFailure> {
    let mut builder = client.request(method_of(request.method), request.url.clone());
    for (name, value) in &request.headers {
        builder = builder.header(name.as_str(), value.as_str());
    }
    if !request.body.is_empty() || request.method != HttpMethod::GET {
        builder = builder.body(request.body.clone());
    }
    let exchange = async {
        let mut response = builder.send().await?;
        let status = response.status().as_u16();
        let headers = std::mem::take(response.headers_mut());
        let mut body = Vec::new();
        let mut complete = true;
        while let Some(chunk) = response.chunk().await? {
            if !keep_reading(&mut body, &chunk) {
                complete = false;
                break;
            }
        }
        Ok::<_, reqwest::Error>(Answer { status, headers, body, complete })
    };
    exchange.await.map_err(|error| failure_in(&error, error.is_connect()))
}

/// The inputs of one attempt.
pub struct AttemptInput<'a> {
    pub destination: &'a Destination,
    /// The lead as the request is built from it; dropped once the request is built, so that
    /// thousands of slow calls in flight hold only their requests.
    pub snapshot: Value,
    pub transfer_id: &'a str,
    pub webhook_id: &'a str,
    pub attempt: u32,
    pub now: Millis,
}

/// Makes one attempt and judges it; never fails, every problem is a verdict.
pub async fn attempt(clients: &HttpClients, input: AttemptInput<'_>) -> AttemptReport {
    let started = Instant::now();
    let destination = input.destination;
    let blocked = |reason: String, request: Value| AttemptReport {
        started_at: input.now,
        duration_ms: 0,
        verdict: AttemptVerdict::Blocked { reason },
        response_code: None,
        request,
        response: Value::Null,
        captured: Map::new(),
        price: None,
    };
    // Only the request is kept while the call is in flight: with thousands of slow calls at
    // once, whatever else lived across the await (the snapshot, the signing keys, the
    // recorded copy) would be memory held for nothing.
    let request = {
        let timestamp = format_millis(input.now);
        let context = DeliveryContext {
            transfer_id: input.transfer_id,
            webhook_id: input.webhook_id,
            attempt: input.attempt,
            timestamp: &timestamp,
        };
        let built = build_request(destination, &input.snapshot, &context);
        drop(input.snapshot);
        let mut request = match built {
            Ok(request) => request,
            Err(error) => return blocked(error.to_string(), Value::Null),
        };
        // Webhooks are signed; GA4 is Google's protocol, authenticated by its api_secret.
        let keys = if destination.kind == DestinationKind::Webhook {
            signing_keys(destination, input.now)
        } else {
            Vec::new()
        };
        if !keys.is_empty() {
            let seconds = input.now.div_euclid(1000);
            request.headers.extend(signing::headers(&keys, input.webhook_id, seconds, &request.body));
        }
        request
    };
    let timeout = Duration::from_millis(destination.timeout_ms.max(1));
    let answer = send(clients, destination.proxy.as_deref(), &request, timeout).await;
    let recorded = recorded_request(&request, &secret_headers(destination));
    drop(request);
    let duration_ms = i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX);
    let Answer { status, headers, body, complete } = match answer {
        Ok(answer) => answer,
        Err(SendFailure::Blocked(reason)) => return AttemptReport { duration_ms, ..blocked(reason, recorded) },
        Err(SendFailure::Failed(reason)) => {
            return AttemptReport {
                started_at: input.now,
                duration_ms,
                verdict: AttemptVerdict::Judged(Verdict::Failed { reason, retry_after: None }),
                response_code: None,
                request: recorded,
                response: Value::Null,
                captured: Map::new(),
                price: None,
            }
        }
    };
    let text = String::from_utf8_lossy(&body);
    let retry_after = headers
        .get(RETRY_AFTER)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| parse_retry_after(value, input.now.div_euclid(1000)));
    let mut verdict = judge(destination, status, retry_after, &text);
    if let Verdict::Refused { reason } = &mut verdict {
        let body_checked = destination.success.body_contains.is_some()
            || destination.success.body_regex.is_some()
            || destination.success.json_path.is_some();
        let (low, high) =
            leadrelay_domain::config::parse_status_range(&destination.success.status).unwrap_or((200, 399));
        if !complete && body_checked && (low..=high).contains(&status) {
            reason.push_str(&format!(
                " (the answer was longer than {} MiB; only that much was checked)",
                READ_BODY_BYTES >> 20
            ));
        }
    }
    let captured = if verdict == Verdict::Delivered { capture(destination, &text) } else { Map::new() };
    let price = (verdict == Verdict::Delivered).then(|| revenue(destination, &captured)).flatten();
    let (response_headers, headers_truncated) = recorded_headers(&headers);
    let (recorded_text, truncated) = recorded_body(&body, RECORDED_BODY_BYTES);
    AttemptReport {
        started_at: input.now,
        duration_ms,
        verdict: AttemptVerdict::Judged(verdict),
        response_code: Some(status),
        request: recorded,
        response: json!({
            "status": status,
            "headers": response_headers,
            "body": recorded_text,
            "body_truncated": truncated || !complete,
            "headers_truncated": headers_truncated,
        }),
        captured,
        price,
    }
}

#[cfg(test)]
mod tests {
    use hyper::header::HeaderValue;

    use super::*;

    #[test]
    fn recorded_headers_stop_at_their_cap_and_say_so() {
        let mut headers = HeaderMap::new();
        headers.insert("x-small", HeaderValue::from_static("kept"));
        headers.insert("x-huge", HeaderValue::from_str(&"a".repeat(RECORDED_HEADER_BYTES)).unwrap());
        let (kept, truncated) = recorded_headers(&headers);
        assert_eq!(kept.get("x-small"), Some(&Value::from("kept")));
        assert!(kept.get("x-huge").is_none() && truncated);
        headers.remove("x-huge");
        assert!(!recorded_headers(&headers).1);
        headers.append("set-cookie", HeaderValue::from_static("a=1"));
        headers.append("set-cookie", HeaderValue::from_static("b=2"));
        assert_eq!(recorded_headers(&headers).0.get("set-cookie"), Some(&Value::from("a=1, b=2")));
    }

    #[test]
    fn a_body_is_cut_only_past_its_cap() {
        let mut body = Vec::new();
        assert!(keep_reading(&mut body, &vec![b'a'; READ_BODY_BYTES - 1]));
        assert!(keep_reading(&mut body, b"b"), "a body of exactly the cap is whole");
        assert!(!keep_reading(&mut body, b"c"));
        assert_eq!(body.len(), READ_BODY_BYTES);
        assert_eq!(body.last(), Some(&b'b'));
    }

    #[test]
    fn certificate_problems_are_told_in_words() {
        let unknown = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        assert!(
            tls_reason(&unknown).contains("not signed by an authority in Mozilla's list"),
            "{}",
            tls_reason(&unknown)
        );
        assert_eq!(words_of("CaUsedAsEndEntity"), "ca used as end entity");
    }
}
