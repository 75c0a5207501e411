//! Processing: validation, duplicates, filters, transfers and the events they record.

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{solar_config, spawn_app};

#[tokio::test]
async fn accepted_lead_has_the_normal_timeline_with_every_event_field() {
    let app = spawn_app().await;
    app.apply(&solar_config()).await;
    let (status, answer) = app.submit("web", &json!({"email": "Jo@Example.com", "state": "texas"})).await;
    assert_eq!(status, StatusCode::CREATED);
    let lead_id = answer["lead_id"].as_str().unwrap();
    assert_eq!(
        app.timeline_types(lead_id).await,
        // `flow.completed` follows the delivery to crm (the delivery tests show it); this app
        // does not deliver.
        ["source.submitted", "source.accepted", "filter.passed"]
    );
    let fields = [
        "id",
        "type",
        "timestamp",
        "lead_id",
        "flow_id",
        "source_id",
        "destination_id",
        "status",
        "outcome",
        "reason",
        "duration_ms",
        "integration",
        "response_code",
        "price",
        "attempt",
        "data",
        "lead",
    ];
    for event in app.timeline(lead_id).await {
        for field in fields {
            assert!(event.get(field).is_some(), "{} lacks {field}", event["type"]);
        }
        assert!(event["id"].as_str().unwrap().starts_with("evt_"));
        let timestamp = event["timestamp"].as_str().unwrap();
        assert_eq!(timestamp.len(), 24, "millisecond ISO 8601: {timestamp}");
        assert!(timestamp.ends_with('Z'));
        assert_eq!(event["lead"]["id"], lead_id);
        assert_eq!(event["lead"]["email"]["domain"], "example.com");
    }
    let events = app.timeline(lead_id).await;
    assert_eq!(events[0]["status"], "new");
    assert_eq!(events[0]["data"]["submitted"]["email"], "Jo@Example.com", "raw data kept");
    assert_eq!(events[1]["outcome"], "success");
    assert_eq!(events[2]["data"]["filter"], "geo");
    assert_eq!(events[2]["data"]["rules_evaluated"][0]["field"], "state");

    let register = app.get_json(&format!("/api/v1/register?lead_id={lead_id}")).await;
    let rows = register["items"].as_array().unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["destination_id"], "crm");
    assert_eq!(rows[0]["status"], "new");
    assert_eq!(rows[0]["attempts"], 0);
    for field in [
        "transfer_id",
        "lead_id",
        "source_id",
        "destination_id",
        "status",
        "description",
        "created_at",
        "updated_at",
        "attempts",
    ] {
        assert!(rows[0].get(field).is_some(), "register row lacks {field}");
    }
    app.stop().await;
}

#[tokio::test]
async fn missing_required_field_and_missing_contact_are_recorded_rejections() {
    let app = spawn_app().await;
    app.apply(&solar_config()).await;
    let (status, answer) = app.submit("web", &json!({"email": "a@example.com"})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(answer["outcome"], "failure");
    assert_eq!(answer["reason"], "Missing required field: state");
    assert_eq!(answer["price"], Value::Null, "a rejected lead is not bought");
    let lead_id = answer["lead_id"].as_str().unwrap();
    assert_eq!(app.timeline_types(lead_id).await, ["source.submitted", "source.rejected", "flow.completed"]);
    let rejected = &app.timeline(lead_id).await[1];
    assert_eq!(rejected["status"], "skip");
    assert_eq!(rejected["outcome"], "failure");

    let (status, answer) = app.submit("web", &json!({"email": "not-an-email", "phone": "12", "state": "TX"})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(answer["reason"], "No valid phone or email");
    let register = app.get_json(&format!("/api/v1/register?lead_id={}", answer["lead_id"].as_str().unwrap())).await;
    assert_eq!(register["items"][0]["status"], "skip");
    assert_eq!(register["items"][0]["destination_id"], Value::Null);
    assert_eq!(register["items"][0]["description"], "No valid phone or email");
    app.stop().await;
}

#[tokio::test]
async fn require_contact_false_accepts_a_lead_without_phone_or_email() {
    let app = spawn_app().await;
    let mut config = solar_config();
    config["flows"][0]["require_contact"] = json!(false);
    app.apply(&config).await;
    let (status, answer) = app.submit("web", &json!({"first_name": "No Contact", "state": "TX"})).await;
    assert_eq!((status, answer["outcome"].as_str()), (StatusCode::CREATED, Some("success")));
    app.stop().await;
}

#[tokio::test]
async fn duplicate_within_window_is_rejected_with_original_id_and_date() {
    let app = spawn_app().await;
    app.apply(&solar_config()).await;
    let (_, first) = app.submit("web", &json!({"email": "dup@example.com", "state": "TX"})).await;
    let original = first["lead_id"].as_str().unwrap();
    // Same phone, different email: `match: any` makes it a duplicate.
    let (_, phone_first) = app.submit("web", &json!({"phone": "+1 415 555 2671", "state": "CA"})).await;
    assert_eq!(phone_first["outcome"], "success");
    let (status, second) = app.submit("web", &json!({"email": "DUP@example.com ", "state": "CA"})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(second["outcome"], "failure");
    let reason = second["reason"].as_str().unwrap();
    let today = app.timeline(original).await[0]["timestamp"].as_str().unwrap()[..10].to_owned();
    assert!(reason.starts_with(&format!("Duplicate: previously submitted {today}")), "{reason}");
    assert!(reason.contains(original), "{reason}");
    let lead = app.lead_of(&second).await;
    assert_eq!(lead["duplicate_of"], original);
    let (_, by_phone) =
        app.submit("web", &json!({"email": "other@example.com", "phone": "(415) 555-2671", "state": "TX"})).await;
    assert_eq!(by_phone["outcome"], "failure");
    assert!(by_phone["reason"].as_str().unwrap().contains(phone_first["lead_id"].as_str().unwrap()));
    app.stop().await;
}

#[tokio::test]
async fn placeholder_values_are_not_duplicate_keys() {
    let app = spawn_app().await;
    app.apply(&solar_config()).await;
    // A vendor sending `n/a` for email, or a phone no numbering plan knows, still has
    // distinct leads: only valid values are keys.
    for (email, phone) in [
        ("n/a", "+1 415 555 2671"),
        ("n/a", "+1 415 555 2672"),
        ("a@example.com", "555-0199"),
        ("b@example.com", "555-0199"),
    ] {
        let (status, answer) = app.submit("web", &json!({"email": email, "phone": phone, "state": "TX"})).await;
        assert_eq!(
            (status, answer["outcome"].as_str()),
            (StatusCode::CREATED, Some("success")),
            "{email} {phone}: {answer}"
        );
    }
    let (_, again) = app.submit("web", &json!({"email": "n/a", "phone": "(415) 555-2671", "state": "TX"})).await;
    assert_eq!(again["outcome"], "failure", "the valid phone still finds its duplicate");
    app.stop().await;
}

#[tokio::test]
async fn match_all_needs_every_key_to_match() {
    let app = spawn_app().await;
    let mut config = solar_config();
    config["flows"][0]["duplicates"]["match"] = json!("all");
    app.apply(&config).await;
    let lead = json!({"email": "all@example.com", "phone": "+1 415 555 2671", "state": "TX"});
    assert_eq!(app.submit("web", &lead).await.1["outcome"], "success");
    let same_email_only = json!({"email": "all@example.com", "phone": "+1 415 555 9999", "state": "TX"});
    assert_eq!(app.submit("web", &same_email_only).await.1["outcome"], "success");
    assert_eq!(app.submit("web", &lead).await.1["outcome"], "failure");
    app.stop().await;
}

#[tokio::test]
async fn submitted_names_fill_the_flows_fields_regardless_of_case() {
    let app = spawn_app().await;
    app.apply(&solar_config()).await;
    let (status, answer) = app.submit("web", &json!({"Email": "Case@Example.com", "STATE": "tx", "Notes": "hi"})).await;
    assert_eq!((status, answer["outcome"].clone()), (StatusCode::CREATED, json!("success")), "{answer}");
    let lead = app.lead_of(&answer).await;
    assert_eq!(lead["email"]["value"], "case@example.com");
    assert_eq!(lead["state"]["value"], "TX");
    assert_eq!(lead["Notes"]["value"], "hi", "a name the flow does not declare is kept as sent");
    // The field map too (`e-mail` maps to email); an exact name wins over another case of it.
    let (_, answer) = app.submit("web", &json!({"E-Mail": "map@example.com", "state": "CA"})).await;
    let lead = app.lead_of(&answer).await;
    assert_eq!(lead["email"]["value"], "map@example.com");
    let (_, answer) =
        app.submit("web", &json!({"email": "exact@example.com", "EMAIL": "other@example.com", "state": "CA"})).await;
    let lead = app.lead_of(&answer).await;
    assert_eq!(lead["email"]["value"], "exact@example.com");
    assert_eq!(lead["EMAIL"]["raw"], "other@example.com");
    app.stop().await;
}

#[tokio::test]
async fn a_lead_of_a_flow_without_destinations_says_why_it_went_nowhere() {
    let app = spawn_app().await;
    let mut config = solar_config();
    config["flows"][0]["destinations"] = json!([]);
    app.apply(&config).await;
    let (status, answer) = app.submit("web", &json!({"email": "nowhere@example.com", "state": "TX"})).await;
    assert_eq!((status, answer["reason"].clone()), (StatusCode::CREATED, Value::Null));
    let lead_id = answer["lead_id"].as_str().unwrap();
    let completed = app.timeline(lead_id).await.pop().unwrap();
    assert_eq!(completed["type"], "flow.completed");
    assert_eq!(completed["reason"], "No destinations configured for this flow");
    let row = &app.get_json(&format!("/api/v1/register?lead_id={lead_id}")).await["items"][0];
    assert_eq!((row["status"].as_str(), &row["description"]), (Some("skip"), &completed["reason"]));
    app.stop().await;
}

#[tokio::test]
async fn link_policy_accepts_and_links_to_the_original() {
    let app = spawn_app().await;
    let mut config = solar_config();
    config["flows"][0]["duplicates"]["policy"] = json!("link");
    app.apply(&config).await;
    let (_, first) = app.submit("web", &json!({"email": "link@example.com", "state": "TX"})).await;
    let (status, second) = app.submit("web", &json!({"email": "link@example.com", "state": "TX"})).await;
    assert_eq!(status, StatusCode::CREATED);
    let lead = app.lead_of(&second).await;
    assert_eq!(lead["duplicate_of"], first["lead_id"]);
    let accepted = &app.timeline(second["lead_id"].as_str().unwrap()).await[1];
    assert_eq!(accepted["type"], "source.accepted");
    assert_eq!(accepted["data"]["duplicate_of"], first["lead_id"]);
    // A key first seen on a linked lead (its new phone) is compared with later leads too, and
    // a lead that matches it links to the original of the family, not to the linked lead.
    let (_, with_phone) =
        app.submit("web", &json!({"email": "link@example.com", "phone": "512-555-0100", "state": "TX"})).await;
    assert_eq!(app.lead_of(&with_phone).await["duplicate_of"], first["lead_id"]);
    let (status, by_phone) = app.submit("web", &json!({"phone": "(512) 555-0100", "state": "TX"})).await;
    assert_eq!(status, StatusCode::CREATED);
    let lead = app.lead_of(&by_phone).await;
    assert_eq!(lead["duplicate_of"], first["lead_id"]);
    let (_, by_email) = app.submit("web", &json!({"email": "link@example.com", "state": "CA"})).await;
    let lead = app.lead_of(&by_email).await;
    assert_eq!(lead["duplicate_of"], first["lead_id"], "the earliest lead with the key is the original");
    app.stop().await;
}

#[tokio::test]
async fn concurrent_identical_submissions_accept_exactly_one() {
    let app = spawn_app().await;
    app.apply(&solar_config()).await;
    let mut tasks = Vec::new();
    for _ in 0..30 {
        let client = app.client.clone();
        let url = app.url("/api/v1/sources/web/submit");
        tasks.push(tokio::spawn(async move {
            let response =
                client.post(url).json(&json!({"email": "race@example.com", "state": "TX"})).send().await.unwrap();
            response.json::<Value>().await.unwrap()["outcome"].as_str().unwrap().to_owned()
        }));
    }
    let mut accepted = 0;
    for task in tasks {
        if task.await.unwrap() == "success" {
            accepted += 1;
        }
    }
    assert_eq!(accepted, 1);
    app.stop().await;
}

#[tokio::test]
async fn failed_filter_records_the_rules_and_stops_the_lead() {
    let app = spawn_app().await;
    let mut config = solar_config();
    config["flows"][0]["filters"] = json!([
        {"name": "geo", "rules": {"all": [{"field": "state", "op": "in", "value": ["TX", "CA"]}]}},
        {"name": "no-free-mail", "rules": {"any": [
            {"field": "email.is_free", "op": "eq", "value": false},
            {"all": [{"field": "email.domain", "op": "eq", "value": "gmail.com"}, {"field": "state", "op": "eq", "value": "TX"}]}
        ]}}
    ]);
    app.apply(&config).await;
    let (status, answer) = app.submit("web", &json!({"email": "x@yahoo.com", "state": "CA"})).await;
    assert_eq!(status, StatusCode::OK);
    assert!(answer["reason"].as_str().unwrap().starts_with("Filter no-free-mail:"), "{answer}");
    let lead_id = answer["lead_id"].as_str().unwrap();
    assert_eq!(
        app.timeline_types(lead_id).await,
        ["source.submitted", "source.accepted", "filter.passed", "filter.failed", "flow.completed"]
    );
    let failed = &app.timeline(lead_id).await[3];
    assert_eq!(failed["status"], "skip");
    assert_eq!(failed["data"]["filter"], "no-free-mail");
    let evaluated = failed["data"]["rules_evaluated"].as_array().unwrap();
    assert_eq!(evaluated.len(), 2, "the nested all stops at its first failing rule: {evaluated:?}");
    assert_eq!(evaluated[0]["field"], "email.is_free");
    assert_eq!(evaluated[0]["actual"], true);
    assert!(!failed["data"]["rules_failed"].as_array().unwrap().is_empty());

    let (status, _) = app.submit("web", &json!({"email": "x@gmail.com", "state": "TX"})).await;
    assert_eq!(status, StatusCode::CREATED, "the nested rule set lets gmail in from TX");
    app.stop().await;
}

#[tokio::test]
async fn rule_values_are_read_as_their_field_type() {
    let app = spawn_app().await;
    let mut config = solar_config();
    config["flows"][0]["fields"].as_array_mut().unwrap().push(json!({"name": "dob", "type": "dob"}));
    // Written as people write them: the state's name, a US date, a formatted phone.
    config["flows"][0]["filters"] = json!([
        {"name": "geo", "rules": {"all": [{"field": "state", "op": "in", "value": ["Texas", "California"]}]}},
        {"name": "born-before-1990", "rules": {"all": [{"field": "dob", "op": "lt", "value": "01/01/1990"}]}},
        {"name": "not-the-test-line", "rules": {"all": [{"field": "phone", "op": "ne", "value": "(512) 555-0100"}]}}
    ]);
    app.apply(&config).await;
    let (status, answer) =
        app.submit("web", &json!({"email": "a@example.com", "state": "TX", "dob": "1980-05-17"})).await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    let (_, answer) = app.submit("web", &json!({"email": "b@example.com", "state": "tx", "dob": "05/17/1995"})).await;
    assert!(answer["reason"].as_str().unwrap().starts_with("Filter born-before-1990:"), "{answer}");
    let (_, answer) = app
        .submit(
            "web",
            &json!({"email": "c@example.com", "state": "CA", "phone": "+1 512 555 0100", "dob": "1970-01-02"}),
        )
        .await;
    assert!(answer["reason"].as_str().unwrap().starts_with("Filter not-the-test-line:"), "{answer}");
    app.stop().await;
}

#[tokio::test]
async fn each_destination_gets_a_transfer_or_a_recorded_skip() {
    let app = spawn_app().await;
    let mut config = solar_config();
    config["destinations"] = json!([
        {"id": "crm", "name": "Main CRM", "url": "https://crm.example.com/leads"},
        {"id": "texas-buyer", "name": "Texas buyer", "url": "https://tx.example.com/leads",
         "filter": {"all": [{"field": "state", "op": "eq", "value": "TX"}]}},
        {"id": "paused", "name": "Paused buyer", "url": "https://paused.example.com/", "enabled": false}
    ]);
    config["flows"][0]["destinations"] = json!(["crm", "texas-buyer", "paused"]);
    app.apply(&config).await;
    let (status, answer) = app.submit("web", &json!({"email": "ca@example.com", "state": "CA"})).await;
    assert_eq!(status, StatusCode::CREATED);
    let lead_id = answer["lead_id"].as_str().unwrap();
    let types = app.timeline_types(lead_id).await;
    // `flow.completed` waits for the deliveries to crm and to the paused buyer (held).
    assert_eq!(
        types,
        ["source.submitted", "source.accepted", "filter.passed", "recipient.skipped", "recipient.skipped"]
    );
    let skipped = &app.timeline(lead_id).await[3];
    assert_eq!(skipped["destination_id"], "texas-buyer");
    assert_eq!(skipped["status"], "skip");
    assert!(skipped["reason"].as_str().unwrap().starts_with("Destination filter:"));

    let register = app.get_json(&format!("/api/v1/register?lead_id={lead_id}&sort=asc")).await;
    let rows: Vec<(String, String)> = register["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| (row["destination_id"].as_str().unwrap().to_owned(), row["status"].as_str().unwrap().to_owned()))
        .collect();
    assert_eq!(
        rows,
        [("crm".into(), "new".into()), ("texas-buyer".into(), "skip".into()), ("paused".into(), "skip".into())]
    );
    let paused = &register["items"][2];
    assert!(paused["description"].as_str().unwrap().starts_with("Held"), "{paused}");
    app.stop().await;
}

#[tokio::test]
async fn a_submitted_field_cannot_pose_as_the_lead_source() {
    let app = spawn_app().await;
    let mut config = solar_config();
    config["destinations"][0]["filter"] = json!({"all": [{"field": "source_id", "op": "eq", "value": "partner"}]});
    app.apply(&config).await;
    let (status, answer) =
        app.submit("web", &json!({"email": "pose@example.com", "state": "TX", "source_id": "partner"})).await;
    assert_eq!(status, StatusCode::CREATED);
    let lead_id = answer["lead_id"].as_str().unwrap();
    let register = app.get_json(&format!("/api/v1/register?lead_id={lead_id}")).await;
    assert_eq!(register["items"][0]["status"], "skip", "the destination filter saw the real source: {register}");
    let lead = app.get_json(&format!("/api/v1/leads/{lead_id}")).await;
    assert_eq!(lead["source_id"], "web");
    assert_eq!(lead["fields"]["source_id"]["raw"], "partner", "the submitted value is still kept");
    app.stop().await;
}
