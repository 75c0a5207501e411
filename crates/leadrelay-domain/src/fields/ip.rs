//! The `ip` field type: an IPv4 or IPv6 address, and whether it is a private (non-public)
//! address.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde_json::Value;

use super::Parsed;

const COMPONENTS: [&str; 2] = ["version", "is_private"];

/// Longer than any textual IPv6 address; longer input is not parsed at all.
const MAX_LENGTH: usize = 64;

pub(super) fn parse(trimmed: &str) -> Parsed {
    if trimmed.len() > MAX_LENGTH {
        return Parsed::unparsed(trimmed, &COMPONENTS);
    }
    let Ok(address) = trimmed.parse::<IpAddr>() else {
        return Parsed::unparsed(trimmed, &COMPONENTS);
    };
    let (version, is_private) = match address {
        IpAddr::V4(v4) => (4, is_private_v4(v4)),
        IpAddr::V6(v6) => (6, is_private_v6(v6)),
    };
    Parsed::new(Value::String(address.to_string()), true).with("version", version).with("is_private", is_private)
}

/// Private (RFC 1918), loopback or link-local.
fn is_private_v4(address: Ipv4Addr) -> bool {
    address.is_private() || address.is_loopback() || address.is_link_local()
}

/// Loopback, link-local, unique-local, or an IPv4-mapped address that is private as IPv4.
fn is_private_v6(address: Ipv6Addr) -> bool {
    if let Some(v4) = address.to_ipv4_mapped() {
        return is_private_v4(v4);
    }
    address.is_loopback() || address.is_unicast_link_local() || address.is_unique_local()
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::super::test_support::{assert_parsed, huge};
    use super::super::FieldType;

    #[track_caller]
    fn check(raw: &str, expected: Value) {
        assert_parsed(FieldType::Ip, raw, expected);
    }

    #[track_caller]
    fn check_address(raw: &str, value: &str, version: u8, is_private: bool) {
        check(raw, json!({"value": value, "valid": true, "version": version, "is_private": is_private}));
    }

    #[test]
    fn public_addresses_are_not_private() {
        check_address("8.8.8.8", "8.8.8.8", 4, false);
        check_address(" 203.0.113.7 ", "203.0.113.7", 4, false);
        check_address("2001:4860:4860::8888", "2001:4860:4860::8888", 6, false);
        check_address("2001:4860:4860:0000:0000:0000:0000:8888", "2001:4860:4860::8888", 6, false);
        check_address("::ffff:8.8.8.8", "::ffff:8.8.8.8", 6, false);
    }

    #[test]
    fn private_loopback_and_link_local_addresses_are_private() {
        for (raw, value, version) in [
            ("10.1.2.3", "10.1.2.3", 4),
            ("172.16.0.1", "172.16.0.1", 4),
            ("192.168.1.1", "192.168.1.1", 4),
            ("127.0.0.1", "127.0.0.1", 4),
            ("169.254.169.254", "169.254.169.254", 4),
            ("::1", "::1", 6),
            ("FE80::1", "fe80::1", 6),
            ("fd12:3456:789a::1", "fd12:3456:789a::1", 6),
            ("::ffff:192.168.0.1", "::ffff:192.168.0.1", 6),
        ] {
            check_address(raw, value, version, true);
        }
    }

    #[test]
    fn anything_else_is_invalid() {
        for raw in [
            "",
            "  ",
            "256.1.1.1",
            "1.2.3",
            "010.0.0.1",
            "1.2.3.4.5",
            "::g",
            "[::1]",
            "1.2.3.4:80",
            "example.com",
            "Zoë",
            "🎉",
            "１.２.３.４",
        ] {
            check(raw, json!({"value": raw.trim(), "valid": false, "version": null, "is_private": null}));
        }
        let huge = huge("1.");
        check(&huge, json!({"value": huge, "valid": false, "version": null, "is_private": null}));
    }
}
