//! The storage conformance suite on the PostgreSQL engine, each story on a database of its
//! own, created for it on the server at `LEADRELAY_TEST_POSTGRES_URL` (by default the local
//! one, `postgres://root@127.0.0.1:5432/test`) and dropped afterwards.

use std::sync::Arc;

use leadrelay_store::Store;
use leadrelay_store_conformance::postgres::{server_url, TestDatabase};
use leadrelay_store_postgres::{PostgresOptions, PostgresStore};
use sqlx::{Connection, PgConnection};

async fn open(database: &TestDatabase) -> Arc<dyn Store> {
    PostgresStore::open(&database.url, PostgresOptions::default()).await.expect("open")
}

macro_rules! conformance {
    ($($story:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $story() {
                let database = TestDatabase::create().await;
                let store = open(&database).await;
                leadrelay_store_conformance::$story(store.clone()).await;
                store.close().await;
                database.drop().await;
            }
        )*
    };
}

conformance!(
    duplicate_window_is_measured_from_the_original,
    commit_rechecks_the_duplicate_answer,
    linked_duplicates_lead_later_ones_to_their_original,
    idempotency_keys_replay_the_first_answer,
    concurrent_commits_link_one_valid_chain,
    a_cursor_finds_events_decided_before_it_but_logged_after,
    event_pages_cover_the_log_once,
    configuration_changes_are_validated_and_kept,
    tokens_are_kept_by_hash,
    event_lines_render_like_stored_events,
    claims_lease_due_transfers_to_one_node_at_a_time,
    released_leases_are_due_again,
    resends_queue_finished_transfers_again,
    completion_follows_the_last_delivery_outcome,
    jobs_keep_their_progress,
    overview_counts_transfers_per_day_and_latency,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_share_one_chain_and_one_duplicate_index() {
    let database = TestDatabase::create().await;
    let (first, second) = (open(&database).await, open(&database).await);
    leadrelay_store_conformance::two_nodes_share_one_chain_and_one_duplicate_index(first.clone(), second.clone()).await;
    first.close().await;
    second.close().await;
    database.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_nodes_hear_changes() {
    let database = TestDatabase::create().await;
    let (first, second) = (open(&database).await, open(&database).await);
    leadrelay_store_conformance::other_nodes_hear_changes(first.clone(), second.clone()).await;
    first.close().await;
    second.close().await;
    database.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_resume_after_the_connection_is_cut() {
    let database = TestDatabase::create().await;
    let store = open(&database).await;
    let name = database.name.clone();
    let cut = async move {
        let mut admin = PgConnection::connect(&server_url()).await.expect("connect");
        let cut: Vec<bool> =
            sqlx::query_scalar("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1")
                .bind(&name)
                .fetch_all(&mut admin)
                .await
                .expect("terminate");
        assert!(!cut.is_empty(), "no connection to cut");
    };
    leadrelay_store_conformance::writes_resume_after_the_connection_is_cut(store.clone(), cut).await;
    store.close().await;
    database.drop().await;
}

#[tokio::test]
async fn data_survives_reconnecting() {
    let database = TestDatabase::create().await;
    let store = open(&database).await;
    leadrelay_store_conformance::concurrent_commits_link_one_valid_chain(store.clone()).await;
    store.close().await;
    let store = open(&database).await;
    let report = store.verify_chain().await.expect("verify");
    assert_eq!(report.first_broken, None);
    assert!(report.events_checked > 0);
    assert_eq!(store.load_config().await.expect("config").flows.len(), 1);
    store.close().await;
    database.drop().await;
}
