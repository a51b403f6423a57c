-- 0004_outputs: the files a succeeded job handed over (version 3 -> 4).
--
-- When a job succeeds, the scheduler lists the files of its output model directory (path relative
-- to it, size, SHA-256) and records them in the transaction that marks the job succeeded. The
-- signed budget report lists them with each succeeded job, and Jobs.GetArtifacts streams exactly
-- these files, so a client can check what it downloaded against what the daemon signed. Rows are
-- written once, while their job is still running, and never change.

CREATE TABLE job_outputs (
    job    TEXT    NOT NULL REFERENCES jobs (id),
    path   TEXT    NOT NULL CHECK (length(path) BETWEEN 1 AND 1024),
    size   INTEGER NOT NULL CHECK (size >= 0),
    sha256 TEXT    NOT NULL CHECK (length(sha256) = 64 AND sha256 NOT GLOB '*[^0-9a-f]*'),
    PRIMARY KEY (job, path)
) STRICT, WITHOUT ROWID;

CREATE TRIGGER job_outputs_only_while_running BEFORE INSERT ON job_outputs
WHEN (SELECT state FROM jobs WHERE id = NEW.job) IS NOT 'running'
BEGIN
    SELECT RAISE(ABORT, 'outputs are recorded as their job succeeds, never after');
END;

CREATE TRIGGER job_outputs_never_updated BEFORE UPDATE ON job_outputs
BEGIN
    SELECT RAISE(ABORT, 'a job''s recorded outputs never change');
END;

CREATE TRIGGER job_outputs_never_deleted BEFORE DELETE ON job_outputs
BEGIN
    SELECT RAISE(ABORT, 'a job''s recorded outputs never change');
END;
