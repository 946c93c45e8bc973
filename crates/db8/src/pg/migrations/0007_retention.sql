-- Retention of finished workflows (docs/DATABASE.md, "Retention"), and the "scan now"
-- mark of fairness. A new table and a column with a constant default:
-- no existing data is rewritten.

-- Per domain, when its most recent workflow that retention deleted ended: the
-- cool-down (Workflow.rescan_after) and the per_cycle cool-down still see it after the
-- workflow rows are gone. One row per domain ever pruned (bounded by the domains).
CREATE TABLE IF NOT EXISTS orchestratorm8_domain_last_ended (
    domain_id uuid PRIMARY KEY,
    ended_at timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS orchestratorm8_domain_last_ended_ended_idx
    ON orchestratorm8_domain_last_ended (ended_at);

-- Fairness: a workflow started by "scan now" (the API) goes ahead of the backlog when a
-- stage's slots are shared fairly (Workflow.fairness: company). Not indexed: status
-- changes stay HOT updates.
ALTER TABLE orchestratorm8_workflow ADD COLUMN IF NOT EXISTS requested boolean NOT NULL DEFAULT false;
