//! The delivery service: claims due transfers per destination (never more than the
//! destination's concurrency, so one slow or dead destination never holds up the others),
//! delivers each, and records the outcome. The same service makes realtime deliveries for
//! intake and test calls for the API.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use leadrelay_domain::caps::{applicable_caps, ApplicableCap, CapWindowKey};
use leadrelay_domain::config::{Config, ConfigChange, Destination, DestinationKind};
use leadrelay_domain::event::{EventType, Outcome, RegisterStatus};
use leadrelay_domain::lead::LeadView;
use leadrelay_domain::time::{now_millis, Millis};
use leadrelay_store::{
    ClaimedTransfer, ConfigHandle, DeliveryClaim, DeliveryRecord, LoggedEvent, Store, StoreResult, TransferState,
    TransferUpdate,
};
use serde_json::{Map, Value};
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinSet;

use crate::attempt::{attempt, AttemptInput, AttemptReport, AttemptVerdict, HttpClients};
use crate::judge::Verdict;
use crate::plan::{plan, realtime_answer, transfer_event};

/// How long a claim holds beyond the destination's timeout before another node may take
/// the transfer over.
const LEASE_MARGIN_MS: i64 = 30_000;

/// A finished delivery on its way to the recorder: its destination, its record, and the cap
/// windows it holds until the record is written.
pub type Finished = (String, DeliveryRecord, Option<CapReservation>);

/// Most finished deliveries written in one store call.
const RECORD_BATCH: usize = 512;

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
    config: Arc<ConfigHandle>,
    owner: String,
    settings: DeliverySettings,
    /// Woken when new transfers are queued or a delivery finishes.
    wake: Notify,
    in_flight: Mutex<HashMap<String, usize>>,
    /// Cap windows' deliveries in flight on this node.
    reserved: Arc<Mutex<HashMap<CapWindowKey, u64>>>,
    /// Technical failures in a row, per destination (for circuit breakers).
    failures: Mutex<HashMap<String, u32>>,
}

/// One of a destination's connections, held by a realtime call; given back when dropped.
struct Slot<'a> {
    service: &'a DeliveryService,
    destination_id: String,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        if let Some(count) = self.service.in_flight().get_mut(&self.destination_id) {
            *count = count.saturating_sub(1);
        }
    }
}

/// Deliveries reserved in cap windows; given back when dropped.
pub struct CapReservation {
    reserved: Arc<Mutex<HashMap<CapWindowKey, u64>>>,
    keys: Vec<CapWindowKey>,
}

impl Drop for CapReservation {
    fn drop(&mut self) {
        let mut reserved = self.reserved.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        for key in &self.keys {
            if let Some(count) = reserved.get_mut(key) {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    reserved.remove(key);
                }
            }
        }
    }
}

/// Why a delivery may not go ahead under its destination's caps.
enum CapRefusal {
    /// A cap is reached: the transfer is skipped, with the cap's description.
    Reached { reason: String, cap: Value },
    /// Deliveries in flight would reach a cap if they all succeeded: the transfer waits for
    /// their outcomes (only successes count, so a refused one frees its place).
    Busy(String),
    /// The counts could not be read: the transfer waits and is tried again.
    Unknown(String),
}

/// How long a transfer waits while deliveries in flight hold its cap's last places.
const CAP_BUSY_RETRY_MS: i64 = 1_000;

/// How long a transfer waits when its caps could not be checked.
const CAP_CHECK_RETRY_MS: i64 = 5_000;

/// A transfer whose caps could not be checked: nothing is attempted or recorded as an event;
/// it is due again shortly, its attempts unchanged.
fn postponed(claimed: &ClaimedTransfer, owner: &str, reason: String, now: Millis, wait_ms: i64) -> DeliveryRecord {
    DeliveryRecord {
        events: Vec::new(),
        update: Some(TransferUpdate {
            transfer_id: claimed.transfer_id.clone(),
            owner: Some(owner.to_owned()),
            status: RegisterStatus::New,
            description: format!("Waiting: {reason}"),
            state: TransferState::Pending { due_at: now + wait_ms },
            attempts: claimed.attempts,
            updated_at: now,
            retry_base: None,
        }),
        attempt: None,
        cap_counts: Vec::new(),
    }
}

/// A transfer a cap or the destination's filter stops: `recipient.skipped`, and the transfer
/// ends as skipped.
fn skipped(claimed: &ClaimedTransfer, owner: &str, reason: String, data: Value, now: Millis) -> DeliveryRecord {
    let mut event = transfer_event(claimed, EventType::RecipientSkipped, now);
    event.data = data;
    event.status = Some(RegisterStatus::Skip);
    event.outcome = Some(Outcome::Failure);
    event.reason = Some(reason.clone());
    DeliveryRecord {
        events: vec![LoggedEvent::new(event, claimed.snapshot_id, &claimed.snapshot_digest)],
        update: Some(TransferUpdate {
            transfer_id: claimed.transfer_id.clone(),
            owner: Some(owner.to_owned()),
            status: RegisterStatus::Skip,
            description: reason,
            state: TransferState::Done,
            attempts: claimed.attempts,
            updated_at: now,
            retry_base: None,
        }),
        attempt: None,
        cap_counts: Vec::new(),
    }
}

impl DeliveryService {
    pub fn new(
        store: Arc<dyn Store>,
        clients: HttpClients,
        config: Arc<ConfigHandle>,
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
            reserved: Arc::default(),
            failures: Mutex::new(HashMap::new()),
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

    /// Delivers a claimed transfer once (unless a cap stops it) and plans what it means;
    /// writes nothing. The caps stay reserved until the returned guard is dropped, which the
    /// caller does once the record is written.
    /// Realtime deliveries hold their transfers under this name, apart from the dispatcher's
    /// claims, so that the dispatcher giving back its leases at shutdown never frees a
    /// transfer a request handler is still delivering.
    pub fn realtime_owner(&self) -> String {
        format!("{}:realtime", self.owner)
    }

    /// Delivers a realtime transfer once (unless a cap stops it) and plans what it means;
    /// writes nothing. The caps stay reserved until the returned guard is dropped, which the
    /// caller does once the record is written.
    pub async fn attempt_realtime(
        &self,
        claimed: &ClaimedTransfer,
        destination: &Destination,
    ) -> (DeliveryRecord, Option<CapReservation>) {
        let now = now_millis();
        let snapshot: Value = serde_json::from_str(&claimed.snapshot).unwrap_or(Value::Null);
        self.attempt_parsed(claimed, destination, snapshot, now, &self.realtime_owner()).await
    }

    async fn attempt_parsed(
        &self,
        claimed: &ClaimedTransfer,
        destination: &Destination,
        snapshot: Value,
        now: Millis,
        owner: &str,
    ) -> (DeliveryRecord, Option<CapReservation>) {
        // The destination's filter as it is now: a resent transfer that the filter skipped (or
        // would skip since it changed) is skipped again, never delivered against it.
        let refusal = self.config.current().rules.destination_filter(&destination.id).and_then(|rules| {
            let verdict = rules.evaluate(&LeadView(&snapshot));
            (!verdict.passed).then_some(verdict)
        });
        if let Some(verdict) = refusal {
            // The same verdict, and the same data, as a skip decided at intake.
            let data = leadrelay_domain::pipeline::filter_data(&format!("destination:{}", destination.id), &verdict);
            let reason = format!("Destination filter: {}", verdict.describe_failure());
            return (skipped(claimed, owner, reason, data, now), None);
        }
        // Caps count leads delivered: a resent transfer that was delivered before already has
        // its place, so it neither waits for a cap nor takes another place.
        let caps = match self.delivered_before(claimed).await {
            Ok(false) => {
                applicable_caps(destination, self.config.current().rules.cap_rules(&destination.id), &snapshot, now)
            }
            Ok(true) => Vec::new(),
            Err(error) => {
                let reason = format!("caps could not be checked: {error}");
                tracing::warn!(transfer_id = %claimed.transfer_id, %reason, "delivery postponed");
                return (postponed(claimed, owner, reason, now, CAP_CHECK_RETRY_MS), None);
            }
        };
        let reservation = match self.reserve(&caps).await {
            Ok(reservation) => reservation,
            Err(CapRefusal::Reached { reason, cap }) => return (skipped(claimed, owner, reason, cap, now), None),
            Err(CapRefusal::Busy(reason)) => return (postponed(claimed, owner, reason, now, CAP_BUSY_RETRY_MS), None),
            Err(CapRefusal::Unknown(reason)) => {
                tracing::warn!(transfer_id = %claimed.transfer_id, %reason, "delivery postponed");
                return (postponed(claimed, owner, reason, now, CAP_CHECK_RETRY_MS), None);
            }
        };
        let report = self.attempt_snapshot(claimed, destination, snapshot, now).await;
        let mut record = plan(claimed, destination, &report, owner, now_millis(), rand::random::<f64>());
        if report.verdict == AttemptVerdict::Judged(Verdict::Delivered) {
            record.cap_counts = caps.into_iter().map(|cap| cap.key).collect();
        }
        if self.observe(claimed, destination, &report.verdict, &mut record) {
            self.trip(destination).await;
        }
        (record, reservation)
    }

    /// Whether a transfer was delivered before this claim: only a resent one can have been.
    async fn delivered_before(&self, claimed: &ClaimedTransfer) -> leadrelay_store::StoreResult<bool> {
        if claimed.retry_base == 0 {
            return Ok(false);
        }
        let query = leadrelay_store::EventQuery {
            lead_id: Some(claimed.lead_id.clone()),
            destination_id: Some(claimed.destination_id.clone()),
            event_type: Some(leadrelay_domain::event::EventType::RecipientDelivered),
            ..Default::default()
        };
        let delivered = self.store.scan_events(&query, None, 100).await?;
        Ok(delivered.iter().any(|event| event.transfer_id.as_deref() == Some(claimed.transfer_id.as_str())))
    }

    /// Counts technical failures in a row. Half way to a destination's circuit breaker, adds
    /// `destination.warning` to the record (the notification before the trip); when it trips,
    /// adds `destination.disabled` and returns true.
    fn observe(
        &self,
        claimed: &ClaimedTransfer,
        destination: &Destination,
        verdict: &AttemptVerdict,
        record: &mut DeliveryRecord,
    ) -> bool {
        let reason = match verdict {
            AttemptVerdict::Judged(Verdict::Failed { reason, .. }) | AttemptVerdict::Blocked { reason } => reason,
            _ => {
                self.failures.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).remove(&destination.id);
                return false;
            }
        };
        let Some(breaker) = &destination.circuit_breaker else { return false };
        let count = {
            let mut failures = self.failures.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            let count = failures.entry(destination.id.clone()).or_default();
            *count += 1;
            let now = *count;
            if now >= breaker.failures {
                failures.remove(&destination.id);
            }
            now
        };
        if count < breaker.failures {
            // Half way, rounded up: after 2 of 3 or 4, never after a single blip of 3.
            if count == breaker.failures.div_ceil(2) {
                let warning = format!(
                    "{count} failure{} in a row (last: {reason}); the circuit breaker disables the destination after {}",
                    if count == 1 { "" } else { "s" },
                    breaker.failures
                );
                tracing::warn!(destination_id = %destination.id, %warning, "destination keeps failing");
                let mut event = transfer_event(claimed, EventType::DestinationWarning, now_millis());
                event.reason = Some(warning);
                event.data = serde_json::json!({"circuit_breaker": {"failures": breaker.failures}, "failures": count});
                record.events.push(LoggedEvent::new(event, claimed.snapshot_id, &claimed.snapshot_digest));
            }
            return false;
        }
        let reason = format!("Disabled after {count} failures in a row (last: {reason})");
        tracing::error!(destination_id = %destination.id, %reason, "circuit breaker tripped: destination disabled, its transfers are held");
        let mut event = transfer_event(claimed, EventType::DestinationDisabled, now_millis());
        event.reason = Some(reason);
        event.data = serde_json::json!({"circuit_breaker": {"failures": breaker.failures}});
        record.events.push(LoggedEvent::new(event, claimed.snapshot_id, &claimed.snapshot_digest));
        true
    }

    /// Disables a destination whose circuit breaker tripped; a person enables it again. The
    /// store disables the destination as it is stored, keeping any edit made since this node
    /// last loaded it.
    async fn trip(&self, destination: &Destination) {
        let change = ConfigChange::DisableDestination { id: destination.id.clone() };
        if let Err(error) = self.config.change(change).await {
            tracing::error!(destination_id = %destination.id, %error, "disabling a tripped destination failed");
        }
    }

    /// Reserves one delivery in each cap window, or says which cap is reached (the lowest).
    /// Reservations count deliveries in flight, so concurrent deliveries cannot overshoot.
    async fn reserve(&self, caps: &[ApplicableCap]) -> Result<Option<CapReservation>, CapRefusal> {
        if caps.is_empty() {
            return Ok(None);
        }
        let keys: Vec<CapWindowKey> = caps.iter().map(|cap| cap.key.clone()).collect();
        let stored = match self.store.cap_usage(&keys).await {
            Ok(stored) => stored,
            Err(error) => return Err(CapRefusal::Unknown(format!("caps could not be checked: {error}"))),
        };
        let mut reserved = self.reserved.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let in_flight = |cap: &ApplicableCap| reserved.get(&cap.key).copied().unwrap_or(0);
        // Only successes count: a cap that the stored successes reach is reached; one that
        // the deliveries in flight would reach if they all succeeded is only busy, and the
        // transfer waits for their outcomes rather than being skipped for good.
        let lowest = |full: &dyn Fn(&ApplicableCap, u64) -> bool| {
            caps.iter().zip(&stored).filter(|(cap, stored)| full(cap, **stored)).min_by_key(|(cap, _)| cap.max)
        };
        if let Some((cap, stored)) = lowest(&|cap, stored| stored >= cap.max) {
            let window_start = (cap.window != leadrelay_domain::config::CapWindow::Total)
                .then(|| leadrelay_domain::time::format_millis(cap.key.window_start));
            let data = serde_json::json!({
                "cap": {"window": cap.window, "max": cap.max, "count": stored, "window_start": window_start}
            });
            return Err(CapRefusal::Reached { reason: cap.reached((*stored).min(cap.max)), cap: data });
        }
        if let Some((cap, stored)) = lowest(&|cap, stored| stored + in_flight(cap) >= cap.max) {
            return Err(CapRefusal::Busy(format!(
                "{} cap: {stored}/{} delivered and {} in flight; waiting for their outcomes",
                cap.label(),
                cap.max,
                in_flight(cap)
            )));
        }
        for key in &keys {
            *reserved.entry(key.clone()).or_default() += 1;
        }
        Ok(Some(CapReservation { reserved: self.reserved.clone(), keys }))
    }

    async fn attempt_snapshot(
        &self,
        claimed: &ClaimedTransfer,
        destination: &Destination,
        snapshot: Value,
        now: Millis,
    ) -> AttemptReport {
        attempt(
            &self.clients,
            AttemptInput {
                destination,
                snapshot,
                transfer_id: &claimed.transfer_id,
                webhook_id: &claimed.transfer_id,
                attempt: claimed.attempts + 1,
                now,
            },
        )
        .await
    }

    /// Delivers realtime transfers this node holds (committed with the submission) while the
    /// submitter waits, records their outcomes (the store adds the submission's held
    /// `flow.completed` once no transfer of the lead is pending), and returns what the submit
    /// answer lists under `deliveries`. A delivery that fails continues in the background like
    /// any other.
    pub async fn deliver_realtime(&self, config: &Config, transfer_ids: &[String]) -> Vec<Value> {
        let claimed = match self.store.held_transfers(transfer_ids).await {
            Ok(claimed) => claimed,
            Err(error) => {
                // The leases run out and the dispatcher delivers them.
                tracing::error!(%error, "reading realtime transfers failed; they will be delivered in the background");
                return Vec::new();
            }
        };
        // Each delivery is recorded as soon as it is made, so that a failed one's retry is
        // never held back by a slower destination of the same submission.
        let deliveries = claimed.iter().filter_map(|transfer| {
            let destination = config.destinations.get(&transfer.destination_id)?;
            Some(async move {
                // Realtime calls share the destination's concurrency with the dispatcher's;
                // when every connection is busy, the transfer goes to the background at once.
                let slot = self.take_slot(destination);
                let (record, reservation) = if slot.is_some() {
                    self.attempt_realtime(transfer, destination).await
                } else {
                    let reason = format!(
                        "all {} connections to {} are busy; it is delivered in the background",
                        destination.concurrency, destination.id
                    );
                    (postponed(transfer, &self.realtime_owner(), reason, now_millis(), 0), None)
                };
                let answer = realtime_answer(&record, &transfer.destination_id);
                if let Err(error) = self.store.record_deliveries(vec![record]).await {
                    tracing::error!(%error, "recording a realtime delivery failed; it will be delivered again");
                }
                drop(reservation);
                drop(slot);
                // A failed realtime delivery may now wait for a retry: let the dispatcher see it.
                self.wake();
                answer
            })
        });
        futures::future::join_all(deliveries).await
    }

    /// Takes one of a destination's `concurrency` connections for a realtime call, if one is
    /// free; it is given back when the slot is dropped, however the call ends.
    fn take_slot<'a>(&'a self, destination: &Destination) -> Option<Slot<'a>> {
        let mut in_flight = self.in_flight();
        let busy = in_flight.entry(destination.id.clone()).or_default();
        if *busy >= destination.concurrency as usize {
            return None;
        }
        *busy += 1;
        Some(Slot { service: self, destination_id: destination.id.clone() })
    }

    /// Calls a flow's enhancements for a prepared lead, in order.
    pub async fn enhance(
        &self,
        enhancements: &[leadrelay_domain::config::Enhancement],
        lead_id: &str,
        fields: &Map<String, Value>,
    ) -> Vec<leadrelay_domain::pipeline::EnhancementOutcome> {
        let mut outcomes = Vec::with_capacity(enhancements.len());
        for enhancement in enhancements {
            outcomes.push(crate::enhance::call_enhancement(&self.clients, enhancement, lead_id, fields).await);
        }
        outcomes
    }

    /// Sends a sample lead to a destination now, writing nothing: what `…/test` answers.
    pub async fn test_destination(&self, destination: &Destination, snapshot: Value) -> AttemptReport {
        let transfer_id = format!("trf_test_{}", ulid::Ulid::new().to_string().to_lowercase());
        attempt(
            &self.clients,
            AttemptInput {
                destination,
                snapshot,
                transfer_id: &transfer_id,
                webhook_id: &transfer_id,
                attempt: 1,
                now: now_millis(),
            },
        )
        .await
    }

    /// One step of the dispatcher: for every enabled destination with free capacity, claims
    /// its due transfers and starts delivering them on `tasks`.
    pub async fn run_once(
        self: &Arc<Self>,
        tasks: &mut JoinSet<()>,
        finished: &mpsc::Sender<Finished>,
    ) -> StoreResult<StepOutcome> {
        let config = self.config.current();
        let mut outcome = StepOutcome::default();
        for destination in config.destinations.values() {
            // A disabled destination's transfers are held, not claimed; they flow again when
            // it is enabled.
            if !destination.enabled || destination.kind == DestinationKind::Email {
                continue;
            }
            let busy = self.in_flight().get(&destination.id).copied().unwrap_or(0);
            let free = (destination.concurrency as usize).saturating_sub(busy);
            // Under load, claim in batches of an eighth of the capacity: each claim is a write.
            if free == 0 || (busy > 0 && free < (destination.concurrency as usize / 8).max(1)) {
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
                // The configuration is shared, not the destination copied: thousands of calls
                // may be in flight.
                let (config, destination_id) = (config.clone(), destination.id.clone());
                let finished = finished.clone();
                let mut transfer = transfer;
                tasks.spawn(async move {
                    let destination =
                        config.destinations.get(&destination_id).expect("a destination of this configuration");
                    // The snapshot text is parsed once and not held while the call is in flight.
                    let snapshot = serde_json::from_str(&std::mem::take(&mut transfer.snapshot)).unwrap_or(Value::Null);
                    let (record, reservation) =
                        service.attempt_parsed(&transfer, destination, snapshot, now_millis(), &service.owner).await;
                    // The recorder writes it; if it is gone (shutdown), the lease is released.
                    let _ = finished.send((destination_id, record, reservation)).await;
                });
            }
        }
        Ok(outcome)
    }

    /// Writes finished deliveries, as many at once as are waiting: while one write commits, the
    /// next batch gathers, so a busy destination costs few commits.
    async fn record(self: Arc<Self>, mut finished: mpsc::Receiver<Finished>) {
        let mut batch = Vec::with_capacity(RECORD_BATCH);
        while finished.recv_many(&mut batch, RECORD_BATCH).await > 0 {
            let mut records = Vec::with_capacity(batch.len());
            let mut done = Vec::with_capacity(batch.len());
            for (destination_id, record, reservation) in batch.drain(..) {
                records.push(record);
                done.push((destination_id, reservation));
            }
            // The store writes the good records of a batch even when one of them fails; a record
            // not written is delivered again when its lease runs out (at least once).
            if let Err(error) = self.store.record_deliveries(records).await {
                tracing::error!(%error, "recording deliveries failed");
            }
            let mut in_flight = self.in_flight();
            for (destination_id, reservation) in done {
                drop(reservation);
                if let Some(count) = in_flight.get_mut(&destination_id) {
                    *count = count.saturating_sub(1);
                }
            }
            drop(in_flight);
            self.wake.notify_one();
        }
    }

    /// Runs the dispatcher until `shutdown` completes; then stops claiming, lets deliveries in
    /// flight finish (up to the drain timeout) and gives back the leases of the rest.
    pub async fn run(self: Arc<Self>, shutdown: impl Future<Output = ()> + Send) {
        let mut tasks = JoinSet::new();
        let mut config = self.config.subscribe();
        let (finished, outcomes) = mpsc::channel(RECORD_BATCH * 4);
        let recorder = tokio::spawn(self.clone().record(outcomes));
        tokio::pin!(shutdown);
        loop {
            while tasks.try_join_next().is_some() {}
            let step = match self.run_once(&mut tasks, &finished).await {
                Ok(step) => step,
                Err(error) => {
                    tracing::warn!(%error, "claiming deliveries failed");
                    StepOutcome { started: 0, next_due: Some(now_millis() + 1000) }
                }
            };
            if step.started > 0 {
                // Busy: look for more at once, but stop claiming as soon as shutdown begins.
                if futures::FutureExt::now_or_never(&mut shutdown).is_some() {
                    break;
                }
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
        // Every finished delivery is written before the leases of the rest are given back.
        drop(finished);
        if let Err(error) = recorder.await {
            tracing::error!(%error, "the delivery recorder ended abnormally");
        }
        match self.store.release_deliveries(&self.owner).await {
            Ok(0) => {}
            Ok(released) => tracing::info!(released, "released delivery leases"),
            Err(error) => tracing::warn!(%error, "releasing delivery leases failed; they expire on their own"),
        }
    }
}
