//! Row structs and their conversions to and from the domain types (private to the crate).
//!
//! Timestamps are `timestamptz` (microseconds): finer precision is truncated before writing,
//! the same way the SQLite adapter does.

use std::collections::BTreeMap;

use diesel::prelude::*;
use monza_domain::{
    CreateLease, Error, EventAction, InstanceId, NewEvent, PortMapping, Sandbox, SandboxEvent,
    SandboxId, SandboxName, SandboxStatus, TemplateName, TenantId,
};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::schema::{port_mappings, sandbox_events, sandboxes};

#[derive(Debug, Clone, Queryable, QueryableByName, Selectable, Insertable)]
#[diesel(table_name = sandboxes)]
#[diesel(check_for_backend(diesel::pg::Pg))]
pub(crate) struct SandboxRow {
    pub id: Uuid,
    pub tenant: String,
    pub name: String,
    pub template: String,
    pub status: String,
    pub status_reason: Option<String>,
    pub container_id: Option<String>,
    pub image: String,
    pub workspace_mount: String,
    pub devcontainer_config: serde_json::Value,
    pub env_vars: serde_json::Value,
    pub last_activity: OffsetDateTime,
    pub created_at: OffsetDateTime,
    pub expires_at: OffsetDateTime,
    pub deleted_at: Option<OffsetDateTime>,
    pub creator_instance: Option<Uuid>,
    pub lease_expires_at: Option<OffsetDateTime>,
}

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = port_mappings)]
#[diesel(check_for_backend(diesel::pg::Pg))]
pub(crate) struct PortMappingRow {
    pub id: Uuid,
    pub sandbox_id: Uuid,
    pub host_port: i32,
    pub container_port: i32,
}

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = sandbox_events)]
#[diesel(check_for_backend(diesel::pg::Pg))]
pub(crate) struct EventRow {
    pub sandbox_id: Uuid,
    pub action: String,
    pub details: serde_json::Value,
    pub created_at: OffsetDateTime,
}

#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = sandbox_events)]
pub(crate) struct NewEventRow {
    pub sandbox_id: Uuid,
    pub action: String,
    pub details: serde_json::Value,
    pub created_at: OffsetDateTime,
}

/// `at` in UTC, truncated to whole microseconds (what `timestamptz` keeps).
pub(crate) fn micros(at: OffsetDateTime) -> OffsetDateTime {
    let at = at.to_offset(time::UtcOffset::UTC);
    let nanos = at.nanosecond();
    at.replace_nanosecond(nanos - nanos % 1_000).unwrap_or(at)
}

fn stored<T>(what: &str, result: Result<T, Error>) -> Result<T, Error> {
    result.map_err(|e| Error::internal(format!("stored {what} is invalid: {e}")))
}

impl SandboxRow {
    pub(crate) fn from_domain(sandbox: &Sandbox) -> Result<Self, Error> {
        Ok(Self {
            id: sandbox.id.as_uuid(),
            tenant: sandbox.tenant.as_str().to_owned(),
            name: sandbox.name.as_str().to_owned(),
            template: sandbox.template.as_str().to_owned(),
            status: sandbox.status.as_str().to_owned(),
            status_reason: sandbox.status_reason.clone(),
            container_id: sandbox.container_id.clone(),
            image: sandbox.image.clone(),
            workspace_mount: sandbox.workspace_mount.clone(),
            devcontainer_config: sandbox.devcontainer_config.clone(),
            env_vars: serde_json::to_value(&sandbox.env_vars)
                .map_err(|e| Error::internal(format!("encoding env_vars: {e}")))?,
            last_activity: micros(sandbox.last_activity),
            created_at: micros(sandbox.created_at),
            expires_at: micros(sandbox.expires_at),
            deleted_at: sandbox.deleted_at.map(micros),
            creator_instance: sandbox.create_lease.map(|lease| lease.instance.as_uuid()),
            lease_expires_at: sandbox.create_lease.map(|lease| micros(lease.expires_at)),
        })
    }

    pub(crate) fn into_domain(self, ports: Vec<PortMappingRow>) -> Result<Sandbox, Error> {
        let env_vars: BTreeMap<String, String> = serde_json::from_value(self.env_vars)
            .map_err(|e| Error::internal(format!("stored env_vars: {e}")))?;
        Ok(Sandbox {
            id: SandboxId::from_uuid(self.id),
            tenant: stored("tenant", TenantId::new(&self.tenant))?,
            name: stored("name", SandboxName::new(&self.name))?,
            template: stored("template", TemplateName::new(&self.template))?,
            status: stored("status", self.status.parse::<SandboxStatus>())?,
            status_reason: self.status_reason,
            container_id: self.container_id,
            image: self.image,
            workspace_mount: self.workspace_mount,
            devcontainer_config: self.devcontainer_config,
            env_vars,
            port_mappings: ports
                .into_iter()
                .map(PortMappingRow::into_domain)
                .collect::<Result<_, _>>()?,
            last_activity: self.last_activity,
            created_at: self.created_at,
            expires_at: self.expires_at,
            deleted_at: self.deleted_at,
            create_lease: match (self.creator_instance, self.lease_expires_at) {
                (Some(instance), Some(expires_at)) => Some(CreateLease {
                    instance: InstanceId::from_uuid(instance),
                    expires_at,
                }),
                _ => None,
            },
        })
    }
}

impl PortMappingRow {
    pub(crate) fn from_domain(sandbox: SandboxId, mapping: &PortMapping) -> Self {
        Self {
            id: mapping.id,
            sandbox_id: sandbox.as_uuid(),
            host_port: i32::from(mapping.host_port),
            container_port: i32::from(mapping.container_port),
        }
    }

    fn into_domain(self) -> Result<PortMapping, Error> {
        let port = |p: i32| {
            u16::try_from(p).map_err(|_| Error::internal(format!("stored port {p} out of range")))
        };
        Ok(PortMapping {
            id: self.id,
            sandbox_id: SandboxId::from_uuid(self.sandbox_id),
            host_port: port(self.host_port)?,
            container_port: port(self.container_port)?,
        })
    }
}

impl NewEventRow {
    pub(crate) fn new(id: SandboxId, event: &NewEvent, at: OffsetDateTime) -> Self {
        Self {
            sandbox_id: id.as_uuid(),
            action: event.action.as_str().to_owned(),
            details: event.details.clone(),
            created_at: micros(at),
        }
    }
}

impl EventRow {
    pub(crate) fn into_domain(self) -> Result<SandboxEvent, Error> {
        Ok(SandboxEvent {
            sandbox_id: SandboxId::from_uuid(self.sandbox_id),
            action: self.action.parse::<EventAction>()?,
            details: self.details,
            created_at: self.created_at,
        })
    }
}

impl SandboxRow {
    pub(crate) fn expires_at_rfc3339(&self) -> String {
        self.expires_at
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_else(|_| self.expires_at.unix_timestamp().to_string())
    }
}
