-- Kannel-style delivery reports: a URL template and a mask of the events that call it.
ALTER TABLE messages ADD COLUMN dlr_url text, ADD COLUMN dlr_mask smallint NOT NULL DEFAULT 0;
ALTER TABLE webhook_outbox
    ADD COLUMN kind text NOT NULL DEFAULT 'webhook' CHECK (kind IN ('webhook', 'kannel')),
    ADD COLUMN dlr_type smallint NOT NULL DEFAULT 0,       -- Kannel's %d: 1, 2, 4, 8 or 16
    ADD COLUMN event_status text NOT NULL DEFAULT '',
    ADD COLUMN event_at timestamptz NOT NULL DEFAULT now();
CREATE INDEX webhook_outbox_message ON webhook_outbox (message_id, id) WHERE state = 'pending';
