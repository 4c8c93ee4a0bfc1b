-- Merchants: the businesses a deployment serves. Each sends as one account and is reached by
-- consumers at its service number (a long code under the gateway's base number, e.g.
-- 10658888 + 001); its signature (e.g. 【某某商场】) marks its marketing texts.

CREATE TABLE merchants (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name            text NOT NULL UNIQUE CHECK (name ~ '^[A-Za-z0-9_.-]{1,64}$'),
    account_id      bigint NOT NULL REFERENCES accounts (id),
    service_number  text NOT NULL UNIQUE CHECK (service_number ~ '^[0-9]{3,21}$'),
    signature       text NOT NULL DEFAULT '',
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX merchants_account ON merchants (account_id);
