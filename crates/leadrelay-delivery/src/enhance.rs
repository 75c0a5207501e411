//! Enhancements: a flow step that calls a service (phone check, geo lookup, …) with the
//! lead's fields and appends its JSON answer under `appended.<name>`. Every call goes through
//! the guarded client; whatever happens, the lead goes on.

use std::time::{Duration, Instant};

use leadrelay_domain::config::{Enhancement, HttpMethod};
use leadrelay_domain::pipeline::{EnhancementOutcome, EnhancementResult};
use serde_json::{json, Map, Value};

use crate::attempt::{send, Answer, HttpClients, SendFailure, RECORDED_BODY_BYTES};
use crate::request::{form_pairs, redacted_url, take_url_credentials, OutboundRequest};

/// The request an enhancement receives: the lead's id and field values, as JSON (or in the
/// query string for `GET`).
pub fn enhancement_request(
    enhancement: &Enhancement,
    lead_id: &str,
    fields: &Map<String, Value>,
) -> Result<OutboundRequest, String> {
    let mut url = url::Url::parse(&enhancement.url).map_err(|error| format!("invalid URL: {error}"))?;
    let mut headers: Vec<(String, String)> = Vec::new();
    let mut body = Vec::new();
    if enhancement.method == HttpMethod::GET {
        let mut pairs = url.query_pairs_mut();
        pairs.append_pair("lead_id", lead_id);
        for (name, value) in form_pairs(fields) {
            pairs.append_pair(&name, &value);
        }
    } else {
        let mut document = Map::new();
        document.insert("lead_id".to_owned(), Value::String(lead_id.to_owned()));
        document.extend(fields.clone());
        body = Value::Object(document).to_string().into_bytes();
        headers.push(("Content-Type".to_owned(), "application/json".to_owned()));
    }
    headers.push(("Accept".to_owned(), "application/json".to_owned()));
    // Credentials written in the URL go as the header they stand for, unless one is configured.
    let configured_authorization = enhancement.headers.keys().any(|name| name.eq_ignore_ascii_case("authorization"));
    if let Some(authorization) = take_url_credentials(&mut url).filter(|_| !configured_authorization) {
        headers.push(("Authorization".to_owned(), authorization));
    }
    headers.extend(enhancement.headers.iter().map(|(name, value)| (name.clone(), value.clone())));
    headers.push(("User-Agent".to_owned(), concat!("leadrelay/", env!("CARGO_PKG_VERSION")).to_owned()));
    Ok(OutboundRequest { method: enhancement.method, url, headers, body })
}

fn cut(text: &str) -> &str {
    let mut end = text.len().min(RECORDED_BODY_BYTES);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// What an answer means: data to append, no data, or a broken call.
fn interpret(answer: &Answer) -> EnhancementResult {
    let text = String::from_utf8_lossy(&answer.body);
    match answer.status {
        204 | 404 => return EnhancementResult::Failure(format!("HTTP {}: no data for this lead", answer.status)),
        200..=299 => {}
        status => return EnhancementResult::Error(format!("HTTP {status} from the enhancement")),
    }
    if text.trim().is_empty() {
        return EnhancementResult::Failure("empty answer: no data for this lead".to_owned());
    }
    if !answer.complete {
        return EnhancementResult::Error("answer too large".to_owned());
    }
    match serde_json::from_str::<Value>(&text) {
        Ok(Value::Object(data)) if data.is_empty() => {
            EnhancementResult::Failure("empty object: no data for this lead".to_owned())
        }
        Ok(Value::Object(data)) => EnhancementResult::Success(data),
        Ok(Value::Null) => EnhancementResult::Failure("null: no data for this lead".to_owned()),
        Ok(_) => EnhancementResult::Error("the answer is JSON but not an object".to_owned()),
        Err(error) => EnhancementResult::Error(format!("the answer is not JSON: {error}")),
    }
}

/// Calls one enhancement for a lead; never fails, every problem is an outcome.
pub async fn call_enhancement(
    clients: &HttpClients,
    enhancement: &Enhancement,
    lead_id: &str,
    fields: &Map<String, Value>,
) -> EnhancementOutcome {
    let started = Instant::now();
    let outcome = |result: EnhancementResult, exchange: Value| EnhancementOutcome {
        name: enhancement.name.clone(),
        result,
        duration_ms: i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX),
        exchange,
    };
    let request = match enhancement_request(enhancement, lead_id, fields) {
        Ok(request) => request,
        Err(reason) => return outcome(EnhancementResult::Error(reason), Value::Null),
    };
    // Header values are not recorded (they carry API keys); secret query values are masked.
    let recorded_request = json!({"method": format!("{:?}", request.method), "url": redacted_url(&request.url)});
    let timeout = Duration::from_millis(enhancement.timeout_ms.max(1));
    match send(clients, None, &request, timeout).await {
        Ok(answer) => {
            let result = interpret(&answer);
            let text = String::from_utf8_lossy(&answer.body);
            let exchange = json!({
                "request": recorded_request,
                "response": {"status": answer.status, "body": cut(&text)},
            });
            outcome(result, exchange)
        }
        Err(SendFailure::Blocked(reason) | SendFailure::Failed(reason)) => {
            outcome(EnhancementResult::Error(reason), json!({"request": recorded_request}))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, body: &str) -> Answer {
        Answer { status, headers: Default::default(), body: body.as_bytes().to_vec(), complete: true }
    }

    #[test]
    fn credentials_in_an_enhancement_url_go_as_its_authorization_header() {
        let mut enhancement: Enhancement = serde_json::from_value(json!({
            "name": "phone", "url": "https://bob:s%3Acret@lookup.example.com/v1?x=1", "method": "POST"
        }))
        .unwrap();
        let request = enhancement_request(&enhancement, "L1", &Map::new()).unwrap();
        assert_eq!(request.url.as_str(), "https://lookup.example.com/v1?x=1");
        assert_eq!(request.header("authorization"), Some("Basic Ym9iOnM6Y3JldA=="));
        // A configured header wins.
        enhancement.headers.insert("Authorization".into(), "Bearer t".into());
        let request = enhancement_request(&enhancement, "L1", &Map::new()).unwrap();
        let authorizations: Vec<_> =
            request.headers.iter().filter(|(name, _)| name.eq_ignore_ascii_case("authorization")).collect();
        assert_eq!(authorizations, [&("Authorization".to_owned(), "Bearer t".to_owned())]);
    }

    #[test]
    fn answers_mean_data_no_data_or_a_broken_call() {
        let data = interpret(&answer(200, r#"{"carrier":"Verizon","line":"mobile"}"#));
        assert!(matches!(data, EnhancementResult::Success(map) if map["carrier"] == "Verizon"));
        assert!(matches!(interpret(&answer(200, "{}")), EnhancementResult::Failure(_)));
        assert!(matches!(interpret(&answer(204, "")), EnhancementResult::Failure(_)));
        assert!(matches!(interpret(&answer(404, "")), EnhancementResult::Failure(_)));
        assert!(matches!(interpret(&answer(500, "")), EnhancementResult::Error(_)));
        assert!(matches!(interpret(&answer(200, "<html>")), EnhancementResult::Error(_)));
        assert!(matches!(interpret(&answer(200, "[1]")), EnhancementResult::Error(_)));
    }
}
