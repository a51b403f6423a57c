-- 0003_hardening: what one tenant sends can no longer change another's guarantee (version 2 -> 3).
--
-- * A dataset's `user_field` (how its lines are grouped into users) lives in its own row, fixed at
--   registration like its budget. Before version 3 it lived in a file next to the data, keyed by
--   the content hash alone, so another tenant registering the same bytes could rewrite it. The
--   store adopts such a file once at start-up (src/store/datasets.rs); a user-level dataset
--   whose file is missing, corrupt or inconsistent keeps NULL here and no job can run on it
--   (never a guess).
-- * Tokens can be revoked: a revoked token stays (its hash, for the record) but authenticates
--   nothing.
-- * Signed budget reports carry a per-dataset sequence number, so an old report cannot pass for
--   the current one.

ALTER TABLE datasets ADD COLUMN user_field TEXT
    CHECK (user_field IS NULL OR (length(user_field) BETWEEN 1 AND 256));

CREATE TRIGGER datasets_user_datasets_name_their_field BEFORE INSERT ON datasets
WHEN NEW.privacy_unit = 'user' AND NEW.user_field IS NULL
BEGIN
    SELECT RAISE(ABORT, 'a user-level dataset names its user_field');
END;

CREATE TRIGGER datasets_example_datasets_have_no_field BEFORE INSERT ON datasets
WHEN NEW.privacy_unit = 'example' AND NEW.user_field IS NOT NULL
BEGIN
    SELECT RAISE(ABORT, 'an example-level dataset has no user_field');
END;

-- Set once: at registration, or (for a dataset registered before version 3) when its old file is
-- adopted. Never changed afterwards.
CREATE TRIGGER datasets_user_field_is_fixed BEFORE UPDATE OF user_field, privacy_unit ON datasets
WHEN NEW.privacy_unit IS NOT OLD.privacy_unit
    OR (OLD.user_field IS NOT NULL AND NEW.user_field IS NOT OLD.user_field)
    OR (OLD.privacy_unit = 'example' AND NEW.user_field IS NOT NULL)
BEGIN
    SELECT RAISE(ABORT, 'a dataset''s privacy unit and user_field never change');
END;

ALTER TABLE tokens ADD COLUMN revoked_at_ms INTEGER;

CREATE TRIGGER tokens_revocation_is_final BEFORE UPDATE ON tokens
WHEN OLD.revoked_at_ms IS NOT NULL OR NEW.sha256 IS NOT OLD.sha256 OR NEW.tenant IS NOT OLD.tenant
BEGIN
    SELECT RAISE(ABORT, 'a token only ever changes by being revoked, once');
END;

CREATE TABLE report_sequences (
    tenant   TEXT    NOT NULL,
    dataset  TEXT    NOT NULL,
    last_seq INTEGER NOT NULL CHECK (last_seq >= 1),
    PRIMARY KEY (tenant, dataset),
    FOREIGN KEY (tenant, dataset) REFERENCES datasets (tenant, sha256)
) STRICT;
