-- 0004_outputs (PostgreSQL): the same step as ../0004_outputs.sql.
-- Differs in expression: a trigger's WHEN cannot read another table, so the check that the job is
-- running is in the body of job_outputs_only_while_running(); BIGINT, a regex for GLOB.

CREATE TABLE job_outputs (
    job    TEXT   NOT NULL REFERENCES jobs (id),
    path   TEXT   NOT NULL CHECK (length(path) BETWEEN 1 AND 1024),
    size   BIGINT NOT NULL CHECK (size >= 0),
    sha256 TEXT   NOT NULL CHECK (length(sha256) = 64 AND sha256 !~ '[^0-9a-f]'),
    PRIMARY KEY (job, path)
);

CREATE FUNCTION job_outputs_only_while_running() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF (SELECT state FROM jobs WHERE id = NEW.job) IS DISTINCT FROM 'running' THEN
        RAISE EXCEPTION USING ERRCODE = 'integrity_constraint_violation',
            MESSAGE = 'outputs are recorded as their job succeeds, never after';
    END IF;
    RETURN NEW;
END;
$$;

CREATE TRIGGER job_outputs_only_while_running BEFORE INSERT ON job_outputs
FOR EACH ROW
EXECUTE FUNCTION job_outputs_only_while_running();

CREATE TRIGGER job_outputs_never_updated BEFORE UPDATE ON job_outputs
FOR EACH ROW
EXECUTE FUNCTION ewtune_refuse('a job''s recorded outputs never change');

CREATE TRIGGER job_outputs_never_deleted BEFORE DELETE ON job_outputs
FOR EACH ROW
EXECUTE FUNCTION ewtune_refuse('a job''s recorded outputs never change');
