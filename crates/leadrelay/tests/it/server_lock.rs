//! One server per SQLite file: commands run beside a running server (`verify`, `events`,
//! `apply`, `token create`, a second `serve`) never make its deliveries in flight due again,
//! and a second server on the file is refused by name.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::HeaderMap;
use serde_json::json;
use tokio::sync::Notify;

use crate::process::{one_destination_config, run, write_config, Server};

/// A receiver that holds the first request it gets until `release`, and answers every other
/// one at once.
struct GatedReceiver {
    address: String,
    webhook_ids: Arc<Mutex<Vec<String>>>,
    arrived: Arc<Notify>,
    gate: Arc<Notify>,
}

type GateState = (Arc<Mutex<Vec<String>>>, Arc<Notify>, Arc<Notify>);

impl GatedReceiver {
    async fn start() -> Self {
        let webhook_ids: Arc<Mutex<Vec<String>>> = Arc::default();
        let arrived = Arc::new(Notify::new());
        let gate = Arc::new(Notify::new());
        let state = (webhook_ids.clone(), arrived.clone(), gate.clone());
        let app = axum::Router::new().fallback(
            |axum::extract::State((ids, arrived, gate)): axum::extract::State<GateState>, headers: HeaderMap| async move {
                let id = headers.get("webhook-id").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
                let first = {
                    let mut ids = ids.lock().unwrap();
                    ids.push(id);
                    ids.len() == 1
                };
                arrived.notify_waiters();
                if first {
                    gate.notified().await;
                }
                "ok"
            },
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app.with_state(state)).await });
        Self { address, webhook_ids, arrived, gate }
    }

    fn received(&self) -> Vec<String> {
        self.webhook_ids.lock().unwrap().clone()
    }

    async fn wait_for(&self, count: usize) {
        let wait = async {
            loop {
                let notified = self.arrived.notified();
                if self.received().len() >= count {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(Duration::from_secs(60), wait)
            .await
            .unwrap_or_else(|_| panic!("only {} of {count} requests arrived", self.received().len()));
    }

    fn release(&self) {
        self.gate.notify_one();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_run_beside_a_server_never_make_it_deliver_twice() {
    let receiver = GatedReceiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = one_destination_config(&receiver.address, "timeout_ms: 60000");
    let path = write_config(dir.path(), &config);
    assert!(run(dir.path(), &["apply", path.to_str().unwrap()]).status.success());
    let server = Server::start_with(dir.path(), &["--allow-private-destinations"]);
    let client = reqwest::Client::new();
    let submit =
        |email: &str| client.post(server.url("/api/v1/sources/web/submit")).json(&json!({ "email": email })).send();
    assert_eq!(submit("first@example.com").await.unwrap().status(), 201);
    // The first delivery is in flight, held by the receiver, while commands run on the file.
    receiver.wait_for(1).await;
    for args in [
        vec!["verify"],
        vec!["events", "--limit", "5"],
        vec!["export", "--format", "csv"],
        vec!["apply", path.to_str().unwrap()],
        vec!["token", "create", "--name", "beside"],
    ] {
        let output = run(dir.path(), &args);
        assert!(output.status.success(), "{args:?}: {}", String::from_utf8_lossy(&output.stderr));
    }
    // A second server on the same file is refused, and says why.
    let second = run(dir.path(), &["serve", "--listen", "127.0.0.1:0"]);
    assert!(!second.status.success());
    let message = String::from_utf8_lossy(&second.stderr);
    assert!(message.contains("another leadrelay server is using"), "{message}");

    // A new lead wakes the server's dispatcher: had anything made the held transfer due
    // again, this claim would send it a second time beside the new one.
    assert_eq!(submit("second@example.com").await.unwrap().status(), 201);
    receiver.wait_for(2).await;
    receiver.release();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let page = server.get_json(&client, "/api/v1/register?status=success").await;
        if page["items"].as_array().unwrap().len() == 2 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the two transfers were not both delivered: {page}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let received = receiver.received();
    assert_eq!(received.len(), 2, "each transfer is sent once: {received:?}");
    assert_ne!(received[0], received[1]);
    let delivered = server.get_json(&client, "/api/v1/events?type=recipient.delivered").await;
    assert_eq!(delivered["items"].as_array().unwrap().len(), 2, "{delivered}");
    assert!(server.terminate().success());

    // Once the server is gone, the file is free for the next one.
    let next = Server::start(dir.path());
    assert!(next.terminate().success());
}
