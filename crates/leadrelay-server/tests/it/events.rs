//! Reading the log: every filter, projections, paging, leads, the register and exports.

use std::collections::HashSet;

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{error_code, solar_config, spawn_app, TestApp};

/// Three leads: one accepted (TX), one filtered (NY), one rejected (no contact); and a
/// second source on the same flow. Nothing delivers here, so the accepted lead's
/// `flow.completed` waits for its transfer to crm: 3 + 4 + 3 events.
async fn seeded_app() -> (TestApp, Vec<String>) {
    let app = spawn_app().await;
    let mut config = solar_config();
    config["sources"].as_array_mut().unwrap().push(json!({"id": "vendor", "flow_id": "solar", "kind": "vendor"}));
    app.apply(&config).await;
    let mut lead_ids = Vec::new();
    for (source, lead) in [
        ("web", json!({"email": "a@example.com", "state": "TX"})),
        ("web", json!({"email": "b@gmail.com", "state": "NY"})),
        ("vendor", json!({"first_name": "No Contact", "state": "TX"})),
    ] {
        let (_, answer) = app.submit(source, &lead).await;
        lead_ids.push(answer["lead_id"].as_str().unwrap().to_owned());
    }
    (app, lead_ids)
}

fn types(page: &Value) -> Vec<String> {
    page["items"].as_array().unwrap().iter().map(|event| event["type"].as_str().unwrap().to_owned()).collect()
}

#[tokio::test]
async fn every_event_filter_selects_what_it_names() {
    let (app, leads) = seeded_app().await;
    let all = app.get_json("/api/v1/events").await;
    assert_eq!(all["items"].as_array().unwrap().len(), 3 + 4 + 3);

    let by_lead = app.get_json(&format!("/api/v1/events?lead_id={}", leads[1])).await;
    assert!(by_lead["items"].as_array().unwrap().iter().all(|e| e["lead_id"] == leads[1].as_str()));
    assert_eq!(by_lead["items"].as_array().unwrap().len(), 4);

    let by_type = app.get_json("/api/v1/events?type=source.submitted").await;
    assert_eq!(types(&by_type), ["source.submitted"; 3]);

    let by_status = app.get_json("/api/v1/events?status=skip").await;
    assert_eq!(types(&by_status), ["source.rejected", "filter.failed"], "newest first by default");

    let by_source = app.get_json("/api/v1/events?source_id=vendor").await;
    assert_eq!(by_source["items"].as_array().unwrap().len(), 3);

    let by_flow = app.get_json("/api/v1/flows/solar/events?type=flow.completed").await;
    assert_eq!(by_flow["items"].as_array().unwrap().len(), 2);
    let unknown_flow = app.get_admin("/api/v1/flows/other/events").await;
    assert_eq!(error_code(unknown_flow).await, (StatusCode::NOT_FOUND, "flow_not_found".to_owned()));
    let by_flow_param = app.get_json("/api/v1/events?flow_id=solar&limit=1").await;
    assert_eq!(by_flow_param["items"].as_array().unwrap().len(), 1);

    let by_destination = app.get_json("/api/v1/events?destination_id=crm").await;
    assert_eq!(by_destination["items"].as_array().unwrap().len(), 0, "nothing was delivered yet");

    let future = app.get_json("/api/v1/events?start=2999-01-01").await;
    assert_eq!(future["items"].as_array().unwrap().len(), 0);
    let past = app.get_json("/api/v1/events?end=2000-01-01T00:00:00Z").await;
    assert_eq!(past["items"].as_array().unwrap().len(), 0);
    let today = &all["items"][0]["timestamp"].as_str().unwrap()[..10];
    let within = app.get_json(&format!("/api/v1/events?start={today}&end={today}")).await;
    assert_eq!(within["items"].as_array().unwrap().len(), 10);
    app.stop().await;
}

#[tokio::test]
async fn rules_filter_matches_event_and_snapshot_fields() {
    let (app, leads) = seeded_app().await;
    let rules = json!({"all": [
        {"field": "type", "op": "eq", "value": "source.accepted"},
        {"field": "lead.email.domain", "op": "eq", "value": "gmail.com"}
    ]});
    let encoded: String = url::form_urlencoded::byte_serialize(rules.to_string().as_bytes()).collect();
    let page = app.get_json(&format!("/api/v1/events?rules={encoded}")).await;
    let items = page["items"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["lead_id"], leads[1].as_str());

    let reason_rules = json!({"any": [{"field": "reason", "op": "starts_with", "value": "Filter geo"}]});
    let encoded: String = url::form_urlencoded::byte_serialize(reason_rules.to_string().as_bytes()).collect();
    let page = app.get_json(&format!("/api/v1/events?rules={encoded}&type=filter.failed")).await;
    assert_eq!(page["items"].as_array().unwrap().len(), 1);

    let bad = app
        .get_admin("/api/v1/events?rules=%7B%22all%22%3A%5B%7B%22field%22%3A%22x%22%2C%22op%22%3A%22equals%22%7D%5D%7D")
        .await;
    let (status, code) = error_code(bad).await;
    assert_eq!((status, code.as_str()), (StatusCode::BAD_REQUEST, "invalid_parameter"));
    // A lead field named without `lead.` would match nothing: it is refused, with the hint.
    let outside = json!({"all": [{"field": "state", "op": "eq", "value": "TX"}]});
    let encoded: String = url::form_urlencoded::byte_serialize(outside.to_string().as_bytes()).collect();
    let response = app.get_admin(&format!("/api/v1/events?rules={encoded}")).await;
    let body: Value = response.json().await.unwrap();
    assert!(body["error"]["message"].as_str().unwrap().contains("lead.state"), "{body}");

    // The lead's fields are read as their flow reads them, as in a flow filter: a state by
    // its name, and a part its type does not have is refused by name.
    let path = |rules: Value| {
        let encoded: String = url::form_urlencoded::byte_serialize(rules.to_string().as_bytes()).collect();
        format!("/api/v1/events?type=source.submitted&rules={encoded}")
    };
    let by_code = app.get_json(&path(json!({"all": [{"field": "lead.state", "op": "eq", "value": "TX"}]}))).await;
    let by_name = app.get_json(&path(json!({"all": [{"field": "lead.state", "op": "eq", "value": "Texas"}]}))).await;
    assert!(!by_code["items"].as_array().unwrap().is_empty());
    assert_eq!(by_name["items"], by_code["items"]);
    let misspelt = json!({"all": [{"field": "lead.email.domian", "op": "eq", "value": "gmail.com"}]});
    let encoded: String = url::form_urlencoded::byte_serialize(misspelt.to_string().as_bytes()).collect();
    let refused = app.get_admin(&format!("/api/v1/events?rules={encoded}")).await;
    let body: Value = refused.json().await.unwrap();
    assert!(body["error"]["message"].as_str().unwrap().contains("has no part \"domian\""), "{body}");
    app.stop().await;
}

#[tokio::test]
async fn include_and_exclude_project_top_level_fields() {
    let (app, _) = seeded_app().await;
    let page = app.get_json("/api/v1/events?include=id,type&limit=2").await;
    for event in page["items"].as_array().unwrap() {
        let keys: HashSet<&str> = event.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys, HashSet::from(["id", "type"]));
    }
    let page = app.get_json("/api/v1/events?exclude=lead,data&limit=1").await;
    let event = page["items"][0].as_object().unwrap();
    assert!(!event.contains_key("lead") && !event.contains_key("data") && event.contains_key("reason"));
    let (status, _) = error_code(app.get_admin("/api/v1/events?include=nope").await).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    app.stop().await;
}

#[tokio::test]
async fn cursor_pages_cover_every_event_once_in_both_orders() {
    let (app, _) = seeded_app().await;
    for sort in ["asc", "desc"] {
        let mut seen = Vec::new();
        let mut path = format!("/api/v1/events?limit=5&sort={sort}");
        loop {
            let page = app.get_json(&path).await;
            let items = page["items"].as_array().unwrap();
            assert!(items.len() <= 5);
            seen.extend(items.iter().map(|event| event["id"].as_str().unwrap().to_owned()));
            match page["next_cursor"].as_str() {
                Some(cursor) => path = format!("/api/v1/events?limit=5&sort={sort}&cursor={cursor}"),
                None => break,
            }
        }
        assert_eq!(seen.len(), 10);
        assert_eq!(seen.iter().collect::<HashSet<_>>().len(), 10);
        let mut sorted = seen.clone();
        sorted.sort();
        if sort == "desc" {
            sorted.reverse();
        }
        assert_eq!(seen, sorted, "ids are time-ordered, so pages come in id order ({sort})");
    }
    app.stop().await;
}

#[tokio::test]
async fn bad_list_parameters_are_refused_by_name() {
    let (app, _) = seeded_app().await;
    for path in [
        "/api/v1/events?limit=0",
        "/api/v1/events?limit=1001",
        "/api/v1/events?limit=ten",
        "/api/v1/events?sort=sideways",
        "/api/v1/events?type=lead.exploded",
        "/api/v1/events?status=great",
        "/api/v1/events?start=yesterday",
        "/api/v1/events?start=2024-02-01&end=2024-01-01",
        "/api/v1/events?cursor=garbage",
        "/api/v1/events?leadid=x",
        "/api/v1/register?status=maybe",
        "/api/v1/leads?outcome=perhaps",
        "/api/v1/export?format=xlsx",
        "/api/v1/export?limit=0",
        "/api/v1/export?limit=lots",
    ] {
        let response = app.get_admin(path).await;
        let (status, code) = error_code(response).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}");
        assert_eq!(code, "invalid_parameter", "{path}");
    }
    app.stop().await;
}

#[tokio::test]
async fn single_event_lead_and_timeline_lookups_answer_404_when_unknown() {
    let (app, leads) = seeded_app().await;
    let timeline = app.timeline(&leads[0]).await;
    let path = format!("/api/v1/events/{}", timeline[0]["id"].as_str().unwrap());
    let event = app.get_json(&path).await;
    assert_eq!(event, timeline[0]);
    let some = app.get_json(&format!("{path}?include=id,type")).await;
    assert_eq!(some, json!({"id": event["id"], "type": event["type"]}));
    let without = app.get_json(&format!("{path}?exclude=lead,data")).await;
    assert!(without.get("lead").is_none() && without.get("data").is_none() && without["id"] == event["id"]);
    assert_eq!(app.get_admin(&format!("{path}?sort=asc")).await.status(), StatusCode::BAD_REQUEST);
    // A timeline takes the log's filters; the path names the lead.
    let timeline_path = format!("/api/v1/leads/{}/events", leads[0]);
    let newest_first = app.get_json(&format!("{timeline_path}?sort=desc")).await;
    let mut reversed = timeline.clone();
    reversed.reverse();
    assert_eq!(newest_first["items"], json!(reversed));
    let accepted = app.get_json(&format!("{timeline_path}?type=source.accepted")).await;
    assert_eq!(accepted["items"].as_array().unwrap().len(), 1);
    assert_eq!(accepted["items"][0]["type"], "source.accepted");
    let other_lead = app.get_admin(&format!("{timeline_path}?lead_id={}", leads[1])).await;
    assert_eq!(other_lead.status(), StatusCode::BAD_REQUEST);
    for path in ["/api/v1/events/evt_nope", "/api/v1/leads/lead_nope", "/api/v1/leads/lead_nope/events"] {
        assert_eq!(app.get_admin(path).await.status(), StatusCode::NOT_FOUND, "{path}");
    }
    app.stop().await;
}

#[tokio::test]
async fn leads_and_register_lists_filter_and_page() {
    let (app, leads) = seeded_app().await;
    let all = app.get_json("/api/v1/leads").await;
    let ids: Vec<&str> = all["items"].as_array().unwrap().iter().map(|lead| lead["id"].as_str().unwrap()).collect();
    assert_eq!(ids, [leads[2].as_str(), leads[1].as_str(), leads[0].as_str()]);
    let failures = app.get_json("/api/v1/leads?outcome=failure").await;
    assert_eq!(failures["items"].as_array().unwrap().len(), 2);
    let vendor = app.get_json("/api/v1/leads?source_id=vendor").await;
    assert_eq!(vendor["items"].as_array().unwrap().len(), 1);

    let skips = app.get_json("/api/v1/register?status=skip").await;
    assert_eq!(skips["items"].as_array().unwrap().len(), 2);
    let new = app.get_json("/api/v1/register?status=new&destination_id=crm").await;
    assert_eq!(new["items"].as_array().unwrap().len(), 1);
    let by_source = app.get_json("/api/v1/register?source_id=web&flow_id=solar").await;
    assert_eq!(by_source["items"].as_array().unwrap().len(), 2);
    let first = app.get_json("/api/v1/register?limit=1").await;
    let cursor = first["next_cursor"].as_str().expect("a next page");
    let second = app.get_json(&format!("/api/v1/register?limit=1&cursor={cursor}")).await;
    assert_ne!(first["items"][0]["transfer_id"], second["items"][0]["transfer_id"]);
    // A cursor pages the list and the order it came from; elsewhere it is refused by name.
    for elsewhere in [
        format!("/api/v1/register?limit=1&sort=asc&cursor={cursor}"),
        format!("/api/v1/leads?limit=1&cursor={cursor}"),
        format!("/api/v1/events?limit=1&cursor={cursor}"),
    ] {
        let refused = app.get_admin(&elsewhere).await;
        assert_eq!(refused.status(), 400, "{elsewhere}");
        let body: Value = refused.json().await.unwrap();
        assert_eq!(body["error"]["code"], "invalid_parameter", "{elsewhere}: {body}");
        assert!(body["error"]["message"].as_str().unwrap().contains("cursor"), "{body}");
    }
    let not_integrated = app.get_admin(&format!("/api/v1/not-integrated?cursor={cursor}")).await;
    assert_eq!(not_integrated.status(), 200, "the not-integrated collection pages transfers too");
    app.stop().await;
}

#[tokio::test]
async fn exports_stream_every_event_and_neutralise_formulas() {
    let app = spawn_app().await;
    let mut config = solar_config();
    config["flows"][0]["filters"] = json!([]);
    config["flows"][0]["destinations"] = json!([]);
    app.apply(&config).await;
    let (_, answer) = app
        .submit("web", &json!({"email": "f@example.com", "state": "TX", "first_name": "=HYPERLINK(\"http://x\")", "notes": "+1 call"}))
        .await;
    let lead_id = answer["lead_id"].as_str().unwrap();
    for i in 0..30 {
        app.submit("web", &json!({"email": format!("bulk{i}@example.com"), "state": "CA"})).await;
    }

    let ndjson = app.get_admin("/api/v1/export?format=ndjson").await;
    assert_eq!(ndjson.headers()["content-type"], "application/x-ndjson");
    let text = ndjson.text().await.unwrap();
    let lines: Vec<Value> = text.lines().map(|line| serde_json::from_str(line).unwrap()).collect();
    assert_eq!(lines.len(), 31 * 3);
    assert_eq!(lines[0]["lead_id"], lead_id, "exports run oldest first");
    // `limit` caps an export (there is no page size); `sort=desc` runs it newest first.
    let capped = app.get_admin("/api/v1/export?format=ndjson&limit=10").await.text().await.unwrap();
    let capped: Vec<Value> = capped.lines().map(|line| serde_json::from_str(line).unwrap()).collect();
    assert_eq!(capped, lines[..10]);
    let newest = app.get_admin("/api/v1/export?format=ndjson&sort=desc&limit=1").await.text().await.unwrap();
    assert_eq!(serde_json::from_str::<Value>(newest.trim_end()).unwrap(), lines[lines.len() - 1]);
    let capped_csv = app.get_admin("/api/v1/export?format=csv&limit=4&include=id").await.text().await.unwrap();
    let ids: Vec<&str> = capped_csv.lines().skip(1).collect();
    assert_eq!(ids, lines[..4].iter().map(|line| line["id"].as_str().unwrap()).collect::<Vec<_>>());

    let csv = app.get_admin(&format!("/api/v1/export?format=csv&lead_id={lead_id}&include=id,type,reason,lead")).await;
    assert!(csv.headers()["content-type"].to_str().unwrap().starts_with("text/csv"));
    let text = csv.text().await.unwrap();
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    assert_eq!(reader.headers().unwrap().iter().collect::<Vec<_>>(), ["id", "type", "reason", "lead"]);
    let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    assert_eq!(rows.len(), 3);
    let lead_json: Value = serde_json::from_str(&rows[0][3]).expect("lead cell is JSON");
    assert_eq!(lead_json["first_name"]["raw"], "=HYPERLINK(\"http://x\")");

    let names = app
        .get_admin(&format!("/api/v1/export?format=csv&lead_id={lead_id}&include=type,reason&type=flow.completed"))
        .await;
    assert_eq!(names.text().await.unwrap(), "type,reason\nflow.completed,No destinations configured for this flow\n");
    app.stop().await;
}
