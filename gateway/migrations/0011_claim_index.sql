-- The claim with a deep queue. The claim walks the queue in (priority DESC, message_id) order
-- for rows free to take; the old index held the leased rows too (claimed, in flight on a
-- channel), so every claim read past them and filtered them out again. Free rows now have an
-- index of their own, in the claim's order, and leased rows one by lease expiry, so that a
-- lease that ran out (its node died) is found without walking the live ones.
CREATE INDEX outbound_queue_ready ON outbound_queue (priority DESC, message_id) WHERE leased_by IS NULL;
CREATE INDEX outbound_queue_leased ON outbound_queue (lease_until) WHERE leased_by IS NOT NULL;
DROP INDEX outbound_queue_order;
-- A lease is leased_by and lease_until together: normalize any row that has one without the other.
UPDATE outbound_queue SET leased_by = NULL WHERE leased_by IS NOT NULL AND lease_until IS NULL;
UPDATE outbound_queue SET lease_until = NULL WHERE leased_by IS NULL AND lease_until IS NOT NULL;
