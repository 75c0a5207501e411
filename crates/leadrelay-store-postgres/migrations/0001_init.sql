-- The PostgreSQL schema of leadrelay: the same tables as the SQLite engine's, in PostgreSQL's
-- types. JSON texts stay TEXT: the hash chain covers them byte for byte, and jsonb would
-- rewrite them.

CREATE TABLE config_objects (
    kind        TEXT   NOT NULL,
    id          TEXT   NOT NULL,
    position    BIGINT NOT NULL,
    body        TEXT   NOT NULL,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL,
    PRIMARY KEY (kind, id)
);

CREATE TABLE leads (
    seq          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id           TEXT   NOT NULL UNIQUE,
    flow_id      TEXT   NOT NULL,
    source_id    TEXT   NOT NULL,
    created_at   BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL,
    status       TEXT   NOT NULL,
    outcome      TEXT,
    reason       TEXT,
    duplicate_of TEXT,
    cost         DOUBLE PRECISION,
    snapshot_id  BIGINT NOT NULL
);
CREATE INDEX leads_by_time ON leads (created_at, seq);
CREATE INDEX leads_by_flow ON leads (flow_id, created_at, seq);
CREATE INDEX leads_by_source ON leads (source_id, created_at, seq);
CREATE INDEX leads_by_outcome ON leads (outcome, created_at, seq);

-- Lead snapshots, each stored once and shared by the events between two changes of a lead.
CREATE TABLE snapshots (
    id      BIGINT  PRIMARY KEY,
    lead_id TEXT    NOT NULL,
    body    TEXT    NOT NULL,
    digest  BYTEA   NOT NULL,
    erased  BOOLEAN NOT NULL DEFAULT FALSE
);

-- Append-only. `seq` is contiguous from 1; `hash` links each event to the one before. Writers
-- on every node take the `chain_head` row lock before they number events.
CREATE TABLE events (
    seq            BIGINT  PRIMARY KEY,
    id             TEXT    NOT NULL,
    type           TEXT    NOT NULL,
    ts             BIGINT  NOT NULL,
    lead_id        TEXT    NOT NULL,
    flow_id        TEXT    NOT NULL,
    source_id      TEXT    NOT NULL,
    destination_id TEXT,
    transfer_id    TEXT,
    status         TEXT,
    outcome        TEXT,
    reason         TEXT,
    duration_ms    BIGINT,
    integration    TEXT,
    response_code  BIGINT,
    price          DOUBLE PRECISION,
    attempt        BIGINT,
    data           TEXT    NOT NULL,
    snapshot_id    BIGINT  NOT NULL,
    content_digest BYTEA   NOT NULL,
    hash           BYTEA   NOT NULL,
    erased         BOOLEAN NOT NULL DEFAULT FALSE
);
CREATE UNIQUE INDEX events_by_id ON events (id);
CREATE INDEX events_by_time ON events (ts, seq);
CREATE INDEX events_by_lead ON events (lead_id, ts, seq);
CREATE INDEX events_by_type ON events (type, ts, seq);
CREATE INDEX events_by_status ON events (status, ts, seq) WHERE status IS NOT NULL;
CREATE INDEX events_by_source ON events (source_id, ts, seq);
CREATE INDEX events_by_destination ON events (destination_id, ts, seq) WHERE destination_id IS NOT NULL;
CREATE INDEX events_by_flow ON events (flow_id, ts, seq);

-- The last link of the chain and the last snapshot id handed out; one row.
CREATE TABLE chain_head (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    seq         BIGINT  NOT NULL,
    hash        BYTEA   NOT NULL,
    snapshot_id BIGINT  NOT NULL
);

-- The register, and the outbox: a transfer waiting for delivery is `pending` and due at
-- `due_at`; a claim moves `due_at` to the end of its lease and names the node.
CREATE TABLE transfers (
    seq            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id             TEXT   NOT NULL UNIQUE,
    lead_id        TEXT   NOT NULL,
    flow_id        TEXT   NOT NULL,
    source_id      TEXT   NOT NULL,
    destination_id TEXT,
    status         TEXT   NOT NULL,
    description    TEXT   NOT NULL,
    created_at     BIGINT NOT NULL,
    updated_at     BIGINT NOT NULL,
    attempts       BIGINT NOT NULL DEFAULT 0,
    state          TEXT   NOT NULL DEFAULT 'done',
    due_at         BIGINT,
    lease_owner    TEXT,
    retry_base     BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX transfers_by_time ON transfers (created_at, seq);
CREATE INDEX transfers_by_lead ON transfers (lead_id, created_at, seq);
CREATE INDEX transfers_by_status ON transfers (status, created_at, seq);
CREATE INDEX transfers_by_source ON transfers (source_id, created_at, seq);
CREATE INDEX transfers_by_destination ON transfers (destination_id, created_at, seq) WHERE destination_id IS NOT NULL;
CREATE INDEX transfers_by_flow ON transfers (flow_id, created_at, seq);
CREATE INDEX transfers_due ON transfers (destination_id, due_at, seq) WHERE state = 'pending';
CREATE INDEX transfers_abandoned ON transfers (created_at, seq) WHERE state = 'abandoned';

CREATE TABLE duplicate_keys (
    flow_id    TEXT   NOT NULL,
    digest     TEXT   NOT NULL,
    lead_id    TEXT   NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX duplicate_keys_lookup ON duplicate_keys (flow_id, digest, created_at);

CREATE TABLE idempotency_keys (
    source_id   TEXT   NOT NULL,
    key         TEXT   NOT NULL,
    http_status BIGINT NOT NULL,
    answer      TEXT   NOT NULL,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (source_id, key)
);

CREATE TABLE tokens (
    id         TEXT   PRIMARY KEY,
    name       TEXT   NOT NULL,
    role       TEXT   NOT NULL,
    hash       BYTEA  NOT NULL UNIQUE,
    created_at BIGINT NOT NULL
);

-- One row per delivery attempt; the request and the response are in the event it names.
CREATE TABLE attempts (
    transfer_id   TEXT   NOT NULL,
    attempt       BIGINT NOT NULL,
    started_at    BIGINT NOT NULL,
    duration_ms   BIGINT NOT NULL,
    outcome       TEXT   NOT NULL,
    response_code BIGINT,
    event_id      TEXT   NOT NULL,
    PRIMARY KEY (transfer_id, attempt, event_id)
);

-- Background jobs (bulk resends) with their progress; a running job resumes at `cursor`.
CREATE TABLE jobs (
    id         TEXT   PRIMARY KEY,
    kind       TEXT   NOT NULL,
    status     TEXT   NOT NULL,
    params     TEXT   NOT NULL,
    cursor     TEXT,
    matched    BIGINT NOT NULL DEFAULT 0,
    queued     BIGINT NOT NULL DEFAULT 0,
    skipped    BIGINT NOT NULL DEFAULT 0,
    error      TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

-- Successful deliveries per cap window: a destination's caps read these counters.
CREATE TABLE cap_counters (
    destination_id TEXT   NOT NULL,
    cap_key        TEXT   NOT NULL,
    window_start   BIGINT NOT NULL,
    count          BIGINT NOT NULL,
    PRIMARY KEY (destination_id, cap_key, window_start)
);
