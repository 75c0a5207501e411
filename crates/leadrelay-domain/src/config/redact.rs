//! The configuration as people who may read it but not use its secrets see it (operator and
//! viewer tokens): every key, password, token, signing secret, header value, body template,
//! query value and secret-looking URL path segment (a webhook URL's token) is `***`. Such a
//! document does not apply again (validation refuses `***` wherever a secret goes), so a
//! masked copy can never overwrite the real one.

use super::{Auth, ConfigDocument, ConfigObject, Destination, Flow, Source};

/// What stands for a secret.
pub const MASK: &str = "***";

/// Whether a query parameter's name says it carries a secret.
pub fn secret_parameter(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    ["key", "token", "secret", "pass", "pwd", "auth", "sig", "credential", "code", "hook"]
        .iter()
        .any(|word| name.contains(word))
}

/// A URL as it may be recorded: no user or password, path segments that can only be tokens
/// masked (16 or more letters and digits, as in `/hooks/catch/123456/***`), and `***` for query
/// values whose names say they are secrets (`api_key`, `token`, `api_secret`, …).
pub fn redacted_url(url: &url::Url) -> String {
    let mut shown = url.clone();
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
    // Only segments that can be nothing but a token: the log must still show where a lead went.
    mask_path_tokens(&mut shown, |segment| {
        segment.len() >= 16
            && segment.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            && segment.bytes().any(|b| b.is_ascii_digit())
            && segment.bytes().any(|b| b.is_ascii_alphabetic())
    });
    if shown.query_pairs().any(|(name, _)| secret_parameter(&name)) {
        let pairs: Vec<(String, String)> = shown
            .query_pairs()
            .map(|(name, value)| {
                let value = if secret_parameter(&name) { MASK.to_owned() } else { value.into_owned() };
                (name.into_owned(), value)
            })
            .collect();
        shown.query_pairs_mut().clear().extend_pairs(pairs);
    }
    shown.to_string()
}

/// Masks the path segments `looks_secret` picks: the path is the credential of many webhook
/// URLs (`/hooks/catch/123456/ab12cd34`, Slack's `T0…/B0…/…`).
fn mask_path_tokens(url: &mut url::Url, looks_secret: impl Fn(&str) -> bool) {
    if !url.path().split('/').any(&looks_secret) {
        return;
    }
    let path: Vec<String> = url
        .path()
        .split('/')
        .map(|segment| if looks_secret(segment) { MASK.to_owned() } else { segment.to_owned() })
        .collect();
    url.set_path(&path.join("/"));
}

/// A URL as a reader sees it: credentials, every query value and path segments that look
/// like tokens masked, each as `***` (so that a copy written back is refused where it stands).
fn redact_url_text(text: &mut String) {
    let Ok(mut url) = url::Url::parse(text) else {
        MASK.clone_into(text);
        return;
    };
    if !url.username().is_empty() {
        let _ = url.set_username(MASK);
    }
    if url.password().is_some() {
        let _ = url.set_password(Some(MASK));
    }
    // A reader's copy errs on the side of the secret.
    mask_path_tokens(&mut url, |segment| {
        segment.len() >= 20 || (segment.len() >= 6 && segment.chars().any(|c| c.is_ascii_digit()))
    });
    if url.query().is_some() {
        let pairs: Vec<(String, String)> =
            url.query_pairs().map(|(name, _)| (name.into_owned(), MASK.to_owned())).collect();
        url.query_pairs_mut().clear().extend_pairs(pairs);
    }
    *text = url.to_string();
}

/// Whether a value written where a secret goes is the mask readers see: written back, it
/// would replace the real secret.
pub fn is_mask(value: &str) -> bool {
    value.contains(MASK)
}

/// Where an object holds a secret and the mask stands in for it: each place's name and value.
pub(super) fn secret_places(object: &ConfigObject) -> Vec<(String, &str)> {
    let mut places = Vec::new();
    match object {
        ConfigObject::Flow(flow) => {
            for enhancement in &flow.enhancements {
                let at = format!("enhancements[{}]", enhancement.name);
                places.push((format!("{at}.url"), enhancement.url.as_str()));
                places.extend(
                    enhancement.headers.iter().map(|(name, value)| (format!("{at}.headers.{name}"), value.as_str())),
                );
            }
        }
        ConfigObject::Source(source) => places.extend(source.key.as_deref().map(|key| ("key".to_owned(), key))),
        ConfigObject::Destination(destination) => {
            places.extend(destination.url.as_deref().map(|url| ("url".to_owned(), url)));
            places.extend(destination.proxy.as_deref().map(|proxy| ("proxy".to_owned(), proxy)));
            places.extend(destination.body_template.as_deref().map(|template| ("body_template".to_owned(), template)));
            places.extend(destination.headers.iter().map(|(name, value)| (format!("headers.{name}"), value.as_str())));
            match &destination.auth {
                Some(Auth::Basic { password, .. }) => places.push(("auth.password".to_owned(), password)),
                Some(Auth::Bearer { token }) => places.push(("auth.token".to_owned(), token)),
                Some(Auth::Header { value, .. }) => places.push(("auth.value".to_owned(), value)),
                None => {}
            }
            places.extend(destination.ga4.as_ref().map(|ga4| ("ga4.api_secret".to_owned(), ga4.api_secret.as_str())));
        }
    }
    places
}

fn mask(text: &mut String) {
    MASK.clone_into(text);
}

impl Flow {
    fn redact(&mut self) {
        for enhancement in &mut self.enhancements {
            redact_url_text(&mut enhancement.url);
            enhancement.headers.values_mut().for_each(mask);
        }
    }
}

impl Source {
    fn redact(&mut self) {
        if let Some(key) = &mut self.key {
            mask(key);
        }
    }
}

impl Destination {
    fn redact(&mut self) {
        if let Some(url) = &mut self.url {
            redact_url_text(url);
        }
        if let Some(proxy) = &mut self.proxy {
            redact_url_text(proxy);
        }
        self.headers.values_mut().for_each(mask);
        if let Some(template) = &mut self.body_template {
            mask(template);
        }
        match &mut self.auth {
            Some(Auth::Basic { password, .. }) => mask(password),
            Some(Auth::Bearer { token }) => mask(token),
            Some(Auth::Header { value, .. }) => mask(value),
            None => {}
        }
        if let Some(secret) = &mut self.signing_secret {
            mask(secret);
        }
        for previous in self.previous_signing_secrets.iter_mut().flatten() {
            mask(&mut previous.secret);
        }
        if let Some(ga4) = &mut self.ga4 {
            mask(&mut ga4.api_secret);
        }
    }
}

impl ConfigObject {
    /// The object with its secrets masked.
    pub fn redacted(&self) -> ConfigObject {
        let mut object = self.clone();
        match &mut object {
            ConfigObject::Flow(flow) => flow.redact(),
            ConfigObject::Source(source) => source.redact(),
            ConfigObject::Destination(destination) => destination.redact(),
        }
        object
    }
}

impl ConfigDocument {
    /// The document with every object's secrets masked.
    pub fn redacted(mut self) -> ConfigDocument {
        self.flows.iter_mut().for_each(Flow::redact);
        self.sources.iter_mut().for_each(Source::redact);
        self.destinations.iter_mut().for_each(Destination::redact);
        self
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::config::parse_value;

    #[test]
    fn every_secret_is_masked_and_the_rest_is_kept() {
        let document = parse_value::<ConfigDocument>(json!({
            "flows": [{"id": "f", "destinations": ["crm"],
                       "enhancements": [{"name": "check", "url": "https://e.test/c?api_key=k&x=1", "headers": {"X-Key": "k"}}]}],
            "sources": [{"id": "s", "flow_id": "f", "key": "source-secret"}],
            "destinations": [{"id": "crm", "url": "https://u:p@crm.test/in?token=t&campaign=7",
                              "headers": {"X-Api-Key": "k1"}, "auth": {"type": "basic", "username": "me", "password": "pw"},
                              "signing_secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
                              "previous_signing_secrets": [{"secret": "whsec_old", "until": "2030-01-01T00:00:00Z"}],
                              "proxy": "http://user:pw@proxy.test:3128",
                              "body_template": "{\"api_key\": \"buyer-key-9\", \"e\": \"{{ lead.email }}\"}"},
                             {"id": "zap", "url": "https://hooks.zapier.test/hooks/catch/123456/ab12cd34/"}]
        }))
        .unwrap()
        .redacted();
        let shown = serde_json::to_value(&document).unwrap();
        let text = shown.to_string();
        for secret in [
            "source-secret",
            "k1",
            "\"pw\"",
            "MfKQ9r8",
            "whsec_old",
            "token=t",
            "api_key=k",
            "user:pw",
            "u:p@",
            "buyer-key-9",
            "123456",
            "ab12cd34",
        ] {
            assert!(!text.contains(secret), "{secret} shows in {text}");
        }
        let destination = &shown["destinations"][0];
        assert_eq!(destination["url"], "https://***:***@crm.test/in?token=***&campaign=***");
        assert_eq!(destination["auth"], json!({"type": "basic", "username": "me", "password": "***"}));
        assert_eq!(destination["headers"], json!({"X-Api-Key": "***"}));
        assert_eq!(shown["flows"][0]["enhancements"][0]["url"], "https://e.test/c?api_key=***&x=***");
        assert_eq!(shown["sources"][0]["key"], "***");
        assert_eq!(shown["destinations"][1]["url"], "https://hooks.zapier.test/hooks/catch/***/***/");
    }

    #[test]
    fn a_masked_copy_written_back_is_refused_where_each_mask_stands() {
        let document = parse_value::<ConfigDocument>(json!({
            "flows": [{"id": "f", "destinations": ["crm"]}],
            "sources": [{"id": "s", "flow_id": "f", "key": "source-secret"}],
            "destinations": [{"id": "crm", "url": "https://crm.test/in/ab12cd34ef", "auth": {"type": "bearer", "token": "t0k"}}]
        }))
        .unwrap();
        let (config, _) =
            crate::config::Config::default().change(crate::config::ConfigChange::Apply(document), 0).unwrap();
        let masked = config.to_document().redacted();
        let Err(crate::config::ChangeError::Invalid(error)) =
            config.change(crate::config::ConfigChange::Apply(masked), 1)
        else {
            panic!("the masked copy applied")
        };
        let text = error.problems.join("\n");
        for place in [
            "sources[s].key",
            "destinations[crm].url",
            "destinations[crm].auth.token",
            "destinations[crm].signing_secret",
        ] {
            assert!(text.contains(place), "{place} not named in {text}");
        }
    }
}
