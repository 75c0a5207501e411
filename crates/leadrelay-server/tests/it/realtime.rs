//! Realtime destinations under load: they share the destination's concurrency with the
//! dispatcher, and a retried submission waits for the first one's outcomes.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::delivery::{config, webhook};
use crate::helpers::spawn_delivering_app;
use crate::receiver::{Receiver, Reply};

#[tokio::test]
async fn realtime_calls_keep_to_the_destination_concurrency() {
    // Slow enough that every submission meets the first call still in flight, even on a
    // loaded machine.
    let receiver = Receiver::start(vec![Reply::status(200).delay(Duration::from_millis(1500))]).await;
    let app = spawn_delivering_app().await;
    let destination = webhook("crm", &receiver, json!({"mode": "realtime", "concurrency": 1}));
    app.apply(&config(json!([destination]))).await;
    let submit = |index: usize| {
        app.client
            .post(app.url("/api/v1/sources/web/submit"))
            .json(&json!({"email": format!("rt{index}@example.com"), "state": "TX"}))
            .send()
    };
    let answers = futures::future::join_all((0..3).map(submit)).await;
    let mut called_now = 0;
    for response in answers {
        let answer: Value = response.unwrap().json().await.unwrap();
        let delivery = &answer["deliveries"][0];
        if delivery["outcome"] == "success" {
            called_now += 1;
        } else {
            // The others were not called while the one connection was busy: they go to the
            // background and say so.
            assert_eq!(delivery["status"], "new", "{answer}");
            assert!(delivery["reason"].as_str().unwrap().contains("connections to crm are busy"), "{answer}");
        }
    }
    assert_eq!(called_now, 1, "one connection, one call at a time");
    // All three arrive, one after another.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let page = app.get_json("/api/v1/register?status=success").await;
        if page["items"].as_array().unwrap().len() == 3 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{page}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(receiver.received().len(), 3);
    app.stop().await;
}

#[tokio::test]
async fn a_retry_during_the_realtime_wait_gets_the_first_answer_with_its_outcomes() {
    let receiver = Receiver::start(vec![Reply::status(200).delay(Duration::from_millis(500))]).await;
    let app = spawn_delivering_app().await;
    app.apply(&config(json!([webhook("crm", &receiver, json!({"mode": "realtime"}))]))).await;
    let submit = || {
        app.client
            .post(app.url("/api/v1/sources/web/submit"))
            .header("idempotency-key", "slow-buyer-1")
            .json(&json!({"email": "wait@example.com", "state": "TX"}))
            .send()
    };
    let first = submit();
    // The retry is sent once the first is committed and waiting for the buyer.
    let retry = async {
        receiver.wait_for(1).await;
        submit().await
    };
    let (first, retry) = tokio::join!(first, retry);
    let first: Value = first.unwrap().json().await.unwrap();
    let retry = retry.unwrap();
    assert_eq!(retry.status(), StatusCode::CREATED);
    assert_eq!(retry.headers()["idempotent-replayed"], "true");
    let retry: Value = retry.json().await.unwrap();
    assert_eq!(retry, first);
    assert_eq!(retry["deliveries"][0]["outcome"], "success", "{retry}");
    assert_eq!(receiver.received().len(), 1, "the buyer was called once");
    app.stop().await;
}
