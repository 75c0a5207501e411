//! The web UI over plain HTTP: signing in, CSRF, escaping of lead data on every page, the
//! register's filters and paging, the configuration editor and the overview. The browser
//! tests (`browser.rs`) drive the same pages in Chromium.

use leadrelay_domain::ids::TokenId;
use leadrelay_server::hash_token;
use leadrelay_store::{NewToken, Role};
use reqwest::header::{COOKIE, LOCATION, SET_COOKIE};
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{solar_config, spawn_app, TestApp, ADMIN_TOKEN};

/// A browser-like client of the web UI: no redirects followed, the session cookie kept by hand
/// (reqwest's cookie store would not send a `Secure` cookie over plain HTTP).
pub struct WebClient {
    client: reqwest::Client,
    base: String,
    cookie: Option<String>,
}

impl WebClient {
    pub fn new(app: &TestApp) -> Self {
        let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().expect("client");
        Self { client, base: app.address.clone(), cookie: None }
    }

    pub async fn sign_in(&mut self, token: &str) -> reqwest::Response {
        let response = self
            .client
            .post(format!("{}/sign-in", self.base))
            .form(&[("token", token), ("next", "/")])
            .send()
            .await
            .expect("sign in");
        if let Some(cookie) = response.headers().get(SET_COOKIE) {
            let cookie = cookie.to_str().expect("cookie").to_owned();
            self.cookie = Some(cookie.split(';').next().expect("cookie pair").to_owned());
        }
        response
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        let mut request = self.client.get(format!("{}{path}", self.base));
        if let Some(cookie) = &self.cookie {
            request = request.header(COOKIE, cookie);
        }
        request.send().await.expect("request")
    }

    /// A page's HTML, which must answer 200.
    pub async fn page(&self, path: &str) -> String {
        let response = self.get(path).await;
        let status = response.status();
        let body = response.text().await.expect("body");
        assert_eq!(status, StatusCode::OK, "GET {path}: {body}");
        body
    }

    pub async fn post(&self, path: &str, form: &[(&str, &str)]) -> reqwest::Response {
        let mut request = self.client.post(format!("{}{path}", self.base)).form(form);
        if let Some(cookie) = &self.cookie {
            request = request.header(COOKIE, cookie);
        }
        request.send().await.expect("request")
    }

    /// The CSRF token a page's forms carry.
    pub async fn csrf(&self) -> String {
        let page = self.page("/config").await;
        let start = page.find("name=\"csrf\" value=\"").expect("a csrf field") + "name=\"csrf\" value=\"".len();
        page[start..start + 64].to_owned()
    }
}

async fn add_token(app: &TestApp, value: &str, role: Role) {
    app.store
        .create_token(NewToken {
            id: TokenId::generate().into_string(),
            name: format!("{}-person", role.as_str()),
            role,
            hash: hash_token(value),
            created_at: 0,
        })
        .await
        .expect("token");
}

#[tokio::test]
async fn pages_need_an_admin_signed_in_with_a_secure_cookie() {
    let app = spawn_app().await;
    let mut web = WebClient::new(&app);

    let response = web.get("/leads/lead_x?a=1").await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert_eq!(response.headers()[LOCATION], "/sign-in?next=%2Fleads%2Flead_x%3Fa%3D1");
    assert!(web.page("/sign-in").await.contains("name=\"token\""));

    let wrong = web.sign_in("not-a-token").await;
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    assert!(wrong.text().await.unwrap().contains("That token is not valid."));

    add_token(&app, "viewer-token-value", Role::Viewer).await;
    let viewer = web.sign_in("viewer-token-value").await;
    assert_eq!(viewer.status(), StatusCode::FORBIDDEN);
    assert!(viewer.text().await.unwrap().contains("needs an admin token"));
    assert!(web.cookie.is_none());

    let signed_in = web.sign_in(ADMIN_TOKEN).await;
    assert_eq!(signed_in.status(), StatusCode::SEE_OTHER);
    let cookie = signed_in.headers()[SET_COOKIE].to_str().unwrap().to_owned();
    for attribute in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(attribute), "{attribute} missing from {cookie}");
    }
    let register = web.get("/").await;
    assert_eq!(register.status(), StatusCode::OK);
    let policy = register.headers()["content-security-policy"].to_str().unwrap().to_owned();
    assert!(policy.contains("script-src 'self'"), "{policy}");
    assert!(register.text().await.unwrap().contains("<h1>Register</h1>"));

    // Signing out needs the form's token, then ends the session.
    assert_eq!(web.post("/sign-out", &[]).await.status(), StatusCode::FORBIDDEN);
    let csrf = web.csrf().await;
    let out = web.post("/sign-out", &[("csrf", &csrf)]).await;
    assert_eq!(out.status(), StatusCode::SEE_OTHER);
    assert!(out.headers()[SET_COOKIE].to_str().unwrap().contains("leadrelay_session=;"));
    app.stop().await;
}

#[tokio::test]
async fn forms_refuse_a_missing_csrf_token_and_other_sites() {
    let app = spawn_app().await;
    app.apply(&solar_config()).await;
    let mut web = WebClient::new(&app);
    web.sign_in(ADMIN_TOKEN).await;
    let csrf = web.csrf().await;

    let forged = web.post("/config", &[("yaml", "flows: []")]).await;
    assert_eq!(forged.status(), StatusCode::FORBIDDEN);
    assert!(forged.text().await.unwrap().contains("CSRF"));
    let wrong = web.post("/config", &[("yaml", "flows: []"), ("csrf", &"0".repeat(64))]).await;
    assert_eq!(wrong.status(), StatusCode::FORBIDDEN);

    let cross_site = web
        .client
        .post(format!("{}/register/resend", web.base))
        .header(COOKIE, web.cookie.as_deref().unwrap())
        .header("origin", "https://evil.example")
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(cross_site.status(), StatusCode::FORBIDDEN);
    // Nothing changed: the flow is still there.
    assert!(web.page("/config").await.contains("Solar quotes"));
    app.stop().await;
}

#[tokio::test]
async fn lead_data_renders_inert_on_every_page() {
    let app = spawn_app().await;
    let mut config = solar_config();
    config["flows"][0]["filters"] = json!([]);
    app.apply(&config).await;
    let script = "<script>alert('x')</script>";
    let image = "<img src=x onerror=alert(1)>";
    let (status, answer) = app
        .submit(
            "web",
            &json!({"email": "ann@example.com", "first_name": script, "state": "TX", "note": image, "<b>odd</b>": image}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    let lead_id = answer["lead_id"].as_str().unwrap().to_owned();
    let transfer = app.transfer(&lead_id, "crm").await;
    let transfer_id = transfer["transfer_id"].as_str().unwrap();

    let mut web = WebClient::new(&app);
    web.sign_in(ADMIN_TOKEN).await;
    let pages = [
        "/".to_owned(),
        format!("/?lead_id={lead_id}"),
        format!("/leads/{lead_id}"),
        format!("/leads/{lead_id}/transfers/{transfer_id}"),
        format!("/leads/{lead_id}/transfers/{transfer_id}?fragment=1"),
        "/register/rows".to_owned(),
        "/not-integrated".to_owned(),
        "/overview".to_owned(),
        "/config".to_owned(),
    ];
    let mut seen_escaped = false;
    for path in &pages {
        let html = web.page(path).await;
        assert!(!html.contains("<script>alert"), "{path} carries a live script tag");
        assert!(!html.contains("<img src=x"), "{path} carries a live img tag");
        assert!(!html.contains("<b>odd"), "{path} carries live markup");
        seen_escaped |= html.contains("&lt;script&gt;alert");
    }
    assert!(seen_escaped, "the payload is shown, escaped, somewhere");
    let lead_page = web.page(&format!("/leads/{lead_id}")).await;
    assert!(lead_page.contains("&lt;img src=x onerror=alert(1)&gt;"), "the lead page shows the field, escaped");

    // An error page that repeats what the URL said escapes it too.
    let response = web.get("/leads/%3Cscript%3Ealert(1)%3C%2Fscript%3E").await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let html = response.text().await.unwrap();
    assert!(!html.contains("<script>alert") && html.contains("&lt;script&gt;"), "{html}");
    app.stop().await;
}

#[tokio::test]
async fn the_register_filters_by_url_and_pages_by_keyset() {
    let app = spawn_app().await;
    app.apply(&solar_config()).await;
    // 60 accepted leads (new, queued) and 3 rejected ones (skip: outside the geo filter).
    for index in 0..60 {
        let (status, _) = app.submit("web", &json!({"email": format!("p{index}@example.com"), "state": "TX"})).await;
        assert_eq!(status, StatusCode::CREATED);
    }
    for index in 0..3 {
        app.submit("web", &json!({"email": format!("ny{index}@example.com"), "state": "NY"})).await;
    }
    let mut web = WebClient::new(&app);
    web.sign_in(ADMIN_TOKEN).await;

    let rows = |html: &str| html.matches("<tr class=\"transfer\"").count();
    let skipped = web.page("/?status=skip&source_id=web").await;
    assert_eq!(rows(&skipped), 3);
    assert!(skipped.contains("<option value=\"skip\" selected>"), "the filter shows what is chosen");
    assert_eq!(rows(&web.page("/?status=error").await), 0);

    let first = web.page("/?status=new").await;
    assert_eq!(rows(&first), 50);
    let older = first.split("class=\"older\" href=\"").nth(1).expect("an older page").split('"').next().unwrap();
    let older = older.replace("&amp;", "&");
    assert!(older.starts_with("/?status=new&cursor="), "{older}");
    let second = web.page(&older).await;
    assert_eq!(rows(&second), 10);
    assert!(!second.contains("data-live"), "older pages do not take live rows");
    assert!(second.contains("← Newest"));

    let bad = web.get("/?status=lost").await;
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    assert!(bad.text().await.unwrap().contains("status"));
    app.stop().await;
}

#[tokio::test]
async fn the_configuration_editor_applies_yaml_or_names_every_problem() {
    let app = spawn_app().await;
    app.apply(&solar_config()).await;
    let mut web = WebClient::new(&app);
    web.sign_in(ADMIN_TOKEN).await;
    let csrf = web.csrf().await;

    let bad = web.post("/config", &[("csrf", &csrf), ("yaml", "flows:\n  - id: x\n    colour: red\n")]).await;
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    let html = bad.text().await.unwrap();
    assert!(html.contains("Nothing was applied") && html.contains("colour"), "{html}");
    assert!(html.contains("colour: red"), "the text stays in the editor");

    let mut config: Value = app.get_json("/api/v1/config").await;
    config["sources"][0]["name"] = json!("Web form (renamed)");
    let yaml = serde_yaml_ng::to_string(&config).unwrap();
    let applied = web.post("/config", &[("csrf", &csrf), ("yaml", &yaml)]).await;
    assert_eq!(applied.status(), StatusCode::SEE_OTHER);
    assert_eq!(applied.headers()[LOCATION], "/config?applied=1");
    assert!(web.page("/config?applied=1").await.contains("Web form (renamed)"));
    assert_eq!(app.get_json("/api/v1/sources/web").await["name"], "Web form (renamed)");
    app.stop().await;
}

#[tokio::test]
async fn the_overview_counts_transfers_by_status_source_and_destination() {
    let app = spawn_app().await;
    app.apply(&solar_config()).await;
    for index in 0..4 {
        app.submit("web", &json!({"email": format!("p{index}@example.com"), "state": "TX"})).await;
    }
    app.submit("web", &json!({"email": "ny@example.com", "state": "NY"})).await;
    let mut web = WebClient::new(&app);
    web.sign_in(ADMIN_TOKEN).await;
    let html = web.page("/overview").await;
    assert!(html.contains("data-total=\"new\">4<"), "{html}");
    assert!(html.contains("data-total=\"skip\">1<"));
    assert!(html.contains("<svg"));
    assert!(html.contains("crm: 4 new"), "per destination");
    assert!(html.contains("web: 4 new") && html.contains("web: 1 skip"), "per source");
    assert_eq!(web.get("/overview?days=0").await.status(), StatusCode::BAD_REQUEST);
    app.stop().await;
}

#[tokio::test]
async fn resend_all_matching_runs_a_job_whose_page_shows_its_progress() {
    let crm = crate::receiver::Receiver::start(vec![crate::receiver::Reply::status(422)]).await;
    let app = crate::helpers::spawn_delivering_app().await;
    let mut config = solar_config();
    config["destinations"][0]["url"] = json!(crm.url("/leads"));
    app.apply(&config).await;
    let mut leads = Vec::new();
    for index in 0..3 {
        let (_, answer) = app.submit("web", &json!({"email": format!("r{index}@example.com"), "state": "TX"})).await;
        leads.push(answer["lead_id"].as_str().unwrap().to_owned());
    }
    for lead in &leads {
        app.timeline_until(lead, "recipient.failed").await;
    }
    let mut web = WebClient::new(&app);
    web.sign_in(ADMIN_TOKEN).await;
    let csrf = web.csrf().await;
    let register = web.page("/?status=error").await;
    assert!(register.contains("Resend all matching"));

    let started = web.post("/register/resend", &[("csrf", &csrf), ("status", "error"), ("source_id", "web")]).await;
    assert_eq!(started.status(), StatusCode::SEE_OTHER);
    let job_page = started.headers()[LOCATION].to_str().unwrap().to_owned();
    assert!(job_page.starts_with("/jobs/job_"), "{job_page}");
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let html = web.page(&job_page).await;
        if html.contains("data-status=\"completed\"") {
            assert!(html.contains("<dd id=\"matched\">3</dd>") && html.contains("<dd id=\"queued\">3</dd>"), "{html}");
            assert!(html.contains("&quot;status&quot;: &quot;error&quot;"), "the page shows the filter");
            break;
        }
        assert!(html.contains("data-refresh"), "a running job's page updates itself");
        assert!(tokio::time::Instant::now() < deadline, "the job did not finish: {html}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // The job queued every error row again: each gets a second attempt.
    crm.wait_for(6).await;
    app.stop().await;
}
