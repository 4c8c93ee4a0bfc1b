-- MT routing: the routing table shared by every node, the channel a retried message last
-- failed on, and the sends counted against per-recipient limits.

-- One row: the rules in force. ``source`` says who wrote them: 'config' ([[routes]] seeds the
-- table at start) or 'api' (PUT /v1/admin/routes; such a table wins over the configuration).
CREATE TABLE routing_table (
    id          smallint PRIMARY KEY DEFAULT 1 CHECK (id = 1),
    rules       jsonb NOT NULL,
    version     bigint NOT NULL,
    source      text NOT NULL CHECK (source IN ('config', 'api')),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- The channel whose transient failure sent the message back to the queue: the next attempt
-- prefers another channel when its route offers one.
ALTER TABLE outbound_queue ADD COLUMN last_channel text;

-- One row per message counted against its recipient's limits (recipient_per_hour / _day):
-- written in the transaction that marks the message queued, read by every node.
CREATE TABLE recipient_sends (
    message_id  bigint PRIMARY KEY,
    dest        text NOT NULL,
    at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX recipient_sends_dest ON recipient_sends (dest, at);
