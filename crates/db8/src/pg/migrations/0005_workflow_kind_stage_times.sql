-- The API's complete workflow view (issue 15, docs/DATABASE.md "Migrations"): a
-- workflow's kind, and when each stage's last attempt started and finished. Adding a
-- column with a constant default or without one rewrites no row (PostgreSQL 11+).

-- managed: run by orchestratorm8 (every workflow so far); observed: a bootstrap-mode
-- cycle of the scanners' ring, recorded as it is seen on the wire.
ALTER TABLE orchestratorm8_workflow ADD COLUMN IF NOT EXISTS kind text NOT NULL DEFAULT 'managed'
    CHECK (kind IN ('managed', 'observed'));

-- Written by the existing transitions, in the UPDATEs they already make: started_at
-- when an attempt is marked running (finished_at cleared), finished_at when it
-- completes, fails (even with a retry left) or the stage is cancelled.
ALTER TABLE orchestratorm8_stage_run ADD COLUMN IF NOT EXISTS started_at timestamptz;
ALTER TABLE orchestratorm8_stage_run ADD COLUMN IF NOT EXISTS finished_at timestamptz;
