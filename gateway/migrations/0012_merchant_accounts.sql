-- Unsubscribes per merchant: a merchant may send through accounts besides its own
-- (merchants.account_id), e.g. its shop app's account and its marketing agency's. A consumer
-- who texted TD / T / 退订 to the merchant (mo_unsubscribes, keyed by merchant already) gets
-- marketing from none of them. Synchronized at start from ``[[merchants]] accounts``.
CREATE TABLE merchant_accounts (
    merchant_id  bigint NOT NULL REFERENCES merchants (id) ON DELETE CASCADE,
    account_id   bigint NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (merchant_id, account_id)
);
CREATE INDEX merchant_accounts_account ON merchant_accounts (account_id);
