//! The `trustedform_url` field type: a TrustedForm consent certificate URL, whose last path
//! segment is the certificate's 40-hex-digit id.

use serde_json::Value;
use url::Url;

use super::Parsed;

const COMPONENTS: [&str; 2] = ["cert_id", "is_ping"];

/// Far longer than a certificate URL; longer input is not parsed at all.
const MAX_LENGTH: usize = 512;

const CERT_HOST: &str = "cert.trustedform.com";
const PING_HOST: &str = "ping.trustedform.com";

pub(super) fn parse(trimmed: &str) -> Parsed {
    match to_certificate(trimmed) {
        Some((url, cert_id, is_ping)) => {
            Parsed::new(Value::String(url), true).with("cert_id", cert_id).with("is_ping", is_ping)
        }
        None => Parsed::unparsed(trimmed, &COMPONENTS),
    }
}

/// The normalised URL (`scheme://host/id`, lower case, without query or fragment), the id, and
/// whether it is the ping variant.
fn to_certificate(trimmed: &str) -> Option<(String, String, bool)> {
    if trimmed.is_empty() || trimmed.len() > MAX_LENGTH || trimmed.contains(char::is_whitespace) {
        return None;
    }
    let url = if trimmed.contains("://") {
        Url::parse(trimmed).ok()?
    } else {
        Url::parse(&format!("https://{trimmed}")).ok()?
    };
    if !matches!(url.scheme(), "http" | "https") || !url.username().is_empty() || url.password().is_some() {
        return None;
    }
    let is_ping = match url.host_str()? {
        CERT_HOST => false,
        PING_HOST => true,
        _ => return None,
    };
    if url.port().is_some() {
        return None;
    }
    let path = url.path().strip_prefix('/')?;
    let cert_id = path.strip_suffix('/').unwrap_or(path);
    if cert_id.len() != 40 || !cert_id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let cert_id = cert_id.to_ascii_lowercase();
    let host = url.host_str()?;
    Some((format!("{}://{host}/{cert_id}", url.scheme()), cert_id, is_ping))
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::super::test_support::{assert_parsed, huge};
    use super::super::FieldType;

    const ID: &str = "0123456789abcdef0123456789abcdef01234567";

    #[track_caller]
    fn check(raw: &str, expected: Value) {
        assert_parsed(FieldType::TrustedformUrl, raw, expected);
    }

    #[track_caller]
    fn check_certificate(raw: &str, value: &str, is_ping: bool) {
        check(raw, json!({"value": value, "valid": true, "cert_id": ID, "is_ping": is_ping}));
    }

    #[track_caller]
    fn check_invalid(raw: &str) {
        check(raw, json!({"value": raw.trim(), "valid": false, "cert_id": null, "is_ping": null}));
    }

    #[test]
    fn certificate_urls_are_normalised_to_scheme_host_and_lowercase_id() {
        let canonical = format!("https://cert.trustedform.com/{ID}");
        for raw in [
            canonical.clone(),
            format!(" https://cert.trustedform.com/{ID} "),
            format!("https://CERT.TrustedForm.com/{}", ID.to_uppercase()),
            format!("https://cert.trustedform.com/{ID}/"),
            format!("https://cert.trustedform.com/{ID}?shared_token=abc#x"),
            format!("https://cert.trustedform.com:443/{ID}"),
            format!("cert.trustedform.com/{ID}"),
        ] {
            check_certificate(&raw, &canonical, false);
        }
        check_certificate(
            &format!("http://cert.trustedform.com/{ID}"),
            &format!("http://cert.trustedform.com/{ID}"),
            false,
        );
    }

    #[test]
    fn ping_urls_are_accepted_and_flagged() {
        check_certificate(
            &format!("https://ping.trustedform.com/{ID}"),
            &format!("https://ping.trustedform.com/{ID}"),
            true,
        );
    }

    #[test]
    fn anything_that_is_not_a_certificate_url_is_invalid() {
        for raw in [
            String::new(),
            "   ".to_owned(),
            "https://cert.trustedform.com/".to_owned(),
            "https://cert.trustedform.com/abc123".to_owned(),
            format!("https://cert.trustedform.com/{ID}0"),
            format!("https://cert.trustedform.com/{}", ID.replace('a', "g")),
            format!("https://cert.trustedform.com/certs/{ID}"),
            format!("https://evil.example.com/{ID}"),
            format!("https://cert.trustedform.com.evil.example/{ID}"),
            format!("https://user@cert.trustedform.com/{ID}"),
            format!("https://cert.trustedform.com:8443/{ID}"),
            format!("ftp://cert.trustedform.com/{ID}"),
            format!("https://cert.trustedform.com/{ID} extra"),
            ID.to_owned(),
            "Zoë Ñúñez".to_owned(),
            "🎉".to_owned(),
            huge("a"),
        ] {
            check_invalid(&raw);
        }
    }
}
