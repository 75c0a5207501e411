//! The commands: `apply`, `verify` (intact and tampered logs), `token create`, `--help`.

use serde_json::{json, Value};

use crate::process::{run, write_config, Server, ADMIN_TOKEN, CONFIG};

fn stdout(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn apply_reports_changes_and_refuses_unknown_keys_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), CONFIG);
    let output = run(dir.path(), &["apply", path.to_str().unwrap()]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(stdout(&output).contains("3 objects changed"), "{}", stdout(&output));
    let again = run(dir.path(), &["apply", path.to_str().unwrap()]);
    assert!(stdout(&again).contains("0 objects changed"), "{}", stdout(&again));

    let bad = write_config(dir.path(), &CONFIG.replace("price: 1.5", "price: 1.5, prise: 2"));
    let output = run(dir.path(), &["apply", bad.to_str().unwrap()]);
    assert!(!output.status.success());
    assert!(stderr(&output).contains("unknown field `prise`"), "{}", stderr(&output));

    let dangling = write_config(dir.path(), &CONFIG.replace("destinations: []", "destinations: [nowhere]"));
    let output = run(dir.path(), &["apply", dangling.to_str().unwrap()]);
    assert!(!output.status.success());
    assert!(stderr(&output).contains("unknown destination \"nowhere\""), "{}", stderr(&output));
    assert_eq!(stderr(&output).matches("unknown destination").count(), 1, "said once: {}", stderr(&output));
}

#[test]
fn apply_with_prune_deletes_what_the_file_leaves_out() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), CONFIG);
    assert!(run(dir.path(), &["apply", path.to_str().unwrap()]).status.success());
    let without_crm = CONFIG.replace("  - {id: crm, url: \"http://127.0.0.1:9/leads\", enabled: false}\n", "");
    assert_ne!(without_crm, CONFIG);
    let smaller = write_config(dir.path(), &without_crm);
    let kept = run(dir.path(), &["apply", smaller.to_str().unwrap()]);
    assert!(
        stdout(&kept).contains("0 objects changed") && stdout(&kept).contains("1 destinations"),
        "{}",
        stdout(&kept)
    );
    let pruned = run(dir.path(), &["apply", "--prune", smaller.to_str().unwrap()]);
    assert!(pruned.status.success(), "{}", stderr(&pruned));
    assert!(
        stdout(&pruned).contains("1 objects changed") && stdout(&pruned).contains("0 destinations"),
        "{}",
        stdout(&pruned)
    );
}

#[test]
fn unknown_database_schemes_are_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let output = std::process::Command::new(crate::process::binary())
        .args(["verify", "--database-url", "mysql://localhost/x"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(stderr(&output).contains("unknown database URL"), "{}", stderr(&output));
    drop(dir);
}

#[test]
fn help_describes_every_command() {
    let output = std::process::Command::new(crate::process::binary()).arg("--help").output().unwrap();
    let text = stdout(&output);
    // Each command's line says what that command does.
    for (command, summary) in [
        ("serve", "Run the HTTP server"),
        ("demo", "local playground"),
        ("apply", "Apply a declarative configuration file"),
        ("events", "Print events of the log"),
        ("export", "Write every matching event"),
        ("verify", "Check the event log's hash chain"),
        ("token", "Manage API tokens"),
    ] {
        let line = text.lines().find(|line| line.trim_start().starts_with(&format!("{command} ")));
        assert!(
            line.is_some_and(|line| line.contains(summary)),
            "--help should describe {command} as {summary:?}: {text}"
        );
    }
    let serve = std::process::Command::new(crate::process::binary()).args(["serve", "--help"]).output().unwrap();
    for flag in ["--listen", "--database-url", "--config", "--allow-private-destinations"] {
        assert!(stdout(&serve).contains(flag), "serve --help lacks {flag}");
    }
}

#[tokio::test]
async fn token_create_prints_a_working_token() {
    let dir = tempfile::tempdir().unwrap();
    let output = run(dir.path(), &["token", "create", "--name", "ops"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let token = stdout(&output).trim().to_owned();
    assert!(token.starts_with("lr_"));
    assert!(stderr(&output).contains("created a new database at"), "a new file is announced: {}", stderr(&output));
    let again = run(dir.path(), &["token", "create", "--name", "second"]);
    assert!(again.status.success() && !stderr(&again).contains("created"), "{}", stderr(&again));
    let server = Server::start(dir.path());
    let client = reqwest::Client::new();
    let response = client.get(server.url("/api/v1/tokens")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert!(!body.to_string().contains(&token), "the token's value is not stored or shown");
    let bad_role = run(dir.path(), &["token", "create", "--role", "king"]);
    assert!(!bad_role.status.success());
    let no_name = run(dir.path(), &["token", "create", "--name", " "]);
    assert!(!no_name.status.success() && stderr(&no_name).contains("--name"), "{}", stderr(&no_name));
}

/// Submits a few leads through a real server, then stops it.
async fn seed(dir: &std::path::Path, count: usize) {
    let path = write_config(dir, CONFIG);
    assert!(run(dir, &["apply", path.to_str().unwrap()]).status.success());
    let server = Server::start(dir);
    let client = reqwest::Client::new();
    for i in 0..count {
        let response = client
            .post(server.url("/api/v1/sources/web/submit"))
            .json(&json!({"email": format!("v{i}@example.com"), "state": if i % 2 == 0 { "TX" } else { "NY" }}))
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success());
    }
    let _ = client.get(server.url("/healthz")).bearer_auth(ADMIN_TOKEN).send().await;
    server.kill();
}

async fn tamper(dir: &std::path::Path, sql: &str) {
    use sqlx::ConnectOptions;
    let options: sqlx::sqlite::SqliteConnectOptions = crate::process::database_url(dir).parse().unwrap();
    let mut connection = options.connect().await.unwrap();
    sqlx::query(sql).execute(&mut connection).await.unwrap();
}

async fn event_id_at(dir: &std::path::Path, seq: i64) -> String {
    use sqlx::{ConnectOptions, Row};
    let options: sqlx::sqlite::SqliteConnectOptions = crate::process::database_url(dir).parse().unwrap();
    let mut connection = options.connect().await.unwrap();
    sqlx::query("SELECT id FROM events WHERE seq = ?").bind(seq).fetch_one(&mut connection).await.unwrap().get(0)
}

#[tokio::test]
async fn verify_passes_an_intact_log_and_names_the_first_changed_event() {
    let dir = tempfile::tempdir().unwrap();
    seed(dir.path(), 6).await;
    let output = run(dir.path(), &["verify"]);
    assert!(output.status.success(), "{}{}", stdout(&output), stderr(&output));
    assert!(stdout(&output).starts_with("OK"), "{}", stdout(&output));

    let changed = event_id_at(dir.path(), 7).await;
    tamper(dir.path(), "UPDATE events SET reason = 'nothing to see' WHERE seq = 7").await;
    let output = run(dir.path(), &["verify"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(stdout(&output).contains(&changed), "{}", stdout(&output));
}

#[tokio::test]
async fn a_new_admin_token_value_replaces_the_one_before() {
    let dir = tempfile::tempdir().unwrap();
    let client = reqwest::Client::new();
    let status =
        |server: &Server, token: &'static str| client.get(server.url("/api/v1/tokens")).bearer_auth(token).send();
    let server = Server::start(dir.path());
    assert_eq!(status(&server, ADMIN_TOKEN).await.unwrap().status(), 200);
    assert!(server.terminate().success());
    let rotated = "a-rotated-admin-token-value-0123";
    let server = Server::start_with_admin_token(dir.path(), rotated);
    assert_eq!(status(&server, rotated).await.unwrap().status(), 200);
    assert_eq!(status(&server, ADMIN_TOKEN).await.unwrap().status(), 401, "the old value is revoked");
    let tokens: serde_json::Value = status(&server, rotated).await.unwrap().json().await.unwrap();
    assert_eq!(tokens["items"].as_array().unwrap().len(), 1, "{tokens}");
    assert!(server.terminate().success());
}

#[test]
fn in_memory_and_pathless_sqlite_urls_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    for url in ["sqlite:", "sqlite://", "sqlite::memory:"] {
        for command in [&["token", "create", "--name", "x"][..], &["verify"], &["apply", "-"]] {
            let output = crate::process::run_on(url, dir.path(), command);
            assert_eq!(output.status.code(), Some(1), "{url} {command:?}: {}", stdout(&output));
            assert!(stderr(&output).contains("names no database file"), "{url} {command:?}: {}", stderr(&output));
            assert!(stdout(&output).is_empty(), "{url} {command:?}: no token is printed");
        }
    }
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "no file was created");
}

#[tokio::test]
async fn reading_commands_refuse_a_postgres_database_leadrelay_never_set_up() {
    let database = leadrelay_store_conformance::postgres::TestDatabase::create().await;
    let dir = tempfile::tempdir().unwrap();
    // A password given as a parameter never shows in what is printed.
    let url = format!("{}?password=QuerySecretPw", database.url);
    for command in [&["verify"][..], &["events"], &["export", "--format", "ndjson"]] {
        let output = crate::process::run_on(&url, dir.path(), command);
        assert_eq!(output.status.code(), Some(1), "{command:?}: {}", stdout(&output));
        assert!(stderr(&output).contains("holds no leadrelay database"), "{command:?}: {}", stderr(&output));
        assert!(stderr(&output).contains("password=***"), "{command:?}: {}", stderr(&output));
        assert!(!stderr(&output).contains("QuerySecretPw"), "{command:?}: {}", stderr(&output));
    }
    // Nothing was created in it: once set up (by apply), the same commands read it.
    let output = crate::process::run_on(&url, dir.path(), &["verify"]);
    assert!(!output.status.success());
    let config = write_config(dir.path(), CONFIG);
    assert!(crate::process::run_on(&url, dir.path(), &["apply", config.to_str().unwrap()]).status.success());
    let output = crate::process::run_on(&url, dir.path(), &["verify"]);
    assert!(output.status.success(), "{}", stderr(&output));
    database.drop().await;
}

#[test]
fn reading_commands_refuse_a_database_that_does_not_exist() {
    let dir = tempfile::tempdir().unwrap();
    for command in [&["verify"][..], &["events"], &["export", "--format", "ndjson"]] {
        let output = run(dir.path(), command);
        assert_eq!(output.status.code(), Some(1), "{command:?}: {}", stdout(&output));
        assert!(stderr(&output).contains("no database at"), "{command:?}: {}", stderr(&output));
    }
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "no file was created");
}

#[tokio::test]
async fn verify_detects_changed_snapshots_and_removed_events() {
    let dir = tempfile::tempdir().unwrap();
    seed(dir.path(), 4).await;
    // The first lead's events 1-3 share a snapshot; `flow.completed` (event 4) has its own.
    let changed = event_id_at(dir.path(), 4).await;
    tamper(
        dir.path(),
        "UPDATE snapshots SET body = replace(body, 'example.com', 'evil.com') WHERE id = (SELECT snapshot_id FROM events WHERE seq = 4)",
    )
    .await;
    let output = run(dir.path(), &["verify"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(stdout(&output).contains(&changed), "{}", stdout(&output));

    let missing = verify_a_tampered_log("DELETE FROM events WHERE seq = 5").await;
    assert!(missing.contains("missing"), "{missing}");
    let last_removed = verify_a_tampered_log("DELETE FROM events WHERE seq = (SELECT MAX(seq) FROM events)").await;
    assert!(last_removed.contains("removed from the end"), "{last_removed}");
    // A changed head is named as such, not as events removed.
    let head_changed = verify_a_tampered_log("UPDATE chain_head SET hash = zeroblob(32)").await;
    assert!(head_changed.contains("the chain head was changed"), "{head_changed}");
    assert!(!head_changed.contains("removed"), "{head_changed}");
}

/// What `verify` prints of a log of four leads changed by `sql`; it must exit 1.
async fn verify_a_tampered_log(sql: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    seed(dir.path(), 4).await;
    tamper(dir.path(), sql).await;
    let output = run(dir.path(), &["verify"]);
    assert_eq!(output.status.code(), Some(1), "{sql}: {}", stdout(&output));
    stdout(&output)
}

#[tokio::test]
async fn serve_applies_its_config_file_and_exits_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), CONFIG);
    let server = Server::start_with(dir.path(), &["--config", path.to_str().unwrap()]);
    let client = reqwest::Client::new();
    let response = client
        .post(server.url("/api/v1/sources/web/submit"))
        .json(&json!({"email": "term@example.com", "state": "TX"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let status = server.terminate();
    assert!(status.success(), "serve exited with {status:?} after SIGTERM");
    let output = run(dir.path(), &["verify"]);
    assert!(output.status.success(), "{}", stdout(&output));
    assert!(stdout(&output).contains("4 events verified"), "{}", stdout(&output));
}

#[test]
fn sigterm_the_moment_serve_says_it_listens_still_stops_it_cleanly() {
    // A supervisor (or a script) may stop the server as soon as it has announced its address:
    // the signal handlers are in place before that line, so the default action never kills it.
    let dir = tempfile::tempdir().unwrap();
    for round in 0..30 {
        let status = Server::start(dir.path()).terminate();
        assert!(status.success(), "round {round}: serve exited with {status:?}");
    }
}

#[tokio::test]
async fn a_running_server_takes_up_what_apply_changes_in_its_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), CONFIG);
    assert!(run(dir.path(), &["apply", path.to_str().unwrap()]).status.success());
    let server = Server::start(dir.path());
    let client = reqwest::Client::new();
    let submit = || {
        client
            .post(server.url("/api/v1/sources/partner/submit"))
            .json(&json!({"email": "p@example.com", "state": "TX"}))
    };
    assert_eq!(submit().send().await.unwrap().status(), 404, "no such source yet");

    let more = CONFIG.replace(
        "sources:\n  - {id: web, flow_id: solar, price: 1.5}",
        "sources:\n  - {id: web, flow_id: solar, price: 1.5}\n  - {id: partner, flow_id: solar}",
    );
    assert_ne!(more, CONFIG);
    let path = write_config(dir.path(), &more);
    let output = run(dir.path(), &["apply", path.to_str().unwrap()]);
    assert!(output.status.success(), "{}", stderr(&output));
    // At once: a source the server does not know is looked for in the file before a 404.
    assert_eq!(submit().send().await.unwrap().status(), 201, "the new source takes leads at once");
    let admin = |path: &str| client.get(server.url(path)).bearer_auth(ADMIN_TOKEN).send();
    assert_eq!(admin("/api/v1/sources/partner").await.unwrap().status(), 200);

    // A change to a known object is read by the admin API at once too, and by intake within
    // the quarter second the server takes to notice it.
    let renamed = more.replace("{id: partner, flow_id: solar}", "{id: partner, name: Partner Two, flow_id: solar}");
    let path = write_config(dir.path(), &renamed);
    assert!(run(dir.path(), &["apply", path.to_str().unwrap()]).status.success());
    let source: serde_json::Value = admin("/api/v1/sources/partner").await.unwrap().json().await.unwrap();
    assert_eq!(source["name"], "Partner Two");
    server.kill();
}

#[tokio::test]
async fn verify_refuses_content_marked_erased_without_a_recorded_erasure() {
    let dir = tempfile::tempdir().unwrap();
    seed(dir.path(), 2).await;
    let forged = event_id_at(dir.path(), 2).await;
    tamper(dir.path(), "UPDATE events SET erased = 1, data = '{\"forged\":1}' WHERE seq = 2").await;
    let output = run(dir.path(), &["verify"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(stdout(&output).contains(&forged), "{}", stdout(&output));
    assert!(stdout(&output).contains("no lead.erased event"), "{}", stdout(&output));
}

#[tokio::test]
async fn events_and_export_commands_read_the_log() {
    let dir = tempfile::tempdir().unwrap();
    seed(dir.path(), 4).await;
    let output = run(dir.path(), &["events", "--type", "source.submitted", "--limit", "3"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let lines: Vec<Value> = stdout(&output).lines().map(|line| serde_json::from_str(line).unwrap()).collect();
    assert_eq!(lines.len(), 3);
    assert!(lines.iter().all(|event| event["type"] == "source.submitted"));
    assert!(stderr(&output).contains("--cursor "), "a further page is announced: {}", stderr(&output));

    let output = run(dir.path(), &["export"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let lines: Vec<Value> = stdout(&output).lines().map(|line| serde_json::from_str(line).unwrap()).collect();
    assert_eq!(lines.len(), 16, "4 leads of 4 events each");
    assert_eq!(lines[0]["type"], "source.submitted", "oldest first");

    let csv_path = dir.path().join("events.csv");
    let output = run(dir.path(), &["export", "--format", "csv", "--status", "skip", "-o", csv_path.to_str().unwrap()]);
    assert!(output.status.success(), "{}", stderr(&output));
    let text = std::fs::read_to_string(&csv_path).unwrap();
    assert!(text.starts_with("id,type,timestamp,"), "{text}");
    assert_eq!(text.lines().count(), 1 + 2, "two filtered leads have one skip event each");

    // The API's rules, include and exclude, on the command line.
    let rules = r#"{"all":[{"field":"lead.state","op":"eq","value":"TX"},{"field":"type","op":"eq","value":"source.accepted"}]}"#;
    let output = run(dir.path(), &["export", "--rules", rules, "--include", "id,type,lead_id"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let lines: Vec<Value> = stdout(&output).lines().map(|line| serde_json::from_str(line).unwrap()).collect();
    assert!(!lines.is_empty() && lines.iter().all(|event| event.as_object().unwrap().len() == 3), "{lines:?}");
    let output = run(dir.path(), &["events", "--exclude", "lead,data", "--limit", "1"]);
    let line: Value = serde_json::from_str(stdout(&output).lines().next().unwrap()).unwrap();
    assert!(line.get("lead").is_none() && line.get("data").is_none() && line.get("type").is_some(), "{line}");

    for bad in [
        &["events", "--type", "lead.exploded"][..],
        &["events", "--limit", "0"],
        &["export", "--format", "xml"],
        &["events", "--start", "soon"],
        &["events", "--rules", r#"{"all":[{"field":"state","op":"eq","value":"TX"}]}"#],
        &["export", "--include", "id,colour"],
    ] {
        let output = run(dir.path(), bad);
        assert!(!output.status.success(), "{bad:?} should fail");
        assert!(stderr(&output).contains("--"), "{bad:?}: {}", stderr(&output));
    }
}
