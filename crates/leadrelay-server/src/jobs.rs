//! Background jobs: a bulk resend walks every transfer matching a register filter (not a
//! page), queues each again, and saves its progress after every batch, so that a restart
//! resumes it where it stopped.

use std::sync::Arc;

use leadrelay_domain::ids::JobId;
use leadrelay_domain::time::now_millis;
use leadrelay_store::{
    Cursor, JobClaim, JobRecord, RegisterQuery, ResendOutcome, ResendRequest, SortOrder, StoreResult,
};
use serde_json::Value;

use crate::params::{register_query, Params, RESEND_PARAMS};
use crate::{ApiResult, AppState};

/// Transfers one step of a job resends.
const BATCH: usize = 500;

/// How long a node holds a running job without saving it; another node takes over a job
/// whose node stopped saving (it died) once this has passed.
pub const JOB_LEASE_MS: i64 = 60_000;

/// A bulk resend's filter, parsed from the job's stored parameters.
struct ResendFilter {
    query: RegisterQuery,
    not_integrated: bool,
}

fn parse_filter(params: &Value) -> ApiResult<ResendFilter> {
    let params = Params::from_json(params.to_string().as_bytes(), RESEND_PARAMS)?;
    let mut query = register_query(&params)?;
    query.limit = BATCH;
    query.sort = SortOrder::Asc;
    Ok(ResendFilter { query, not_integrated: params.flag("not_integrated")? })
}

/// Creates a bulk resend job for a filter (checked now, so a bad filter is a 400) and starts it.
/// The filter's `end` is fixed at the job's creation: transfers created later are not part of it.
pub async fn start_resend(state: &Arc<AppState>, mut params: Value, actor: &str) -> ApiResult<JobRecord> {
    parse_filter(&params)?;
    let now = now_millis();
    if let Value::Object(object) = &mut params {
        if object.get("end").is_none_or(Value::is_null) {
            object.insert("end".to_owned(), Value::String(leadrelay_domain::time::format_millis(now)));
        }
        object.insert("by".to_owned(), Value::String(actor.to_owned()));
    }
    let job = JobRecord {
        id: JobId::generate().into_string(),
        kind: "resend".to_owned(),
        status: "running".to_owned(),
        params,
        cursor: None,
        matched: 0,
        queued: 0,
        skipped: 0,
        error: None,
        created_at: now,
        updated_at: now,
        owner: Some(state.delivery.owner().to_owned()),
        lease_until: Some(now + JOB_LEASE_MS),
    };
    state.store.save_job(&job).await?;
    spawn(state.clone(), job.clone());
    Ok(job)
}

/// Resumes the running jobs no node holds: those a stopped process left, or those of a node
/// that died (once their lease has run out).
pub async fn resume(state: &Arc<AppState>) -> StoreResult<()> {
    let claim = JobClaim { owner: state.delivery.owner().to_owned(), now: now_millis(), lease_ms: JOB_LEASE_MS };
    for job in state.store.claim_jobs(&claim).await? {
        tracing::info!(job_id = %job.id, "resuming job");
        spawn(state.clone(), job);
    }
    Ok(())
}

/// Runs a job in a task of its own, unless this node runs it already (its lease ran out
/// while a step was slow, and this node claimed it again).
fn spawn(state: Arc<AppState>, job: JobRecord) {
    let job_id = job.id.clone();
    let started = state.running_jobs.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).insert(job_id.clone());
    if !started {
        return;
    }
    tokio::spawn(async move {
        if let Err(error) = run_resend(&state, job).await {
            tracing::error!(%job_id, %error, "job stopped; a node resumes it once its lease runs out");
        }
        state.running_jobs.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).remove(&job_id);
    });
}

async fn run_resend(state: &Arc<AppState>, mut job: JobRecord) -> StoreResult<()> {
    let mut params = job.params.clone();
    let actor = params
        .as_object_mut()
        .and_then(|object| object.remove("by"))
        .and_then(|by| by.as_str().map(str::to_owned))
        .unwrap_or_else(|| "a job".to_owned());
    let filter = match parse_filter(&params) {
        Ok(filter) => filter,
        Err(error) => {
            job.status = "failed".to_owned();
            job.error = Some(error.to_string());
            job.updated_at = now_millis();
            return state.store.save_job(&job).await;
        }
    };
    loop {
        let mut query = filter.query.clone();
        query.cursor = job.cursor.as_deref().and_then(Cursor::decode);
        let page = if filter.not_integrated {
            state.store.not_integrated_page(&query).await?
        } else {
            state.store.register_page(&query).await?
        };
        let config = state.config();
        // Transfers to no destination, or to one that no longer exists, cannot be resent.
        let (resendable, unsendable): (Vec<_>, Vec<_>) = page.items.iter().partition(|transfer| {
            transfer.destination_id.as_ref().is_some_and(|id| config.destinations.contains_key(id))
        });
        job.matched += page.items.len() as u64;
        job.skipped += unsendable.len() as u64;
        if !resendable.is_empty() {
            let request = ResendRequest {
                transfer_ids: resendable.iter().map(|transfer| transfer.transfer_id.clone()).collect(),
                actor: actor.clone(),
                job_id: Some(job.id.clone()),
                now: now_millis(),
            };
            for (_, outcome) in state.store.resend_transfers(request).await? {
                if outcome == ResendOutcome::Queued {
                    job.queued += 1;
                } else {
                    job.skipped += 1;
                }
            }
            state.delivery.wake();
        }
        job.cursor = page.next_cursor.as_ref().map(Cursor::encode);
        job.updated_at = now_millis();
        job.lease_until = Some(job.updated_at + JOB_LEASE_MS);
        if job.cursor.is_none() {
            job.status = "completed".to_owned();
        }
        state.store.save_job(&job).await?;
        if job.cursor.is_none() {
            return Ok(());
        }
    }
}
