-- MO dispatch, MO callbacks and compliance guards.
--
-- Every stored inbound message is dispatched exactly once: dispatchers claim rows with no
-- ``dispatched_at`` by lease (FOR UPDATE SKIP LOCKED), so an MO stored just before a crash is
-- dispatched after the restart, by this node or another.
ALTER TABLE inbound_messages
    ADD COLUMN merchant_id    bigint REFERENCES merchants (id) ON DELETE SET NULL,
    ADD COLUMN command        text NOT NULL DEFAULT '',       -- the first word, normalized
    ADD COLUMN outcome        text NOT NULL DEFAULT '',       -- unsubscribed, handled, callback, help, no_merchant, failed
    ADD COLUMN dispatched_at  timestamptz,
    ADD COLUMN lease_until    timestamptz,
    ADD COLUMN attempts       integer NOT NULL DEFAULT 0;
-- Messages stored before dispatch existed are not answered now, long after the fact.
UPDATE inbound_messages SET dispatched_at = stored_at, outcome = 'before_dispatch';
CREATE INDEX inbound_messages_undispatched ON inbound_messages (id) WHERE dispatched_at IS NULL;

-- Upstream apps subscribed to the MOs of a service number (and its extensions), optionally
-- only those whose first word is ``keyword`` (normalized as the command language has it).
CREATE TABLE mo_subscriptions (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id      bigint NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    service_number  text NOT NULL CHECK (service_number ~ '^[0-9]{3,21}$'),
    keyword         text NOT NULL DEFAULT '',                 -- '' means every MO to the number
    url             text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (account_id, service_number, keyword, url)
);
CREATE INDEX mo_subscriptions_number ON mo_subscriptions (service_number);

-- Consumers who texted TD / T / 退订 to a merchant: no more marketing from its account.
CREATE TABLE mo_unsubscribes (
    merchant_id  bigint NOT NULL REFERENCES merchants (id) ON DELETE CASCADE,
    phone        text NOT NULL,
    mo_id        bigint REFERENCES inbound_messages (id) ON DELETE SET NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (merchant_id, phone)
);
CREATE INDEX mo_unsubscribes_phone ON mo_unsubscribes (phone);

-- Numbers nothing may be sent to (admin-managed, or seeded from ``[compliance] blocklist``).
CREATE TABLE blocklist (
    phone       text PRIMARY KEY CHECK (phone ~ '^1[0-9]{10}$'),
    reason      text NOT NULL DEFAULT '',
    source      text NOT NULL DEFAULT 'admin' CHECK (source IN ('admin', 'config')),
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- MO callbacks travel through the webhook outbox as kind 'mo': no message, an inbound one.
ALTER TABLE webhook_outbox
    ALTER COLUMN message_id DROP NOT NULL,
    ADD COLUMN mo_id       bigint REFERENCES inbound_messages (id) ON DELETE CASCADE,
    ADD COLUMN account_id  bigint REFERENCES accounts (id) ON DELETE CASCADE,
    DROP CONSTRAINT webhook_outbox_kind_check,
    ADD CONSTRAINT webhook_outbox_kind_check CHECK (kind IN ('webhook', 'kannel', 'mo')),
    ADD CONSTRAINT webhook_outbox_subject CHECK (
        (kind = 'mo' AND mo_id IS NOT NULL AND account_id IS NOT NULL)
        OR (kind <> 'mo' AND message_id IS NOT NULL));
