//! What the benchmarks share: an HTTP load generator with latency percentiles, and the sample
//! leads it sends.

#![allow(dead_code)]

pub mod generated;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|value| value.parse().ok()).unwrap_or(default)
}

/// The figures of one load run.
pub struct Figures {
    pub requests: usize,
    pub elapsed: Duration,
    pub latencies_us: Vec<u64>,
}

impl Figures {
    pub fn rate(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }

    pub fn percentile(&self, p: f64) -> f64 {
        let index = ((self.latencies_us.len() as f64 - 1.0) * p).round() as usize;
        self.latencies_us[index] as f64 / 1000.0
    }

    pub fn report(&self, name: &str) {
        println!(
            "{name:<22} {:>8.0} leads/s   p50 {:>6.2} ms   p99 {:>6.2} ms   ({} requests in {:.2} s)",
            self.rate(),
            self.percentile(0.50),
            self.percentile(0.99),
            self.requests,
            self.elapsed.as_secs_f64()
        );
    }
}

/// The `i`th sample lead: four typed fields, most of them in the filter's states.
pub fn lead(i: usize) -> Value {
    let states = ["TX", "CA", "FL", "NY", "OH"];
    json!({
        "email": format!("lead{i}@example.com"),
        "phone": format!("+1 512 555 {:04}", i % 10_000),
        "first_name": "Jo Smith",
        "state": states[i % states.len()],
    })
}

/// Sends `requests` POSTs of sample leads (numbered from `offset`) from `concurrency`
/// keep-alive clients, spread over `urls` in turn; every answer must be 2xx.
pub async fn load(urls: &[String], requests: usize, concurrency: usize, offset: usize) -> Figures {
    let client = reqwest::Client::builder().pool_max_idle_per_host(concurrency).build().expect("client");
    let next = Arc::new(AtomicUsize::new(0));
    let urls: Arc<Vec<String>> = Arc::new(urls.to_vec());
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (client, urls, next) = (client.clone(), urls.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= requests {
                    return latencies;
                }
                let body = lead(offset + i);
                let sent = Instant::now();
                let response = client.post(&urls[i % urls.len()]).json(&body).send().await.expect("request");
                let status = response.status();
                let _ = response.bytes().await.expect("answer");
                assert!(status.is_success(), "answer {status}");
                latencies.push(sent.elapsed().as_micros() as u64);
            }
        }));
    }
    let mut latencies_us = Vec::with_capacity(requests);
    for task in tasks {
        latencies_us.extend(task.await.expect("client task"));
    }
    let elapsed = start.elapsed();
    latencies_us.sort_unstable();
    Figures { requests, elapsed, latencies_us }
}

/// Serves a router on a port of its own on 127.0.0.1; returns its base URL.
pub async fn serve(router: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = format!("http://{}", listener.local_addr().expect("address"));
    tokio::spawn(async move { axum::serve(listener, router).await.expect("serve") });
    address
}
