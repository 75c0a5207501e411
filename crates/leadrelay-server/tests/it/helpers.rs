//! `spawn_app`: a server on port 0 over its own SQLite file, and a client that speaks to it.

use std::sync::Arc;

use leadrelay_delivery::guard::{EgressPolicy, Lookup};
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

/// An app that takes leads but runs no delivery dispatcher: for tests of intake and reading.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(Settings { dispatch: false, ..Settings::default() }).await
}

/// Names tests may resolve: `*.test` and `localhost` are loopback, nothing else resolves, so
/// no test ever asks a real resolver.
#[derive(Debug)]
pub struct TestNames;

#[async_trait::async_trait]
impl Lookup for TestNames {
    async fn lookup(&self, host: &str) -> std::io::Result<Vec<std::net::IpAddr>> {
        if host == "localhost" || host.ends_with(".test") {
            Ok(vec![std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)])
        } else {
            Err(std::io::Error::new(std::io::ErrorKind::NotFound, format!("{host} is not a test name")))
        }
    }
}

/// An app that delivers, allowed to reach loopback receivers.
pub async fn spawn_delivering_app() -> TestApp {
    spawn_app_with(delivering_settings(EgressPolicy::allow_private())).await
}

pub fn delivering_settings(egress: EgressPolicy) -> Settings {
    // Tests stop servers with deliveries still in flight (to slow receivers): release them soon.
    let delivery = leadrelay_delivery::DeliverySettings { drain_timeout: std::time::Duration::from_millis(500) };
    Settings { egress, lookup: Arc::new(TestNames), delivery, ..Settings::default() }
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
    /// The lead a submit answer names, as `GET /api/v1/leads/{id}` answers it.
    pub async fn lead_of(&self, answer: &Value) -> Value {
        self.get_json(&format!("/api/v1/leads/{}", answer["lead_id"].as_str().expect("a lead id"))).await
    }

    /// Posts a body as written, with its content type, to a source.
    pub async fn submit_raw(&self, source: &str, content_type: &str, body: impl Into<reqwest::Body>) -> Response {
        self.client
            .post(self.url(&format!("/api/v1/sources/{source}/submit")))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .expect("request")
    }

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

    /// The register row of a transfer.
    pub async fn transfer(&self, lead_id: &str, destination_id: &str) -> Value {
        let page = self.get_json(&format!("/api/v1/register?lead_id={lead_id}&destination_id={destination_id}")).await;
        page["items"][0].clone()
    }

    /// Waits until the lead's timeline has an event of type `last`, then returns its types.
    /// Deliveries happen in the background, so the test looks again until they are recorded.
    pub async fn timeline_until(&self, lead_id: &str, last: &str) -> Vec<String> {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let types = self.timeline_types(lead_id).await;
            if types.iter().any(|kind| kind == last) {
                return types;
            }
            assert!(tokio::time::Instant::now() < deadline, "no {last} for {lead_id}; timeline so far: {types:?}");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
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
