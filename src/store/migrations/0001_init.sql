-- 0001_init: the first schema of the ewtune store (version 0 -> 1).
--
-- Runs inside the migration transaction (src/store/migrate.rs); user_version is set by the code.
-- Times are unix milliseconds. A released migration never changes: add 0002_*.sql instead.
--
-- The privacy ledger is derived from `jobs`: a job spends (noise_multiplier, sample_rate,
-- steps_done) and, while queued or running, reserves (noise_multiplier, sample_rate,
-- steps_planned - steps_done). Rows are therefore never deleted, steps_done never decreases,
-- a plan never changes and a finished job is final; the triggers at the end enforce this below
-- the Rust code, so that no bug there can make the ledger under-count.

CREATE TABLE tenants (
    name          TEXT    NOT NULL PRIMARY KEY,
    created_at_ms INTEGER NOT NULL
) STRICT;

-- Bearer tokens, stored only as their SHA-256.
CREATE TABLE tokens (
    sha256        BLOB    NOT NULL PRIMARY KEY CHECK (length(sha256) = 32),
    tenant        TEXT    NOT NULL REFERENCES tenants (name),
    created_at_ms INTEGER NOT NULL
) STRICT;

CREATE INDEX tokens_by_tenant ON tokens (tenant);

-- A dataset is identified by the SHA-256 of its bytes, per tenant: each (tenant, sha256) row has
-- its own budget, and registering it again is refused (a budget is never reset).
CREATE TABLE datasets (
    tenant         TEXT    NOT NULL REFERENCES tenants (name),
    sha256         TEXT    NOT NULL CHECK (length(sha256) = 64 AND sha256 NOT GLOB '*[^0-9a-f]*'),
    name           TEXT    NOT NULL CHECK (name <> ''),
    path           TEXT    NOT NULL CHECK (path <> ''),
    units          INTEGER NOT NULL CHECK (units >= 1),
    privacy_unit   TEXT    NOT NULL CHECK (privacy_unit IN ('example', 'user')),
    budget_epsilon REAL    NOT NULL CHECK (budget_epsilon > 0),
    budget_delta   REAL    NOT NULL CHECK (budget_delta > 0 AND budget_delta < 1),
    created_at_ms  INTEGER NOT NULL,
    PRIMARY KEY (tenant, sha256)
) STRICT;

CREATE TABLE jobs (
    -- Queue order (oldest first); AUTOINCREMENT so a number is never reused.
    seq              INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    id               TEXT    NOT NULL UNIQUE CHECK (length(id) = 32),
    tenant           TEXT    NOT NULL,
    dataset          TEXT    NOT NULL,
    spec_json        TEXT    NOT NULL CHECK (json_valid(spec_json)),
    noise_multiplier REAL    NOT NULL CHECK (noise_multiplier > 0),
    sample_rate      REAL    NOT NULL CHECK (sample_rate > 0 AND sample_rate <= 1),
    steps_planned    INTEGER NOT NULL CHECK (steps_planned >= 1),
    steps_done       INTEGER NOT NULL DEFAULT 0 CHECK (steps_done >= 0 AND steps_done <= steps_planned),
    -- What the trainer's accountant reported with its last progress (display only: the ledger
    -- recomputes from steps).
    epsilon_spent    REAL    NOT NULL DEFAULT 0,
    state            TEXT    NOT NULL CHECK (state IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    cancel_requested INTEGER NOT NULL DEFAULT 0 CHECK (cancel_requested IN (0, 1)),
    reason           TEXT,
    created_at_ms    INTEGER NOT NULL,
    started_at_ms    INTEGER,
    finished_at_ms   INTEGER,
    FOREIGN KEY (tenant, dataset) REFERENCES datasets (tenant, sha256)
) STRICT;

CREATE INDEX jobs_by_state ON jobs (state, seq);
CREATE INDEX jobs_by_dataset ON jobs (tenant, dataset, seq);
CREATE INDEX jobs_by_tenant ON jobs (tenant, seq);

-- Append-only event log; `seq` is global and increasing, so a watcher resumes with "after seq".
CREATE TABLE job_events (
    seq          INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    job          TEXT    NOT NULL REFERENCES jobs (id),
    kind         TEXT    NOT NULL CHECK (kind <> ''),
    payload_json TEXT    NOT NULL CHECK (json_valid(payload_json)),
    at_ms        INTEGER NOT NULL
) STRICT;

CREATE INDEX job_events_by_job ON job_events (job, seq);

CREATE TRIGGER jobs_never_deleted BEFORE DELETE ON jobs
BEGIN
    SELECT RAISE(ABORT, 'jobs are never deleted: the privacy ledger would under-count');
END;

CREATE TRIGGER jobs_steps_done_monotone BEFORE UPDATE OF steps_done ON jobs
WHEN NEW.steps_done < OLD.steps_done
BEGIN
    SELECT RAISE(ABORT, 'steps_done never decreases: the privacy ledger would under-count');
END;

CREATE TRIGGER jobs_plan_is_fixed BEFORE UPDATE OF id, tenant, dataset, noise_multiplier, sample_rate, steps_planned ON jobs
WHEN NEW.id IS NOT OLD.id OR NEW.tenant IS NOT OLD.tenant OR NEW.dataset IS NOT OLD.dataset
    OR NEW.noise_multiplier IS NOT OLD.noise_multiplier OR NEW.sample_rate IS NOT OLD.sample_rate
    OR NEW.steps_planned IS NOT OLD.steps_planned
BEGIN
    SELECT RAISE(ABORT, 'a job''s plan never changes: the privacy ledger is derived from it');
END;

CREATE TRIGGER jobs_finished_is_final BEFORE UPDATE ON jobs
WHEN OLD.state IN ('succeeded', 'failed', 'cancelled')
BEGIN
    SELECT RAISE(ABORT, 'a finished job never changes');
END;

CREATE TRIGGER datasets_never_deleted BEFORE DELETE ON datasets
BEGIN
    SELECT RAISE(ABORT, 'datasets are never deleted: their privacy ledger would be lost');
END;

CREATE TRIGGER datasets_budget_is_fixed BEFORE UPDATE OF tenant, sha256, units, budget_epsilon, budget_delta ON datasets
WHEN NEW.tenant IS NOT OLD.tenant OR NEW.sha256 IS NOT OLD.sha256 OR NEW.units IS NOT OLD.units
    OR NEW.budget_epsilon IS NOT OLD.budget_epsilon OR NEW.budget_delta IS NOT OLD.budget_delta
BEGIN
    SELECT RAISE(ABORT, 'a dataset''s identity and budget never change');
END;

CREATE TRIGGER job_events_never_updated BEFORE UPDATE ON job_events
BEGIN
    SELECT RAISE(ABORT, 'job events are append-only');
END;

CREATE TRIGGER job_events_never_deleted BEFORE DELETE ON job_events
BEGIN
    SELECT RAISE(ABORT, 'job events are append-only');
END;
