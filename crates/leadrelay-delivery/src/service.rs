//! The delivery service: claims due transfers per destination (never more than the
//! destination's concurrency, so one slow or dead destination never holds up the others),
//! delivers each, and records the outcome. The same service makes realtime deliveries for
//! intake and test calls for the API.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use leadrelay_domain::config::{Config, Destination, DestinationKind};
use leadrelay_domain::event::NewEvent;
use leadrelay_domain::time::{now_millis, Millis};
use leadrelay_store::{ClaimedTransfer, DeliveryClaim, DeliveryRecord, LoggedEvent, Store, StoreResult};
use serde_json::Value;
use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;

use crate::attempt::{attempt, AttemptInput, AttemptReport, HttpClients};
use crate::plan::{plan, realtime_answer};

/// How long a claim holds beyond the destination's timeout before another node may take
/// the transfer over.
const LEASE_MARGIN_MS: i64 = 30_000;

/// Most transfers one claim takes.
const MAX_CLAIM: usize = 256;

/// How often the dispatcher looks for due work when nothing woke it (other nodes' work,
/// retries that came due).
const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// Settings of the delivery service.
#[derive(Clone, Debug)]
pub struct DeliverySettings {
    /// How long shutdown waits for deliveries in flight before it releases them.
    pub drain_timeout: Duration,
}

impl Default for DeliverySettings {
    fn default() -> Self {
        Self { drain_timeout: Duration::from_secs(10) }
    }
}

/// What one dispatcher step did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StepOutcome {
    /// Transfers claimed and started.
    pub started: usize,
    /// The earliest time a destination with free capacity has work due, if any.
    pub next_due: Option<Millis>,
}

/// The lease a node takes on a destination's transfers.
pub fn lease_ms(destination: &Destination) -> i64 {
    i64::try_from(destination.timeout_ms).unwrap_or(120_000) + LEASE_MARGIN_MS
}

/// Delivers transfers: the background dispatcher, realtime deliveries and test calls.
pub struct DeliveryService {
    store: Arc<dyn Store>,
    clients: HttpClients,
    config: watch::Receiver<Arc<Config>>,
    owner: String,
    settings: DeliverySettings,
    /// Woken when new transfers are queued or a delivery finishes.
    wake: Notify,
    in_flight: Mutex<HashMap<String, usize>>,
}

impl DeliveryService {
    pub fn new(
        store: Arc<dyn Store>,
        clients: HttpClients,
        config: watch::Receiver<Arc<Config>>,
        settings: DeliverySettings,
    ) -> Arc<Self> {
        let owner = format!("node_{}", ulid::Ulid::new().to_string().to_lowercase());
        Arc::new(Self {
            store,
            clients,
            config,
            owner,
            settings,
            wake: Notify::new(),
            in_flight: Mutex::new(HashMap::new()),
        })
    }

    /// This node's name on its leases.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    pub fn clients(&self) -> &HttpClients {
        &self.clients
    }

    /// Tells the dispatcher that transfers were queued.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    fn in_flight(&self) -> std::sync::MutexGuard<'_, HashMap<String, usize>> {
        self.in_flight.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Makes one attempt for a claimed transfer and plans what it means; writes nothing.
    pub async fn attempt_claimed(&self, claimed: &ClaimedTransfer, destination: &Destination) -> DeliveryRecord {
        let now = now_millis();
        let report = self.attempt_snapshot(claimed, destination, now).await;
        plan(claimed, destination, &report, &self.owner, now_millis(), rand::random::<f64>())
    }

    async fn attempt_snapshot(
        &self,
        claimed: &ClaimedTransfer,
        destination: &Destination,
        now: Millis,
    ) -> AttemptReport {
        let snapshot: Value = serde_json::from_str(&claimed.snapshot).unwrap_or(Value::Null);
        attempt(
            &self.clients,
            AttemptInput {
                destination,
                snapshot: &snapshot,
                transfer_id: &claimed.transfer_id,
                webhook_id: &claimed.transfer_id,
                attempt: claimed.attempts + 1,
                previous_keys: &[],
                now,
            },
        )
        .await
    }

    /// Delivers realtime transfers this node holds (committed with the submission) while the
    /// submitter waits, records their outcomes with the submission's deferred
    /// `flow.completed`, and returns what the submit answer lists under `deliveries`.
    /// A delivery that fails continues in the background like any other.
    pub async fn deliver_realtime(
        &self,
        config: &Config,
        transfer_ids: &[String],
        completion: Option<NewEvent>,
    ) -> Vec<Value> {
        let claimed = match self.store.held_transfers(transfer_ids).await {
            Ok(claimed) => claimed,
            Err(error) => {
                // The leases run out and the dispatcher delivers them.
                tracing::error!(%error, "reading realtime transfers failed; they will be delivered in the background");
                return Vec::new();
            }
        };
        let attempts = claimed.iter().filter_map(|transfer| {
            let destination = config.destinations.get(&transfer.destination_id)?;
            Some(async move { (transfer, self.attempt_claimed(transfer, destination).await) })
        });
        let mut records = Vec::new();
        let mut answers = Vec::new();
        for (transfer, record) in futures::future::join_all(attempts).await {
            answers.push(realtime_answer(&record, &transfer.destination_id));
            records.push(record);
        }
        if let (Some(mut completion), Some(first)) = (completion, claimed.first()) {
            let now = now_millis();
            let started = completion.timestamp - completion.duration_ms.unwrap_or(0);
            completion.timestamp = now;
            completion.duration_ms = Some((now - started).max(0));
            records.push(DeliveryRecord {
                events: vec![LoggedEvent::new(completion, first.snapshot_id, &first.snapshot_digest)],
                update: None,
                attempt: None,
            });
        }
        if let Err(error) = self.store.record_deliveries(records).await {
            tracing::error!(%error, "recording realtime deliveries failed; they will be delivered again");
        }
        // A failed realtime delivery may now wait for a retry: let the dispatcher see it.
        self.wake();
        answers
    }

    /// Sends a sample lead to a destination now, writing nothing: what `…/test` answers.
    pub async fn test_destination(&self, destination: &Destination, snapshot: &Value) -> AttemptReport {
        let transfer_id = format!("trf_test_{}", ulid::Ulid::new().to_string().to_lowercase());
        attempt(
            &self.clients,
            AttemptInput {
                destination,
                snapshot,
                transfer_id: &transfer_id,
                webhook_id: &transfer_id,
                attempt: 1,
                previous_keys: &[],
                now: now_millis(),
            },
        )
        .await
    }

    /// One step of the dispatcher: for every enabled destination with free capacity, claims
    /// its due transfers and starts delivering them on `tasks`.
    pub async fn run_once(self: &Arc<Self>, tasks: &mut JoinSet<()>) -> StoreResult<StepOutcome> {
        let config = self.config.borrow().clone();
        let mut outcome = StepOutcome::default();
        for destination in config.destinations.values() {
            // A disabled destination's transfers are held, not claimed; they flow again when
            // it is enabled.
            if !destination.enabled || destination.kind != DestinationKind::Webhook {
                continue;
            }
            let busy = self.in_flight().get(&destination.id).copied().unwrap_or(0);
            let free = (destination.concurrency as usize).saturating_sub(busy);
            if free == 0 {
                continue;
            }
            let now = now_millis();
            let claim = DeliveryClaim {
                destination_id: destination.id.clone(),
                owner: self.owner.clone(),
                now,
                lease_ms: lease_ms(destination),
                limit: free.min(MAX_CLAIM),
            };
            let claimed = self.store.claim_deliveries(&claim).await?;
            if claimed.len() < free {
                if let Some(due) = self.store.next_due(&destination.id).await? {
                    outcome.next_due = Some(outcome.next_due.map_or(due, |next| next.min(due)));
                }
            }
            outcome.started += claimed.len();
            *self.in_flight().entry(destination.id.clone()).or_default() += claimed.len();
            for transfer in claimed {
                let service = self.clone();
                let destination = destination.clone();
                tasks.spawn(async move {
                    let record = service.attempt_claimed(&transfer, &destination).await;
                    if let Err(error) = service.store.record_deliveries(vec![record]).await {
                        // The lease runs out and the transfer is delivered again: at least once.
                        tracing::error!(%error, transfer_id = %transfer.transfer_id, "recording a delivery failed");
                    }
                    if let Some(count) = service.in_flight().get_mut(&destination.id) {
                        *count = count.saturating_sub(1);
                    }
                    service.wake.notify_one();
                });
            }
        }
        Ok(outcome)
    }

    /// Runs the dispatcher until `shutdown` completes; then stops claiming, lets deliveries in
    /// flight finish (up to the drain timeout) and gives back the leases of the rest.
    pub async fn run(self: Arc<Self>, shutdown: impl Future<Output = ()> + Send) {
        let mut tasks = JoinSet::new();
        let mut config = self.config.clone();
        tokio::pin!(shutdown);
        loop {
            while tasks.try_join_next().is_some() {}
            let step = match self.run_once(&mut tasks).await {
                Ok(step) => step,
                Err(error) => {
                    tracing::warn!(%error, "claiming deliveries failed");
                    StepOutcome { started: 0, next_due: Some(now_millis() + 1000) }
                }
            };
            if step.started > 0 {
                continue;
            }
            let wait = match step.next_due {
                Some(due) => Duration::from_millis(u64::try_from(due - now_millis()).unwrap_or(0)).min(POLL_INTERVAL),
                None => POLL_INTERVAL,
            };
            tokio::select! {
                _ = &mut shutdown => break,
                _ = self.wake.notified() => {}
                _ = async {
                    // With the sender gone the configuration never changes again.
                    if config.changed().await.is_err() {
                        std::future::pending::<()>().await;
                    }
                } => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
        let drained =
            tokio::time::timeout(self.settings.drain_timeout, async { while tasks.join_next().await.is_some() {} })
                .await;
        if drained.is_err() {
            tracing::warn!(left = tasks.len(), "deliveries still in flight at shutdown; releasing them");
            tasks.abort_all();
            while tasks.join_next().await.is_some() {}
        }
        match self.store.release_deliveries(&self.owner).await {
            Ok(0) => {}
            Ok(released) => tracing::info!(released, "released delivery leases"),
            Err(error) => tracing::warn!(%error, "releasing delivery leases failed; they expire on their own"),
        }
    }
}
