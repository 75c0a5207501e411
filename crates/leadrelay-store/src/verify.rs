//! `verify`, the same on every engine: an engine reads the log in order and hands each stored
//! row to a [`ChainWalk`], which checks the sequence, the content digests and the links.

use leadrelay_domain::chain::{content_digest, link, snapshot_digest, ChainHeader, Hash, GENESIS};

use crate::{BrokenLink, ChainReport};

/// One event as stored, with its snapshot, as `verify` reads it.
#[derive(Clone, Debug, Default)]
pub struct ChainRow {
    pub seq: i64,
    pub id: String,
    pub event_type: String,
    pub timestamp: i64,
    pub lead_id: String,
    pub flow_id: String,
    pub source_id: String,
    pub destination_id: Option<String>,
    pub transfer_id: Option<String>,
    pub status: Option<String>,
    pub outcome: Option<String>,
    pub reason: Option<String>,
    pub duration_ms: Option<i64>,
    pub integration: Option<String>,
    pub response_code: Option<i64>,
    pub price: Option<f64>,
    pub attempt: Option<i64>,
    pub data: String,
    pub content_digest: Vec<u8>,
    pub hash: Vec<u8>,
    pub erased: bool,
    /// The snapshot's body, digest and erasure mark; `None` when the snapshot is missing.
    pub snapshot: Option<(String, Vec<u8>, bool)>,
}

impl ChainRow {
    /// Whether erasure rewrote this event's content or its snapshot: only a `lead.erased`
    /// event of the same lead may explain that, which the engine looks up.
    pub fn erased(&self) -> bool {
        self.erased || self.snapshot.as_ref().is_some_and(|(_, _, erased)| *erased)
    }
}

/// The walk along the log: where it is and what it has checked.
pub struct ChainWalk {
    previous: Hash,
    last_seq: i64,
    checked: u64,
}

impl Default for ChainWalk {
    fn default() -> Self {
        Self { previous: GENESIS, last_seq: 0, checked: 0 }
    }
}

impl ChainWalk {
    /// The sequence number of the last event checked; the next read starts after it.
    pub fn last_seq(&self) -> i64 {
        self.last_seq
    }

    /// Checks the next row; a report of the first broken link when it is broken.
    /// `erasure_recorded` says whether the lead has a `lead.erased` event (asked only of
    /// [`ChainRow::erased`] rows).
    pub fn check(&mut self, row: &ChainRow, erasure_recorded: bool) -> Result<(), ChainReport> {
        let broken = |problem: String| ChainReport {
            events_checked: self.checked,
            first_broken: Some(BrokenLink { seq: row.seq, event_id: row.id.clone(), problem }),
        };
        if row.seq != self.last_seq + 1 {
            return Err(broken(format!("events {} to {} are missing", self.last_seq + 1, row.seq - 1)));
        }
        if row.erased() && !erasure_recorded {
            return Err(broken("its content is marked erased, but no lead.erased event records it".to_owned()));
        }
        let Some((body, stored_snapshot, snapshot_erased)) = &row.snapshot else {
            return Err(broken("its lead snapshot is missing".to_owned()));
        };
        // Erasure rewrites content on purpose and marks it; the stored digest stands for it.
        let snapshot: Hash = if *snapshot_erased {
            stored_snapshot.as_slice().try_into().unwrap_or([0u8; 32])
        } else {
            let digest = snapshot_digest(body);
            if digest[..] != stored_snapshot[..] {
                return Err(broken("its lead snapshot was changed".to_owned()));
            }
            digest
        };
        let content: Hash = if row.erased {
            row.content_digest.as_slice().try_into().unwrap_or([0u8; 32])
        } else {
            content_digest(&row.data, &snapshot)
        };
        if content[..] != row.content_digest[..] {
            return Err(broken("its data was changed".to_owned()));
        }
        let header = ChainHeader {
            seq: row.seq,
            id: &row.id,
            event_type: &row.event_type,
            timestamp: row.timestamp,
            lead_id: &row.lead_id,
            flow_id: &row.flow_id,
            source_id: &row.source_id,
            destination_id: row.destination_id.as_deref(),
            transfer_id: row.transfer_id.as_deref(),
            status: row.status.as_deref(),
            outcome: row.outcome.as_deref(),
            reason: row.reason.as_deref(),
            duration_ms: row.duration_ms,
            integration: row.integration.as_deref(),
            response_code: row.response_code,
            price: row.price,
            attempt: row.attempt,
        };
        let hash = link(&self.previous, &header, &content);
        if hash[..] != row.hash[..] {
            return Err(broken(
                "its fields do not match its hash, or an event before it was changed or removed".to_owned(),
            ));
        }
        self.previous = hash;
        self.last_seq = row.seq;
        self.checked += 1;
        Ok(())
    }

    /// The report once every row is checked: the log must end where its head says.
    pub fn finish(self, head_seq: i64, head_hash: &[u8]) -> ChainReport {
        let problem = if head_seq > self.last_seq {
            Some(format!(
                "the log ends at event {} but its head says {head_seq}: events were removed from the end",
                self.last_seq
            ))
        } else if head_seq < self.last_seq {
            Some(format!(
                "the log goes on to event {} but its head says {head_seq}: events were added after the head, or the \
                 head was changed",
                self.last_seq
            ))
        } else if head_hash[..] != self.previous[..] {
            Some(format!(
                "the head's hash does not match event {}, the last one: the chain head was changed, or the last \
                 events were replaced",
                self.last_seq
            ))
        } else {
            None
        };
        if let Some(problem) = problem {
            return ChainReport {
                events_checked: self.checked,
                first_broken: Some(BrokenLink { seq: head_seq.max(self.last_seq), event_id: String::new(), problem }),
            };
        }
        ChainReport { events_checked: self.checked, first_broken: None }
    }
}
