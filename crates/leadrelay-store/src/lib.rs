//! The storage trait of leadrelay: domain verbs (commit a submission, page the log, verify the
//! chain) that every engine implements, so callers never see SQL or an engine's details.

#![forbid(unsafe_code)]

pub mod batch;
pub mod completion;
mod delivery;
pub mod group_commit;
mod live;
mod query;
mod records;
pub mod verify;

use async_trait::async_trait;
use futures::stream::BoxStream;
use leadrelay_domain::config::{ChangeError, Config, ConfigChange};
use leadrelay_domain::pipeline::{DuplicateFound, DuplicateQuery};

pub use delivery::*;
pub use live::{ConfigHandle, LiveConfig};
pub use query::*;
pub use records::*;

/// Why a storage call failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store cannot take writes or reads right now (disk full, database gone, shutting down).
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// A stored value could not be read back (a bug or a tampered database).
    #[error("corrupt stored data: {0}")]
    Corrupt(String),
    #[error("{0}")]
    Conflict(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// Why a configuration change was not stored.
#[derive(Debug, thiserror::Error)]
pub enum ConfigWriteError {
    #[error(transparent)]
    Change(#[from] ChangeError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// How a submission's commit ended.
#[derive(Clone, Debug, PartialEq)]
pub enum CommitOutcome {
    /// Everything is on disk.
    Committed,
    /// A concurrent submission changed the duplicate answer the decision assumed: nothing was
    /// written; decide again with this answer and commit again.
    DuplicateChanged(Option<DuplicateFound>),
    /// The idempotency key was used before: nothing was written; answer with the stored answer.
    Replay(StoredAnswer),
}

/// A change another node made to a shared database.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreSignal {
    /// The configuration changed: load it again.
    ConfigChanged,
    /// Transfers were queued: look for due deliveries.
    TransfersQueued,
}

/// The storage engine. Every write is durable (committed and synced) when its call returns `Ok`.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// A short name of the engine, for logs and `/readyz`.
    fn engine(&self) -> &'static str;

    /// Checks that the store answers.
    async fn ping(&self) -> StoreResult<()>;

    // Configuration

    async fn load_config(&self) -> StoreResult<Config>;

    /// Applies a change atomically against the stored configuration, validating the whole
    /// result; returns the new configuration.
    async fn change_config(&self, change: ConfigChange) -> Result<Config, ConfigWriteError>;

    // Intake

    /// An earlier lead matching a duplicate query, as of now (the commit re-checks it).
    async fn find_duplicate(&self, query: &DuplicateQuery) -> StoreResult<Option<DuplicateFound>>;

    /// The answer stored for an idempotency key of a source.
    async fn idempotent_answer(&self, source_id: &str, key: &str) -> StoreResult<Option<StoredAnswer>>;

    /// Replaces the answer an idempotency key keeps: a realtime submission's answer, once its
    /// deliveries are made, lists their outcomes. Nothing happens for a key that is not kept.
    async fn replace_idempotent_answer(&self, source_id: &str, key: &str, answer: StoredAnswer) -> StoreResult<()>;

    /// Writes a lead, its events and its transfers in one transaction, after re-checking the
    /// duplicate answer and the idempotency key atomically. Concurrent calls are group-committed.
    async fn commit_submission(&self, submission: Submission) -> StoreResult<CommitOutcome>;

    // Delivery

    /// Claims up to `claim.limit` transfers of one destination that are due, oldest first,
    /// leasing them to `claim.owner` until `now + lease_ms`.
    async fn claim_deliveries(&self, claim: &DeliveryClaim) -> StoreResult<Vec<ClaimedTransfer>>;

    /// Transfers by id with their leads' current snapshots, as a claim returns them: for
    /// transfers this node already holds (realtime deliveries).
    async fn held_transfers(&self, transfer_ids: &[String]) -> StoreResult<Vec<ClaimedTransfer>>;

    /// The earliest time a transfer of this destination is due (claimed ones count from
    /// their lease's end); `None` when none waits.
    async fn next_due(&self, destination_id: &str) -> StoreResult<Option<leadrelay_domain::time::Millis>>;

    /// Writes the events and the transfer states of delivery steps; each record is all or
    /// nothing, one bad record does not keep the others out, and concurrent calls are
    /// group-committed. Fails when any record could not be written.
    async fn record_deliveries(&self, records: Vec<DeliveryRecord>) -> StoreResult<()>;

    /// Successful deliveries counted in each cap window.
    async fn cap_usage(&self, windows: &[leadrelay_domain::caps::CapWindowKey]) -> StoreResult<Vec<u64>>;

    /// Gives back every lease `owner` holds, so the transfers are due again at once.
    async fn release_deliveries(&self, owner: &str) -> StoreResult<u64>;

    /// Queues transfers again (`delivery.resent`, retries start over), in one transaction;
    /// how it went for each, in the order asked. See [`plan_resend`].
    async fn resend_transfers(&self, request: ResendRequest) -> StoreResult<Vec<(String, ResendOutcome)>>;

    /// Stores a new job, or the progress of one.
    async fn save_job(&self, job: &JobRecord) -> StoreResult<()>;

    async fn job(&self, job_id: &str) -> StoreResult<Option<JobRecord>>;

    /// Running jobs that no node holds (their node stopped or died): leased to the claiming
    /// node, which runs them. A job runs on one node at a time.
    async fn claim_jobs(&self, claim: &JobClaim) -> StoreResult<Vec<JobRecord>>;

    /// Abandoned transfers (the not-integrated collection), with the register's filters.
    async fn not_integrated_page(&self, query: &RegisterQuery) -> StoreResult<Page<TransferRow>>;

    // Reading

    /// One page of events matching the indexed filters of `query` (not `rules`), strictly after
    /// `after` in the query's order.
    async fn scan_events(
        &self,
        query: &EventQuery,
        after: Option<&Cursor>,
        limit: usize,
    ) -> StoreResult<Vec<StoredEvent>>;

    /// Like [`Store::scan_events`], but the page comes as NDJSON text with only `fields` (a
    /// subset of [`EVENT_FIELDS`], in that order), byte for byte as [`StoredEvent::write_json`]
    /// writes it. Engines that can render JSON themselves override this for exports.
    async fn scan_event_lines(
        &self,
        query: &EventQuery,
        after: Option<&Cursor>,
        limit: usize,
        fields: &[&'static str],
    ) -> StoreResult<EventLines> {
        let events = self.scan_events(query, after, limit).await?;
        Ok(EventLines::from_events(&events, fields))
    }

    async fn event(&self, event_id: &str) -> StoreResult<Option<StoredEvent>>;

    async fn lead(&self, lead_id: &str) -> StoreResult<Option<StoredLead>>;

    async fn leads_page(&self, query: &LeadQuery) -> StoreResult<Page<StoredLead>>;

    async fn register_page(&self, query: &RegisterQuery) -> StoreResult<Page<TransferRow>>;

    /// Transfers created in a window, counted per day, status, source, destination and (for
    /// delivered ones) latency bucket.
    async fn overview(&self, query: &OverviewQuery) -> StoreResult<Vec<OverviewRow>>;

    /// Walks the whole log in order, checking every link, content digest and sequence number.
    async fn verify_chain(&self) -> StoreResult<ChainReport>;

    // Access

    async fn create_token(&self, token: NewToken) -> StoreResult<()>;

    /// Creates the token unless one with the same hash exists.
    async fn ensure_token(&self, token: NewToken) -> StoreResult<()>;

    async fn find_token(&self, hash: &[u8; 32]) -> StoreResult<Option<TokenRecord>>;

    async fn list_tokens(&self) -> StoreResult<Vec<TokenRecord>>;

    async fn delete_token(&self, token_id: &str) -> StoreResult<bool>;
    /// Renames a token and, when `role` is given, changes what it may do; false when no
    /// token has that id.
    async fn update_token(&self, token_id: &str, name: &str, role: Option<Role>) -> StoreResult<bool>;

    /// What other nodes or processes on the same database do that this node should know: a
    /// stream of signals (PostgreSQL hears them at once; SQLite looks for configuration changes
    /// that `leadrelay apply` made every second), or `None` when nothing else can write. A
    /// signal may be repeated or, after a lost connection, stand for several; never for none.
    async fn signals(&self) -> StoreResult<Option<BoxStream<'static, StoreSignal>>> {
        Ok(None)
    }

    /// Finishes pending writes and releases the database.
    async fn close(&self);
}

/// Pages of events through the store, applying the `rules` filter (which no index serves)
/// by scanning at most `scan_budget` rows per page.
pub async fn events_page(store: &dyn Store, query: &EventQuery, scan_budget: usize) -> StoreResult<Page<StoredEvent>> {
    let limit = query.limit.clamp(1, MAX_PAGE);
    let Some(rules) = &query.rules else {
        let mut items = store.scan_events(query, query.cursor.as_ref(), limit + 1).await?;
        let next_cursor = if items.len() > limit {
            items.truncate(limit);
            items.last().map(StoredEvent::cursor)
        } else {
            None
        };
        return Ok(Page { items, next_cursor });
    };
    let compiled = rules.compile();
    let typed: std::collections::HashMap<&str, leadrelay_domain::rules::CompiledRuleSet> =
        query.typed_rules.iter().map(|(flow_id, rules)| (flow_id.as_str(), rules.compile())).collect();
    let mut items = Vec::new();
    let mut after = query.cursor.clone();
    let mut scanned = 0;
    let chunk = 500;
    loop {
        let batch = store.scan_events(query, after.as_ref(), chunk).await?;
        let exhausted = batch.len() < chunk;
        for event in batch {
            scanned += 1;
            after = Some(event.cursor());
            let rules = typed.get(event.flow_id.as_str()).unwrap_or(&compiled);
            if rules.matches(&leadrelay_domain::lead::EventView(&event.to_json())) {
                items.push(event);
                if items.len() == limit {
                    return Ok(Page { items, next_cursor: after });
                }
            }
        }
        if exhausted {
            return Ok(Page { items, next_cursor: None });
        }
        if scanned >= scan_budget {
            // A page may come back short: the cursor resumes the scan where it stopped.
            return Ok(Page { items, next_cursor: after });
        }
    }
}

/// Streams every event matching `query` as NDJSON pages with the given fields, one page in
/// memory at a time.
pub fn export_event_lines(
    store: std::sync::Arc<dyn Store>,
    query: EventQuery,
    fields: Vec<&'static str>,
) -> BoxStream<'static, StoreResult<EventLines>> {
    let stream = futures::stream::unfold(Some(query.cursor.clone()), move |state| {
        let store = store.clone();
        let query = query.clone();
        let fields = fields.clone();
        async move {
            let after = state?;
            let result = if query.rules.is_some() {
                // Rules need each event as a tree: go through the general page.
                let mut page_query = query.clone();
                page_query.cursor = after;
                page_query.limit = MAX_PAGE;
                events_page(store.as_ref(), &page_query, 20_000)
                    .await
                    .map(|page| (EventLines::from_events(&page.items, &fields), page.next_cursor))
            } else {
                store.scan_event_lines(&query, after.as_ref(), MAX_PAGE, &fields).await.map(|lines| {
                    let next = if lines.count == MAX_PAGE { lines.last.clone() } else { None };
                    (lines, next)
                })
            };
            match result {
                Ok((lines, next)) => Some((Ok(lines), next.map(Some))),
                Err(error) => Some((Err(error), None)),
            }
        }
    });
    Box::pin(stream)
}

/// Streams every event matching `query` in pages, holding one page in memory at a time.
pub fn export_events(
    store: std::sync::Arc<dyn Store>,
    query: EventQuery,
) -> BoxStream<'static, StoreResult<StoredEvent>> {
    let stream = futures::stream::unfold(Some(query.cursor.clone()), move |state| {
        let store = store.clone();
        let query = query.clone();
        async move {
            let after = state?;
            let mut page_query = query.clone();
            page_query.cursor = after;
            page_query.limit = MAX_PAGE;
            match events_page(store.as_ref(), &page_query, 20_000).await {
                Ok(page) => {
                    let next = page.next_cursor.clone().map(Some);
                    let items: Vec<StoreResult<StoredEvent>> = page.items.into_iter().map(Ok).collect();
                    Some((futures::stream::iter(items), next))
                }
                Err(error) => Some((futures::stream::iter(vec![Err(error)]), None)),
            }
        }
    });
    Box::pin(futures::StreamExt::flatten(stream))
}
