//! `leadrelay demo`: a playground that needs nothing but this binary. It runs the server on a
//! temporary SQLite file, a stand-in CRM and a stand-in lead buyer on 127.0.0.1, a sample flow
//! with two sources and two destinations, and a steady stream of realistic sample leads sent
//! through the real intake API, and prints where to sign in.

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use axum::{Json, Router};
use leadrelay_delivery::guard::EgressPolicy;
use leadrelay_domain::config::{parse_value, ConfigChange};
use leadrelay_domain::ids::TokenId;
use leadrelay_domain::time::now_millis;
use leadrelay_server::{hash_token, new_token_value, AppState, Settings};
use leadrelay_store::{NewToken, Role};
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

pub struct DemoOptions {
    pub listen: String,
    /// Sample leads per second.
    pub rate: f64,
    /// Keep the database file when the demo stops.
    pub keep: bool,
}

/// How the stand-ins answer: by the lead's `webhook-id`, so a retry of the same delivery sees
/// what its first attempt saw.
#[derive(Default)]
struct StandIns {
    attempts: Mutex<HashMap<String, u32>>,
}

impl StandIns {
    /// How many times this delivery was tried before, counting this one.
    fn attempt(&self, headers: &HeaderMap) -> u32 {
        let id = headers.get("webhook-id").and_then(|value| value.to_str().ok()).unwrap_or("").to_owned();
        let mut attempts = self.attempts.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let count = attempts.entry(id).or_insert(0);
        *count += 1;
        *count
    }
}

/// A number from 0 to 99 that depends only on the text, so each lead meets the same fate.
fn bucket(text: &str) -> u64 {
    text.bytes().fold(7u64, |hash, byte| hash.wrapping_mul(31).wrapping_add(u64::from(byte))) % 100
}

/// The stand-in CRM: accepts most leads; refuses a few (a business reason, not retried); for
/// some, fails twice with a 503 before accepting (retried, then delivered); and for a few it
/// is always down, so that they end in the not-integrated collection.
async fn crm(State(stand_ins): State<Arc<StandIns>>, headers: HeaderMap, Json(lead): Json<Value>) -> impl IntoResponse {
    let attempt = stand_ins.attempt(&headers);
    let email = lead.get("email").and_then(Value::as_str).unwrap_or("");
    match bucket(email) {
        0..8 => (StatusCode::UNPROCESSABLE_ENTITY, Json(json!({"error": "already a customer in the CRM"}))),
        8..11 => (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"error": "CRM maintenance window"}))),
        11..23 if attempt <= 2 => (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"error": "CRM is busy, try later"}))),
        _ => (
            StatusCode::OK,
            Json(json!({"status": "accepted", "crm_id": format!("C-{}", 10_000 + bucket(email) * 37)})),
        ),
    }
}

/// The stand-in buyer: buys leads whose monthly bill is high enough, answering in its body.
async fn buyer(
    State(stand_ins): State<Arc<StandIns>>,
    headers: HeaderMap,
    Json(lead): Json<Value>,
) -> impl IntoResponse {
    let attempt = stand_ins.attempt(&headers);
    let bill = lead.get("monthly_bill").and_then(|bill| bill.as_f64().or_else(|| bill.as_str()?.parse().ok()));
    let email = lead.get("email").and_then(Value::as_str).unwrap_or("");
    if bucket(email) % 10 == 3 && attempt == 1 {
        return (StatusCode::BAD_GATEWAY, Json(json!({"error": "upstream timeout"})));
    }
    match bill {
        Some(bill) if bill >= 120.0 => (StatusCode::OK, Json(json!({"result": "sold", "price": 25}))),
        _ => (StatusCode::OK, Json(json!({"result": "rejected", "reason": "monthly bill under 120"}))),
    }
}

async fn start_stand_ins() -> anyhow::Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.context("while starting the stand-in CRM")?;
    let address = format!("http://{}", listener.local_addr()?);
    let app = Router::new()
        .route("/crm/leads", post(crm))
        .route("/buyer/leads", post(buyer))
        .with_state(Arc::new(StandIns::default()));
    tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, app).await {
            tracing::error!(%error, "the stand-in CRM stopped");
        }
    });
    Ok(address)
}

/// The sample configuration: one flow, two sources, two destinations on the stand-ins.
fn sample_config(stand_ins: &str) -> Value {
    json!({
        "flows": [{
            "id": "solar", "name": "Solar quotes",
            "fields": [
                {"name": "email", "type": "email", "pii": true},
                {"name": "phone", "type": "phone", "pii": true},
                {"name": "first_name", "type": "name", "pii": true},
                {"name": "last_name", "type": "name", "pii": true},
                {"name": "state", "type": "state", "required": true},
                {"name": "postal_code", "type": "postal_code"},
                {"name": "monthly_bill", "type": "number"}
            ],
            "require_contact": true,
            "duplicates": {"keys": ["email", "phone"], "match": "any", "window_days": 30, "policy": "reject"},
            "filters": [{"name": "service-area", "rules": {"all": [
                {"field": "state", "op": "in", "value": ["TX", "CA", "FL", "AZ", "NV", "NM", "CO"]}]}}],
            "destinations": ["crm", "buyer"]
        }],
        "sources": [
            {"id": "website", "name": "Website quote form", "flow_id": "solar", "kind": "web_form", "price": 1.5,
             "field_map": {"e-mail": "email", "zip": "postal_code"}},
            {"id": "vendor", "name": "Lead vendor (SunLeads)", "flow_id": "solar", "kind": "vendor", "price": 6.0}
        ],
        "destinations": [
            {"id": "crm", "name": "Sales CRM", "kind": "webhook", "url": format!("{stand_ins}/crm/leads"),
             "retry": {"max_attempts": 4, "schedule_ms": [3000, 8000, 15000], "jitter": 0.2},
             "signing_secret": "whsec_ZGVtby1zaWduaW5nLXNlY3JldC0wMTIzNDU2Nzg5", "timeout_ms": 3000},
            {"id": "buyer", "name": "Buyer: BrightRoof", "kind": "webhook", "url": format!("{stand_ins}/buyer/leads"),
             "success": {"status": "200-299", "json_path": "$.result", "json_equals": "sold"},
             "retry": {"max_attempts": 3, "schedule_ms": [4000, 10000], "jitter": 0.2},
             "filter": {"all": [{"field": "monthly_bill", "op": "gte", "value": 60}]},
             "price": 25.0, "timeout_ms": 3000}
        ]
    })
}

const FIRST: [&str; 16] = [
    "Maria", "James", "Aisha", "Wei", "Carlos", "Emily", "Noah", "Priya", "Liam", "Sofia", "Mateo", "Hannah", "Omar",
    "Grace", "Daniel", "Chloe",
];
const LAST: [&str; 14] = [
    "Garcia", "Smith", "Johnson", "Nguyen", "Patel", "Brown", "Martinez", "Lee", "Davis", "Lopez", "Wilson", "Kim",
    "Anderson", "Clark",
];
const STATES: [(&str, &str, &str); 10] = [
    ("TX", "512", "78701"),
    ("CA", "415", "94103"),
    ("FL", "305", "33101"),
    ("AZ", "602", "85004"),
    ("NV", "702", "89101"),
    ("CO", "303", "80202"),
    ("NY", "212", "10001"),
    ("TX", "214", "75201"),
    ("CA", "213", "90012"),
    ("WA", "206", "98101"),
];
const DOMAINS: [&str; 5] = ["gmail.com", "yahoo.com", "outlook.com", "icloud.com", "proton.me"];

/// One sample lead and the source it comes from: mostly good leads, with some duplicates,
/// some outside the service area and some without any way to contact the person.
fn sample_lead(rng: &mut impl Rng, sent: &mut Vec<Value>) -> (&'static str, Value) {
    let source = if rng.random_bool(0.7) { "website" } else { "vendor" };
    if !sent.is_empty() && rng.random_bool(0.04) {
        let earlier = sent.choose(rng).cloned().unwrap_or_default();
        return (source, earlier);
    }
    let first = FIRST.choose(rng).copied().unwrap_or("Alex");
    let last = LAST.choose(rng).copied().unwrap_or("Doe");
    let (state, area, zip) = STATES.choose(rng).copied().unwrap_or(STATES[0]);
    let number: u32 = rng.random_range(0..10_000);
    let email = format!(
        "{}.{}{}@{}",
        first.to_lowercase(),
        last.to_lowercase(),
        number,
        DOMAINS.choose(rng).unwrap_or(&"gmail.com")
    );
    let phone = format!("({area}) {}-{:04}", rng.random_range(200..999), rng.random_range(0..10_000));
    let bill = rng.random_range(40..320);
    let mut lead = json!({"first_name": first, "last_name": last, "state": state, "monthly_bill": bill});
    let email_key = if source == "website" { "e-mail" } else { "email" };
    let zip_key = if source == "website" { "zip" } else { "postal_code" };
    lead[zip_key] = json!(zip);
    if !rng.random_bool(0.04) {
        lead[email_key] = json!(email);
        lead["phone"] = json!(phone);
    }
    if sent.len() < 500 {
        sent.push(lead.clone());
    }
    (source, lead)
}

/// Submits sample leads through the intake API at about `rate` per second, until stopped.
async fn stream_leads(base: String, rate: f64) {
    let client = reqwest::Client::new();
    let mut sent = Vec::new();
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(0.01)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut rng = rand::rngs::StdRng::from_os_rng();
    loop {
        ticker.tick().await;
        let (source, lead) = sample_lead(&mut rng, &mut sent);
        let url = format!("{base}/api/v1/sources/{source}/submit");
        if let Err(error) = client.post(&url).json(&lead).send().await {
            tracing::warn!(%error, "a sample lead could not be sent");
        }
    }
}

pub async fn demo(options: DemoOptions) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        options.rate > 0.0 && options.rate <= 1000.0,
        "--rate must be more than 0 and at most 1000 leads per second"
    );
    let dir =
        tempfile::Builder::new().prefix("leadrelay-demo-").tempdir().context("while making a temporary directory")?;
    let database = dir.path().join("demo.db");
    let store = crate::commands::open_server_store(&format!("sqlite://{}", database.display())).await?;
    let token = new_token_value();
    store
        .create_token(NewToken {
            id: TokenId::generate().into_string(),
            name: "demo".to_owned(),
            role: Role::Admin,
            hash: hash_token(&token),
            created_at: now_millis(),
        })
        .await
        .context("while creating the demo's token")?;
    let stand_ins = start_stand_ins().await?;
    let document = parse_value(sample_config(&stand_ins)).context("the sample configuration is invalid")?;
    store.change_config(ConfigChange::Apply(document)).await.context("while applying the sample configuration")?;

    // The stand-ins live on 127.0.0.1: the demo lets outbound calls reach loopback.
    let settings = Settings { egress: EgressPolicy::allow_private(), ..Settings::default() };
    let state = AppState::new(store.clone(), settings).await.context("while loading the configuration")?;
    let listener = tokio::net::TcpListener::bind(&options.listen)
        .await
        .with_context(|| format!("while binding {} (choose another with --listen 127.0.0.1:PORT)", options.listen))?;
    let address = listener.local_addr()?;
    let base = format!("http://{address}");
    let shutdown = crate::commands::shutdown_signal()?;
    println!("leadrelay demo listening on {base}");
    println!();
    println!("  Open    {base}/");
    println!("  Token   {token}");
    println!();
    println!("Sign in with the token. Sample leads arrive about {} per second from two sources", options.rate);
    println!("and go to a stand-in CRM ({stand_ins}/crm/leads) and a stand-in buyer; some are");
    println!("refused, some fail at first and are retried. The API takes the same token:");
    println!("  curl -H 'Authorization: Bearer {token}' {base}/api/v1/register");
    println!("Data: {} ({})", database.display(), if options.keep { "kept" } else { "removed on exit" });
    println!("Press Ctrl-C to stop.");
    use std::io::Write as _;
    let _ = std::io::stdout().flush();

    let leads = tokio::spawn(stream_leads(base, options.rate));
    let served = leadrelay_server::serve(listener, state, shutdown).await;
    leads.abort();
    store.close().await;
    served.context("while serving")?;
    if options.keep {
        let kept = dir.keep();
        println!("The demo's database is kept at {}", kept.join("demo.db").display());
    }
    Ok(ExitCode::SUCCESS)
}
