-- The spine: configuration, leads, the event log with its hash chain, the register,
-- duplicate keys, idempotency keys and API tokens.

CREATE TABLE config_objects (
    kind        TEXT    NOT NULL,
    id          TEXT    NOT NULL,
    position    INTEGER NOT NULL,
    body        TEXT    NOT NULL,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    PRIMARY KEY (kind, id)
) WITHOUT ROWID;

CREATE TABLE leads (
    seq          INTEGER PRIMARY KEY,
    id           TEXT    NOT NULL UNIQUE,
    flow_id      TEXT    NOT NULL,
    source_id    TEXT    NOT NULL,
    created_at   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL,
    status       TEXT    NOT NULL,
    outcome      TEXT,
    reason       TEXT,
    duplicate_of TEXT,
    cost         REAL,
    snapshot_id  INTEGER NOT NULL
);
CREATE INDEX leads_by_time ON leads (created_at);
CREATE INDEX leads_by_flow ON leads (flow_id, created_at);
CREATE INDEX leads_by_source ON leads (source_id, created_at);
CREATE INDEX leads_by_outcome ON leads (outcome, created_at);

-- Lead snapshots, each stored once and shared by the events between two changes of a lead.
-- `digest` stays when erasure rewrites `body`, so the chain still verifies.
CREATE TABLE snapshots (
    id      INTEGER PRIMARY KEY,
    lead_id TEXT    NOT NULL,
    body    TEXT    NOT NULL,
    digest  BLOB    NOT NULL,
    erased  INTEGER NOT NULL DEFAULT 0
);

-- Append-only. `seq` is contiguous from 1; `hash` links each event to the one before.
CREATE TABLE events (
    seq            INTEGER PRIMARY KEY,
    id             TEXT    NOT NULL,
    type           TEXT    NOT NULL,
    ts             INTEGER NOT NULL,
    lead_id        TEXT    NOT NULL,
    flow_id        TEXT    NOT NULL,
    source_id      TEXT    NOT NULL,
    destination_id TEXT,
    transfer_id    TEXT,
    status         TEXT,
    outcome        TEXT,
    reason         TEXT,
    duration_ms    INTEGER,
    integration    TEXT,
    response_code  INTEGER,
    price          REAL,
    attempt        INTEGER,
    data           TEXT    NOT NULL,
    snapshot_id    INTEGER NOT NULL,
    content_digest BLOB    NOT NULL,
    hash           BLOB    NOT NULL,
    erased         INTEGER NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX events_by_id ON events (id);
CREATE INDEX events_by_time ON events (ts);
CREATE INDEX events_by_lead ON events (lead_id, ts);
CREATE INDEX events_by_type ON events (type, ts);
CREATE INDEX events_by_status ON events (status, ts) WHERE status IS NOT NULL;
CREATE INDEX events_by_source ON events (source_id, ts);
CREATE INDEX events_by_destination ON events (destination_id, ts) WHERE destination_id IS NOT NULL;
CREATE INDEX events_by_flow ON events (flow_id, ts);

-- The last link of the chain, so that removing events from the end is detected too.
CREATE TABLE chain_head (
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    seq  INTEGER NOT NULL,
    hash BLOB    NOT NULL
);

CREATE TABLE transfers (
    seq            INTEGER PRIMARY KEY,
    id             TEXT    NOT NULL UNIQUE,
    lead_id        TEXT    NOT NULL,
    flow_id        TEXT    NOT NULL,
    source_id      TEXT    NOT NULL,
    destination_id TEXT,
    status         TEXT    NOT NULL,
    description    TEXT    NOT NULL,
    created_at     INTEGER NOT NULL,
    updated_at     INTEGER NOT NULL,
    attempts       INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX transfers_by_time ON transfers (created_at);
CREATE INDEX transfers_by_lead ON transfers (lead_id, created_at);
CREATE INDEX transfers_by_status ON transfers (status, created_at);
CREATE INDEX transfers_by_source ON transfers (source_id, created_at);
CREATE INDEX transfers_by_destination ON transfers (destination_id, created_at) WHERE destination_id IS NOT NULL;
CREATE INDEX transfers_by_flow ON transfers (flow_id, created_at);

CREATE TABLE duplicate_keys (
    flow_id    TEXT    NOT NULL,
    digest     TEXT    NOT NULL,
    lead_id    TEXT    NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE INDEX duplicate_keys_lookup ON duplicate_keys (flow_id, digest, created_at);

CREATE TABLE idempotency_keys (
    source_id   TEXT    NOT NULL,
    key         TEXT    NOT NULL,
    http_status INTEGER NOT NULL,
    answer      TEXT    NOT NULL,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (source_id, key)
) WITHOUT ROWID;

CREATE TABLE tokens (
    id         TEXT    PRIMARY KEY,
    name       TEXT    NOT NULL,
    role       TEXT    NOT NULL,
    hash       BLOB    NOT NULL UNIQUE,
    created_at INTEGER NOT NULL
) WITHOUT ROWID;
