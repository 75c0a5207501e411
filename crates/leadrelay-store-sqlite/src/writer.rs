//! The single writer: every write goes through one connection and one task, which takes all
//! submissions waiting at once into one transaction (group commit) and links their events
//! into the hash chain in order.

use std::collections::HashMap;

use leadrelay_domain::chain::{link, ChainHeader, Hash, GENESIS};
use leadrelay_domain::config::DuplicateMatch;
use leadrelay_domain::config::{Config, ConfigChange, ObjectWrite};
use leadrelay_domain::pipeline::{DuplicateFound, DuplicateQuery};
use leadrelay_domain::time::now_millis;
use leadrelay_store::{
    plan_resend, ClaimedTransfer, CommitOutcome, ConfigWriteError, DeliveryClaim, DeliveryRecord, JobRecord, NewToken,
    ResendOutcome, ResendRequest, StoreError, StoreResult, StoredAnswer, Submission, TransferState,
};
use sqlx::{Connection, QueryBuilder, Row, Sqlite, SqliteConnection};
use tokio::sync::{mpsc, oneshot};

use crate::{read, unavailable};

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

/// The end of the chain as of the last commit, and the last snapshot id handed out.
#[derive(Clone, Copy)]
struct Head {
    seq: i64,
    hash: Hash,
    snapshot_id: i64,
}

pub(crate) struct Writer {
    connection: SqliteConnection,
    head: Head,
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

/// One event row to insert, from a submission or a delivery record.
struct EventRow<'a> {
    event: &'a leadrelay_domain::event::NewEvent,
    data_json: &'a str,
    snapshot_id: i64,
    content: &'a Hash,
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
            Err(error) if batch.len() > 1 => {
                // One bad write must not fail the others: retry each on its own.
                tracing::warn!(%error, count = batch.len(), "group commit failed; committing one by one");
                for (submission, reply) in batch.submissions {
                    let result = self
                        .commit_batch(BatchRefs { submissions: &[submission.as_ref()], ..BatchRefs::default() })
                        .await;
                    let _ = reply.send(result.map(|mut answer| answer.outcomes.remove(0)));
                }
                for (records, reply) in batch.deliveries {
                    let records: Vec<&DeliveryRecord> = records.iter().collect();
                    let result = self.commit_batch(BatchRefs { records: &records, ..BatchRefs::default() }).await;
                    let _ = reply.send(result.map(|_| ()));
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
        let mut outcomes = Vec::with_capacity(batch.len());
        let mut accepted: Vec<&Submission> = Vec::with_capacity(batch.len());
        // What the database already holds for this batch's keys, read in one query per flow;
        // the submissions accepted earlier in the batch are added as they are decided.
        let mut keys = load_duplicate_keys(&mut transaction, batch).await?;
        let mut answers = load_answers(&mut transaction, batch).await?;

        for submission in batch {
            if let Some(record) = &submission.idempotency {
                if let Some(answer) = answers.get(&(record.source_id.clone(), record.key.clone())) {
                    outcomes.push(CommitOutcome::Replay(answer.clone()));
                    continue;
                }
            }
            if let Some((query, assumed)) = &submission.duplicate_check {
                let actual = earliest_duplicate(&keys, query);
                let same = actual.as_ref().map(|found| &found.lead_id) == assumed.as_ref().map(|found| &found.lead_id);
                if !same {
                    outcomes.push(CommitOutcome::DuplicateChanged(actual));
                    continue;
                }
            }
            let lead = &submission.lead.record;
            for key in &submission.duplicate_keys {
                keys.entry((lead.flow_id.clone(), key.digest.clone()))
                    .or_default()
                    .push((lead.id.as_str().to_owned(), lead.created_at));
            }
            if let Some(record) = &submission.idempotency {
                answers.insert((record.source_id.clone(), record.key.clone()), record.answer.clone());
            }
            outcomes.push(CommitOutcome::Committed);
            accepted.push(submission);
        }

        // Resends read the transfers' state in this transaction, then write like deliveries.
        let mut resent = Vec::with_capacity(resends.len());
        let mut resend_records = Vec::new();
        // A transfer asked for twice in one batch is queued once.
        let mut queued_now = std::collections::HashSet::new();
        for request in resends {
            let rows = read::resend_rows(&mut transaction, &request.transfer_ids).await?;
            let mut answers = Vec::with_capacity(request.transfer_ids.len());
            for transfer_id in &request.transfer_ids {
                if !queued_now.insert(transfer_id.as_str()) {
                    answers.push((transfer_id.clone(), ResendOutcome::AlreadyQueued));
                    continue;
                }
                match plan_resend(rows.get(transfer_id), &request.actor, request.now) {
                    Ok(record) => {
                        resend_records.push(record);
                        answers.push((transfer_id.clone(), ResendOutcome::Queued));
                    }
                    Err(outcome) => answers.push((transfer_id.clone(), outcome)),
                }
            }
            resent.push(answers);
        }
        let records: Vec<&DeliveryRecord> = records.iter().copied().chain(resend_records.iter()).collect();
        let records = records.as_slice();

        let snapshot_bases = number_snapshots(&mut self.head, &accepted);
        let mut rows: Vec<EventRow<'_>> = Vec::new();
        for (submission, base) in accepted.iter().zip(&snapshot_bases) {
            rows.extend(submission.events.iter().map(|encoded| EventRow {
                event: &encoded.event,
                data_json: &encoded.data_json,
                snapshot_id: base + encoded.snapshot as i64,
                content: &encoded.content,
            }));
        }
        for record in records {
            rows.extend(record.events.iter().map(|logged| EventRow {
                event: &logged.event,
                data_json: &logged.data_json,
                snapshot_id: logged.snapshot_id,
                content: &logged.content,
            }));
        }
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

/// Gives every event of the batch its sequence number and hash, advancing the head.
fn link_events(head: &mut Head, rows: &[EventRow<'_>]) -> Vec<(i64, Hash)> {
    let mut hashes = Vec::with_capacity(rows.len());
    for row in rows {
        let event = row.event;
        let seq = head.seq + 1;
        let header = ChainHeader {
            seq,
            id: event.id.as_str(),
            event_type: event.event_type.as_str(),
            timestamp: event.timestamp,
            lead_id: event.lead_id.as_str(),
            flow_id: &event.flow_id,
            source_id: &event.source_id,
            destination_id: event.destination_id.as_deref(),
            transfer_id: event.transfer_id.as_ref().map(|id| id.as_str()),
            status: event.status.map(|status| status.as_str()),
            outcome: event.outcome.map(|outcome| outcome.as_str()),
            reason: event.reason.as_deref(),
            duration_ms: event.duration_ms,
            integration: event.integration.as_deref(),
            response_code: event.response_code,
            price: event.price,
            attempt: event.attempt,
        };
        let hash = link(&head.hash, &header, row.content);
        head.seq = seq;
        head.hash = hash;
        hashes.push((seq, hash));
    }
    hashes
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

/// Earlier leads by `(flow_id, digest)`: each lead's id and creation time.
type KeyIndex = HashMap<(String, String), Vec<(String, i64)>>;

/// Reads the stored duplicate keys that this batch's duplicate queries could match.
async fn load_duplicate_keys(connection: &mut SqliteConnection, batch: &[&Submission]) -> StoreResult<KeyIndex> {
    let mut by_flow: HashMap<&str, (Vec<&str>, i64)> = HashMap::new();
    for (query, _) in batch.iter().filter_map(|submission| submission.duplicate_check.as_ref()) {
        let entry = by_flow.entry(query.flow_id.as_str()).or_insert((Vec::new(), query.since));
        entry.0.extend(query.keys.iter().map(|key| key.digest.as_str()));
        entry.1 = entry.1.min(query.since);
    }
    let mut index = KeyIndex::new();
    for (flow_id, (digests, since)) in by_flow {
        for chunk in digests.chunks(MAX_BOUND_VALUES - 2) {
            for (digest, lead_id, created_at) in read::duplicate_keys(&mut *connection, flow_id, chunk, since).await? {
                index.entry((flow_id.to_owned(), digest)).or_default().push((lead_id, created_at));
            }
        }
    }
    Ok(index)
}

/// Reads the stored answers of this batch's idempotency keys.
async fn load_answers(
    connection: &mut SqliteConnection,
    batch: &[&Submission],
) -> StoreResult<HashMap<(String, String), StoredAnswer>> {
    let keys: Vec<(&str, &str)> = batch
        .iter()
        .filter_map(|submission| submission.idempotency.as_ref())
        .map(|record| (record.source_id.as_str(), record.key.as_str()))
        .collect();
    let mut answers = HashMap::new();
    for chunk in keys.chunks(MAX_BOUND_VALUES / 2) {
        answers.extend(read::idempotent_answers(&mut *connection, chunk).await?);
    }
    Ok(answers)
}

/// The earliest lead in the window that matches the query (any key, or all of them), the same
/// answer as [`read::find_duplicate`] gives from the database alone.
fn earliest_duplicate(index: &KeyIndex, query: &DuplicateQuery) -> Option<DuplicateFound> {
    let mut matches: HashMap<&str, (usize, i64)> = HashMap::new();
    for key in &query.keys {
        let Some(leads) = index.get(&(query.flow_id.clone(), key.digest.clone())) else { continue };
        let mut counted = std::collections::HashSet::new();
        for (lead_id, created_at) in leads.iter().filter(|(_, created_at)| *created_at >= query.since) {
            let entry = matches.entry(lead_id.as_str()).or_insert((0, *created_at));
            if counted.insert(lead_id.as_str()) {
                entry.0 += 1;
            }
            entry.1 = entry.1.min(*created_at);
        }
    }
    let needed = match query.match_mode {
        DuplicateMatch::Any => 1,
        DuplicateMatch::All => query.keys.len(),
    };
    matches
        .into_iter()
        .filter(|(_, (count, _))| *count >= needed)
        .min_by(|(a_id, (_, a_time)), (b_id, (_, b_time))| (a_time, a_id).cmp(&(b_time, b_id)))
        .map(|(lead_id, (_, created_at))| DuplicateFound {
            lead_id: leadrelay_domain::ids::LeadId::from_stored(lead_id.to_owned()),
            created_at,
        })
}

async fn load_head(connection: &mut SqliteConnection) -> StoreResult<Head> {
    let row = sqlx::query("SELECT seq, hash FROM chain_head WHERE id = 1")
        .fetch_optional(&mut *connection)
        .await
        .map_err(unavailable)?;
    let snapshot_id: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(id), 0) FROM snapshots")
        .fetch_one(&mut *connection)
        .await
        .map_err(unavailable)?;
    let Some(row) = row else { return Ok(Head { seq: 0, hash: GENESIS, snapshot_id }) };
    let seq: i64 = row.try_get("seq").map_err(unavailable)?;
    let hash: Vec<u8> = row.try_get("hash").map_err(unavailable)?;
    let hash: Hash = hash.try_into().map_err(|_| StoreError::Corrupt("chain head hash is not 32 bytes".into()))?;
    Ok(Head { seq, hash, snapshot_id })
}

/// Rows per statement for a table with `columns` bound values per row.
fn rows_per_statement(columns: usize) -> usize {
    (MAX_BOUND_VALUES / columns).max(1)
}

/// Hands out snapshot ids: the id of a submission's first snapshot, for each submission.
fn number_snapshots(head: &mut Head, accepted: &[&Submission]) -> Vec<i64> {
    accepted
        .iter()
        .map(|submission| {
            let base = head.snapshot_id + 1;
            head.snapshot_id += submission.snapshots.len() as i64;
            base
        })
        .collect()
}

async fn insert_snapshots(
    transaction: &mut SqliteConnection,
    accepted: &[&Submission],
    bases: &[i64],
) -> StoreResult<()> {
    let snapshots: Vec<_> = accepted
        .iter()
        .zip(bases)
        .flat_map(|(submission, base)| {
            let lead_id = submission.lead.record.id.as_str();
            submission
                .snapshots
                .iter()
                .enumerate()
                .map(move |(index, snapshot)| (base + index as i64, lead_id, snapshot))
        })
        .collect();
    for chunk in snapshots.chunks(rows_per_statement(4)) {
        let mut builder: QueryBuilder<Sqlite> = QueryBuilder::new("INSERT INTO snapshots (id, lead_id, body, digest) ");
        builder.push_values(chunk, |mut row, (id, lead_id, snapshot)| {
            row.push_bind(*id).push_bind(*lead_id).push_bind(snapshot.json.as_str()).push_bind(&snapshot.digest[..]);
        });
        builder.build().persistent(false).execute(&mut *transaction).await.map_err(unavailable)?;
    }
    Ok(())
}

async fn insert_leads(transaction: &mut SqliteConnection, accepted: &[&Submission], bases: &[i64]) -> StoreResult<()> {
    let rows: Vec<_> = accepted.iter().zip(bases).collect();
    for chunk in rows.chunks(rows_per_statement(11)) {
        let mut builder: QueryBuilder<Sqlite> = QueryBuilder::new(
            "INSERT INTO leads (id, flow_id, source_id, created_at, updated_at, status, outcome, reason, duplicate_of, cost, snapshot_id) ",
        );
        builder.push_values(chunk, |mut row, (submission, base)| {
            let lead = &submission.lead.record;
            row.push_bind(lead.id.as_str())
                .push_bind(lead.flow_id.as_str())
                .push_bind(lead.source_id.as_str())
                .push_bind(lead.created_at)
                .push_bind(lead.updated_at)
                .push_bind(lead.status.as_str())
                .push_bind(lead.outcome.map(|outcome| outcome.as_str()))
                .push_bind(lead.reason.as_deref())
                .push_bind(lead.duplicate_of.as_ref().map(|id| id.as_str()))
                .push_bind(lead.cost)
                .push_bind(**base + submission.lead.snapshot as i64);
        });
        builder.build().persistent(false).execute(&mut *transaction).await.map_err(unavailable)?;
    }
    Ok(())
}

async fn insert_events(
    transaction: &mut SqliteConnection,
    rows: &[EventRow<'_>],
    hashes: &[(i64, Hash)],
) -> StoreResult<()> {
    let events: Vec<_> = rows.iter().zip(hashes).collect();
    for chunk in events.chunks(rows_per_statement(21)) {
        let mut builder: QueryBuilder<Sqlite> = QueryBuilder::new(
            "INSERT INTO events (seq, id, type, ts, lead_id, flow_id, source_id, destination_id, transfer_id, status, outcome, reason, duration_ms, integration, response_code, price, attempt, data, snapshot_id, content_digest, hash) ",
        );
        builder.push_values(chunk, |mut row, (event_row, (seq, hash))| {
            let event = event_row.event;
            row.push_bind(*seq)
                .push_bind(event.id.as_str())
                .push_bind(event.event_type.as_str())
                .push_bind(event.timestamp)
                .push_bind(event.lead_id.as_str())
                .push_bind(event.flow_id.as_str())
                .push_bind(event.source_id.as_str())
                .push_bind(event.destination_id.as_deref())
                .push_bind(event.transfer_id.as_ref().map(|id| id.as_str()))
                .push_bind(event.status.map(|status| status.as_str()))
                .push_bind(event.outcome.map(|outcome| outcome.as_str()))
                .push_bind(event.reason.as_deref())
                .push_bind(event.duration_ms)
                .push_bind(event.integration.as_deref())
                .push_bind(event.response_code)
                .push_bind(event.price)
                .push_bind(event.attempt)
                .push_bind(event_row.data_json)
                .push_bind(event_row.snapshot_id)
                .push_bind(&event_row.content[..])
                .push_bind(&hash[..]);
        });
        builder.build().persistent(false).execute(&mut *transaction).await.map_err(unavailable)?;
    }
    Ok(())
}

async fn insert_transfers(transaction: &mut SqliteConnection, accepted: &[&Submission]) -> StoreResult<()> {
    let transfers: Vec<_> = accepted
        .iter()
        .flat_map(|submission| {
            submission.transfers.iter().map(|transfer| (transfer, submission.realtime_lease.as_ref()))
        })
        .collect();
    for chunk in transfers.chunks(rows_per_statement(12)) {
        let mut builder: QueryBuilder<Sqlite> = QueryBuilder::new(
            "INSERT INTO transfers (id, lead_id, flow_id, source_id, destination_id, status, description, created_at, updated_at, state, due_at, lease_owner) ",
        );
        builder.push_values(chunk, |mut row, (transfer, lease)| {
            // Realtime transfers are held by the node that delivers them while the submitter
            // waits; background ones are due at once.
            let (state, due_at, owner) = match (transfer.queued, transfer.realtime, lease) {
                (false, _, _) => ("done", None, None),
                (true, true, Some(lease)) => ("pending", Some(lease.until), Some(lease.owner.as_str())),
                (true, _, _) => ("pending", Some(transfer.created_at), None),
            };
            row.push_bind(transfer.id.as_str())
                .push_bind(transfer.lead_id.as_str())
                .push_bind(transfer.flow_id.as_str())
                .push_bind(transfer.source_id.as_str())
                .push_bind(transfer.destination_id.as_deref())
                .push_bind(transfer.status.as_str())
                .push_bind(transfer.description.as_str())
                .push_bind(transfer.created_at)
                .push_bind(transfer.created_at)
                .push_bind(state)
                .push_bind(due_at)
                .push_bind(owner);
        });
        builder.build().persistent(false).execute(&mut *transaction).await.map_err(unavailable)?;
    }
    Ok(())
}

/// Sets the states delivery steps reached; a step whose lease was taken over by another node
/// leaves the state to that node.
async fn update_transfers(transaction: &mut SqliteConnection, records: &[&DeliveryRecord]) -> StoreResult<()> {
    let updates: Vec<_> = records.iter().filter_map(|record| record.update.as_ref()).collect();
    for chunk in updates.chunks(rows_per_statement(9)) {
        let mut builder: QueryBuilder<Sqlite> = QueryBuilder::new(
            "WITH v (id, owner, status, description, state, due_at, attempts, updated_at, retry_base) AS (",
        );
        builder.push_values(chunk, |mut row, update| {
            let due_at = match update.state {
                TransferState::Pending { due_at } => Some(due_at),
                _ => None,
            };
            row.push_bind(update.transfer_id.as_str())
                .push_bind(update.owner.as_deref())
                .push_bind(update.status.as_str())
                .push_bind(update.description.as_str())
                .push_bind(update.state.as_str())
                .push_bind(due_at)
                .push_bind(i64::from(update.attempts))
                .push_bind(update.updated_at)
                .push_bind(update.retry_base.map(i64::from));
        });
        builder.push(
            ") UPDATE transfers SET status = v.status, description = v.description, state = v.state, due_at = v.due_at, \
             lease_owner = NULL, attempts = v.attempts, updated_at = v.updated_at, \
             retry_base = COALESCE(v.retry_base, transfers.retry_base) \
             FROM v WHERE transfers.id = v.id AND (v.owner IS NULL OR transfers.lease_owner = v.owner)",
        );
        builder.build().persistent(false).execute(&mut *transaction).await.map_err(unavailable)?;
    }
    Ok(())
}

async fn count_caps(transaction: &mut SqliteConnection, records: &[&DeliveryRecord]) -> StoreResult<()> {
    let mut counts: HashMap<&leadrelay_domain::caps::CapWindowKey, i64> = HashMap::new();
    for key in records.iter().flat_map(|record| record.cap_counts.iter()) {
        *counts.entry(key).or_default() += 1;
    }
    let counts: Vec<_> = counts.into_iter().collect();
    for chunk in counts.chunks(rows_per_statement(4)) {
        let mut builder: QueryBuilder<Sqlite> =
            QueryBuilder::new("INSERT INTO cap_counters (destination_id, cap_key, window_start, count) ");
        builder.push_values(chunk, |mut row, (key, count)| {
            row.push_bind(key.destination_id.as_str())
                .push_bind(key.cap_key.as_str())
                .push_bind(key.window_start)
                .push_bind(*count);
        });
        builder.push(
            " ON CONFLICT (destination_id, cap_key, window_start) DO UPDATE SET count = cap_counters.count + excluded.count",
        );
        builder.build().persistent(false).execute(&mut *transaction).await.map_err(unavailable)?;
    }
    Ok(())
}

async fn insert_attempts(transaction: &mut SqliteConnection, records: &[&DeliveryRecord]) -> StoreResult<()> {
    let attempts: Vec<_> = records.iter().filter_map(|record| record.attempt.as_ref()).collect();
    for chunk in attempts.chunks(rows_per_statement(7)) {
        let mut builder: QueryBuilder<Sqlite> = QueryBuilder::new(
            "INSERT OR IGNORE INTO attempts (transfer_id, attempt, started_at, duration_ms, outcome, response_code, event_id) ",
        );
        builder.push_values(chunk, |mut row, attempt| {
            row.push_bind(attempt.transfer_id.as_str())
                .push_bind(i64::from(attempt.attempt))
                .push_bind(attempt.started_at)
                .push_bind(attempt.duration_ms)
                .push_bind(attempt.outcome)
                .push_bind(attempt.response_code)
                .push_bind(attempt.event_id.as_str());
        });
        builder.build().persistent(false).execute(&mut *transaction).await.map_err(unavailable)?;
    }
    Ok(())
}

/// Leases the due transfers of one destination to the claiming node: their `due_at` moves to
/// the lease's end, when they are due again unless the node recorded an outcome.
async fn claim_transfers(transaction: &mut SqliteConnection, claim: &DeliveryClaim) -> StoreResult<Vec<ClaimRow>> {
    let rows = sqlx::query(
        "UPDATE transfers SET due_at = ?1, lease_owner = ?2 WHERE seq IN (\
            SELECT seq FROM transfers WHERE state = 'pending' AND destination_id = ?3 AND due_at <= ?4 \
            ORDER BY due_at, seq LIMIT ?5) \
         RETURNING id, lead_id, flow_id, source_id, destination_id, attempts, retry_base, created_at",
    )
    .bind(claim.now + claim.lease_ms)
    .bind(&claim.owner)
    .bind(&claim.destination_id)
    .bind(claim.now)
    .bind(i64::try_from(claim.limit).unwrap_or(i64::MAX))
    .fetch_all(&mut *transaction)
    .await
    .map_err(unavailable)?;
    rows.iter()
        .map(|row| {
            Ok(ClaimRow {
                transfer_id: row.try_get(0).map_err(unavailable)?,
                lead_id: row.try_get(1).map_err(unavailable)?,
                flow_id: row.try_get(2).map_err(unavailable)?,
                source_id: row.try_get(3).map_err(unavailable)?,
                destination_id: row.try_get(4).map_err(unavailable)?,
                attempts: row.try_get(5).map_err(unavailable)?,
                retry_base: row.try_get(6).map_err(unavailable)?,
                created_at: row.try_get(7).map_err(unavailable)?,
            })
        })
        .collect()
}

async fn insert_duplicate_keys(transaction: &mut SqliteConnection, accepted: &[&Submission]) -> StoreResult<()> {
    let keys: Vec<_> = accepted
        .iter()
        .flat_map(|submission| submission.duplicate_keys.iter().map(move |key| (&submission.lead.record, key)))
        .collect();
    for chunk in keys.chunks(rows_per_statement(4)) {
        let mut builder: QueryBuilder<Sqlite> =
            QueryBuilder::new("INSERT INTO duplicate_keys (flow_id, digest, lead_id, created_at) ");
        builder.push_values(chunk, |mut row, (lead, key)| {
            row.push_bind(lead.flow_id.as_str())
                .push_bind(key.digest.as_str())
                .push_bind(lead.id.as_str())
                .push_bind(lead.created_at);
        });
        builder.build().persistent(false).execute(&mut *transaction).await.map_err(unavailable)?;
    }
    Ok(())
}

async fn insert_idempotency(transaction: &mut SqliteConnection, accepted: &[&Submission]) -> StoreResult<()> {
    let records: Vec<_> = accepted.iter().filter_map(|submission| submission.idempotency.as_ref()).collect();
    let now = now_millis();
    for chunk in records.chunks(rows_per_statement(5)) {
        let mut builder: QueryBuilder<Sqlite> =
            QueryBuilder::new("INSERT INTO idempotency_keys (source_id, key, http_status, answer, created_at) ");
        builder.push_values(chunk, |mut row, record| {
            row.push_bind(record.source_id.as_str())
                .push_bind(record.key.as_str())
                .push_bind(i64::from(record.answer.http_status))
                .push_bind(record.answer.body_json.as_str())
                .push_bind(now);
        });
        builder.build().persistent(false).execute(&mut *transaction).await.map_err(unavailable)?;
    }
    Ok(())
}

async fn save_job(connection: &mut SqliteConnection, job: &JobRecord) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO jobs (id, kind, status, params, cursor, matched, queued, skipped, error, created_at, updated_at) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
         ON CONFLICT (id) DO UPDATE SET status = excluded.status, cursor = excluded.cursor, matched = excluded.matched, \
         queued = excluded.queued, skipped = excluded.skipped, error = excluded.error, updated_at = excluded.updated_at",
    )
    .bind(&job.id)
    .bind(&job.kind)
    .bind(&job.status)
    .bind(job.params.to_string())
    .bind(job.cursor.as_deref())
    .bind(i64::try_from(job.matched).unwrap_or(i64::MAX))
    .bind(i64::try_from(job.queued).unwrap_or(i64::MAX))
    .bind(i64::try_from(job.skipped).unwrap_or(i64::MAX))
    .bind(job.error.as_deref())
    .bind(job.created_at)
    .bind(job.updated_at)
    .execute(&mut *connection)
    .await
    .map_err(unavailable)?;
    Ok(())
}
