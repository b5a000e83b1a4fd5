//! The tables, as diesel sees them (private to the crate). Matches `migrations/postgres`.

diesel::table! {
    sandboxes (id) {
        id -> Uuid,
        tenant -> Text,
        name -> Text,
        template -> Text,
        status -> Text,
        status_reason -> Nullable<Text>,
        container_id -> Nullable<Text>,
        image -> Text,
        workspace_mount -> Text,
        devcontainer_config -> Jsonb,
        env_vars -> Jsonb,
        last_activity -> Timestamptz,
        created_at -> Timestamptz,
        expires_at -> Timestamptz,
        deleted_at -> Nullable<Timestamptz>,
        creator_instance -> Nullable<Uuid>,
        lease_expires_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    port_mappings (id) {
        id -> Uuid,
        sandbox_id -> Uuid,
        host_port -> Integer,
        container_port -> Integer,
    }
}

diesel::table! {
    sandbox_events (id) {
        id -> BigInt,
        sandbox_id -> Uuid,
        action -> Text,
        details -> Jsonb,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    api_tokens (id) {
        id -> Text,
        tenant -> Text,
        admin -> Bool,
        secret_hash -> Text,
        created_at -> Timestamptz,
        revoked_at -> Nullable<Timestamptz>,
    }
}

diesel::joinable!(port_mappings -> sandboxes (sandbox_id));
diesel::joinable!(sandbox_events -> sandboxes (sandbox_id));
diesel::allow_tables_to_appear_in_same_query!(sandboxes, port_mappings, sandbox_events);
