-- Managed-mode workflows. Every timestamp is written by the application (never now()),
-- so that the in-memory twin behaves identically under a test clock.
CREATE TABLE IF NOT EXISTS orchestratorm8_workflow (
    id uuid PRIMARY KEY,
    status text NOT NULL
        CHECK (status IN ('pending', 'running', 'paused', 'completed', 'failed', 'cancelled')),
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL,
    -- Set exactly when the status becomes terminal.
    ended_at timestamptz,
    -- The only domain of a one-domain workflow while it is not terminal, else NULL:
    -- the unique index below allows one active workflow per domain, even under races.
    active_domain uuid,
    CHECK ((ended_at IS NULL) = (status IN ('pending', 'running', 'paused')))
);
CREATE UNIQUE INDEX IF NOT EXISTS orchestratorm8_workflow_active_domain_key
    ON orchestratorm8_workflow (active_domain) WHERE active_domain IS NOT NULL;
CREATE INDEX IF NOT EXISTS orchestratorm8_workflow_created_idx
    ON orchestratorm8_workflow (created_at DESC, id DESC);
CREATE INDEX IF NOT EXISTS orchestratorm8_workflow_status_created_idx
    ON orchestratorm8_workflow (status, created_at DESC, id DESC);
CREATE INDEX IF NOT EXISTS orchestratorm8_workflow_active_idx
    ON orchestratorm8_workflow (id) WHERE ended_at IS NULL;
CREATE INDEX IF NOT EXISTS orchestratorm8_workflow_ended_idx
    ON orchestratorm8_workflow (ended_at) WHERE ended_at IS NOT NULL;

-- The domains of a workflow as they were when it was created (a copy: later renames
-- or deletions in cptm8domain do not change a running workflow).
CREATE TABLE IF NOT EXISTS orchestratorm8_workflow_domain (
    workflow_id uuid NOT NULL,
    position int NOT NULL,
    domain_id uuid NOT NULL,
    name text NOT NULL,
    companyname text NOT NULL,
    PRIMARY KEY (workflow_id, position)
);
CREATE INDEX IF NOT EXISTS orchestratorm8_workflow_domain_domain_idx
    ON orchestratorm8_workflow_domain (domain_id);

-- One row per stage of a workflow; `attempt` counts the attempts published so far.
CREATE TABLE IF NOT EXISTS orchestratorm8_stage_run (
    workflow_id uuid NOT NULL,
    stage text NOT NULL,
    position int NOT NULL,
    depends_on text[] NOT NULL,
    status text NOT NULL
        CHECK (status IN ('waiting', 'pending', 'running', 'completed', 'failed', 'cancelled')),
    attempt int NOT NULL DEFAULT 0,
    not_before timestamptz,
    deadline timestamptz,
    claim_owner uuid,
    claim_until timestamptz,
    detail jsonb,
    updated_at timestamptz NOT NULL,
    PRIMARY KEY (workflow_id, stage)
);
CREATE INDEX IF NOT EXISTS orchestratorm8_stage_run_due_idx
    ON orchestratorm8_stage_run (stage, not_before) WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS orchestratorm8_stage_run_deadline_idx
    ON orchestratorm8_stage_run (deadline) WHERE status = 'running';
CREATE INDEX IF NOT EXISTS orchestratorm8_stage_run_claimed_idx
    ON orchestratorm8_stage_run (claim_until) WHERE status = 'pending' AND claim_until IS NOT NULL;
