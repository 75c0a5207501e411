//! The single writer of a node, the same on every engine: one task takes every write waiting
//! at once into one transaction (group commit), keeps the order of writes that cannot share
//! one, and, when a batch fails, retries each write on its own so that one bad write never
//! fails the others. An engine supplies the transactions ([`BatchWriter`]).

use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use leadrelay_domain::config::{Config, ConfigChange};
use tokio::sync::{mpsc, oneshot};

use crate::{
    ClaimedTransfer, CommitOutcome, ConfigWriteError, DeliveryClaim, DeliveryRecord, JobClaim, JobRecord, NewToken,
    ResendOutcome, ResendRequest, Role, StoreError, StoreResult, StoredAnswer, Submission,
};

/// The longest a commit waits for more writes to join it, and only under load.
const COMMIT_DELAY: std::time::Duration = std::time::Duration::from_micros(1000);

type Reply = oneshot::Sender<StoreResult<CommitOutcome>>;
type DeliveryReply = oneshot::Sender<StoreResult<()>>;
type ClaimReply = oneshot::Sender<StoreResult<Vec<ClaimedTransfer>>>;
type ResendReply = oneshot::Sender<StoreResult<Vec<(String, ResendOutcome)>>>;

/// A write sent to the writer task, with where its answer goes.
pub enum WriteCommand {
    Submit { submission: Box<Submission>, reply: Reply },
    Deliveries { records: Vec<DeliveryRecord>, reply: DeliveryReply },
    Claim { claim: DeliveryClaim, reply: ClaimReply },
    Release { owner: String, now: i64, reply: oneshot::Sender<StoreResult<u64>> },
    Resend { request: ResendRequest, reply: ResendReply },
    SaveJob { job: Box<JobRecord>, reply: oneshot::Sender<StoreResult<()>> },
    ClaimJobs { claim: JobClaim, reply: oneshot::Sender<StoreResult<Vec<JobRecord>>> },
    Config { change: ConfigChange, reply: oneshot::Sender<Result<Config, ConfigWriteError>> },
    CreateToken { token: NewToken, replace: bool, reply: oneshot::Sender<StoreResult<()>> },
    DeleteToken { token_id: String, reply: oneshot::Sender<StoreResult<bool>> },
    UpdateToken { token_id: String, name: String, role: Option<Role>, reply: oneshot::Sender<StoreResult<bool>> },
    ReplaceAnswer { source_id: String, key: String, answer: StoredAnswer, reply: oneshot::Sender<StoreResult<()>> },
    Shutdown { reply: oneshot::Sender<()> },
}

/// The writes of one batch transaction, borrowed: submissions, delivery records, claims and
/// resends.
#[derive(Clone, Copy, Default)]
pub struct BatchRefs<'a> {
    pub submissions: &'a [&'a Submission],
    pub records: &'a [&'a DeliveryRecord],
    pub claims: &'a [&'a DeliveryClaim],
    pub resends: &'a [&'a ResendRequest],
}

/// What one batch transaction answers: an outcome per submission, rows per claim, outcomes
/// per resend request.
#[derive(Default)]
pub struct BatchAnswer {
    pub outcomes: Vec<CommitOutcome>,
    pub claimed: Vec<Vec<ClaimedTransfer>>,
    pub resent: Vec<Vec<(String, ResendOutcome)>>,
}

/// An engine's write transactions.
#[async_trait]
pub trait BatchWriter: Send + Sized + 'static {
    /// Commits a batch in one transaction; on any error nothing of it is written.
    async fn commit_batch(&mut self, refs: BatchRefs<'_>) -> StoreResult<BatchAnswer>;
    async fn change_config(&mut self, change: ConfigChange) -> Result<Config, ConfigWriteError>;
    async fn create_token(&mut self, token: NewToken, replace: bool) -> StoreResult<()>;
    async fn delete_token(&mut self, token_id: &str) -> StoreResult<bool>;
    async fn update_token(&mut self, token_id: &str, name: &str, role: Option<Role>) -> StoreResult<bool>;
    async fn replace_answer(&mut self, source_id: &str, key: &str, answer: &StoredAnswer) -> StoreResult<()>;
    /// Gives up `owner`'s leases: its pending transfers are due at `now`.
    async fn release(&mut self, owner: &str, now: i64) -> StoreResult<u64>;
    /// Saves a job; refused (`Conflict`) when another node holds it.
    async fn save_job(&mut self, job: &JobRecord) -> StoreResult<()>;
    async fn claim_jobs(&mut self, claim: &JobClaim) -> StoreResult<Vec<JobRecord>>;
    /// Ends the writer's connection once every write is done.
    async fn close(self);
}

/// How the writer's last batch ended, for `/readyz`: a node whose writes fail (a full disk)
/// is not ready, and is again once a batch commits (the dispatcher claims every second).
#[derive(Clone, Default)]
pub struct WriterHealth(Arc<Mutex<Option<String>>>);

impl WriterHealth {
    /// Fails with the last batch's error when that batch was not written.
    pub fn check(&self) -> StoreResult<()> {
        match &*self.0.lock().unwrap_or_else(PoisonError::into_inner) {
            Some(error) => Err(StoreError::Unavailable(format!("the last write failed: {error}"))),
            None => Ok(()),
        }
    }

    fn record<T>(&self, result: &StoreResult<T>) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = result.as_ref().err().map(ToString::to_string);
    }
}

/// Sends a write to the writer task and waits for its answer.
pub async fn send<T>(
    writes: &mpsc::Sender<WriteCommand>,
    make: impl FnOnce(oneshot::Sender<T>) -> WriteCommand,
) -> StoreResult<T> {
    let (reply, answer) = oneshot::channel();
    writes.send(make(reply)).await.map_err(|_| StoreError::Unavailable("the writer has stopped".into()))?;
    answer.await.map_err(|_| StoreError::Unavailable("the writer stopped before answering".into()))
}

/// Writes that share one transaction.
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

/// The writer task: runs until every sender is gone or a shutdown is sent.
pub async fn run<W: BatchWriter>(
    mut writer: W,
    mut commands: mpsc::Receiver<WriteCommand>,
    max_batch: usize,
    health: WriterHealth,
) {
    let max_batch = max_batch.max(1);
    let freer = Freer::start();
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
        while pending.len() < max_batch {
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
        let shutdown = process(&mut writer, std::mem::take(&mut pending), &health, &freer).await;
        if let Some(reply) = shutdown {
            // Take no more writes, but finish every one already sent.
            commands.close();
            let mut rest = Vec::new();
            while let Ok(command) = commands.try_recv() {
                rest.push(command);
            }
            process(&mut writer, rest, &health, &freer).await;
            writer.close().await;
            let _ = reply.send(());
            return;
        }
    }
    writer.close().await;
}

/// Carries out writes in the order they were sent, batchable writes group-committed between
/// the others. Returns the reply of a shutdown if one was among them.
async fn process<W: BatchWriter>(
    writer: &mut W,
    commands: Vec<WriteCommand>,
    health: &WriterHealth,
    freer: &Freer,
) -> Option<oneshot::Sender<()>> {
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
                commit(writer, std::mem::take(&mut batch), health, freer).await;
                handle_other(writer, other).await;
            }
        }
    }
    commit(writer, batch, health, freer).await;
    shutdown
}

/// Handles a write that does not join a batch.
async fn handle_other<W: BatchWriter>(writer: &mut W, command: WriteCommand) {
    match command {
        WriteCommand::Submit { .. }
        | WriteCommand::Deliveries { .. }
        | WriteCommand::Claim { .. }
        | WriteCommand::Resend { .. }
        | WriteCommand::Shutdown { .. } => {}
        WriteCommand::SaveJob { job, reply } => {
            let _ = reply.send(writer.save_job(&job).await);
        }
        WriteCommand::ClaimJobs { claim, reply } => {
            let _ = reply.send(writer.claim_jobs(&claim).await);
        }
        WriteCommand::Release { owner, now, reply } => {
            let _ = reply.send(writer.release(&owner, now).await);
        }
        WriteCommand::Config { change, reply } => {
            let _ = reply.send(writer.change_config(change).await);
        }
        WriteCommand::CreateToken { token, replace, reply } => {
            let _ = reply.send(writer.create_token(token, replace).await);
        }
        WriteCommand::DeleteToken { token_id, reply } => {
            let _ = reply.send(writer.delete_token(&token_id).await);
        }
        WriteCommand::UpdateToken { token_id, name, role, reply } => {
            let _ = reply.send(writer.update_token(&token_id, &name, role).await);
        }
        WriteCommand::ReplaceAnswer { source_id, key, answer, reply } => {
            let _ = reply.send(writer.replace_answer(&source_id, &key, &answer).await);
        }
    }
}

async fn commit<W: BatchWriter>(writer: &mut W, batch: Batch, health: &WriterHealth, freer: &Freer) {
    if batch.len() == 0 {
        return;
    }
    let submissions: Vec<&Submission> = batch.submissions.iter().map(|(submission, _)| submission.as_ref()).collect();
    let records: Vec<&DeliveryRecord> = batch.deliveries.iter().flat_map(|(records, _)| records.iter()).collect();
    let claims: Vec<&DeliveryClaim> = batch.claims.iter().map(|(claim, _)| claim).collect();
    let resends: Vec<&ResendRequest> = batch.resends.iter().map(|(request, _)| request).collect();
    let refs = BatchRefs { submissions: &submissions, records: &records, claims: &claims, resends: &resends };
    let result = writer.commit_batch(refs).await;
    health.record(&result);
    match result {
        Ok(answer) => {
            let (submissions, replies): (Vec<_>, Vec<_>) = batch.submissions.into_iter().unzip();
            for (reply, outcome) in replies.into_iter().zip(answer.outcomes) {
                let _ = reply.send(Ok(outcome));
            }
            let (records, replies): (Vec<_>, Vec<_>) = batch.deliveries.into_iter().unzip();
            for reply in replies {
                let _ = reply.send(Ok(()));
            }
            freer.free((submissions, records));
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
                let result = writer
                    .commit_batch(BatchRefs { submissions: &[submission.as_ref()], ..BatchRefs::default() })
                    .await;
                health.record(&result);
                let _ = reply.send(result.map(|mut answer| answer.outcomes.remove(0)));
            }
            for (records, reply) in batch.deliveries {
                let _ = reply.send(commit_records(writer, &records).await);
            }
            for (claim, reply) in batch.claims {
                let result = writer.commit_batch(BatchRefs { claims: &[&claim], ..BatchRefs::default() }).await;
                let _ = reply.send(result.map(|mut answer| answer.claimed.remove(0)));
            }
            for (request, reply) in batch.resends {
                let result = writer.commit_batch(BatchRefs { resends: &[&request], ..BatchRefs::default() }).await;
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

/// What a committed batch leaves behind: its submissions and delivery records.
type Garbage = (Vec<Box<Submission>>, Vec<Vec<DeliveryRecord>>);

/// Batches committed but not yet freed, at most: past them, the writer frees its own.
const FREE_QUEUE: usize = 8;

/// Frees committed batches on a thread of its own: every write waits for the writer, and
/// freeing a batch's leads and records there took about a twentieth of its time (and
/// doubled the ingest benchmark's p99). The queue is bounded and nothing waits on it: when it
/// is full, or the thread could not be started, the writer frees the batch itself.
struct Freer(Option<std::sync::mpsc::SyncSender<Garbage>>);

impl Freer {
    fn start() -> Self {
        let (sender, garbage) = std::sync::mpsc::sync_channel::<Garbage>(FREE_QUEUE);
        let started =
            std::thread::Builder::new().name("leadrelay-free".into()).spawn(move || garbage.into_iter().for_each(drop));
        Self(started.ok().map(|_| sender))
    }

    fn free(&self, garbage: Garbage) {
        if let Some(sender) = &self.0 {
            // A full queue hands the batch back inside the error, dropped here.
            let _ = sender.try_send(garbage);
        }
    }
}

/// Commits delivery records together, or, when that fails, each on its own: one bad record
/// must not cost the others their outcome. Fails when any record could not be written (its
/// lease runs out and it is delivered again).
async fn commit_records<W: BatchWriter>(writer: &mut W, records: &[DeliveryRecord]) -> StoreResult<()> {
    let all: Vec<&DeliveryRecord> = records.iter().collect();
    let together = writer.commit_batch(BatchRefs { records: &all, ..BatchRefs::default() }).await.map(|_| ());
    if together.is_ok() || records.len() == 1 {
        return together;
    }
    let mut outcome = Ok(());
    for record in records {
        let alone = writer.commit_batch(BatchRefs { records: &[record], ..BatchRefs::default() }).await;
        if let Err(error) = alone {
            tracing::error!(%error, "recording a delivery failed");
            outcome = Err(error);
        }
    }
    outcome
}
