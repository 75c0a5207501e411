//! The configuration as people who may read it but not use its secrets see it (operator and
//! viewer tokens): every key, password, token, signing secret and secret-looking header or URL
//! parameter is `***`. Such a document does not apply again (the masks are not valid secrets),
//! so a masked copy can never overwrite the real one.

use super::{Auth, ConfigDocument, ConfigObject, Destination, Flow, Source};

/// What stands for a secret.
pub const MASK: &str = "***";

/// Whether a query parameter's name says it carries a secret.
pub fn secret_parameter(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    ["key", "token", "secret", "pass", "auth", "sig", "credential"].iter().any(|word| name.contains(word))
}

/// A URL as it may be shown or recorded: no user or password, and `***` for query values
/// whose names say they are secrets (`api_key`, `token`, `api_secret`, …).
pub fn redacted_url(url: &url::Url) -> String {
    let mut shown = url.clone();
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
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

fn redact_url_text(text: &mut String) {
    *text = url::Url::parse(text).map(|url| redacted_url(&url)).unwrap_or_else(|_| MASK.to_owned());
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
                              "proxy": "http://user:pw@proxy.test:3128"}]
        }))
        .unwrap()
        .redacted();
        let shown = serde_json::to_value(&document).unwrap();
        let text = shown.to_string();
        for secret in
            ["source-secret", "k1", "\"pw\"", "MfKQ9r8", "whsec_old", "token=t", "api_key=k", "user:pw", "u:p@"]
        {
            assert!(!text.contains(secret), "{secret} shows in {text}");
        }
        let destination = &shown["destinations"][0];
        assert_eq!(destination["url"], "https://crm.test/in?token=***&campaign=7");
        assert_eq!(destination["auth"], json!({"type": "basic", "username": "me", "password": "***"}));
        assert_eq!(destination["headers"], json!({"X-Api-Key": "***"}));
        assert_eq!(shown["flows"][0]["enhancements"][0]["url"], "https://e.test/c?api_key=***&x=1");
        assert_eq!(shown["sources"][0]["key"], "***");
    }
}
