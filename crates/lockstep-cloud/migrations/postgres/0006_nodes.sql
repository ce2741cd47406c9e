-- Several nodes on one database. Each key a node uses (the JWT secret, each data key) leaves a
-- one-way fingerprint here on first start; a node whose key of the same name differs refuses to
-- start, instead of issuing tokens the other nodes reject or sealing values they cannot open.
CREATE TABLE key_fingerprints (
    name TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

-- A job that one node at a time should run (the hourly prune) is leased: a node runs it only
-- after taking the lease, and the lease is free again once it expires.
CREATE TABLE job_leases (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    expires_at BIGINT NOT NULL
);
