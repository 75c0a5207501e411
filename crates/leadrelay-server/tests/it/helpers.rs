//! `spawn_app`: a server on port 0 over its own SQLite file, and a client that speaks to it.

use std::sync::Arc;

use leadrelay_domain::ids::TokenId;
use leadrelay_server::{hash_token, AppState, Settings};
use leadrelay_store::{NewToken, Role, Store};
use leadrelay_store_sqlite::{SqliteOptions, SqliteStore};
use reqwest::{Response, StatusCode};
use serde_json::{json, Value};

pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

pub struct TestApp {
    pub address: String,
    pub client: reqwest::Client,
    pub store: Arc<dyn Store>,
    /// Holds the database file for as long as the app lives.
    _dir: tempfile::TempDir,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<()>>,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(Settings::default()).await
}

pub async fn spawn_app_with(settings: Settings) -> TestApp {
    let dir = tempfile::tempdir().expect("temporary directory");
    let url = format!("sqlite://{}", dir.path().join("test.db").display());
    let store: Arc<dyn Store> = SqliteStore::open(&url, SqliteOptions::default()).await.expect("open store");
    store
        .create_token(NewToken {
            id: TokenId::generate().into_string(),
            name: "test".into(),
            role: Role::Admin,
            hash: hash_token(ADMIN_TOKEN),
            created_at: 0,
        })
        .await
        .expect("admin token");
    let state = AppState::new(store.clone(), settings).await.expect("state");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = format!("http://{}", listener.local_addr().expect("address"));
    let (shutdown, stop) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        leadrelay_server::serve(listener, state, async move {
            let _ = stop.await;
        })
        .await
        .expect("server");
    });
    TestApp {
        address,
        client: reqwest::Client::new(),
        store,
        _dir: dir,
        shutdown: Some(shutdown),
        server: Some(server),
    }
}

/// A flow `solar` with a source `web` and a destination `crm`, as most tests need.
pub fn solar_config() -> Value {
    json!({
        "flows": [{
            "id": "solar", "name": "Solar quotes",
            "fields": [
                {"name": "email", "type": "email", "pii": true},
                {"name": "phone", "type": "phone", "pii": true},
                {"name": "first_name", "type": "name"},
                {"name": "state", "type": "state", "required": true}
            ],
            "require_contact": true,
            "duplicates": {"keys": ["email", "phone"], "match": "any", "window_days": 30, "policy": "reject"},
            "filters": [{"name": "geo", "rules": {"all": [{"field": "state", "op": "in", "value": ["TX", "CA"]}]}}],
            "destinations": ["crm"]
        }],
        "sources": [{"id": "web", "name": "Web", "flow_id": "solar", "kind": "web_form", "price": 2.5,
                     "field_map": {"e-mail": "email"}}],
        "destinations": [{"id": "crm", "name": "Main CRM", "kind": "webhook", "url": "https://crm.example.com/leads"}]
    })
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    pub async fn apply(&self, config: &Value) {
        let response = self.post_admin("/api/v1/config", config).await;
        assert_eq!(response.status(), StatusCode::OK, "apply failed: {}", response.text().await.unwrap_or_default());
    }

    pub async fn get_admin(&self, path: &str) -> Response {
        self.client.get(self.url(path)).bearer_auth(ADMIN_TOKEN).send().await.expect("request")
    }

    pub async fn get_json(&self, path: &str) -> Value {
        let response = self.get_admin(path).await;
        let status = response.status();
        let body = response.text().await.expect("body");
        assert_eq!(status, StatusCode::OK, "GET {path} answered {status}: {body}");
        serde_json::from_str(&body).expect("json")
    }

    pub async fn post_admin(&self, path: &str, body: &Value) -> Response {
        self.client.post(self.url(path)).bearer_auth(ADMIN_TOKEN).json(body).send().await.expect("request")
    }

    pub async fn put_admin(&self, path: &str, body: &Value) -> Response {
        self.client.put(self.url(path)).bearer_auth(ADMIN_TOKEN).json(body).send().await.expect("request")
    }

    pub async fn delete_admin(&self, path: &str) -> Response {
        self.client.delete(self.url(path)).bearer_auth(ADMIN_TOKEN).send().await.expect("request")
    }

    /// Submits JSON fields to a source and returns the status and the answer.
    pub async fn submit(&self, source: &str, fields: &Value) -> (StatusCode, Value) {
        let response = self
            .client
            .post(self.url(&format!("/api/v1/sources/{source}/submit")))
            .json(fields)
            .send()
            .await
            .expect("request");
        let status = response.status();
        (status, response.json().await.expect("json answer"))
    }

    /// The timeline of a lead: its event types, oldest first.
    pub async fn timeline(&self, lead_id: &str) -> Vec<Value> {
        let page = self.get_json(&format!("/api/v1/leads/{lead_id}/events")).await;
        page["items"].as_array().expect("items").clone()
    }

    pub async fn timeline_types(&self, lead_id: &str) -> Vec<String> {
        self.timeline(lead_id).await.iter().map(|event| event["type"].as_str().unwrap_or_default().to_owned()).collect()
    }

    pub async fn stop(mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(server) = self.server.take() {
            let _ = server.await;
        }
        self.store.close().await;
    }
}

/// The error code of an error answer.
pub async fn error_code(response: Response) -> (StatusCode, String) {
    let status = response.status();
    let body: Value = response.json().await.expect("error body is JSON");
    let code = body["error"]["code"].as_str().expect("error.code").to_owned();
    assert!(body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "error.message missing: {body}");
    (status, code)
}
