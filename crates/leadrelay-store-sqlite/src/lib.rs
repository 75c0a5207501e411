//! The embedded SQLite engine of the storage trait: one file, WAL, `synchronous=FULL`, a single
//! writer thread that group-commits concurrent writes, and a pool of readers.

#![forbid(unsafe_code)]

mod read;
mod verify;
mod writer;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use leadrelay_domain::config::{Config, ConfigChange};
use leadrelay_domain::pipeline::{DuplicateFound, DuplicateQuery};
use leadrelay_domain::time::Millis;
use leadrelay_store::{
    ChainReport, ClaimedTransfer, CommitOutcome, ConfigWriteError, Cursor, DeliveryClaim, DeliveryRecord, EventLines,
    EventQuery, JobClaim, JobRecord, LeadQuery, NewToken, OverviewQuery, OverviewRow, Page, RegisterQuery,
    ResendOutcome, ResendRequest, Role, Store, StoreError, StoreResult, StoreSignal, StoredAnswer, StoredEvent,
    StoredLead, Submission, TokenRecord, TransferRow,
};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{ConnectOptions, Connection};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use leadrelay_store::group_commit::{self, WriteCommand};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// How the engine is tuned; the defaults suit a server.
#[derive(Clone, Debug)]
pub struct SqliteOptions {
    /// Most writes one transaction takes when many arrive at once.
    pub max_batch: usize,
    pub read_connections: u32,
    /// How often the WAL is checkpointed off the request path.
    pub checkpoint_interval: Duration,
    /// This process serves the file (`leadrelay serve`): it holds the file's server lock for
    /// as long as the store is open, so that no second server uses the file meanwhile, and
    /// voids the leases and job claims a server that died left behind. Other openers (the
    /// CLI's commands) leave leases alone, so a running server's deliveries in flight are
    /// never claimed twice.
    pub serving: bool,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        Self { max_batch: 512, read_connections: 4, checkpoint_interval: Duration::from_millis(500), serving: false }
    }
}

impl SqliteOptions {
    /// The options of the process that serves the file.
    pub fn serving() -> Self {
        Self { serving: true, ..Self::default() }
    }
}

/// The SQLite engine. Cheap to share behind an `Arc`.
pub struct SqliteStore {
    readers: SqlitePool,
    writes: mpsc::Sender<WriteCommand>,
    /// How the writer's last batch ended (`ping`).
    health: group_commit::WriterHealth,
    tasks: std::sync::Mutex<Vec<JoinHandle<()>>>,
    /// The server lock of the file while this store serves it (`SqliteOptions::serving`);
    /// the operating system lets go of it when the process ends, however it ends.
    _server_lock: Option<std::fs::File>,
}

fn unavailable(error: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(error.to_string())
}

/// The file a `sqlite://` URL names; `None` for a database without one (in memory, or no
/// path).
pub fn database_file(url: &str) -> StoreResult<Option<std::path::PathBuf>> {
    let options = SqliteConnectOptions::from_str(url)
        .map_err(|error| unavailable(format!("invalid SQLite URL {url:?}: {error}")))?;
    let path = options.get_filename();
    // sqlx names an in-memory database `file:sqlx-in-memory-N`; `?mode=memory` asks for one too.
    let memory_mode = url
        .split_once('?')
        .is_some_and(|(_, query)| query.split('&').any(|parameter| parameter.eq_ignore_ascii_case("mode=memory")));
    let in_memory =
        memory_mode || path == std::path::Path::new(":memory:") || path.to_string_lossy().starts_with("file:");
    Ok((!in_memory && !path.as_os_str().is_empty()).then(|| path.to_owned()))
}

/// The settings of every connection to the file, the writer's and the readers': checkpoints run
/// on a timer of their own (`checkpoint_loop`), never inside a commit. Each sets its own page
/// cache size.
///
/// The write-ahead log keeps up to 320 MiB of its file when it starts over: past the 256 MiB
/// at which the checkpointer makes it start over (`WAL_RESTART_PAGES`), with room for what is
/// written before the checkpointer sees it, so that under a steady load commits write over
/// pages of the file that are already there. The file stays that large while idle. Cutting it
/// back to 64 MiB at each restart made three in four frames grow the file again, each new
/// block zeroed and newly allocated by the kernel: the writer spent a sixth of its time there,
/// and the ingest benchmark's pipeline ran at 5,700–6,100 leads/s against 8,100–9,700 now.
pub(crate) const PRAGMAS: [(&str, &str); 3] =
    [("wal_autocheckpoint", "0"), ("journal_size_limit", "335544320"), ("temp_store", "memory")];

/// A reader's page cache, in KiB (negative, as `cache_size` takes it): reads of a large log
/// want many pages at hand.
const READER_CACHE_KIB: &str = "-65536";

impl SqliteStore {
    /// Opens (creating if missing) the database at a `sqlite://path` URL and migrates it.
    pub async fn open(url: &str, options: SqliteOptions) -> StoreResult<Arc<Self>> {
        let file = database_file(url)?
            .ok_or_else(|| unavailable(format!("{url:?} names no file: the SQLite store keeps its data in a file")))?;
        let server_lock = if options.serving { Some(take_server_lock(&file)?) } else { None };
        let connect = PRAGMAS
            .iter()
            .fold(
                SqliteConnectOptions::from_str(url)
                    .map_err(|error| unavailable(format!("invalid SQLite URL {url:?}: {error}")))?,
                |options, (name, value)| options.pragma(*name, *value),
            )
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(false)
            .pragma("cache_size", READER_CACHE_KIB)
            .disable_statement_logging();

        let mut write_connection = connect.connect().await.map_err(unavailable)?;
        MIGRATOR
            .run(&mut write_connection)
            .await
            .map_err(|error| unavailable(format!("migrating the SQLite database: {error}")))?;

        let readers = SqlitePoolOptions::new()
            .max_connections(options.read_connections.max(1))
            .min_connections(1)
            .connect_with(connect.clone())
            .await
            .map_err(unavailable)?;

        if options.serving {
            // One server at a time holds the file's lock, so every lease and job claim on it
            // is a dead server's: its transfers are due again at once, its jobs resume here.
            sqlx::query("UPDATE transfers SET due_at = MIN(due_at, ?), lease_owner = NULL WHERE state = 'pending' AND lease_owner IS NOT NULL")
                .bind(leadrelay_domain::time::now_millis())
                .execute(&mut write_connection)
                .await
                .map_err(unavailable)?;
            sqlx::query("UPDATE jobs SET owner = NULL, lease_until = NULL WHERE status = 'running'")
                .execute(&mut write_connection)
                .await
                .map_err(unavailable)?;
        }
        // The writer opens its own connection; this one, which set the file up, is done.
        write_connection.close().await.map_err(unavailable)?;
        let health = group_commit::WriterHealth::default();
        let writes = writer::spawn(file, options.max_batch, health.clone()).await?;
        let checkpoint_task = tokio::spawn(checkpoint_loop(readers.clone(), options.checkpoint_interval));
        Ok(Arc::new(Self {
            readers,
            writes,
            health,
            tasks: std::sync::Mutex::new(vec![checkpoint_task]),
            _server_lock: server_lock,
        }))
    }

    async fn write<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> WriteCommand) -> StoreResult<T> {
        group_commit::send(&self.writes, make).await
    }
}

/// The lock file beside a database file that its server holds: `leadrelay.db-serve.lock`.
pub fn server_lock_file(database: &std::path::Path) -> std::path::PathBuf {
    let mut name = database.file_name().unwrap_or_default().to_owned();
    name.push("-serve.lock");
    database.with_file_name(name)
}

/// Takes the server lock of a database file, refusing when another process holds it. The
/// lock is the kernel's (`flock`), so a server killed with SIGKILL leaves none behind.
fn take_server_lock(database: &std::path::Path) -> StoreResult<std::fs::File> {
    let path = server_lock_file(database);
    let file = std::fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|error| unavailable(format!("opening the server lock {}: {error}", path.display())))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(StoreError::Conflict(format!(
            "another leadrelay server is using {} (it holds {}): one server serves a SQLite file; \
             stop it first, or run several nodes on PostgreSQL",
            database.display(),
            path.display()
        ))),
        Err(std::fs::TryLockError::Error(error)) => {
            Err(unavailable(format!("locking the server lock {}: {error}", path.display())))
        }
    }
}

/// How long a write waits for another process's write to the file (`apply` beside `serve`).
pub(crate) const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// How often a server looks for configuration changes another process made to its file.
const CONFIG_POLL: Duration = Duration::from_millis(250);

/// What changes whenever a configuration object is created, replaced or deleted.
async fn config_fingerprint(readers: &SqlitePool) -> StoreResult<(i64, i64, i64)> {
    sqlx::query_as("SELECT COUNT(*), COALESCE(MAX(updated_at), 0), COALESCE(SUM(updated_at), 0) FROM config_objects")
        .fetch_one(readers)
        .await
        .map_err(unavailable)
}

/// WAL pages (of 4 KiB, so 256 MiB) past which the checkpointer makes the log start over.
const WAL_RESTART_PAGES: i64 = 65_536;

/// Moves committed pages from the WAL into the database file, so that commits never pay for a
/// checkpoint. A passive checkpoint never waits, but under a steady write load it never
/// catches the writer either, and the log would grow without end; once it is past
/// `WAL_RESTART_PAGES`, a restarting checkpoint briefly holds the writer back so that the log
/// starts over, its file cut back to `journal_size_limit` if it grew past it.
async fn checkpoint_loop(readers: SqlitePool, interval: Duration) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        if readers.is_closed() {
            return;
        }
        let passive: Result<(i64, i64, i64), sqlx::Error> =
            sqlx::query_as("PRAGMA wal_checkpoint(PASSIVE)").fetch_one(&readers).await;
        match passive {
            Ok((_, log_pages, _)) if log_pages > WAL_RESTART_PAGES => {
                if let Err(error) = sqlx::query("PRAGMA wal_checkpoint(RESTART)").execute(&readers).await {
                    tracing::warn!(%error, "restarting WAL checkpoint failed");
                }
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "WAL checkpoint failed"),
        }
    }
}

#[async_trait]
impl Store for SqliteStore {
    fn engine(&self) -> &'static str {
        "sqlite"
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
        let rows = read::transfer_rows(&self.readers, transfer_ids).await?;
        read::with_snapshots(&self.readers, rows).await
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

    async fn cap_usage(&self, windows: &[leadrelay_domain::caps::CapWindowKey]) -> StoreResult<Vec<u64>> {
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
        read::scan_event_lines(&self.readers, query, after, limit, fields).await
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

    /// One process serves the file, but `leadrelay apply` (another process) may change its
    /// configuration: the stream looks for such changes every [`CONFIG_POLL`] and signals them.
    async fn signals(&self) -> StoreResult<Option<futures::stream::BoxStream<'static, StoreSignal>>> {
        use futures::StreamExt;
        let readers = self.readers.clone();
        let first = config_fingerprint(&readers).await?;
        let signals = futures::stream::unfold((readers, first), |(readers, last)| async move {
            loop {
                tokio::time::sleep(CONFIG_POLL).await;
                if readers.is_closed() {
                    return None;
                }
                match config_fingerprint(&readers).await {
                    Ok(now) if now != last => return Some((StoreSignal::ConfigChanged, (readers, now))),
                    Ok(_) => {}
                    Err(error) => tracing::warn!(%error, "looking for configuration changes failed"),
                }
            }
        });
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
