-- 0008_self_audits: what a job's self-audit found (version 7 -> 8).
--
-- A job with a self-audit (docs/self_audit.md) ends with a report: its goodness-of-fit tests,
-- the one-run lower bounds and the verdict. The scheduler records it in the transaction that
-- ends the job, succeeded (the checks passed) or failed (a check failed and no model was
-- released). The signed budget report and Jobs.Get carry it. Written once, while the job is
-- still running, and never changed.

CREATE TABLE job_self_audits (
    job         TEXT    NOT NULL PRIMARY KEY REFERENCES jobs (id),
    passed      INTEGER NOT NULL CHECK (passed IN (0, 1)),
    report_json TEXT    NOT NULL CHECK (length(report_json) BETWEEN 2 AND 1048576)
) STRICT, WITHOUT ROWID;

CREATE TRIGGER job_self_audits_only_while_running BEFORE INSERT ON job_self_audits
WHEN (SELECT state FROM jobs WHERE id = NEW.job) IS NOT 'running'
BEGIN
    SELECT RAISE(ABORT, 'a self-audit is recorded as its job ends, never after');
END;

CREATE TRIGGER job_self_audits_never_updated BEFORE UPDATE ON job_self_audits
BEGIN
    SELECT RAISE(ABORT, 'a job''s recorded self-audit never changes');
END;

CREATE TRIGGER job_self_audits_never_deleted BEFORE DELETE ON job_self_audits
BEGIN
    SELECT RAISE(ABORT, 'a job''s recorded self-audit never changes');
END;
