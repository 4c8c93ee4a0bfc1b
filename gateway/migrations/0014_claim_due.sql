-- The claim reads only the rows due now. Rows waiting on a later not_before (a retry's
-- backoff, a recipient's window, a scheduled time) sat in outbound_queue_ready among the due
-- ones, in (priority, message_id) order, and every claim read them and filtered them out.
-- The free rows' index now runs by priority, then not_before: the claim walks each priority
-- from its oldest due row and stops at the first row not due yet (an index bound), so a
-- queue of rows waiting for later costs it nothing.
CREATE INDEX outbound_queue_due ON outbound_queue (priority DESC, not_before, message_id) WHERE leased_by IS NULL;
DROP INDEX outbound_queue_ready;
