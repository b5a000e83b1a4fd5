-- Sandboxes, their published ports and their append-only event log.

CREATE TABLE sandboxes (
    id                  UUID        PRIMARY KEY,
    tenant              TEXT        NOT NULL,
    name                TEXT        NOT NULL,
    template            TEXT        NOT NULL,
    status              TEXT        NOT NULL
        CONSTRAINT sandboxes_status_check
        CHECK (status IN ('creating', 'running', 'expired', 'deleted', 'error')),
    status_reason       TEXT,
    container_id        TEXT,
    image               TEXT        NOT NULL,
    workspace_mount     TEXT        NOT NULL,
    devcontainer_config JSONB       NOT NULL,
    env_vars            JSONB       NOT NULL,
    last_activity       TIMESTAMPTZ NOT NULL,
    created_at          TIMESTAMPTZ NOT NULL,
    expires_at          TIMESTAMPTZ NOT NULL,
    deleted_at          TIMESTAMPTZ
);

-- Listing a tenant's sandboxes, newest first (and counting its live ones).
CREATE INDEX sandboxes_tenant_created_at_idx ON sandboxes (tenant, created_at DESC, id DESC);
-- Listing every tenant's sandboxes (admin), newest first.
CREATE INDEX sandboxes_created_at_idx ON sandboxes (created_at DESC, id DESC);
-- The reaper: running sandboxes by expiry.
CREATE INDEX sandboxes_running_expires_at_idx ON sandboxes (expires_at) WHERE status = 'running';

CREATE TABLE port_mappings (
    id             UUID    PRIMARY KEY,
    sandbox_id     UUID    NOT NULL REFERENCES sandboxes (id) ON DELETE CASCADE,
    host_port      INTEGER NOT NULL CHECK (host_port BETWEEN 0 AND 65535),
    container_port INTEGER NOT NULL CHECK (container_port BETWEEN 0 AND 65535),
    CONSTRAINT port_mappings_sandbox_container_port_key UNIQUE (sandbox_id, container_port)
);

-- Append-only: rows are inserted, never updated. Heartbeats are not logged.
CREATE TABLE sandbox_events (
    id         BIGINT      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    sandbox_id UUID        NOT NULL REFERENCES sandboxes (id) ON DELETE CASCADE,
    action     TEXT        NOT NULL
        CONSTRAINT sandbox_events_action_check
        CHECK (action IN ('created', 'started', 'executed', 'uploaded', 'downloaded',
                          'deleted', 'expired', 'failed')),
    details    JSONB       NOT NULL,
    created_at TIMESTAMPTZ NOT NULL
);

CREATE INDEX sandbox_events_sandbox_id_idx ON sandbox_events (sandbox_id, id);
