-- Synced settings, the per-user change feed, and push receipts (idempotent retries).

CREATE TABLE user_settings (
    user_id     TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    key         TEXT NOT NULL,
    -- JSON text, or sealed text (enc:v1:…) for sensitive keys; 'null' for a tombstone.
    value       TEXT NOT NULL,
    hlc         TEXT NOT NULL,
    device_id   TEXT NOT NULL,
    device_name TEXT,
    updated_at  INTEGER NOT NULL,
    deleted     INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id, key)
);

-- The head of each user's feed: the last sequence number handed out, and how far the log has
-- been pruned (a reader asking for less must refetch).
CREATE TABLE feed_heads (
    user_id        TEXT PRIMARY KEY,
    last_seq       INTEGER NOT NULL,
    pruned_through INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE change_feed (
    user_id    TEXT NOT NULL,
    seq        INTEGER NOT NULL,
    -- ChangeEvent JSON without seq and commit_timestamp; sealed when it carries a secret.
    payload    TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (user_id, seq)
);
CREATE INDEX change_feed_created ON change_feed (created_at);

CREATE TABLE push_receipts (
    user_id     TEXT NOT NULL,
    mutation_id TEXT NOT NULL,
    response    TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (user_id, mutation_id)
);
CREATE INDEX push_receipts_created ON push_receipts (created_at);
