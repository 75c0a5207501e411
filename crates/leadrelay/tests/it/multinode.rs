//! Several nodes on one PostgreSQL database: three `serve` processes share intake and
//! delivery; one is killed with SIGKILL mid-run. Every acknowledged lead is stored once, every
//! transfer is delivered, a transfer reaches the receiver more than once only under its one
//! `webhook-id`, and the chain verifies.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::HeaderMap;
use futures::StreamExt;
use leadrelay_store_conformance::postgres::TestDatabase;
use serde_json::{json, Value};
use tokio::sync::Notify;

use crate::process::{one_destination_config, run_on, write_config, Server, ADMIN_TOKEN};

const FIRST_WAVE: usize = 600;
const SECOND_WAVE: usize = 1400;

/// What arrived: the webhook ids each lead (by email) came under, and a signal per arrival.
#[derive(Clone, Default)]
struct Arrivals {
    by_email: Arc<Mutex<HashMap<String, Vec<String>>>>,
    arrived: Arc<Notify>,
}

impl Arrivals {
    fn distinct_emails(&self) -> usize {
        self.by_email.lock().unwrap().len()
    }

    async fn wait_for(&self, count: usize, within: Duration) {
        let wait = async {
            loop {
                let notified = self.arrived.notified();
                if self.distinct_emails() >= count {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(within, wait)
            .await
            .unwrap_or_else(|_| panic!("only {} of {count} leads arrived", self.distinct_emails()));
    }
}

/// A receiver that answers after a few milliseconds, so that deliveries are in flight when a
/// node dies.
async fn receiver(arrivals: Arrivals) -> String {
    let app = axum::Router::new().fallback(
        |axum::extract::State(arrivals): axum::extract::State<Arrivals>, headers: HeaderMap, body: String| async move {
            let id = headers.get("webhook-id").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
            let lead: Value = serde_json::from_str(&body).unwrap_or_default();
            let email = lead["email"].as_str().unwrap_or_default().to_owned();
            arrivals.by_email.lock().unwrap().entry(email).or_default().push(id);
            arrivals.arrived.notify_waiters();
            tokio::time::sleep(Duration::from_millis(5)).await;
            "ok"
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app.with_state(arrivals)).await });
    address
}

/// Submits leads `range` round-robin to `nodes`, 16 at a time; returns the lead ids answered 201.
async fn submit(client: &reqwest::Client, nodes: &[String], range: std::ops::Range<usize>) -> Vec<String> {
    futures::stream::iter(range)
        .map(|index| {
            let url = format!("{}/api/v1/sources/web/submit", nodes[index % nodes.len()]);
            let client = client.clone();
            async move {
                let response =
                    client.post(url).json(&json!({"email": format!("m{index}@example.com")})).send().await.ok()?;
                if response.status() != 201 {
                    return None;
                }
                let answer: Value = response.json().await.ok()?;
                answer["lead_id"].as_str().map(str::to_owned)
            }
        })
        .buffer_unordered(16)
        .filter_map(|id| async move { id })
        .collect()
        .await
}

/// Every item of a paged collection, following `next_cursor`.
async fn all_items(client: &reqwest::Client, base: &str, path: &str) -> Vec<Value> {
    let mut items = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut url = format!("{base}{path}?limit=1000");
        if let Some(cursor) = &cursor {
            url.push_str(&format!("&cursor={cursor}"));
        }
        let page: Value = client.get(url).bearer_auth(ADMIN_TOKEN).send().await.unwrap().json().await.unwrap();
        items.extend(page["items"].as_array().unwrap().iter().cloned());
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return items,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_share_the_work_and_survive_losing_one() {
    let database = TestDatabase::create().await;
    let arrivals = Arrivals::default();
    let address = receiver(arrivals.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let config =
        one_destination_config(&address, "concurrency: 4, timeout_ms: 2000, retry: {schedule_ms: [50], jitter: 0}");
    let path = write_config(dir.path(), &config);
    let applied = run_on(&database.url, dir.path(), &["apply", path.to_str().unwrap()]);
    assert!(applied.status.success(), "{}", String::from_utf8_lossy(&applied.stderr));

    let flags = ["--allow-private-destinations"];
    let nodes: Vec<Server> = (0..3).map(|_| Server::start_on(&database.url, dir.path(), &flags)).collect();
    let addresses: Vec<String> = nodes.iter().map(|node| node.address.clone()).collect();
    let client = reqwest::Client::new();

    let mut acknowledged = submit(&client, &addresses, 0..FIRST_WAVE).await;
    assert_eq!(acknowledged.len(), FIRST_WAVE, "every node took its share");
    // Kill the second node while it holds deliveries.
    arrivals.wait_for(FIRST_WAVE / 10, Duration::from_secs(60)).await;
    let mut nodes = nodes.into_iter();
    let (first, killed, third) = (nodes.next().unwrap(), nodes.next().unwrap(), nodes.next().unwrap());
    killed.kill();
    assert!(
        arrivals.distinct_emails() < FIRST_WAVE,
        "every delivery finished before the kill; the test proves nothing"
    );
    let survivors = [first.address.clone(), third.address.clone()];
    acknowledged.extend(submit(&client, &survivors, FIRST_WAVE..FIRST_WAVE + SECOND_WAVE).await);
    assert_eq!(acknowledged.len(), FIRST_WAVE + SECOND_WAVE);

    // The dead node's leases run out (timeout + 30 s) and the survivors deliver its transfers.
    arrivals.wait_for(acknowledged.len(), Duration::from_secs(120)).await;

    // Every acknowledged lead is stored once.
    let leads = all_items(&client, &first.address, "/api/v1/leads").await;
    let stored: Vec<&str> = leads.iter().map(|lead| lead["id"].as_str().unwrap()).collect();
    let distinct: HashSet<&str> = stored.iter().copied().collect();
    assert_eq!(stored.len(), distinct.len(), "a lead is listed twice");
    assert_eq!(distinct, acknowledged.iter().map(String::as_str).collect::<HashSet<_>>());

    // Every transfer ends delivered in the register (the records of the last deliveries may
    // still be on their way to the database).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let register = all_items(&client, &first.address, "/api/v1/register").await;
        let delivered = register.iter().filter(|row| row["status"] == "success").count();
        if delivered == acknowledged.len() {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{delivered} of {} delivered", acknowledged.len());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A lead that arrived twice came under one webhook id: its transfer was redelivered, not
    // duplicated; only the dead node's deliveries in flight may arrive twice.
    let by_email = arrivals.by_email.lock().unwrap().clone();
    let mut repeated = 0;
    for (email, ids) in &by_email {
        let distinct: HashSet<&String> = ids.iter().collect();
        assert_eq!(distinct.len(), 1, "{email} arrived under several webhook ids: {ids:?}");
        repeated += usize::from(ids.len() > 1);
    }
    assert!(repeated <= 64, "{repeated} transfers arrived twice; only the dead node's in-flight ones may");

    for node in [first, third] {
        assert!(node.terminate().success());
    }
    let verify = run_on(&database.url, dir.path(), &["verify"]);
    assert!(verify.status.success(), "{}", String::from_utf8_lossy(&verify.stdout));
    database.drop().await;
}

/// A configuration change made through one node is in force on the others at once: they hear
/// it (`LISTEN`/`NOTIFY`) and load it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_made_on_one_node_is_in_force_on_the_others() {
    let database = TestDatabase::create().await;
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), crate::process::CONFIG);
    let applied = run_on(&database.url, dir.path(), &["apply", path.to_str().unwrap()]);
    assert!(applied.status.success(), "{}", String::from_utf8_lossy(&applied.stderr));
    let first = Server::start_on(&database.url, dir.path(), &[]);
    let second = Server::start_on(&database.url, dir.path(), &[]);
    let client = reqwest::Client::new();
    let submit = |server: &Server| {
        client
            .post(server.url("/api/v1/sources/partner/submit"))
            .json(&json!({"email": "jo@example.com", "state": "TX"}))
            .send()
    };
    assert_eq!(submit(&second).await.unwrap().status(), 404, "no such source yet");

    let created = client
        .post(first.url("/api/v1/sources"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"id": "partner", "flow_id": "solar"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201, "{}", created.text().await.unwrap());
    // The second node never saw the request; it takes the new source once it has heard.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let status = submit(&second).await.unwrap().status();
        if status == 201 {
            break;
        }
        assert_eq!(status, 404);
        assert!(tokio::time::Instant::now() < deadline, "the second node never took the new source");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for node in [first, second] {
        assert!(node.terminate().success());
    }
    database.drop().await;
}
