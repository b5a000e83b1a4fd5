-- API tokens. Only the SHA-256 of a token's text is kept (64 lowercase hex digits), never
-- the text. Timestamps are INTEGER microseconds since the Unix epoch, as for sandboxes.

CREATE TABLE api_tokens (
    id          TEXT    PRIMARY KEY NOT NULL CHECK (length(id) = 16),
    tenant      TEXT    NOT NULL,
    admin       INTEGER NOT NULL CHECK (admin IN (0, 1)),
    secret_hash TEXT    NOT NULL CHECK (length(secret_hash) = 64),
    created_at  INTEGER NOT NULL,
    revoked_at  INTEGER
) STRICT, WITHOUT ROWID;

-- `monza token list`: oldest first.
CREATE INDEX api_tokens_created_at_idx ON api_tokens (created_at, id);
