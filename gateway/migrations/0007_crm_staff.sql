-- A merchant's staff: who may use the CRM API and which SMS commands (approvals) they may
-- send. Each has a role; permissions follow from it (crm_lite/staff.py). ``approver_id`` names
-- the person who decides this member's requests; escalation follows that chain upwards.

CREATE TABLE crm_staff (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    merchant_id  bigint NOT NULL REFERENCES merchants (id) ON DELETE CASCADE,
    phone        text NOT NULL CHECK (phone ~ '^1[0-9]{10}$'),
    name         text NOT NULL CHECK (length(name) BETWEEN 1 AND 64),
    role         text NOT NULL CHECK (role IN ('owner', 'manager', 'cashier', 'waiter')),
    approver_id  bigint REFERENCES crm_staff (id) ON DELETE SET NULL,
    token_hash   bytea UNIQUE,                  -- SHA-256 of the staff member's API token
    active       boolean NOT NULL DEFAULT true,
    created_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (merchant_id, phone)
);
