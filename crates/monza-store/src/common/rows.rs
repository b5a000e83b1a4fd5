//! Row structs and their conversions to and from the domain types (private to the crate).
//!
//! Written once and compiled once per backend: `Id`, `Time` and `Json` are the backend's
//! column types (its `codec`), so the same struct is `uuid`/`timestamptz`/`jsonb` on
//! PostgreSQL and text/integer microseconds/text on SQLite.

use std::collections::BTreeMap;

use diesel::prelude::*;
use monza_domain::{
    CreateLease, Error, EventAction, InstanceId, NewEvent, PortMapping, Sandbox, SandboxEvent,
    SandboxId, SandboxName, SandboxState, SandboxStatus, TemplateName, TenantId,
};
use time::OffsetDateTime;

use super::codec::{self, Id, Json, Time};
use super::schema::{port_mappings, sandbox_events, sandboxes};

#[derive(Debug, Clone, Queryable, QueryableByName, Selectable, Insertable)]
#[diesel(table_name = sandboxes)]
#[diesel(check_for_backend(super::Backend))]
pub(crate) struct SandboxRow {
    pub id: Id,
    pub tenant: String,
    pub name: String,
    pub template: String,
    pub status: String,
    pub status_reason: Option<String>,
    pub container_id: Option<String>,
    pub image: String,
    pub workspace_mount: String,
    pub devcontainer_config: Json,
    pub env_vars: Json,
    pub last_activity: Time,
    pub created_at: Time,
    pub expires_at: Time,
    pub deleted_at: Option<Time>,
    pub creator_instance: Option<Id>,
    pub lease_expires_at: Option<Time>,
    pub remote_env: Option<Json>,
    pub remote_user: Option<String>,
}

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = port_mappings)]
#[diesel(check_for_backend(super::Backend))]
pub(crate) struct PortMappingRow {
    pub id: Id,
    pub sandbox_id: Id,
    pub host_port: i32,
    pub container_port: i32,
}

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = sandbox_events)]
#[diesel(check_for_backend(super::Backend))]
pub(crate) struct EventRow {
    pub sandbox_id: Id,
    pub action: String,
    pub details: Json,
    pub created_at: Time,
}

#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = sandbox_events)]
pub(crate) struct NewEventRow {
    pub sandbox_id: Id,
    pub action: String,
    pub details: Json,
    pub created_at: Time,
}

/// A sandbox id as stored.
pub(crate) fn id_of(id: SandboxId) -> Id {
    codec::id(id.as_uuid())
}

fn stored<T>(what: &str, result: Result<T, Error>) -> Result<T, Error> {
    result.map_err(|e| Error::internal(format!("stored {what} is invalid: {e}")))
}

impl SandboxRow {
    pub(crate) fn from_domain(sandbox: &Sandbox) -> Result<Self, Error> {
        Ok(Self {
            id: id_of(sandbox.id),
            tenant: sandbox.tenant.as_str().to_owned(),
            name: sandbox.name.as_str().to_owned(),
            template: sandbox.template.as_str().to_owned(),
            status: sandbox.status().as_str().to_owned(),
            status_reason: sandbox.status_reason().map(str::to_owned),
            container_id: sandbox.container_id.clone(),
            image: sandbox.image.clone(),
            workspace_mount: sandbox.workspace_mount.clone(),
            devcontainer_config: codec::json(&sandbox.devcontainer_config)?,
            env_vars: codec::json(&sandbox.env_vars)?,
            last_activity: codec::time(sandbox.last_activity),
            created_at: codec::time(sandbox.created_at),
            expires_at: codec::time(sandbox.expires_at),
            deleted_at: sandbox.deleted_at().map(codec::time),
            creator_instance: sandbox
                .create_lease()
                .map(|lease| codec::id(lease.instance.as_uuid())),
            lease_expires_at: sandbox
                .create_lease()
                .map(|lease| codec::time(lease.expires_at)),
            remote_env: Some(codec::json(&sandbox.remote_env)?),
            remote_user: sandbox.remote_user.clone(),
        })
    }

    pub(crate) fn into_domain(self, ports: Vec<PortMappingRow>) -> Result<Sandbox, Error> {
        let env_vars: BTreeMap<String, String> = codec::from_json(self.env_vars, "env_vars")?;
        let devcontainer_config: serde_json::Value =
            codec::from_json(self.devcontainer_config, "devcontainer_config")?;
        let (remote_env, remote_user) = match self.remote_env {
            Some(env) => (codec::from_json(env, "remote_env")?, self.remote_user),
            None => legacy_remote_settings(&devcontainer_config),
        };
        let create_lease = match (self.creator_instance, self.lease_expires_at) {
            (Some(instance), Some(expires_at)) => Some(CreateLease {
                instance: InstanceId::from_uuid(codec::uuid(&instance)?),
                expires_at: codec::from_time(expires_at)?,
            }),
            _ => None,
        };
        let state = stored(
            "state",
            SandboxState::restore(
                stored("status", self.status.parse::<SandboxStatus>())?,
                self.status_reason,
                self.deleted_at.map(codec::from_time).transpose()?,
                create_lease,
            ),
        )?;
        Ok(Sandbox {
            id: SandboxId::from_uuid(codec::uuid(&self.id)?),
            tenant: stored("tenant", TenantId::new(&self.tenant))?,
            name: stored("name", SandboxName::new(&self.name))?,
            template: stored("template", TemplateName::new(&self.template))?,
            state,
            container_id: self.container_id,
            image: self.image,
            workspace_mount: self.workspace_mount,
            devcontainer_config,
            env_vars,
            remote_env,
            remote_user,
            port_mappings: ports
                .into_iter()
                .map(PortMappingRow::into_domain)
                .collect::<Result<_, _>>()?,
            last_activity: codec::from_time(self.last_activity)?,
            created_at: codec::from_time(self.created_at)?,
            expires_at: codec::from_time(self.expires_at)?,
        })
    }
}

/// COMPATIBILITY, for rows written before the `remote_env`/`remote_user` columns (by a monza
/// older than migration `2026-12-02-000000_add_remote_settings`, which may still run beside
/// this one during an upgrade): their `remoteEnv` and `remoteUser`, read from the stored
/// devcontainer.json the way that monza's `execute` read them (a `remoteEnv` that is not an
/// object of strings is no environment). Remove with a migration that backfills the
/// columns, once no older monza writes rows.
fn legacy_remote_settings(
    config: &serde_json::Value,
) -> (BTreeMap<String, String>, Option<String>) {
    let env = config
        .get("remoteEnv")
        .and_then(|v| serde_json::from_value(v.clone()).ok())
        .unwrap_or_default();
    let user = config
        .get("remoteUser")
        .and_then(|v| v.as_str())
        .map(str::to_owned);
    (env, user)
}

impl PortMappingRow {
    pub(crate) fn from_domain(sandbox: SandboxId, mapping: &PortMapping) -> Self {
        Self {
            id: codec::id(mapping.id),
            sandbox_id: id_of(sandbox),
            host_port: i32::from(mapping.host_port),
            container_port: i32::from(mapping.container_port),
        }
    }

    fn into_domain(self) -> Result<PortMapping, Error> {
        let port = |p: i32| {
            u16::try_from(p).map_err(|_| Error::internal(format!("stored port {p} out of range")))
        };
        Ok(PortMapping {
            id: codec::uuid(&self.id)?,
            sandbox_id: SandboxId::from_uuid(codec::uuid(&self.sandbox_id)?),
            host_port: port(self.host_port)?,
            container_port: port(self.container_port)?,
        })
    }
}

impl NewEventRow {
    pub(crate) fn new(id: SandboxId, event: &NewEvent, at: OffsetDateTime) -> Result<Self, Error> {
        Ok(Self {
            sandbox_id: id_of(id),
            action: event.action.as_str().to_owned(),
            details: codec::json(&event.details)?,
            created_at: codec::time(at),
        })
    }
}

impl EventRow {
    pub(crate) fn into_domain(self) -> Result<SandboxEvent, Error> {
        Ok(SandboxEvent {
            sandbox_id: SandboxId::from_uuid(codec::uuid(&self.sandbox_id)?),
            action: self.action.parse::<EventAction>()?,
            details: codec::from_json(self.details, "event details")?,
            created_at: codec::from_time(self.created_at)?,
        })
    }
}
