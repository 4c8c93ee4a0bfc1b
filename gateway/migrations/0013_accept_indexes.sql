-- One index entry fewer per accepted message. The B-tree on (account_id, created_at) served
-- one query only: the count of an account's messages since local midnight, read once a day
-- per account with a daily quota (Store.accepted_since). A BRIN index on created_at keeps
-- that query to today's pages (rows arrive in created_at order) at a fraction of the cost:
-- a BRIN index holds one summary per range of 128 pages, not one entry per row.
DROP INDEX IF EXISTS messages_account_created;
CREATE INDEX messages_created_brin ON messages USING brin (created_at);
