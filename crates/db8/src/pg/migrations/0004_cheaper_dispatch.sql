-- Cheaper stage dispatch (docs/DATABASE.md, "Migrations"). Only indexes and a storage
-- parameter change: no data is rewritten.

-- Claiming takes the due attempts of one stage oldest first; with workflow_id in the
-- index the rows come out in claim order, instead of every pending row of the stage
-- being sorted at each claim.
CREATE INDEX IF NOT EXISTS orchestratorm8_stage_run_claim_idx
    ON orchestratorm8_stage_run (stage, not_before, workflow_id) WHERE status = 'pending';
DROP INDEX IF EXISTS orchestratorm8_stage_run_due_idx;

-- The API's listing by status walks orchestratorm8_workflow_created_idx and filters.
-- Without an index on status, a status change (pending -> running, paused, resumed)
-- can be a HOT update: no new index entries.
DROP INDEX IF EXISTS orchestratorm8_workflow_status_created_idx;

-- Room on every page for new versions of its rows (a workflow row is updated about
-- twice per stage), which HOT updates need.
ALTER TABLE orchestratorm8_workflow SET (fillfactor = 50);

-- A workflow's pipeline, one element per stage in order: the stage name, then its
-- dependencies, separated by U+001F. Workflows created from now on get a stage-run row
-- only when a stage becomes due (the stages without dependencies at once); until then
-- the plan says what is waiting. Workflows created before have a row per stage and no
-- plan (NULL), and are read as before.
ALTER TABLE orchestratorm8_workflow ADD COLUMN IF NOT EXISTS plan text[];
