-- 0006_audit_progress (PostgreSQL): the same step as ../0006_audit_progress.sql (BIGINT for INTEGER).
ALTER TABLE audits ADD COLUMN scored BIGINT NOT NULL DEFAULT 0 CHECK (scored >= 0);
ALTER TABLE audits ADD COLUMN to_score BIGINT NOT NULL DEFAULT 0 CHECK (to_score >= 0);
