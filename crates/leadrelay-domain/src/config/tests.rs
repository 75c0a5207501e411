//! Tests of configuration changes: validation as a whole, applying, pruning, secrets.
use serde_json::json;

use super::*;

#[test]
fn an_unknown_key_is_named_once_with_its_path() {
    let yaml = "flows:\n  - id: solar\n    colour: blue\n";
    let error = parse_yaml::<ConfigDocument>(yaml).expect_err("unknown key").to_string();
    assert!(error.starts_with("flows[0].colour: unknown field `colour`"), "{error}");
    assert_eq!(error.matches("flows[0]").count(), 1, "{error}");
    let json = r#"{"flows": [{"id": "solar", "colour": "blue"}]}"#;
    let error = parse_json::<ConfigDocument>(json).expect_err("unknown key").to_string();
    assert!(error.starts_with("flows[0].colour: unknown field `colour`"), "{error}");
}

#[test]
fn an_object_written_as_a_list_is_refused_by_its_path() {
    // serde would fill `success` by position, setting `body_regex` without naming it.
    let json =
        r#"{"destinations": [{"id": "crm", "url": "https://crm.example.com/l", "success": ["201", null, "x"]}]}"#;
    let error = parse_json::<ConfigDocument>(json).expect_err("a list for an object").to_string();
    assert!(error.starts_with("destinations[0].success: must be an object of named keys"), "{error}");
    let yaml = "flows:\n  - [solar, Solar]\n";
    let error = parse_yaml::<ConfigDocument>(yaml).expect_err("a list for a flow").to_string();
    assert!(error.starts_with("flows[0]:"), "{error}");
    let fine = r#"{"flows": [{"id": "solar", "filters": [{"name": "geo", "rules": {"all": [{"field": "state", "op": "in", "value": ["TX"]}]}}]}]}"#;
    assert!(parse_json::<ConfigDocument>(fine).is_ok());
}

#[test]
fn a_problem_stored_before_a_check_existed_does_not_block_other_changes() {
    // Stored by an older version that did not refuse a Host header.
    let document: ConfigDocument = parse_value(json!({
        "destinations": [{"id": "old", "url": "https://crm.example.com/leads", "headers": {"Host": "x"}},
                         {"id": "other", "url": "https://b.example.com/leads"}]
    }))
    .expect("document");
    let stored = Config::from_objects(
        document.destinations.into_iter().map(|destination| ConfigObject::Destination(Box::new(destination))),
    );
    assert!(stored.validate().is_err());
    // The circuit breaker can still disable a destination, and other objects can change.
    stored.change(ConfigChange::DisableDestination { id: "other".into() }, 1).expect("disable");
    stored.change(ConfigChange::DisableDestination { id: "old".into() }, 1).expect("disable the old one too");
    // A new problem is refused, and only it is named.
    let bad: ConfigObject = ConfigObject::parse(
        ConfigKind::Destination,
        json!({"id": "new", "url": "https://c.example.com/leads", "headers": {"Content-Length": "5"}}),
    )
    .expect("parses");
    let Err(ChangeError::Invalid(error)) = stored.change(ConfigChange::Put { object: bad, mode: WriteMode::Create }, 2)
    else {
        panic!("a new problem is refused")
    };
    assert_eq!(error.problems.len(), 1, "{:?}", error.problems);
    assert!(error.problems[0].starts_with("destinations[new].headers.Content-Length"), "{:?}", error.problems);
}

#[test]
fn disabling_a_destination_keeps_what_is_stored() {
    let document: ConfigDocument = parse_value(json!({
        "destinations": [{"id": "crm", "url": "https://crm.example.com/leads"}]
    }))
    .expect("document");
    let (stored, _) = Config::default().change(ConfigChange::Apply(document), 0).expect("apply");
    // Another node edited the destination since this one loaded it.
    let mut edited = stored.destinations["crm"].clone();
    edited.headers.insert("x-team".into(), "blue".into());
    let put = ConfigChange::Put { object: ConfigObject::Destination(Box::new(edited)), mode: WriteMode::Replace };
    let (stored, _) = stored.change(put, 1).expect("edit");

    let (next, writes) = stored.change(ConfigChange::DisableDestination { id: "crm".into() }, 2).expect("disable");
    let crm = &next.destinations["crm"];
    assert!(!crm.enabled);
    assert_eq!(crm.headers.get("x-team").map(String::as_str), Some("blue"), "the edit is kept");
    assert_eq!(writes.len(), 1);
    assert!(matches!(
        stored.change(ConfigChange::DisableDestination { id: "nope".into() }, 3),
        Err(ChangeError::NotFound { .. })
    ));
}

#[test]
fn header_values_with_control_characters_are_refused_by_name() {
    let document: ConfigDocument = parse_value(json!({
        "destinations": [{
            "id": "crm", "url": "https://crm.example.com/leads",
            "headers": {"X-Api-Key": "abc\n", "X-Fine": "tab\tand ünïcode"},
            "auth": {"type": "header", "name": "X Bad", "value": "a\rb"}
        }]
    }))
    .expect("document");
    let Err(ChangeError::Invalid(error)) = Config::default().change(ConfigChange::Apply(document), 0) else {
        panic!("the destination must be refused");
    };
    assert_eq!(
        error.problems,
        [
            "destinations[crm].headers.X-Api-Key: a header value cannot contain the control character '\\n'",
            "destinations[crm].auth.name: invalid header name \"X Bad\"",
            "destinations[crm].auth.value: a header value cannot contain the control character '\\r'",
        ]
    );
}

fn problems_of(destinations: serde_json::Value) -> Vec<String> {
    let document: ConfigDocument = parse_value(json!({ "destinations": destinations })).expect("document");
    match Config::default().change(ConfigChange::Apply(document), 0) {
        Ok(_) => Vec::new(),
        Err(ChangeError::Invalid(error)) => error.problems,
        Err(other) => panic!("unexpected error {other}"),
    }
}

#[test]
fn a_get_destination_sends_its_fields_in_the_url() {
    let url = "https://crm.example.com/leads";
    assert_eq!(
        problems_of(json!([{"id": "crm", "url": url, "method": "GET"}])),
        ["destinations[crm].method: a GET sends no body, so format json would lose the lead: use format query \
          (the fields in the URL) or another method"]
    );
    assert_eq!(problems_of(json!([{"id": "crm", "url": url, "method": "GET", "format": "form"}])).len(), 1);
    assert!(problems_of(json!([{"id": "crm", "url": url, "method": "GET", "format": "query"}])).is_empty());
    // A query destination's template renders the query string.
    let template = "email={{ lead.email }}&src=web";
    assert!(problems_of(json!([{"id": "crm", "url": url, "format": "query", "body_template": template}])).is_empty());
}

#[test]
fn a_template_naming_an_unknown_filter_is_refused_before_any_lead_meets_it() {
    let url = "https://crm.example.com/leads";
    let problems =
        problems_of(json!([{"id": "crm", "url": url, "body_template": "{\"e\": {{ lead.email | shout }}}"}]));
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].starts_with("destinations[crm].body_template: ") && problems[0].contains("shout"),
        "{problems:?}"
    );
    let problems =
        problems_of(json!([{"id": "crm", "url": url, "body_template": "{% if lead is shouting %}{% endif %}"}]));
    assert_eq!(problems.len(), 1, "{problems:?}");
    // Known filters, and values a lead may lack, are fine.
    let fine =
        "{\"e\": {{ lead.email | default('none') | tojson }}, \"d\": \"{{ lead.fields.email.domain | upper }}\"}";
    assert!(problems_of(json!([{"id": "crm", "url": url, "body_template": fine}])).is_empty());
}

#[test]
fn headers_that_auth_or_the_signature_set_are_refused() {
    let url = "https://crm.example.com/leads";
    let problems = problems_of(json!([{
        "id": "crm", "url": url,
        "headers": {"Webhook-Id": "mine", "authorization": "Bearer x", "User-Agent": "acme/1"},
        "auth": {"type": "bearer", "token": "t"}
    }]));
    assert_eq!(
        problems,
        [
            "destinations[crm].headers.Webhook-Id: set by leadrelay on every webhook (Standard Webhooks signature) \
             and cannot be configured",
            "destinations[crm].headers.authorization: auth sets this header already; keep one of the two",
        ]
    );
    let custom = json!([{"id": "crm", "url": url, "headers": {"X-Key": "k"}, "auth": {"type": "header", "name": "x-key", "value": "v"}}]);
    assert_eq!(problems_of(custom).len(), 1);
    // Without auth, an Authorization header is the destination's own.
    assert!(problems_of(json!([{"id": "crm", "url": url, "headers": {"Authorization": "Token abc"}}])).is_empty());
    // Neither headers nor auth may set what frames the message or signs it.
    let framing =
        json!([{"id": "crm", "url": url, "headers": {"Content-Length": "5", "Transfer-Encoding": "chunked"}}]);
    assert_eq!(
        problems_of(framing),
        [
            "destinations[crm].headers.Content-Length: set by the HTTP client from the request it sends and cannot \
             be configured",
            "destinations[crm].headers.Transfer-Encoding: set by the HTTP client from the request it sends and \
             cannot be configured",
        ]
    );
    for name in ["webhook-signature", "Content-Length"] {
        let auth = json!([{"id": "crm", "url": url, "auth": {"type": "header", "name": name, "value": "forged"}}]);
        let problems = problems_of(auth);
        assert!(problems.len() == 1 && problems[0].starts_with("destinations[crm].auth.name:"), "{problems:?}");
    }
}

#[test]
fn a_previous_secrets_until_is_read_as_a_time_or_a_date_or_refused() {
    let url = "https://crm.example.com/leads";
    let old = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let with_until =
        |until: &str| json!([{"id": "crm", "url": url, "previous_signing_secrets": [{"secret": old, "until": until}]}]);
    for unreadable in ["tomorrow", "garbage"] {
        let problems = problems_of(with_until(unreadable));
        assert_eq!(problems, ["destinations[crm].previous_signing_secrets[0].until: must be an ISO 8601 time"]);
    }
    let document: ConfigDocument = parse_value(json!({ "destinations": with_until("2099-01-01") })).expect("document");
    let (config, _) = Config::default().change(ConfigChange::Apply(document), 0).expect("a date is a time");
    let kept = config.destinations["crm"].previous_signing_secrets.clone().expect("kept");
    assert_eq!(kept[0].until, "2099-01-01T23:59:59.999Z");
}

#[test]
fn a_template_that_does_too_much_work_is_refused() {
    let costly = "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}";
    let problems = problems_of(json!([{"id": "crm", "url": "https://c.example.com", "body_template": costly}]));
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].contains("does too much work"), "{problems:?}");
    let fine = r#"{"email": "{{ lead.email }}"}"#;
    assert!(problems_of(json!([{"id": "crm", "url": "https://c.example.com", "body_template": fine}])).is_empty());
}

#[test]
fn a_pruning_apply_of_an_empty_document_changes_nothing() {
    let document: ConfigDocument =
        parse_value(json!({"destinations": [{"id": "crm", "url": "https://c.example.com"}]})).unwrap();
    let (config, _) = Config::default().change(ConfigChange::Apply(document), 0).unwrap();
    let empty: ConfigDocument = parse_value(json!({})).unwrap();
    let Err(ChangeError::Invalid(error)) = config.change(ConfigChange::Sync(empty), 0) else { panic!("refused") };
    assert!(error.problems[0].contains("would delete every object"), "{:?}", error.problems);
    // On an empty configuration it is no change at all.
    let empty: ConfigDocument = parse_value(json!({})).unwrap();
    assert!(Config::default().change(ConfigChange::Sync(empty), 0).is_ok());
}

#[test]
fn a_json_document_may_start_with_a_byte_order_mark() {
    let document: ConfigDocument = parse_json("\u{feff}{\"flows\": [{\"id\": \"bom\", \"name\": \"Bom\"}]}").unwrap();
    assert_eq!(document.flows.len(), 1);
}

#[test]
fn enhancement_headers_are_checked_like_a_destinations() {
    let flow = |headers: serde_json::Value| {
        let document: ConfigDocument = parse_value(json!({"flows": [{"id": "f", "name": "F", "enhancements": [
            {"name": "check", "url": "https://e.example.com/check", "headers": headers}]}]}))
        .expect("document");
        match Config::default().change(ConfigChange::Apply(document), 0) {
            Ok(_) => Vec::new(),
            Err(ChangeError::Invalid(error)) => error.problems,
            Err(other) => panic!("unexpected error {other}"),
        }
    };
    assert!(flow(json!({"X-Api-Key": "k"})).is_empty());
    let problems = flow(json!({"Host": "evil.example", "X-Ok": "bad\r\nInjected: yes", "X-Bad\nName": "v"}));
    assert_eq!(problems.len(), 3, "{problems:?}");
    assert!(
        problems[0].starts_with("flows[f].enhancements[check].headers.Host: set by the HTTP client"),
        "{problems:?}"
    );
    assert!(problems[1].starts_with("flows[f].enhancements[check].headers.X-Ok"), "{problems:?}");
    assert!(problems[2].starts_with("flows[f].enhancements[check].headers: invalid header name"), "{problems:?}");
}
