ALTER TABLE sandboxes DROP COLUMN remote_user, DROP COLUMN remote_env;
