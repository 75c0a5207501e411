//! The web UI in a real browser: headless Chromium driven over WebDriver (chromedriver) by
//! fantoccini. Sign in, filter the register, open a row's JSON, resend an error row and watch
//! it turn Success without a reload, follow a lead to its timeline, and check that lead data
//! holding markup stays inert. Screenshots land in `target/ui-screenshots/` (or
//! `LEADRELAY_SCREENSHOTS`).
//!
//! Needs Debian's `chromium` and `chromium-driver` (`.ci/run` installs them); `CHROMIUM` and
//! `CHROMEDRIVER` name other binaries.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

use crate::helpers::{delivering_settings, solar_config, spawn_app_with, TestApp, ADMIN_TOKEN};
use crate::receiver::{Receiver, Reply};

/// How long the browser may take to show what the test waits for.
const PATIENCE: Duration = Duration::from_secs(30);

struct Driver {
    process: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

fn program(variable: &str, default: &str) -> String {
    let program = std::env::var(variable).unwrap_or_else(|_| default.to_owned());
    assert!(
        std::path::Path::new(&program).exists(),
        "{program} is missing: install Debian's chromium and chromium-driver (`apt-get install chromium chromium-driver`, \
         as .ci/run does), or set {variable}"
    );
    program
}

/// Starts chromedriver on a free port and waits for the line that says it is ready.
fn start_driver() -> Driver {
    let chromedriver = program("CHROMEDRIVER", "/usr/bin/chromedriver");
    let port =
        std::net::TcpListener::bind("127.0.0.1:0").and_then(|socket| socket.local_addr()).expect("a free port").port();
    let mut process = Command::new(chromedriver)
        .args([format!("--port={port}"), "--allowed-ips=127.0.0.1".to_owned()])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start chromedriver");
    let stdout = process.stdout.take().expect("chromedriver's output");
    let mut lines = BufReader::new(stdout).lines();
    loop {
        match lines.next() {
            Some(Ok(line)) if line.contains("started successfully") => break,
            Some(Ok(_)) => continue,
            other => panic!("chromedriver did not start: {other:?}"),
        }
    }
    // Keep reading its output so that it never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Driver { process, url: format!("http://127.0.0.1:{port}") }
}

async fn open_browser(driver: &Driver) -> Client {
    let chromium = program("CHROMIUM", "/usr/bin/chromium");
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".to_owned(),
        json!({
            "binary": chromium,
            "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                     "--no-first-run", "--disable-dev-shm-usage", "--window-size=1440,1000"]
        }),
    );
    // chromedriver listens on plain HTTP on 127.0.0.1: no TLS connector is needed.
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(capabilities)
        .connect(&driver.url)
        .await
        .expect("a Chromium session")
}

fn screenshots() -> PathBuf {
    let folder = std::env::var_os("LEADRELAY_SCREENSHOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/ui-screenshots"));
    std::fs::create_dir_all(&folder).expect("the screenshots folder");
    folder
}

async fn screenshot(browser: &Client, name: &str) {
    let png = browser.screenshot().await.expect("a screenshot");
    std::fs::write(screenshots().join(name), png).expect("save the screenshot");
}

/// Waits until an element matching `css` is on the page. A page that is still navigating
/// (after a click that submits a form) answers with an error rather than "no such element",
/// so every error is a reason to look again until the deadline.
async fn wait_for(browser: &Client, css: &str) -> fantoccini::elements::Element {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        match browser.find(Locator::Css(css)).await {
            Ok(element) => return element,
            Err(error) if tokio::time::Instant::now() >= deadline => {
                let url = browser.current_url().await.map(|url| url.to_string()).unwrap_or_default();
                let source = browser.source().await.unwrap_or_default();
                panic!("{css} did not appear on {url}: {error}\n{source}");
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

async fn rows(browser: &Client) -> Vec<(String, String)> {
    let mut found = Vec::new();
    for row in browser.find_all(Locator::Css("#register tbody tr.transfer")).await.expect("rows") {
        let id = row.attr("data-id").await.expect("id").unwrap_or_default();
        let status = row.attr("data-status").await.expect("status").unwrap_or_default();
        found.push((id, status));
    }
    found
}

/// Nothing any page rendered ran: the payloads would set `window.__xss`.
async fn assert_inert(browser: &Client) {
    let ran = browser.execute("return typeof window.__xss;", vec![]).await.expect("script");
    assert_eq!(ran, json!("undefined"), "a payload ran on {:?}", browser.current_url().await.ok());
    assert!(browser.get_alert_text().await.is_err(), "an alert is open");
}

async fn submit(app: &TestApp, source: &str, fields: Value) -> String {
    let (status, answer) = app.submit(source, &fields).await;
    assert!(status.is_success(), "{answer}");
    answer["lead_id"].as_str().expect("lead id").to_owned()
}

async fn transfer_id(app: &TestApp, lead_id: &str) -> String {
    let page = app.get_json(&format!("/api/v1/register?lead_id={lead_id}")).await;
    page["items"][0]["transfer_id"].as_str().expect("a transfer").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_works_the_register_in_a_browser() {
    // The CRM refuses the first lead (a business failure: not retried), then accepts.
    let crm =
        Receiver::start(vec![Reply::status(422).body("{\"error\":\"unknown product\"}"), Reply::status(200)]).await;
    let app = spawn_app_with(delivering_settings(leadrelay_delivery::guard::EgressPolicy::allow_private())).await;
    let mut config = solar_config();
    config["destinations"][0]["url"] = json!(crm.url("/leads"));
    config["sources"].as_array_mut().unwrap().push(json!({"id": "partner", "name": "Partner", "flow_id": "solar"}));
    app.apply(&config).await;

    let refused = submit(&app, "web", json!({"email": "ann@example.com", "state": "TX", "first_name": "Ann"})).await;
    crm.wait_for(1).await;
    app.timeline_until(&refused, "recipient.failed").await;
    let delivered = submit(&app, "partner", json!({"email": "bob@example.com", "state": "CA"})).await;
    crm.wait_for(2).await;
    app.timeline_until(&delivered, "recipient.delivered").await;
    let skipped = submit(&app, "web", json!({"email": "cy@example.com", "state": "NY"})).await;
    let hostile = submit(
        &app,
        "web",
        json!({"email": "dee@example.com", "state": "TX", "first_name": "<script>window.__xss=1</script>",
               "note": "<img src=x onerror=\"window.__xss=2\">"}),
    )
    .await;
    crm.wait_for(3).await;
    app.timeline_until(&hostile, "recipient.delivered").await;
    let refused_transfer = transfer_id(&app, &refused).await;

    let driver = start_driver();
    let browser = open_browser(&driver).await;

    // Signing in: the register asks for a token first, then comes back.
    browser.goto(&app.url("/")).await.expect("open the register");
    wait_for(&browser, "input[name=token]").await.send_keys(ADMIN_TOKEN).await.expect("type the token");
    browser.find(Locator::Css("section.sign-in button[type=submit]")).await.unwrap().click().await.unwrap();
    wait_for(&browser, "#register").await;
    assert_eq!(rows(&browser).await.len(), 4, "four transfers: refused, delivered, skipped and hostile");
    assert_inert(&browser).await;
    screenshot(&browser, "register.png").await;

    // Filtering by status and by source, through the filter bar; the filters live in the URL.
    browser.find(Locator::Css("select[name=status]")).await.unwrap().select_by_value("error").await.unwrap();
    browser.find(Locator::Css("form.filters button[type=submit]")).await.unwrap().click().await.unwrap();
    wait_for(&browser, "select[name=status] option[value=error][selected]").await;
    assert!(browser.current_url().await.unwrap().query().unwrap_or("").contains("status=error"));
    assert_eq!(rows(&browser).await, vec![(refused_transfer.clone(), "error".to_owned())]);
    browser.find(Locator::Css("select[name=status]")).await.unwrap().select_by_value("").await.unwrap();
    browser.find(Locator::Css("select[name=source_id]")).await.unwrap().select_by_value("partner").await.unwrap();
    browser.find(Locator::Css("form.filters button[type=submit]")).await.unwrap().click().await.unwrap();
    wait_for(&browser, "select[name=source_id] option[value=partner][selected]").await;
    let partner_rows = rows(&browser).await;
    assert_eq!(partner_rows.len(), 1);
    assert_eq!(partner_rows[0].1, "success");

    // A row opens to its JSON: the lead as received and the events.
    browser.goto(&app.url("/")).await.unwrap();
    let toggle = format!("tr.transfer[data-id='{refused_transfer}'] a.json-toggle");
    wait_for(&browser, &toggle).await.click().await.unwrap();
    let detail = wait_for(&browser, "tr.detail .transfer-json").await;
    let text = detail.text().await.unwrap();
    assert!(text.contains("Lead as received") && text.contains("ann@example.com"), "{text}");
    assert!(text.contains("recipient.failed"), "{text}");

    // Resending the error row: the page comes back, and the row turns Success by itself.
    browser.goto(&app.url("/")).await.unwrap();
    wait_for(&browser, &format!("tr.transfer[data-id='{refused_transfer}'] button.resend"))
        .await
        .click()
        .await
        .unwrap();
    wait_for(&browser, &format!("tr.transfer[data-id='{refused_transfer}']:not([data-status=error])")).await;
    wait_for(&browser, &format!("tr.transfer[data-id='{refused_transfer}'][data-status=success]")).await;
    assert_eq!(crm.received().len(), 4, "the resend reached the CRM");

    // New leads arrive on the open register without a reload.
    let late = submit(&app, "web", json!({"email": "eve@example.com", "state": "TX"})).await;
    let late_transfer = transfer_id(&app, &late).await;
    wait_for(&browser, &format!("tr.transfer[data-id='{late_transfer}']")).await;

    // Following the lead to its timeline.
    browser
        .find(Locator::Css(&format!("tr.transfer[data-id='{refused_transfer}'] a.lead")))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_for(&browser, "ol.timeline").await;
    assert!(browser.current_url().await.unwrap().path().ends_with(&refused));
    let mut types = Vec::new();
    for event in browser.find_all(Locator::Css("ol.timeline li.event")).await.unwrap() {
        types.push(event.attr("data-type").await.unwrap().unwrap_or_default());
    }
    for expected in
        ["source.submitted", "source.accepted", "recipient.failed", "delivery.resent", "recipient.delivered"]
    {
        assert!(types.iter().any(|kind| kind == expected), "{expected} missing from {types:?}");
    }
    let response = browser.find(Locator::Css("li.event[data-type='recipient.failed'] details.response")).await.unwrap();
    assert!(response.text().await.unwrap().contains("unknown product"), "the CRM's answer is on the timeline");
    screenshot(&browser, "lead.png").await;

    // Markup in lead data is shown as text on every page, and never runs.
    for path in [
        "/".to_owned(),
        format!("/leads/{hostile}"),
        format!("/leads/{skipped}"),
        "/not-integrated".to_owned(),
        "/overview".to_owned(),
        "/config".to_owned(),
    ] {
        browser.goto(&app.url(&path)).await.unwrap();
        wait_for(&browser, "main").await;
        assert_inert(&browser).await;
    }
    browser.goto(&app.url(&format!("/leads/{hostile}"))).await.unwrap();
    let snapshot = wait_for(&browser, "details.current pre.json").await;
    let shown = snapshot.prop("textContent").await.unwrap().unwrap_or_default();
    assert!(shown.contains("<script>window.__xss=1</script>"), "the payload is shown as text: {shown}");
    browser.goto(&app.url("/overview")).await.unwrap();
    wait_for(&browser, "svg.chart").await;
    screenshot(&browser, "overview.png").await;

    browser.close().await.expect("close the browser");
    app.stop().await;
}
