//! What each format puts on the wire: form bodies with auth, query strings, and lists and maps
//! of a submission sent as each format writes them.

use serde_json::json;

use crate::delivery::{config, submit, webhook};
use crate::helpers::spawn_delivering_app;
use crate::receiver::{Receiver, Reply};

#[tokio::test]
async fn form_format_and_basic_auth_reach_the_receiver() {
    let receiver = Receiver::start(vec![Reply::status(200)]).await;
    let app = spawn_delivering_app().await;
    app.apply(&config(json!([webhook(
        "crm",
        &receiver,
        json!({"format": "form", "auth": {"type": "basic", "username": "u", "password": "secret"}})
    )])))
    .await;
    let lead_id = submit(&app, "form@example.com").await;
    app.timeline_until(&lead_id, "recipient.delivered").await;
    let request = &receiver.received()[0];
    assert_eq!(std::str::from_utf8(&request.body).unwrap(), "email=form%40example.com&state=TX");
    assert_eq!(request.header("authorization"), Some("Basic dTpzZWNyZXQ="));
    // The recorded request never shows the credentials.
    let delivered = app.timeline(&lead_id).await.into_iter().find(|e| e["type"] == "recipient.delivered").unwrap();
    assert_eq!(delivered["data"]["request"]["headers"]["Authorization"], "***");
    app.stop().await;
}

#[tokio::test]
async fn query_format_sends_the_fields_in_the_url() {
    let receiver = Receiver::start(vec![Reply::status(200)]).await;
    let app = spawn_delivering_app().await;
    let mut destination = webhook("crm", &receiver, json!({"format": "query", "method": "GET"}));
    destination["url"] = json!(receiver.url("/in?campaign=7"));
    app.apply(&config(json!([destination]))).await;
    let lead_id = submit(&app, "query@example.com").await;
    app.timeline_until(&lead_id, "recipient.delivered").await;
    let request = &receiver.received()[0];
    assert_eq!(request.method, axum::http::Method::GET);
    assert_eq!(request.uri.to_string(), "/in?campaign=7&email=query%40example.com&state=TX");
    assert!(request.body.is_empty());
    // Posted, the fields still travel in the URL, and the empty body says its length once.
    let mut posted = webhook("crm", &receiver, json!({"format": "query"}));
    posted["url"] = json!(receiver.url("/posted"));
    app.apply(&config(json!([posted]))).await;
    let lead_id = submit(&app, "posted@example.com").await;
    app.timeline_until(&lead_id, "recipient.delivered").await;
    let request = receiver.received().into_iter().find(|r| r.uri.path() == "/posted").unwrap();
    assert_eq!(request.method, axum::http::Method::POST);
    assert_eq!(request.headers.get_all("content-length").iter().collect::<Vec<_>>(), ["0"]);
    app.stop().await;
}

#[tokio::test]
async fn lists_and_maps_reach_each_format_as_it_writes_them() {
    let receiver = Receiver::start(vec![Reply::status(200)]).await;
    let app = spawn_delivering_app().await;
    let mut query = webhook("by-query", &receiver, json!({"format": "query", "method": "GET"}));
    query["url"] = json!(receiver.url("/query"));
    let mut xml = webhook("by-xml", &receiver, json!({"format": "xml"}));
    xml["url"] = json!(receiver.url("/xml"));
    let mut form = webhook("by-form", &receiver, json!({"format": "form"}));
    form["url"] = json!(receiver.url("/form"));
    let template =
        r#"{"tags": {{ lead.tags | tojson }}, "first": "{{ lead.tags[0] }}", "q1": "{{ lead.answers.q1 }}"}"#;
    let mut templated = webhook("by-template", &receiver, json!({"body_template": template}));
    templated["url"] = json!(receiver.url("/template"));
    let mut plain = webhook("by-json", &receiver, json!({}));
    plain["url"] = json!(receiver.url("/json"));
    app.apply(&config(json!([plain, form, query, xml, templated]))).await;

    let submission =
        json!({"email": "list@example.com", "state": "TX", "tags": ["a,b", "c", ""], "answers": {"q1": "yes"}});
    let (status, answer) = app.submit("web", &submission).await;
    assert_eq!(status, 201, "{answer}");
    let lead_id = answer["lead_id"].as_str().unwrap();
    let received = receiver.wait_for(5).await;
    let at = |path: &str| received.iter().find(|r| r.uri.path() == path).unwrap_or_else(|| panic!("no {path}"));

    let body = at("/json").json();
    assert_eq!(body["tags"], json!(["a,b", "c"]), "a list stays a list, blank items dropped");
    assert_eq!(body["answers"], json!({"q1": "yes"}));
    assert_eq!(
        std::str::from_utf8(&at("/form").body).unwrap(),
        "email=list%40example.com&state=TX&tags=a%2Cb&tags=c&answers=%7B%22q1%22%3A%22yes%22%7D"
    );
    assert_eq!(
        at("/query").uri.query(),
        Some("email=list%40example.com&state=TX&tags=a%2Cb&tags=c&answers=%7B%22q1%22%3A%22yes%22%7D")
    );
    let document = std::str::from_utf8(&at("/xml").body).unwrap().to_owned();
    assert!(document.contains("<tags>a,b</tags><tags>c</tags><answers><q1>yes</q1></answers>"), "{document}");
    assert_eq!(at("/template").json(), json!({"tags": ["a,b", "c"], "first": "a,b", "q1": "yes"}));

    // The lead keeps the list as it came and as it reads, and rules see its items.
    let lead = app.get_json(&format!("/api/v1/leads/{lead_id}")).await;
    assert_eq!(lead["tags"]["raw"], json!(["a,b", "c", ""]));
    assert_eq!(lead["tags"]["value"], json!(["a,b", "c"]));
    assert_eq!(lead["tags"]["valid"], true);
    let rules =
        serde_json::to_string(&json!({"all": [{"field": "lead.tags", "op": "contains", "value": "c"}]})).unwrap();
    let query = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("rules", &rules)
        .append_pair("type", "source.accepted")
        .finish();
    let matched = app.get_json(&format!("/api/v1/events?{query}")).await;
    assert_eq!(matched["items"].as_array().unwrap().len(), 1, "{matched}");
    app.stop().await;
}
