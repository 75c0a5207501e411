//! Resends: one transfer by a person, every matching transfer as a background job, and what
//! cannot be resent.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::delivery::{config, delivery_part, submit, webhook};
use crate::helpers::spawn_delivering_app;
use crate::receiver::{Receiver, Reply};

#[tokio::test]
async fn an_abandoned_transfer_resent_by_a_person_is_delivered() {
    let receiver = Receiver::start(vec![Reply::status(500), Reply::status(500), Reply::status(200)]).await;
    let app = spawn_delivering_app().await;
    app.apply(&config(json!([webhook("crm", &receiver, json!({"retry": {"max_attempts": 2, "schedule_ms": [10]}}))])))
        .await;
    let lead_id = submit(&app, "resend@example.com").await;
    app.timeline_until(&lead_id, "delivery.abandoned").await;
    let transfer = app.transfer(&lead_id, "crm").await;
    let transfer_id = transfer["transfer_id"].as_str().unwrap();

    let response = app.post_admin(&format!("/api/v1/register/{transfer_id}/resend"), &json!({})).await;
    let status = response.status();
    let answer: Value = response.json().await.unwrap();
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer, json!({"transfer_id": transfer_id, "outcome": "queued", "status": "new"}));
    let types = app.timeline_until(&lead_id, "recipient.delivered").await;
    assert_eq!(
        delivery_part(&types),
        [
            "recipient.error",
            "retry.scheduled",
            "retry.attempted",
            "recipient.error",
            "delivery.abandoned",
            "flow.completed",
            "delivery.resent",
            "recipient.delivered"
        ]
    );
    let resent = app.timeline(&lead_id).await.into_iter().find(|e| e["type"] == "delivery.resent").unwrap();
    assert_eq!(resent["status"], "new");
    assert_eq!(resent["data"]["by"], "test");
    let delivered = app.timeline(&lead_id).await.into_iter().find(|e| e["type"] == "recipient.delivered").unwrap();
    assert_eq!(delivered["attempt"], 3);
    assert_eq!(app.transfer(&lead_id, "crm").await["status"], "success");
    assert_eq!(app.get_json("/api/v1/not-integrated").await["items"], json!([]));
    // The same webhook id as the first attempts: receivers de-duplicate across resends too.
    let ids: Vec<_> = receiver.received().iter().map(|r| r.header("webhook-id").unwrap().to_owned()).collect();
    assert!(ids.iter().all(|id| id == transfer_id), "{ids:?}");
    app.stop().await;
}

#[tokio::test]
async fn a_resent_transfer_still_meets_the_destination_filter() {
    let receiver = Receiver::start(vec![Reply::status(200)]).await;
    let app = spawn_delivering_app().await;
    let filter = json!({"filter": {"all": [{"field": "state", "op": "in", "value": ["CA"]}]}});
    app.apply(&config(json!([webhook("crm", &receiver, filter)]))).await;
    let lead_id = submit(&app, "texan@example.com").await;
    let transfer = app.transfer(&lead_id, "crm").await;
    assert_eq!(transfer["status"], "skip");
    let transfer_id = transfer["transfer_id"].as_str().unwrap();
    let response = app.post_admin(&format!("/api/v1/register/{transfer_id}/resend"), &json!({})).await;
    assert_eq!(response.status(), StatusCode::OK);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let skips = loop {
        let skips: Vec<Value> =
            app.timeline(&lead_id).await.into_iter().filter(|e| e["type"] == "recipient.skipped").collect();
        if skips.len() == 2 {
            break skips;
        }
        assert!(tokio::time::Instant::now() < deadline, "{skips:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let reason = skips[1]["reason"].as_str().unwrap();
    assert!(reason.starts_with("Destination filter: state"), "{reason}");
    // The verdict is kept as at intake: which rules were evaluated and which failed.
    assert_eq!(skips[1]["data"]["filter"], "destination:crm");
    assert_eq!(skips[1]["data"]["rules_failed"][0]["field"], "state", "{}", skips[1]);
    assert_eq!(app.transfer(&lead_id, "crm").await["status"], "skip");
    assert!(receiver.received().is_empty(), "a lead the filter refuses never reaches the destination");
    app.stop().await;
}

#[tokio::test]
async fn a_bulk_resend_job_queues_every_matching_transfer_and_reports_progress() {
    // Six failures abandon three leads (two attempts each); then the destination recovers.
    let mut script = vec![Reply::status(500); 6];
    script.push(Reply::status(200));
    let receiver = Receiver::start(script).await;
    let app = spawn_delivering_app().await;
    app.apply(&config(json!([webhook("crm", &receiver, json!({"retry": {"max_attempts": 2, "schedule_ms": [10]}}))])))
        .await;
    let mut leads = Vec::new();
    for index in 0..3 {
        let lead_id = submit(&app, &format!("bulk{index}@example.com")).await;
        app.timeline_until(&lead_id, "delivery.abandoned").await;
        leads.push(lead_id);
    }
    assert_eq!(app.get_json("/api/v1/not-integrated").await["items"].as_array().unwrap().len(), 3);

    let response =
        app.post_admin("/api/v1/register/resend", &json!({"not_integrated": true, "destination_id": "crm"})).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let job: Value = response.json().await.unwrap();
    assert_eq!(job["kind"], "resend");
    let job_id = job["id"].as_str().unwrap();
    assert!(job_id.starts_with("job_"));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let finished = loop {
        let job = app.get_json(&format!("/api/v1/jobs/{job_id}")).await;
        if job["status"] == "completed" {
            break job;
        }
        assert!(tokio::time::Instant::now() < deadline, "{job}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(finished["matched"], 3);
    assert_eq!(finished["queued"], 3);
    assert_eq!(finished["skipped"], 0);
    for lead_id in &leads {
        app.timeline_until(lead_id, "recipient.delivered").await;
        // Each resend names the job that made it.
        let timeline = app.timeline(lead_id).await;
        let resent = timeline.iter().find(|event| event["type"] == "delivery.resent").unwrap();
        assert_eq!(resent["data"]["job_id"], job_id);
    }
    assert_eq!(app.get_json("/api/v1/not-integrated").await["items"], json!([]));
    app.stop().await;
}

#[tokio::test]
async fn resend_refuses_what_cannot_be_resent() {
    let receiver = Receiver::start(vec![Reply::status(200)]).await;
    let app = spawn_delivering_app().await;
    app.apply(&config(json!([webhook("crm", &receiver, json!({}))]))).await;
    let missing = app.post_admin("/api/v1/register/trf_nope/resend", &json!({})).await;
    assert_eq!(crate::helpers::error_code(missing).await, (StatusCode::NOT_FOUND, "transfer_not_found".to_owned()));
    // A rejected lead's transfer went nowhere.
    let (_, answer) = app.submit("web", &json!({"state": "TX"})).await;
    let lead_id = answer["lead_id"].as_str().unwrap();
    let page = app.get_json(&format!("/api/v1/register?lead_id={lead_id}")).await;
    let transfer_id = page["items"][0]["transfer_id"].as_str().unwrap();
    let nowhere = app.post_admin(&format!("/api/v1/register/{transfer_id}/resend"), &json!({})).await;
    assert_eq!(crate::helpers::error_code(nowhere).await, (StatusCode::CONFLICT, "conflict".to_owned()));
    let bad_filter = app.post_admin("/api/v1/register/resend", &json!({"colour": "red"})).await;
    assert_eq!(crate::helpers::error_code(bad_filter).await, (StatusCode::BAD_REQUEST, "invalid_parameter".to_owned()));
    let bad_status = app.post_admin("/api/v1/register/resend", &json!({"status": "lost"})).await;
    assert_eq!(bad_status.status(), StatusCode::BAD_REQUEST);
    // Resending cannot be undone: an empty request is not "everything", and the filter comes
    // in one place.
    let bulk = |query: &'static str, body: &'static str| {
        let url = app.url(&format!("/api/v1/register/resend{query}"));
        app.client.post(url).bearer_auth(crate::helpers::ADMIN_TOKEN).body(body).send()
    };
    let cases = [
        ("", "", "filter_required"),
        ("?status=error", "{}", "filter_twice"),
        ("?colour=red", "", "invalid_parameter"),
        ("?status=error&status=skip", "", "invalid_parameter"),
        ("?status=", "", "invalid_parameter"),
        ("", r#"{"status": null}"#, "invalid_parameter"),
        ("", r#"{"status": " "}"#, "invalid_parameter"),
    ];
    for (query, body, code) in cases {
        let refused = crate::helpers::error_code(bulk(query, body).await.unwrap()).await;
        assert_eq!(refused, (StatusCode::BAD_REQUEST, code.to_owned()), "{query} {body}");
    }
    let by_query = bulk("?status=error&destination_id=crm", "").await.unwrap();
    assert_eq!(by_query.status(), StatusCode::ACCEPTED);
    let job: Value = by_query.json().await.unwrap();
    assert_eq!(
        (job["params"]["status"].clone(), job["params"]["destination_id"].clone()),
        (json!("error"), json!("crm"))
    );
    let no_job = app.get_admin("/api/v1/jobs/job_nope").await;
    assert_eq!(no_job.status(), StatusCode::NOT_FOUND);
    app.stop().await;
}
