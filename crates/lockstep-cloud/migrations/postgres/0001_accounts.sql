-- Accounts, devices, sessions, one-time email tokens and the audit log.
-- Times are milliseconds since the Unix epoch; ids are UUID text.

CREATE TABLE users (
    id                   TEXT PRIMARY KEY,
    email                TEXT NOT NULL UNIQUE,
    password_hash        TEXT NOT NULL,
    email_confirmed_at   BIGINT,
    confirmation_sent_at BIGINT,
    new_email            TEXT,
    email_change_sent_at BIGINT,
    recovery_sent_at     BIGINT,
    last_sign_in_at      BIGINT,
    user_metadata        TEXT NOT NULL DEFAULT '{}',
    created_at           BIGINT NOT NULL,
    updated_at           BIGINT NOT NULL
);

CREATE TABLE devices (
    user_id      TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    id           TEXT NOT NULL,
    name         TEXT NOT NULL,
    platform     TEXT NOT NULL,
    app_version  TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    last_seen_at BIGINT NOT NULL,
    PRIMARY KEY (user_id, id)
);

CREATE TABLE sessions (
    id              TEXT PRIMARY KEY,
    user_id         TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    device_id       TEXT NOT NULL,
    aal             TEXT NOT NULL,
    amr             TEXT NOT NULL,
    refresh_salt    BYTEA NOT NULL,
    refresh_counter BIGINT NOT NULL,
    refreshed_at    BIGINT NOT NULL,
    created_at      BIGINT NOT NULL,
    ip_address      TEXT NOT NULL,
    user_agent      TEXT NOT NULL,
    FOREIGN KEY (user_id, device_id) REFERENCES devices (user_id, id) ON DELETE CASCADE
);
CREATE INDEX sessions_user ON sessions (user_id);

CREATE TABLE one_time_tokens (
    id         TEXT PRIMARY KEY,
    user_id    TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    kind       TEXT NOT NULL,
    token_hash TEXT NOT NULL UNIQUE,
    code_hash  TEXT NOT NULL,
    email      TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at    BIGINT
);
CREATE INDEX one_time_tokens_user ON one_time_tokens (user_id, kind);

CREATE TABLE audit_log (
    id          TEXT PRIMARY KEY,
    user_id     TEXT,
    action      TEXT NOT NULL,
    device_id   TEXT,
    device_name TEXT,
    ip_address  TEXT NOT NULL,
    payload     TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);
CREATE INDEX audit_log_user ON audit_log (user_id, created_at);
