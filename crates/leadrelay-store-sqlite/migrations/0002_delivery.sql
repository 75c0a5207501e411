-- Delivery: the transfers table is also the outbox. A transfer waiting for delivery is
-- `pending` and due at `due_at`; a claim moves `due_at` to the end of its lease and names
-- the node in `lease_owner`, so a transfer whose node died is due again when the lease ends.

ALTER TABLE transfers ADD COLUMN state TEXT NOT NULL DEFAULT 'done';
ALTER TABLE transfers ADD COLUMN due_at INTEGER;
ALTER TABLE transfers ADD COLUMN lease_owner TEXT;
-- `attempts` when the transfer was last resent: the retry schedule counts from there.
ALTER TABLE transfers ADD COLUMN retry_base INTEGER NOT NULL DEFAULT 0;

-- The transfers the spine recorded as `new` were waiting for this: queue them.
UPDATE transfers SET state = 'pending', due_at = created_at WHERE status = 'new' AND destination_id IS NOT NULL;

CREATE INDEX transfers_due ON transfers (destination_id, due_at) WHERE state = 'pending';
CREATE INDEX transfers_abandoned ON transfers (created_at) WHERE state = 'abandoned';

-- One row per delivery attempt; the request and the response are in the event it names.
CREATE TABLE attempts (
    transfer_id   TEXT    NOT NULL,
    attempt       INTEGER NOT NULL,
    started_at    INTEGER NOT NULL,
    duration_ms   INTEGER NOT NULL,
    outcome       TEXT    NOT NULL,
    response_code INTEGER,
    event_id      TEXT    NOT NULL,
    PRIMARY KEY (transfer_id, attempt, event_id)
) WITHOUT ROWID;

-- Background jobs (bulk resends) with their progress; a running job resumes at `cursor`.
CREATE TABLE jobs (
    id         TEXT    PRIMARY KEY,
    kind       TEXT    NOT NULL,
    status     TEXT    NOT NULL,
    params     TEXT    NOT NULL,
    cursor     TEXT,
    matched    INTEGER NOT NULL DEFAULT 0,
    queued     INTEGER NOT NULL DEFAULT 0,
    skipped    INTEGER NOT NULL DEFAULT 0,
    error      TEXT,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
) WITHOUT ROWID;

-- Successful deliveries per cap window: a destination's caps read these counters.
CREATE TABLE cap_counters (
    destination_id TEXT    NOT NULL,
    cap_key        TEXT    NOT NULL,
    window_start   INTEGER NOT NULL,
    count          INTEGER NOT NULL,
    PRIMARY KEY (destination_id, cap_key, window_start)
) WITHOUT ROWID;
