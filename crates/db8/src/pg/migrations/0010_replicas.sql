-- The replicas list of the API and console (issue 15, docs/HTTP.md "Replicas"): each
-- replica writes its row every few seconds; rows not written for a day are deleted by
-- the next write of any replica, a replica's row goes at a clean shutdown.
CREATE TABLE IF NOT EXISTS orchestratorm8_replica (
    id uuid PRIMARY KEY,
    name text NOT NULL,
    role text NOT NULL CHECK (role IN ('leader', 'standby')),
    version text NOT NULL,
    started_at timestamptz NOT NULL,
    seen_at timestamptz NOT NULL
);
