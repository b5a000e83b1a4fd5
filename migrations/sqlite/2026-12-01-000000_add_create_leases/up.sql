-- A `creating` row names the process creating it (a random id per process start, as
-- lowercase hyphenated UUID text) and the time until which that process vouches for the
-- create (INTEGER microseconds since the Unix epoch, renewed while the create runs), so a
-- create whose creator is gone is settled as soon as its lease lapses. Both are NULL for rows
-- written before this migration (and by code that does not know them): those keep
-- MONZA_CREATE_TIMEOUT as their only bound.

ALTER TABLE sandboxes ADD COLUMN creator_instance TEXT;
ALTER TABLE sandboxes ADD COLUMN lease_expires_at INTEGER;

-- The lease pass lists `creating` sandboxes every few seconds, newest first: without this
-- index that is a scan of every sandbox ever made.
CREATE INDEX sandboxes_creating_created_at_idx ON sandboxes (created_at DESC, id DESC)
    WHERE status = 'creating';
