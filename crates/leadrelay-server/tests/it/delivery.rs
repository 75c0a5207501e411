//! Delivery end to end: real receivers on 127.0.0.1 answering as scripted, and the exact
//! events, register rows and requests each script leads to.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{delivering_settings, spawn_app_with, spawn_delivering_app, TestApp};
use crate::receiver::{Received, Receiver, Reply};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// A flow `leads` with a source `web` and the given destinations.
pub(crate) fn config(destinations: Value) -> Value {
    let ids: Vec<Value> = destinations.as_array().unwrap().iter().map(|d| d["id"].clone()).collect();
    json!({
        "flows": [{
            "id": "leads", "name": "Leads",
            "fields": [{"name": "email", "type": "email"}, {"name": "state", "type": "state"}],
            "destinations": ids
        }],
        "sources": [{"id": "web", "name": "Web", "flow_id": "leads", "price": 1.5}],
        "destinations": destinations
    })
}

/// A webhook destination to a receiver, with short retries so that tests never wait long.
pub(crate) fn webhook(id: &str, receiver: &Receiver, extra: Value) -> Value {
    let mut destination = json!({
        "id": id, "name": format!("Buyer {id}"), "url": receiver.url("/leads"),
        "timeout_ms": 2000,
        "retry": {"max_attempts": 3, "schedule_ms": [20, 40], "jitter": 0.0}
    });
    destination.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    destination
}

pub(crate) async fn submit(app: &TestApp, email: &str) -> String {
    let (status, answer) = app.submit("web", &json!({"email": email, "state": "TX"})).await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    answer["lead_id"].as_str().unwrap().to_owned()
}

/// Checks a request's signature with the Standard Webhooks reference implementation.
#[track_caller]
fn verify_signature(secret: &str, request: &Received) {
    let verifier = standardwebhooks::Webhook::new(secret).unwrap();
    let mut headers = axum::http::HeaderMap::new();
    for name in ["webhook-id", "webhook-timestamp", "webhook-signature"] {
        headers.insert(name, request.header(name).unwrap().parse().unwrap());
    }
    verifier.verify(&request.body, &headers).expect("the signature verifies");
}

/// The timeline's types from the first delivery event on.
pub(crate) fn delivery_part(types: &[String]) -> Vec<&str> {
    let start =
        types.iter().position(|t| t.starts_with("recipient.") || t.starts_with("retry.")).unwrap_or(types.len());
    types[start..].iter().map(String::as_str).collect()
}

#[tokio::test]
async fn a_background_delivery_sends_the_fields_signed_and_records_the_answer() {
    let receiver = Receiver::start(vec![Reply::status(200).body(r#"{"id":"B-1","price":"7.25"}"#)]).await;
    let app = spawn_delivering_app().await;
    app.apply(&config(json!([webhook(
        "crm",
        &receiver,
        json!({"signing_secret": SECRET, "capture": {"buyer_id": "$.id", "price": "$.price"}, "headers": {"X-Api-Key": "k1"}})
    )])))
    .await;
    let lead_id = submit(&app, "Ann@Example.com").await;

    // `flow.completed` follows the delivery, in the same transaction (SPEC 3's normal timeline).
    let types = app.timeline_until(&lead_id, "flow.completed").await;
    assert_eq!(types, ["source.submitted", "source.accepted", "recipient.delivered", "flow.completed"]);
    let completed = app.timeline(&lead_id).await.pop().unwrap();
    assert_eq!(completed["outcome"], "success");
    assert_eq!(completed["price"], 1.5, "flow.completed carries what the lead cost");
    assert!(completed["duration_ms"].as_i64().unwrap() >= 0);
    assert_eq!(completed["data"]["transfers"][0]["destination_id"], "crm");
    assert_eq!(completed["data"]["transfers"][0]["status"], "success", "the transfers as they ended");
    assert_eq!(completed["lead"]["id"], json!(lead_id));
    let request = &receiver.received()[0];
    assert_eq!(request.json(), json!({"email": "ann@example.com", "state": "TX"}));
    assert_eq!(request.header("x-api-key"), Some("k1"));
    assert_eq!(request.header("content-type"), Some("application/json"));

    let transfer = app.transfer(&lead_id, "crm").await;
    assert_eq!(transfer["status"], "success");
    assert_eq!(transfer["attempts"], 1);
    assert_eq!(transfer["description"], "Delivered to Buyer crm (HTTP 200)");
    assert_eq!(request.header("webhook-id"), transfer["transfer_id"].as_str());

    verify_signature(SECRET, request);

    let timeline = app.timeline(&lead_id).await;
    let delivered = timeline.iter().find(|e| e["type"] == "recipient.delivered").unwrap();
    assert_eq!(delivered["status"], "success");
    assert_eq!(delivered["outcome"], "success");
    assert_eq!(delivered["response_code"], 200);
    assert_eq!(delivered["attempt"], 1);
    assert_eq!(delivered["price"], 7.25);
    assert_eq!(delivered["integration"], "webhook");
    assert_eq!(delivered["data"]["captured"], json!({"buyer_id": "B-1", "price": "7.25"}));
    assert_eq!(delivered["data"]["response"]["body"], r#"{"id":"B-1","price":"7.25"}"#);
    // Configured header values usually carry API keys: the log never shows them.
    assert_eq!(delivered["data"]["request"]["headers"]["X-Api-Key"], "***");
    assert_eq!(delivered["lead"]["email"]["value"], "ann@example.com");
    app.stop().await;
}

#[tokio::test]
async fn a_destination_failing_twice_is_retried_until_it_accepts() {
    let receiver = Receiver::start(vec![Reply::status(500), Reply::status(503), Reply::status(200)]).await;
    let app = spawn_delivering_app().await;
    app.apply(&config(json!([webhook("crm", &receiver, json!({"signing_secret": SECRET}))]))).await;
    let lead_id = submit(&app, "retry@example.com").await;

    let types = app.timeline_until(&lead_id, "recipient.delivered").await;
    assert_eq!(
        delivery_part(&types),
        [
            "recipient.error",
            "retry.scheduled",
            "retry.attempted",
            "recipient.error",
            "retry.scheduled",
            "retry.attempted",
            "recipient.delivered",
            "flow.completed"
        ]
    );
    let requests = receiver.received();
    assert_eq!(requests.len(), 3);
    // One webhook id for every attempt of the transfer.
    let ids: Vec<_> = requests.iter().map(|r| r.header("webhook-id").unwrap().to_owned()).collect();
    assert!(ids.iter().all(|id| id == &ids[0]), "{ids:?}");
    let transfer = app.transfer(&lead_id, "crm").await;
    assert_eq!(transfer["status"], "success");
    assert_eq!(transfer["attempts"], 3);
    let timeline = app.timeline(&lead_id).await;
    let errors: Vec<&Value> = timeline.iter().filter(|e| e["type"] == "recipient.error").collect();
    assert_eq!(errors[0]["reason"], "HTTP 500 from destination");
    assert_eq!(errors[0]["status"], "error");
    assert_eq!(errors[1]["attempt"], 2);
    let scheduled = timeline.iter().find(|e| e["type"] == "retry.scheduled").unwrap();
    assert_eq!(scheduled["status"], "new");
    assert_eq!(scheduled["data"]["delay_ms"], 20);
    app.stop().await;
}

#[tokio::test]
async fn a_business_refusal_is_recorded_once_and_never_retried() {
    let receiver = Receiver::start(vec![Reply::status(422).body("invalid state")]).await;
    let app = spawn_delivering_app().await;
    app.apply(&config(json!([webhook("crm", &receiver, json!({}))]))).await;
    let lead_id = submit(&app, "refused@example.com").await;

    let types = app.timeline_until(&lead_id, "recipient.failed").await;
    assert_eq!(delivery_part(&types), ["recipient.failed", "flow.completed"]);
    let transfer = app.transfer(&lead_id, "crm").await;
    assert_eq!(transfer["status"], "error");
    assert_eq!(transfer["attempts"], 1);
    assert_eq!(transfer["description"], "Refused by Buyer crm: HTTP 422 is outside the success range 200-399");
    let failed = app.timeline(&lead_id).await.into_iter().find(|e| e["type"] == "recipient.failed").unwrap();
    assert_eq!(failed["outcome"], "failure");
    assert_eq!(failed["data"]["response"]["body"], "invalid state");
    // Not in the not-integrated collection: nothing was abandoned.
    let collection = app.get_json("/api/v1/not-integrated").await;
    assert_eq!(collection["items"], json!([]));
    app.stop().await;
}

#[tokio::test]
async fn an_unexpected_answer_is_a_business_refusal() {
    let receiver = Receiver::start(vec![Reply::status(200).body(r#"{"result":"duplicate"}"#)]).await;
    let app = spawn_delivering_app().await;
    app.apply(&config(json!([webhook(
        "crm",
        &receiver,
        json!({"success": {"json_path": "$.result", "json_equals": "accepted"}})
    )])))
    .await;
    let lead_id = submit(&app, "wrong-body@example.com").await;
    app.timeline_until(&lead_id, "recipient.failed").await;
    let failed = app.timeline(&lead_id).await.into_iter().find(|e| e["type"] == "recipient.failed").unwrap();
    assert_eq!(failed["reason"], r#"response $.result is "duplicate", expected "accepted""#);
    app.stop().await;
}

#[tokio::test]
async fn a_refusal_says_when_the_answer_was_too_long_to_check_whole() {
    let long = format!("{}accepted", "x".repeat(1_100_000));
    let receiver = Receiver::start(vec![Reply::status(200).body(&long)]).await;
    let app = spawn_delivering_app().await;
    app.apply(&config(json!([webhook("crm", &receiver, json!({"success": {"body_contains": "accepted"}}))]))).await;
    let lead_id = submit(&app, "long-answer@example.com").await;
    app.timeline_until(&lead_id, "recipient.failed").await;
    let failed = app.timeline(&lead_id).await.into_iter().find(|e| e["type"] == "recipient.failed").unwrap();
    assert_eq!(
        failed["reason"],
        r#"response does not contain "accepted" (the answer was longer than 1 MiB; only that much was checked)"#
    );
    assert_eq!(failed["data"]["response"]["body_truncated"], true);
    app.stop().await;
}

#[tokio::test]
async fn retries_exhausted_abandon_the_transfer_to_the_not_integrated_collection() {
    let receiver = Receiver::start(vec![Reply::status(502)]).await;
    let app = spawn_delivering_app().await;
    app.apply(&config(json!([webhook("crm", &receiver, json!({}))]))).await;
    let lead_id = submit(&app, "abandoned@example.com").await;

    let types = app.timeline_until(&lead_id, "delivery.abandoned").await;
    assert_eq!(
        delivery_part(&types),
        [
            "recipient.error",
            "retry.scheduled",
            "retry.attempted",
            "recipient.error",
            "retry.scheduled",
            "retry.attempted",
            "recipient.error",
            "delivery.abandoned",
            "flow.completed"
        ]
    );
    assert_eq!(receiver.received().len(), 3);
    let transfer = app.transfer(&lead_id, "crm").await;
    assert_eq!(transfer["status"], "error");
    assert_eq!(transfer["description"], "Abandoned after 3 attempts: HTTP 502 from destination");
    let collection = app.get_json("/api/v1/not-integrated").await;
    assert_eq!(collection["items"].as_array().unwrap().len(), 1);
    assert_eq!(collection["items"][0]["transfer_id"], transfer["transfer_id"]);
    app.stop().await;
}

#[tokio::test]
async fn a_timeout_is_a_technical_failure() {
    let receiver = Receiver::start(vec![Reply::status(200).delay(Duration::from_secs(5)), Reply::status(200)]).await;
    let app = spawn_delivering_app().await;
    app.apply(&config(json!([webhook("crm", &receiver, json!({"timeout_ms": 100}))]))).await;
    let lead_id = submit(&app, "slow@example.com").await;
    let types = app.timeline_until(&lead_id, "recipient.delivered").await;
    assert_eq!(
        delivery_part(&types),
        ["recipient.error", "retry.scheduled", "retry.attempted", "recipient.delivered", "flow.completed"]
    );
    let error = app.timeline(&lead_id).await.into_iter().find(|e| e["type"] == "recipient.error").unwrap();
    assert_eq!(error["reason"], "timed out after 100 ms");
    app.stop().await;
}

#[tokio::test]
async fn too_many_requests_waits_as_long_as_retry_after_asks() {
    let receiver = Receiver::start(vec![Reply::status(429).header("Retry-After", "1"), Reply::status(201)]).await;
    let app = spawn_delivering_app().await;
    app.apply(&config(json!([webhook("crm", &receiver, json!({}))]))).await;
    let lead_id = submit(&app, "throttled@example.com").await;
    app.timeline_until(&lead_id, "recipient.delivered").await;
    let timeline = app.timeline(&lead_id).await;
    let scheduled = timeline.iter().find(|e| e["type"] == "retry.scheduled").unwrap();
    assert_eq!(scheduled["data"]["retry_after_ms"], 1000);
    assert_eq!(scheduled["data"]["delay_ms"], 1000);
    let error = timeline.iter().find(|e| e["type"] == "recipient.error").unwrap();
    assert_eq!(error["response_code"], 429);
    // A destination configured without a secret was given one: every webhook is signed.
    let requests = receiver.received();
    assert!(requests.iter().all(|r| r.header("webhook-signature").is_some_and(|s| s.starts_with("v1,"))));
    let secret = app.get_json("/api/v1/destinations/crm").await["signing_secret"].as_str().unwrap().to_owned();
    verify_signature(&secret, &requests[1]);
    app.stop().await;
}

#[tokio::test]
async fn a_realtime_destination_answers_within_the_submission() {
    let receiver = Receiver::start(vec![Reply::status(200).body(r#"{"accepted":true}"#)]).await;
    let app = spawn_delivering_app().await;
    app.apply(&config(json!([webhook("crm", &receiver, json!({"mode": "realtime", "price": 12.0}))]))).await;
    let submit = || {
        let url = app.url("/api/v1/sources/web/submit");
        let fields = json!({"email": "now@example.com", "state": "TX"});
        app.client.post(url).header("idempotency-key", "rt-1").json(&fields).send()
    };
    let response = submit().await.unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let answer: Value = response.json().await.unwrap();
    let deliveries = answer["deliveries"].as_array().unwrap();
    assert_eq!(deliveries.len(), 1, "{answer}");
    assert_eq!(deliveries[0]["destination_id"], "crm");
    assert_eq!(deliveries[0]["outcome"], "success");
    assert_eq!(deliveries[0]["status"], "success");
    assert_eq!(deliveries[0]["response_code"], 200);
    assert_eq!(deliveries[0]["price"], 12.0);
    let lead_id = answer["lead_id"].as_str().unwrap();
    // Already recorded when the answer came.
    let types = app.timeline_types(lead_id).await;
    assert_eq!(types, ["source.submitted", "source.accepted", "recipient.delivered", "flow.completed"]);
    assert_eq!(receiver.received().len(), 1);
    // The key answers the first answer again, outcomes included, and calls nobody.
    let replay = submit().await.unwrap();
    assert_eq!(replay.status(), StatusCode::CREATED);
    assert_eq!(replay.json::<Value>().await.unwrap(), answer);
    assert_eq!(receiver.received().len(), 1);
    app.stop().await;
}

#[tokio::test]
async fn realtime_destinations_the_lead_does_not_reach_are_answered_with_their_reasons() {
    let receiver = Receiver::start(vec![Reply::status(200)]).await;
    let app = spawn_delivering_app().await;
    app.apply(&config(json!([
        webhook(
            "ca-only",
            &receiver,
            json!({"mode": "realtime", "filter": {"all": [{"field": "state", "op": "eq", "value": "CA"}]}})
        ),
        webhook("capped", &receiver, json!({"mode": "realtime", "caps": [{"window": "total", "max": 1}]})),
    ])))
    .await;
    let (_, first) = app.submit("web", &json!({"email": "one@example.com", "state": "TX"})).await;
    let by_destination = |answer: &Value, id: &str| {
        answer["deliveries"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["destination_id"] == id)
            .cloned()
            .unwrap_or_else(|| panic!("{id} missing: {answer}"))
    };
    let skipped = by_destination(&first, "ca-only");
    assert_eq!((skipped["status"].as_str(), skipped["outcome"].as_str()), (Some("skip"), Some("failure")), "{first}");
    assert!(skipped["reason"].as_str().unwrap().starts_with("Destination filter:"), "{first}");
    assert_eq!(by_destination(&first, "capped")["outcome"], "success");

    let (_, second) = app.submit("web", &json!({"email": "two@example.com", "state": "TX"})).await;
    let capped = by_destination(&second, "capped");
    assert_eq!((capped["status"].as_str(), capped["outcome"].as_str()), (Some("skip"), Some("failure")), "{second}");
    assert_eq!(capped["reason"], "Total cap reached (1/1)", "{second}");
    assert_eq!(receiver.received().len(), 1);
    app.stop().await;
}

#[tokio::test]
async fn a_failed_realtime_delivery_continues_in_the_background() {
    let receiver = Receiver::start(vec![Reply::status(500), Reply::status(200)]).await;
    let app = spawn_delivering_app().await;
    app.apply(&config(json!([webhook("crm", &receiver, json!({"mode": "realtime"}))]))).await;
    let (_, answer) = app.submit("web", &json!({"email": "later@example.com", "state": "TX"})).await;
    assert_eq!(answer["deliveries"][0]["outcome"], "error");
    assert_eq!(answer["deliveries"][0]["retrying"], true);
    let lead_id = answer["lead_id"].as_str().unwrap();
    let types = app.timeline_until(lead_id, "flow.completed").await;
    assert_eq!(
        types,
        [
            "source.submitted",
            "source.accepted",
            "recipient.error",
            "retry.scheduled",
            "retry.attempted",
            "recipient.delivered",
            "flow.completed"
        ]
    );
    app.stop().await;
}

#[tokio::test]
async fn a_disabled_destination_holds_its_transfers_until_it_is_enabled() {
    let receiver = Receiver::start(vec![Reply::status(200)]).await;
    let app = spawn_delivering_app().await;
    let destination = webhook("crm", &receiver, json!({"enabled": false}));
    app.apply(&config(json!([destination.clone()]))).await;
    let lead_id = submit(&app, "held@example.com").await;
    let transfer = app.transfer(&lead_id, "crm").await;
    assert_eq!(transfer["status"], "skip");
    assert_eq!(transfer["description"], "Held: destination Buyer crm is disabled; delivered once it is enabled");
    let types = app.timeline_types(&lead_id).await;
    assert_eq!(types, ["source.submitted", "source.accepted", "recipient.skipped"], "the hold is on the record");

    let mut enabled = destination;
    enabled["enabled"] = json!(true);
    let response = app.put_admin("/api/v1/destinations/crm", &enabled).await;
    assert_eq!(response.status(), StatusCode::OK);
    let types = app.timeline_until(&lead_id, "recipient.delivered").await;
    assert_eq!(delivery_part(&types), ["recipient.skipped", "recipient.delivered", "flow.completed"]);
    assert_eq!(app.transfer(&lead_id, "crm").await["status"], "success");
    assert_eq!(receiver.received().len(), 1);
    app.stop().await;
}

#[tokio::test]
async fn a_slow_destination_does_not_hold_up_another() {
    let slow = Receiver::start(vec![Reply::status(200).delay(Duration::from_secs(30))]).await;
    let fast = Receiver::start(vec![Reply::status(200)]).await;
    let app = spawn_delivering_app().await;
    app.apply(&config(json!([
        webhook("slow", &slow, json!({"concurrency": 1, "timeout_ms": 60000})),
        webhook("fast", &fast, json!({"concurrency": 1}))
    ])))
    .await;
    let mut leads = Vec::new();
    for index in 0..5 {
        leads.push(submit(&app, &format!("lead{index}@example.com")).await);
    }
    // Every lead reaches the fast destination while the slow one still holds its first.
    fast.wait_for(5).await;
    for lead_id in &leads {
        app.timeline_until(lead_id, "recipient.delivered").await;
    }
    assert_eq!(slow.received().len(), 1);
    // The server stops without waiting for the slow call: it releases it.
    app.stop().await;
}

#[tokio::test]
async fn loopback_destinations_are_refused_by_default_and_never_called() {
    let receiver = Receiver::start(vec![Reply::status(200)]).await;
    let app = spawn_app_with(delivering_settings(Default::default())).await;
    let by_name = webhook("by-name", &receiver, json!({}));
    let mut by_name = by_name;
    by_name["url"] = json!(receiver.url("/leads").replace("127.0.0.1", "crm.test"));
    // A proxy is an outbound address too: one on loopback is refused like a destination.
    let proxied = json!({"id": "by-proxy", "url": "http://crm.example.com/leads", "proxy": receiver.address});
    app.apply(&config(json!([webhook("by-address", &receiver, json!({})), by_name, proxied]))).await;
    let lead_id = submit(&app, "ssrf@example.com").await;
    let types = app.timeline_until(&lead_id, "delivery.abandoned").await;
    // Both transfers are abandoned at once: a refused address is not retried.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let timeline = loop {
        let timeline = app.timeline(&lead_id).await;
        if timeline.iter().filter(|e| e["type"] == "delivery.abandoned").count() == 3 {
            break timeline;
        }
        assert!(tokio::time::Instant::now() < deadline, "{types:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let reasons: Vec<&str> =
        timeline.iter().filter(|e| e["type"] == "recipient.error").map(|e| e["reason"].as_str().unwrap()).collect();
    assert!(reasons.iter().any(|r| r.starts_with("127.0.0.1 is a loopback address")), "{reasons:?}");
    assert!(
        reasons.iter().any(|r| r.contains("crm.test resolves only to addresses that are not allowed")),
        "{reasons:?}"
    );
    assert!(reasons.iter().any(|r| r.starts_with("proxy refused: 127.0.0.1 is a loopback address")), "{reasons:?}");
    assert!(receiver.received().is_empty());
    assert_eq!(app.get_json("/api/v1/not-integrated").await["items"].as_array().unwrap().len(), 3);
    app.stop().await;
}

#[tokio::test]
async fn testing_a_destination_sends_a_sample_and_returns_the_answer() {
    let receiver = Receiver::start(vec![Reply::status(202).body("queued")]).await;
    let app = spawn_delivering_app().await;
    app.apply(&config(json!([webhook("crm", &receiver, json!({"signing_secret": SECRET}))]))).await;
    let response = app.post_admin("/api/v1/destinations/crm/test", &json!({"email": "sample@example.com"})).await;
    assert_eq!(response.status(), StatusCode::OK);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["outcome"], "success", "{answer}");
    assert_eq!(answer["response"]["status"], 202);
    assert_eq!(answer["response"]["body"], "queued");
    let request = &receiver.received()[0];
    assert_eq!(request.json()["email"], "sample@example.com");
    assert!(request.header("webhook-signature").is_some());
    let missing = app.post_admin("/api/v1/destinations/nope/test", &json!({})).await;
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    // A destination no flow uses yet gets the usual contact fields, parsed, and fields sent
    // by their usual names are parsed too.
    let template = r#"{"mail": "{{ lead.email }}", "area": "{{ lead.fields.phone.area }}"}"#;
    let unwired = webhook("unwired", &receiver, json!({"body_template": template}));
    assert_eq!(app.post_admin("/api/v1/destinations", &unwired).await.status(), StatusCode::CREATED);
    let answer: Value = app.post_admin("/api/v1/destinations/unwired/test", &json!({})).await.json().await.unwrap();
    assert_eq!(answer["outcome"], "success", "{answer}");
    assert_eq!(receiver.received()[1].json(), json!({"mail": "test.lead@example.com", "area": "512"}));
    let given = json!({"email": "Given@Example.com", "phone": "(415) 555-0123"});
    let answer: Value = app.post_admin("/api/v1/destinations/unwired/test", &given).await.json().await.unwrap();
    assert_eq!(answer["outcome"], "success", "{answer}");
    assert_eq!(receiver.received()[2].json(), json!({"mail": "given@example.com", "area": "415"}));
    app.stop().await;
}

#[tokio::test]
async fn a_circuit_breaker_disables_a_failing_destination_and_holds_its_transfers() {
    let receiver = Receiver::start(vec![Reply::status(500), Reply::status(500), Reply::status(200)]).await;
    let app = spawn_delivering_app().await;
    let destination = webhook(
        "crm",
        &receiver,
        json!({"circuit_breaker": {"failures": 2}, "retry": {"max_attempts": 5, "schedule_ms": [10]}}),
    );
    app.apply(&config(json!([destination]))).await;
    let lead_id = submit(&app, "breaker@example.com").await;
    let types = app.timeline_until(&lead_id, "destination.disabled").await;
    assert_eq!(
        delivery_part(&types),
        [
            "recipient.error",
            "retry.scheduled",
            "destination.warning",
            "retry.attempted",
            "recipient.error",
            "retry.scheduled",
            "destination.disabled"
        ]
    );
    let warning = app.timeline(&lead_id).await.into_iter().find(|e| e["type"] == "destination.warning").unwrap();
    assert_eq!(
        warning["reason"],
        "1 failure in a row (last: HTTP 500 from destination); the circuit breaker disables the destination after 2"
    );
    let tripped = app.timeline(&lead_id).await.into_iter().find(|e| e["type"] == "destination.disabled").unwrap();
    assert_eq!(tripped["reason"], "Disabled after 2 failures in a row (last: HTTP 500 from destination)");
    let mut current = app.get_json("/api/v1/destinations/crm").await;
    assert_eq!(current["enabled"], false);
    // Held, not dropped: still waiting in the register, which says why rather than the
    // retry it had planned.
    let held = app.transfer(&lead_id, "crm").await;
    assert_eq!(held["status"], "new");
    assert_eq!(held["description"], "Held: destination Buyer crm is disabled; delivered once it is enabled");
    assert_eq!(receiver.received().len(), 2);

    current["enabled"] = json!(true);
    assert_eq!(app.put_admin("/api/v1/destinations/crm", &current).await.status(), StatusCode::OK);
    app.timeline_until(&lead_id, "recipient.delivered").await;
    assert_eq!(receiver.received().len(), 3);
    app.stop().await;
}

/// A flow whose enhancement calls `enhancer` and whose filter needs its answer.
fn enhanced_config(enhancer: &Receiver, crm: &Receiver) -> Value {
    let mut config = config(json!([webhook("crm", crm, json!({}))]));
    config["flows"][0]["enhancements"] =
        json!([{"name": "phone_check", "url": enhancer.url("/check"), "timeout_ms": 1000, "headers": {"X-Key": "e"}}]);
    config["flows"][0]["filters"] = json!([{"name": "mobile", "rules": {"any": [{"field": "appended.phone_check.line", "op": "eq", "value": "mobile"},
                                                       {"field": "appended.phone_check.line", "op": "blank"}]}}]);
    config
}

#[tokio::test]
async fn an_enhancement_appends_its_answer_before_the_filters() {
    let enhancer = Receiver::start(vec![Reply::status(200).body(r#"{"carrier":"Verizon","line":"mobile"}"#)]).await;
    let crm = Receiver::start(vec![Reply::status(200)]).await;
    let app = spawn_delivering_app().await;
    app.apply(&enhanced_config(&enhancer, &crm)).await;
    let lead_id = submit(&app, "enhanced@example.com").await;
    let types = app.timeline_until(&lead_id, "recipient.delivered").await;
    assert_eq!(
        types,
        [
            "source.submitted",
            "source.accepted",
            "enhancement.success",
            "filter.passed",
            "recipient.delivered",
            "flow.completed"
        ]
    );
    let call = &enhancer.received()[0];
    assert_eq!(call.json()["email"], "enhanced@example.com");
    assert_eq!(call.json()["lead_id"], lead_id.as_str());
    assert_eq!(call.header("x-key"), Some("e"));
    let lead = app.get_json(&format!("/api/v1/leads/{lead_id}")).await;
    assert_eq!(lead["appended"]["phone_check"], json!({"carrier": "Verizon", "line": "mobile"}));
    let success = app.timeline(&lead_id).await.into_iter().find(|e| e["type"] == "enhancement.success").unwrap();
    assert_eq!(success["response_code"], 200);
    assert_eq!(success["data"]["appended"], json!(["appended.phone_check.carrier", "appended.phone_check.line"]));
    app.stop().await;
}

#[tokio::test]
async fn a_broken_enhancement_never_stops_the_lead() {
    let enhancer = Receiver::start(vec![Reply::status(503)]).await;
    let crm = Receiver::start(vec![Reply::status(200)]).await;
    let app = spawn_delivering_app().await;
    app.apply(&enhanced_config(&enhancer, &crm)).await;
    let lead_id = submit(&app, "unenhanced@example.com").await;
    let types = app.timeline_until(&lead_id, "recipient.delivered").await;
    assert_eq!(
        types,
        [
            "source.submitted",
            "source.accepted",
            "enhancement.error",
            "filter.passed",
            "recipient.delivered",
            "flow.completed"
        ]
    );
    let error = app.timeline(&lead_id).await.into_iter().find(|e| e["type"] == "enhancement.error").unwrap();
    assert_eq!(error["reason"], "HTTP 503 from the enhancement");
    assert_eq!(error["outcome"], "error");
    assert_eq!(error["data"]["enhancement"], "phone_check");
    assert_eq!(error["response_code"], 503);
    app.stop().await;
}

#[tokio::test]
async fn a_rotated_secret_signs_beside_the_new_one_during_the_overlap() {
    let receiver = Receiver::start(vec![Reply::status(200)]).await;
    let app = spawn_delivering_app().await;
    let mut destination = webhook("crm", &receiver, json!({"signing_secret": SECRET}));
    app.apply(&config(json!([destination.clone()]))).await;
    let new_secret = "whsec_dGhpcyBpcyB0aGUgbmV3IHNlY3JldCBieXRlcw==";
    destination["signing_secret"] = json!(new_secret);
    assert_eq!(app.put_admin("/api/v1/destinations/crm", &destination).await.status(), StatusCode::OK);
    let stored = app.get_json("/api/v1/destinations/crm").await;
    assert_eq!(stored["previous_signing_secrets"][0]["secret"], SECRET);

    let lead_id = submit(&app, "rotated@example.com").await;
    app.timeline_until(&lead_id, "recipient.delivered").await;
    let request = &receiver.received()[0];
    assert_eq!(request.header("webhook-signature").unwrap().split(' ').count(), 2);
    // Receivers holding either secret verify the message.
    verify_signature(SECRET, request);
    verify_signature(new_secret, request);
    // Applying the exported configuration again changes nothing.
    let exported = app.get_json("/api/v1/config").await;
    let again = app.post_admin("/api/v1/config", &exported).await;
    assert_eq!(again.json::<Value>().await.unwrap()["changed"], 0);
    // An old secret that leaked is dropped at once with an empty list.
    let mut current = app.get_json("/api/v1/destinations/crm").await;
    current["previous_signing_secrets"] = json!([]);
    assert_eq!(app.put_admin("/api/v1/destinations/crm", &current).await.status(), StatusCode::OK);
    let stored = app.get_json("/api/v1/destinations/crm").await;
    assert!(stored.get("previous_signing_secrets").is_none(), "{stored}");
    let lead_id = submit(&app, "after-rotation@example.com").await;
    app.timeline_until(&lead_id, "recipient.delivered").await;
    let request = &receiver.received()[1];
    assert_eq!(request.header("webhook-signature").unwrap().split(' ').count(), 1, "the new secret alone signs");
    verify_signature(new_secret, request);
    app.stop().await;
}

#[tokio::test]
async fn a_ga4_destination_sends_a_measurement_protocol_event() {
    let collector = Receiver::start(vec![Reply::status(204)]).await;
    let app = spawn_delivering_app().await;
    let ga4 = json!({
        "id": "analytics", "kind": "ga4", "url": collector.url("/mp/collect"), "price": 25.0,
        "ga4": {"measurement_id": "G-TEST123", "api_secret": "s3cret", "client_id_field": "ga_client_id"},
        // A tagging server behind a gateway: its auth and headers are sent.
        "headers": {"X-Gtm-Server-Preview": "abc"}, "auth": {"type": "bearer", "token": "sgtm-tok"}
    });
    app.apply(&config(json!([ga4]))).await;
    let (_, answer) =
        app.submit("web", &json!({"email": "ga@example.com", "state": "TX", "ga_client_id": "123.456"})).await;
    let lead_id = answer["lead_id"].as_str().unwrap();
    app.timeline_until(lead_id, "recipient.delivered").await;
    let request = &collector.received()[0];
    assert_eq!(request.uri.to_string(), "/mp/collect?measurement_id=G-TEST123&api_secret=s3cret");
    assert_eq!(request.header("x-gtm-server-preview"), Some("abc"));
    assert_eq!(request.header("authorization"), Some("Bearer sgtm-tok"));
    assert_eq!(
        request.json(),
        json!({"client_id": "123.456", "events": [{"name": "generate_lead", "params": {
            "lead_id": lead_id, "source_id": "web", "flow_id": "leads", "value": 25.0, "currency": "USD"}}]})
    );
    let delivered = app.timeline(lead_id).await.into_iter().find(|e| e["type"] == "recipient.delivered").unwrap();
    assert_eq!(delivered["integration"], "ga4");
    assert!(delivered["data"]["request"]["url"].as_str().unwrap().ends_with("api_secret=***"));
    assert_eq!(delivered["price"], 25.0);
    let refused = app
        .post_admin("/api/v1/destinations", &json!({"id": "ga-bad", "kind": "ga4", "url": collector.url("/")}))
        .await;
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
    // What would shape another request than the event is refused, never ignored.
    let ignored = json!({"id": "ga-x", "kind": "ga4", "url": collector.url("/"), "method": "GET", "format": "xml",
                         "body_template": "x", "ga4": {"measurement_id": "G-1", "api_secret": "s"}});
    let refused = app.post_admin("/api/v1/destinations", &ignored).await;
    let body: Value = refused.json().await.unwrap();
    let message = body["error"]["message"].as_str().unwrap();
    for place in ["ga-x].method", "ga-x].format", "ga-x].body_template"] {
        assert!(message.contains(place), "{place}: {message}");
    }
    app.stop().await;
}

#[tokio::test]
async fn a_destination_with_a_proxy_sends_through_it() {
    // The receiver plays the egress proxy: it gets the request in absolute form.
    let proxy = Receiver::start(vec![Reply::status(200)]).await;
    let app = spawn_delivering_app().await;
    let destination = json!({"id": "crm", "url": "http://crm.test/leads", "proxy": proxy.address});
    app.apply(&config(json!([destination]))).await;
    let lead_id = submit(&app, "proxied@example.com").await;
    app.timeline_until(&lead_id, "recipient.delivered").await;
    let request = &proxy.received()[0];
    assert_eq!(request.uri.to_string(), "http://crm.test/leads");
    assert_eq!(request.json()["email"], "proxied@example.com");
    app.stop().await;
}

#[tokio::test]
async fn a_destination_with_transfers_waiting_cannot_be_deleted() {
    let receiver = Receiver::start(vec![Reply::status(200)]).await;
    let app = spawn_delivering_app().await;
    app.apply(&config(json!([webhook("crm", &receiver, json!({"enabled": false}))]))).await;
    submit(&app, "waiting@example.com").await;
    let mut flow = app.get_json("/api/v1/flows/leads").await;
    flow["destinations"] = json!([]);
    assert_eq!(app.put_admin("/api/v1/flows/leads", &flow).await.status(), StatusCode::OK);
    let refused = app.delete_admin("/api/v1/destinations/crm").await;
    let status = refused.status();
    let body: Value = refused.json().await.unwrap();
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("1 transfers waiting"), "{body}");
    // Nor can a pruning apply that leaves it out delete it: nothing of the document is applied.
    let mut without = config(json!([]));
    without["flows"][0]["name"] = json!("Renamed");
    let refused = app.post_admin("/api/v1/config?prune=true", &without).await;
    assert_eq!(refused.status(), StatusCode::CONFLICT);
    assert_eq!(app.get_json("/api/v1/flows/leads").await["name"], "Leads", "nothing changed");
    assert_eq!(app.get_admin("/api/v1/destinations/crm").await.status(), StatusCode::OK);
    app.stop().await;
}
