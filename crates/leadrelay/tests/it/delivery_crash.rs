//! Delivery survives SIGKILL: the binary is killed while deliveries are queued and in flight;
//! after a restart every transfer is delivered (at least once), none is lost.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::HeaderMap;
use serde_json::{json, Value};
use tokio::sync::Notify;

use crate::process::{one_destination_config, run, write_config, Server};

const LEADS: usize = 150;

/// The webhook ids received, and a signal for each arrival.
type ReceiverState = (Arc<Mutex<Vec<String>>>, Arc<Notify>);

/// A receiver that takes a while to answer, so that deliveries are in flight at the kill.
struct SlowReceiver {
    address: String,
    webhook_ids: Arc<Mutex<Vec<String>>>,
    arrived: Arc<Notify>,
}

impl SlowReceiver {
    async fn start() -> Self {
        let webhook_ids: Arc<Mutex<Vec<String>>> = Arc::default();
        let arrived = Arc::new(Notify::new());
        let state = (webhook_ids.clone(), arrived.clone());
        let app = axum::Router::new().fallback(
            |axum::extract::State((ids, arrived)): axum::extract::State<ReceiverState>, headers: HeaderMap| async move {
                let id = headers.get("webhook-id").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
                ids.lock().unwrap().push(id);
                arrived.notify_waiters();
                tokio::time::sleep(Duration::from_millis(20)).await;
                "ok"
            },
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app.with_state(state)).await });
        Self { address, webhook_ids, arrived }
    }

    fn distinct(&self) -> HashSet<String> {
        self.webhook_ids.lock().unwrap().iter().cloned().collect()
    }

    /// Waits until `count` distinct transfers have arrived.
    async fn wait_for_distinct(&self, count: usize) {
        let wait = async {
            loop {
                let notified = self.arrived.notified();
                if self.distinct().len() >= count {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(Duration::from_secs(60), wait)
            .await
            .unwrap_or_else(|_| panic!("only {} of {count} transfers arrived", self.distinct().len()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_queued_delivery_arrives_after_a_sigkill() {
    let receiver = SlowReceiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = one_destination_config(&receiver.address, "concurrency: 4, retry: {schedule_ms: [50], jitter: 0}");
    let path = write_config(dir.path(), &config);
    assert!(run(dir.path(), &["apply", path.to_str().unwrap()]).status.success());

    let server = Server::start_with(dir.path(), &["--allow-private-destinations"]);
    let client = reqwest::Client::new();
    let mut leads = Vec::new();
    for index in 0..LEADS {
        let response = client
            .post(server.url("/api/v1/sources/web/submit"))
            .json(&json!({"email": format!("k{index}@example.com")}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
        leads.push(response.json::<Value>().await.unwrap()["lead_id"].as_str().unwrap().to_owned());
    }
    // Four deliveries at a time, 20 ms each: most are still queued when some have arrived.
    receiver.wait_for_distinct(10).await;
    server.kill();
    let before_restart = receiver.distinct().len();
    assert!(before_restart < LEADS, "every delivery finished before the kill; the test proves nothing");

    let server = Server::start_with(dir.path(), &["--allow-private-destinations"]);
    receiver.wait_for_distinct(LEADS).await;
    // Every transfer ends delivered in the register.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let page = server.get_json(&client, "/api/v1/register?status=success&limit=1000").await;
        let delivered = page["items"].as_array().unwrap().len();
        if delivered == LEADS {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{delivered} of {LEADS} transfers delivered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // And every lead's timeline says so.
    for lead_id in &leads {
        let page = server.get_json(&client, &format!("/api/v1/leads/{lead_id}/events")).await;
        let types: Vec<&str> = page["items"].as_array().unwrap().iter().map(|e| e["type"].as_str().unwrap()).collect();
        assert!(types.contains(&"recipient.delivered"), "{lead_id}: {types:?}");
    }
    let status = server.terminate();
    assert!(status.success());
    let verify = run(dir.path(), &["verify"]);
    assert!(verify.status.success(), "{}", String::from_utf8_lossy(&verify.stdout));
}
