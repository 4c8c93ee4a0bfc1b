-- crm_lite members and points (crm_lite/members.py, crm_lite/points.py, crm_lite/settings.py).
--
-- crm_settings: one row per merchant (created on first use) with its SMS command keywords, its
-- points rules and the counter that numbers its members (M000001, M000002, ...).
-- crm_members: consumers bound to a phone number, one per (merchant, phone); custom attribute
-- values in ``attrs`` (validated by the application against crm_attributes).
-- crm_points_ledger: append-only (a trigger refuses UPDATE and DELETE); every transaction has
-- an idempotency key unique per merchant. crm_points_balances holds each member's running
-- balance, locked (SELECT ... FOR UPDATE) by every transaction on that member, and can never
-- go below zero.

CREATE TABLE crm_settings (
    merchant_id         bigint PRIMARY KEY REFERENCES merchants (id) ON DELETE CASCADE,
    join_keyword        text NOT NULL DEFAULT '1' CHECK (length(join_keyword) BETWEEN 1 AND 10),
    points_keyword      text NOT NULL DEFAULT '2' CHECK (length(points_keyword) BETWEEN 1 AND 10),
    lottery_keyword     text NOT NULL DEFAULT 'CJ' CHECK (length(lottery_keyword) BETWEEN 1 AND 10),
    points_per_yuan     integer NOT NULL DEFAULT 1 CHECK (points_per_yuan BETWEEN 0 AND 1000),
    points_expire_days  integer CHECK (points_expire_days BETWEEN 1 AND 3650),   -- NULL: never
    next_member_no      bigint NOT NULL DEFAULT 1 CHECK (next_member_no >= 1),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    CHECK (join_keyword <> points_keyword AND join_keyword <> lottery_keyword
           AND points_keyword <> lottery_keyword)
);

CREATE TABLE crm_members (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    merchant_id  bigint NOT NULL REFERENCES merchants (id),
    member_no    bigint NOT NULL CHECK (member_no >= 1),
    phone        text NOT NULL CHECK (phone ~ '^1[0-9]{10}$'),
    name         text NOT NULL DEFAULT '' CHECK (length(name) <= 64),
    gender       text NOT NULL DEFAULT '' CHECK (gender IN ('', 'male', 'female')),
    birthday     date,
    email        text NOT NULL DEFAULT '' CHECK (length(email) <= 254),
    note         text NOT NULL DEFAULT '' CHECK (length(note) <= 500),
    attrs        jsonb NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(attrs) = 'object'),
    source       text NOT NULL CHECK (source IN ('sms', 'api', 'import')),
    join_mo_id   bigint UNIQUE,                  -- the inbound message that made this member
    joined_at    timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (merchant_id, phone),
    UNIQUE (merchant_id, member_no)
);

CREATE TABLE crm_attributes (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    merchant_id  bigint NOT NULL REFERENCES merchants (id) ON DELETE CASCADE,
    name         text NOT NULL CHECK (name ~ '^[a-z][a-z0-9_]{0,31}$'),
    label        text NOT NULL DEFAULT '' CHECK (length(label) <= 64),
    type         text NOT NULL CHECK (type IN ('text', 'number', 'date', 'choice')),
    choices      text[] NOT NULL DEFAULT '{}',
    created_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (merchant_id, name)
);

CREATE TABLE crm_groups (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    merchant_id  bigint NOT NULL REFERENCES merchants (id) ON DELETE CASCADE,
    name         text NOT NULL CHECK (length(name) BETWEEN 1 AND 64),
    parent_id    bigint REFERENCES crm_groups (id),
    created_at   timestamptz NOT NULL DEFAULT now(),
    CHECK (parent_id IS DISTINCT FROM id)
);
CREATE UNIQUE INDEX crm_groups_name ON crm_groups (merchant_id, coalesce(parent_id, 0), name);
CREATE INDEX crm_groups_parent ON crm_groups (parent_id);

CREATE TABLE crm_group_members (
    group_id   bigint NOT NULL REFERENCES crm_groups (id) ON DELETE CASCADE,
    member_id  bigint NOT NULL REFERENCES crm_members (id),
    PRIMARY KEY (group_id, member_id)
);
CREATE INDEX crm_group_members_member ON crm_group_members (member_id);

CREATE TABLE crm_points_balances (
    member_id    bigint PRIMARY KEY REFERENCES crm_members (id),
    merchant_id  bigint NOT NULL REFERENCES merchants (id),
    balance      bigint NOT NULL DEFAULT 0 CHECK (balance >= 0)
);

CREATE TABLE crm_points_ledger (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    merchant_id  bigint NOT NULL REFERENCES merchants (id),
    member_id    bigint NOT NULL REFERENCES crm_members (id),
    kind         text NOT NULL CHECK (kind IN ('earn', 'redeem', 'adjust', 'expire')),
    points       bigint NOT NULL CHECK (points <> 0),
    balance      bigint NOT NULL CHECK (balance >= 0),  -- the member's balance after this entry
    key          text NOT NULL CHECK (length(key) BETWEEN 1 AND 128),
    amount_fen   bigint CHECK (amount_fen >= 0),        -- the purchase an ``earn`` came from
    note         text NOT NULL DEFAULT '' CHECK (length(note) <= 200),
    staff_id     bigint REFERENCES crm_staff (id),
    created_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (merchant_id, key),
    CHECK ((kind = 'earn' AND points > 0) OR (kind IN ('redeem', 'expire') AND points < 0) OR kind = 'adjust')
);
CREATE INDEX crm_points_ledger_member ON crm_points_ledger (member_id, id);

CREATE FUNCTION crm_points_ledger_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'crm_points_ledger is append-only (% refused)', TG_OP
        USING ERRCODE = 'integrity_constraint_violation';
END $$;

CREATE TRIGGER crm_points_ledger_append_only BEFORE UPDATE OR DELETE ON crm_points_ledger
    FOR EACH ROW EXECUTE FUNCTION crm_points_ledger_append_only();
