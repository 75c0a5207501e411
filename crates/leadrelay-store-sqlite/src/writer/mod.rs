//! The single writer: every write goes through one connection and one task, which takes all
//! submissions waiting at once into one transaction (group commit) and links their events
//! into the hash chain in order.

use async_trait::async_trait;
use leadrelay_domain::chain::{Hash, GENESIS};
use leadrelay_domain::config::{Config, ConfigChange, ObjectWrite};
use leadrelay_domain::time::now_millis;
use leadrelay_store::batch::{
    admit, event_rows, idempotency_lookups, link_events, number_snapshots, plan_resends, ChainHead,
};
use leadrelay_store::completion;
use leadrelay_store::group_commit::{BatchAnswer, BatchRefs, BatchWriter};
use leadrelay_store::{
    ConfigWriteError, DeliveryRecord, JobClaim, JobRecord, NewToken, Role, StoreError, StoreResult, StoredAnswer,
};
use leadrelay_store_sql::{last_admin, KEEPS_AN_ADMIN};
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions, Connection, Row, SqliteConnection};

use crate::{read, unavailable};

mod delivery;
mod submission;

use delivery::{
    claim_jobs, claim_transfers, count_caps, insert_attempts, save_job, take_due_completions, update_transfers,
};
use submission::{
    insert_duplicate_keys, insert_events, insert_idempotency, insert_leads, insert_pending_completions,
    insert_snapshots, insert_transfers, load_answers, load_duplicate_keys,
};

/// SQLite allows 32766 bound values in one statement; stay well below.
const MAX_BOUND_VALUES: usize = 30_000;

pub(crate) struct Writer {
    connection: SqliteConnection,
    /// How to open the connection again (`heal`).
    options: SqliteConnectOptions,
    head: ChainHead,
}

/// A transfer as a claim returns it from the writer; the lead's snapshot is read after commit.
#[derive(Clone, Debug)]
pub(crate) struct ClaimRow {
    pub transfer_id: String,
    pub lead_id: String,
    pub flow_id: String,
    pub source_id: String,
    pub destination_id: String,
    pub attempts: i64,
    pub retry_base: i64,
    pub created_at: i64,
}

impl Writer {
    pub(crate) async fn start(mut connection: SqliteConnection, options: SqliteConnectOptions) -> StoreResult<Self> {
        let head = load_head(&mut connection).await?;
        Ok(Self { connection, options, head })
    }

    /// A token change that touched no row: an error when the token exists (it is the only
    /// admin token), false when it does not.
    async fn refuse_last_admin(&mut self, changed: bool, token_id: &str) -> StoreResult<bool> {
        if changed {
            return Ok(true);
        }
        let exists = sqlx::query("SELECT 1 FROM tokens WHERE id = ?")
            .bind(token_id)
            .fetch_optional(&mut self.connection)
            .await
            .map_err(unavailable)?;
        match exists {
            Some(_) => Err(last_admin(token_id)),
            None => Ok(false),
        }
    }

    /// Replaces the connection after a failed transaction. sqlx counts the transactions it
    /// has open; when SQLite already rolled one back itself (a full disk, an I/O error), sqlx's
    /// own ROLLBACK fails, its count stays at one, and it would refuse every later `BEGIN`: one
    /// full disk would stop every write until a restart. The chain head is read again from the
    /// file, which holds exactly what was committed.
    async fn heal(&mut self) {
        let fresh = match self.options.connect().await {
            Ok(fresh) => fresh,
            Err(error) => {
                tracing::error!(%error, "could not reopen the database after a failed write; trying again after the next");
                return;
            }
        };
        drop(std::mem::replace(&mut self.connection, fresh));
        match load_head(&mut self.connection).await {
            Ok(head) => self.head = head,
            Err(error) => tracing::error!(%error, "could not read the chain head after reopening the database"),
        }
    }

    async fn try_change_config(&mut self, change: ConfigChange) -> Result<Config, ConfigWriteError> {
        let mut transaction = self.connection.begin_with("BEGIN IMMEDIATE").await.map_err(unavailable)?;
        let current = read::load_config(&mut *transaction).await?;
        let now = now_millis();
        let (next, writes) = current.change(change, now)?;
        for write in writes {
            match write {
                ObjectWrite::Put(object) => {
                    sqlx::query(
                        "INSERT INTO config_objects (kind, id, position, body, created_at, updated_at)
                         VALUES (?1, ?2, (SELECT COALESCE(MAX(position), 0) + 1 FROM config_objects), ?3, ?4, ?4)
                         ON CONFLICT (kind, id) DO UPDATE SET body = excluded.body, updated_at = excluded.updated_at",
                    )
                    .bind(object.kind().as_str())
                    .bind(object.id())
                    .bind(object.to_json().to_string())
                    .bind(now)
                    .execute(&mut *transaction)
                    .await
                    .map_err(unavailable)?;
                }
                ObjectWrite::Delete { kind, id } => {
                    // Transfers are never dropped: a destination with transfers still waiting
                    // for it stays until they are delivered, abandoned or resent elsewhere.
                    if kind == leadrelay_domain::config::ConfigKind::Destination {
                        let waiting: i64 = sqlx::query_scalar(
                            "SELECT COUNT(*) FROM transfers WHERE state = 'pending' AND destination_id = ?",
                        )
                        .bind(&id)
                        .fetch_one(&mut *transaction)
                        .await
                        .map_err(unavailable)?;
                        if waiting > 0 {
                            return Err(ConfigWriteError::Change(leadrelay_domain::config::ChangeError::InUse(
                                format!(
                                "destination {id:?} has {waiting} transfers waiting for delivery; delete it once they \
                                 are delivered or abandoned"
                            ),
                            )));
                        }
                    }
                    sqlx::query("DELETE FROM config_objects WHERE kind = ? AND id = ?")
                        .bind(kind.as_str())
                        .bind(&id)
                        .execute(&mut *transaction)
                        .await
                        .map_err(unavailable)?;
                }
            }
        }
        transaction.commit().await.map_err(unavailable)?;
        Ok(next)
    }

    async fn try_commit_batch(&mut self, refs: BatchRefs<'_>) -> StoreResult<BatchAnswer> {
        let BatchRefs { submissions: batch, records, claims, resends } = refs;
        let mut transaction = self.connection.begin_with("BEGIN IMMEDIATE").await.map_err(unavailable)?;
        // Another process may have written to the file since (a second `serve` on it, by
        // mistake): link onto the chain as it is on disk, never onto a stale copy.
        let on_disk = load_head(&mut transaction).await?;
        if on_disk.seq != self.head.seq
            || on_disk.hash != self.head.hash
            || on_disk.snapshot_id != self.head.snapshot_id
        {
            tracing::warn!("the event log was written by another process; continuing from its end");
            self.head = on_disk;
        }
        // What the database already holds for this batch's keys, read in one query per flow.
        let mut keys = load_duplicate_keys(&mut transaction, batch).await?;
        let mut answers = load_answers(&mut transaction, &idempotency_lookups(batch)).await?;
        let (outcomes, accepted) = admit(batch, &mut keys, &mut answers);

        // Resends read the transfers' state in this transaction, then write like deliveries.
        let resend_ids: Vec<String> = resends.iter().flat_map(|request| request.transfer_ids.iter().cloned()).collect();
        let resend_rows = read::resend_rows(&mut transaction, &resend_ids).await?;
        let (resent, resend_records) = plan_resends(resends, &resend_rows);
        let records: Vec<&DeliveryRecord> = records.iter().copied().chain(resend_records.iter()).collect();
        let records = records.as_slice();

        let snapshot_bases = number_snapshots(&mut self.head, &accepted);
        if !accepted.is_empty() {
            insert_snapshots(&mut transaction, &accepted, &snapshot_bases).await?;
            insert_leads(&mut transaction, &accepted, &snapshot_bases).await?;
            insert_transfers(&mut transaction, &accepted).await?;
            insert_duplicate_keys(&mut transaction, &accepted).await?;
            insert_idempotency(&mut transaction, &accepted).await?;
            insert_pending_completions(&mut transaction, &accepted).await?;
        }
        update_transfers(&mut transaction, records).await?;
        // Held `flow.completed` events whose leads have no transfer pending any more follow
        // the outcomes just written, in the batch's one insert of events.
        let due = take_due_completions(&mut transaction, &completion::leads_of(records)).await?;
        let completed = completion::completion_record(due, records, now_millis())?;
        let logged: Vec<&DeliveryRecord> = records.iter().copied().chain(completed.as_ref()).collect();
        let rows = event_rows(&accepted, &snapshot_bases, &logged);
        let links = link_events(&mut self.head, &rows);
        if !rows.is_empty() {
            insert_events(&mut transaction, &rows, &links).await?;
            save_head(&mut transaction, &self.head).await?;
        }
        insert_attempts(&mut transaction, records).await?;
        count_caps(&mut transaction, records).await?;
        let mut claimed = Vec::with_capacity(claims.len());
        for claim in claims {
            let rows = claim_transfers(&mut transaction, claim).await?;
            claimed.push(read::snapshots_on(&mut transaction, rows).await?);
        }
        transaction.commit().await.map_err(unavailable)?;
        Ok(BatchAnswer { outcomes, claimed, resent })
    }
}

#[async_trait]
impl BatchWriter for Writer {
    async fn commit_batch(&mut self, refs: BatchRefs<'_>) -> StoreResult<BatchAnswer> {
        let start_head = self.head;
        let result = self.try_commit_batch(refs).await;
        if result.is_err() {
            self.head = start_head;
            self.heal().await;
        }
        result
    }

    async fn release(&mut self, owner: &str, now: i64) -> StoreResult<u64> {
        sqlx::query("UPDATE transfers SET due_at = ?, lease_owner = NULL WHERE state = 'pending' AND lease_owner = ?")
            .bind(now)
            .bind(owner)
            .execute(&mut self.connection)
            .await
            .map(|done| done.rows_affected())
            .map_err(unavailable)
    }

    async fn delete_token(&mut self, token_id: &str) -> StoreResult<bool> {
        let deleted = sqlx::query(&format!("DELETE FROM tokens WHERE id = ? AND {KEEPS_AN_ADMIN}"))
            .bind(token_id)
            .execute(&mut self.connection)
            .await
            .map(|done| done.rows_affected() > 0)
            .map_err(unavailable)?;
        self.refuse_last_admin(deleted, token_id).await
    }

    async fn replace_answer(&mut self, source_id: &str, key: &str, answer: &StoredAnswer) -> StoreResult<()> {
        sqlx::query("UPDATE idempotency_keys SET http_status = ?, answer = ? WHERE source_id = ? AND key = ?")
            .bind(i64::from(answer.http_status))
            .bind(&answer.body_json)
            .bind(source_id)
            .bind(key)
            .execute(&mut self.connection)
            .await
            .map(|_| ())
            .map_err(unavailable)
    }

    async fn update_token(&mut self, token_id: &str, name: &str, role: Option<Role>) -> StoreResult<bool> {
        let sql = format!(
            "UPDATE tokens SET name = ?, role = COALESCE(?, role) WHERE id = ? AND (COALESCE(?, role) = 'admin' OR {KEEPS_AN_ADMIN})"
        );
        let updated = sqlx::query(&sql)
            .bind(name)
            .bind(role.map(Role::as_str))
            .bind(token_id)
            .bind(role.map(Role::as_str))
            .execute(&mut self.connection)
            .await
            .map(|done| done.rows_affected() > 0)
            .map_err(unavailable)?;
        self.refuse_last_admin(updated, token_id).await
    }

    async fn save_job(&mut self, job: &JobRecord) -> StoreResult<()> {
        save_job(&mut self.connection, job).await
    }

    async fn claim_jobs(&mut self, claim: &JobClaim) -> StoreResult<Vec<JobRecord>> {
        claim_jobs(&mut self.connection, claim).await
    }

    async fn close(self) {
        let _ = self.connection.close().await;
    }

    async fn change_config(&mut self, change: ConfigChange) -> Result<Config, ConfigWriteError> {
        let result = self.try_change_config(change).await;
        if let Err(ConfigWriteError::Store(_)) = &result {
            self.heal().await;
        }
        result
    }

    async fn create_token(&mut self, token: NewToken, replace: bool) -> StoreResult<()> {
        let sql = if replace {
            "INSERT INTO tokens (id, name, role, hash, created_at) VALUES (?, ?, ?, ?, ?) ON CONFLICT (hash) DO UPDATE SET role = excluded.role"
        } else {
            "INSERT INTO tokens (id, name, role, hash, created_at) VALUES (?, ?, ?, ?, ?)"
        };
        sqlx::query(sql)
            .bind(&token.id)
            .bind(&token.name)
            .bind(token.role.as_str())
            .bind(&token.hash[..])
            .bind(token.created_at)
            .execute(&mut self.connection)
            .await
            .map_err(|error| match &error {
                sqlx::Error::Database(db) if db.is_unique_violation() => {
                    StoreError::Conflict("a token with that value already exists".to_owned())
                }
                _ => unavailable(error),
            })?;
        Ok(())
    }
}

async fn save_head(transaction: &mut SqliteConnection, head: &ChainHead) -> StoreResult<()> {
    sqlx::query("INSERT INTO chain_head (id, seq, hash) VALUES (1, ?, ?) ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash")
        .bind(head.seq)
        .bind(&head.hash[..])
        .execute(&mut *transaction)
        .await
        .map(|_| ())
        .map_err(unavailable)
}

async fn load_head(connection: &mut SqliteConnection) -> StoreResult<ChainHead> {
    let row = sqlx::query(
        "SELECT seq, hash, COALESCE((SELECT ts FROM events WHERE events.seq = chain_head.seq), 0) AS ts \
         FROM chain_head WHERE id = 1",
    )
    .fetch_optional(&mut *connection)
    .await
    .map_err(unavailable)?;
    let snapshot_id: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(id), 0) FROM snapshots")
        .fetch_one(&mut *connection)
        .await
        .map_err(unavailable)?;
    let Some(row) = row else { return Ok(ChainHead { seq: 0, hash: GENESIS, snapshot_id, timestamp: 0 }) };
    let seq: i64 = row.try_get("seq").map_err(unavailable)?;
    let hash: Vec<u8> = row.try_get("hash").map_err(unavailable)?;
    let hash: Hash = hash.try_into().map_err(|_| StoreError::Corrupt("chain head hash is not 32 bytes".into()))?;
    let timestamp: i64 = row.try_get("ts").map_err(unavailable)?;
    Ok(ChainHead { seq, hash, snapshot_id, timestamp })
}

/// Rows per statement for a table with `columns` bound values per row.
fn rows_per_statement(columns: usize) -> usize {
    (MAX_BOUND_VALUES / columns).max(1)
}
