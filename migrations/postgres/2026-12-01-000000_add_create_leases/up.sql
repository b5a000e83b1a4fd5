-- A `creating` row names the process creating it (a random id per process start) and the
-- time until which that process vouches for the create (renewed while the create runs), so a
-- create whose creator is gone is settled as soon as its lease lapses. Both are NULL for rows
-- written before this migration (and by code that does not know them): those keep
-- MONZA_CREATE_TIMEOUT as their only bound. Adding NULL columns rewrites nothing.

ALTER TABLE sandboxes
    ADD COLUMN creator_instance UUID,
    ADD COLUMN lease_expires_at TIMESTAMPTZ;

-- The lease pass lists `creating` sandboxes every few seconds, newest first: without this
-- index that is a scan of every sandbox ever made.
CREATE INDEX sandboxes_creating_created_at_idx ON sandboxes (created_at DESC, id DESC)
    WHERE status = 'creating';
