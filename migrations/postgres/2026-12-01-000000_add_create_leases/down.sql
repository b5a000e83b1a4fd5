DROP INDEX sandboxes_creating_created_at_idx;
ALTER TABLE sandboxes
    DROP COLUMN lease_expires_at,
    DROP COLUMN creator_instance;
