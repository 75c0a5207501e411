//! Access: admin tokens on every `/api/v1` endpoint but intake; health and readiness open.

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{error_code, solar_config, spawn_app};

#[tokio::test]
async fn admin_endpoints_need_a_valid_bearer_token() {
    let app = spawn_app().await;
    for path in ["/api/v1/events", "/api/v1/register", "/api/v1/config", "/api/v1/flows"] {
        let anonymous = app.client.get(app.url(path)).send().await.unwrap();
        assert_eq!(error_code(anonymous).await, (StatusCode::UNAUTHORIZED, "unauthorized".to_owned()), "{path}");
        let wrong = app.client.get(app.url(path)).bearer_auth("not-the-token").send().await.unwrap();
        assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED, "{path}");
        // The scheme name is case-insensitive.
        let shouted = app
            .client
            .get(app.url(path))
            .header("authorization", format!("BEARER {}", crate::helpers::ADMIN_TOKEN))
            .send()
            .await
            .unwrap();
        assert_eq!(shouted.status(), StatusCode::OK, "{path}");
    }
    // The API's description is public, like /healthz.
    let description = app.client.get(app.url("/api/v1/openapi.json")).send().await.unwrap();
    assert_eq!(description.status(), StatusCode::OK);
    app.stop().await;
}

#[tokio::test]
async fn tokens_created_through_the_api_work_and_can_be_revoked() {
    let app = spawn_app().await;
    let created = app.post_admin("/api/v1/tokens", &json!({"name": "ci", "role": "admin"})).await;
    assert_eq!(created.status(), StatusCode::CREATED);
    let created: Value = created.json().await.unwrap();
    let token = created["token"].as_str().unwrap().to_owned();
    let one = app.get_json(&format!("/api/v1/tokens/{}", created["id"].as_str().unwrap())).await;
    assert_eq!(
        (one["id"].clone(), one["name"].clone(), one["role"].clone()),
        (created["id"].clone(), json!("ci"), json!("admin"))
    );
    assert!(one.to_string().find(&token).is_none(), "a token's value is never shown again");
    assert_eq!(app.get_admin("/api/v1/tokens/tok_nope").await.status(), StatusCode::NOT_FOUND);
    let listed = app.get_json("/api/v1/tokens").await;
    assert!(listed.to_string().find(&token).is_none(), "token values are never listed");
    assert_eq!(listed["items"].as_array().unwrap().len(), 2);
    let with_new = app.client.get(app.url("/api/v1/flows")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(with_new.status(), StatusCode::OK);
    let viewer = app.post_admin("/api/v1/tokens", &json!({"name": "viewer", "role": "viewer"})).await;
    let viewer: Value = viewer.json().await.unwrap();
    let as_viewer = |path: &'static str| {
        app.client.get(app.url(path)).bearer_auth(viewer["token"].as_str().unwrap().to_owned()).send()
    };
    // Viewers read transfers, which carry no submitted field, and the configuration (its
    // secrets masked); not leads, events or exports, which hold personal data.
    for path in ["/api/v1/register", "/api/v1/not-integrated", "/api/v1/flows", "/api/v1/config"] {
        assert_eq!(as_viewer(path).await.unwrap().status(), StatusCode::OK, "{path}");
    }
    for path in ["/api/v1/flows/solar/events", "/api/v1/events", "/api/v1/leads", "/api/v1/export", "/api/v1/tokens"] {
        let (status, _) = error_code(as_viewer(path).await.unwrap()).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}");
    }
    let revoked = app.delete_admin(&format!("/api/v1/tokens/{}", created["id"].as_str().unwrap())).await;
    assert_eq!(revoked.status(), StatusCode::NO_CONTENT);
    let after = app.client.get(app.url("/api/v1/flows")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(after.status(), StatusCode::UNAUTHORIZED);
    let bad = app.post_admin("/api/v1/tokens", &json!({"name": "x", "role": "emperor"})).await;
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    // A forgotten role is an error, never every power.
    let no_role = app.post_admin("/api/v1/tokens", &json!({"name": "x"})).await;
    let body: Value = no_role.json().await.unwrap();
    assert!(body["error"]["message"].as_str().unwrap().contains("missing field `role`"), "{body}");
    app.stop().await;
}

#[tokio::test]
async fn viewers_read_the_register_without_the_lead_values_descriptions_quote() {
    let app = spawn_app().await;
    app.apply(&solar_config()).await;
    app.submit("web", &json!({"email": "ny@example.com", "state": "NY"})).await;
    let description = |page: Value| page["items"][0]["description"].as_str().unwrap().to_owned();
    let as_admin = description(app.get_json("/api/v1/register").await);
    assert!(as_admin.contains(r#"(was "NY")"#), "{as_admin}");
    for role in ["viewer", "operator"] {
        let token: Value =
            app.post_admin("/api/v1/tokens", &json!({"name": role, "role": role})).await.json().await.unwrap();
        let token = token["token"].as_str().unwrap();
        let read = app.client.get(app.url("/api/v1/register")).bearer_auth(token).send().await.unwrap();
        let shown = description(read.json().await.unwrap());
        if role == "viewer" {
            assert_eq!(shown, as_admin.replace(r#"(was "NY")"#, "(was ***)"));
        } else {
            assert_eq!(shown, as_admin, "operators see lead values");
        }
    }
    app.stop().await;
}

#[tokio::test]
async fn a_token_can_be_renamed_and_given_another_role_without_changing_its_value() {
    let app = spawn_app().await;
    let created: Value =
        app.post_admin("/api/v1/tokens", &json!({"name": "ops", "role": "operator"})).await.json().await.unwrap();
    let (id, value) = (created["id"].as_str().unwrap().to_owned(), created["token"].as_str().unwrap().to_owned());
    let path = format!("/api/v1/tokens/{id}");
    let as_token = || app.client.get(app.url("/api/v1/tokens")).bearer_auth(&value).send();
    assert_eq!(as_token().await.unwrap().status(), StatusCode::FORBIDDEN, "an operator leaves tokens alone");

    let renamed = app.put_admin(&path, &json!({"name": "night shift"})).await;
    assert_eq!(renamed.status(), StatusCode::OK);
    let renamed: Value = renamed.json().await.unwrap();
    assert_eq!((renamed["name"].clone(), renamed["role"].clone()), (json!("night shift"), json!("operator")));
    assert!(renamed.get("token").is_none(), "the value is never shown again");

    let promoted: Value = app.put_admin(&path, &json!({"name": "lead", "role": "admin"})).await.json().await.unwrap();
    assert_eq!(promoted["role"], "admin");
    assert_eq!(as_token().await.unwrap().status(), StatusCode::OK, "the same value now acts as an admin");
    assert_eq!(app.get_json(&path).await["name"], "lead");

    let missing = app.put_admin("/api/v1/tokens/tok_nope", &json!({"name": "x"})).await;
    assert_eq!(error_code(missing).await, (StatusCode::NOT_FOUND, "token_not_found".to_owned()));
    for bad in [json!({"name": ""}), json!({"name": "x", "role": "emperor"}), json!({"name": "x", "token": "y"})] {
        let refused = app.put_admin(&path, &bad).await;
        assert_eq!(refused.status(), StatusCode::BAD_REQUEST, "{bad}");
    }
    assert_eq!(app.get_json(&path).await["role"], "admin", "refused changes change nothing");
    app.stop().await;
}

#[tokio::test]
async fn a_token_read_can_be_put_back_and_the_only_admin_stays_one() {
    let app = spawn_app().await;
    let listed = app.get_json("/api/v1/tokens").await;
    let mut admin = listed["items"][0].clone();
    let path = format!("/api/v1/tokens/{}", admin["id"].as_str().unwrap());
    admin["name"] = json!("renamed as read");
    let put_back = app.put_admin(&path, &admin).await;
    assert_eq!(put_back.status(), StatusCode::OK, "what GET answers goes back with PUT");
    assert_eq!(app.get_json(&path).await["name"], "renamed as read");
    // A role alone keeps the name.
    assert_eq!(app.put_admin(&path, &json!({"role": "admin"})).await.status(), StatusCode::OK);
    let changed = app.get_json(&path).await;
    assert_eq!((changed["name"].as_str(), changed["role"].as_str()), (Some("renamed as read"), Some("admin")));
    let missing = app.put_admin("/api/v1/tokens/tok_nope", &json!({"role": "operator"})).await;
    assert_eq!(error_code(missing).await.0, StatusCode::NOT_FOUND);
    let moved = app.put_admin(&path, &json!({"id": "tok_other", "name": "x"})).await;
    assert_eq!(error_code(moved).await, (StatusCode::BAD_REQUEST, "id_mismatch".to_owned()));

    // The only admin token can neither be demoted nor revoked: nobody could administer again.
    let demoted = app.put_admin(&path, &json!({"name": "x", "role": "operator"})).await;
    assert_eq!(error_code(demoted).await, (StatusCode::CONFLICT, "conflict".to_owned()));
    let revoked = app.delete_admin(&path).await;
    assert_eq!(error_code(revoked).await, (StatusCode::CONFLICT, "conflict".to_owned()));
    assert_eq!(app.get_json(&path).await["role"], "admin");
    // With a second admin, the first may go.
    let second = app.post_admin("/api/v1/tokens", &json!({"name": "second", "role": "admin"})).await;
    assert_eq!(second.status(), StatusCode::CREATED);
    assert_eq!(app.put_admin(&path, &json!({"name": "x", "role": "viewer"})).await.status(), StatusCode::OK);
    app.stop().await;
}

#[tokio::test]
async fn health_readiness_and_intake_need_no_token() {
    let app = spawn_app().await;
    app.apply(&solar_config()).await;
    assert_eq!(app.client.get(app.url("/healthz")).send().await.unwrap().status(), StatusCode::OK);
    let ready: Value = app.client.get(app.url("/readyz")).send().await.unwrap().json().await.unwrap();
    assert_eq!(ready["status"], "ready");
    let (status, _) = app.submit("web", &json!({"email": "open@example.com", "state": "TX"})).await;
    assert_eq!(status, StatusCode::CREATED);
    let missing = app.client.get(app.url("/nowhere")).send().await.unwrap();
    assert_eq!(error_code(missing).await.0, StatusCode::NOT_FOUND);
    app.stop().await;
}

#[tokio::test]
async fn openapi_document_lists_the_endpoints() {
    let app = spawn_app().await;
    let document = app.get_json("/api/v1/openapi.json").await;
    assert!(document["openapi"].as_str().unwrap().starts_with("3."));
    for path in
        ["/api/v1/sources/{source_id}/submit", "/api/v1/events", "/api/v1/register", "/api/v1/export", "/api/v1/config"]
    {
        assert!(document["paths"].get(path).is_some(), "{path} missing from the OpenAPI document");
    }
    // A lead's timeline documents the log's filters, but not the lead its path names.
    let timeline = &document["paths"]["/api/v1/leads/{lead_id}/events"]["get"]["parameters"];
    let names: Vec<(&str, &str)> = timeline
        .as_array()
        .unwrap()
        .iter()
        .map(|parameter| (parameter["name"].as_str().unwrap(), parameter["in"].as_str().unwrap()))
        .collect();
    for name in
        ["type", "status", "destination_id", "start", "end", "rules", "include", "exclude", "limit", "sort", "cursor"]
    {
        assert!(names.contains(&(name, "query")), "{name} missing from {names:?}");
    }
    assert!(names.contains(&("lead_id", "path")) && !names.contains(&("lead_id", "query")), "{names:?}");
    // Every operation has an operationId of its own; those that need a token say 401 and 403.
    let mut ids = std::collections::HashSet::new();
    for (path, item) in document["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            let id = operation["operationId"].as_str().unwrap_or_else(|| panic!("{method} {path} has no operationId"));
            assert!(ids.insert(id.to_owned()), "operationId {id} twice");
            if operation.get("security").is_none() {
                assert!(operation["responses"].get("401").is_some(), "{method} {path}");
            }
        }
    }
    let submit = &document["paths"]["/api/v1/sources/{source_id}/submit"];
    assert!(submit["get"].get("requestBody").is_none(), "a GET submit has no body");
    assert!(submit["post"]["requestBody"]["content"].get("application/x-www-form-urlencoded").is_some());
    app.stop().await;
}

#[tokio::test]
async fn framework_errors_use_the_error_shape_too() {
    let app = spawn_app().await;
    let wrong_method =
        app.client.delete(app.url("/api/v1/events")).bearer_auth(crate::helpers::ADMIN_TOKEN).send().await.unwrap();
    assert_eq!(error_code(wrong_method).await, (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed".to_owned()));
    let huge = "x".repeat(3 << 20);
    let too_big = app
        .client
        .post(app.url("/api/v1/flows"))
        .bearer_auth(crate::helpers::ADMIN_TOKEN)
        .header("content-type", "application/json")
        .body(huge)
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(too_big).await, (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large".to_owned()));
    app.stop().await;
}

#[tokio::test]
async fn operators_read_and_resend_but_leave_configuration_and_tokens_to_admins() {
    let app = spawn_app().await;
    app.apply(&solar_config()).await;
    let (_, answer) = app.submit("web", &json!({"email": "op@example.com", "state": "TX"})).await;
    let lead_id = answer["lead_id"].as_str().unwrap().to_owned();
    let created = app.post_admin("/api/v1/tokens", &json!({"name": "ops", "role": "operator"})).await;
    let created: Value = created.json().await.unwrap();
    let operator = created["token"].as_str().unwrap().to_owned();
    let get = |path: String| app.client.get(app.url(&path)).bearer_auth(&operator).send();
    for path in [
        "/api/v1/events".to_owned(),
        format!("/api/v1/leads/{lead_id}"),
        format!("/api/v1/leads/{lead_id}/events"),
        "/api/v1/register".to_owned(),
        "/api/v1/not-integrated".to_owned(),
        "/api/v1/flows/solar/events".to_owned(),
        "/api/v1/export?format=ndjson".to_owned(),
    ] {
        assert_eq!(get(path.clone()).await.unwrap().status(), StatusCode::OK, "{path}");
    }
    let refused = get("/api/v1/tokens".to_owned()).await.unwrap();
    assert_eq!(error_code(refused).await, (StatusCode::FORBIDDEN, "forbidden".to_owned()));
    // Operators read the configuration, with its secrets masked.
    for path in ["/api/v1/config", "/api/v1/destinations", "/api/v1/destinations/crm", "/api/v1/flows/solar"] {
        let response = get(path.to_owned()).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        let text = response.text().await.unwrap();
        assert!(!text.contains("whsec_"), "{path}: the signing secret shows: {text}");
    }
    let destination: Value = get("/api/v1/destinations/crm".to_owned()).await.unwrap().json().await.unwrap();
    assert_eq!(destination["signing_secret"], "***");
    let admin_view = app.get_json("/api/v1/destinations/crm").await;
    assert!(admin_view["signing_secret"].as_str().unwrap().starts_with("whsec_"), "admins see it whole");
    let register = app.get_json(&format!("/api/v1/register?lead_id={lead_id}")).await;
    let transfer_id = register["items"][0]["transfer_id"].as_str().unwrap().to_owned();
    let resend = app
        .client
        .post(app.url(&format!("/api/v1/register/{transfer_id}/resend")))
        .bearer_auth(&operator)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_ne!(resend.status(), StatusCode::FORBIDDEN, "operators resend");
    let create =
        app.client.post(app.url("/api/v1/flows")).bearer_auth(&operator).json(&json!({"id": "x"})).send().await;
    assert_eq!(create.unwrap().status(), StatusCode::FORBIDDEN);
    app.stop().await;
}
