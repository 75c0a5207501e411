//! The single writer: every write goes through one connection and one task, which takes all
//! submissions waiting at once into one transaction (group commit) and links their events
//! into the hash chain in order.

use leadrelay_domain::chain::{Hash, GENESIS};
use leadrelay_domain::config::{Config, ConfigChange, ObjectWrite};
use leadrelay_domain::time::now_millis;
use leadrelay_store::batch::{
    admit, event_rows, idempotency_lookups, link_events, number_snapshots, plan_resends, ChainHead,
};
use leadrelay_store::{
    ClaimedTransfer, CommitOutcome, ConfigWriteError, DeliveryClaim, DeliveryRecord, JobRecord, NewToken,
    ResendOutcome, ResendRequest, StoreError, StoreResult, Submission,
};
use sqlx::{Connection, Row, SqliteConnection};
use tokio::sync::{mpsc, oneshot};

use crate::{read, unavailable};

mod delivery;
mod submission;

use delivery::{claim_transfers, count_caps, insert_attempts, save_job, update_transfers};
use submission::{
    insert_duplicate_keys, insert_events, insert_idempotency, insert_leads, insert_snapshots, insert_transfers,
    load_answers, load_duplicate_keys,
};

/// The longest a commit waits for more writes to join it, and only under load.
const COMMIT_DELAY: std::time::Duration = std::time::Duration::from_micros(1000);

/// SQLite allows 32766 bound values in one statement; stay well below.
const MAX_BOUND_VALUES: usize = 30_000;

pub(crate) enum WriteCommand {
    Submit { submission: Box<Submission>, reply: oneshot::Sender<StoreResult<CommitOutcome>> },
    Deliveries { records: Vec<DeliveryRecord>, reply: oneshot::Sender<StoreResult<()>> },
    Claim { claim: DeliveryClaim, reply: oneshot::Sender<StoreResult<Vec<ClaimedTransfer>>> },
    Release { owner: String, now: i64, reply: oneshot::Sender<StoreResult<u64>> },
    Resend { request: ResendRequest, reply: ResendReply },
    SaveJob { job: Box<JobRecord>, reply: oneshot::Sender<StoreResult<()>> },
    Config { change: ConfigChange, reply: oneshot::Sender<Result<Config, ConfigWriteError>> },
    CreateToken { token: NewToken, replace: bool, reply: oneshot::Sender<StoreResult<()>> },
    DeleteToken { token_id: String, reply: oneshot::Sender<StoreResult<bool>> },
    Shutdown { reply: oneshot::Sender<()> },
}

pub(crate) struct Writer {
    connection: SqliteConnection,
    head: ChainHead,
    max_batch: usize,
}

type Reply = oneshot::Sender<StoreResult<CommitOutcome>>;
type DeliveryReply = oneshot::Sender<StoreResult<()>>;
type ClaimReply = oneshot::Sender<StoreResult<Vec<ClaimedTransfer>>>;
type ResendReply = oneshot::Sender<StoreResult<Vec<(String, ResendOutcome)>>>;

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

/// Writes that share one transaction: submissions, delivery records and claims.
#[derive(Default)]
struct Batch {
    submissions: Vec<(Box<Submission>, Reply)>,
    deliveries: Vec<(Vec<DeliveryRecord>, DeliveryReply)>,
    claims: Vec<(DeliveryClaim, ClaimReply)>,
    resends: Vec<(ResendRequest, ResendReply)>,
}

impl Batch {
    fn len(&self) -> usize {
        self.submissions.len() + self.deliveries.len() + self.claims.len() + self.resends.len()
    }
}

/// What one batch transaction answers: an outcome per submission, rows per claim, outcomes
/// per resend request.
#[derive(Default)]
struct BatchAnswer {
    outcomes: Vec<CommitOutcome>,
    claimed: Vec<Vec<ClaimedTransfer>>,
    resent: Vec<Vec<(String, ResendOutcome)>>,
}

/// The writes of one batch, borrowed.
#[derive(Clone, Copy, Default)]
struct BatchRefs<'a> {
    submissions: &'a [&'a Submission],
    records: &'a [&'a DeliveryRecord],
    claims: &'a [&'a DeliveryClaim],
    resends: &'a [&'a ResendRequest],
}

impl Writer {
    pub(crate) async fn start(mut connection: SqliteConnection, max_batch: usize) -> StoreResult<Self> {
        let head = load_head(&mut connection).await?;
        Ok(Self { connection, head, max_batch: max_batch.max(1) })
    }

    pub(crate) async fn run(mut self, mut commands: mpsc::Receiver<WriteCommand>) {
        let mut pending: Vec<WriteCommand> = Vec::new();
        let mut last_batch = 0usize;
        loop {
            if pending.is_empty() {
                match commands.recv().await {
                    Some(command) => pending.push(command),
                    None => break,
                }
            }
            // Everything that arrived while the last commit was syncing goes into this one.
            while pending.len() < self.max_batch {
                match commands.try_recv() {
                    Ok(command) => pending.push(command),
                    Err(_) => break,
                }
            }
            // Under load, the writers answered by the last commit are about to send their next
            // writes; a batch of a few stragglers would pay a whole sync for little. Wait a
            // moment for as many as last time (PostgreSQL's commit_delay); when fewer come, the
            // wait ends at the deadline and the next batch expects fewer. Idle servers never wait.
            if last_batch >= 8 && pending.len() < last_batch / 2 {
                let deadline = tokio::time::Instant::now() + COMMIT_DELAY;
                while pending.len() < last_batch {
                    match tokio::time::timeout_at(deadline, commands.recv()).await {
                        Ok(Some(command)) => pending.push(command),
                        Ok(None) | Err(_) => break,
                    }
                }
            }
            last_batch = pending.len();
            let shutdown = self.process(std::mem::take(&mut pending)).await;
            if let Some(reply) = shutdown {
                // Take no more writes, but finish every one already sent.
                commands.close();
                let mut rest = Vec::new();
                while let Ok(command) = commands.try_recv() {
                    rest.push(command);
                }
                self.process(rest).await;
                let _ = self.connection.close().await;
                let _ = reply.send(());
                return;
            }
        }
        let _ = self.connection.close().await;
    }

    /// Carries out writes in the order they were sent, submissions group-committed between
    /// the other writes. Returns the reply of a shutdown if one was among them.
    async fn process(&mut self, commands: Vec<WriteCommand>) -> Option<oneshot::Sender<()>> {
        let mut shutdown = None;
        let mut batch = Batch::default();
        for command in commands {
            match command {
                WriteCommand::Submit { submission, reply } => batch.submissions.push((submission, reply)),
                WriteCommand::Deliveries { records, reply } => batch.deliveries.push((records, reply)),
                WriteCommand::Claim { claim, reply } => batch.claims.push((claim, reply)),
                WriteCommand::Resend { request, reply } => batch.resends.push((request, reply)),
                WriteCommand::Shutdown { reply } => shutdown = Some(reply),
                other => {
                    // Keep the order of writes: commit the batch received before it.
                    self.commit(std::mem::take(&mut batch)).await;
                    self.handle_other(other).await;
                }
            }
        }
        self.commit(batch).await;
        shutdown
    }

    /// Handles a write that is neither a submission nor a shutdown.
    async fn handle_other(&mut self, command: WriteCommand) {
        match command {
            WriteCommand::Submit { .. }
            | WriteCommand::Deliveries { .. }
            | WriteCommand::Claim { .. }
            | WriteCommand::Resend { .. }
            | WriteCommand::Shutdown { .. } => {}
            WriteCommand::SaveJob { job, reply } => {
                let _ = reply.send(save_job(&mut self.connection, &job).await);
            }
            WriteCommand::Release { owner, now, reply } => {
                let result = sqlx::query(
                    "UPDATE transfers SET due_at = ?, lease_owner = NULL WHERE state = 'pending' AND lease_owner = ?",
                )
                .bind(now)
                .bind(&owner)
                .execute(&mut self.connection)
                .await
                .map(|done| done.rows_affected())
                .map_err(unavailable);
                let _ = reply.send(result);
            }
            WriteCommand::Config { change, reply } => {
                let _ = reply.send(self.change_config(change).await);
            }
            WriteCommand::CreateToken { token, replace, reply } => {
                let _ = reply.send(self.create_token(token, replace).await);
            }
            WriteCommand::DeleteToken { token_id, reply } => {
                let result = sqlx::query("DELETE FROM tokens WHERE id = ?")
                    .bind(&token_id)
                    .execute(&mut self.connection)
                    .await
                    .map(|done| done.rows_affected() > 0)
                    .map_err(unavailable);
                let _ = reply.send(result);
            }
        }
    }

    async fn commit(&mut self, batch: Batch) {
        if batch.len() == 0 {
            return;
        }
        let submissions: Vec<&Submission> =
            batch.submissions.iter().map(|(submission, _)| submission.as_ref()).collect();
        let records: Vec<&DeliveryRecord> = batch.deliveries.iter().flat_map(|(records, _)| records.iter()).collect();
        let claims: Vec<&DeliveryClaim> = batch.claims.iter().map(|(claim, _)| claim).collect();
        let resends: Vec<&ResendRequest> = batch.resends.iter().map(|(request, _)| request).collect();
        let refs = BatchRefs { submissions: &submissions, records: &records, claims: &claims, resends: &resends };
        let result = self.commit_batch(refs).await;
        match result {
            Ok(answer) => {
                for ((_, reply), outcome) in batch.submissions.into_iter().zip(answer.outcomes) {
                    let _ = reply.send(Ok(outcome));
                }
                for (_, reply) in batch.deliveries {
                    let _ = reply.send(Ok(()));
                }
                for ((_, reply), rows) in batch.claims.into_iter().zip(answer.claimed) {
                    let _ = reply.send(Ok(rows));
                }
                for ((_, reply), resent) in batch.resends.into_iter().zip(answer.resent) {
                    let _ = reply.send(Ok(resent));
                }
            }
            Err(error) if batch.len() > 1 || batch.deliveries.iter().any(|(records, _)| records.len() > 1) => {
                // One bad write must not fail the others: retry each on its own.
                tracing::warn!(%error, count = batch.len(), "group commit failed; committing one by one");
                for (submission, reply) in batch.submissions {
                    let result = self
                        .commit_batch(BatchRefs { submissions: &[submission.as_ref()], ..BatchRefs::default() })
                        .await;
                    let _ = reply.send(result.map(|mut answer| answer.outcomes.remove(0)));
                }
                for (records, reply) in batch.deliveries {
                    let _ = reply.send(self.commit_records(&records).await);
                }
                for (claim, reply) in batch.claims {
                    let result = self.commit_batch(BatchRefs { claims: &[&claim], ..BatchRefs::default() }).await;
                    let _ = reply.send(result.map(|mut answer| answer.claimed.remove(0)));
                }
                for (request, reply) in batch.resends {
                    let result = self.commit_batch(BatchRefs { resends: &[&request], ..BatchRefs::default() }).await;
                    let _ = reply.send(result.map(|mut answer| answer.resent.remove(0)));
                }
            }
            Err(error) => {
                tracing::error!(%error, "commit failed");

                let error = || StoreError::Unavailable(error.to_string());
                for (_, reply) in batch.submissions {
                    let _ = reply.send(Err(error()));
                }
                for (_, reply) in batch.deliveries {
                    let _ = reply.send(Err(error()));
                }
                for (_, reply) in batch.claims {
                    let _ = reply.send(Err(error()));
                }
                for (_, reply) in batch.resends {
                    let _ = reply.send(Err(error()));
                }
            }
        }
    }

    /// Commits delivery records together, or, when that fails, each on its own: one bad record
    /// must not cost the others their outcome. Fails when any record could not be written (its
    /// lease runs out and it is delivered again).
    async fn commit_records(&mut self, records: &[DeliveryRecord]) -> StoreResult<()> {
        let all: Vec<&DeliveryRecord> = records.iter().collect();
        let together = self.commit_batch(BatchRefs { records: &all, ..BatchRefs::default() }).await.map(|_| ());
        if together.is_ok() || records.len() == 1 {
            return together;
        }
        let mut outcome = Ok(());
        for record in records {
            let alone = self.commit_batch(BatchRefs { records: &[record], ..BatchRefs::default() }).await;
            if let Err(error) = alone {
                tracing::error!(%error, "recording a delivery failed");
                outcome = Err(error);
            }
        }
        outcome
    }

    /// Commits a batch in one transaction; on any error nothing of it is written.
    async fn commit_batch(&mut self, refs: BatchRefs<'_>) -> StoreResult<BatchAnswer> {
        let start_head = self.head;
        let result = self.try_commit_batch(refs).await;
        if result.is_err() {
            self.head = start_head;
        }
        result
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
        let rows = event_rows(&accepted, &snapshot_bases, records);
        let hashes = link_events(&mut self.head, &rows);
        if !accepted.is_empty() {
            insert_snapshots(&mut transaction, &accepted, &snapshot_bases).await?;
            insert_leads(&mut transaction, &accepted, &snapshot_bases).await?;
            insert_transfers(&mut transaction, &accepted).await?;
            insert_duplicate_keys(&mut transaction, &accepted).await?;
            insert_idempotency(&mut transaction, &accepted).await?;
        }
        if !rows.is_empty() {
            insert_events(&mut transaction, &rows, &hashes).await?;
            sqlx::query("INSERT INTO chain_head (id, seq, hash) VALUES (1, ?, ?) ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash")
                .bind(self.head.seq)
                .bind(&self.head.hash[..])
                .execute(&mut *transaction)
                .await
                .map_err(unavailable)?;
        }
        update_transfers(&mut transaction, records).await?;
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

impl Writer {
    async fn change_config(&mut self, change: ConfigChange) -> Result<Config, ConfigWriteError> {
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

async fn load_head(connection: &mut SqliteConnection) -> StoreResult<ChainHead> {
    let row = sqlx::query("SELECT seq, hash FROM chain_head WHERE id = 1")
        .fetch_optional(&mut *connection)
        .await
        .map_err(unavailable)?;
    let snapshot_id: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(id), 0) FROM snapshots")
        .fetch_one(&mut *connection)
        .await
        .map_err(unavailable)?;
    let Some(row) = row else { return Ok(ChainHead { seq: 0, hash: GENESIS, snapshot_id }) };
    let seq: i64 = row.try_get("seq").map_err(unavailable)?;
    let hash: Vec<u8> = row.try_get("hash").map_err(unavailable)?;
    let hash: Hash = hash.try_into().map_err(|_| StoreError::Corrupt("chain head hash is not 32 bytes".into()))?;
    Ok(ChainHead { seq, hash, snapshot_id })
}

/// Rows per statement for a table with `columns` bound values per row.
fn rows_per_statement(columns: usize) -> usize {
    (MAX_BOUND_VALUES / columns).max(1)
}
