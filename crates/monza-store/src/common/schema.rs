//! The tables, as diesel sees them (private to the crate), written once: `IdSql`, `TimeSql`
//! and `JsonSql` are the backend's column types (its `codec::sql`; each table is a module
//! inside this one, hence `super::super`). Matches `migrations/sqlite` and
//! `migrations/postgres`.

diesel::table! {
    use diesel::sql_types::*;
    use super::super::codec::sql::*;

    sandboxes (id) {
        id -> IdSql,
        tenant -> Text,
        name -> Text,
        template -> Text,
        status -> Text,
        status_reason -> Nullable<Text>,
        container_id -> Nullable<Text>,
        image -> Text,
        workspace_mount -> Text,
        devcontainer_config -> JsonSql,
        env_vars -> JsonSql,
        last_activity -> TimeSql,
        created_at -> TimeSql,
        expires_at -> TimeSql,
        deleted_at -> Nullable<TimeSql>,
        creator_instance -> Nullable<IdSql>,
        lease_expires_at -> Nullable<TimeSql>,
        remote_env -> Nullable<JsonSql>,
        remote_user -> Nullable<Text>,
    }
}

diesel::table! {
    use diesel::sql_types::*;
    use super::super::codec::sql::*;

    port_mappings (id) {
        id -> IdSql,
        sandbox_id -> IdSql,
        host_port -> Integer,
        container_port -> Integer,
    }
}

diesel::table! {
    use diesel::sql_types::*;
    use super::super::codec::sql::*;

    sandbox_events (id) {
        id -> BigInt,
        sandbox_id -> IdSql,
        action -> Text,
        details -> JsonSql,
        created_at -> TimeSql,
    }
}

diesel::table! {
    use diesel::sql_types::*;
    use super::super::codec::sql::*;

    api_tokens (id) {
        id -> Text,
        tenant -> Text,
        admin -> Bool,
        secret_hash -> Text,
        created_at -> TimeSql,
        revoked_at -> Nullable<TimeSql>,
    }
}

diesel::joinable!(port_mappings -> sandboxes (sandbox_id));
diesel::joinable!(sandbox_events -> sandboxes (sandbox_id));
diesel::allow_tables_to_appear_in_same_query!(sandboxes, port_mappings, sandbox_events);
