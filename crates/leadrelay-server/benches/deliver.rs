//! Delivery throughput and memory, on this machine:
//!
//! 1. deliveries per second to a fast local receiver, each with its durable records (the
//!    outcome event in the hash chain, the transfer's state, the attempt row), beside a
//!    baseline in the same run: the same requests from a bare HTTP client, nothing stored;
//! 2. peak memory (RSS) with 10,000 deliveries in flight at once to a receiver that answers
//!    after 1 s, and not before all of them are in: the leads are queued here, then delivered
//!    by a process of its own that opens the store.
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

/// Starts this benchmark again as a slow receiver in a child process, which holds every
/// request for 1 s and until all `expected` are in (so that they are all in flight at once;
/// at most `SLOW_HOLD_LIMIT`); counts the requests it reports, one line each on its standard
/// output, and keeps the most it held at once (each line says it).
async fn receiver_process(expected: usize) -> (String, Arc<AtomicUsize>, Arc<AtomicUsize>, std::process::Child) {
    use std::io::BufRead;
    let mut child = std::process::Command::new(std::env::current_exe().expect("this binary"))
        .env("DELIVER_SLOW_RECEIVER", expected.to_string())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("receiver process");
    let stdout = child.stdout.take().expect("stdout");
    let (address_sender, address) = tokio::sync::oneshot::channel();
    let count = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let (counter, most_seen) = (count.clone(), most.clone());
    std::thread::spawn(move || {
        let mut lines = std::io::BufReader::new(stdout).lines();
        let first = lines.next().and_then(Result::ok).unwrap_or_default();
        let _ = address_sender.send(first);
        for line in lines.map_while(Result::ok) {
            let held = line.rsplit(' ').next().and_then(|number| number.parse().ok()).unwrap_or(0);
            most_seen.fetch_max(held, Ordering::Relaxed);
            counter.fetch_add(1, Ordering::Relaxed);
        }
    });
    (address.await.expect("receiver address"), count, most, child)
}

/// The longest the slow receiver holds a request while it waits for the others; below the
/// destinations' timeout.
const SLOW_HOLD_LIMIT: Duration = Duration::from_secs(8);

/// The child process of [`receiver_process`]: prints its address, then a line per request
/// with the most requests it has held at once.
fn run_slow_receiver(expected: usize) {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let held = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let arrived = Arc::new(AtomicUsize::new(0));
        let (all_in, all_in_seen) = tokio::sync::watch::channel(false);
        let all_in = Arc::new(all_in);
        let app = axum::Router::new().fallback(move || {
            let (held, most, arrived, all_in) = (held.clone(), most.clone(), arrived.clone(), all_in.clone());
            let mut all_in_seen = all_in_seen.clone();
            async move {
                most.fetch_max(held.fetch_add(1, Ordering::Relaxed) + 1, Ordering::Relaxed);
                if arrived.fetch_add(1, Ordering::Relaxed) + 1 >= expected {
                    all_in.send_replace(true);
                }
                // The guard `wait_for` answers with is not `Send`: let it go at once.
                let everyone = tokio::time::timeout(SLOW_HOLD_LIMIT, async move {
                    let _ = all_in_seen.wait_for(|all| *all).await.map(|_| ());
                });
                let _ = tokio::join!(tokio::time::sleep(Duration::from_secs(1)), everyone);
                held.fetch_sub(1, Ordering::Relaxed);
                println!("answered {}", most.load(Ordering::Relaxed));
                "{\"accepted\":true}"
            }
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

/// Resolves once `count` has reached `expected`.
async fn reaching(count: &AtomicUsize, expected: usize) {
    while count.load(Ordering::Relaxed) < expected {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Runs the delivery service until the receiver has `answered` every request and no
/// transfer waits any more; returns the time taken.
async fn deliver_all(store: &Arc<dyn Store>, answered: impl std::future::Future<Output = ()>) -> Duration {
    let configuration = ConfigHandle::load(store.clone()).await.expect("config");
    let clients = HttpClients::new(EgressPolicy::allow_private());
    let service = DeliveryService::new(store.clone(), clients, configuration.clone(), DeliverySettings::default());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let start = Instant::now();
    let runner = tokio::spawn(service.run(async move {
        let _ = stopped.await;
    }));
    answered.await;
    loop {
        let mut waiting = false;
        for id in configuration.current().destinations.keys() {
            waiting |= store.next_due(id).await.expect("next due").is_some();
        }
        if !waiting {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let elapsed = start.elapsed();
    let _ = stop.send(());
    runner.await.expect("dispatcher");
    elapsed
}

/// The delivering process of the slow phase: opens the store its parent queued, delivers
/// every transfer, and prints the time taken, its RSS once the store was open and its peak
/// RSS. Its parent writes a line to its standard input once the receiver has answered all.
fn run_slow_sender(path: std::ffi::OsString) {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let url = format!("sqlite://{}", std::path::Path::new(&path).display());
        let store: Arc<dyn Store> = SqliteStore::open(&url, SqliteOptions::default()).await.expect("open");
        let opened = memory_mib("VmRSS:");
        let (answered_sender, answered) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            let _ = std::io::stdin().read_line(&mut String::new());
            let _ = answered_sender.send(());
        });
        let elapsed = deliver_all(&store, async {
            let _ = answered.await;
        })
        .await;
        println!("{} {opened} {}", elapsed.as_secs_f64(), memory_mib("VmHWM:"));
        store.close().await;
    });
}

/// Delivers the transfers queued in the store at `path` from a process of their own (so that
/// its memory is the delivering's alone, not that of queueing them), once `received` reaches
/// `expected`; returns the time taken, the RSS once the store was open and the peak RSS (MiB).
async fn slow_sender_process(path: &std::path::Path, received: &AtomicUsize, expected: usize) -> (f64, f64, f64) {
    use std::io::Write;
    let mut child = std::process::Command::new(std::env::current_exe().expect("this binary"))
        .env("DELIVER_SLOW_SENDER", path)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("sender process");
    let mut stdin = child.stdin.take().expect("stdin");
    reaching(received, expected).await;
    writeln!(stdin, "answered").expect("tell the sender");
    drop(stdin);
    let output = tokio::task::spawn_blocking(move || child.wait_with_output()).await.expect("wait").expect("sender");
    let text = String::from_utf8_lossy(&output.stdout);
    let figures: Vec<f64> = text.split_whitespace().filter_map(|figure| figure.parse().ok()).collect();
    assert!(output.status.success() && figures.len() == 3, "the sender reported {text:?}");
    (figures[0], figures[1], figures[2])
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
    if let Ok(expected) = std::env::var("DELIVER_SLOW_RECEIVER") {
        return run_slow_receiver(expected.parse().expect("the number of slow deliveries"));
    }
    if let Some(path) = std::env::var_os("DELIVER_SLOW_SENDER") {
        return run_slow_sender(path);
    }
    let count = env_number("DELIVER_COUNT", 50_000);
    let concurrency = env_number("DELIVER_CONCURRENCY", 256);
    let slow_count = env_number("SLOW_COUNT", 10_000);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let dir = tempfile::tempdir().expect("temporary directory");
        // The slow phase: the leads are queued here, then delivered by a process of their own
        // to a receiver in another, so that the peak is the delivering's alone.
        let destinations = slow_count.div_ceil(1000);
        let expected = (slow_count / destinations) * destinations;
        let (slow, slow_received, most_held, mut receiver_child) = receiver_process(expected).await;
        let store =
            queued_store(dir.path(), "slow.db", config(&slow, destinations, 1000), slow_count / destinations).await;
        store.close().await;
        let (elapsed, opened, peak) = slow_sender_process(&dir.path().join("slow.db"), &slow_received, expected).await;
        println!(
            "slow receiver (1 s, and until all are in): {expected} deliveries, {destinations} destinations of 1000 in flight each: \
             done in {elapsed:.1} s, at most {} in flight at once; peak RSS of the delivering process {peak:.0} MiB \
             ({opened:.0} MiB once its store was open)",
            most_held.load(Ordering::Relaxed),
        );
        let _ = receiver_child.kill();
        let _ = receiver_child.wait();

        let (fast, fast_count) = receiver(Duration::ZERO).await;
        let store = queued_store(dir.path(), "fast.db", config(&fast, 1, concurrency), count).await;
        let base = baseline(format!("{fast}/leads"), count, concurrency).await;
        fast_count.store(0, Ordering::Relaxed);
        let elapsed = deliver_all(&store, reaching(&fast_count, count)).await;
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
