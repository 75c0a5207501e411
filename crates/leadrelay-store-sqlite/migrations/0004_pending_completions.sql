-- `flow.completed` of a lead with background deliveries, held until none of its transfers is
-- pending; the row goes when the event is logged.
CREATE TABLE pending_completions (
    lead_id   TEXT NOT NULL PRIMARY KEY,
    flow_id   TEXT NOT NULL,
    source_id TEXT NOT NULL,
    body      TEXT NOT NULL
) WITHOUT ROWID;
