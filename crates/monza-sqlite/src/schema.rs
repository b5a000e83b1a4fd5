//! The tables, as diesel sees them (private to the crate). Matches `migrations/sqlite`.

diesel::table! {
    sandboxes (id) {
        id -> Text,
        tenant -> Text,
        name -> Text,
        template -> Text,
        status -> Text,
        status_reason -> Nullable<Text>,
        container_id -> Nullable<Text>,
        image -> Text,
        workspace_mount -> Text,
        devcontainer_config -> Text,
        env_vars -> Text,
        last_activity -> BigInt,
        created_at -> BigInt,
        expires_at -> BigInt,
        deleted_at -> Nullable<BigInt>,
        creator_instance -> Nullable<Text>,
        lease_expires_at -> Nullable<BigInt>,
    }
}

diesel::table! {
    port_mappings (id) {
        id -> Text,
        sandbox_id -> Text,
        host_port -> Integer,
        container_port -> Integer,
    }
}

diesel::table! {
    sandbox_events (id) {
        id -> BigInt,
        sandbox_id -> Text,
        action -> Text,
        details -> Text,
        created_at -> BigInt,
    }
}

diesel::table! {
    api_tokens (id) {
        id -> Text,
        tenant -> Text,
        admin -> Bool,
        secret_hash -> Text,
        created_at -> BigInt,
        revoked_at -> Nullable<BigInt>,
    }
}

diesel::joinable!(port_mappings -> sandboxes (sandbox_id));
diesel::joinable!(sandbox_events -> sandboxes (sandbox_id));
diesel::allow_tables_to_appear_in_same_query!(sandboxes, port_mappings, sandbox_events);
