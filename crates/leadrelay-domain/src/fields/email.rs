//! The `email` field type: a syntactically valid address, its parts, and whether its domain is a
//! free or a disposable mail provider.

use std::collections::HashSet;
use std::sync::LazyLock;

use email_address::{EmailAddress, Options};
use serde_json::Value;

use super::Parsed;

const COMPONENTS: [&str; 4] = ["user", "domain", "is_free", "is_disposable"];

/// RFC 5321 caps a path at 256 octets; anything much longer is rejected before real parsing.
const MAX_LENGTH: usize = 320;

/// Well-known free mailbox providers, matched on the whole domain.
const FREE_DOMAINS: &[&str] = &[
    "gmail.com",
    "googlemail.com",
    "yahoo.com",
    "ymail.com",
    "rocketmail.com",
    "hotmail.com",
    "outlook.com",
    "live.com",
    "msn.com",
    "aol.com",
    "aim.com",
    "icloud.com",
    "me.com",
    "mac.com",
    "gmx.com",
    "gmx.net",
    "gmx.de",
    "mail.com",
    "email.com",
    "mail.ru",
    "inbox.ru",
    "list.ru",
    "bk.ru",
    "yandex.ru",
    "yandex.com",
    "ya.ru",
    "proton.me",
    "protonmail.com",
    "protonmail.ch",
    "pm.me",
    "tutanota.com",
    "tuta.io",
    "zoho.com",
    "zohomail.com",
    "web.de",
    "t-online.de",
    "freenet.de",
    "libero.it",
    "orange.fr",
    "laposte.net",
    "qq.com",
    "163.com",
    "126.com",
    "naver.com",
    "fastmail.com",
    "hey.com",
    "rediffmail.com",
    "seznam.cz",
    "wp.pl",
    "o2.pl",
];

/// Providers that run the same free service under many country domains (`yahoo.co.uk`,
/// `hotmail.fr`, `gmx.at`): matched on the first label followed by a country-style suffix.
const FREE_FAMILIES: &[&str] = &["gmx", "yahoo", "hotmail", "outlook", "live", "yandex"];

/// Well-known disposable (throw-away) mailbox domains, matched on the domain or a parent domain.
const DISPOSABLE_DOMAINS: &[&str] = &[
    "mailinator.com",
    "mailinator.net",
    "mailinator2.com",
    "guerrillamail.com",
    "guerrillamail.net",
    "guerrillamail.org",
    "guerrillamail.biz",
    "guerrillamail.de",
    "guerrillamailblock.com",
    "sharklasers.com",
    "grr.la",
    "pokemail.net",
    "spam4.me",
    "10minutemail.com",
    "10minutemail.net",
    "20minutemail.com",
    "tempmail.com",
    "tempmail.net",
    "temp-mail.org",
    "temp-mail.io",
    "tempmailo.com",
    "tempr.email",
    "tempinbox.com",
    "yopmail.com",
    "yopmail.fr",
    "yopmail.net",
    "trashmail.com",
    "trashmail.net",
    "trashmail.de",
    "trashmail.me",
    "throwawaymail.com",
    "getnada.com",
    "nada.email",
    "dispostable.com",
    "maildrop.cc",
    "mailnesia.com",
    "mintemail.com",
    "mohmal.com",
    "fakeinbox.com",
    "emailondeck.com",
    "getairmail.com",
    "spamgourmet.com",
    "mailcatch.com",
    "mytemp.email",
    "burnermail.io",
    "discard.email",
    "spambox.us",
    "moakt.com",
    "inboxkitten.com",
    "mail.tm",
    "emailfake.com",
    "fakemail.net",
    "mailpoof.com",
    "harakirimail.com",
    "33mail.com",
];

static FREE: LazyLock<HashSet<&'static str>> = LazyLock::new(|| FREE_DOMAINS.iter().copied().collect());
static DISPOSABLE: LazyLock<HashSet<&'static str>> = LazyLock::new(|| DISPOSABLE_DOMAINS.iter().copied().collect());

pub(super) fn parse(trimmed: &str) -> Parsed {
    if trimmed.len() > MAX_LENGTH {
        return Parsed::unparsed(trimmed, &COMPONENTS);
    }
    let options = Options::default().with_required_tld().without_domain_literal().without_display_text();
    let Ok(address) = EmailAddress::parse_with_options(trimmed, options) else {
        return Parsed::unparsed(trimmed, &COMPONENTS);
    };
    let user = address.local_part().to_lowercase();
    let domain = address.domain().to_lowercase();
    if !domain.contains('.') || domain.ends_with('.') || !is_host_name(&domain) {
        return Parsed::unparsed(trimmed, &COMPONENTS);
    }
    let is_free = is_free(&domain);
    let is_disposable = is_disposable(&domain);
    Parsed::new(Value::String(format!("{user}@{domain}")), true)
        .with("user", user)
        .with("domain", domain)
        .with("is_free", is_free)
        .with("is_disposable", is_disposable)
}

/// A domain mail can be delivered to: labels of letters, digits and inner hyphens (`x_y.com`
/// is no host name), and a top-level domain of at least two letters (`x.c` has none). Unicode
/// labels are left as they are.
fn is_host_name(domain: &str) -> bool {
    let labels: Vec<&str> = domain.split('.').collect();
    let tld = labels.last().copied().unwrap_or_default();
    let tld_ok = tld.chars().count() >= 2 && !tld.chars().all(|c| c.is_ascii_digit());
    tld_ok
        && labels.iter().all(|label| {
            !label.is_empty()
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_alphanumeric() || c == '-')
        })
}

fn is_free(domain: &str) -> bool {
    if FREE.contains(domain) {
        return true;
    }
    let Some((first_label, suffix)) = domain.split_once('.') else {
        return false;
    };
    // A country-style suffix is one or two short labels: `fr`, `co.uk`, `com.br`.
    let country_suffix =
        suffix.split('.').count() <= 2 && suffix.split('.').all(|label| (2..=3).contains(&label.len()));
    FREE_FAMILIES.contains(&first_label) && country_suffix
}

fn is_disposable(domain: &str) -> bool {
    // Disposable services hand out subdomains too (`abc.mailinator.com`).
    let mut candidate = domain;
    loop {
        if DISPOSABLE.contains(candidate) {
            return true;
        }
        match candidate.split_once('.') {
            Some((_, parent)) if parent.contains('.') => candidate = parent,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::super::test_support::{assert_parsed, huge};
    use super::super::FieldType;

    #[track_caller]
    fn check(raw: &str, expected: Value) {
        assert_parsed(FieldType::Email, raw, expected);
    }

    #[track_caller]
    fn check_invalid(raw: &str) {
        let value = raw.trim();
        check(
            raw,
            json!({"value": value, "valid": false, "user": null, "domain": null, "is_free": null, "is_disposable": null}),
        );
    }

    #[test]
    fn a_plain_address_is_lowercased_and_split_into_user_and_domain() {
        check(
            "  John.Doe@Example.COM ",
            json!({"value": "john.doe@example.com", "valid": true, "user": "john.doe", "domain": "example.com", "is_free": false, "is_disposable": false}),
        );
        check(
            "first+tag@sub.example.co.uk",
            json!({"value": "first+tag@sub.example.co.uk", "valid": true, "user": "first+tag", "domain": "sub.example.co.uk", "is_free": false, "is_disposable": false}),
        );
    }

    #[test]
    fn free_providers_are_flagged_including_their_country_domains() {
        for raw in [
            "a@gmail.com",
            "a@GMAIL.com",
            "a@yahoo.com",
            "a@hotmail.com",
            "a@outlook.com",
            "a@aol.com",
            "a@icloud.com",
            "a@gmx.de",
            "a@gmx.at",
            "a@mail.ru",
            "a@yandex.ru",
            "a@yandex.kz",
            "a@proton.me",
            "a@protonmail.com",
            "a@web.de",
            "a@yahoo.co.uk",
            "a@hotmail.fr",
            "a@live.com.br",
        ] {
            let out = super::super::parse_field(FieldType::Email, raw);
            assert_eq!(out["is_free"], json!(true), "{raw}");
            assert_eq!(out["is_disposable"], json!(false), "{raw}");
        }
        for raw in ["a@example.com", "a@gmx.example.com", "a@mygmail.com", "a@yahoo.company.com"] {
            let out = super::super::parse_field(FieldType::Email, raw);
            assert_eq!(out["is_free"], json!(false), "{raw}");
        }
    }

    #[test]
    fn disposable_domains_and_their_subdomains_are_flagged() {
        for raw in [
            "x@mailinator.com",
            "x@guerrillamail.com",
            "x@10minutemail.com",
            "x@tempmail.com",
            "x@temp-mail.org",
            "x@yopmail.com",
            "x@trashmail.com",
            "x@box.mailinator.com",
        ] {
            let out = super::super::parse_field(FieldType::Email, raw);
            assert_eq!(out["is_disposable"], json!(true), "{raw}");
            assert_eq!(out["is_free"], json!(false), "{raw}");
        }
        let out = super::super::parse_field(FieldType::Email, "x@notmailinator.com");
        assert_eq!(out["is_disposable"], json!(false));
    }

    #[test]
    fn malformed_addresses_are_invalid_and_keep_the_trimmed_text() {
        for raw in [
            "",
            "   ",
            "plainaddress",
            "@example.com",
            "user@",
            "user@localhost",
            "user@example.",
            "user@@example.com",
            "user@exa mple.com",
            "John <john@example.com>",
            "user@[192.168.0.1]",
            "a@b@c.com",
            " Not An Email ",
            "user@.com",
            "jo@x_y.com",
            "jo@x.c",
            "jo@-x.com",
            "jo@x.123",
        ] {
            check_invalid(raw);
        }
    }

    #[test]
    fn unicode_addresses_are_handled_without_panicking() {
        let out = super::super::parse_field(FieldType::Email, "Zoë@Ñúñez.es");
        if out["valid"] == json!(true) {
            assert_eq!(out["value"], json!("zoë@ñúñez.es"));
        }
        check_invalid("🎉");
        check_invalid("Zoë Ñúñez");
    }

    #[test]
    fn huge_input_is_invalid() {
        check_invalid(&format!("{}@example.com", huge("a")));
        check_invalid(&huge("@"));
    }
}
