//! `leadrelay demo`: one command gives a server with sample configuration, stand-in
//! destinations and a stream of leads whose transfers end in every status.

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::process::binary;

#[tokio::test]
async fn the_demo_fills_the_register_and_stops_cleanly() {
    let mut child = Command::new(binary())
        .args(["demo", "--listen", "127.0.0.1:0", "--rate", "40"])
        .env("LEADRELAY_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn demo");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut address = None;
    let mut token = None;
    let mut database = None;
    for line in lines.by_ref() {
        let line = line.expect("a line of output");
        if let Some(rest) = line.strip_prefix("leadrelay demo listening on ") {
            address = Some(rest.trim().to_owned());
        } else if let Some(rest) = line.trim().strip_prefix("Token") {
            token = Some(rest.trim().to_owned());
        } else if let Some(rest) = line.strip_prefix("Data: ") {
            database = Some(rest.split(" (").next().unwrap_or_default().to_owned());
        } else if line.starts_with("Press Ctrl-C") {
            break;
        }
    }
    let (address, token, database) = (address.expect("the URL"), token.expect("a token"), database.expect("the file"));
    assert!(token.starts_with("lr_"), "{token}");
    assert!(std::path::Path::new(&database).exists(), "{database}");

    let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let sign_in = client.get(format!("{address}/")).send().await.unwrap();
    assert_eq!(sign_in.status(), reqwest::StatusCode::SEE_OTHER, "the web UI asks to sign in");

    // Leads keep arriving; wait until the register holds delivered, refused and skipped transfers.
    let wanted: HashSet<&str> = ["success", "error", "skip"].into();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let page: serde_json::Value = client
            .get(format!("{address}/api/v1/register?limit=1000"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let items = page["items"].as_array().cloned().unwrap_or_default();
        let seen: HashSet<&str> = items.iter().filter_map(|item| item["status"].as_str()).collect();
        let destinations: HashSet<&str> = items.iter().filter_map(|item| item["destination_id"].as_str()).collect();
        if wanted.is_subset(&seen) && destinations.contains("crm") && destinations.contains("buyer") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "statuses seen so far: {seen:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let pid = child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let status = child.wait().expect("wait");
    assert!(status.success(), "{status}");
    assert!(!std::path::Path::new(&database).exists(), "the demo's database is removed on exit");
}
