//! Judging a destination's answer: the success criteria (status range, expected body, JSON
//! path), business refusals against technical failures, `Retry-After`, and the values
//! captured from the response.

use std::time::Duration;

use leadrelay_domain::config::{parse_json_path, parse_status_range, Destination};
use serde_json::{Map, Value};

/// How one attempt ended.
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    /// The destination accepted the lead.
    Delivered,
    /// The destination refused it for a business reason (4xx, expected response not
    /// matched): retrying would not help.
    Refused { reason: String },
    /// A technical failure (timeout, connection error, 5xx, 429): worth retrying, after
    /// `retry_after` when the destination said so.
    Failed { reason: String, retry_after: Option<Duration> },
}

/// The first value a JSON path selects in a document.
pub fn select<'a>(document: &'a Value, path: &str) -> Option<&'a Value> {
    parse_json_path(path).ok()?.query(document).first()
}

/// `Retry-After` as seconds (`120`) or an HTTP date, relative to `now_seconds`.
pub fn parse_retry_after(value: &str, now_seconds: i64) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // More seconds than a u64 holds is "a very long time": the caller's cap applies.
        return Some(Duration::from_secs(value.parse::<u64>().unwrap_or(u64::MAX)));
    }
    // An IMF-fixdate (`Wed, 21 Oct 2015 07:28:00 GMT`) is an RFC 2822 date.
    let date = chrono::DateTime::parse_from_rfc2822(value).ok()?.timestamp();
    Some(Duration::from_secs(u64::try_from(date - now_seconds).unwrap_or(0)))
}

/// Judges a response against the destination's success criteria.
pub fn judge(destination: &Destination, status: u16, retry_after: Option<Duration>, body: &str) -> Verdict {
    let success = &destination.success;
    let (low, high) = parse_status_range(&success.status).unwrap_or((200, 399));
    if status == 429 || status >= 500 {
        return Verdict::Failed { reason: format!("HTTP {status} from destination"), retry_after };
    }
    if !(low..=high).contains(&status) {
        return Verdict::Refused { reason: format!("HTTP {status} is outside the success range {}", success.status) };
    }
    if let Some(expected) = &success.body_contains {
        if !body.contains(expected.as_str()) {
            return Verdict::Refused { reason: format!("response does not contain {expected:?}") };
        }
    }
    if let Some(pattern) = &success.body_regex {
        // Validated with the configuration; a pattern that fails to build now refuses.
        let matched = regex::RegexBuilder::new(pattern).size_limit(1 << 20).build().is_ok_and(|re| re.is_match(body));
        if !matched {
            return Verdict::Refused { reason: format!("response does not match /{pattern}/") };
        }
    }
    if let Some(path) = &success.json_path {
        let Ok(document) = serde_json::from_str::<Value>(body) else {
            return Verdict::Refused { reason: format!("response is not JSON, so {path} cannot be checked") };
        };
        let found = select(&document, path);
        match (&success.json_equals, found) {
            (None, Some(_)) => {}
            (None, None) => return Verdict::Refused { reason: format!("response has no {path}") },
            (Some(expected), Some(actual)) if loosely_equal(expected, actual) => {}
            (Some(expected), actual) => {
                let actual = actual.map(Value::to_string).unwrap_or_else(|| "nothing".to_owned());
                return Verdict::Refused { reason: format!("response {path} is {actual}, expected {expected}") };
            }
        }
    }
    Verdict::Delivered
}

/// `"true"` equals `true` and `"1"` equals `1`: buyers are not consistent about types.
fn loosely_equal(expected: &Value, actual: &Value) -> bool {
    if expected == actual {
        return true;
    }
    let text = |value: &Value| match value {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    };
    !expected.is_object() && !expected.is_array() && text(expected) == text(actual)
}

/// The values named by the destination's `capture` paths, from a JSON response.
pub fn capture(destination: &Destination, body: &str) -> Map<String, Value> {
    let mut captured = Map::new();
    if destination.capture.is_empty() {
        return captured;
    }
    let Ok(document) = serde_json::from_str::<Value>(body) else { return captured };
    for (name, path) in &destination.capture {
        if let Some(value) = select(&document, path) {
            captured.insert(name.clone(), value.clone());
        }
    }
    captured
}

/// The revenue of a delivered lead: a captured `price` when the buyer answered one, else the
/// destination's price.
pub fn revenue(destination: &Destination, captured: &Map<String, Value>) -> Option<f64> {
    let answered = captured.get("price").and_then(|value| match value {
        Value::Number(number) => number.as_f64(),
        Value::String(text) => text.trim().parse::<f64>().ok(),
        _ => None,
    });
    answered.filter(|price| price.is_finite() && *price >= 0.0).or(destination.price)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn destination(success: Value) -> Destination {
        serde_json::from_value(json!({"id": "crm", "url": "http://crm.test", "success": success,
            "capture": {"buyer_id": "$.data.id", "price": "price"}}))
        .unwrap()
    }

    #[test]
    fn statuses_decide_between_delivered_refused_and_failed() {
        let plain = destination(json!({}));
        assert_eq!(judge(&plain, 200, None, ""), Verdict::Delivered);
        assert_eq!(judge(&plain, 302, None, ""), Verdict::Delivered);
        assert!(matches!(judge(&plain, 400, None, ""), Verdict::Refused { .. }));
        assert!(matches!(judge(&plain, 404, None, ""), Verdict::Refused { .. }));
        assert!(matches!(judge(&plain, 500, None, ""), Verdict::Failed { .. }));
        let wait = Some(Duration::from_secs(3));
        assert_eq!(
            judge(&plain, 429, wait, ""),
            Verdict::Failed { reason: "HTTP 429 from destination".into(), retry_after: wait }
        );
        let strict = destination(json!({"status": "201"}));
        assert!(matches!(judge(&strict, 200, None, ""), Verdict::Refused { .. }));
    }

    #[test]
    fn expected_responses_are_checked() {
        let contains = destination(json!({"body_contains": "accepted"}));
        assert_eq!(judge(&contains, 200, None, "lead accepted"), Verdict::Delivered);
        assert!(matches!(judge(&contains, 200, None, "duplicate"), Verdict::Refused { .. }));
        let regex = destination(json!({"body_regex": "^OK\\b"}));
        assert_eq!(judge(&regex, 200, None, "OK 123"), Verdict::Delivered);
        assert!(matches!(judge(&regex, 200, None, "NOT OK"), Verdict::Refused { .. }));
        let path = destination(json!({"json_path": "$.result.status", "json_equals": "success"}));
        assert_eq!(judge(&path, 200, None, r#"{"result":{"status":"success"}}"#), Verdict::Delivered);
        let Verdict::Refused { reason } = judge(&path, 200, None, r#"{"result":{"status":"dup"}}"#) else { panic!() };
        assert_eq!(reason, "response $.result.status is \"dup\", expected \"success\"");
        assert!(matches!(judge(&path, 200, None, "<html>"), Verdict::Refused { .. }));
        let loose = destination(json!({"json_path": "accepted", "json_equals": true}));
        assert_eq!(judge(&loose, 200, None, r#"{"accepted":"true"}"#), Verdict::Delivered);
    }

    #[test]
    fn captured_values_and_revenue_come_from_the_response() {
        let with_price = destination(json!({}));
        let captured = capture(&with_price, r#"{"data":{"id":"B-77"},"price":"12.5"}"#);
        assert_eq!(captured.get("buyer_id"), Some(&json!("B-77")));
        assert_eq!(revenue(&with_price, &captured), Some(12.5));
        assert_eq!(revenue(&with_price, &Map::new()), None);
    }

    #[test]
    fn retry_after_takes_seconds_or_a_date() {
        assert_eq!(parse_retry_after("120", 0), Some(Duration::from_secs(120)));
        assert_eq!(parse_retry_after("99999999999999999999999", 0), Some(Duration::from_secs(u64::MAX)));
        let now = 1_445_412_480; // 2015-10-21T07:28:00Z
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:29:00 GMT", now), Some(Duration::from_secs(60)));
        assert_eq!(parse_retry_after("soon", now), None);
    }
}
