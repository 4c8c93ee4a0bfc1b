-- Accounts, API keys, messages with their history, the outbound queue, operator
-- references (Msg_Id / TP-MR) and inbound messages.

CREATE TABLE accounts (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name            text NOT NULL UNIQUE CHECK (name ~ '^[A-Za-z0-9_.-]{1,64}$'),
    webhook_secret  text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE api_keys (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id  bigint NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    key_hash    bytea NOT NULL UNIQUE,          -- SHA-256 of the key; the key itself is never stored
    prefix      text NOT NULL,                  -- the first characters, to tell keys apart in listings
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);

CREATE TABLE messages (
    id            bigint PRIMARY KEY,           -- from message_id_blocks, a block at a time
    account_id    bigint NOT NULL REFERENCES accounts (id),
    client_ref    text,
    dest          text NOT NULL,                -- 11-digit national number
    operator      text NOT NULL,
    body          text NOT NULL,
    encoding      text NOT NULL CHECK (encoding IN ('gsm7', 'ucs2')),
    parts         smallint NOT NULL CHECK (parts BETWEEN 1 AND 255),
    priority      smallint NOT NULL DEFAULT 0 CHECK (priority BETWEEN 0 AND 3),
    class         text NOT NULL DEFAULT 'transactional' CHECK (class IN ('transactional', 'marketing')),
    expires_at    timestamptz NOT NULL,
    callback_url  text,
    sender        text NOT NULL DEFAULT '',
    status        text NOT NULL CHECK (status IN ('accepted', 'queued', 'submitted', 'delivered',
                                                  'undeliverable', 'expired', 'rejected', 'failed')),
    channel       text,
    error_code    text,
    parts_submitted  smallint NOT NULL DEFAULT 0,
    parts_delivered  smallint NOT NULL DEFAULT 0,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX messages_account_created ON messages (account_id, created_at);
CREATE INDEX messages_dest ON messages (dest, created_at);
CREATE INDEX messages_client_ref ON messages (account_id, client_ref) WHERE client_ref IS NOT NULL;

-- Idempotency: the first request with a (account, client_ref) claims it here; a later one
-- finds the original messages by messages.client_ref.
CREATE TABLE client_refs (
    account_id   bigint NOT NULL REFERENCES accounts (id),
    client_ref   text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account_id, client_ref)
);

CREATE TABLE message_events (
    message_id  bigint NOT NULL,
    at          timestamptz NOT NULL DEFAULT clock_timestamp(),
    status      text NOT NULL,
    detail      text NOT NULL DEFAULT ''
);
CREATE INDEX message_events_message ON message_events (message_id, at);

-- The outbound queue: a message is here from acceptance until it is submitted or final.
-- Dispatchers claim rows with FOR UPDATE SKIP LOCKED and hold them by lease.
CREATE TABLE outbound_queue (
    message_id   bigint PRIMARY KEY REFERENCES messages (id) ON DELETE CASCADE,
    priority     smallint NOT NULL,
    not_before   timestamptz NOT NULL DEFAULT now(),
    leased_by    text,
    lease_until  timestamptz,
    attempts     integer NOT NULL DEFAULT 0
);
CREATE INDEX outbound_queue_order ON outbound_queue (priority DESC, message_id);

-- What an operator or modem calls a submitted part, so any node can correlate its report.
CREATE TABLE message_refs (
    channel     text NOT NULL,
    ref         text NOT NULL,                  -- CMPP Msg_Id as decimal, or modem "tp_mr:dest"
    message_id  bigint NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    part        smallint NOT NULL,
    status      text NOT NULL DEFAULT 'submitted',
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (channel, ref)
);
CREATE INDEX message_refs_message ON message_refs (message_id);

CREATE TABLE inbound_messages (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    channel         text NOT NULL,
    sender          text NOT NULL,
    service_number  text NOT NULL,
    body            text NOT NULL,
    received_at     timestamptz NOT NULL,
    stored_at       timestamptz NOT NULL DEFAULT now()
);

-- Message ids are handed out in blocks: one nextval gives a node ID_BLOCK ids to assign itself.
CREATE SEQUENCE message_id_blocks AS bigint START WITH 1 CACHE 1;
