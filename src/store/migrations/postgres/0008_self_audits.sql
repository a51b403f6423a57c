-- 0008_self_audits (PostgreSQL): the same step as ../0008_self_audits.sql.
-- Differs in expression: a trigger's WHEN cannot read another table, so the check that the job is
-- running is in the body of job_self_audits_only_while_running(); BIGINT for the flag, as every integer.

CREATE TABLE job_self_audits (
    job         TEXT     NOT NULL PRIMARY KEY REFERENCES jobs (id),
    passed      BIGINT   NOT NULL CHECK (passed IN (0, 1)),
    report_json TEXT     NOT NULL CHECK (length(report_json) BETWEEN 2 AND 1048576)
);

CREATE FUNCTION job_self_audits_only_while_running() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF (SELECT state FROM jobs WHERE id = NEW.job) IS DISTINCT FROM 'running' THEN
        RAISE EXCEPTION USING ERRCODE = 'integrity_constraint_violation',
            MESSAGE = 'a self-audit is recorded as its job ends, never after';
    END IF;
    RETURN NEW;
END;
$$;

CREATE TRIGGER job_self_audits_only_while_running BEFORE INSERT ON job_self_audits
FOR EACH ROW
EXECUTE FUNCTION job_self_audits_only_while_running();

CREATE TRIGGER job_self_audits_never_updated BEFORE UPDATE ON job_self_audits
FOR EACH ROW
EXECUTE FUNCTION ewtune_refuse('a job''s recorded self-audit never changes');

CREATE TRIGGER job_self_audits_never_deleted BEFORE DELETE ON job_self_audits
FOR EACH ROW
EXECUTE FUNCTION ewtune_refuse('a job''s recorded self-audit never changes');
