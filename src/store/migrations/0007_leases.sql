-- 0007_leases: several daemons share one ledger (version 6 -> 7).
--
-- A running job or audit names the daemon running it (`owner`) and the unix ms until which that
-- claim holds (`lease_until_ms`); both are NULL while it is not running, and they are set and
-- cleared together. ALTER TABLE cannot add a CHECK across two columns, so the pairing is a pair
-- of triggers. `tenants.ledger_version` is bumped by every write that changes what admission
-- composes, and never decreases.

ALTER TABLE jobs ADD COLUMN owner TEXT CHECK (owner IS NULL OR owner <> '');
ALTER TABLE jobs ADD COLUMN lease_until_ms INTEGER CHECK (lease_until_ms IS NULL OR lease_until_ms > 0);

CREATE TRIGGER jobs_claim_pairs_owner_and_lease BEFORE UPDATE OF owner, lease_until_ms ON jobs
WHEN (NEW.owner IS NULL) <> (NEW.lease_until_ms IS NULL)
BEGIN
    SELECT RAISE(ABORT, 'a job''s owner and lease are set and cleared together');
END;

CREATE TRIGGER jobs_claim_pairs_owner_and_lease_on_insert BEFORE INSERT ON jobs
WHEN (NEW.owner IS NULL) <> (NEW.lease_until_ms IS NULL)
BEGIN
    SELECT RAISE(ABORT, 'a job''s owner and lease are set and cleared together');
END;

CREATE INDEX jobs_by_lease ON jobs (state, lease_until_ms);

ALTER TABLE audits ADD COLUMN owner TEXT CHECK (owner IS NULL OR owner <> '');
ALTER TABLE audits ADD COLUMN lease_until_ms INTEGER CHECK (lease_until_ms IS NULL OR lease_until_ms > 0);

CREATE TRIGGER audits_claim_pairs_owner_and_lease BEFORE UPDATE OF owner, lease_until_ms ON audits
WHEN (NEW.owner IS NULL) <> (NEW.lease_until_ms IS NULL)
BEGIN
    SELECT RAISE(ABORT, 'an audit''s owner and lease are set and cleared together');
END;

CREATE TRIGGER audits_claim_pairs_owner_and_lease_on_insert BEFORE INSERT ON audits
WHEN (NEW.owner IS NULL) <> (NEW.lease_until_ms IS NULL)
BEGIN
    SELECT RAISE(ABORT, 'an audit''s owner and lease are set and cleared together');
END;

ALTER TABLE tenants ADD COLUMN ledger_version INTEGER NOT NULL DEFAULT 0 CHECK (ledger_version >= 0);

CREATE TRIGGER tenants_ledger_version_never_decreases BEFORE UPDATE OF ledger_version ON tenants
WHEN NEW.ledger_version < OLD.ledger_version
BEGIN
    SELECT RAISE(ABORT, 'a tenant''s ledger version never decreases');
END;
