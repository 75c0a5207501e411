//! Crash safety: the real binary takes concurrent submissions, is killed with SIGKILL, and
//! restarts; every lead it answered 2xx is there with its whole timeline, and the chain verifies.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};

use crate::process::{run, write_config, Server, ADMIN_TOKEN, CONFIG};

/// Acknowledged leads after which the server is killed, mid-stream.
const KILL_AFTER: usize = 400;
const CLIENTS: usize = 16;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_lead_survives_sigkill_with_its_timeline() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), CONFIG);
    assert!(run(dir.path(), &["apply", path.to_str().unwrap()]).status.success());

    let server = Server::start(dir.path());
    let acknowledged: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let counter = Arc::new(AtomicUsize::new(0));
    let enough = Arc::new(tokio::sync::Notify::new());
    let (killed_tx, killed_rx) = tokio::sync::watch::channel(false);
    let client = reqwest::Client::new();
    let mut tasks = Vec::new();
    for worker in 0..CLIENTS {
        let client = client.clone();
        let url = server.url("/api/v1/sources/web/submit");
        let acknowledged = acknowledged.clone();
        let counter = counter.clone();
        let enough = enough.clone();
        let killed = killed_rx.clone();
        tasks.push(tokio::spawn(async move {
            // Bounded: stops at the kill, or after a fixed number of requests.
            for i in 0..2_000 {
                if *killed.borrow() {
                    break;
                }
                let state = if i % 3 == 0 { "NY" } else { "TX" };
                let response = client
                    .post(&url)
                    .json(&json!({"email": format!("w{worker}-{i}@example.com"), "state": state}))
                    .send()
                    .await;
                let Ok(response) = response else { break };
                if !response.status().is_success() {
                    continue;
                }
                // A 2xx whose body was cut by the kill is still an acknowledgement we cannot
                // read; count only complete answers.
                let Ok(body) = response.json::<Value>().await else { break };
                let lead_id = body["lead_id"].as_str().unwrap().to_owned();
                let outcome = body["outcome"].as_str().unwrap().to_owned();
                acknowledged.lock().unwrap().push((lead_id, outcome));
                if counter.fetch_add(1, Ordering::SeqCst) + 1 == KILL_AFTER {
                    enough.notify_one();
                }
            }
        }));
    }
    // Kill once enough answers are in, while the clients keep submitting.
    enough.notified().await;
    server.kill();
    killed_tx.send(true).unwrap();
    for task in tasks {
        task.await.unwrap();
    }
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(acknowledged.len() >= KILL_AFTER);

    let server = Server::start(dir.path());
    let client = reqwest::Client::new();
    let get = |path: String| {
        let request = client.get(server.url(&path)).bearer_auth(ADMIN_TOKEN);
        async move {
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), 200, "GET {path}");
            response.json::<Value>().await.unwrap()
        }
    };
    for (lead_id, outcome) in &acknowledged {
        // A 404 here would be an acknowledged lead lost.
        let lead = get(format!("/api/v1/leads/{lead_id}")).await;
        assert_eq!(lead["outcome"], outcome.as_str());
        let timeline = get(format!("/api/v1/leads/{lead_id}/events")).await;
        let types: Vec<&str> =
            timeline["items"].as_array().unwrap().iter().map(|e| e["type"].as_str().unwrap()).collect();
        assert_eq!(types.first(), Some(&"source.submitted"), "{lead_id}: {types:?}");
        assert_eq!(types.last(), Some(&"flow.completed"), "{lead_id}: {types:?}");
        // submitted, accepted, filter passed or failed, completed.
        assert_eq!(types.len(), 4, "{lead_id}: {types:?}");
    }
    let register = get("/api/v1/register?limit=1000".to_owned()).await;
    assert!(!register["items"].as_array().unwrap().is_empty());
    server.kill();

    let verify = run(dir.path(), &["verify"]);
    assert!(verify.status.success(), "{}", String::from_utf8_lossy(&verify.stdout));
}
