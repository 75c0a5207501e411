//! Configuration over REST and as a whole document: CRUD, validation errors that name the
//! problem, references between objects, apply and export.

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{error_code, solar_config, spawn_app};

#[tokio::test]
async fn flows_sources_and_destinations_have_crud() {
    let app = spawn_app().await;
    let created = app
        .post_admin("/api/v1/destinations", &json!({"id": "crm", "name": "CRM", "url": "https://crm.example.com/in"}))
        .await;
    assert_eq!(created.status(), StatusCode::CREATED);
    let created: Value = created.json().await.unwrap();
    assert_eq!(created["retry"]["max_attempts"], 6, "defaults are filled in: {created}");
    assert_eq!(created["success"]["status"], "200-399");
    assert_eq!(created["mode"], "background");

    let flow = app.post_admin("/api/v1/flows", &json!({"name": "Auto Insurance", "destinations": ["crm"]})).await;
    assert_eq!(flow.status(), StatusCode::CREATED);
    let flow: Value = flow.json().await.unwrap();
    let flow_id = flow["id"].as_str().unwrap().to_owned();
    assert!(flow_id.starts_with("auto-insurance"), "generated id from the name: {flow_id}");

    let source = app.post_admin("/api/v1/sources", &json!({"id": "form", "flow_id": flow_id, "price": 1.25})).await;
    assert_eq!(source.status(), StatusCode::CREATED);
    let list = app.get_json("/api/v1/sources").await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    assert_eq!(app.get_json("/api/v1/sources/form").await["price"], 1.25);

    let replaced = app.put_admin("/api/v1/sources/form", &json!({"flow_id": flow_id, "price": 3.0})).await;
    assert_eq!(replaced.status(), StatusCode::OK);
    assert_eq!(app.get_json("/api/v1/sources/form").await["price"], 3.0);

    assert_eq!(
        app.post_admin("/api/v1/sources", &json!({"id": "form", "flow_id": flow_id})).await.status(),
        StatusCode::CONFLICT
    );
    assert_eq!(
        app.put_admin("/api/v1/sources/ghost", &json!({"flow_id": flow_id})).await.status(),
        StatusCode::NOT_FOUND
    );
    let mismatch = app.put_admin("/api/v1/sources/form", &json!({"id": "other", "flow_id": flow_id})).await;
    assert_eq!(error_code(mismatch).await.0, StatusCode::BAD_REQUEST);

    let in_use = app.delete_admin("/api/v1/destinations/crm").await;
    assert_eq!(in_use.status(), StatusCode::CONFLICT);
    assert_eq!(app.delete_admin(&format!("/api/v1/flows/{flow_id}")).await.status(), StatusCode::CONFLICT);
    assert_eq!(app.delete_admin("/api/v1/sources/form").await.status(), StatusCode::NO_CONTENT);
    assert_eq!(app.delete_admin(&format!("/api/v1/flows/{flow_id}")).await.status(), StatusCode::NO_CONTENT);
    assert_eq!(app.delete_admin("/api/v1/destinations/crm").await.status(), StatusCode::NO_CONTENT);
    assert_eq!(app.get_admin("/api/v1/destinations/crm").await.status(), StatusCode::NOT_FOUND);
    assert_eq!(app.delete_admin("/api/v1/destinations/crm").await.status(), StatusCode::NOT_FOUND);
    app.stop().await;
}

#[tokio::test]
async fn configuration_lists_page_with_limit_and_cursor() {
    let app = spawn_app().await;
    for index in 0..5 {
        let created = app
            .post_admin("/api/v1/destinations", &json!({"id": format!("d{index}"), "url": "https://x.example.com"}))
            .await;
        assert_eq!(created.status(), StatusCode::CREATED);
    }
    let mut seen = Vec::new();
    let mut path = "/api/v1/destinations?limit=2".to_owned();
    loop {
        let page = app.get_json(&path).await;
        let items = page["items"].as_array().unwrap();
        assert!(items.len() <= 2, "{page}");
        seen.extend(items.iter().map(|item| item["id"].as_str().unwrap().to_owned()));
        match page["next_cursor"].as_str() {
            Some(cursor) => path = format!("/api/v1/destinations?limit=2&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(seen, ["d0", "d1", "d2", "d3", "d4"]);
    // The item a cursor points past is deleted: the next page goes on from where it stood.
    let first = app.get_json("/api/v1/destinations?limit=2").await;
    let cursor = first["next_cursor"].as_str().unwrap().to_owned();
    assert_eq!(app.delete_admin("/api/v1/destinations/d1").await.status(), StatusCode::NO_CONTENT);
    let next = app.get_json(&format!("/api/v1/destinations?limit=2&cursor={cursor}")).await;
    let ids: Vec<&str> = next["items"].as_array().unwrap().iter().map(|item| item["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["d2", "d3"]);
    for bad in ["limit=0", "cursor=nope", "colour=red"] {
        let response = app.get_admin(&format!("/api/v1/destinations?{bad}")).await;
        assert_eq!(error_code(response).await.0, StatusCode::BAD_REQUEST, "{bad}");
    }
    app.stop().await;
}

#[tokio::test]
async fn a_pruning_apply_makes_the_configuration_the_document() {
    let app = spawn_app().await;
    app.apply(&solar_config()).await;
    let spare = json!({"id": "spare", "url": "https://spare.example.com"});
    assert_eq!(app.post_admin("/api/v1/destinations", &spare).await.status(), StatusCode::CREATED);
    // Without prune, objects the document leaves out stay.
    app.apply(&solar_config()).await;
    assert_eq!(app.get_admin("/api/v1/destinations/spare").await.status(), StatusCode::OK);
    // With it, they go, and the answer counts them.
    let pruned = app.post_admin("/api/v1/config?prune=true", &solar_config()).await;
    assert_eq!(pruned.status(), StatusCode::OK);
    assert_eq!(pruned.json::<Value>().await.unwrap()["changed"], 1);
    assert_eq!(app.get_admin("/api/v1/destinations/spare").await.status(), StatusCode::NOT_FOUND);
    // A flow still used by a source the document keeps cannot go: nothing changes.
    let mut without_flow = solar_config();
    without_flow["flows"] = json!([]);
    let refused = app.post_admin("/api/v1/config?prune=true", &without_flow).await;
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST, "{}", refused.text().await.unwrap());
    assert_eq!(app.get_json("/api/v1/config").await["flows"].as_array().unwrap().len(), 1);
    let bad = app.post_admin("/api/v1/config?prune=maybe", &solar_config()).await;
    assert_eq!(error_code(bad).await.0, StatusCode::BAD_REQUEST);
    // An object a document writes without an id gets the slug of its name, on every database:
    // one created through the API under the same name (its id suffixed) is another object,
    // which a pruning apply deletes like anything else the document leaves out.
    let created =
        app.post_admin("/api/v1/destinations", &json!({"name": "Backup CRM", "url": "https://b.example.com"})).await;
    let created: Value = created.json().await.unwrap();
    let id = created["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("backup-crm-"), "{id}");
    let mut with_backup = solar_config();
    with_backup["destinations"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "Backup CRM", "url": "https://b2.example.com"}));
    with_backup["flows"][0]["destinations"].as_array_mut().unwrap().push(json!("backup-crm"));
    let applied = app.post_admin("/api/v1/config?prune=true", &with_backup).await;
    assert_eq!(applied.status(), StatusCode::OK);
    assert_eq!(app.get_json("/api/v1/destinations/backup-crm").await["url"], "https://b2.example.com");
    assert_eq!(app.get_admin(&format!("/api/v1/destinations/{id}")).await.status(), StatusCode::NOT_FOUND);
    app.stop().await;
}

async fn refused(app: &crate::helpers::TestApp, path: &str, body: Value) -> String {
    let response = app.post_admin(path, &body).await;
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    body["error"]["message"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn invalid_objects_are_refused_with_messages_that_name_the_problem() {
    let app = spawn_app().await;
    app.apply(&solar_config()).await;
    let checks: Vec<(&str, Value, &str)> = vec![
        ("/api/v1/flows", json!({"id": "f", "feilds": []}), "unknown field `feilds`"),
        ("/api/v1/flows", json!({"id": "f", "fields": [{"name": "email", "type": "emial"}]}), "fields[0].type"),
        ("/api/v1/flows", json!({"id": "Bad Id"}), "invalid id"),
        ("/api/v1/flows", json!({"id": "f", "destinations": ["nowhere"]}), "unknown destination \"nowhere\""),
        (
            "/api/v1/flows",
            json!({"id": "f", "duplicates": {"keys": ["email"]}}),
            "\"email\" is not a field of this flow",
        ),
        (
            "/api/v1/flows",
            json!({"id": "f", "filters": [{"name": "x", "rules": {"all": [{"field": "state", "op": "equals", "value": "TX"}]}}]}),
            "unknown op \"equals\"",
        ),
        (
            "/api/v1/flows",
            json!({"id": "f", "filters": [{"name": "x", "rules": {"all": [{"field": "state", "op": "in", "value": "TX"}]}}]}),
            "needs a list",
        ),
        (
            "/api/v1/flows",
            json!({"id": "f", "filters": [{"name": "x", "rules": {"all": [{"field": "s", "op": "matches", "value": "("}]}}]}),
            "invalid regex",
        ),
        ("/api/v1/flows", json!({"id": "f", "filters": [{"name": "x", "rules": {"every": []}}]}), "\"all\" or \"any\""),
        (
            "/api/v1/flows",
            json!({"id": "f", "fields": [{"name": "email", "type": "email"}],
                   "filters": [{"name": "x", "rules": {"all": [{"field": "email.domian", "op": "eq", "value": "a.com"}]}}]}),
            "flows[f].filters[x].rules.all[0].field: email is a field of type email, which has no part \"domian\"",
        ),
        (
            "/api/v1/flows",
            json!({"id": "f", "fields": [{"name": "age", "type": "number"}],
                   "filters": [{"name": "x", "rules": {"all": [{"field": "age", "op": "gt", "value": "abc"}]}}]}),
            "flows[f].filters[x].rules.all[0].value: \"abc\" cannot be read as a number",
        ),
        ("/api/v1/sources", json!({"id": "s", "flow_id": "missing"}), "unknown flow \"missing\""),
        ("/api/v1/sources", json!({"id": "s", "flow_id": "solar", "price": -1}), "price"),
        ("/api/v1/sources", json!({"id": "s", "flow_id": "solar", "price": 0.1234567}), "at most 6 decimals"),
        ("/api/v1/flows", json!({"id": "f", "fields": [{"name": "source_id"}]}), "reserved"),
        ("/api/v1/sources", json!({"id": "s", "flow_id": "solar", "field_map": {"src": "cost"}}), "reserved"),
        (
            "/api/v1/flows",
            json!({"id": "f", "fields": [{"name": "email"}], "duplicates": {"keys": ["email", "email"]}}),
            "listed twice",
        ),
        ("/api/v1/destinations", json!({"id": "d", "url": "ftp://x.example.com"}), "http or https"),
        ("/api/v1/destinations", json!({"id": "d"}), "needs a url"),
        (
            "/api/v1/destinations",
            json!({"id": "d", "url": "https://x.example.com", "success": {"status": "600-700"}}),
            "status range",
        ),
        (
            "/api/v1/destinations",
            json!({"id": "d", "url": "https://x.example.com", "caps": [{"window": "day", "max": 5, "time_zone": "Mars/Base"}]}),
            "unknown time zone",
        ),
        (
            "/api/v1/destinations",
            json!({"id": "d", "url": "https://x.example.com", "signing_secret": "nope"}),
            "whsec_",
        ),
        ("/api/v1/destinations", json!({"id": "d", "url": "https://x.example.com", "retry": {"jitter": 3}}), "jitter"),
    ];
    for (path, body, expected) in checks {
        let message = refused(&app, path, body.clone()).await;
        assert!(message.contains(expected), "{path} {body}: {message:?} should mention {expected:?}");
    }
    let not_json = app
        .client
        .post(app.url("/api/v1/flows"))
        .bearer_auth(crate::helpers::ADMIN_TOKEN)
        .header("content-type", "application/json")
        .body("{nope")
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(not_json).await, (StatusCode::BAD_REQUEST, "invalid_json".to_owned()));
    let config = app.get_json("/api/v1/config").await;
    assert_eq!(config["flows"].as_array().unwrap().len(), 1, "nothing was half-written");
    app.stop().await;
}

/// Applies a YAML document through `POST /api/v1/config`.
async fn post_yaml(app: &crate::helpers::TestApp, yaml: String) -> reqwest::Response {
    app.client
        .post(app.url("/api/v1/config"))
        .bearer_auth(crate::helpers::ADMIN_TOKEN)
        .header("content-type", "application/yaml")
        .body(yaml)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn whole_documents_apply_in_one_transaction_and_export_round_trips() {
    let app = spawn_app().await;
    let yaml = r#"
flows:
  - id: solar
    fields:
      - {name: email, type: email}
      - {name: state, type: state}
    filters:
      - name: geo
        rules: {all: [{field: state, op: in, value: [TX, CA]}, {any: [{field: email.domain, op: ne, value: spam.example}]}]}
    destinations: [crm]
sources:
  - {id: web, flow_id: solar, kind: web_form}
destinations:
  - {id: crm, url: "https://crm.example.com/leads"}
"#;
    let response = post_yaml(&app, yaml.to_owned()).await;
    assert_eq!(response.status(), StatusCode::OK);
    let applied: Value = response.json().await.unwrap();
    assert_eq!(applied["changed"], 3);

    let broken = yaml.replace("kind: web_form", "kind: web_form, colour: blue").replace("id: crm,", "id: crm2,");
    let response = post_yaml(&app, broken).await;
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["error"]["message"].as_str().unwrap().contains("colour"), "{body}");
    assert!(app.get_admin("/api/v1/destinations/crm2").await.status() == StatusCode::NOT_FOUND, "all or nothing");

    let exported = app.get_json("/api/v1/config").await;
    let again = app.post_admin("/api/v1/config", &exported).await;
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["changed"], 0, "exporting and applying again changes nothing");
    assert_eq!(again["config"], exported);

    let yaml_export = app.get_admin("/api/v1/config?format=yaml").await;
    assert_eq!(yaml_export.headers()["content-type"], "application/yaml");
    let yaml = yaml_export.text().await.unwrap();
    assert!(yaml.contains("id: solar"));
    assert!(!yaml.contains('!'), "rule sets are maps, not YAML tags: {yaml}");
    let again = post_yaml(&app, yaml).await;
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["changed"], 0, "the YAML export applies again as it is: {again}");

    // An object without an id is named after its name, so applying the file again replaces it.
    let unnamed = json!({"destinations": [{"name": "Backup CRM", "url": "https://backup.example.com/leads"}]});
    for changed in [1, 0] {
        let applied: Value = app.post_admin("/api/v1/config", &unnamed).await.json().await.unwrap();
        assert_eq!(applied["changed"], changed, "{applied}");
    }
    assert_eq!(app.get_json("/api/v1/destinations/backup-crm").await["name"], "Backup CRM");
    assert_eq!(app.get_json("/api/v1/destinations").await["items"].as_array().unwrap().len(), 2);
    let twins = json!({"flows": [{"name": "Twin", "fields": []}, {"name": "twin!", "fields": []}]});
    let twins: Value = app.post_admin("/api/v1/config", &twins).await.json().await.unwrap();
    assert!(twins["error"]["message"].as_str().unwrap().contains("give each an id"), "{twins}");

    let unbuilt = app.post_admin("/api/v1/config", &json!({"alerts": [{"id": "a"}]})).await;
    let body: Value = unbuilt.json().await.unwrap();
    assert!(body["error"]["message"].as_str().unwrap().contains("alerts"), "{body}");
    app.stop().await;
}
