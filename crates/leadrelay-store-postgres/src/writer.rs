//! The node's writer: its batch transactions. Each one that writes events takes the
//! `chain_head` row lock first, so that the batches of every node link into one chain and see
//! each other's duplicate keys and idempotency answers.

use async_trait::async_trait;
use leadrelay_domain::config::{ChangeError, Config, ConfigChange, ConfigKind, ObjectWrite};
use leadrelay_domain::time::now_millis;
use leadrelay_store::batch::{
    admit, duplicate_lookups, event_rows, idempotency_lookups, link_events, number_snapshots, plan_resends,
    AnswerIndex, ChainHead, KeyIndex,
};
use leadrelay_store::completion;
use leadrelay_store::group_commit::{BatchAnswer, BatchRefs, BatchWriter};
use leadrelay_store::{
    ConfigWriteError, DeliveryRecord, JobClaim, JobRecord, NewToken, Role, StoreError, StoreResult, StoredAnswer,
};
use leadrelay_store_sql::{last_admin, KEEPS_AN_ADMIN};
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection, Row};

use crate::rows::{
    claim_jobs, claim_transfers, count_caps, insert_attempts, insert_duplicate_keys, insert_events, insert_idempotency,
    insert_leads, insert_pending_completions, insert_snapshots, insert_transfers, save_job, take_due_completions,
    update_transfers,
};
use crate::{corrupt, read, unavailable, CONFIG_CHANGED, SIGNAL_CHANNEL, TRANSFERS_QUEUED};

/// The longest a batch transaction may take before the writer gives its connection up.
const WRITE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Keys looked up per statement (PostgreSQL binds at most 65535 values).
const LOOKUP_CHUNK: usize = 20_000;

pub(crate) struct Writer {
    connection: PgConnection,
    options: PgConnectOptions,
    /// Set when a write failed: the connection may be gone (a restarted server, a network
    /// cut), and the next write checks it first.
    suspect: bool,
}

impl Writer {
    pub(crate) fn new(connection: PgConnection, options: PgConnectOptions) -> Self {
        Self { connection, options, suspect: false }
    }

    /// Makes sure the connection works after a failed write, opening a new one if it does not.
    async fn connected(&mut self) -> StoreResult<&mut PgConnection> {
        if self.suspect {
            if self.connection.ping().await.is_err() {
                tracing::warn!("the writer's PostgreSQL connection is gone; reconnecting");
                self.connection = self.options.connect().await.map_err(unavailable)?;
            }
            self.suspect = false;
        }
        Ok(&mut self.connection)
    }

    /// A token change that touched no row: an error when the token exists (it is the only
    /// admin token), false when it does not.
    async fn refuse_last_admin(&mut self, changed: bool, token_id: &str) -> StoreResult<bool> {
        if changed {
            return Ok(true);
        }
        let result = sqlx::query("SELECT 1 FROM tokens WHERE id = $1")
            .bind(token_id)
            .fetch_optional(self.connected().await?)
            .await
            .map_err(unavailable);
        match self.watch(result)? {
            Some(_) => Err(last_admin(token_id)),
            None => Ok(false),
        }
    }

    /// Runs a write, marking the connection suspect when it fails.
    fn watch<T>(&mut self, result: StoreResult<T>) -> StoreResult<T> {
        self.suspect |= result.is_err();
        result
    }
}

/// Tells every node listening (see `Store::signals`), when the transaction commits.
async fn notify(transaction: &mut PgConnection, payload: &str) -> StoreResult<()> {
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(SIGNAL_CHANNEL)
        .bind(payload)
        .execute(&mut *transaction)
        .await
        .map_err(unavailable)?;
    Ok(())
}

/// Locks the head of the chain for this transaction and reads it.
async fn lock_head(connection: &mut PgConnection) -> StoreResult<ChainHead> {
    let row = sqlx::query(
        "SELECT seq, hash, snapshot_id, COALESCE((SELECT ts FROM events WHERE events.seq = chain_head.seq), 0) \
         FROM chain_head WHERE id = 1 FOR UPDATE",
    )
    .fetch_one(&mut *connection)
    .await
    .map_err(unavailable)?;
    let hash: Vec<u8> = row.try_get(1).map_err(corrupt)?;
    Ok(ChainHead {
        seq: row.try_get(0).map_err(corrupt)?,
        hash: hash.try_into().map_err(|_| corrupt("chain head hash is not 32 bytes"))?,
        snapshot_id: row.try_get(2).map_err(corrupt)?,
        timestamp: row.try_get(3).map_err(corrupt)?,
    })
}

#[async_trait]
impl BatchWriter for Writer {
    async fn commit_batch(&mut self, refs: BatchRefs<'_>) -> StoreResult<BatchAnswer> {
        let connection = self.connected().await?;
        match tokio::time::timeout(WRITE_TIMEOUT, commit_batch(connection, refs)).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(CommitFailure::Before(error))) => self.watch(Err(error)),
            Ok(Err(CommitFailure::AtCommit { error, answer, first_event_id })) => {
                // The server may have committed before the connection failed: a batch whose
                // first event is stored was committed whole, and its writers must hear so
                // rather than write it again.
                self.suspect = true;
                let Some(event_id) = first_event_id else { return Err(error) };
                let stored: Result<bool, _> = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM events WHERE id = $1)")
                    .bind(&event_id)
                    .fetch_one(self.connected().await?)
                    .await;
                match stored {
                    Ok(true) => {
                        tracing::warn!(%error, "the COMMIT's answer was lost, but the batch is stored");
                        Ok(answer)
                    }
                    Ok(false) => Err(error),
                    Err(check) => {
                        self.suspect = true;
                        tracing::error!(%error, %check, "the COMMIT's outcome is unknown");
                        Err(error)
                    }
                }
            }
            Err(_) => {
                // The connection hangs (a network cut the keepalives have not noticed yet, a
                // server stuck): give it up, so the next write does not wait behind it.
                tracing::error!("a write to PostgreSQL took over {WRITE_TIMEOUT:?}; reconnecting");
                self.connection = self.options.connect().await.map_err(unavailable)?;
                Err(unavailable(format!("the write did not finish within {WRITE_TIMEOUT:?}")))
            }
        }
    }

    async fn change_config(&mut self, change: ConfigChange) -> Result<Config, ConfigWriteError> {
        let result = change_config(self.connected().await?, change).await;
        self.suspect |= matches!(result, Err(ConfigWriteError::Store(_)));
        result
    }

    async fn create_token(&mut self, token: NewToken, replace: bool) -> StoreResult<()> {
        let result = create_token(self.connected().await?, token, replace).await;
        self.watch(result)
    }

    async fn delete_token(&mut self, token_id: &str) -> StoreResult<bool> {
        let result = sqlx::query(&format!("DELETE FROM tokens WHERE id = $1 AND {KEEPS_AN_ADMIN}"))
            .bind(token_id)
            .execute(self.connected().await?)
            .await
            .map(|done| done.rows_affected() > 0)
            .map_err(unavailable);
        let deleted = self.watch(result)?;
        self.refuse_last_admin(deleted, token_id).await
    }

    async fn replace_answer(&mut self, source_id: &str, key: &str, answer: &StoredAnswer) -> StoreResult<()> {
        let result =
            sqlx::query("UPDATE idempotency_keys SET http_status = $1, answer = $2 WHERE source_id = $3 AND key = $4")
                .bind(i64::from(answer.http_status))
                .bind(&answer.body_json)
                .bind(source_id)
                .bind(key)
                .execute(self.connected().await?)
                .await
                .map(|_| ())
                .map_err(unavailable);
        self.watch(result)
    }

    async fn update_token(&mut self, token_id: &str, name: &str, role: Option<Role>) -> StoreResult<bool> {
        let sql = format!(
            "UPDATE tokens SET name = $1, role = COALESCE($2, role) WHERE id = $3 AND (COALESCE($2, role) = 'admin' OR {KEEPS_AN_ADMIN})"
        );
        let result = sqlx::query(&sql)
            .bind(name)
            .bind(role.map(Role::as_str))
            .bind(token_id)
            .execute(self.connected().await?)
            .await
            .map(|done| done.rows_affected() > 0)
            .map_err(unavailable);
        let updated = self.watch(result)?;
        self.refuse_last_admin(updated, token_id).await
    }

    async fn release(&mut self, owner: &str, now: i64) -> StoreResult<u64> {
        let result = sqlx::query(
            "UPDATE transfers SET due_at = $1, lease_owner = NULL WHERE state = 'pending' AND lease_owner = $2",
        )
        .bind(now)
        .bind(owner)
        .execute(self.connected().await?)
        .await
        .map(|done| done.rows_affected())
        .map_err(unavailable);
        self.watch(result)
    }

    async fn save_job(&mut self, job: &JobRecord) -> StoreResult<()> {
        let result = save_job(self.connected().await?, job).await;
        self.watch(result)
    }

    async fn claim_jobs(&mut self, claim: &JobClaim) -> StoreResult<Vec<JobRecord>> {
        let result = claim_jobs(self.connected().await?, claim).await;
        self.watch(result)
    }

    async fn close(self) {
        let _ = self.connection.close().await;
    }
}

/// Why a batch transaction failed: before its COMMIT (nothing is written), or at the COMMIT
/// itself, when the connection may have dropped after the server committed.
enum CommitFailure {
    Before(StoreError),
    AtCommit { error: StoreError, answer: BatchAnswer, first_event_id: Option<String> },
}

impl From<StoreError> for CommitFailure {
    fn from(error: StoreError) -> Self {
        Self::Before(error)
    }
}

/// One batch in one transaction; on any error before the COMMIT nothing of it is written.
async fn commit_batch(connection: &mut PgConnection, refs: BatchRefs<'_>) -> Result<BatchAnswer, CommitFailure> {
    let BatchRefs { submissions: batch, records, claims, resends } = refs;
    let mut transaction = connection.begin().await.map_err(unavailable)?;
    let writes_events = !batch.is_empty() || !records.is_empty() || !resends.is_empty();
    // Claims alone need no chain: they take transfers with SKIP LOCKED beside other nodes.
    let mut head = if writes_events { lock_head(&mut transaction).await? } else { ChainHead::EMPTY };
    let start = head;

    let mut keys = KeyIndex::new();
    for (flow_id, (digests, since)) in duplicate_lookups(batch) {
        for chunk in digests.chunks(LOOKUP_CHUNK) {
            for (digest, lead_id, created_at) in read::duplicate_keys(&mut *transaction, flow_id, chunk, since).await? {
                keys.entry((flow_id.to_owned(), digest)).or_default().push((lead_id, created_at));
            }
        }
    }
    let mut answers = AnswerIndex::new();
    for chunk in idempotency_lookups(batch).chunks(LOOKUP_CHUNK) {
        answers.extend(read::idempotent_answers(&mut *transaction, chunk).await?);
    }
    let (outcomes, accepted) = admit(batch, &mut keys, &mut answers);

    let resend_ids: Vec<String> = resends.iter().flat_map(|request| request.transfer_ids.iter().cloned()).collect();
    let resend_rows = read::resend_rows(&mut transaction, &resend_ids).await?;
    let (resent, resend_records) = plan_resends(resends, &resend_rows);
    let records: Vec<&DeliveryRecord> = records.iter().copied().chain(resend_records.iter()).collect();
    let records = records.as_slice();

    let snapshot_bases = number_snapshots(&mut head, &accepted);
    if !accepted.is_empty() {
        insert_snapshots(&mut transaction, &accepted, &snapshot_bases).await?;
        insert_leads(&mut transaction, &accepted, &snapshot_bases).await?;
        insert_transfers(&mut transaction, &accepted).await?;
        insert_duplicate_keys(&mut transaction, &accepted).await?;
        insert_idempotency(&mut transaction, &accepted).await?;
        insert_pending_completions(&mut transaction, &accepted).await?;
    }
    update_transfers(&mut transaction, records).await?;
    // Held `flow.completed` events whose leads have no transfer pending any more follow the
    // outcomes just written, in the batch's one insert of events.
    let due = take_due_completions(&mut transaction, &completion::leads_of(records)).await?;
    let completed = completion::completion_record(due, records, now_millis())?;
    let logged: Vec<&DeliveryRecord> = records.iter().copied().chain(completed.as_ref()).collect();
    let rows = event_rows(&accepted, &snapshot_bases, &logged);
    let links = link_events(&mut head, &rows);
    if !rows.is_empty() {
        insert_events(&mut transaction, &rows, &links).await?;
    }
    if head != start {
        sqlx::query("UPDATE chain_head SET seq = $1, hash = $2, snapshot_id = $3 WHERE id = 1")
            .bind(head.seq)
            .bind(&head.hash[..])
            .bind(head.snapshot_id)
            .execute(&mut *transaction)
            .await
            .map_err(unavailable)?;
    }
    insert_attempts(&mut transaction, records).await?;
    count_caps(&mut transaction, records).await?;
    // Other nodes look for due deliveries at once rather than at their next poll; the
    // notification goes out when the transaction commits.
    let queued = accepted.iter().any(|submission| submission.transfers.iter().any(|transfer| transfer.queued))
        || !resend_records.is_empty();
    if queued {
        notify(&mut transaction, TRANSFERS_QUEUED).await?;
    }
    let mut claimed = Vec::with_capacity(claims.len());
    for claim in claims {
        let rows = claim_transfers(&mut transaction, claim).await?;
        claimed.push(read::with_snapshots(&mut transaction, rows).await?);
    }
    let first_event_id = rows.first().map(|row| row.event.id.as_str().to_owned());
    let answer = BatchAnswer { outcomes, claimed, resent };
    match transaction.commit().await {
        Ok(()) => Ok(answer),
        Err(error) => Err(CommitFailure::AtCommit { error: unavailable(error), answer, first_event_id }),
    }
}

async fn change_config(connection: &mut PgConnection, change: ConfigChange) -> Result<Config, ConfigWriteError> {
    let mut transaction = connection.begin().await.map_err(unavailable)?;
    // One change at a time across every node: each builds on the configuration as the last
    // one left it.
    sqlx::query("LOCK TABLE config_objects IN SHARE ROW EXCLUSIVE MODE")
        .execute(&mut *transaction)
        .await
        .map_err(unavailable)?;
    let current = read::load_config(&mut *transaction).await?;
    let now = now_millis();
    let (next, writes) = current.change(change, now)?;
    for write in writes {
        match write {
            ObjectWrite::Put(object) => {
                sqlx::query(
                    "INSERT INTO config_objects (kind, id, position, body, created_at, updated_at)
                         VALUES ($1, $2, (SELECT COALESCE(MAX(position), 0) + 1 FROM config_objects), $3, $4, $4)
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
                if kind == ConfigKind::Destination {
                    // Wait for the batches in flight on every node (they hold the chain head),
                    // so that none queues a transfer after this count.
                    sqlx::query("SELECT 1 FROM chain_head WHERE id = 1 FOR UPDATE")
                        .execute(&mut *transaction)
                        .await
                        .map_err(unavailable)?;
                    let waiting: i64 = sqlx::query_scalar(
                        "SELECT COUNT(*) FROM transfers WHERE state = 'pending' AND destination_id = $1",
                    )
                    .bind(&id)
                    .fetch_one(&mut *transaction)
                    .await
                    .map_err(unavailable)?;
                    if waiting > 0 {
                        return Err(ConfigWriteError::Change(ChangeError::InUse(format!(
                            "destination {id:?} has {waiting} transfers waiting for delivery; delete it once they \
                                 are delivered or abandoned"
                        ))));
                    }
                }
                sqlx::query("DELETE FROM config_objects WHERE kind = $1 AND id = $2")
                    .bind(kind.as_str())
                    .bind(&id)
                    .execute(&mut *transaction)
                    .await
                    .map_err(unavailable)?;
            }
        }
    }
    notify(&mut transaction, CONFIG_CHANGED).await?;
    transaction.commit().await.map_err(unavailable)?;
    Ok(next)
}

async fn create_token(connection: &mut PgConnection, token: NewToken, replace: bool) -> StoreResult<()> {
    let sql = if replace {
        "INSERT INTO tokens (id, name, role, hash, created_at) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (hash) DO UPDATE SET role = excluded.role"
    } else {
        "INSERT INTO tokens (id, name, role, hash, created_at) VALUES ($1, $2, $3, $4, $5)"
    };
    sqlx::query(sql)
        .bind(&token.id)
        .bind(&token.name)
        .bind(token.role.as_str())
        .bind(&token.hash[..])
        .bind(token.created_at)
        .execute(connection)
        .await
        .map_err(|error| match &error {
            sqlx::Error::Database(db) if db.is_unique_violation() => {
                StoreError::Conflict("a token with that value already exists".to_owned())
            }
            _ => unavailable(error),
        })?;
    Ok(())
}
