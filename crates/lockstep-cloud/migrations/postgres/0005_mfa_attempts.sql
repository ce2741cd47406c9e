-- A code attempt is counted before the code is checked (so concurrent guesses, also on other
-- nodes, cannot all pass the lockout check) and refunded by its id when the code was right.
ALTER TABLE mfa_failures ADD COLUMN attempt_id TEXT;
