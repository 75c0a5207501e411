//! The single writer: every write goes through one connection, owned by a thread of its own,
//! which takes all submissions waiting at once into one transaction (group commit) and links
//! their events into the hash chain in order.
//!
//! The writer talks to SQLite directly (rusqlite) with cached single-row statements: a batch
//! steps a handful of prepared statements once per row, where building, parsing and binding a
//! multi-row statement per batch, and crossing to a driver thread for every statement, cost
//! several times the work SQLite itself does. Its thread runs the shared group-commit loop on a
//! runtime of its own, so that the blocking calls into SQLite never hold up the server's
//! runtime.

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use leadrelay_domain::chain::{Hash, GENESIS};
use leadrelay_domain::config::{Config, ConfigChange, ConfigKind, ObjectWrite};
use leadrelay_domain::time::now_millis;
use leadrelay_store::batch::{
    admit, event_rows, idempotency_lookups, link_events, number_snapshots, plan_resends, ChainHead,
};
use leadrelay_store::completion;
use leadrelay_store::group_commit::{self, BatchAnswer, BatchRefs, BatchWriter, WriteCommand, WriterHealth};
use leadrelay_store::{
    ConfigWriteError, DeliveryRecord, JobClaim, JobRecord, NewToken, Role, StoreError, StoreResult, StoredAnswer,
};
use leadrelay_store_sql::{corrupt, last_admin, KEEPS_AN_ADMIN};
use rusqlite::{params, CachedStatement, Connection, OptionalExtension, TransactionBehavior};
use tokio::sync::{mpsc, oneshot};

use crate::{read, unavailable, BUSY_TIMEOUT, PRAGMAS};

mod delivery;
mod submission;

use delivery::{
    claim_jobs, claim_transfers, count_caps, insert_attempts, resend_rows, save_job, snapshots_of,
    take_due_completions, update_transfers,
};
use submission::{
    insert_duplicate_keys, insert_events, insert_idempotency, insert_leads, insert_pending_completions,
    insert_snapshots, insert_transfers, load_answers, load_duplicate_keys,
};

/// The writer's page cache, in KiB (negative, as SQLite takes it), smaller than a reader's: the
/// writer works near the end of each index, where few pages are hot, and SQLite walks the
/// whole page cache at every commit. Measured against 64 MiB: the walk fell from about a tenth
/// of the writer's time to a fiftieth, throughput stayed the same, and 10,000 slow deliveries
/// peaked 12 MiB lower.
const WRITER_CACHE_KIB: i64 = -8192;

/// Statements the writer keeps prepared: those of batches, with room to spare.
const STATEMENT_CACHE: usize = 64;

pub(crate) struct Writer {
    connection: Connection,
    /// The database file, to open the connection again (`heal`).
    path: PathBuf,
    head: ChainHead,
}

/// What a failed call into SQLite means for the caller: a stored value that cannot be read
/// back is corrupt; anything else (a full disk, an I/O error, a busy file) leaves the store
/// unavailable for now.
pub(crate) fn failed(error: rusqlite::Error) -> StoreError {
    match error {
        rusqlite::Error::FromSqlConversionFailure(..)
        | rusqlite::Error::InvalidColumnType(..)
        | rusqlite::Error::IntegralValueOutOfRange(..) => corrupt(error),
        error => unavailable(error),
    }
}

/// Runs one cached statement once per item, preparing it only when there is an item.
fn execute_each<T>(
    connection: &Connection,
    sql: &str,
    items: impl IntoIterator<Item = T>,
    mut run: impl FnMut(&mut CachedStatement<'_>, T) -> rusqlite::Result<usize>,
) -> StoreResult<()> {
    let mut items = items.into_iter().peekable();
    if items.peek().is_none() {
        return Ok(());
    }
    let mut statement = connection.prepare_cached(sql).map_err(failed)?;
    for item in items {
        run(&mut statement, item).map_err(failed)?;
    }
    Ok(())
}

/// Opens the writer's connection to the database file, set up as the readers' are.
fn connect(path: &Path) -> StoreResult<Connection> {
    let connection = Connection::open(path).map_err(failed)?;
    connection.busy_timeout(BUSY_TIMEOUT).map_err(failed)?;
    connection.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    let mode: String =
        connection.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0)).map_err(failed)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(unavailable(format!("the database would not use write-ahead logging (journal mode {mode})")));
    }
    connection.pragma_update(None, "synchronous", "FULL").map_err(failed)?;
    connection.pragma_update(None, "foreign_keys", "OFF").map_err(failed)?;
    for (name, value) in PRAGMAS {
        connection.pragma_update(None, name, value).map_err(failed)?;
    }
    connection.pragma_update(None, "cache_size", WRITER_CACHE_KIB).map_err(failed)?;
    Ok(connection)
}

/// Starts the writer of the database file on a thread of its own; writes sent to the returned
/// channel are carried out there. The thread opens its connection itself, so that nothing
/// blocks the caller's runtime, and ends once every sender is gone or a shutdown is sent.
pub(crate) async fn spawn(
    path: PathBuf,
    max_batch: usize,
    health: WriterHealth,
) -> StoreResult<mpsc::Sender<WriteCommand>> {
    let (writes, commands) = mpsc::channel(max_batch.max(1) * 4);
    let (started, start) = oneshot::channel();
    std::thread::Builder::new()
        .name("leadrelay-writer".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_time().build() {
                Ok(runtime) => runtime,
                Err(error) => {
                    let _ = started.send(Err(unavailable(format!("starting the writer: {error}"))));
                    return;
                }
            };
            let opened = connect(&path).and_then(|connection| {
                let head = load_head(&connection)?;
                Ok(Writer { connection, path, head })
            });
            match opened {
                Ok(writer) => {
                    let _ = started.send(Ok(()));
                    runtime.block_on(group_commit::run(writer, commands, max_batch, health));
                }
                Err(error) => {
                    let _ = started.send(Err(error));
                }
            }
        })
        .map_err(|error| unavailable(format!("starting the writer thread: {error}")))?;
    start.await.map_err(|_| unavailable("the writer thread stopped while starting"))??;
    Ok(writes)
}

impl Writer {
    /// A token change that touched no row: an error when the token exists (it is the only
    /// admin token), false when it does not.
    fn refuse_last_admin(&self, changed: bool, token_id: &str) -> StoreResult<bool> {
        if changed {
            return Ok(true);
        }
        let exists = self
            .connection
            .query_row("SELECT 1 FROM tokens WHERE id = ?1", [token_id], |_| Ok(()))
            .optional()
            .map_err(failed)?;
        match exists {
            Some(()) => Err(last_admin(token_id)),
            None => Ok(false),
        }
    }

    /// Replaces the connection after a failed transaction, so that nothing a failure left
    /// behind (a transaction SQLite rolled back itself on a full disk or an I/O error) carries
    /// over to the next write. The chain head is read again from the file, which holds exactly
    /// what was committed.
    fn heal(&mut self) {
        let fresh = match connect(&self.path) {
            Ok(fresh) => fresh,
            Err(error) => {
                tracing::error!(%error, "could not reopen the database after a failed write; trying again after the next");
                return;
            }
        };
        self.connection = fresh;
        match load_head(&self.connection) {
            Ok(head) => self.head = head,
            Err(error) => tracing::error!(%error, "could not read the chain head after reopening the database"),
        }
    }

    fn try_change_config(&mut self, change: ConfigChange) -> Result<Config, ConfigWriteError> {
        let transaction = self.connection.transaction_with_behavior(TransactionBehavior::Immediate).map_err(failed)?;
        let current = load_config(&transaction)?;
        let now = now_millis();
        let (next, writes) = current.change(change, now)?;
        for write in writes {
            match write {
                ObjectWrite::Put(object) => {
                    transaction
                        .execute(
                            "INSERT INTO config_objects (kind, id, position, body, created_at, updated_at)
                             VALUES (?1, ?2, (SELECT COALESCE(MAX(position), 0) + 1 FROM config_objects), ?3, ?4, ?4)
                             ON CONFLICT (kind, id) DO UPDATE SET body = excluded.body, updated_at = excluded.updated_at",
                            params![object.kind().as_str(), object.id(), object.to_json().to_string(), now],
                        )
                        .map_err(failed)?;
                }
                ObjectWrite::Delete { kind, id } => {
                    // Transfers are never dropped: a destination with transfers still waiting
                    // for it stays until they are delivered, abandoned or resent elsewhere.
                    if kind == ConfigKind::Destination {
                        let waiting: i64 = transaction
                            .query_row(
                                "SELECT COUNT(*) FROM transfers WHERE state = 'pending' AND destination_id = ?1",
                                [&id],
                                |row| row.get(0),
                            )
                            .map_err(failed)?;
                        if waiting > 0 {
                            return Err(ConfigWriteError::Change(leadrelay_domain::config::ChangeError::InUse(
                                format!(
                                "destination {id:?} has {waiting} transfers waiting for delivery; delete it once they \
                                 are delivered or abandoned"
                            ),
                            )));
                        }
                    }
                    transaction
                        .execute("DELETE FROM config_objects WHERE kind = ?1 AND id = ?2", params![kind.as_str(), id])
                        .map_err(failed)?;
                }
            }
        }
        transaction.commit().map_err(failed)?;
        Ok(next)
    }

    fn try_commit_batch(&mut self, refs: BatchRefs<'_>) -> StoreResult<BatchAnswer> {
        let BatchRefs { submissions: batch, records, claims, resends } = refs;
        let Self { connection, head, .. } = self;
        let transaction = connection.transaction_with_behavior(TransactionBehavior::Immediate).map_err(failed)?;
        // Another process may have written to the file since (a second `serve` on it, by
        // mistake): link onto the chain as it is on disk, never onto a stale copy.
        let on_disk = load_head(&transaction)?;
        if (on_disk.seq, on_disk.hash, on_disk.snapshot_id) != (head.seq, head.hash, head.snapshot_id) {
            tracing::warn!("the event log was written by another process; continuing from its end");
            *head = on_disk;
        }
        // What the database already holds for this batch's keys.
        let mut keys = load_duplicate_keys(&transaction, batch)?;
        let mut answers = load_answers(&transaction, &idempotency_lookups(batch))?;
        let (outcomes, accepted) = admit(batch, &mut keys, &mut answers);

        // Resends read the transfers' state in this transaction, then write like deliveries.
        let resend_ids: Vec<&str> =
            resends.iter().flat_map(|request| request.transfer_ids.iter().map(String::as_str)).collect();
        let resend_rows = resend_rows(&transaction, &resend_ids)?;
        let (resent, resend_records) = plan_resends(resends, &resend_rows);
        let records: Vec<&DeliveryRecord> = records.iter().copied().chain(resend_records.iter()).collect();
        let records = records.as_slice();

        let snapshot_bases = number_snapshots(head, &accepted);
        if !accepted.is_empty() {
            insert_snapshots(&transaction, &accepted, &snapshot_bases)?;
            insert_leads(&transaction, &accepted, &snapshot_bases)?;
            insert_transfers(&transaction, &accepted)?;
            insert_duplicate_keys(&transaction, &accepted)?;
            insert_idempotency(&transaction, &accepted)?;
            insert_pending_completions(&transaction, &accepted)?;
        }
        update_transfers(&transaction, records)?;
        // Held `flow.completed` events whose leads have no transfer pending any more follow
        // the outcomes just written, in the batch's events.
        let due = take_due_completions(&transaction, &completion::leads_of(records))?;
        let completed = completion::completion_record(due, records, now_millis())?;
        let logged: Vec<&DeliveryRecord> = records.iter().copied().chain(completed.as_ref()).collect();
        let rows = event_rows(&accepted, &snapshot_bases, &logged);
        let links = link_events(head, &rows);
        if !rows.is_empty() {
            insert_events(&transaction, &rows, &links)?;
            save_head(&transaction, head)?;
        }
        insert_attempts(&transaction, records)?;
        count_caps(&transaction, records)?;
        let mut claimed = Vec::with_capacity(claims.len());
        for claim in claims {
            let rows = claim_transfers(&transaction, claim)?;
            claimed.push(snapshots_of(&transaction, rows)?);
        }
        transaction.commit().map_err(failed)?;
        Ok(BatchAnswer { outcomes, claimed, resent })
    }

    fn run_token_change(&self, sql: &str, params: impl rusqlite::Params) -> StoreResult<bool> {
        self.connection.execute(sql, params).map(|changed| changed > 0).map_err(failed)
    }
}

// The writer's thread runs nothing but the group-commit loop, so these calls into SQLite may
// block it.
#[async_trait]
impl BatchWriter for Writer {
    async fn commit_batch(&mut self, refs: BatchRefs<'_>) -> StoreResult<BatchAnswer> {
        let start_head = self.head;
        let result = self.try_commit_batch(refs);
        if result.is_err() {
            self.head = start_head;
            self.heal();
        }
        result
    }

    async fn release(&mut self, owner: &str, now: i64) -> StoreResult<u64> {
        self.connection
            .execute(
                "UPDATE transfers SET due_at = ?1, lease_owner = NULL WHERE state = 'pending' AND lease_owner = ?2",
                params![now, owner],
            )
            .map(|changed| changed as u64)
            .map_err(failed)
    }

    async fn delete_token(&mut self, token_id: &str) -> StoreResult<bool> {
        let deleted =
            self.run_token_change(&format!("DELETE FROM tokens WHERE id = ?1 AND {KEEPS_AN_ADMIN}"), [token_id])?;
        self.refuse_last_admin(deleted, token_id)
    }

    async fn replace_answer(&mut self, source_id: &str, key: &str, answer: &StoredAnswer) -> StoreResult<()> {
        self.connection
            .execute(
                "UPDATE idempotency_keys SET http_status = ?1, answer = ?2 WHERE source_id = ?3 AND key = ?4",
                params![answer.http_status, answer.body_json, source_id, key],
            )
            .map(|_| ())
            .map_err(failed)
    }

    async fn update_token(&mut self, token_id: &str, name: &str, role: Option<Role>) -> StoreResult<bool> {
        let sql = format!(
            "UPDATE tokens SET name = ?1, role = COALESCE(?2, role) WHERE id = ?3 AND (COALESCE(?2, role) = 'admin' OR {KEEPS_AN_ADMIN})"
        );
        let updated = self.run_token_change(&sql, params![name, role.map(Role::as_str), token_id])?;
        self.refuse_last_admin(updated, token_id)
    }

    async fn save_job(&mut self, job: &JobRecord) -> StoreResult<()> {
        save_job(&self.connection, job)
    }

    async fn claim_jobs(&mut self, claim: &JobClaim) -> StoreResult<Vec<JobRecord>> {
        claim_jobs(&self.connection, claim)
    }

    async fn close(self) {
        if let Err((_, error)) = self.connection.close() {
            tracing::warn!(%error, "closing the writer's connection");
        }
    }

    async fn change_config(&mut self, change: ConfigChange) -> Result<Config, ConfigWriteError> {
        let result = self.try_change_config(change);
        if let Err(ConfigWriteError::Store(_)) = &result {
            self.heal();
        }
        result
    }

    async fn create_token(&mut self, token: NewToken, replace: bool) -> StoreResult<()> {
        let sql = if replace {
            "INSERT INTO tokens (id, name, role, hash, created_at) VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (hash) DO UPDATE SET role = excluded.role"
        } else {
            "INSERT INTO tokens (id, name, role, hash, created_at) VALUES (?1, ?2, ?3, ?4, ?5)"
        };
        self.connection
            .execute(sql, params![token.id, token.name, token.role.as_str(), &token.hash[..], token.created_at])
            .map_err(|error| match error.sqlite_error().map(|cause| cause.extended_code) {
                Some(rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE | rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY) => {
                    StoreError::Conflict("a token with that value already exists".to_owned())
                }
                _ => failed(error),
            })?;
        Ok(())
    }
}

/// The configuration as stored, read inside the writer's transaction.
fn load_config(connection: &Connection) -> StoreResult<Config> {
    let mut statement = connection.prepare_cached(read::CONFIG_ROWS).map_err(failed)?;
    let rows = statement
        .query_map([], |row| Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?, row.get::<_, String>(2)?)))
        .map_err(failed)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(failed)?;
    read::config_from_rows(rows)
}

fn save_head(connection: &Connection, head: &ChainHead) -> StoreResult<()> {
    connection
        .prepare_cached(
            "INSERT INTO chain_head (id, seq, hash) VALUES (1, ?1, ?2) \
             ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash",
        )
        .and_then(|mut statement| statement.execute(params![head.seq, &head.hash[..]]))
        .map(|_| ())
        .map_err(failed)
}

fn load_head(connection: &Connection) -> StoreResult<ChainHead> {
    let row: Option<(i64, Vec<u8>, i64)> = connection
        .prepare_cached(
            "SELECT seq, hash, COALESCE((SELECT ts FROM events WHERE events.seq = chain_head.seq), 0) \
             FROM chain_head WHERE id = 1",
        )
        .and_then(|mut statement| statement.query_row([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?))).optional())
        .map_err(failed)?;
    let snapshot_id: i64 = connection
        .prepare_cached("SELECT COALESCE(MAX(id), 0) FROM snapshots")
        .and_then(|mut statement| statement.query_row([], |row| row.get(0)))
        .map_err(failed)?;
    let Some((seq, hash, timestamp)) = row else {
        return Ok(ChainHead { seq: 0, hash: GENESIS, snapshot_id, timestamp: 0 });
    };
    let hash: Hash = hash.try_into().map_err(|_| StoreError::Corrupt("chain head hash is not 32 bytes".into()))?;
    Ok(ChainHead { seq, hash, snapshot_id, timestamp })
}
