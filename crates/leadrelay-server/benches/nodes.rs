//! One node and two nodes on PostgreSQL beside one node on SQLite, in one run: durable ingest
//! through HTTP (the ingest benchmark's full pipeline) and then background delivery of every
//! lead to a fast local receiver. Two nodes are two servers in this process, each with its
//! own store (connections, writer, dispatcher) on the one database, as two processes would be.
//!
//! `cargo bench -p leadrelay-server --bench nodes` (`NODES_LEADS`, `NODES_CONCURRENCY`; the
//! PostgreSQL server of `LEADRELAY_TEST_POSTGRES_URL`, by default the local one).

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{env_number, load, serve, Figures};
use leadrelay_delivery::guard::EgressPolicy;
use leadrelay_domain::config::{parse_value, ConfigChange};
use leadrelay_server::{AppState, Settings};
use leadrelay_store::Store;
use leadrelay_store_conformance::postgres::TestDatabase;
use leadrelay_store_postgres::{PostgresOptions, PostgresStore};
use leadrelay_store_sqlite::{SqliteOptions, SqliteStore};
use serde_json::{json, Value};

fn config(receiver: &str) -> Value {
    json!({
        "flows": [{
            "id": "solar",
            "fields": [
                {"name": "email", "type": "email"}, {"name": "phone", "type": "phone"},
                {"name": "first_name", "type": "name"}, {"name": "state", "type": "state", "required": true}
            ],
            "duplicates": {"keys": ["email"], "window_days": 30, "policy": "reject"},
            "destinations": ["crm"]
        }],
        "sources": [{"id": "web", "flow_id": "solar", "price": 2.5}],
        "destinations": [{"id": "crm", "url": format!("{receiver}/leads"), "concurrency": 128, "timeout_ms": 10_000}]
    })
}

/// A receiver on 127.0.0.1 that answers at once, counting requests.
async fn receiver() -> (String, Arc<AtomicUsize>) {
    let count = Arc::new(AtomicUsize::new(0));
    let counter = count.clone();
    let app = axum::Router::new().fallback(move || {
        let counter = counter.clone();
        async move {
            counter.fetch_add(1, Ordering::Relaxed);
            "{\"accepted\":true}"
        }
    });
    (serve(app).await, count)
}

/// The servers of one setup: their stores and their states.
struct Nodes {
    stores: Vec<Arc<dyn Store>>,
    states: Vec<Arc<AppState>>,
    urls: Vec<String>,
}

async fn start(stores: Vec<Arc<dyn Store>>) -> Nodes {
    let mut states = Vec::new();
    let mut urls = Vec::new();
    for store in &stores {
        let settings = Settings { egress: EgressPolicy::allow_private(), dispatch: false, ..Settings::default() };
        let state = AppState::new(store.clone(), settings).await.expect("state");
        urls.push(format!("{}/api/v1/sources/web/submit", serve(leadrelay_server::router(state.clone())).await));
        states.push(state);
    }
    Nodes { stores, states, urls }
}

/// Runs every node's dispatcher until the receiver has `expected` requests and nothing waits.
async fn deliver_all(nodes: &Nodes, expected: usize, count: &AtomicUsize) -> Duration {
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let start = Instant::now();
    let runners: Vec<_> = nodes
        .states
        .iter()
        .map(|state| {
            let mut stopped = stopped.clone();
            tokio::spawn(state.delivery.clone().run(async move {
                let _ = stopped.wait_for(|stopped| *stopped).await;
            }))
        })
        .collect();
    loop {
        tokio::time::sleep(Duration::from_millis(10)).await;
        if count.load(Ordering::Relaxed) >= expected && nodes.stores[0].next_due("crm").await.expect("due").is_none() {
            break;
        }
    }
    let elapsed = start.elapsed();
    let _ = stop.send(true);
    for runner in runners {
        runner.await.expect("dispatcher");
    }
    elapsed
}

/// Ingest, then delivery, on one setup; prints and returns (leads/s, deliveries/s).
async fn run(name: &str, stores: Vec<Arc<dyn Store>>, leads: usize, concurrency: usize) -> (f64, f64) {
    let (receiver, count) = receiver().await;
    let document = parse_value(config(&receiver)).expect("config");
    stores[0].change_config(ConfigChange::Apply(document)).await.expect("apply");
    let nodes = start(stores).await;
    load(&nodes.urls, 2_000, concurrency, 90_000_000).await;
    let ingest: Figures = load(&nodes.urls, leads, concurrency, 0).await;
    ingest.report(&format!("{name} ingest"));
    let delivered = deliver_all(&nodes, leads + 2_000, &count).await;
    let delivery_rate = (leads + 2_000) as f64 / delivered.as_secs_f64();
    println!(
        "{:<22} {delivery_rate:>8.0} deliveries/s ({} in {:.2} s, each with its records)",
        format!("{name} delivery"),
        leads + 2_000,
        delivered.as_secs_f64()
    );
    let report = nodes.stores[0].verify_chain().await.expect("verify");
    assert_eq!(report.first_broken, None, "the chain verifies");
    for store in &nodes.stores {
        store.close().await;
    }
    (ingest.rate(), delivery_rate)
}

fn main() {
    let leads = env_number("NODES_LEADS", 20_000);
    let concurrency = env_number("NODES_CONCURRENCY", 64);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    runtime.block_on(async move {
        println!("{leads} leads, {concurrency} concurrent clients; then every lead delivered");
        let dir = tempfile::tempdir().expect("temporary directory");
        let url = format!("sqlite://{}", dir.path().join("nodes.db").display());
        let sqlite: Arc<dyn Store> = SqliteStore::open(&url, SqliteOptions::default()).await.expect("open");
        let (sqlite_ingest, sqlite_delivery) = run("sqlite, 1 node", vec![sqlite], leads, concurrency).await;

        let one = TestDatabase::create().await;
        let store: Arc<dyn Store> = PostgresStore::open(&one.url, PostgresOptions::default()).await.expect("open");
        let (one_ingest, one_delivery) = run("postgres, 1 node", vec![store], leads, concurrency).await;
        one.drop().await;

        let two = TestDatabase::create().await;
        let mut stores: Vec<Arc<dyn Store>> = Vec::new();
        for _ in 0..2 {
            stores.push(PostgresStore::open(&two.url, PostgresOptions::default()).await.expect("open"));
        }
        let (two_ingest, two_delivery) = run("postgres, 2 nodes", stores, leads, concurrency).await;
        two.drop().await;

        println!(
            "ratios to SQLite on one node: ingest postgres 1 node {:.2}, 2 nodes {:.2}; delivery postgres 1 node {:.2}, \
             2 nodes {:.2}",
            one_ingest / sqlite_ingest,
            two_ingest / sqlite_ingest,
            one_delivery / sqlite_delivery,
            two_delivery / sqlite_delivery
        );
    });
}
