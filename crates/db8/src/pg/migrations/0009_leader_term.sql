-- Fencing of the leader (docs/DATABASE.md, "Leader term"). A new table: no existing
-- data is touched.

-- Per leader lock key (LeaderElection.lock_key), the current leader term: incremented by
-- every replica that takes the lock, before it leads. Each write only the leader may make
-- runs in a transaction that first reads this row FOR SHARE and compares it with the
-- term its replica holds; the increment (an UPDATE) waits for those transactions, and
-- every later one from an older term fails. One row per lock key.
CREATE TABLE IF NOT EXISTS orchestratorm8_leader_term (
    lock_key bigint PRIMARY KEY,
    term bigint NOT NULL CHECK (term > 0)
);
