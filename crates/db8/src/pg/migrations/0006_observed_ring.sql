-- Bootstrap mode follows the scanners' ring (issue 14, CONTRACT 3c, docs/DATABASE.md):
-- each cycle is a workflow of kind 'observed' whose stages can be 'stalled' (silent
-- past their timeout, still awaited). An observed stage's stall time is kept apart
-- from `deadline`, which only the managed engine's time-outs read.
ALTER TABLE orchestratorm8_stage_run DROP CONSTRAINT IF EXISTS orchestratorm8_stage_run_status_check;
ALTER TABLE orchestratorm8_stage_run ADD CONSTRAINT orchestratorm8_stage_run_status_check
    CHECK (status IN ('waiting', 'pending', 'running', 'stalled', 'completed', 'failed', 'cancelled'));
ALTER TABLE orchestratorm8_stage_run ADD COLUMN IF NOT EXISTS stall_at timestamptz;

-- Every ring message applied, by key (routing key, source, envelope timestamp): a
-- message is recorded once whichever replica consumes it, however often it is
-- redelivered. Keys older than the retention are deleted with the workflows.
CREATE TABLE IF NOT EXISTS orchestratorm8_ring_message (
    key text PRIMARY KEY,
    received_at timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS orchestratorm8_ring_message_received_idx
    ON orchestratorm8_ring_message (received_at);
CREATE INDEX IF NOT EXISTS orchestratorm8_workflow_observed_idx
    ON orchestratorm8_workflow (created_at DESC, id DESC) WHERE kind = 'observed';
