-- Lottery campaigns and mobile approvals (crm_lite/lottery.py, crm_lite/approvals.py).

-- A lottery: consumers text its keyword inside [starts_at, ends_at) to enter. The seed is
-- drawn when the campaign is created; only its SHA-256 is shown until the draw, then the seed
-- too, so anyone can recompute the winners (crm_lite.lottery.recompute).
CREATE TABLE crm_lotteries (
    id                    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    merchant_id           bigint NOT NULL REFERENCES merchants (id) ON DELETE CASCADE,
    name                  text NOT NULL CHECK (length(name) BETWEEN 1 AND 40),
    keyword               text NOT NULL DEFAULT 'CJ' CHECK (keyword ~ '^[A-Z0-9]{1,10}$'),
    starts_at             timestamptz NOT NULL,
    ends_at               timestamptz NOT NULL,
    max_entries           integer NOT NULL DEFAULT 1 CHECK (max_entries >= 1),
    max_entries_per_day   integer CHECK (max_entries_per_day >= 1),
    max_wins              integer DEFAULT 1 CHECK (max_wins >= 1),  -- per phone; NULL: no limit
    members_only          boolean NOT NULL DEFAULT false,
    seed                  bytea NOT NULL CHECK (length(seed) = 32),
    seed_hash             bytea NOT NULL CHECK (length(seed_hash) = 32),
    status                text NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'closed', 'drawn')),
    created_at            timestamptz NOT NULL DEFAULT now(),
    closed_at             timestamptz,
    drawn_at              timestamptz,
    CHECK (ends_at > starts_at),
    CHECK ((status = 'drawn') = (drawn_at IS NOT NULL))
);
CREATE INDEX crm_lotteries_keyword ON crm_lotteries (merchant_id, keyword, starts_at);

-- Prizes in draw order (position); a prize's units are handed out 1..stock.
CREATE TABLE crm_lottery_prizes (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    lottery_id  bigint NOT NULL REFERENCES crm_lotteries (id) ON DELETE CASCADE,
    position    integer NOT NULL,
    name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 40),
    stock       integer NOT NULL CHECK (stock BETWEEN 1 AND 100000),
    UNIQUE (lottery_id, position),
    UNIQUE (id, stock)          -- the winners' foreign key carries the stock to check units against
);

-- One row per entry. entry_no comes from the campaign's own sequence
-- (crm_lottery_entry_seq_<lottery id>, created with the campaign), so entries never wait on
-- one another; numbers start at 1 and may skip one when an entry fails at the last moment.
-- An entry by SMS keeps its inbound message id, so a re-dispatched MO enters once. ``slot`` is
-- the phone's n-th entry in the campaign and ``day_slot`` its n-th that local day: two
-- simultaneous entries of one phone that counted the same earlier entries collide here, so
-- the per-phone limits hold under concurrency. Bulk imports leave them NULL.
CREATE TABLE crm_lottery_entries (
    lottery_id  bigint NOT NULL REFERENCES crm_lotteries (id) ON DELETE CASCADE,
    entry_no    bigint NOT NULL CHECK (entry_no >= 1),
    phone       text NOT NULL CHECK (phone ~ '^1[0-9]{10}$'),
    local_day   date NOT NULL,          -- the merchant's local date of the entry (daily limits)
    mo_id       bigint,
    slot        integer,
    day_slot    integer,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (lottery_id, entry_no)
);
CREATE INDEX crm_lottery_entries_phone ON crm_lottery_entries (lottery_id, phone, local_day);
-- Partial, so that bulk imports (no MO, no slots) pay for none of them.
CREATE UNIQUE INDEX crm_lottery_entries_mo_id ON crm_lottery_entries (mo_id) WHERE mo_id IS NOT NULL;
CREATE UNIQUE INDEX crm_lottery_entries_slot ON crm_lottery_entries (lottery_id, phone, slot)
    WHERE slot IS NOT NULL;
CREATE UNIQUE INDEX crm_lottery_entries_day_slot ON crm_lottery_entries (lottery_id, phone, local_day, day_slot)
    WHERE day_slot IS NOT NULL;

-- A winner row per unit of stock: (prize, unit) is unique and unit lies in 1..stock, so a
-- prize can never be handed out more often than it is stocked, whatever runs the draw.
CREATE TABLE crm_lottery_winners (
    lottery_id   bigint NOT NULL REFERENCES crm_lotteries (id) ON DELETE CASCADE,
    prize_id     bigint NOT NULL,
    stock        integer NOT NULL,
    unit         integer NOT NULL,
    entry_no     bigint NOT NULL,
    phone        text NOT NULL,
    notified_at  timestamptz,
    PRIMARY KEY (prize_id, unit),
    UNIQUE (lottery_id, entry_no),
    FOREIGN KEY (prize_id, stock) REFERENCES crm_lottery_prizes (id, stock),
    FOREIGN KEY (lottery_id, entry_no) REFERENCES crm_lottery_entries (lottery_id, entry_no),
    CHECK (unit BETWEEN 1 AND stock)
);

-- Approval requests: numbered per merchant (what staff type back: Y12 / N12).
CREATE TABLE crm_approval_counters (
    merchant_id  bigint PRIMARY KEY REFERENCES merchants (id) ON DELETE CASCADE,
    last_number  integer NOT NULL
);

CREATE TABLE crm_approval_requests (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    merchant_id      bigint NOT NULL REFERENCES merchants (id) ON DELETE CASCADE,
    number           integer NOT NULL CHECK (number >= 1),
    requester_id     bigint NOT NULL REFERENCES crm_staff (id),
    kind             text NOT NULL CHECK (length(kind) BETWEEN 1 AND 20),
    amount_fen       bigint NOT NULL CHECK (amount_fen > 0),
    reason           text NOT NULL CHECK (length(reason) BETWEEN 1 AND 200),
    status           text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'approved', 'rejected')),
    approver_id      bigint NOT NULL REFERENCES crm_staff (id),   -- the current approver
    level            integer NOT NULL DEFAULT 0,                  -- escalations so far
    notified_level   integer NOT NULL DEFAULT -1,                 -- the level whose approver was told
    deadline         timestamptz,                                 -- escalate when pending past it
    timeout_s        double precision NOT NULL CHECK (timeout_s > 0),
    mo_id            bigint UNIQUE,                               -- filed by SMS
    decided_by       bigint REFERENCES crm_staff (id),
    decided_at       timestamptz,
    decided_mo_id    bigint UNIQUE,                               -- decided by SMS
    requester_told   boolean NOT NULL DEFAULT false,
    client_key       text CHECK (length(client_key) BETWEEN 1 AND 128),  -- filed by API, idempotently
    created_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (merchant_id, number),
    UNIQUE (requester_id, client_key),
    CHECK ((status = 'pending') = (decided_at IS NULL))
);
CREATE INDEX crm_approval_requests_due ON crm_approval_requests (deadline) WHERE status = 'pending';
CREATE INDEX crm_approval_requests_untold ON crm_approval_requests (id)
    WHERE (status = 'pending' AND notified_level < level) OR (status <> 'pending' AND NOT requester_told);

-- The audit trail: every step of a request, who did it (actor; NULL for the system) and to
-- whom (target).
CREATE TABLE crm_approval_events (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    request_id  bigint NOT NULL REFERENCES crm_approval_requests (id) ON DELETE CASCADE,
    kind        text NOT NULL CHECK (kind IN ('filed', 'notified', 'escalated', 'decided', 'refused',
                                              'told', 'stalled')),
    actor_id    bigint REFERENCES crm_staff (id),
    target_id   bigint REFERENCES crm_staff (id),
    detail      text NOT NULL DEFAULT '',
    mo_id       bigint UNIQUE,          -- the SMS that caused it: a re-dispatch records nothing twice
    at          timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX crm_approval_events_request ON crm_approval_events (request_id, id);
