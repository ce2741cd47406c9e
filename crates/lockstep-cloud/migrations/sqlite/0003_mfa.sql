-- TOTP factors, their challenges and failed attempts, recovery codes; sessions remember their
-- last second-factor proof.

CREATE TABLE mfa_factors (
    id                 TEXT PRIMARY KEY,
    user_id            TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    friendly_name      TEXT,
    factor_type        TEXT NOT NULL,
    status             TEXT NOT NULL,
    -- Sealed (enc:v1:…), bound to the factor id.
    secret             TEXT NOT NULL,
    -- The last accepted TOTP time step: only a strictly later one is accepted (no replay).
    last_step          INTEGER NOT NULL DEFAULT 0,
    created_at         INTEGER NOT NULL,
    updated_at         INTEGER NOT NULL,
    last_challenged_at INTEGER
);
CREATE INDEX mfa_factors_user ON mfa_factors (user_id);

CREATE TABLE mfa_challenges (
    id          TEXT PRIMARY KEY,
    factor_id   TEXT NOT NULL REFERENCES mfa_factors (id) ON DELETE CASCADE,
    user_id     TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    verified_at INTEGER,
    ip_address  TEXT NOT NULL
);

-- Wrong codes, per factor (or per user for recovery codes): the lockout counts these.
CREATE TABLE mfa_failures (
    subject   TEXT NOT NULL,
    failed_at INTEGER NOT NULL
);
CREATE INDEX mfa_failures_subject ON mfa_failures (subject, failed_at);

CREATE TABLE recovery_code_sets (
    id            TEXT PRIMARY KEY,
    user_id       TEXT NOT NULL UNIQUE REFERENCES users (id) ON DELETE CASCADE,
    friendly_name TEXT,
    created_at    INTEGER NOT NULL
);

CREATE TABLE recovery_codes (
    id        TEXT PRIMARY KEY,
    set_id    TEXT NOT NULL REFERENCES recovery_code_sets (id) ON DELETE CASCADE,
    user_id   TEXT NOT NULL,
    -- HMAC of the canonical code.
    code_hash TEXT NOT NULL UNIQUE,
    used_at   INTEGER
);

ALTER TABLE sessions ADD COLUMN factor_id TEXT;
ALTER TABLE sessions ADD COLUMN mfa_verified_at INTEGER;
