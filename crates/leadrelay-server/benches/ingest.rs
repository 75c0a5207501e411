//! Durable ingest through HTTP: the full pipeline (4 typed fields, a duplicate check, one
//! filter, one destination) beside a baseline in the same run: a minimal axum handler that
//! commits one row per request through the same group-committing writer.
//!
//! `cargo bench -p leadrelay-server --bench ingest` (`INGEST_REQUESTS`, `INGEST_CONCURRENCY`,
//! `INGEST_ROUNDS`; `INGEST_STORE_ONLY=1` stops after the store-alone figure).

mod common;

use std::sync::Arc;
use std::time::Instant;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use common::{env_number, lead, load, serve};
use leadrelay_domain::compiled::CompiledRules;
use leadrelay_domain::config::{parse_value, ConfigChange};
use leadrelay_domain::event::Outcome;
use leadrelay_domain::ids::LeadId;
use leadrelay_domain::lead::LeadRecord;
use leadrelay_domain::pipeline::{decide, prepare, Intake};
use leadrelay_domain::time::now_millis;
use leadrelay_server::{AppState, Settings};
use leadrelay_store::{CommitOutcome, EncodedLead, Store, Submission};
use leadrelay_store_sqlite::{SqliteOptions, SqliteStore};
use serde_json::{json, Value};

/// The same allocator as the `leadrelay` binary.
async fn open(dir: &std::path::Path, name: &str) -> Arc<dyn Store> {
    let url = format!("sqlite://{}", dir.join(name).display());
    SqliteStore::open(&url, SqliteOptions::default()).await.expect("open store")
}

fn config() -> Value {
    json!({
        "flows": [{
            "id": "solar",
            "fields": [
                {"name": "email", "type": "email"}, {"name": "phone", "type": "phone"},
                {"name": "first_name", "type": "name"}, {"name": "state", "type": "state", "required": true}
            ],
            "duplicates": {"keys": ["email"], "window_days": 30, "policy": "reject"},
            "filters": [{"name": "geo", "rules": {"all": [{"field": "state", "op": "in", "value": ["TX", "CA", "FL", "NY"]}]}}],
            "destinations": ["crm"]
        }],
        "sources": [{"id": "web", "flow_id": "solar", "price": 2.5}],
        "destinations": [{"id": "crm", "url": "https://crm.example.com/leads"}]
    })
}

/// The baseline: parse a JSON body and commit one row (a bare lead holding the body) through the
/// same writer.
async fn baseline_handler(State(store): State<Arc<dyn Store>>, Json(body): Json<Value>) -> (StatusCode, Json<Value>) {
    let now = now_millis();
    let record = LeadRecord {
        id: LeadId::generate(),
        flow_id: "baseline".into(),
        source_id: "baseline".into(),
        created_at: now,
        updated_at: now,
        status: "new".into(),
        outcome: Some(Outcome::Success),
        // The one row carries the request's body, as a lead row carries its snapshot.
        reason: Some(body.to_string()),
        duplicate_of: None,
        cost: None,
        fields: Default::default(),
        appended: Default::default(),
    };
    let id = record.id.to_string();
    let submission = Submission {
        lead: EncodedLead { record, snapshot: 0 },
        snapshots: Vec::new(),
        events: Vec::new(),
        transfers: Vec::new(),
        duplicate_keys: Vec::new(),
        duplicate_check: None,
        idempotency: None,
        realtime_lease: None,
        pending_completion: None,
    };
    match store.commit_submission(submission).await {
        Ok(CommitOutcome::Committed) => (StatusCode::CREATED, Json(json!({"lead_id": id}))),
        _ => (StatusCode::SERVICE_UNAVAILABLE, Json(json!({}))),
    }
}

fn intake<'a>(config: &'a leadrelay_domain::config::Config, rules: &'a CompiledRules) -> Intake<'a> {
    Intake {
        flow: &config.flows["solar"],
        source: &config.sources["web"],
        destinations: vec![&config.destinations["crm"]],
        rules,
    }
}

/// The pipeline's CPU cost alone: prepare, decide and encode one lead, on one thread.
fn pipeline_cpu(config: &leadrelay_domain::config::Config) -> f64 {
    let rules = CompiledRules::new(config);
    let intake = intake(config, &rules);
    let count = 20_000;
    let start = Instant::now();
    for i in 0..count {
        let Value::Object(fields) = lead(i) else { unreachable!() };
        let prepared = prepare(&intake, fields, now_millis());
        let decision = decide(&intake, &prepared, None, now_millis());
        std::hint::black_box(Submission::from_decision(decision, None));
    }
    start.elapsed().as_secs_f64() * 1e6 / count as f64
}

/// The store alone: decided submissions committed by many concurrent tasks, no HTTP.
async fn store_only(store: Arc<dyn Store>, config: &leadrelay_domain::config::Config, concurrency: usize) -> f64 {
    let rules = CompiledRules::new(config);
    let intake = intake(config, &rules);
    let count = 20_000;
    let mut submissions = Vec::with_capacity(count);
    for i in 0..count {
        let Value::Object(fields) = lead(50_000_000 + i) else { unreachable!() };
        let prepared = prepare(&intake, fields, now_millis());
        submissions.push(Submission::from_decision(decide(&intake, &prepared, None, now_millis()), None));
    }
    let queue = Arc::new(std::sync::Mutex::new(submissions));
    let start = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let store = store.clone();
            let queue = queue.clone();
            tokio::spawn(async move {
                loop {
                    let next = queue.lock().expect("queue").pop();
                    let Some(submission) = next else { return };
                    store.commit_submission(submission).await.expect("commit");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("task");
    }
    count as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let requests = env_number("INGEST_REQUESTS", 40_000);
    let concurrency = env_number("INGEST_CONCURRENCY", 64);
    let rounds = env_number("INGEST_ROUNDS", 3);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    runtime.block_on(async move {
        let dir = tempfile::tempdir().expect("temporary directory");

        let baseline_store = open(dir.path(), "baseline.db").await;
        let baseline_url =
            serve(Router::new().route("/submit", post(baseline_handler)).with_state(baseline_store.clone())).await;

        let store = open(dir.path(), "pipeline.db").await;
        let document = parse_value(config()).expect("config");
        store.change_config(ConfigChange::Apply(document)).await.expect("apply");
        let state = AppState::new(store.clone(), Settings::default()).await.expect("state");
        let pipeline_url = serve(leadrelay_server::router(state)).await;

        let live = store.load_config().await.expect("config");
        println!("pipeline CPU alone: {:.1} µs per lead (prepare, decide, encode; one thread)", pipeline_cpu(&live));
        let scratch = open(dir.path(), "store-only.db").await;
        scratch.change_config(ConfigChange::Apply(parse_value(config()).expect("config"))).await.expect("apply");
        println!(
            "store alone: {:.0} commits/s ({concurrency} concurrent committers, no HTTP)",
            store_only(scratch.clone(), &live, concurrency).await
        );
        scratch.close().await;
        if std::env::var_os("INGEST_STORE_ONLY").is_some() {
            // Profiling the writer: stop before the HTTP rounds.
            return;
        }

        println!("durable ingest over HTTP: {requests} requests per round, {concurrency} concurrent clients, {rounds} rounds");
        // Warm both up, then alternate so that machine noise hits both alike.
        load(&[format!("{baseline_url}/submit")], 2_000, concurrency, 10_000_000).await;
        load(&[format!("{pipeline_url}/api/v1/sources/web/submit")], 2_000, concurrency, 10_000_000).await;
        let mut ratios = Vec::new();
        let mut pipeline_rates = Vec::new();
        for round in 0..rounds {
            let baseline = load(&[format!("{baseline_url}/submit")], requests, concurrency, round * requests).await;
            let pipeline =
                load(&[format!("{pipeline_url}/api/v1/sources/web/submit")], requests, concurrency, round * requests)
                    .await;
            baseline.report("baseline");
            pipeline.report("pipeline");
            ratios.push(pipeline.rate() / baseline.rate());
            pipeline_rates.push(pipeline.rate());
        }
        ratios.sort_by(f64::total_cmp);
        pipeline_rates.sort_by(f64::total_cmp);
        println!(
            "median pipeline {:.0} leads/s; median ratio pipeline/baseline {:.2}",
            pipeline_rates[pipeline_rates.len() / 2],
            ratios[ratios.len() / 2]
        );
        let wal = std::fs::metadata(dir.path().join("pipeline.db-wal")).map(|m| m.len()).unwrap_or(0);
        let database = std::fs::metadata(dir.path().join("pipeline.db")).map(|m| m.len()).unwrap_or(0);
        println!("database {} MB, write-ahead log {} MB at the end of the run", database / 1_000_000, wal / 1_000_000);
        let report = store.verify_chain().await.expect("verify");
        println!("chain after the run: {} events, intact: {}", report.events_checked, report.first_broken.is_none());
        store.close().await;
        baseline_store.close().await;
    });
}
