//! The web UI's pages on a large generated store (`PAGES_EVENTS`, default 1 million events,
//! shared with the `read` bench): p50/p99 of each page through HTTP with a signed-in session,
//! against the 50 ms goal.
//!
//! `cargo bench -p leadrelay-server --bench pages`

mod common;

use std::time::{Duration, Instant};

use common::env_number;
use common::generated::{SOURCES, TOKEN};
use leadrelay_server::Settings;
use serde_json::Value;

const GOAL_MS: f64 = 50.0;

async fn timed(client: &reqwest::Client, base: &str, cookie: &str, paths: &[String]) -> Vec<Duration> {
    let mut latencies = Vec::with_capacity(paths.len());
    for path in paths {
        let started = Instant::now();
        let response = client.get(format!("{base}{path}")).header("cookie", cookie).send().await.expect("request");
        let status = response.status();
        let body = response.bytes().await.expect("body");
        latencies.push(started.elapsed());
        assert!(status.is_success(), "{path}: {status} {}", String::from_utf8_lossy(&body));
    }
    latencies.sort();
    latencies
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize].as_secs_f64() * 1000.0
}

async fn json(client: &reqwest::Client, url: String) -> Value {
    client.get(url).bearer_auth(TOKEN).send().await.expect("request").json().await.expect("json")
}

fn main() {
    let target_events = env_number("PAGES_EVENTS", 1_000_000);
    let samples = env_number("PAGES_SAMPLES", 100);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    runtime.block_on(async move {
        let (store, path, events) = common::generated::open(target_events).await;
        let base = common::generated::serve(store.clone(), Settings { dispatch: false, ..Settings::default() }).await;
        let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().expect("client");
        println!(
            "store: {events} events ({} MB on disk)",
            std::fs::metadata(&path).map(|m| m.len() / 1_000_000).unwrap_or(0)
        );

        let signed_in = client.post(format!("{base}/sign-in")).form(&[("token", TOKEN)]).send().await.expect("sign in");
        let cookie = signed_in.headers()["set-cookie"].to_str().expect("cookie").split(';').next().unwrap().to_owned();

        // Leads and their transfers, spread over the whole store.
        let leads = common::generated::lead_ids(&client, &base, samples, 97).await;
        let mut transfers = Vec::new();
        for lead in leads.iter().take(samples) {
            let page = json(&client, format!("{base}/api/v1/register?lead_id={lead}")).await;
            if let Some(id) = page["items"][0]["transfer_id"].as_str() {
                transfers.push(format!("/leads/{lead}/transfers/{id}?fragment=1"));
            }
        }
        let cycle =
            |values: Vec<String>| -> Vec<String> { (0..samples).map(|i| values[i % values.len()].clone()).collect() };
        let cases: Vec<(&str, Vec<String>)> = vec![
            ("register", cycle(vec!["/".into()])),
            ("register status", cycle(["new", "skip"].iter().map(|s| format!("/?status={s}")).collect())),
            ("register source", cycle(SOURCES.iter().map(|s| format!("/?source_id={s}")).collect())),
            ("register destination", cycle(vec!["/?destination_id=tx-buyer".into(), "/?destination_id=crm".into()])),
            ("register live rows", cycle(vec!["/register/rows".into()])),
            ("lead timeline", cycle(leads.iter().map(|id| format!("/leads/{id}")).collect())),
            ("transfer JSON", cycle(transfers)),
            ("not integrated", cycle(vec!["/not-integrated".into()])),
            ("overview (14 days)", cycle(vec!["/overview".into()])),
            ("overview (60 days)", cycle(vec!["/overview?days=60".into()])),
            ("configuration", cycle(vec!["/config".into()])),
        ];
        println!("each page {samples} times through HTTP, signed in (goal: under {GOAL_MS} ms):");
        for (name, paths) in &cases {
            let first = timed(&client, &base, &cookie, &paths[..1]).await[0].as_secs_f64() * 1000.0;
            timed(&client, &base, &cookie, &paths[..paths.len().min(10)]).await;
            let latencies = timed(&client, &base, &cookie, paths).await;
            let (p50, p99) = (percentile(&latencies, 0.5), percentile(&latencies, 0.99));
            let verdict = if p99 < GOAL_MS {
                "ok"
            } else if p50 < GOAL_MS {
                "p99 over"
            } else {
                "OVER"
            };
            println!("  {name:<22} p50 {p50:>7.2} ms   p99 {p99:>7.2} ms   first {first:>8.2} ms   {verdict}");
        }
        store.close().await;
    });
}
