//! The conformance suite of the storage trait: each `pub async fn` is one story that every
//! engine must pass, written against `dyn Store` only. An engine's tests call every story with
//! a fresh store (see `leadrelay-store-sqlite/tests/it`).

#![forbid(unsafe_code)]

pub mod postgres;

use std::sync::Arc;

use leadrelay_domain::compiled::CompiledRules;
use leadrelay_domain::config::{parse_value, ConfigChange, ConfigDocument, ConfigKind, ConfigObject, WriteMode};
use leadrelay_domain::event::{EventType, NewEvent, RegisterStatus};
use leadrelay_domain::ids::{LeadId, TransferId};
use leadrelay_domain::pipeline::{decide, prepare, Intake};
use leadrelay_domain::time::now_millis;
use leadrelay_store::{
    events_page, AttemptRow, ClaimedTransfer, CommitOutcome, ConfigWriteError, DeliveryClaim, DeliveryRecord,
    EventQuery, IdempotencyRecord, JobClaim, JobRecord, LoggedEvent, NewToken, OverviewQuery, OverviewRow,
    RegisterQuery, ResendOutcome, ResendRequest, Role, SortOrder, Store, StoreError, StoreSignal, StoredAnswer,
    Submission, TransferState, TransferUpdate, LATENCY_BOUNDS_MS,
};
use serde_json::{json, Value};

const DAY: i64 = 86_400_000;

fn document() -> ConfigDocument {
    parse_value(json!({
        "flows": [{"id": "solar", "fields": [{"name": "email", "type": "email"}, {"name": "state", "type": "state"}],
                   "duplicates": {"keys": ["email"], "window_days": 30}, "destinations": ["crm"]}],
        "sources": [{"id": "web", "flow_id": "solar", "price": 2.0}],
        "destinations": [{"id": "crm", "url": "https://crm.example.com/leads"}]
    }))
    .expect("a valid document")
}

async fn configured(store: &Arc<dyn Store>) {
    store.change_config(ConfigChange::Apply(document())).await.expect("apply");
}

/// Decides a submission of `fields` received at `received_at`, asking the store about duplicates.
async fn submission(
    store: &Arc<dyn Store>,
    fields: Value,
    received_at: i64,
    idempotency_key: Option<&str>,
) -> Submission {
    let config = store.load_config().await.expect("config");
    let flow = &config.flows["solar"];
    let source = &config.sources["web"];
    let rules = CompiledRules::new(&config);
    let intake = Intake { flow, source, destinations: vec![&config.destinations["crm"]], rules: &rules };
    let Value::Object(fields) = fields else { panic!("fields must be an object") };
    let prepared = prepare(&intake, fields, received_at);
    let duplicate = match &prepared.duplicate_query {
        Some(query) => store.find_duplicate(query).await.expect("duplicate query"),
        None => None,
    };
    let decision = decide(&intake, &prepared, duplicate.as_ref(), received_at);
    let idempotency = idempotency_key.map(|key| IdempotencyRecord {
        source_id: "web".into(),
        key: key.into(),
        answer: StoredAnswer { http_status: 201, body_json: serde_json::to_string(&decision.answer).expect("json") },
    });
    Submission::from_decision(decision, idempotency)
}

/// A lead older than the duplicate window is not a duplicate; one inside it is.
pub async fn duplicate_window_is_measured_from_the_original(store: Arc<dyn Store>) {
    configured(&store).await;
    let now = now_millis();
    let old = submission(&store, json!({"email": "old@example.com", "state": "TX"}), now - 40 * DAY, None).await;
    assert_eq!(store.commit_submission(old).await.expect("commit"), CommitOutcome::Committed);
    let recent = submission(&store, json!({"email": "recent@example.com", "state": "TX"}), now - 10 * DAY, None).await;
    let recent_id = recent.lead.record.id.clone();
    assert_eq!(store.commit_submission(recent).await.expect("commit"), CommitOutcome::Committed);

    let again_old = submission(&store, json!({"email": "old@example.com", "state": "TX"}), now, None).await;
    assert_eq!(again_old.lead.record.outcome.map(|o| o.as_str()), Some("success"), "outside the window");
    let again_recent = submission(&store, json!({"email": "RECENT@example.com", "state": "TX"}), now, None).await;
    assert_eq!(again_recent.lead.record.duplicate_of, Some(recent_id));
    assert_eq!(again_recent.lead.record.outcome.map(|o| o.as_str()), Some("failure"));
}

/// A linked duplicate's keys point later leads to the original it is linked to, whatever order
/// the leads were received in: a family of duplicates links to one original, never to a chain.
pub async fn linked_duplicates_lead_later_ones_to_their_original(store: Arc<dyn Store>) {
    let mut document = serde_json::to_value(document()).expect("document");
    document["flows"][0]["duplicates"]["policy"] = json!("link");
    store.change_config(ConfigChange::Apply(parse_value(document).expect("link policy"))).await.expect("apply");
    let now = now_millis();
    let original = submission(&store, json!({"email": "family@example.com", "state": "TX"}), now - 2000, None).await;
    let original_id = original.lead.record.id.clone();
    assert_eq!(store.commit_submission(original).await.expect("commit"), CommitOutcome::Committed);
    // Received before the original (a slow request), decided after it: linked to it.
    let earlier = submission(&store, json!({"email": "family@example.com", "state": "TX"}), now - 3000, None).await;
    assert_eq!(earlier.lead.record.duplicate_of.as_ref(), Some(&original_id));
    assert_eq!(store.commit_submission(earlier).await.expect("commit"), CommitOutcome::Committed);
    let later = submission(&store, json!({"email": "family@example.com", "state": "TX"}), now, None).await;
    assert_eq!(later.lead.record.duplicate_of, Some(original_id));
}

/// Two submissions decided without seeing each other: the second commit is told what changed.
pub async fn commit_rechecks_the_duplicate_answer(store: Arc<dyn Store>) {
    configured(&store).await;
    let now = now_millis();
    let first = submission(&store, json!({"email": "race@example.com", "state": "TX"}), now, None).await;
    let second = submission(&store, json!({"email": "race@example.com", "state": "TX"}), now, None).await;
    let first_id = first.lead.record.id.clone();
    assert_eq!(store.commit_submission(first).await.expect("commit"), CommitOutcome::Committed);
    match store.commit_submission(second).await.expect("commit") {
        CommitOutcome::DuplicateChanged(Some(found)) => assert_eq!(found.lead_id, first_id),
        other => panic!("expected DuplicateChanged, got {other:?}"),
    }
    let leads = store.leads_page(&leadrelay_store::LeadQuery { limit: 10, ..Default::default() }).await.expect("leads");
    assert_eq!(leads.items.len(), 1, "the refused commit wrote nothing");
}

/// A repeated idempotency key writes nothing and returns the stored answer, also within one batch.
pub async fn idempotency_keys_replay_the_first_answer(store: Arc<dyn Store>) {
    configured(&store).await;
    let now = now_millis();
    let first = submission(&store, json!({"email": "a@example.com", "state": "TX"}), now, Some("k1")).await;
    let second = submission(&store, json!({"email": "b@example.com", "state": "TX"}), now, Some("k1")).await;
    let expected = first.idempotency.clone().expect("key").answer;
    let (one, two) = tokio::join!(store.commit_submission(first), store.commit_submission(second));
    let outcomes = [one.expect("commit"), two.expect("commit")];
    assert_eq!(outcomes.iter().filter(|o| **o == CommitOutcome::Committed).count(), 1, "{outcomes:?}");
    let replayed = outcomes.iter().find_map(|o| match o {
        CommitOutcome::Replay(answer) => Some(answer.clone()),
        _ => None,
    });
    let stored = store.idempotent_answer("web", "k1").await.expect("answer").expect("stored");
    assert_eq!(replayed, Some(stored.clone()));
    if outcomes[0] == CommitOutcome::Committed {
        assert_eq!(stored, expected);
    }
}

/// Many concurrent commits (group-committed) link one valid chain with every event in it.
pub async fn concurrent_commits_link_one_valid_chain(store: Arc<dyn Store>) {
    configured(&store).await;
    let now = now_millis();
    let mut submissions = Vec::new();
    for i in 0..200 {
        submissions
            .push(submission(&store, json!({"email": format!("c{i}@example.com"), "state": "TX"}), now, None).await);
    }
    let expected_events: usize = submissions.iter().map(|s| s.events.len()).sum();
    let commits = submissions.into_iter().map(|submission| {
        let store = store.clone();
        tokio::spawn(async move { store.commit_submission(submission).await })
    });
    for outcome in futures::future::join_all(commits).await {
        assert_eq!(outcome.expect("task").expect("commit"), CommitOutcome::Committed);
    }
    let report = store.verify_chain().await.expect("verify");
    assert_eq!(report.first_broken, None);
    assert_eq!(report.events_checked as usize, expected_events);
}

/// Keyset pages cover every event exactly once, in both orders, under every filter.
pub async fn event_pages_cover_the_log_once(store: Arc<dyn Store>) {
    configured(&store).await;
    let now = now_millis();
    for i in 0..25 {
        let lead =
            submission(&store, json!({"email": format!("p{i}@example.com"), "state": "TX"}), now + i, None).await;
        store.commit_submission(lead).await.expect("commit");
    }
    for sort in [SortOrder::Asc, SortOrder::Desc] {
        let mut query = EventQuery { limit: 7, sort, ..Default::default() };
        let mut seen = Vec::new();
        loop {
            let page = events_page(store.as_ref(), &query, 10_000).await.expect("page");
            seen.extend(page.items.iter().map(|event| event.seq));
            match page.next_cursor {
                Some(cursor) => query.cursor = Some(cursor),
                None => break,
            }
        }
        let mut sorted = seen.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), seen.len(), "no event twice");
        assert_eq!(seen.len(), 25 * 2, "submitted, accepted for each lead (completion waits for crm)");
        if sort == SortOrder::Desc {
            sorted.reverse();
        }
        assert_eq!(seen, sorted);
    }
    let accepted = EventQuery {
        event_type: Some(leadrelay_domain::event::EventType::SourceAccepted),
        limit: 100,
        ..Default::default()
    };
    assert_eq!(events_page(store.as_ref(), &accepted, 10_000).await.expect("page").items.len(), 25);
    let register = store.register_page(&RegisterQuery { limit: 1000, ..Default::default() }).await.expect("register");
    assert_eq!(register.items.len(), 25);
}

/// An event decided before one already logged is stamped no earlier than it: a reader that
/// pages by time with a cursor finds every event logged after its cursor, and the log's
/// timestamps never decrease.
pub async fn a_cursor_finds_events_decided_before_it_but_logged_after(store: Arc<dyn Store>) {
    configured(&store).await;
    let now = now_millis();
    let early = submission(&store, json!({"email": "early@example.com", "state": "TX"}), now, None).await;
    let late = submission(&store, json!({"email": "late@example.com", "state": "TX"}), now + 60_000, None).await;
    store.commit_submission(late).await.expect("commit");
    let mut query = EventQuery { limit: 1, sort: SortOrder::Asc, ..Default::default() };
    let first = events_page(store.as_ref(), &query, 10_000).await.expect("page");
    query.cursor = Some(first.next_cursor.expect("a second event follows"));
    store.commit_submission(early).await.expect("commit");
    let mut seen: Vec<String> = first.items.iter().map(|event| event.lead_id.to_string()).collect();
    loop {
        let page = events_page(store.as_ref(), &query, 10_000).await.expect("page");
        seen.extend(page.items.iter().map(|event| event.lead_id.to_string()));
        match page.next_cursor {
            Some(cursor) => query.cursor = Some(cursor),
            None => break,
        }
    }
    assert_eq!(seen.len(), 4, "submitted and accepted of both leads: {seen:?}");
    let all =
        events_page(store.as_ref(), &EventQuery { limit: 100, ..Default::default() }, 10_000).await.expect("page");
    let mut by_seq: Vec<_> = all.items.iter().map(|event| (event.seq, event.timestamp)).collect();
    by_seq.sort();
    assert!(by_seq.windows(2).all(|pair| pair[0].1 <= pair[1].1), "timestamps along the log: {by_seq:?}");
    assert_eq!(by_seq.last().map(|(_, timestamp)| *timestamp), Some(now + 60_000));
}

/// Configuration changes are validated as a whole and persist.
pub async fn configuration_changes_are_validated_and_kept(store: Arc<dyn Store>) {
    configured(&store).await;
    let source: ConfigObject =
        ConfigObject::parse(ConfigKind::Source, json!({"id": "vendor", "flow_id": "solar"})).expect("source");
    store.change_config(ConfigChange::Put { object: source.clone(), mode: WriteMode::Create }).await.expect("create");
    let again = store.change_config(ConfigChange::Put { object: source, mode: WriteMode::Create }).await;
    assert!(matches!(again, Err(ConfigWriteError::Change(_))), "{again:?}");
    let dangling = ConfigObject::parse(ConfigKind::Source, json!({"id": "x", "flow_id": "nope"})).expect("source");
    let refused = store.change_config(ConfigChange::Put { object: dangling, mode: WriteMode::Upsert }).await;
    assert!(matches!(refused, Err(ConfigWriteError::Change(_))), "{refused:?}");
    let in_use = store.change_config(ConfigChange::Delete { kind: ConfigKind::Flow, id: "solar".into() }).await;
    assert!(matches!(in_use, Err(ConfigWriteError::Change(_))), "{in_use:?}");
    let config = store.load_config().await.expect("config");
    assert_eq!(config.sources.keys().collect::<Vec<_>>(), ["web", "vendor"]);
}

/// Tokens are found by hash, ensured idempotently, renamed, and deleted.
pub async fn tokens_are_kept_by_hash(store: Arc<dyn Store>) {
    let token = NewToken { id: "tok_1".into(), name: "one".into(), role: Role::Admin, hash: [7; 32], created_at: 1 };
    store.create_token(token.clone()).await.expect("create");
    assert!(store.create_token(NewToken { id: "tok_2".into(), ..token.clone() }).await.is_err(), "same hash twice");
    store.ensure_token(NewToken { id: "tok_3".into(), ..token.clone() }).await.expect("ensure is idempotent");
    assert_eq!(store.list_tokens().await.expect("list").len(), 1);
    assert_eq!(store.find_token(&[7; 32]).await.expect("find").map(|t| t.id), Some("tok_1".into()));
    assert!(store.find_token(&[8; 32]).await.expect("find").is_none());
    // The only admin token can be renamed but neither demoted nor deleted.
    assert!(store.update_token("tok_1", "sole", None).await.expect("rename"));
    let demoted = store.update_token("tok_1", "sole", Some(Role::Operator)).await;
    assert!(matches!(demoted, Err(StoreError::Conflict(_))), "{demoted:?}");
    assert!(matches!(store.delete_token("tok_1").await, Err(StoreError::Conflict(_))));
    assert_eq!(store.find_token(&[7; 32]).await.expect("find").map(|t| t.role), Some(Role::Admin));
    let second = NewToken { id: "tok_2".into(), name: "two".into(), role: Role::Admin, hash: [8; 32], created_at: 2 };
    store.create_token(second).await.expect("a second admin");
    assert!(store.update_token("tok_1", "renamed", Some(Role::Operator)).await.expect("update"));
    assert!(store.update_token("tok_1", "again", None).await.expect("update keeps the role"));
    let found = store.find_token(&[7; 32]).await.expect("find").expect("still found by its hash");
    assert_eq!((found.name.as_str(), found.role), ("again", Role::Operator));
    assert!(!store.update_token("tok_9", "x", None).await.expect("update"), "no such token");
    assert!(matches!(store.delete_token("tok_2").await, Err(StoreError::Conflict(_))), "tok_2 is now the only admin");
    assert!(store.delete_token("tok_1").await.expect("delete"));
    assert!(!store.delete_token("tok_1").await.expect("delete"));
    assert!(store.find_token(&[8; 32]).await.expect("find").is_some());
}

/// An engine's own JSON rendering of events is byte for byte the general one.
pub async fn event_lines_render_like_stored_events(store: Arc<dyn Store>) {
    let mut document = document();
    document.flows[0].filters = vec![parse_value(json!({"name": "geo \"quoted\" ünï", "rules": {"all": [
        {"field": "state", "op": "in", "value": ["TX"]}]}}))
    .expect("filter")];
    // A price with every digit the validation allows.
    document.sources[0].price = Some(123_456_789.123_456);
    store.change_config(ConfigChange::Apply(document)).await.expect("apply");
    let now = now_millis();
    let leads = [
        json!({"email": "a@example.com", "state": "TX", "note": "line\nbreak \"quote\" \\ back ☃ \u{0001}"}),
        json!({"email": "b@example.com", "state": "N\"Y\t"}),
        json!({"email": "c@example.com"}),
    ];
    for (i, lead) in leads.into_iter().enumerate() {
        let submission = submission(&store, lead, now - 86_399_999 + i as i64 * 7, None).await;
        store.commit_submission(submission).await.expect("commit");
    }
    // Enough events, several sharing a millisecond, for the order of a page to be tested.
    for i in 0..150 {
        let lead = json!({"email": format!("bulk{i}@example.com"), "state": "TX"});
        let submission = submission(&store, lead, now - 1000 + i / 3, None).await;
        store.commit_submission(submission).await.expect("commit");
    }
    let query = EventQuery { limit: 1000, sort: SortOrder::Asc, ..Default::default() };
    let events = store.scan_events(&query, None, 1000).await.expect("events");
    assert!(events.len() >= 450, "{} events", events.len());
    for fields in [&leadrelay_store::EVENT_FIELDS[..], &["type", "price", "reason"][..], &["lead"][..]] {
        for sort in [SortOrder::Asc, SortOrder::Desc] {
            let query = EventQuery { sort, ..query.clone() };
            let events = store.scan_events(&query, None, 1000).await.expect("events");
            let lines = store.scan_event_lines(&query, None, 1000, fields).await.expect("lines");
            let expected = leadrelay_store::EventLines::from_events(&events, fields);
            assert_eq!(lines.count, events.len());
            assert_eq!(lines.last, expected.last);
            assert_eq!(lines.ndjson, expected.ndjson);
            for line in lines.ndjson.lines() {
                serde_json::from_str::<Value>(line).expect("valid JSON");
            }
            let after = events[2].cursor();
            let rest = store.scan_event_lines(&query, Some(&after), 1000, fields).await.expect("lines");
            assert_eq!(rest.count, events.len() - 3);
        }
    }
    let none = EventQuery { start: Some(now + 86_400_000), ..query };
    let empty = store.scan_event_lines(&none, None, 1000, &["id"]).await.expect("lines");
    assert_eq!((empty.count, empty.last, empty.ndjson.as_str()), (0, None, ""));
}

fn claim(owner: &str, now: i64, limit: usize) -> DeliveryClaim {
    DeliveryClaim { destination_id: "crm".into(), owner: owner.into(), now, lease_ms: 60_000, limit }
}

/// A delivery step that ends a transfer: delivered, with its event.
fn delivered(claimed: &ClaimedTransfer, owner: &str, now: i64) -> DeliveryRecord {
    let mut event = NewEvent::about(
        EventType::RecipientDelivered,
        now,
        &LeadId::from_stored(claimed.lead_id.clone()),
        &claimed.flow_id,
        &claimed.source_id,
    );
    event.destination_id = Some(claimed.destination_id.clone());
    event.transfer_id = Some(TransferId::from_stored(claimed.transfer_id.clone()));
    event.status = Some(RegisterStatus::Success);
    event.attempt = Some(1);
    let event_id = event.id.as_str().to_owned();
    DeliveryRecord {
        events: vec![LoggedEvent::new(event, claimed.snapshot_id, &claimed.snapshot_digest)],
        update: Some(TransferUpdate {
            transfer_id: claimed.transfer_id.clone(),
            owner: Some(owner.into()),
            status: RegisterStatus::Success,
            description: "Delivered".into(),
            state: TransferState::Done,
            attempts: claimed.attempts + 1,
            updated_at: now,
            retry_base: None,
        }),
        attempt: Some(AttemptRow {
            transfer_id: claimed.transfer_id.clone(),
            attempt: claimed.attempts + 1,
            started_at: now,
            duration_ms: 3,
            outcome: "success",
            response_code: Some(200),
            event_id,
        }),
        cap_counts: Vec::new(),
    }
}

/// A queued transfer is claimed by one node at a time; when its lease runs out, another node
/// may claim it; a recorded outcome ends it, and the chain takes the delivery's events.
pub async fn claims_lease_due_transfers_to_one_node_at_a_time(store: Arc<dyn Store>) {
    configured(&store).await;
    let now = now_millis();
    for index in 0..3 {
        let lead =
            submission(&store, json!({"email": format!("c{index}@example.com"), "state": "TX"}), now, None).await;
        assert_eq!(store.commit_submission(lead).await.expect("commit"), CommitOutcome::Committed);
    }
    assert_eq!(store.next_due("crm").await.expect("next due"), Some(now));
    let first = store.claim_deliveries(&claim("node-a", now, 2)).await.expect("claim");
    assert_eq!(first.len(), 2, "the limit holds");
    assert!(first.iter().all(|transfer| transfer.snapshot.contains("@example.com")), "with the lead's snapshot");
    let second = store.claim_deliveries(&claim("node-b", now + 1000, 10)).await.expect("claim");
    assert_eq!(second.len(), 1, "leased transfers are not claimed again");
    assert!(store.claim_deliveries(&claim("node-b", now + 1000, 10)).await.expect("claim").is_empty());

    // node-a dies: past its lease, node-b takes its transfers over.
    let later = now + 60_001;
    let taken_over = store.claim_deliveries(&claim("node-b", later, 10)).await.expect("claim");
    assert_eq!(taken_over.len(), 2);
    // node-a's late outcome is written (the call happened) but leaves the state to node-b.
    store.record_deliveries(vec![delivered(&first[0], "node-a", later)]).await.expect("record");
    let register = store.register_page(&RegisterQuery { limit: 10, ..Default::default() }).await.expect("register");
    let row = register.items.iter().find(|row| row.transfer_id == first[0].transfer_id).expect("row");
    assert_eq!(row.status.as_str(), "new");
    // node-b's outcome ends the transfer.
    let records = taken_over.iter().chain(&second).map(|transfer| delivered(transfer, "node-b", later)).collect();
    store.record_deliveries(records).await.expect("record");
    let register = store.register_page(&RegisterQuery { limit: 10, ..Default::default() }).await.expect("register");
    assert!(register.items.iter().all(|row| row.status.as_str() == "success" && row.attempts == 1), "{register:?}");
    assert_eq!(store.next_due("crm").await.expect("next due"), None);
    let report = store.verify_chain().await.expect("verify");
    assert_eq!(report.first_broken, None);
}

/// A submission with a background transfer holds `flow.completed` back until the transfer's
/// outcome: a retry scheduled does not end it, the delivery does, in the same transaction, with
/// the transfers as they ended; a later resend logs no second one.
pub async fn completion_follows_the_last_delivery_outcome(store: Arc<dyn Store>) {
    configured(&store).await;
    let now = now_millis();
    let lead = submission(&store, json!({"email": "done@example.com", "state": "TX"}), now, None).await;
    let lead_id = lead.lead.record.id.as_str().to_owned();
    store.commit_submission(lead).await.expect("commit");
    let types = |events: Vec<leadrelay_store::StoredEvent>| -> Vec<String> {
        events.into_iter().rev().map(|event| event.event_type).collect()
    };
    let timeline = || async {
        let query = EventQuery { lead_id: Some(lead_id.clone()), limit: 100, ..Default::default() };
        types(store.scan_events(&query, None, 100).await.expect("events"))
    };
    assert_eq!(timeline().await, ["source.submitted", "source.accepted"], "held while the transfer waits");

    // A technical failure with a retry scheduled: still pending, still held.
    let claimed = store.claim_deliveries(&claim("node-a", now, 10)).await.expect("claim");
    let mut retry = delivered(&claimed[0], "node-a", now + 1);
    retry.events[0].event.event_type = EventType::RecipientError;
    if let Some(update) = retry.update.as_mut() {
        update.status = RegisterStatus::Error;
        update.state = TransferState::Pending { due_at: now + 10 };
    }
    retry.attempt = None;
    store.record_deliveries(vec![retry]).await.expect("record");
    assert_eq!(timeline().await, ["source.submitted", "source.accepted", "recipient.error"]);

    let again = store.claim_deliveries(&claim("node-a", now + 20, 10)).await.expect("claim");
    store.record_deliveries(vec![delivered(&again[0], "node-a", now + 30)]).await.expect("record");
    assert_eq!(
        timeline().await,
        ["source.submitted", "source.accepted", "recipient.error", "recipient.delivered", "flow.completed"]
    );
    let query = EventQuery { event_type: Some(EventType::FlowCompleted), ..Default::default() };
    let completed = store.scan_events(&query, None, 10).await.expect("events");
    assert_eq!(completed.len(), 1);
    let data: Value = serde_json::from_str(&completed[0].data).expect("data");
    assert_eq!(data["transfers"][0]["status"], "success", "the transfers as they ended: {data}");
    assert_eq!(completed[0].price, Some(2.0), "what the lead cost");
    assert!(completed[0].lead.contains("done@example.com"), "with the lead's snapshot");

    let request = ResendRequest {
        transfer_ids: vec![again[0].transfer_id.clone()],
        actor: "ops".into(),
        job_id: None,
        now: now_millis(),
    };
    store.resend_transfers(request).await.expect("resend");
    let resent = store.claim_deliveries(&claim("node-b", now_millis(), 10)).await.expect("claim");
    store.record_deliveries(vec![delivered(&resent[0], "node-b", now_millis())]).await.expect("record");
    assert_eq!(store.scan_events(&query, None, 10).await.expect("events").len(), 1, "one completion per lead");
    assert_eq!(store.verify_chain().await.expect("verify").first_broken, None);
}

/// Released leases make transfers due at once.
pub async fn released_leases_are_due_again(store: Arc<dyn Store>) {
    configured(&store).await;
    let now = now_millis();
    let lead = submission(&store, json!({"email": "r@example.com", "state": "TX"}), now, None).await;
    store.commit_submission(lead).await.expect("commit");
    assert_eq!(store.claim_deliveries(&claim("node-a", now, 10)).await.expect("claim").len(), 1);
    assert_eq!(store.release_deliveries("node-a").await.expect("release"), 1);
    let again = store.claim_deliveries(&claim("node-b", now_millis(), 10)).await.expect("claim");
    assert_eq!(again.len(), 1);
}

/// A resend queues a finished transfer again with a `delivery.resent` event, refuses one in
/// flight, and names the ones it does not know.
pub async fn resends_queue_finished_transfers_again(store: Arc<dyn Store>) {
    configured(&store).await;
    let now = now_millis();
    let lead = submission(&store, json!({"email": "again@example.com", "state": "TX"}), now, None).await;
    store.commit_submission(lead).await.expect("commit");
    let claimed = store.claim_deliveries(&claim("node-a", now, 10)).await.expect("claim");
    let transfer_id = claimed[0].transfer_id.clone();
    let request =
        |ids: Vec<String>| ResendRequest { transfer_ids: ids, actor: "ops".into(), job_id: None, now: now_millis() };
    let in_flight = store.resend_transfers(request(vec![transfer_id.clone()])).await.expect("resend");
    assert_eq!(in_flight, vec![(transfer_id.clone(), ResendOutcome::AlreadyQueued)]);

    store.record_deliveries(vec![delivered(&claimed[0], "node-a", now)]).await.expect("record");
    let outcomes =
        store.resend_transfers(request(vec![transfer_id.clone(), "trf_unknown".into()])).await.expect("resend");
    assert_eq!(
        outcomes,
        vec![(transfer_id.clone(), ResendOutcome::Queued), ("trf_unknown".into(), ResendOutcome::NotFound)]
    );
    let again = store.claim_deliveries(&claim("node-b", now_millis(), 10)).await.expect("claim");
    assert_eq!(again.len(), 1);
    assert_eq!((again[0].attempts, again[0].retry_base), (1, 1), "the retries start over");
    let events = store
        .scan_events(&EventQuery { event_type: Some(EventType::DeliveryResent), ..Default::default() }, None, 10)
        .await
        .expect("events");
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].transfer_id.as_deref(), Some(transfer_id.as_str()));
    assert_eq!(store.verify_chain().await.expect("verify").first_broken, None);
}

/// The overview counts transfers per UTC day, status, source and destination, and puts each
/// delivered one in the bucket of its latency (arrival to delivery).
pub async fn overview_counts_transfers_per_day_and_latency(store: Arc<dyn Store>) {
    configured(&store).await;
    let now = now_millis();
    let today = now.div_euclid(DAY);
    for (index, received_at) in [now - DAY, now, now].into_iter().enumerate() {
        let lead =
            submission(&store, json!({"email": format!("o{index}@example.com"), "state": "TX"}), received_at, None)
                .await;
        assert_eq!(store.commit_submission(lead).await.expect("commit"), CommitOutcome::Committed);
    }
    let claimed = store.claim_deliveries(&claim("node-a", now, 1)).await.expect("claim");
    assert_eq!(claimed.len(), 1);
    let latency = 1_500;
    let delivered_at = store
        .register_page(&RegisterQuery { limit: 10, ..Default::default() })
        .await
        .expect("register")
        .items
        .iter()
        .find(|row| row.transfer_id == claimed[0].transfer_id)
        .expect("the claimed row")
        .created_at
        + latency;
    store.record_deliveries(vec![delivered(&claimed[0], "node-a", delivered_at)]).await.expect("record");
    let delivered_day = (delivered_at - latency).div_euclid(DAY);

    let query = OverviewQuery { start: (today - 1) * DAY, end: (today + 1) * DAY };
    let mut rows = store.overview(&query).await.expect("overview");
    rows.sort_by_key(|row| (row.day, row.status.as_str(), row.latency_bucket));
    let bucket = LATENCY_BOUNDS_MS.iter().take_while(|bound| **bound <= latency).count();
    let row = |day: i64, status: RegisterStatus, latency_bucket: Option<usize>, count: u64| OverviewRow {
        day,
        status,
        source_id: "web".into(),
        destination_id: Some("crm".into()),
        latency_bucket,
        count,
    };
    let total: u64 = rows.iter().map(|row| row.count).sum();
    assert_eq!(total, 3, "{rows:?}");
    assert!(rows.contains(&row(delivered_day, RegisterStatus::Success, Some(bucket), 1)), "{rows:?}");
    assert_eq!(rows.iter().filter(|row| row.status == RegisterStatus::New).map(|row| row.count).sum::<u64>(), 2);
    assert!(rows.iter().any(|row| row.day == today - 1), "yesterday's lead is counted on its day: {rows:?}");

    let today_only =
        store.overview(&OverviewQuery { start: today * DAY, end: (today + 1) * DAY }).await.expect("overview");
    assert_eq!(today_only.iter().map(|row| row.count).sum::<u64>(), 2, "the window bounds hold");
}

/// Jobs keep their progress; a running job is held by one node at a time, and taken over by
/// another once its lease has run out.
pub async fn jobs_keep_their_progress(store: Arc<dyn Store>) {
    let claim = |owner: &str, now: i64| JobClaim { owner: owner.into(), now, lease_ms: 60_000 };
    let mut job = JobRecord {
        id: "job_1".into(),
        kind: "resend".into(),
        status: "running".into(),
        params: json!({"status": "error"}),
        cursor: None,
        matched: 0,
        queued: 0,
        skipped: 0,
        error: None,
        created_at: 1,
        updated_at: 1,
        owner: Some("node_a".into()),
        lease_until: Some(60_001),
    };
    store.save_job(&job).await.expect("save");
    assert!(store.claim_jobs(&claim("node_b", 1_000)).await.expect("claim").is_empty(), "node_a holds it");
    let taken = store.claim_jobs(&claim("node_b", 70_000)).await.expect("claim");
    assert_eq!(taken.len(), 1, "the lease ran out");
    assert_eq!((taken[0].owner.as_deref(), taken[0].lease_until), (Some("node_b"), Some(130_000)));
    assert!(store.claim_jobs(&claim("node_c", 70_000)).await.expect("claim").is_empty(), "node_b holds it now");
    job.updated_at = 2;
    assert!(
        matches!(store.save_job(&job).await, Err(leadrelay_store::StoreError::Conflict(_))),
        "node_a's save after the takeover is refused"
    );
    job = taken[0].clone();
    job.cursor = Some("next".into());
    job.matched = 500;
    job.queued = 498;
    job.skipped = 2;
    job.status = "completed".into();
    job.updated_at = 2;
    store.save_job(&job).await.expect("save");
    assert_eq!(store.job("job_1").await.expect("job"), Some(job));
    assert!(store.claim_jobs(&claim("node_c", 500_000)).await.expect("claim").is_empty(), "completed");
    assert_eq!(store.job("job_2").await.expect("job"), None);
}

/// Two stores on one database (two nodes): their concurrent commits link one valid chain,
/// and the same lead sent to both at once is accepted once, the other commit told that its
/// duplicate answer changed.
pub async fn two_nodes_share_one_chain_and_one_duplicate_index(first: Arc<dyn Store>, second: Arc<dyn Store>) {
    configured(&first).await;
    let now = now_millis();
    let mut commits = Vec::new();
    let mut expected_events = 0;
    for i in 0..100 {
        let store = if i % 2 == 0 { first.clone() } else { second.clone() };
        let submission =
            submission(&store, json!({"email": format!("n{i}@example.com"), "state": "TX"}), now, None).await;
        expected_events += submission.events.len();
        commits.push(tokio::spawn(async move { store.commit_submission(submission).await }));
    }
    for outcome in futures::future::join_all(commits).await {
        assert_eq!(outcome.expect("task").expect("commit"), CommitOutcome::Committed);
    }

    let same = json!({"email": "both@example.com", "state": "TX"});
    let on_first = submission(&first, same.clone(), now, None).await;
    let on_second = submission(&second, same, now, None).await;
    let accepted_events = on_first.events.len();
    assert_eq!(accepted_events, on_second.events.len());
    let (a, b) = tokio::join!(first.commit_submission(on_first), second.commit_submission(on_second));
    let outcomes = [a.expect("commit"), b.expect("commit")];
    let committed = outcomes.iter().filter(|outcome| **outcome == CommitOutcome::Committed).count();
    let changed = outcomes.iter().filter(|outcome| matches!(outcome, CommitOutcome::DuplicateChanged(Some(_)))).count();
    assert_eq!((committed, changed), (1, 1), "one accepted, one sent back: {outcomes:?}");
    expected_events += accepted_events;

    for store in [&first, &second] {
        let report = store.verify_chain().await.expect("verify");
        assert_eq!(report.first_broken, None);
        assert_eq!(report.events_checked as usize, expected_events);
    }
}

/// On an engine that several nodes share, one node hears what another changes: configuration
/// and queued transfers.
pub async fn other_nodes_hear_changes(first: Arc<dyn Store>, second: Arc<dyn Store>) {
    use futures::StreamExt;
    let mut signals = second.signals().await.expect("listen").expect("a shared engine gives signals");
    let mut next_signal = async |wanted: StoreSignal| {
        let wait = async {
            while let Some(signal) = signals.next().await {
                if signal == wanted {
                    return;
                }
            }
            panic!("the signals ended before {wanted:?}");
        };
        tokio::time::timeout(std::time::Duration::from_secs(30), wait)
            .await
            .unwrap_or_else(|_| panic!("no {wanted:?} signal"));
    };
    configured(&first).await;
    next_signal(StoreSignal::ConfigChanged).await;
    let lead = submission(&first, json!({"email": "heard@example.com", "state": "TX"}), now_millis(), None).await;
    assert_eq!(first.commit_submission(lead).await.expect("commit"), CommitOutcome::Committed);
    next_signal(StoreSignal::TransfersQueued).await;
}

/// After the database connection is cut (`cut` does it: a restarted server, a network cut),
/// a write may fail, but the store reconnects: later writes succeed and nothing is lost.
pub async fn writes_resume_after_the_connection_is_cut(
    store: Arc<dyn Store>,
    cut: impl std::future::Future<Output = ()>,
) {
    configured(&store).await;
    let now = now_millis();
    let before = submission(&store, json!({"email": "before@example.com", "state": "TX"}), now, None).await;
    let mut expected_events = before.events.len();
    assert_eq!(store.commit_submission(before).await.expect("commit"), CommitOutcome::Committed);
    cut.await;
    let mut committed = false;
    for attempt in 0..3 {
        let after =
            submission(&store, json!({"email": format!("after{attempt}@example.com"), "state": "TX"}), now, None).await;
        let events = after.events.len();
        if let Ok(CommitOutcome::Committed) = store.commit_submission(after).await {
            expected_events += events;
            committed = true;
            break;
        }
    }
    assert!(committed, "no write succeeded after the connection was cut");
    let report = store.verify_chain().await.expect("verify");
    assert_eq!(report.first_broken, None);
    assert_eq!(report.events_checked as usize, expected_events);
}
