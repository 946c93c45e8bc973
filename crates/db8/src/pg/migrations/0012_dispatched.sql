-- `dispatched` is a stage status of its own (issue 17, docs/ENGINE.md "The stage state
-- machine"): a claimed attempt (published or being published, not yet known running)
-- was a `pending` row with a claim and the attempt before; it is now `dispatched` at
-- the attempt being published, with its owner and lease, and a result of it applies
-- at once.
ALTER TABLE orchestratorm8_stage_run DROP CONSTRAINT IF EXISTS orchestratorm8_stage_run_status_check;
ALTER TABLE orchestratorm8_stage_run ADD CONSTRAINT orchestratorm8_stage_run_status_check
    CHECK (status IN ('waiting', 'pending', 'dispatched', 'running', 'stalled', 'completed',
                      'failed', 'cancelled'));

-- The attempts claimed at upgrade time. A live claim becomes a dispatched attempt under
-- the same lease; an expired one too, and is claimed again at the next round with the
-- same attempt number, as before (the database's clock is never read).
UPDATE orchestratorm8_stage_run SET status = 'dispatched', attempt = attempt + 1
WHERE status = 'pending' AND claim_owner IS NOT NULL;

-- Claiming takes due pending attempts and dispatched ones whose lease ended, in one
-- order: the claim-order index covers both statuses (claimed attempts were in the old
-- one too, as pending rows).
CREATE INDEX IF NOT EXISTS orchestratorm8_stage_run_claim_order_idx
    ON orchestratorm8_stage_run (stage, not_before, workflow_id)
    WHERE status IN ('pending', 'dispatched');
DROP INDEX IF EXISTS orchestratorm8_stage_run_claim_idx;

-- In-flight counts (max_in_flight, fairness) read the live leases.
CREATE INDEX IF NOT EXISTS orchestratorm8_stage_run_lease_idx
    ON orchestratorm8_stage_run (claim_until) WHERE status = 'dispatched';
DROP INDEX IF EXISTS orchestratorm8_stage_run_claimed_idx;
