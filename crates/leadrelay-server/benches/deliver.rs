//! Delivery throughput and memory, on this machine:
//!
//! 1. deliveries per second to a fast local receiver, each with its durable records (the
//!    outcome event in the hash chain, the transfer's state, the attempt row), beside a
//!    baseline in the same run: the same requests from a bare HTTP client, nothing stored;
//! 2. peak memory (RSS) with 10,000 deliveries in flight to a receiver that answers after 1 s.
//!
//! `cargo bench -p leadrelay-server --bench deliver` (`DELIVER_COUNT`, `DELIVER_CONCURRENCY`,
//! `SLOW_COUNT`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use leadrelay_delivery::attempt::HttpClients;
use leadrelay_delivery::guard::EgressPolicy;
use leadrelay_delivery::{DeliveryService, DeliverySettings};
use leadrelay_domain::config::{parse_value, ConfigChange};
use leadrelay_domain::event::EventType;
use leadrelay_domain::pipeline::{decide, prepare, Intake};
use leadrelay_domain::time::now_millis;
use leadrelay_store::{ConfigHandle, EventQuery, Store, Submission};
use leadrelay_store_sqlite::{SqliteOptions, SqliteStore};
use serde_json::{json, Value};

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|value| value.parse().ok()).unwrap_or(default)
}

/// A memory figure of this process from `/proc/self/status` (`VmRSS`, `VmHWM`), in MiB.
fn memory_mib(field: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|number| number.parse().ok())
        .unwrap_or(0.0);
    kib / 1024.0
}

/// A receiver on 127.0.0.1 that answers 200 after `delay`, counting requests.
async fn receiver(delay: Duration) -> (String, Arc<AtomicUsize>) {
    let count = Arc::new(AtomicUsize::new(0));
    let counter = count.clone();
    let app = axum::Router::new().fallback(move || {
        let counter = counter.clone();
        async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            counter.fetch_add(1, Ordering::Relaxed);
            "{\"accepted\":true}"
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = format!("http://{}", listener.local_addr().expect("address"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (address, count)
}

fn config(receiver: &str, destinations: usize, concurrency: usize) -> Value {
    let ids: Vec<String> = (0..destinations).map(|index| format!("crm{index}")).collect();
    let destinations: Vec<Value> = ids
        .iter()
        .map(|id| json!({"id": id, "url": format!("{receiver}/leads"), "concurrency": concurrency, "timeout_ms": 10_000}))
        .collect();
    json!({
        "flows": [{"id": "solar", "fields": [{"name": "email", "type": "email"}, {"name": "state", "type": "state"}],
                   "destinations": ids}],
        "sources": [{"id": "web", "flow_id": "solar"}],
        "destinations": destinations
    })
}

/// Starts this benchmark again as a slow receiver (answering after 1 s) in a child process;
/// counts the requests it reports, one line each on its standard output.
async fn receiver_process() -> (String, Arc<AtomicUsize>, std::process::Child) {
    use std::io::BufRead;
    let mut child = std::process::Command::new(std::env::current_exe().expect("this binary"))
        .env("DELIVER_SLOW_RECEIVER", "1")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("receiver process");
    let stdout = child.stdout.take().expect("stdout");
    let (address_sender, address) = tokio::sync::oneshot::channel();
    let count = Arc::new(AtomicUsize::new(0));
    let counter = count.clone();
    std::thread::spawn(move || {
        let mut lines = std::io::BufReader::new(stdout).lines();
        let first = lines.next().and_then(Result::ok).unwrap_or_default();
        let _ = address_sender.send(first);
        for _ in lines {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    });
    (address.await.expect("receiver address"), count, child)
}

/// The child process of [`receiver_process`]: prints its address, then a line per request.
fn run_slow_receiver() {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let app = axum::Router::new().fallback(|| async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            println!("answered");
            "{\"accepted\":true}"
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        println!("http://{}", listener.local_addr().expect("address"));
        axum::serve(listener, app).await.expect("serve");
    });
}

/// Opens a fresh store with the configuration and `leads` leads queued for delivery.
async fn queued_store(dir: &std::path::Path, name: &str, config: Value, leads: usize) -> Arc<dyn Store> {
    let url = format!("sqlite://{}", dir.join(name).display());
    let store: Arc<dyn Store> = SqliteStore::open(&url, SqliteOptions::default()).await.expect("open");
    let document = parse_value(config).expect("config");
    store.change_config(ConfigChange::Apply(document)).await.expect("apply");
    let live = store.load_config().await.expect("config");
    let rules = leadrelay_domain::compiled::CompiledRules::new(&live);
    let flow = &live.flows["solar"];
    let source = &live.sources["web"];
    let intake = Intake {
        flow,
        source,
        destinations: flow.destinations.iter().map(|id| &live.destinations[id]).collect(),
        rules: &rules,
    };
    let mut submissions = Vec::with_capacity(leads);
    for index in 0..leads {
        let fields = json!({"email": format!("d{index}@example.com"), "state": "TX"});
        let Value::Object(fields) = fields else { unreachable!() };
        let prepared = prepare(&intake, fields, now_millis());
        submissions.push(Submission::from_decision(decide(&intake, &prepared, None, now_millis()), None));
    }
    let mut tasks = Vec::new();
    for chunk in submissions.chunks(leads.div_ceil(64).max(1)) {
        let store = store.clone();
        let chunk = chunk.to_vec();
        tasks.push(tokio::spawn(async move {
            for submission in chunk {
                store.commit_submission(submission).await.expect("commit");
            }
        }));
    }
    for task in tasks {
        task.await.expect("load");
    }
    store
}

/// Runs the delivery service until every queued transfer is delivered; returns the time taken.
async fn deliver_all(store: &Arc<dyn Store>, expected: usize, count: &AtomicUsize) -> Duration {
    let configuration = ConfigHandle::load(store.clone()).await.expect("config");
    let clients = HttpClients::new(EgressPolicy::allow_private());
    let service = DeliveryService::new(store.clone(), clients, configuration.clone(), DeliverySettings::default());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let start = Instant::now();
    let runner = tokio::spawn(service.run(async move {
        let _ = stopped.await;
    }));
    // Done when the receiver has every request and no transfer waits any more.
    loop {
        tokio::time::sleep(Duration::from_millis(10)).await;
        if count.load(Ordering::Relaxed) < expected {
            continue;
        }
        let mut waiting = false;
        for id in configuration.current().destinations.keys() {
            waiting |= store.next_due(id).await.expect("next due").is_some();
        }
        if !waiting {
            break;
        }
    }
    let elapsed = start.elapsed();
    let _ = stop.send(());
    runner.await.expect("dispatcher");
    elapsed
}

/// The same requests as the deliveries, from a bare client, nothing stored.
async fn baseline(url: String, requests: usize, concurrency: usize) -> Duration {
    let client = reqwest::Client::builder().pool_max_idle_per_host(concurrency).build().expect("client");
    let next = Arc::new(AtomicUsize::new(0));
    let body = json!({"email": "d1@example.com", "state": "TX"}).to_string();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (client, url, next, body) = (client.clone(), url.clone(), next.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < requests {
                let response = client.post(&url).body(body.clone()).send().await.expect("request");
                assert!(response.status().is_success());
                let _ = response.bytes().await;
            }
        }));
    }
    for task in tasks {
        task.await.expect("client");
    }
    start.elapsed()
}

/// Attempt durations (ms) of the delivered events, for percentiles.
async fn durations(store: &Arc<dyn Store>) -> Vec<i64> {
    let query = EventQuery { event_type: Some(EventType::RecipientDelivered), ..Default::default() };
    let mut out = Vec::new();
    let mut after = None;
    loop {
        let page = store.scan_events(&query, after.as_ref(), 1000).await.expect("events");
        out.extend(page.iter().filter_map(|event| event.duration_ms));
        match page.last() {
            Some(last) if page.len() == 1000 => after = Some(last.cursor()),
            _ => break,
        }
    }
    out.sort_unstable();
    out
}

fn percentile(sorted: &[i64], p: f64) -> i64 {
    sorted.get(((sorted.len().max(1) - 1) as f64 * p).round() as usize).copied().unwrap_or(0)
}

fn main() {
    if std::env::var_os("DELIVER_SLOW_RECEIVER").is_some() {
        return run_slow_receiver();
    }
    let count = env_number("DELIVER_COUNT", 50_000);
    let concurrency = env_number("DELIVER_CONCURRENCY", 256);
    let slow_count = env_number("SLOW_COUNT", 10_000);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let dir = tempfile::tempdir().expect("temporary directory");
        // The slow phase runs first, so that its peak is not the fast phase's; its receiver is
        // a child process, so that the peak is the delivering process's own.
        let (slow, slow_received, mut child) = receiver_process().await;
        let destinations = slow_count.div_ceil(1000);
        let store =
            queued_store(dir.path(), "slow.db", config(&slow, destinations, 1000), slow_count / destinations).await;
        let before = memory_mib("VmRSS:");
        let peak_before = memory_mib("VmHWM:");
        // Start the peak over (Linux ≥ 4.0), so that it is the delivering's own, not that of
        // queueing the leads above.
        let reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();
        let expected = (slow_count / destinations) * destinations;
        let elapsed = deliver_all(&store, expected, &slow_received).await;
        println!(
            "slow receiver (1 s): {expected} deliveries, {destinations} destinations of 1000 in flight each: \
             done in {:.1} s; peak RSS while delivering {:.0} MiB{} (RSS before delivering: {before:.0} MiB, peak \
             while queueing {peak_before:.0} MiB; the receiver is another process)",
            elapsed.as_secs_f64(),
            memory_mib("VmHWM:"),
            if reset { "" } else { " (peak of the whole process: /proc/self/clear_refs refused)" }
        );
        store.close().await;
        let _ = child.kill();
        let _ = child.wait();

        let (fast, fast_count) = receiver(Duration::ZERO).await;
        let store = queued_store(dir.path(), "fast.db", config(&fast, 1, concurrency), count).await;
        let base = baseline(format!("{fast}/leads"), count, concurrency).await;
        fast_count.store(0, Ordering::Relaxed);
        let elapsed = deliver_all(&store, count, &fast_count).await;
        let rate = count as f64 / elapsed.as_secs_f64();
        let base_rate = count as f64 / base.as_secs_f64();
        let sorted = durations(&store).await;
        assert_eq!(sorted.len(), count, "every transfer has its delivered event");
        println!(
            "deliveries: {count} at concurrency {concurrency}: {rate:.0}/s (attempt p50 {} ms, p99 {} ms); \
             bare client baseline {base_rate:.0}/s; ratio {:.2}",
            percentile(&sorted, 0.5),
            percentile(&sorted, 0.99),
            rate / base_rate
        );
        let report = store.verify_chain().await.expect("verify");
        assert_eq!(report.first_broken, None);
        store.close().await;
    });
}
