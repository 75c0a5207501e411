//! A large store generated once for the read benchmarks (`read`, `pages`): leads spread over
//! the last days, decided by the real pipeline and committed through the store, kept under
//! `target/bench-data/` and reused by later runs.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use leadrelay_domain::compiled::CompiledRules;
use leadrelay_domain::config::{parse_value, Config, ConfigChange};
use leadrelay_domain::pipeline::{decide, prepare, Intake};
use leadrelay_store::{CommitOutcome, Store, Submission};
use leadrelay_store_sqlite::{SqliteOptions, SqliteStore};
use serde_json::{json, Value};

pub const DAY: i64 = 86_400_000;
/// The generated leads are spread over this many days before the generation.
pub const SPAN_DAYS: i64 = 60;

pub fn config() -> Value {
    let lead_fields = json!([
        {"name": "email", "type": "email"}, {"name": "phone", "type": "phone"},
        {"name": "first_name", "type": "name"}, {"name": "state", "type": "state", "required": true}
    ]);
    json!({
        "flows": [
            {"id": "solar", "fields": lead_fields,
             "duplicates": {"keys": ["email"], "window_days": 30},
             "filters": [{"name": "geo", "rules": {"all": [{"field": "state", "op": "in", "value": ["TX", "CA", "FL", "NY"]}]}}],
             "destinations": ["crm", "tx-buyer", "fl-buyer"]},
            {"id": "auto", "fields": lead_fields, "destinations": ["crm"]}
        ],
        "sources": [
            {"id": "web-a", "flow_id": "solar", "price": 2.5}, {"id": "web-b", "flow_id": "solar", "price": 3.0},
            {"id": "vendor-x", "flow_id": "solar", "price": 12.0},
            {"id": "auto-web", "flow_id": "auto"}, {"id": "auto-vendor", "flow_id": "auto", "price": 8.0}
        ],
        "destinations": [
            {"id": "crm", "url": "https://crm.example.com/leads"},
            {"id": "tx-buyer", "url": "https://tx.example.com/in", "filter": {"all": [{"field": "state", "op": "eq", "value": "TX"}]}},
            {"id": "fl-buyer", "url": "https://fl.example.com/in", "filter": {"all": [{"field": "state", "op": "eq", "value": "FL"}]}}
        ]
    })
}

pub const SOURCES: [&str; 5] = ["web-a", "web-b", "vendor-x", "auto-web", "auto-vendor"];
const STATES: [&str; 6] = ["TX", "CA", "FL", "NY", "OH", "WA"];

fn stored_lead(i: usize) -> Value {
    // One lead in fifty repeats an earlier email: a duplicate.
    let email = if i % 50 == 49 { format!("lead{}@example.com", i - 7) } else { format!("lead{i}@example.com") };
    json!({"email": email, "phone": format!("+1 512 555 {:04}", i % 10_000), "first_name": "Jo Smith",
           "state": STATES[i % STATES.len()]})
}

/// Decides and commits one generated lead, received at `received_at`.
async fn commit_lead(
    store: &Arc<dyn Store>,
    config: &Config,
    rules: &CompiledRules,
    i: usize,
    received_at: i64,
) -> usize {
    let source = &config.sources[SOURCES[i % SOURCES.len()]];
    let flow = &config.flows[&source.flow_id];
    let destinations = flow.destinations.iter().map(|id| &config.destinations[id]).collect();
    let intake = Intake { flow, source, destinations, rules };
    let Value::Object(fields) = stored_lead(i) else { unreachable!() };
    let prepared = prepare(&intake, fields, received_at);
    let mut duplicate = None;
    loop {
        let decision = decide(&intake, &prepared, duplicate.as_ref(), received_at + 3);
        let events = decision.events.len();
        match store.commit_submission(Submission::from_decision(decision, None)).await.expect("commit") {
            CommitOutcome::Committed => return events,
            CommitOutcome::DuplicateChanged(found) => duplicate = found,
            CommitOutcome::Replay(_) => unreachable!("no idempotency keys"),
        }
    }
}

pub async fn generate(store: Arc<dyn Store>, target_events: usize) -> usize {
    let document = parse_value(config()).expect("config");
    store.change_config(ConfigChange::Apply(document)).await.expect("apply");
    let config = Arc::new(store.load_config().await.expect("config"));
    let rules = Arc::new(CompiledRules::new(&config));
    let leads = target_events / 5 + 1;
    let start_time = leadrelay_domain::time::now_millis() - SPAN_DAYS * DAY;
    let step = (SPAN_DAYS * DAY) / leads as i64;
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let written = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..256)
        .map(|_| {
            let (store, config, rules, next, written) =
                (store.clone(), config.clone(), rules.clone(), next.clone(), written.clone());
            tokio::spawn(async move {
                loop {
                    if written.load(std::sync::atomic::Ordering::Relaxed) >= target_events {
                        return;
                    }
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let events = commit_lead(&store, &config, &rules, i, start_time + i as i64 * step).await;
                    let total = written.fetch_add(events, std::sync::atomic::Ordering::Relaxed) + events;
                    if total / 1_000_000 != (total - events) / 1_000_000 {
                        eprintln!("  {} million events ({:.0} s)", total / 1_000_000, started.elapsed().as_secs_f64());
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("generator");
    }
    written.load(std::sync::atomic::Ordering::Relaxed)
}

pub fn data_dir() -> PathBuf {
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    target.join("bench-data")
}

/// The generated store of `target_events` events, opened (generated first when it is not
/// there yet), and how many events it holds.
pub async fn open(target_events: usize) -> (Arc<dyn Store>, PathBuf, String) {
    let dir = data_dir();
    std::fs::create_dir_all(&dir).expect("bench data folder");
    let path = dir.join(format!("read-{target_events}.db"));
    let ready = dir.join(format!("read-{target_events}.ready"));
    let url = format!("sqlite://{}", path.display());
    if !ready.exists() {
        let _ = std::fs::remove_file(&path);
        eprintln!("generating a store of {target_events} events at {} (once)", path.display());
        let store: Arc<dyn Store> = SqliteStore::open(&url, SqliteOptions::default()).await.expect("open");
        let started = Instant::now();
        let written = generate(store.clone(), target_events).await;
        eprintln!("generated {written} events in {:.0} s", started.elapsed().as_secs_f64());
        store.close().await;
        std::fs::write(&ready, written.to_string()).expect("mark ready");
    }
    let store: Arc<dyn Store> = SqliteStore::open(&url, SqliteOptions::default()).await.expect("open");
    let events = std::fs::read_to_string(&ready).unwrap_or_default().trim().to_owned();
    (store, path, events)
}

/// The admin token the read benchmarks use.
pub const TOKEN: &str = "bench-admin-token-0123456789";

/// Serves a generated store on a free port, with `TOKEN` as an admin token; returns the base URL.
pub async fn serve(store: Arc<dyn Store>, settings: leadrelay_server::Settings) -> String {
    store
        .ensure_token(leadrelay_store::NewToken {
            id: "tok_bench".into(),
            name: "bench".into(),
            role: leadrelay_store::Role::Admin,
            hash: leadrelay_server::hash_token(TOKEN),
            created_at: 0,
        })
        .await
        .expect("token");
    let state = leadrelay_server::AppState::new(store, settings).await.expect("state");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("address"));
    tokio::spawn(leadrelay_server::serve(listener, state, std::future::pending()));
    base
}

/// Lead ids spread over the whole store: every `step`-th lead, newest first, until `wanted`.
pub async fn lead_ids(client: &reqwest::Client, base: &str, wanted: usize, step: usize) -> Vec<String> {
    let mut ids = Vec::new();
    let mut cursor: Option<String> = None;
    while ids.len() < wanted {
        let url = match &cursor {
            Some(cursor) => format!("{base}/api/v1/leads?limit=1000&cursor={cursor}"),
            None => format!("{base}/api/v1/leads?limit=1000"),
        };
        let page: Value = client.get(url).bearer_auth(TOKEN).send().await.expect("leads").json().await.expect("json");
        let items = page["items"].as_array().expect("items");
        ids.extend(items.iter().step_by(step).map(|lead| lead["id"].as_str().expect("id").to_owned()));
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    ids
}
