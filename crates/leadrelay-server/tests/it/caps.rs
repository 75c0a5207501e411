//! Caps: only successful deliveries count, the lower cap wins, and deliveries still in flight
//! make a transfer wait for their outcome rather than skip it for good.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::delivery::{config, webhook};
use crate::helpers::{spawn_delivering_app, TestApp};
use crate::receiver::{Receiver, Reply};

/// Waits for the register to hold `count` transfers of `status`, and returns them.
async fn wait_for_register(app: &TestApp, status: &str, count: usize) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let page = app.get_json(&format!("/api/v1/register?status={status}")).await;
        let items = page["items"].as_array().unwrap().clone();
        if items.len() >= count {
            return items;
        }
        assert!(tokio::time::Instant::now() < deadline, "{count} transfers {status} expected: {page}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn caps_skip_leads_once_reached_and_the_lower_cap_wins() {
    let receiver = Receiver::start(vec![Reply::status(200)]).await;
    let app = spawn_delivering_app().await;
    let caps = json!({"caps": [
        {"window": "day", "max": 2, "time_zone": "America/Chicago"},
        {"window": "day", "max": 1, "rules": {"all": [{"field": "state", "op": "eq", "value": "CA"}]}}
    ]});
    app.apply(&config(json!([webhook("crm", &receiver, caps)]))).await;
    let mut outcomes = Vec::new();
    for (index, state) in ["TX", "CA", "CA", "TX"].iter().enumerate() {
        let (status, answer) =
            app.submit("web", &json!({"email": format!("cap{index}@example.com"), "state": state})).await;
        assert_eq!(status, StatusCode::CREATED);
        let lead_id = answer["lead_id"].as_str().unwrap().to_owned();
        // One at a time, so that the order of deliveries is the order of submissions.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let last = loop {
            let timeline = app.timeline(&lead_id).await;
            if let Some(last) =
                timeline.iter().rev().find(|e| e["type"] == "recipient.delivered" || e["type"] == "recipient.skipped")
            {
                break last.clone();
            }
            assert!(tokio::time::Instant::now() < deadline);
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        outcomes.push((last["type"].as_str().unwrap().to_owned(), last["reason"].clone()));
    }
    assert_eq!(
        outcomes,
        [
            ("recipient.delivered".to_owned(), Value::Null),
            ("recipient.delivered".to_owned(), Value::Null),
            ("recipient.skipped".to_owned(), json!("Daily cap reached (1/1)")),
            ("recipient.skipped".to_owned(), json!("Daily cap reached (2/2)")),
        ]
    );
    assert_eq!(receiver.received().len(), 2);
    let skipped = app.get_json("/api/v1/register?status=skip&destination_id=crm").await;
    assert_eq!(skipped["items"].as_array().unwrap().len(), 2);
    assert_eq!(skipped["items"][0]["description"], "Daily cap reached (2/2)");
    app.stop().await;
}

#[tokio::test]
async fn refused_deliveries_in_flight_never_use_up_a_cap() {
    // The buyer is slow and refuses the first two leads: while they are in flight, the cap's
    // two places are taken, but once they are refused nothing has counted.
    let slow = Duration::from_millis(300);
    let receiver =
        Receiver::start(vec![Reply::status(400).delay(slow), Reply::status(400).delay(slow), Reply::status(200)]).await;
    let app = spawn_delivering_app().await;
    let caps = json!({"caps": [{"window": "total", "max": 2}]});
    app.apply(&config(json!([webhook("crm", &receiver, caps)]))).await;
    for index in 0..4 {
        let (status, _) =
            app.submit("web", &json!({"email": format!("burst{index}@example.com"), "state": "TX"})).await;
        assert_eq!(status, StatusCode::CREATED);
    }
    let delivered = wait_for_register(&app, "success", 2).await;
    let refused = wait_for_register(&app, "error", 2).await;
    assert_eq!((delivered.len(), refused.len()), (2, 2));
    let skipped = app.get_json("/api/v1/register?status=skip").await;
    assert_eq!(skipped["items"], json!([]), "no lead was skipped: the cap was never reached");
    assert_eq!(receiver.received().len(), 4);
    // Now the cap is reached: the next lead is skipped, with the true count.
    let (_, answer) = app.submit("web", &json!({"email": "late@example.com", "state": "TX"})).await;
    let skipped = wait_for_register(&app, "skip", 1).await;
    assert_eq!(skipped[0]["lead_id"], answer["lead_id"]);
    assert_eq!(skipped[0]["description"], "Total cap reached (2/2)");
    let timeline = app.timeline(answer["lead_id"].as_str().unwrap()).await;
    let skip = timeline.iter().find(|event| event["type"] == "recipient.skipped").unwrap();
    assert_eq!(skip["data"]["cap"], json!({"window": "total", "max": 2, "count": 2, "window_start": null}));
    app.stop().await;
}

#[tokio::test]
async fn a_delivered_lead_resent_keeps_its_one_place_in_a_cap() {
    let receiver = Receiver::start(vec![Reply::status(200)]).await;
    let app = spawn_delivering_app().await;
    let caps = json!({"caps": [{"window": "day", "max": 2}]});
    app.apply(&config(json!([webhook("crm", &receiver, caps)]))).await;
    let (_, first) = app.submit("web", &json!({"email": "first@example.com", "state": "TX"})).await;
    let transfer = wait_for_register(&app, "success", 1).await[0]["transfer_id"].as_str().unwrap().to_owned();
    // The buyer asks for the lead again, twice: each resend is delivered, and the lead still
    // holds one place of the two.
    for round in 1..=2 {
        let resent = app.post_admin(&format!("/api/v1/register/{transfer}/resend"), &json!({})).await;
        assert_eq!(resent.status(), StatusCode::OK, "{}", resent.text().await.unwrap());
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while receiver.received().len() < 1 + round {
            assert!(tokio::time::Instant::now() < deadline, "resend {round} was not delivered");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let timeline = app.timeline(first["lead_id"].as_str().unwrap()).await;
    let delivered = timeline.iter().filter(|e| e["type"] == "recipient.delivered").count();
    assert_eq!(delivered, 3);
    assert!(timeline.iter().all(|e| e["type"] != "recipient.skipped"));
    // The second lead takes the second place; the third finds the cap reached by two leads.
    app.submit("web", &json!({"email": "second@example.com", "state": "TX"})).await;
    wait_for_register(&app, "success", 2).await;
    app.submit("web", &json!({"email": "third@example.com", "state": "TX"})).await;
    let skipped = wait_for_register(&app, "skip", 1).await;
    assert_eq!(skipped[0]["description"], "Daily cap reached (2/2)");
    app.stop().await;
}
