-- 0002_audits: canary manifests committed with their job, and membership audits (version 1 -> 2).
--
-- A job that inserts canaries stores its audit manifest (the canaries, the secret inclusion bits
-- S, the primary score, the k+ grid, beta and delta) in the same transaction that admits it:
-- the audit plan is fixed before the first training step and can never be changed afterwards
-- (the one-run bound of Steinke, Nasr, Jagielski, "Privacy Auditing with One (1) Training Run",
-- NeurIPS 2023, holds for an audit fixed before training). An audit of a finished job keeps its
-- signed report; audits are never deleted and a finished one is final.

CREATE TABLE canary_manifests (
    job           TEXT NOT NULL PRIMARY KEY REFERENCES jobs (id),
    sha256        TEXT NOT NULL CHECK (length(sha256) = 64 AND sha256 NOT GLOB '*[^0-9a-f]*'),
    manifest_json TEXT NOT NULL CHECK (json_valid(manifest_json))
) STRICT;

CREATE TRIGGER canary_manifests_never_updated BEFORE UPDATE ON canary_manifests
BEGIN
    SELECT RAISE(ABORT, 'a canary manifest is committed before training and never changes');
END;

CREATE TRIGGER canary_manifests_never_deleted BEFORE DELETE ON canary_manifests
BEGIN
    SELECT RAISE(ABORT, 'a canary manifest is committed before training and never changes');
END;

CREATE TABLE audits (
    seq            INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    id             TEXT    NOT NULL UNIQUE CHECK (length(id) = 32),
    tenant         TEXT    NOT NULL REFERENCES tenants (name),
    job            TEXT    NOT NULL REFERENCES jobs (id),
    state          TEXT    NOT NULL CHECK (state IN ('running', 'succeeded', 'failed')),
    -- What was asked, without the texts themselves (counts only).
    request_json   TEXT    NOT NULL CHECK (json_valid(request_json)),
    -- The report, exactly the bytes signed, and the Ed25519 signature over them.
    report_json    TEXT    CHECK (report_json IS NULL OR json_valid(report_json)),
    signature      BLOB    CHECK (signature IS NULL OR length(signature) = 64),
    reason         TEXT,
    created_at_ms  INTEGER NOT NULL,
    finished_at_ms INTEGER,
    CHECK ((state = 'succeeded') = (report_json IS NOT NULL AND signature IS NOT NULL))
) STRICT;

CREATE INDEX audits_by_job ON audits (tenant, job, seq);

CREATE TRIGGER audits_never_deleted BEFORE DELETE ON audits
BEGIN
    SELECT RAISE(ABORT, 'audits are never deleted');
END;

CREATE TRIGGER audits_finished_is_final BEFORE UPDATE ON audits
WHEN OLD.state IN ('succeeded', 'failed')
BEGIN
    SELECT RAISE(ABORT, 'a finished audit never changes');
END;
