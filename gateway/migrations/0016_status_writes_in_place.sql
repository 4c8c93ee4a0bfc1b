-- Status writes rewrite a message's row in place.
--
-- A message's row is written three times after it is inserted (queued, submitted, final).
-- messages_submitted_expiry named `status` in its predicate, so no such write could be a
-- heap-only (HOT) update: each wrote a new row version elsewhere and a new entry in every
-- index of the table (measured: 0 of 300,000 updates HOT; 3.8 KB of WAL a message). Now no
-- index of messages names a column that a status write changes, and pages keep room for the
-- new versions (fillfactor), so the writes stay on their page and touch no index.
--
-- Expiry no longer needs an index of open messages: the sweep walks the messages in
-- (expires_at, id) order from where it stopped last (expiry_sweep), once over each message,
-- and ends the open ones `expired` (gateway/store/status.py, expire_overdue). A message
-- enters behind that cursor only if its accept transaction outlasts its validity, and
-- validity is at least 60 s while the intake gives up on a commit after seconds. On a
-- database upgraded to this version the first sweep walks the messages already expired once.
ALTER TABLE messages SET (fillfactor = 50);
ALTER TABLE message_refs SET (fillfactor = 70);
CREATE INDEX messages_expiry ON messages (expires_at, id);
DROP INDEX messages_submitted_expiry;

CREATE TABLE expiry_sweep (
    id        integer PRIMARY KEY CHECK (id = 1),
    swept_at  timestamptz NOT NULL,
    swept_id  bigint NOT NULL
);
INSERT INTO expiry_sweep (id, swept_at, swept_id) VALUES (1, '-infinity', 0);
