//! Intake: bodies, keys, limits, idempotency and the answer contract.

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{error_code, solar_config, spawn_app, spawn_app_with};

fn good_lead() -> Value {
    json!({"email": "jo@example.com", "phone": "+1 512 555 0134", "first_name": "Jo Smith", "state": "TX"})
}

#[tokio::test]
async fn json_submission_is_accepted_with_the_contract_answer() {
    let app = spawn_app().await;
    app.apply(&solar_config()).await;
    let (status, answer) = app.submit("web", &good_lead()).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(answer["outcome"], "success");
    assert!(answer["lead_id"].as_str().unwrap().starts_with("lead_"));
    assert_eq!(answer["reason"], Value::Null);
    assert_eq!(answer["price"], 2.5);
    assert_eq!(answer["deliveries"], json!([]));
    let lead = app.lead_of(&answer).await;
    assert_eq!(lead["cost"], 2.5);
    assert_eq!(lead["state"]["value"], "TX");
    app.stop().await;
}

#[tokio::test]
async fn a_json_object_labelled_as_a_form_or_unlabelled_is_read_as_json() {
    let app = spawn_app().await;
    app.apply(&solar_config()).await;
    // What `curl -d '{…}'` sends, and a bare body with no content type.
    for (content_type, email) in
        [(Some("application/x-www-form-urlencoded"), "curl@example.com"), (None, "bare@example.com")]
    {
        let body = json!({"email": email, "state": "TX"}).to_string();
        let mut request = app.client.post(app.url("/api/v1/sources/web/submit")).body(body);
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), StatusCode::CREATED, "{content_type:?}");
        let answer: Value = response.json().await.unwrap();
        let lead = app.lead_of(&answer).await;
        assert_eq!(lead["email"]["value"], email, "{content_type:?}: {lead}");
        assert_eq!(lead["state"]["value"], "TX");
    }
    app.stop().await;
}

#[tokio::test]
async fn a_landing_page_on_another_origin_may_submit_from_the_browser() {
    let app = spawn_app().await;
    app.apply(&solar_config()).await;
    let url = app.url("/api/v1/sources/web/submit");
    let preflight = app
        .client
        .request(reqwest::Method::OPTIONS, &url)
        .header("origin", "https://landing.example.com")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "content-type, idempotency-key")
        .send()
        .await
        .unwrap();
    assert!(preflight.status().is_success(), "{}", preflight.status());
    assert_eq!(preflight.headers()["access-control-allow-origin"], "*");
    let allowed = preflight.headers()["access-control-allow-headers"].to_str().unwrap().to_ascii_lowercase();
    assert!(allowed.contains("idempotency-key") && allowed.contains("content-type"), "{allowed}");
    let submitted = app
        .client
        .post(&url)
        .header("origin", "https://landing.example.com")
        .json(&json!({"email": "browser@example.com", "state": "TX"}))
        .send()
        .await
        .unwrap();
    assert_eq!(submitted.status(), StatusCode::CREATED);
    assert_eq!(submitted.headers()["access-control-allow-origin"], "*");
    // The admin API is not opened to other origins.
    let admin = app.client.get(app.url("/api/v1/events")).header("origin", "https://landing.example.com").send().await;
    assert!(admin.unwrap().headers().get("access-control-allow-origin").is_none());
    app.stop().await;
}

#[tokio::test]
async fn forms_and_query_strings_are_read_in_their_charset() {
    let app = spawn_app().await;
    let mut config = solar_config();
    config["flows"][0]["fields"].as_array_mut().unwrap().push(json!({"name": "city", "type": "text"}));
    app.apply(&config).await;
    let post = |content_type: &'static str, body: &'static str| {
        app.client.post(app.url("/api/v1/sources/web/submit")).header("content-type", content_type).body(body).send()
    };
    // A labelled Latin-1 form, an unlabelled one (browsers send a legacy page's encoding and
    // say nothing), a UTF-8 one, and a Latin-1 query string.
    let answers = [
        post(
            "application/x-www-form-urlencoded; charset=ISO-8859-1",
            "email=a%40example.com&state=TX&first_name=Jos%E9&city=S%E3o+Paulo",
        )
        .await
        .unwrap(),
        post("application/x-www-form-urlencoded", "email=b%40example.com&state=TX&first_name=Jos%E9&city=S%E3o+Paulo")
            .await
            .unwrap(),
        post(
            "application/x-www-form-urlencoded; charset=utf-8",
            "email=c%40example.com&state=TX&first_name=Jos%C3%A9&city=S%C3%A3o+Paulo",
        )
        .await
        .unwrap(),
        app.client
            .get(
                app.url("/api/v1/sources/web/submit?email=d%40example.com&state=TX&first_name=Jos%E9&city=S%E3o+Paulo"),
            )
            .send()
            .await
            .unwrap(),
    ];
    for response in answers {
        assert_eq!(response.status(), StatusCode::CREATED);
        let answer: Value = response.json().await.unwrap();
        let lead = app.lead_of(&answer).await;
        assert_eq!(
            (lead["first_name"]["raw"].as_str(), lead["city"]["raw"].as_str()),
            (Some("José"), Some("São Paulo")),
            "{lead}"
        );
    }
    // Unknown, or known only to decode everything as a replacement character.
    for content_type in [
        "application/x-www-form-urlencoded; charset=klingon",
        "application/x-www-form-urlencoded; charset=iso-2022-kr",
        "application/x-www-form-urlencoded; charset=utf-16",
    ] {
        let refused = post(content_type, "email=e%40example.com").await.unwrap();
        assert_eq!(error_code(refused).await.0, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{content_type}");
    }
    app.stop().await;
}

#[tokio::test]
async fn numbers_a_double_cannot_hold_are_kept_as_written() {
    let app = spawn_app().await;
    app.apply(&solar_config()).await;
    let body = r#"{"email": "big@example.com", "state": "TX", "account": 98765432109876543210987,
        "ratio": 1e400, "precise": 0.12345678901234567890, "plain": 1.5, "count": 42, "small": 1e5,
        "nested": {"id": 123456789012345678901}, "list": [1, 18446744073709551616]}"#;
    let response = app.submit_raw("web", "application/json", body).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let answer: Value = response.json().await.unwrap();
    let lead = app.lead_of(&answer).await;
    assert_eq!(lead["account"]["raw"], "98765432109876543210987");
    assert_eq!(lead["ratio"]["raw"], "1e400");
    assert_eq!(lead["precise"]["raw"], "0.12345678901234567890");
    // Numbers a double holds read as before.
    assert_eq!(lead["plain"]["raw"], "1.5");
    assert_eq!(lead["count"]["raw"], "42");
    assert_eq!(lead["small"]["raw"], "100000.0");
    assert_eq!(lead["nested"]["raw"], json!({"id": "123456789012345678901"}));
    assert_eq!(lead["list"]["raw"], json!([1, "18446744073709551616"]));
    app.stop().await;
}

#[tokio::test]
async fn multipart_form_data_is_read_as_a_form() {
    let app = spawn_app().await;
    app.apply(&solar_config()).await;
    let post = |body: String| app.submit_raw("web", "multipart/form-data; boundary=----formdata7MA4YWxk", body);
    let part = |name: &str, value: &str| {
        format!("------formdata7MA4YWxk\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n")
    };
    // What `fetch(url, {body: new FormData(form)})` sends, with a file input left empty.
    let empty_file = "------formdata7MA4YWxk\r\nContent-Disposition: form-data; name=\"resume\"; filename=\"\"\r\n\
                      Content-Type: application/octet-stream\r\n\r\n\r\n";
    let body = format!(
        "{}{}{}{}{empty_file}------formdata7MA4YWxk--\r\n",
        part("e-mail", "multi@example.com"),
        part("state", "Texas"),
        part("interests", "solar"),
        part("interests", "roof"),
    );
    let response = post(body).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let answer: Value = response.json().await.unwrap();
    let lead = app.lead_of(&answer).await;
    assert_eq!(lead["email"]["value"], "multi@example.com");
    assert_eq!(lead["state"]["value"], "TX");
    assert_eq!(lead["interests"]["raw"], json!(["solar", "roof"]));
    assert!(lead.get("resume").is_none());

    // A legacy page's bytes, unlabelled, are read as Windows-1252, never lost.
    let mut latin =
        b"------formdata7MA4YWxk\r\nContent-Disposition: form-data; name=\"first_name\"\r\n\r\nJos\xe9\r\n".to_vec();
    latin.extend_from_slice(part("email", "latin@example.com").as_bytes());
    latin.extend_from_slice(part("state", "TX").as_bytes());
    latin.extend_from_slice(b"------formdata7MA4YWxk--\r\n");
    let response = app.submit_raw("web", "multipart/form-data; boundary=----formdata7MA4YWxk", latin).await;
    let answer: Value = response.json().await.unwrap();
    let lead = app.lead_of(&answer).await;
    assert_eq!(lead["first_name"]["raw"], "José");

    // A file is not a lead field; a body that is not multipart is a clear 400.
    let file = format!(
        "{}------formdata7MA4YWxk\r\nContent-Disposition: form-data; name=\"resume\"; filename=\"cv.pdf\"\r\n\r\n%PDF\r\n\
         ------formdata7MA4YWxk--\r\n",
        part("email", "f@example.com")
    );
    assert_eq!(error_code(post(file).await).await, (StatusCode::BAD_REQUEST, "invalid_multipart".to_owned()));
    let broken = post("not multipart at all".to_owned()).await;
    assert_eq!(error_code(broken).await, (StatusCode::BAD_REQUEST, "invalid_multipart".to_owned()));
    let no_boundary = app.submit_raw("web", "multipart/form-data", "x").await;
    assert_eq!(error_code(no_boundary).await, (StatusCode::BAD_REQUEST, "invalid_multipart".to_owned()));
    assert_eq!(app.get_json("/api/v1/leads").await["items"].as_array().unwrap().len(), 2, "nothing else recorded");
    app.stop().await;
}

#[tokio::test]
async fn form_encoded_and_query_string_submissions_are_accepted() {
    let app = spawn_app().await;
    app.apply(&solar_config()).await;
    let form = app
        .submit_raw(
            "web",
            "application/x-www-form-urlencoded",
            "e-mail=form%40example.com&state=California&interests=solar&interests=roof&state=&e-mail=form%40example.com",
        )
        .await;
    assert_eq!(form.status(), StatusCode::CREATED);
    let answer: Value = form.json().await.unwrap();
    let lead_id = answer["lead_id"].as_str().unwrap();
    let lead = app.get_json(&format!("/api/v1/leads/{lead_id}")).await;
    assert_eq!(lead["email"]["value"], "form@example.com", "field_map renames e-mail");
    assert_eq!(lead["state"]["value"], "CA", "a blank repeat keeps the value given");
    assert_eq!(lead["email"]["valid"], true, "the same address twice is one address");
    assert_eq!(lead["state"]["raw"], json!(["California", ""]), "the raw value is kept as it came");
    assert_eq!(lead["interests"]["value"], json!(["solar", "roof"]), "a checkbox group keeps every value");
    let submitted = app.get_json(&format!("/api/v1/leads/{lead_id}/events?type=source.submitted")).await;
    let submitted = &submitted["items"][0]["data"]["submitted"];
    assert_eq!(submitted["interests"], json!(["solar", "roof"]), "the log keeps what was sent: {submitted}");
    assert_eq!(submitted["state"], json!(["California", ""]));

    let post_query =
        app.client.post(app.url("/api/v1/sources/web/submit?email=q1%40example.com&state=TX")).send().await.unwrap();
    assert_eq!(post_query.status(), StatusCode::CREATED);
    let get_query =
        app.client.get(app.url("/api/v1/sources/web/submit?email=q2%40example.com&state=TX")).send().await.unwrap();
    assert_eq!(get_query.status(), StatusCode::CREATED);
    // A HEAD probe of a GET-submit URL (link checkers, mail scanners) submits nothing.
    let head =
        app.client.head(app.url("/api/v1/sources/web/submit?email=probe%40example.com&state=TX")).send().await.unwrap();
    assert_eq!(head.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(head.headers()["allow"], "GET, POST");
    // Every other method is told the same.
    let put = app.client.put(app.url("/api/v1/sources/web/submit")).send().await.unwrap();
    assert_eq!(put.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(put.headers()["allow"], "GET, POST");
    let leads = app.get_json("/api/v1/leads?limit=100").await;
    assert_eq!(leads["items"].as_array().unwrap().len(), 3, "{leads}");
    app.stop().await;
}

#[tokio::test]
async fn bad_bodies_get_clear_client_errors_and_write_nothing() {
    let app = spawn_app().await;
    app.apply(&solar_config()).await;
    let submit = |content_type: &'static str, body: &'static str| {
        app.client.post(app.url("/api/v1/sources/web/submit")).header("content-type", content_type).body(body).send()
    };
    let cases = [
        ("application/json", "{\"email\": ", StatusCode::BAD_REQUEST, "invalid_json"),
        ("application/json", "[1, 2]", StatusCode::BAD_REQUEST, "invalid_json"),
        ("application/json", "\"text\"", StatusCode::BAD_REQUEST, "invalid_json"),
        ("text/xml", "<lead/>", StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"),
    ];
    for (content_type, body, expected_status, expected_code) in cases {
        let (status, code) = error_code(submit(content_type, body).await.unwrap()).await;
        assert_eq!((status, code.as_str()), (expected_status, expected_code), "{content_type} {body}");
    }
    let leads = app.get_json("/api/v1/leads").await;
    assert_eq!(leads["items"].as_array().unwrap().len(), 0);
    let events = app.get_json("/api/v1/events").await;
    assert_eq!(events["items"].as_array().unwrap().len(), 0);
    app.stop().await;
}

#[tokio::test]
async fn unknown_source_answers_404() {
    let app = spawn_app().await;
    let (status, answer) = app.submit("nope", &good_lead()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(answer["error"]["code"], "source_not_found");
    app.stop().await;
}

#[tokio::test]
async fn source_key_is_required_when_set_by_header_or_parameter() {
    let app = spawn_app().await;
    let mut config = solar_config();
    config["sources"][0]["key"] = json!("s3cret-key");
    app.apply(&config).await;
    let (status, answer) = app.submit("web", &good_lead()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(answer["error"]["code"], "unauthorized");
    let wrong = app
        .client
        .post(app.url("/api/v1/sources/web/submit"))
        .header("x-source-key", "wrong")
        .json(&good_lead())
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    let right = app
        .client
        .post(app.url("/api/v1/sources/web/submit"))
        .header("x-source-key", "s3cret-key")
        .json(&good_lead())
        .send()
        .await
        .unwrap();
    assert_eq!(right.status(), StatusCode::CREATED);
    let by_parameter = app
        .client
        .get(app.url("/api/v1/sources/web/submit?key=s3cret-key&email=p%40example.com&state=TX"))
        .send()
        .await
        .unwrap();
    assert_eq!(by_parameter.status(), StatusCode::CREATED);
    let answer: Value = by_parameter.json().await.unwrap();
    let lead = app.lead_of(&answer).await;
    assert!(lead.get("key").is_none(), "the key is not kept as a lead field");
    // A source token stands in for any source's key; an operator token does not.
    let mut tokens = Vec::new();
    for role in ["source", "operator"] {
        let created: Value =
            app.post_admin("/api/v1/tokens", &json!({"name": role, "role": role})).await.json().await.unwrap();
        tokens.push(created["token"].as_str().unwrap().to_owned());
    }
    let with_token = |token: &str| {
        app.client
            .post(app.url("/api/v1/sources/web/submit"))
            .bearer_auth(token)
            .json(&json!({"email": format!("{}@example.com", &token[..8]), "state": "TX"}))
            .send()
    };
    assert_eq!(with_token(&tokens[0]).await.unwrap().status(), StatusCode::CREATED);
    assert_eq!(with_token(&tokens[1]).await.unwrap().status(), StatusCode::UNAUTHORIZED);
    app.stop().await;
}

#[tokio::test]
async fn a_body_that_never_arrives_answers_408_and_frees_the_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let settings =
        leadrelay_server::Settings { body_timeout: std::time::Duration::from_millis(200), ..Default::default() };
    let app = spawn_app_with(settings).await;
    app.apply(&solar_config()).await;
    // A slowloris client: it announces 100 bytes and sends two.
    let host = app.address.trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(&host).await.unwrap();
    let head = format!(
        "POST /api/v1/sources/web/submit HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{}}"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    // The server closes the connection after answering; the guard only keeps a broken
    // server from hanging the test.
    tokio::time::timeout(std::time::Duration::from_secs(20), stream.read_to_end(&mut answer))
        .await
        .expect("the server answers and closes the connection")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("\"request_timeout\""), "{answer}");
    let leads = app.get_json("/api/v1/leads").await;
    assert_eq!(leads["items"], json!([]), "nothing was stored");
    app.stop().await;
}

/// Clients that hold connections without sending requests: one that trickles its headers and
/// one that sends none are disconnected, and so is a kept-alive connection left idle; the
/// server goes on answering everybody else.
#[tokio::test]
async fn connections_without_headers_in_time_are_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let settings =
        leadrelay_server::Settings { header_timeout: std::time::Duration::from_millis(200), ..Default::default() };
    let app = spawn_app_with(settings).await;
    let host = app.address.trim_start_matches("http://").to_owned();
    // Reads until the server closes the connection; the guard only keeps a broken server from
    // hanging the test.
    async fn closed_by_server(stream: &mut tokio::net::TcpStream) -> String {
        let mut answer = Vec::new();
        tokio::time::timeout(std::time::Duration::from_secs(20), stream.read_to_end(&mut answer))
            .await
            .expect("the server closes the connection")
            .unwrap();
        String::from_utf8_lossy(&answer).into_owned()
    }

    let mut silent = tokio::net::TcpStream::connect(&host).await.unwrap();
    let mut trickling = tokio::net::TcpStream::connect(&host).await.unwrap();
    trickling.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let mut kept_alive = tokio::net::TcpStream::connect(&host).await.unwrap();
    kept_alive.write_all(format!("GET /healthz HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes()).await.unwrap();

    assert_eq!(closed_by_server(&mut silent).await, "");
    assert!(!closed_by_server(&mut trickling).await.starts_with("HTTP/1.1 200"));
    let answered = closed_by_server(&mut kept_alive).await;
    assert!(answered.starts_with("HTTP/1.1 200"), "{answered}");
    assert_eq!(answered.matches("HTTP/1.1").count(), 1, "{answered}");
    assert_eq!(app.client.get(app.url("/healthz")).send().await.unwrap().status(), StatusCode::OK);
    app.stop().await;
}

/// A submission to a source that does not exist is answered 404 after its body is read, so
/// the client's kept-alive connection serves its next request: one connection, many answers.
#[tokio::test]
async fn a_404_submission_keeps_the_connection() {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
    let app = spawn_app().await;
    app.apply(&solar_config()).await;
    let host = app.address.trim_start_matches("http://").to_owned();
    // Nagle's algorithm (on by default) holds the body back until the head is acknowledged,
    // so a server that answered without waiting for the body would answer before it arrives.
    let stream = tokio::net::TcpStream::connect(&host).await.unwrap();
    let (reader, mut writer) = stream.into_split();
    let mut reader = tokio::io::BufReader::new(reader);
    let body = "email=a%40example.com&state=TX";
    for round in 0..20 {
        let source = if round % 2 == 0 { "nope" } else { "web" };
        let head = format!(
            "POST /api/v1/sources/{source}/submit HTTP/1.1\r\nHost: {host}\r\n\
             Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        // Head and body apart, as most clients send them: a server that answers before the
        // body has arrived cannot keep the connection.
        writer.write_all(head.as_bytes()).await.unwrap();
        tokio::task::yield_now().await;
        writer.write_all(body.as_bytes()).await.unwrap();
        let mut status = String::new();
        reader.read_line(&mut status).await.unwrap();
        let expected = if round % 2 == 0 { "HTTP/1.1 404" } else { "HTTP/1.1 20" };
        assert!(status.starts_with(expected), "round {round}: {status:?}");
        let mut length = 0;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).await.unwrap();
            if line == "\r\n" {
                break;
            }
            assert!(!line.to_ascii_lowercase().starts_with("connection: close"), "round {round}: {line}");
            if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = value.trim().parse().unwrap();
            }
        }
        let mut answer = vec![0; length];
        reader.read_exact(&mut answer).await.unwrap();
    }
    app.stop().await;
}

#[tokio::test]
async fn oversized_bodies_answer_413_and_huge_fields_400() {
    let app = spawn_app_with(leadrelay_server::Settings { max_body_bytes: 4096, ..Default::default() }).await;
    app.apply(&solar_config()).await;
    let big = "x".repeat(10_000);
    let response = app
        .client
        .post(app.url("/api/v1/sources/web/submit"))
        .json(&json!({"email": "a@example.com", "state": "TX", "notes": big}))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(response).await, (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large".to_owned()));
    app.stop().await;

    let app = spawn_app().await;
    app.apply(&solar_config()).await;
    let huge_field = "y".repeat(100_000);
    let response = app
        .client
        .post(app.url("/api/v1/sources/web/submit"))
        .json(&json!({"email": "a@example.com", "state": "TX", "notes": huge_field}))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(response).await, (StatusCode::BAD_REQUEST, "field_too_long".to_owned()));
    let many: serde_json::Map<String, Value> = (0..600).map(|i| (format!("f{i}"), json!("v"))).collect();
    let response = app.client.post(app.url("/api/v1/sources/web/submit")).json(&many).send().await.unwrap();
    assert_eq!(error_code(response).await, (StatusCode::BAD_REQUEST, "too_many_fields".to_owned()));
    app.stop().await;
}

#[tokio::test]
async fn unicode_and_odd_values_are_kept_raw() {
    let app = spawn_app().await;
    app.apply(&solar_config()).await;
    let lead = json!({
        "email": "zoë@example.com", "phone": "+44 20 7946 0958", "first_name": "Zoë Ñúñez 🌞",
        "state": "TX", "notes": "line1\nline2\t\u{0000}end", "count": 42, "opt_in": true, "nothing": null,
        "nested": {"a": [1, 2]}
    });
    let (status, answer) = app.submit("web", &lead).await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    let stored = app.lead_of(&answer).await;
    assert_eq!(stored["first_name"]["raw"], "Zoë Ñúñez 🌞");
    assert_eq!(stored["notes"]["raw"], "line1\nline2\t\u{0000}end");
    assert_eq!(stored["count"]["raw"], "42");
    assert_eq!(stored["phone"]["e164"], "+442079460958");
    assert!(stored.get("nothing").is_none());
    // A byte order mark before JSON (as some Windows tools write it) is not an error.
    let mut with_bom = b"\xEF\xBB\xBF".to_vec();
    with_bom.extend_from_slice(json!({"email": "bom@example.com", "state": "TX"}).to_string().as_bytes());
    let url = app.url("/api/v1/sources/web/submit");
    let bom = app.client.post(url).header("content-type", "application/json").body(with_bom).send().await.unwrap();
    assert_eq!(bom.status(), StatusCode::CREATED);
    app.stop().await;
}

#[tokio::test]
async fn idempotency_key_returns_the_first_answer_and_creates_nothing_new() {
    let app = spawn_app().await;
    app.apply(&solar_config()).await;
    let send = |key: &'static str| {
        app.client
            .post(app.url("/api/v1/sources/web/submit"))
            .header("idempotency-key", key)
            .json(&json!({"email": "idem@example.com", "state": "TX"}))
            .send()
    };
    let first = send("key-1").await.unwrap();
    assert_eq!(first.status(), StatusCode::CREATED);
    let first: Value = first.json().await.unwrap();
    let again = send("key-1").await.unwrap();
    assert_eq!(again.status(), StatusCode::CREATED);
    assert_eq!(again.headers().get("idempotent-replayed").unwrap(), "true");
    let again: Value = again.json().await.unwrap();
    assert_eq!(first, again);
    let leads = app.get_json("/api/v1/leads").await;
    assert_eq!(leads["items"].as_array().unwrap().len(), 1);
    app.stop().await;
}

#[tokio::test]
async fn concurrent_submissions_with_one_idempotency_key_store_one_lead() {
    let app = spawn_app().await;
    app.apply(&solar_config()).await;
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let client = app.client.clone();
        let url = app.url("/api/v1/sources/web/submit");
        tasks.push(tokio::spawn(async move {
            let response = client
                .post(url)
                .header("idempotency-key", "same")
                .json(&json!({"email": "race@example.com", "state": "TX"}))
                .send()
                .await
                .unwrap();
            let status = response.status();
            let body: Value = response.json().await.unwrap();
            (status, body["lead_id"].as_str().unwrap().to_owned())
        }));
    }
    let mut lead_ids = std::collections::HashSet::new();
    for task in tasks {
        let (status, lead_id) = task.await.unwrap();
        assert_eq!(status, StatusCode::CREATED);
        lead_ids.insert(lead_id);
    }
    assert_eq!(lead_ids.len(), 1);
    let leads = app.get_json("/api/v1/leads").await;
    assert_eq!(leads["items"].as_array().unwrap().len(), 1);
    app.stop().await;
}

#[tokio::test]
async fn a_store_that_cannot_write_answers_503_and_keeps_nothing() {
    let app = spawn_app().await;
    app.apply(&solar_config()).await;
    // Stop the store's writer: every commit now fails before anything is written.
    app.store.close().await;
    let (status, answer) = app.submit("web", &good_lead()).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{answer}");
    assert_eq!(answer["error"]["code"], "storage_unavailable");
    app.stop().await;
}
