-- The transactional outbox (docs/ENGINE.md, "Outbox"; docs/DATABASE.md): what a state
-- change causes to be sent (a workflow's completion or failure notification, a ring
-- stall warning) is written here in the transaction of the change, then relayed to
-- RabbitMQ with publisher confirms and deleted. A new table: no existing data changes.
CREATE TABLE IF NOT EXISTS orchestratorm8_outbox (
    -- The AMQP message_id of every copy published for the row.
    id uuid PRIMARY KEY,
    created_at timestamptz NOT NULL,
    -- The fact (db8::OutboxEvent as JSON, tagged by "event").
    event jsonb NOT NULL,
    -- Due for (another) relay attempt at or after this time.
    not_before timestamptz NOT NULL,
    -- Failed relay attempts so far.
    attempts int NOT NULL DEFAULT 0,
    -- The relay that claimed the row, and until when.
    claim_owner uuid,
    claim_until timestamptz
);
CREATE INDEX IF NOT EXISTS orchestratorm8_outbox_due_idx
    ON orchestratorm8_outbox (not_before, created_at);
