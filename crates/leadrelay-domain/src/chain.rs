//! The event log's hash chain: each event's hash covers the previous hash, the event's
//! header fields and a digest of its content (data and lead snapshot).
//!
//! An event's content is its `data` and the lead snapshot it refers to. The digests are stored
//! beside the content, so erasing a lead's PII (which rewrites snapshots and data) keeps the
//! chain verifiable: erased content is checked against its stored digest.

use serde::Serialize;
use sha2::{Digest, Sha256};

pub type Hash = [u8; 32];

/// The hash before the first event.
pub const GENESIS: Hash = [0u8; 32];

/// Every stored column of an event except its content, in a fixed order.
#[derive(Serialize)]
pub struct ChainHeader<'a> {
    pub seq: i64,
    pub id: &'a str,
    #[serde(rename = "type")]
    pub event_type: &'a str,
    pub timestamp: i64,
    pub lead_id: &'a str,
    pub flow_id: &'a str,
    pub source_id: &'a str,
    pub destination_id: Option<&'a str>,
    pub transfer_id: Option<&'a str>,
    pub status: Option<&'a str>,
    pub outcome: Option<&'a str>,
    pub reason: Option<&'a str>,
    pub duration_ms: Option<i64>,
    pub integration: Option<&'a str>,
    pub response_code: Option<i64>,
    pub price: Option<f64>,
    pub attempt: Option<i64>,
}

/// The digest of a lead snapshot's JSON text as stored.
pub fn snapshot_digest(lead_json: &str) -> Hash {
    Sha256::digest(lead_json.as_bytes()).into()
}

/// The digest of an event's content: its `data` JSON text as stored and its snapshot's digest.
pub fn content_digest(data_json: &str, snapshot: &Hash) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update(data_json.as_bytes());
    hasher.update(snapshot);
    hasher.finalize().into()
}

/// The hash of one event, linking it to the one before.
pub fn link(previous: &Hash, header: &ChainHeader<'_>, content: &Hash) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update(previous);
    // Serialising a struct of plain fields cannot fail.
    hasher.update(serde_json::to_vec(header).unwrap_or_default());
    hasher.update(content);
    hasher.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(reason: Option<&str>) -> ChainHeader<'_> {
        ChainHeader {
            seq: 1,
            id: "evt_x",
            event_type: "source.submitted",
            timestamp: 1,
            lead_id: "lead_x",
            flow_id: "f",
            source_id: "s",
            destination_id: None,
            transfer_id: None,
            status: Some("new"),
            outcome: None,
            reason,
            duration_ms: None,
            integration: None,
            response_code: None,
            price: Some(2.5),
            attempt: None,
        }
    }

    #[test]
    fn any_change_to_header_or_content_changes_the_hash() {
        let content = content_digest("{}", &snapshot_digest("{\"a\":1}"));
        let base = link(&GENESIS, &header(None), &content);
        assert_ne!(base, link(&GENESIS, &header(Some("x")), &content));
        assert_ne!(base, link(&GENESIS, &header(None), &content_digest("{}", &snapshot_digest("{\"a\":2}"))));
        assert_ne!(base, link(&[1u8; 32], &header(None), &content));
        assert_eq!(base, link(&GENESIS, &header(None), &content));
    }

    #[test]
    fn content_digest_covers_data_and_snapshot() {
        let snapshot = snapshot_digest("{}");
        assert_ne!(content_digest("{\"a\":1}", &snapshot), content_digest("{\"a\":2}", &snapshot));
        assert_ne!(content_digest("{}", &snapshot), content_digest("{}", &snapshot_digest("[]")));
    }
}
