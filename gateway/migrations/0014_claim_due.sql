-- The claim reads only the rows it may take now.
--
-- Rows waiting on a later not_before (a retry's backoff, a recipient's window, a scheduled
-- time) sat in outbound_queue_ready among the due ones, in (priority, message_id) order, and
-- every claim read them and filtered them out; during quiet hours so did the marketing rows,
-- each looked up in messages to learn its class. The queue row now carries the message's
-- class, and the free rows' index runs by priority, class, then not_before: the claim walks
-- one (priority, class) lane after the other, each from its oldest due row to the first row
-- not due yet (an index bound), and during quiet hours leaves the marketing lanes out.
ALTER TABLE outbound_queue ADD COLUMN class text NOT NULL DEFAULT 'transactional'
    CHECK (class IN ('transactional', 'marketing'));
UPDATE outbound_queue q SET class = m.class FROM messages m WHERE m.id = q.message_id AND m.class <> 'transactional';
CREATE INDEX outbound_queue_due ON outbound_queue (priority DESC, class DESC, not_before, message_id)
    WHERE leased_by IS NULL;
DROP INDEX outbound_queue_ready;
