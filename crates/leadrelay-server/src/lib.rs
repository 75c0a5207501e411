//! The HTTP API of leadrelay: intake, configuration, the event log, leads, the register,
//! export, access control and health, as one axum router.

#![forbid(unsafe_code)]

mod auth;
mod config_api;
mod delivery_api;
mod error;
pub mod export;
mod intake;
mod jobs;
mod listen;
mod openapi;
mod params;
mod read_api;
mod tokens_api;
mod web;

use std::future::Future;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use leadrelay_delivery::attempt::HttpClients;
use leadrelay_delivery::guard::{EgressPolicy, Lookup, SystemLookup};
use leadrelay_delivery::{DeliveryService, DeliverySettings};
use leadrelay_store::{ConfigHandle, LiveConfig, Store, StoreSignal};
use serde_json::json;
use tokio::net::TcpListener;

pub use auth::{hash_token, new_token_value};
pub use error::{ApiError, ApiResult};

/// Limits and switches of the HTTP layer.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Largest request body accepted, in bytes (SPEC 8: 1 MiB by default).
    pub max_body_bytes: usize,
    /// Most fields one submission may carry.
    pub max_fields: usize,
    /// Longest value (and name) of one submitted field, in bytes.
    pub max_field_bytes: usize,
    /// What outbound calls (destinations, enhancements, tests) may reach.
    pub egress: EgressPolicy,
    /// How outbound calls resolve names (the system resolver; tests give a table).
    pub lookup: Arc<dyn Lookup>,
    pub delivery: DeliverySettings,
    /// Whether `serve` runs the background dispatcher (an intake-only node does not).
    pub dispatch: bool,
    /// Longest a request body may take to arrive: a client that sends its headers and then
    /// trickles (or never sends) the body it announced gets `408`, and holds no connection.
    pub body_timeout: std::time::Duration,
    /// Longest a client may take to send a request's headers, from when its connection is idle
    /// (new, or kept alive after a response); past it the connection is closed.
    pub header_timeout: std::time::Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            max_body_bytes: 1 << 20,
            max_fields: 500,
            max_field_bytes: 64 << 10,
            egress: EgressPolicy::default(),
            lookup: Arc::new(SystemLookup),
            delivery: DeliverySettings::default(),
            dispatch: true,
            body_timeout: std::time::Duration::from_secs(30),
            header_timeout: std::time::Duration::from_secs(30),
        }
    }
}

/// What every handler shares: the store, the configuration in force, the delivery service
/// and the settings.
pub struct AppState {
    pub store: Arc<dyn Store>,
    pub configuration: Arc<ConfigHandle>,
    pub delivery: Arc<DeliveryService>,
    pub settings: Settings,
    /// The jobs this node is running, so that it never starts one twice.
    running_jobs: std::sync::Mutex<std::collections::HashSet<String>>,
    /// The web overview's counts of past days.
    overview: web::OverviewCache,
    /// Submissions with an idempotency key still waiting for their realtime destinations.
    pub(crate) realtime_waits: intake::RealtimeWaits,
}

impl AppState {
    /// Loads the configuration from the store once; later changes through the API refresh it.
    pub async fn new(store: Arc<dyn Store>, settings: Settings) -> Result<Arc<Self>, leadrelay_store::StoreError> {
        let configuration = ConfigHandle::load(store.clone()).await?;
        let clients = HttpClients::with_lookup(settings.egress.clone(), settings.lookup.clone());
        let delivery = DeliveryService::new(store.clone(), clients, configuration.clone(), settings.delivery.clone());
        Ok(Arc::new(Self {
            store,
            configuration,
            delivery,
            settings,
            running_jobs: Default::default(),
            overview: Default::default(),
            realtime_waits: Default::default(),
        }))
    }

    pub fn config(&self) -> Arc<LiveConfig> {
        self.configuration.current()
    }

    /// The configuration as stored when a request arrived at `since`: read again when the one
    /// in force is older, so that what `leadrelay apply` (or another node) changed before the
    /// request is in force for it. For lookups that found nothing, and admin reads.
    pub async fn config_since(&self, since: tokio::time::Instant) -> ApiResult<Arc<LiveConfig>> {
        Ok(self.configuration.current_since(since).await?)
    }

    /// A page of the register as people read it: a transfer waiting for a destination that
    /// is disabled says it is held, whatever its last step said ("Retry 1 of 3 at …").
    pub async fn register_page(
        &self,
        query: &leadrelay_store::RegisterQuery,
    ) -> leadrelay_store::StoreResult<leadrelay_store::Page<leadrelay_store::TransferRow>> {
        let mut page = self.store.register_page(query).await?;
        let config = self.config();
        for row in page.items.iter_mut().filter(|row| row.status == leadrelay_domain::event::RegisterStatus::New) {
            let destination = row.destination_id.as_deref().and_then(|id| config.destinations.get(id));
            if let Some(destination) = destination.filter(|destination| !destination.enabled) {
                row.description = leadrelay_domain::pipeline::held_reason(destination);
            }
        }
        Ok(page)
    }

    /// Applies a change through the store and puts the result in force.
    async fn change_config(
        &self,
        change: leadrelay_domain::config::ConfigChange,
    ) -> Result<Arc<LiveConfig>, leadrelay_store::ConfigWriteError> {
        self.configuration.change(change).await
    }
}

/// The whole HTTP surface.
pub fn router(state: Arc<AppState>) -> Router {
    let admin = Router::new()
        .merge(config_api::routes())
        .merge(delivery_api::routes())
        .merge(read_api::routes())
        .merge(tokens_api::routes())
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), auth::require_admin));
    Router::new()
        .merge(intake::routes())
        .merge(admin)
        .merge(web::routes())
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        // The API's description is public, as its operations are documented (SPEC 5).
        .route("/api/v1/openapi.json", get(openapi::openapi_json))
        .fallback(not_found)
        .layer(axum::middleware::map_response(error::json_errors))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(|_| {
            ApiError::Internal("a handler panicked".to_owned()).into_response()
        }))
        .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(state.settings.body_timeout))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::not_found("route_not_found", "no such endpoint")
}

/// The process is up.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, description = "Up")), security(()))]
async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// The store answers.
#[utoipa::path(get, path = "/readyz", tag = "operations", responses((status = 200, description = "Ready"), (status = 503, description = "The store does not answer, or its last write failed (a full disk); ready again once a write commits")), security(()))]
async fn readyz(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    match state.store.ping().await {
        Ok(()) => (StatusCode::OK, Json(json!({"status": "ready", "store": state.store.engine()}))),
        Err(error) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "unavailable", "store": state.store.engine(), "error": error.to_string()})),
        ),
    }
}

/// Serves the API and delivers transfers until `shutdown` completes; then finishes in-flight
/// requests, stops claiming deliveries, lets those in flight finish (or releases them) and
/// returns.
pub async fn serve(
    listener: TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop.send(true);
    });
    let until_stopped = |mut receiver: tokio::sync::watch::Receiver<bool>| async move {
        let _ = receiver.wait_for(|stopped| *stopped).await;
    };
    let dispatcher =
        state.settings.dispatch.then(|| tokio::spawn(state.delivery.clone().run(until_stopped(stopped.clone()))));
    let watcher = match state.store.signals().await {
        Ok(Some(signals)) => Some(tokio::spawn(follow_other_nodes(state.clone(), signals))),
        Ok(None) => None,
        Err(error) => {
            tracing::error!(%error, "cannot hear other nodes; configuration changes they make apply here after a restart");
            None
        }
    };
    // Jobs left running, now and whenever a node that ran one stops renewing its lease.
    let resumer = {
        let state = state.clone();
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(std::time::Duration::from_millis(jobs::JOB_LEASE_MS as u64 / 2));
            loop {
                ticker.tick().await;
                if let Err(error) = jobs::resume(&state).await {
                    tracing::error!(%error, "could not resume the jobs left running");
                }
            }
        })
    };
    let warming = tokio::spawn(web::warm_overview(state.clone()));
    let header_timeout = state.settings.header_timeout;
    listen::serve_connections(listener, router(state), header_timeout, until_stopped(stopped)).await;
    if let Some(dispatcher) = dispatcher {
        if let Err(error) = dispatcher.await {
            tracing::error!(%error, "the delivery dispatcher ended abnormally");
        }
    }
    if let Some(watcher) = watcher {
        watcher.abort();
    }
    resumer.abort();
    warming.abort();
    Ok(())
}

/// Acts on what other nodes on the same database do: their configuration changes are put in
/// force here, and the transfers they queue wake this node's dispatcher.
async fn follow_other_nodes(state: Arc<AppState>, mut signals: futures::stream::BoxStream<'static, StoreSignal>) {
    use futures::StreamExt;
    while let Some(signal) = signals.next().await {
        match signal {
            StoreSignal::ConfigChanged => {
                if let Err(error) = state.configuration.reload().await {
                    tracing::warn!(%error, "could not load the configuration another node changed");
                }
            }
            StoreSignal::TransfersQueued => state.delivery.wake(),
        }
    }
}
