//! The events, leads and register API on a large generated store: first-page latency of every
//! indexed filter (p50/p99 over many requests through HTTP) and export throughput.
//!
//! `cargo bench -p leadrelay-server --bench read`. The store (`READ_EVENTS`, default 10 million
//! events) is generated once under `target/bench-data/` and reused by later runs.

use std::time::{Duration, Instant};

use futures::StreamExt;
use leadrelay_server::Settings;

mod common;

use common::env_number;
use common::generated::{DAY, SOURCES, SPAN_DAYS, TOKEN};

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

fn main() {
    let target_events = env_number("READ_EVENTS", 10_000_000);
    let samples = env_number("READ_SAMPLES", 200);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    runtime.block_on(async move {
        let (store, path, events_stored) = common::generated::open(target_events).await;
        let base = common::generated::serve(store.clone(), Settings::default()).await;
        let client = reqwest::Client::new();
        println!(
            "store: {} events ({} MB on disk)",
            events_stored,
            std::fs::metadata(&path).map(|m| m.len() / 1_000_000).unwrap_or(0)
        );

        // Lead ids to look up, spread over the whole store.
        let lead_ids = common::generated::lead_ids(&client, &base, samples, 50).await;
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
