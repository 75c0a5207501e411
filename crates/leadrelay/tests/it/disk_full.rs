//! A full disk: writes fail with a clear 503 and the node reports itself not ready; once there
//! is room again, the same process takes writes again (no restart), and every lead it
//! acknowledged is there.

use serde_json::{json, Value};

use crate::process::{run, write_config, Server, ADMIN_TOKEN, CONFIG};

/// Files may grow to this many bytes: room for the schema and a few dozen leads.
const FILE_SIZE_LIMIT: u64 = 1_500_000;

async fn submit(client: &reqwest::Client, server: &Server, i: usize) -> (u16, Value) {
    let response = client
        .post(server.url("/api/v1/sources/web/submit"))
        .json(&json!({"email": format!("full-{i}@example.com"), "state": "TX", "notes": "x".repeat(8_000)}))
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

async fn readiness(client: &reqwest::Client, server: &Server) -> (u16, Value) {
    let response = client.get(server.url("/readyz")).send().await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_resume_in_the_same_process_once_the_disk_has_room_again() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), CONFIG);
    assert!(run(dir.path(), &["apply", path.to_str().unwrap()]).status.success());
    let server = Server::start_with_file_size_limit(dir.path(), FILE_SIZE_LIMIT);
    let client = reqwest::Client::new();

    let mut acknowledged = Vec::new();
    let mut refused = None;
    for i in 0..2_000 {
        match submit(&client, &server, i).await {
            (201, body) => acknowledged.push(body["lead_id"].as_str().unwrap().to_owned()),
            other => {
                refused = Some(other);
                break;
            }
        }
    }
    let (status, body) = refused.expect("the file size limit was never reached");
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "storage_unavailable", "{body}");
    assert!(!acknowledged.is_empty());
    let (status, body) = readiness(&client, &server).await;
    assert_eq!(status, 503, "{body}");
    assert!(body["error"].as_str().unwrap().contains("the last write failed"), "{body}");

    server.lift_file_size_limit();
    for i in 10_000..10_005 {
        let (status, body) = submit(&client, &server, i).await;
        assert_eq!(status, 201, "{body}");
        acknowledged.push(body["lead_id"].as_str().unwrap().to_owned());
    }
    let (status, body) = readiness(&client, &server).await;
    assert_eq!(status, 200, "{body}");
    // The configuration takes writes again too.
    let created = client
        .post(server.url("/api/v1/sources"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"id": "late", "flow_id": "solar"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);

    for lead_id in &acknowledged {
        let lead = client.get(server.url(&format!("/api/v1/leads/{lead_id}"))).bearer_auth(ADMIN_TOKEN).send().await;
        assert_eq!(lead.unwrap().status(), 200, "acknowledged lead {lead_id} is missing");
    }
    assert!(server.terminate().success());
    let verify = run(dir.path(), &["verify"]);
    assert!(verify.status.success(), "{}", String::from_utf8_lossy(&verify.stdout));
}
