ALTER TABLE sandboxes DROP COLUMN remote_user;
ALTER TABLE sandboxes DROP COLUMN remote_env;
