//! The storage conformance suite on the SQLite engine, each story on a fresh database file.

use std::sync::Arc;

use leadrelay_store::Store;
use leadrelay_store_sqlite::{SqliteOptions, SqliteStore};

async fn fresh() -> (Arc<dyn Store>, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let url = format!("sqlite://{}", dir.path().join("conformance.db").display());
    let store: Arc<dyn Store> = SqliteStore::open(&url, SqliteOptions::default()).await.expect("open");
    (store, dir)
}

macro_rules! conformance {
    ($($story:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $story() {
                let (store, _dir) = fresh().await;
                leadrelay_store_conformance::$story(store.clone()).await;
                store.close().await;
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

#[tokio::test]
async fn data_survives_closing_and_reopening_the_file() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let url = format!("sqlite://{}", dir.path().join("reopen.db").display());
    let store: Arc<dyn Store> = SqliteStore::open(&url, SqliteOptions::default()).await.expect("open");
    leadrelay_store_conformance::concurrent_commits_link_one_valid_chain(store.clone()).await;
    store.close().await;
    let store: Arc<dyn Store> = SqliteStore::open(&url, SqliteOptions::default()).await.expect("reopen");
    let report = store.verify_chain().await.expect("verify");
    assert_eq!(report.first_broken, None);
    assert!(report.events_checked > 0);
    assert_eq!(store.load_config().await.expect("config").flows.len(), 1);
    store.close().await;
}

/// A store keeps its data in a file: a URL that names none is refused, and no file is left
/// behind.
#[tokio::test]
async fn a_url_without_a_file_is_refused() {
    let dir = tempfile::tempdir().expect("temporary directory");
    std::env::set_current_dir(dir.path()).expect("enter the temporary directory");
    for url in ["sqlite::memory:", "sqlite://", "sqlite://kept.db?mode=memory"] {
        let refused = SqliteStore::open(url, SqliteOptions::default()).await;
        let error = refused.err().unwrap_or_else(|| panic!("{url} was opened"));
        assert!(error.to_string().contains("names no file"), "{url}: {error}");
    }
    assert_eq!(std::fs::read_dir(dir.path()).expect("list").count(), 0);
}

/// Two stores on one file, as two processes would be: SQLite's lock and the writer's check
/// of the chain head on disk keep one chain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_share_one_chain_and_one_duplicate_index() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let url = format!("sqlite://{}", dir.path().join("shared.db").display());
    let first: Arc<dyn Store> = SqliteStore::open(&url, SqliteOptions::default()).await.expect("open");
    let second: Arc<dyn Store> = SqliteStore::open(&url, SqliteOptions::default()).await.expect("open");
    leadrelay_store_conformance::two_nodes_share_one_chain_and_one_duplicate_index(first.clone(), second.clone()).await;
    first.close().await;
    second.close().await;
}
