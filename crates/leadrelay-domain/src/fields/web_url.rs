//! The `url` field type: an http or https address, with `http://` assumed when the scheme is
//! left out (`example.com/page`).

use serde_json::Value;
use url::Url;

use super::Parsed;

const COMPONENTS: [&str; 3] = ["scheme", "host", "path"];

/// Generous for landing pages with tracking parameters; longer input is not parsed at all.
const MAX_LENGTH: usize = 8 * 1024;

pub(super) fn parse(trimmed: &str) -> Parsed {
    match to_url(trimmed) {
        Some(url) => {
            let host = url.host_str().unwrap_or_default().to_owned();
            Parsed::new(Value::String(url.as_str().to_owned()), true)
                .with("scheme", url.scheme())
                .with("host", host)
                .with("path", url.path())
        }
        None => Parsed::unparsed(trimmed, &COMPONENTS),
    }
}

fn to_url(trimmed: &str) -> Option<Url> {
    // Whitespace inside is not part of any address people paste; the url crate would quietly
    // drop tabs and newlines and escape spaces.
    if trimmed.is_empty() || trimmed.len() > MAX_LENGTH || trimmed.contains(char::is_whitespace) {
        return None;
    }
    if trimmed.contains("://") {
        return Url::parse(trimmed).ok().filter(is_web_address);
    }
    // Without a scheme, `example.com` is meant; but `mailto:a@b.com` must not turn into a web
    // address with a user name, and a bare word is not a host.
    let url = Url::parse(&format!("http://{trimmed}")).ok().filter(is_web_address)?;
    let has_credentials = !url.username().is_empty() || url.password().is_some();
    let host = url.host_str().unwrap_or_default();
    let looks_like_host = host.contains('.') || host.contains(':') || host == "localhost";
    (!has_credentials && looks_like_host).then_some(url)
}

fn is_web_address(url: &Url) -> bool {
    matches!(url.scheme(), "http" | "https") && url.host_str().is_some_and(|host| !host.is_empty())
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::super::test_support::{assert_parsed, huge};
    use super::super::FieldType;

    #[track_caller]
    fn check(raw: &str, expected: Value) {
        assert_parsed(FieldType::Url, raw, expected);
    }

    #[track_caller]
    fn check_url(raw: &str, value: &str, scheme: &str, host: &str, path: &str) {
        check(raw, json!({"value": value, "valid": true, "scheme": scheme, "host": host, "path": path}));
    }

    #[track_caller]
    fn check_invalid(raw: &str) {
        check(raw, json!({"value": raw.trim(), "valid": false, "scheme": null, "host": null, "path": null}));
    }

    #[test]
    fn http_and_https_addresses_are_normalised() {
        check_url("https://example.com", "https://example.com/", "https", "example.com", "/");
        check_url(
            " HTTP://Example.COM/Path?q=1#top ",
            "http://example.com/Path?q=1#top",
            "http",
            "example.com",
            "/Path",
        );
        check_url("https://example.com:443/a/../b", "https://example.com/b", "https", "example.com", "/b");
        check_url("http://intranet/", "http://intranet/", "http", "intranet", "/");
        check_url("https://bücher.de/", "https://xn--bcher-kva.de/", "https", "xn--bcher-kva.de", "/");
        check_url("http://[::1]:8080/x", "http://[::1]:8080/x", "http", "[::1]", "/x");
    }

    #[test]
    fn a_missing_scheme_means_http() {
        check_url("example.com", "http://example.com/", "http", "example.com", "/");
        check_url(
            "www.example.com/landing?utm=1",
            "http://www.example.com/landing?utm=1",
            "http",
            "www.example.com",
            "/landing",
        );
        check_url("localhost:3000", "http://localhost:3000/", "http", "localhost", "/");
        check_url("10.0.0.1/admin", "http://10.0.0.1/admin", "http", "10.0.0.1", "/admin");
    }

    #[test]
    fn other_schemes_bare_words_and_garbage_are_invalid() {
        for raw in [
            "",
            "  ",
            "ftp://example.com/file",
            "mailto:a@example.com",
            "javascript:alert(1)",
            "file:///etc/passwd",
            "hello",
            "http://",
            "://",
            "https://exa mple.com",
            "example .com",
            "data:text/html,hi",
            "user:pass@example.com",
            "Zoë Ñúñez",
            "🎉",
            "http://\u{0}/",
        ] {
            check_invalid(raw);
        }
        check_invalid(&format!("https://{}.com", huge("a")));
    }
}
