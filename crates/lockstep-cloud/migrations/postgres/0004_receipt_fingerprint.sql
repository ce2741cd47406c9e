-- A push receipt remembers what was pushed, so a mutation id reused for different changes is
-- refused instead of answered with another push's result.
ALTER TABLE push_receipts ADD COLUMN request_hash TEXT NOT NULL DEFAULT '';
