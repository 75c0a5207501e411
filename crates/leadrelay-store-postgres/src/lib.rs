//! The PostgreSQL engine of the storage trait, for one node or several on one database.
//!
//! Each node has one writer task that group-commits its node's concurrent writes into one
//! transaction, as the SQLite engine does. Nodes share the event log's chain: every batch
//! that numbers events takes the `chain_head` row lock first (`SELECT … FOR UPDATE`), so that
//! batches of different nodes link one after another and duplicate checks see every node's
//! leads. Delivery claims take due transfers with `FOR UPDATE SKIP LOCKED`.

#![forbid(unsafe_code)]

mod read;
mod rows;
mod verify;
mod writer;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::BoxStream;
use futures::StreamExt;
use leadrelay_domain::caps::CapWindowKey;
use leadrelay_domain::config::{Config, ConfigChange};
use leadrelay_domain::pipeline::{DuplicateFound, DuplicateQuery};
use leadrelay_domain::time::Millis;
use leadrelay_store::StoreSignal;
use leadrelay_store::{
    ChainReport, ClaimedTransfer, CommitOutcome, ConfigWriteError, Cursor, DeliveryClaim, DeliveryRecord, EventLines,
    EventQuery, JobClaim, JobRecord, LeadQuery, NewToken, OverviewQuery, OverviewRow, Page, RegisterQuery,
    ResendOutcome, ResendRequest, Role, Store, StoreError, StoreResult, StoredAnswer, StoredEvent, StoredLead,
    Submission, TokenRecord, TransferRow,
};
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions};
use sqlx::ConnectOptions;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use leadrelay_store::group_commit::{self, WriteCommand};

use crate::writer::Writer;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// The channel nodes tell each other about changes on (`LISTEN`/`NOTIFY`), and its payloads.
pub(crate) const SIGNAL_CHANNEL: &str = "leadrelay";
pub(crate) const CONFIG_CHANGED: &str = "config";
pub(crate) const TRANSFERS_QUEUED: &str = "transfers";

/// How the engine is tuned; the defaults suit a server.
#[derive(Clone, Debug)]
pub struct PostgresOptions {
    /// Most writes one transaction takes when many arrive at once.
    pub max_batch: usize,
    pub read_connections: u32,
}

impl Default for PostgresOptions {
    fn default() -> Self {
        Self { max_batch: 512, read_connections: 8 }
    }
}

/// The PostgreSQL engine. Cheap to share behind an `Arc`.
pub struct PostgresStore {
    readers: PgPool,
    writes: mpsc::Sender<WriteCommand>,
    /// How the writer's last batch ended (`ping`).
    health: group_commit::WriterHealth,
    tasks: std::sync::Mutex<Vec<JoinHandle<()>>>,
}

pub(crate) fn unavailable(error: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(error.to_string())
}

pub(crate) fn corrupt(error: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(error.to_string())
}

impl PostgresStore {
    /// Connects to the database at a `postgres://` URL and migrates it (several nodes may
    /// start at once: migrations take an advisory lock).
    pub async fn open(url: &str, options: PostgresOptions) -> StoreResult<Arc<Self>> {
        let connect = PgConnectOptions::from_str(url)
            .map_err(|error| unavailable(format!("invalid PostgreSQL URL: {error}")))?
            .application_name("leadrelay")
            .options([
                // A 2xx means on disk: never let a session turn synchronous commits off.
                ("synchronous_commit", "on"),
                // The writer's re-checks rely on each statement seeing the latest commits.
                ("default_transaction_isolation", "read\\ committed"),
                // A node that hangs or vanishes inside a transaction must not hold the chain
                // head (and every other node's writes) for long: the server ends the session.
                ("idle_in_transaction_session_timeout", "60000"),
                ("tcp_keepalives_idle", "30"),
                ("tcp_keepalives_interval", "10"),
                ("tcp_keepalives_count", "3"),
            ])
            .disable_statement_logging();
        let mut write_connection =
            connect.connect().await.map_err(|error| unavailable(format!("connecting to PostgreSQL: {error}")))?;
        MIGRATOR
            .run(&mut write_connection)
            .await
            .map_err(|error| unavailable(format!("migrating the PostgreSQL database: {error}")))?;
        sqlx::query(
            "INSERT INTO chain_head (id, seq, hash, snapshot_id) VALUES (1, 0, $1, 0) ON CONFLICT (id) DO NOTHING",
        )
        .bind(&leadrelay_domain::chain::GENESIS[..])
        .execute(&mut write_connection)
        .await
        .map_err(unavailable)?;

        let readers = PgPoolOptions::new()
            .max_connections(options.read_connections.max(1))
            .min_connections(1)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(connect.clone())
            .await
            .map_err(unavailable)?;
        let writer = Writer::new(write_connection, connect);
        let (writes, receiver) = mpsc::channel(options.max_batch.max(1) * 4);
        let health = group_commit::WriterHealth::default();
        let writer_task = tokio::spawn(group_commit::run(writer, receiver, options.max_batch, health.clone()));
        Ok(Arc::new(Self { readers, writes, health, tasks: std::sync::Mutex::new(vec![writer_task]) }))
    }

    /// Whether the database at `url` holds leadrelay's tables, without creating anything: a
    /// command that only reads refuses a database leadrelay never set up.
    pub async fn is_initialised(url: &str) -> StoreResult<bool> {
        let connect = PgConnectOptions::from_str(url)
            .map_err(|error| unavailable(format!("invalid PostgreSQL URL: {error}")))?
            .application_name("leadrelay");
        let mut connection =
            connect.connect().await.map_err(|error| unavailable(format!("connecting to PostgreSQL: {error}")))?;
        let found: bool = sqlx::query_scalar("SELECT to_regclass('chain_head') IS NOT NULL")
            .fetch_one(&mut connection)
            .await
            .map_err(unavailable)?;
        let _ = sqlx::Connection::close(connection).await;
        Ok(found)
    }

    async fn write<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> WriteCommand) -> StoreResult<T> {
        group_commit::send(&self.writes, make).await
    }
}

#[async_trait]
impl Store for PostgresStore {
    fn engine(&self) -> &'static str {
        "postgres"
    }

    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1").execute(&self.readers).await.map_err(unavailable)?;
        if self.writes.is_closed() {
            return Err(unavailable("the writer has stopped"));
        }
        self.health.check()
    }

    async fn load_config(&self) -> StoreResult<Config> {
        read::load_config(&self.readers).await
    }

    async fn change_config(&self, change: ConfigChange) -> Result<Config, ConfigWriteError> {
        self.write(|reply| WriteCommand::Config { change, reply }).await?
    }

    async fn find_duplicate(&self, query: &DuplicateQuery) -> StoreResult<Option<DuplicateFound>> {
        read::find_duplicate(&self.readers, query).await
    }

    async fn idempotent_answer(&self, source_id: &str, key: &str) -> StoreResult<Option<StoredAnswer>> {
        read::idempotent_answer(&self.readers, source_id, key).await
    }

    async fn commit_submission(&self, submission: Submission) -> StoreResult<CommitOutcome> {
        self.write(|reply| WriteCommand::Submit { submission: Box::new(submission), reply }).await?
    }

    async fn claim_deliveries(&self, claim: &DeliveryClaim) -> StoreResult<Vec<ClaimedTransfer>> {
        let claim = claim.clone();
        self.write(|reply| WriteCommand::Claim { claim, reply }).await?
    }

    async fn held_transfers(&self, transfer_ids: &[String]) -> StoreResult<Vec<ClaimedTransfer>> {
        let mut connection = self.readers.acquire().await.map_err(unavailable)?;
        let rows = read::transfer_rows(&mut connection, transfer_ids).await?;
        read::with_snapshots(&mut connection, rows).await
    }

    async fn next_due(&self, destination_id: &str) -> StoreResult<Option<Millis>> {
        read::next_due(&self.readers, destination_id).await
    }

    async fn record_deliveries(&self, records: Vec<DeliveryRecord>) -> StoreResult<()> {
        if records.is_empty() {
            return Ok(());
        }
        self.write(|reply| WriteCommand::Deliveries { records, reply }).await?
    }

    async fn cap_usage(&self, windows: &[CapWindowKey]) -> StoreResult<Vec<u64>> {
        read::cap_usage(&self.readers, windows).await
    }

    async fn release_deliveries(&self, owner: &str) -> StoreResult<u64> {
        let owner = owner.to_owned();
        let now = leadrelay_domain::time::now_millis();
        self.write(|reply| WriteCommand::Release { owner, now, reply }).await?
    }

    async fn resend_transfers(&self, request: ResendRequest) -> StoreResult<Vec<(String, ResendOutcome)>> {
        self.write(|reply| WriteCommand::Resend { request, reply }).await?
    }

    async fn save_job(&self, job: &JobRecord) -> StoreResult<()> {
        let job = Box::new(job.clone());
        self.write(|reply| WriteCommand::SaveJob { job, reply }).await?
    }

    async fn job(&self, job_id: &str) -> StoreResult<Option<JobRecord>> {
        read::job(&self.readers, job_id).await
    }

    async fn claim_jobs(&self, claim: &JobClaim) -> StoreResult<Vec<JobRecord>> {
        let claim = claim.clone();
        self.write(|reply| WriteCommand::ClaimJobs { claim, reply }).await?
    }

    async fn not_integrated_page(&self, query: &RegisterQuery) -> StoreResult<Page<TransferRow>> {
        read::register_page(&self.readers, query, true).await
    }

    async fn scan_events(
        &self,
        query: &EventQuery,
        after: Option<&Cursor>,
        limit: usize,
    ) -> StoreResult<Vec<StoredEvent>> {
        read::scan_events(&self.readers, query, after, limit).await
    }

    async fn scan_event_lines(
        &self,
        query: &EventQuery,
        after: Option<&Cursor>,
        limit: usize,
        fields: &[&'static str],
    ) -> StoreResult<EventLines> {
        let events = read::scan_events(&self.readers, query, after, limit).await?;
        Ok(EventLines::from_events(&events, fields))
    }

    async fn event(&self, event_id: &str) -> StoreResult<Option<StoredEvent>> {
        read::event(&self.readers, event_id).await
    }

    async fn lead(&self, lead_id: &str) -> StoreResult<Option<StoredLead>> {
        read::lead(&self.readers, lead_id).await
    }

    async fn leads_page(&self, query: &LeadQuery) -> StoreResult<Page<StoredLead>> {
        read::leads_page(&self.readers, query).await
    }

    async fn register_page(&self, query: &RegisterQuery) -> StoreResult<Page<TransferRow>> {
        read::register_page(&self.readers, query, false).await
    }

    async fn overview(&self, query: &OverviewQuery) -> StoreResult<Vec<OverviewRow>> {
        read::overview(&self.readers, query).await
    }

    async fn verify_chain(&self) -> StoreResult<ChainReport> {
        verify::verify_chain(&self.readers).await
    }

    async fn create_token(&self, token: NewToken) -> StoreResult<()> {
        self.write(|reply| WriteCommand::CreateToken { token, replace: false, reply }).await?
    }

    async fn ensure_token(&self, token: NewToken) -> StoreResult<()> {
        self.write(|reply| WriteCommand::CreateToken { token, replace: true, reply }).await?
    }

    async fn find_token(&self, hash: &[u8; 32]) -> StoreResult<Option<TokenRecord>> {
        read::find_token(&self.readers, hash).await
    }

    async fn list_tokens(&self) -> StoreResult<Vec<TokenRecord>> {
        read::list_tokens(&self.readers).await
    }

    async fn delete_token(&self, token_id: &str) -> StoreResult<bool> {
        let token_id = token_id.to_owned();
        self.write(|reply| WriteCommand::DeleteToken { token_id, reply }).await?
    }

    async fn replace_idempotent_answer(&self, source_id: &str, key: &str, answer: StoredAnswer) -> StoreResult<()> {
        let (source_id, key) = (source_id.to_owned(), key.to_owned());
        self.write(|reply| WriteCommand::ReplaceAnswer { source_id, key, answer, reply }).await?
    }

    async fn update_token(&self, token_id: &str, name: &str, role: Option<Role>) -> StoreResult<bool> {
        let (token_id, name) = (token_id.to_owned(), name.to_owned());
        self.write(|reply| WriteCommand::UpdateToken { token_id, name, role, reply }).await?
    }

    async fn signals(&self) -> StoreResult<Option<BoxStream<'static, StoreSignal>>> {
        let mut listener = PgListener::connect_with(&self.readers).await.map_err(unavailable)?;
        listener.listen(SIGNAL_CHANNEL).await.map_err(unavailable)?;
        // Never ends: a lost connection is opened again (pausing longer each time while the
        // server is down), and since what was sent meanwhile is lost, it stands for every signal.
        let start = (listener, Duration::ZERO);
        let signals = futures::stream::unfold(start, |(mut listener, mut pause)| async move {
            let everything: &[StoreSignal] = &[StoreSignal::ConfigChanged, StoreSignal::TransfersQueued];
            let signals: &[StoreSignal] = loop {
                match listener.try_recv().await {
                    Ok(Some(notification)) => {
                        pause = Duration::ZERO;
                        match notification.payload() {
                            CONFIG_CHANGED => break &[StoreSignal::ConfigChanged],
                            TRANSFERS_QUEUED => break &[StoreSignal::TransfersQueued],
                            _ => continue,
                        }
                    }
                    Ok(None) => {
                        tracing::warn!("lost the PostgreSQL notification connection; reconnecting");
                        break everything;
                    }
                    Err(error) => {
                        pause = (pause * 2).clamp(Duration::from_millis(100), Duration::from_secs(5));
                        tracing::warn!(%error, "cannot hear other nodes' changes; trying again");
                        tokio::time::sleep(pause).await;
                        break everything;
                    }
                }
            };
            Some((futures::stream::iter(signals.to_vec()), (listener, pause)))
        })
        .flatten();
        Ok(Some(signals.boxed()))
    }

    async fn close(&self) {
        let (reply, done) = oneshot::channel();
        if self.writes.send(WriteCommand::Shutdown { reply }).await.is_ok() {
            let _ = done.await;
        }
        let tasks: Vec<JoinHandle<()>> =
            self.tasks.lock().map(|mut tasks| tasks.drain(..).collect()).unwrap_or_default();
        self.readers.close().await;
        for task in tasks {
            task.abort();
            let _ = task.await;
        }
    }
}
