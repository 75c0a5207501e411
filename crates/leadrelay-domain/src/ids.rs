//! Prefixed, time-ordered identifiers (`lead_…`, `evt_…`, `trf_…`) and user-chosen slugs.

use std::fmt;
use std::sync::{LazyLock, Mutex};

use serde::{Deserialize, Serialize};
use ulid::{Generator, Ulid};

/// One generator per process so that ids minted in the same millisecond still sort in order.
static GENERATOR: LazyLock<Mutex<Generator>> = LazyLock::new(|| Mutex::new(Generator::new()));

fn next_ulid() -> Ulid {
    let mut generator = GENERATOR.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    // Overflow only happens after 2^80 ids in one millisecond; fall back to a fresh random id.
    generator.generate().unwrap_or_else(|_| Ulid::new())
}

macro_rules! prefixed_id {
    ($(#[$meta:meta])* $name:ident, $prefix:literal) => {
        $(#[$meta])*
        #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub const PREFIX: &'static str = $prefix;

            /// Mints a new id that sorts after every id minted before it in this process.
            pub fn generate() -> Self {
                Self(format!("{}{}", $prefix, next_ulid().to_string().to_ascii_lowercase()))
            }

            /// Accepts a string only when it has this id's prefix and a well-formed ULID.
            pub fn parse(text: &str) -> Option<Self> {
                let rest = text.strip_prefix($prefix)?;
                if rest.len() != 26 || Ulid::from_string(&rest.to_ascii_uppercase()).is_err() {
                    return None;
                }
                Some(Self(text.to_ascii_lowercase()))
            }

            /// Wraps a value read back from storage, where it was validated on the way in.
            pub fn from_stored(text: String) -> Self {
                Self(text)
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }

            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

prefixed_id!(
    /// A lead, `lead_` + ULID.
    LeadId,
    "lead_"
);
prefixed_id!(
    /// An event of the log, `evt_` + ULID.
    EventId,
    "evt_"
);
prefixed_id!(
    /// A transfer (one lead to one destination), `trf_` + ULID.
    TransferId,
    "trf_"
);
prefixed_id!(
    /// An API token's public id, `tok_` + ULID.
    TokenId,
    "tok_"
);
prefixed_id!(
    /// A background job (a bulk resend), `job_` + ULID.
    JobId,
    "job_"
);

/// Checks a user-chosen configuration id: 1–64 characters of `a-z`, `0-9`, `-`, `_`,
/// starting with a letter or digit.
pub fn validate_slug(id: &str) -> Result<(), String> {
    let valid_start = id.chars().next().is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    let valid_chars = id.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if id.is_empty() || id.len() > 64 || !valid_start || !valid_chars {
        return Err(format!(
            "invalid id {id:?}: use 1-64 characters of a-z, 0-9, '-' and '_', starting with a letter or digit"
        ));
    }
    Ok(())
}

/// Makes a slug out of a display name, for objects written without an id: the same name
/// always gives the same slug, so applying a file twice names its objects the same way.
/// `fallback` stands in for a name without a letter or digit.
pub fn slug_from_name(name: &str, fallback: &str) -> String {
    let mut slug = String::new();
    for c in name.chars() {
        if c.is_ascii_alphanumeric() {
            slug.push(c.to_ascii_lowercase());
        } else if !slug.ends_with('-') && !slug.is_empty() {
            slug.push('-');
        }
        if slug.len() >= 48 {
            break;
        }
    }
    let slug = slug.trim_end_matches('-');
    if slug.is_empty() {
        fallback.to_owned()
    } else {
        slug.to_owned()
    }
}

/// A slug out of a display name with a random suffix, for an object created anew each time.
pub fn unique_slug_from_name(name: &str, fallback: &str) -> String {
    let suffix = &next_ulid().to_string().to_ascii_lowercase()[20..];
    format!("{}-{suffix}", slug_from_name(name, fallback))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_sort_in_minting_order() {
        let ids: Vec<EventId> = (0..1000).map(|_| EventId::generate()).collect();
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(ids, sorted);
        assert!(ids[0].as_str().starts_with("evt_"));
    }

    #[test]
    fn parse_accepts_only_its_own_prefix() {
        let lead = LeadId::generate();
        assert_eq!(LeadId::parse(lead.as_str()), Some(lead.clone()));
        assert_eq!(EventId::parse(lead.as_str()), None);
        assert_eq!(LeadId::parse("lead_nope"), None);
    }

    #[test]
    fn slugs_are_checked_and_derived() {
        assert!(validate_slug("crm-main_2").is_ok());
        assert!(validate_slug("Crm").is_err());
        assert!(validate_slug("").is_err());
        assert!(validate_slug("-x").is_err());
        assert_eq!(slug_from_name("Main CRM!", "destination"), "main-crm");
        assert_eq!(slug_from_name("☃", "flow"), "flow");
        assert!(unique_slug_from_name("Main CRM!", "destination").starts_with("main-crm-"));
        assert_ne!(unique_slug_from_name("x", "flow"), unique_slug_from_name("x", "flow"));
        assert!(validate_slug(&unique_slug_from_name("Ünïcödé ☃", "flow")).is_ok());
    }
}
