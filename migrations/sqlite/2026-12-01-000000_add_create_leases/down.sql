DROP INDEX sandboxes_creating_created_at_idx;
ALTER TABLE sandboxes DROP COLUMN lease_expires_at;
ALTER TABLE sandboxes DROP COLUMN creator_instance;
