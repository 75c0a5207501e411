//! The events, leads and register API on a large generated store: first-page latency of every
//! indexed filter (p50/p99 over many requests through HTTP) and export throughput.
//!
//! `cargo bench -p leadrelay-server --bench read`. The store (`READ_EVENTS`, default 10 million
//! events) is generated once under `target/bench-data/` and reused by later runs.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use leadrelay_domain::compiled::CompiledRules;
use leadrelay_domain::config::{parse_value, Config, ConfigChange};
use leadrelay_domain::pipeline::{decide, prepare, Intake};
use leadrelay_server::{AppState, Settings};
use leadrelay_store::{CommitOutcome, Store, Submission};
use leadrelay_store_sqlite::{SqliteOptions, SqliteStore};
use serde_json::{json, Value};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const TOKEN: &str = "bench-admin-token-0123456789";
const DAY: i64 = 86_400_000;
/// The generated leads are spread over this many days before the generation.
const SPAN_DAYS: i64 = 60;

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|value| value.parse().ok()).unwrap_or(default)
}

fn config() -> Value {
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

const SOURCES: [&str; 5] = ["web-a", "web-b", "vendor-x", "auto-web", "auto-vendor"];
const STATES: [&str; 6] = ["TX", "CA", "FL", "NY", "OH", "WA"];

fn lead(i: usize) -> Value {
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
    let Value::Object(fields) = lead(i) else { unreachable!() };
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

async fn generate(store: Arc<dyn Store>, target_events: usize) -> usize {
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

struct Latencies(Vec<Duration>);

impl Latencies {
    fn percentile(&self, p: f64) -> f64 {
        let mut sorted = self.0.clone();
        sorted.sort();
        let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
        sorted[index].as_secs_f64() * 1000.0
    }
}

async fn first_pages(client: &reqwest::Client, base: &str, paths: &[String]) -> Latencies {
    let mut latencies = Vec::with_capacity(paths.len());
    for path in paths {
        let started = Instant::now();
        let response = client.get(format!("{base}{path}")).bearer_auth(TOKEN).send().await.expect("request");
        let status = response.status();
        let body = response.bytes().await.expect("body");
        latencies.push(started.elapsed());
        assert!(status.is_success(), "{path}: {status} {}", String::from_utf8_lossy(&body));
    }
    Latencies(latencies)
}

fn data_dir() -> PathBuf {
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    target.join("bench-data")
}

fn main() {
    let target_events = env_number("READ_EVENTS", 10_000_000);
    let samples = env_number("READ_SAMPLES", 200);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    runtime.block_on(async move {
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
        let state = AppState::new(store.clone(), Settings::default()).await.expect("state");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("address"));
        tokio::spawn(leadrelay_server::serve(listener, state, std::future::pending()));
        let client = reqwest::Client::new();
        let events_stored = std::fs::read_to_string(&ready).unwrap_or_default();
        println!(
            "store: {} events ({} MB on disk)",
            events_stored.trim(),
            std::fs::metadata(&path).map(|m| m.len() / 1_000_000).unwrap_or(0)
        );

        // Lead ids to look up, spread over the whole store.
        let mut lead_ids = Vec::new();
        let mut cursor: Option<String> = None;
        while lead_ids.len() < samples {
            let path = match &cursor {
                Some(cursor) => format!("{base}/api/v1/leads?limit=1000&include=id&cursor={cursor}"),
                None => format!("{base}/api/v1/leads?limit=1000"),
            };
            let page: Value = client
                .get(path.replace("&include=id", ""))
                .bearer_auth(TOKEN)
                .send()
                .await
                .expect("leads")
                .json()
                .await
                .expect("json");
            let items = page["items"].as_array().expect("items");
            lead_ids.extend(items.iter().step_by(50).map(|lead| lead["id"].as_str().expect("id").to_owned()));
            match page["next_cursor"].as_str() {
                Some(next) => cursor = Some(next.to_owned()),
                None => break,
            }
        }
        let now = leadrelay_domain::time::now_millis();
        let day = |offset: i64| leadrelay_domain::time::format_date(now - offset * DAY);
        let cycle =
            |values: Vec<String>| -> Vec<String> { (0..samples).map(|i| values[i % values.len()].clone()).collect() };
        let types = [
            "source.submitted",
            "source.accepted",
            "source.rejected",
            "filter.passed",
            "filter.failed",
            "recipient.skipped",
            "flow.completed",
        ];
        let cases: Vec<(&str, Vec<String>)> = vec![
            ("events (no filter)", cycle(vec!["/api/v1/events".into()])),
            ("events lead_id", cycle(lead_ids.iter().map(|id| format!("/api/v1/events?lead_id={id}")).collect())),
            ("events type", cycle(types.iter().map(|t| format!("/api/v1/events?type={t}")).collect())),
            ("events status", cycle(["new", "skip"].iter().map(|s| format!("/api/v1/events?status={s}")).collect())),
            ("events source_id", cycle(SOURCES.iter().map(|s| format!("/api/v1/events?source_id={s}")).collect())),
            (
                "events destination_id",
                cycle(["tx-buyer", "fl-buyer"].iter().map(|d| format!("/api/v1/events?destination_id={d}")).collect()),
            ),
            ("events flow_id", cycle(["solar", "auto"].iter().map(|f| format!("/api/v1/flows/{f}/events")).collect())),
            (
                "events start+end",
                cycle(
                    (1..SPAN_DAYS)
                        .step_by(7)
                        .map(|d| format!("/api/v1/events?start={}&end={}", day(d + 1), day(d)))
                        .collect(),
                ),
            ),
            (
                "events type+start (asc)",
                cycle(
                    (1..SPAN_DAYS)
                        .step_by(7)
                        .map(|d| format!("/api/v1/events?type=filter.failed&start={}&sort=asc", day(d)))
                        .collect(),
                ),
            ),
            ("lead timeline", cycle(lead_ids.iter().map(|id| format!("/api/v1/leads/{id}/events")).collect())),
            ("leads (no filter)", cycle(vec!["/api/v1/leads".into()])),
            ("register (no filter)", cycle(vec!["/api/v1/register".into()])),
            (
                "register status",
                cycle(["new", "skip"].iter().map(|s| format!("/api/v1/register?status={s}")).collect()),
            ),
            ("register source_id", cycle(SOURCES.iter().map(|s| format!("/api/v1/register?source_id={s}")).collect())),
            (
                "register destination_id",
                cycle(["crm", "tx-buyer"].iter().map(|d| format!("/api/v1/register?destination_id={d}")).collect()),
            ),
            ("register lead_id", cycle(lead_ids.iter().map(|id| format!("/api/v1/register?lead_id={id}")).collect())),
        ];
        println!("first page (100 items) of each filter, {samples} requests each, through HTTP:");
        for (name, paths) in &cases {
            first_pages(&client, &base, &paths[..paths.len().min(10)]).await;
            let latencies = first_pages(&client, &base, paths).await;
            println!(
                "  {name:<26} p50 {:>7.2} ms   p99 {:>7.2} ms",
                latencies.percentile(0.5),
                latencies.percentile(0.99)
            );
        }

        let export_limit = env_number("READ_EXPORT_EVENTS", 2_000_000);
        for format in ["ndjson", "csv"] {
            let started = Instant::now();
            let response = client
                .get(format!("{base}/api/v1/export?format={format}"))
                .bearer_auth(TOKEN)
                .send()
                .await
                .expect("export");
            let mut stream = response.bytes_stream();
            let (mut lines, mut bytes) = (0usize, 0usize);
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.expect("chunk");
                bytes += chunk.len();
                lines += chunk.iter().filter(|b| **b == b'\n').count();
                if lines >= export_limit {
                    break;
                }
            }
            let seconds = started.elapsed().as_secs_f64();
            println!(
                "export {format:<6} {:>9.0} events/s ({lines} events, {} MB in {seconds:.1} s)",
                lines as f64 / seconds,
                bytes / 1_000_000
            );
        }
        store.close().await;
    });
}
