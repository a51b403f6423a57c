-- 0003_hardening (PostgreSQL): the same step as ../0003_hardening.sql.
-- Differs in expression only: BIGINT, IS [NOT] DISTINCT FROM for SQLite's IS [NOT], and triggers
-- calling ewtune_refuse (0001).

ALTER TABLE datasets ADD COLUMN user_field TEXT
    CHECK (user_field IS NULL OR (length(user_field) BETWEEN 1 AND 256));

CREATE TRIGGER datasets_user_datasets_name_their_field BEFORE INSERT ON datasets
FOR EACH ROW WHEN (NEW.privacy_unit = 'user' AND NEW.user_field IS NULL)
EXECUTE FUNCTION ewtune_refuse('a user-level dataset names its user_field');

CREATE TRIGGER datasets_example_datasets_have_no_field BEFORE INSERT ON datasets
FOR EACH ROW WHEN (NEW.privacy_unit = 'example' AND NEW.user_field IS NOT NULL)
EXECUTE FUNCTION ewtune_refuse('an example-level dataset has no user_field');

CREATE TRIGGER datasets_user_field_is_fixed BEFORE UPDATE OF user_field, privacy_unit ON datasets
FOR EACH ROW WHEN (NEW.privacy_unit IS DISTINCT FROM OLD.privacy_unit
    OR (OLD.user_field IS NOT NULL AND NEW.user_field IS DISTINCT FROM OLD.user_field)
    OR (OLD.privacy_unit = 'example' AND NEW.user_field IS NOT NULL))
EXECUTE FUNCTION ewtune_refuse('a dataset''s privacy unit and user_field never change');

ALTER TABLE tokens ADD COLUMN revoked_at_ms BIGINT;

CREATE TRIGGER tokens_revocation_is_final BEFORE UPDATE ON tokens
FOR EACH ROW WHEN (OLD.revoked_at_ms IS NOT NULL OR NEW.sha256 IS DISTINCT FROM OLD.sha256
    OR NEW.tenant IS DISTINCT FROM OLD.tenant)
EXECUTE FUNCTION ewtune_refuse('a token only ever changes by being revoked, once');

CREATE TABLE report_sequences (
    tenant   TEXT   NOT NULL,
    dataset  TEXT   NOT NULL,
    last_seq BIGINT NOT NULL CHECK (last_seq >= 1),
    PRIMARY KEY (tenant, dataset),
    FOREIGN KEY (tenant, dataset) REFERENCES datasets (tenant, sha256)
);
