-- 0005_units: the budget follows the person, not the file (version 4 -> 5).
--
-- Every privacy unit (a record, or a user) of a tenant's datasets gets a stable identity: an
-- HMAC-SHA256 under the tenant's own secret of the record's canonical form, or of the user id
-- (src/train/units.rs). Only these keyed hashes are stored, never the text.
--
-- Units in exactly the same set of the tenant's datasets form one class. A class's history is
-- every job on any of its datasets, and it must stay within every one of their budgets; the
-- ledger composes per class (src/store/ledger.rs). A unit only ever joins more datasets: it
-- moves from its class to the class of its datasets plus the new one, never back (a class
-- whose units all join is renamed in place), and no row of these tables is ever deleted.
--
-- Datasets registered before this version get their identities from their stored files at the
-- daemon's start-up (unit_identities 'pending' until then). A dataset whose file is gone or
-- unreadable stays 'unidentified': no job runs on it, and its jobs and budget count against
-- every unit of its tenant, since its people may be anyone's. A dataset whose file repeats a
-- record is 'repeated_records': its units are known, but no new job runs on it (one unit would
-- be trained on twice per pass).

CREATE TABLE tenant_unit_secrets (
    tenant        TEXT    NOT NULL PRIMARY KEY REFERENCES tenants (name),
    secret        BLOB    NOT NULL CHECK (length(secret) = 32),
    created_at_ms INTEGER NOT NULL
) STRICT, WITHOUT ROWID;

CREATE TRIGGER tenant_unit_secrets_never_change BEFORE UPDATE ON tenant_unit_secrets
BEGIN
    SELECT RAISE(ABORT, 'a tenant''s unit secret never changes (every stored identity depends on it)');
END;

CREATE TRIGGER tenant_unit_secrets_never_deleted BEFORE DELETE ON tenant_unit_secrets
BEGIN
    SELECT RAISE(ABORT, 'a tenant''s unit secret never changes (every stored identity depends on it)');
END;

-- `datasets`: the class's datasets' sha256s, sorted, comma-separated (its signature).
-- Classes never end empty: a class that joins a dataset whole is renamed, one that joins in part
-- keeps the units that did not.
CREATE TABLE unit_classes (
    id       INTEGER NOT NULL PRIMARY KEY,
    tenant   TEXT    NOT NULL REFERENCES tenants (name),
    datasets TEXT    NOT NULL CHECK (datasets <> '' AND datasets NOT GLOB '*[^0-9a-f,]*'),
    units    INTEGER NOT NULL CHECK (units >= 1),
    UNIQUE (tenant, datasets)
) STRICT;

CREATE TABLE unit_class_datasets (
    tenant  TEXT    NOT NULL,
    dataset TEXT    NOT NULL,
    class   INTEGER NOT NULL REFERENCES unit_classes (id),
    PRIMARY KEY (tenant, dataset, class),
    FOREIGN KEY (tenant, dataset) REFERENCES datasets (tenant, sha256)
) STRICT, WITHOUT ROWID;

CREATE TABLE units (
    tenant TEXT    NOT NULL,
    unit   BLOB    NOT NULL CHECK (length(unit) = 32),
    class  INTEGER NOT NULL REFERENCES unit_classes (id),
    PRIMARY KEY (tenant, unit)
) STRICT, WITHOUT ROWID;

ALTER TABLE datasets ADD COLUMN unit_identities TEXT NOT NULL DEFAULT 'pending'
    CHECK (unit_identities IN ('pending', 'identified', 'unidentified', 'repeated_records'));

-- Once known, a dataset's units stay known (a later start-up never forgets them).
CREATE TRIGGER datasets_identities_stay_known BEFORE UPDATE OF unit_identities ON datasets
WHEN OLD.unit_identities IN ('identified', 'repeated_records')
BEGIN
    SELECT RAISE(ABORT, 'a dataset''s unit identities, once assigned, never change');
END;
