-- How far a running audit's scoring has got (issue: audits showed only "running"): every
-- (sequence, model) pair it scores counts once. Aggregate counts only, set while running.
ALTER TABLE audits ADD COLUMN scored INTEGER NOT NULL DEFAULT 0 CHECK (scored >= 0);
ALTER TABLE audits ADD COLUMN to_score INTEGER NOT NULL DEFAULT 0 CHECK (to_score >= 0);
