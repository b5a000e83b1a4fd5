-- Sandboxes, their published ports and their append-only event log.
--
-- Ids are lowercase hyphenated UUID text; timestamps are INTEGER microseconds since the
-- Unix epoch (UTC), so both sort and compare correctly. JSON is stored as text.

CREATE TABLE sandboxes (
    id                  TEXT    PRIMARY KEY NOT NULL,
    tenant              TEXT    NOT NULL,
    name                TEXT    NOT NULL,
    template            TEXT    NOT NULL,
    status              TEXT    NOT NULL
        CHECK (status IN ('creating', 'running', 'expired', 'deleted', 'error')),
    status_reason       TEXT,
    container_id        TEXT,
    image               TEXT    NOT NULL,
    workspace_mount     TEXT    NOT NULL,
    devcontainer_config TEXT    NOT NULL CHECK (json_valid(devcontainer_config)),
    env_vars            TEXT    NOT NULL CHECK (json_valid(env_vars)),
    last_activity       INTEGER NOT NULL,
    created_at          INTEGER NOT NULL,
    expires_at          INTEGER NOT NULL,
    deleted_at          INTEGER
) STRICT, WITHOUT ROWID;

-- Listing a tenant's sandboxes, newest first (and counting its live ones).
CREATE INDEX sandboxes_tenant_created_at_idx ON sandboxes (tenant, created_at DESC, id DESC);
-- Listing every tenant's sandboxes (admin), newest first.
CREATE INDEX sandboxes_created_at_idx ON sandboxes (created_at DESC, id DESC);
-- The reaper: running sandboxes by expiry.
CREATE INDEX sandboxes_running_expires_at_idx ON sandboxes (expires_at) WHERE status = 'running';

CREATE TABLE port_mappings (
    id             TEXT    PRIMARY KEY NOT NULL,
    sandbox_id     TEXT    NOT NULL REFERENCES sandboxes (id) ON DELETE CASCADE,
    host_port      INTEGER NOT NULL CHECK (host_port BETWEEN 0 AND 65535),
    container_port INTEGER NOT NULL CHECK (container_port BETWEEN 0 AND 65535),
    UNIQUE (sandbox_id, container_port)
) STRICT;

-- Append-only: rows are inserted, never updated. Heartbeats are not logged.
CREATE TABLE sandbox_events (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    sandbox_id TEXT    NOT NULL REFERENCES sandboxes (id) ON DELETE CASCADE,
    action     TEXT    NOT NULL
        CHECK (action IN ('created', 'started', 'executed', 'uploaded', 'downloaded',
                          'deleted', 'expired', 'failed')),
    details    TEXT    NOT NULL CHECK (json_valid(details)),
    created_at INTEGER NOT NULL
) STRICT;

CREATE INDEX sandbox_events_sandbox_id_idx ON sandbox_events (sandbox_id, id);
