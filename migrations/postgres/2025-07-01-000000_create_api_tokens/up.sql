-- API tokens. Only the SHA-256 of a token's text is kept (64 lowercase hex digits), never
-- the text.

CREATE TABLE api_tokens (
    id          TEXT        PRIMARY KEY CONSTRAINT api_tokens_id_check CHECK (length(id) = 16),
    tenant      TEXT        NOT NULL,
    admin       BOOLEAN     NOT NULL,
    secret_hash TEXT        NOT NULL CONSTRAINT api_tokens_secret_hash_check CHECK (length(secret_hash) = 64),
    created_at  TIMESTAMPTZ NOT NULL,
    revoked_at  TIMESTAMPTZ
);

-- `monza token list`: oldest first.
CREATE INDEX api_tokens_created_at_idx ON api_tokens (created_at, id);
