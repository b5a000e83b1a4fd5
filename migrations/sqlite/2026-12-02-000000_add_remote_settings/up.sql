-- The template's resolved remoteEnv (JSON object text) and remoteUser, written at create so
-- the domain never reads the stored devcontainer.json. Nullable: rows written by an older
-- monza have neither, and monza reads them from the stored document instead (a marked
-- compatibility path in monza-store).
ALTER TABLE sandboxes ADD COLUMN remote_env TEXT;
ALTER TABLE sandboxes ADD COLUMN remote_user TEXT;
