-- 0007_leases (PostgreSQL): the same step as ../0007_leases.sql.
-- Differs in expression: the owner/lease pairing is also a table CHECK here (PostgreSQL can add
-- one); the triggers stay so that a refusal carries the same message as in SQLite.

ALTER TABLE jobs
    ADD COLUMN owner TEXT CHECK (owner IS NULL OR owner <> ''),
    ADD COLUMN lease_until_ms BIGINT CHECK (lease_until_ms IS NULL OR lease_until_ms > 0),
    ADD CONSTRAINT jobs_owner_and_lease_together CHECK ((owner IS NULL) = (lease_until_ms IS NULL));

CREATE TRIGGER jobs_claim_pairs_owner_and_lease BEFORE UPDATE OF owner, lease_until_ms ON jobs
FOR EACH ROW WHEN ((NEW.owner IS NULL) <> (NEW.lease_until_ms IS NULL))
EXECUTE FUNCTION ewtune_refuse('a job''s owner and lease are set and cleared together');

CREATE TRIGGER jobs_claim_pairs_owner_and_lease_on_insert BEFORE INSERT ON jobs
FOR EACH ROW WHEN ((NEW.owner IS NULL) <> (NEW.lease_until_ms IS NULL))
EXECUTE FUNCTION ewtune_refuse('a job''s owner and lease are set and cleared together');

CREATE INDEX jobs_by_lease ON jobs (state, lease_until_ms);

ALTER TABLE audits
    ADD COLUMN owner TEXT CHECK (owner IS NULL OR owner <> ''),
    ADD COLUMN lease_until_ms BIGINT CHECK (lease_until_ms IS NULL OR lease_until_ms > 0),
    ADD CONSTRAINT audits_owner_and_lease_together CHECK ((owner IS NULL) = (lease_until_ms IS NULL));

CREATE TRIGGER audits_claim_pairs_owner_and_lease BEFORE UPDATE OF owner, lease_until_ms ON audits
FOR EACH ROW WHEN ((NEW.owner IS NULL) <> (NEW.lease_until_ms IS NULL))
EXECUTE FUNCTION ewtune_refuse('an audit''s owner and lease are set and cleared together');

CREATE TRIGGER audits_claim_pairs_owner_and_lease_on_insert BEFORE INSERT ON audits
FOR EACH ROW WHEN ((NEW.owner IS NULL) <> (NEW.lease_until_ms IS NULL))
EXECUTE FUNCTION ewtune_refuse('an audit''s owner and lease are set and cleared together');

ALTER TABLE tenants ADD COLUMN ledger_version BIGINT NOT NULL DEFAULT 0 CHECK (ledger_version >= 0);

CREATE TRIGGER tenants_ledger_version_never_decreases BEFORE UPDATE OF ledger_version ON tenants
FOR EACH ROW WHEN (NEW.ledger_version < OLD.ledger_version)
EXECUTE FUNCTION ewtune_refuse('a tenant''s ledger version never decreases');
