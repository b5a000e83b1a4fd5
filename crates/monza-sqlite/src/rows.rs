//! Row structs and their conversions to and from the domain types (private to the crate).
//!
//! Ids are lowercase hyphenated UUID text; timestamps are `i64` microseconds since the Unix
//! epoch in UTC (finer precision is truncated); JSON is text.

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
#[diesel(check_for_backend(diesel::sqlite::Sqlite))]
pub(crate) struct SandboxRow {
    pub id: String,
    pub tenant: String,
    pub name: String,
    pub template: String,
    pub status: String,
    pub status_reason: Option<String>,
    pub container_id: Option<String>,
    pub image: String,
    pub workspace_mount: String,
    pub devcontainer_config: String,
    pub env_vars: String,
    pub last_activity: i64,
    pub created_at: i64,
    pub expires_at: i64,
    pub deleted_at: Option<i64>,
    pub creator_instance: Option<String>,
    pub lease_expires_at: Option<i64>,
}

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = port_mappings)]
#[diesel(check_for_backend(diesel::sqlite::Sqlite))]
pub(crate) struct PortMappingRow {
    pub id: String,
    pub sandbox_id: String,
    pub host_port: i32,
    pub container_port: i32,
}

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = sandbox_events)]
#[diesel(check_for_backend(diesel::sqlite::Sqlite))]
pub(crate) struct EventRow {
    pub sandbox_id: String,
    pub action: String,
    pub details: String,
    pub created_at: i64,
}

#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = sandbox_events)]
pub(crate) struct NewEventRow {
    pub sandbox_id: String,
    pub action: String,
    pub details: String,
    pub created_at: i64,
}

/// `at` as stored: whole microseconds since the epoch, rounded towards the past.
pub(crate) fn to_micros(at: OffsetDateTime) -> i64 {
    let micros = at.unix_timestamp_nanos().div_euclid(1_000);
    i64::try_from(micros).unwrap_or(if micros < 0 { i64::MIN } else { i64::MAX })
}

pub(crate) fn from_micros(micros: i64) -> Result<OffsetDateTime, Error> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1_000)
        .map_err(|e| Error::internal(format!("stored timestamp {micros} out of range: {e}")))
}

pub(crate) fn id_text(id: SandboxId) -> String {
    id.as_uuid().hyphenated().to_string()
}

fn parse_uuid(text: &str) -> Result<Uuid, Error> {
    Uuid::parse_str(text).map_err(|e| Error::internal(format!("stored id {text:?}: {e}")))
}

fn to_json(value: &impl serde::Serialize) -> Result<String, Error> {
    serde_json::to_string(value).map_err(|e| Error::internal(format!("encoding JSON: {e}")))
}

fn from_json<T: serde::de::DeserializeOwned>(text: &str, what: &str) -> Result<T, Error> {
    serde_json::from_str(text).map_err(|e| Error::internal(format!("stored {what}: {e}")))
}

fn stored<T>(what: &str, result: Result<T, Error>) -> Result<T, Error> {
    result.map_err(|e| Error::internal(format!("stored {what} is invalid: {e}")))
}

impl SandboxRow {
    pub(crate) fn from_domain(sandbox: &Sandbox) -> Result<Self, Error> {
        Ok(Self {
            id: id_text(sandbox.id),
            tenant: sandbox.tenant.as_str().to_owned(),
            name: sandbox.name.as_str().to_owned(),
            template: sandbox.template.as_str().to_owned(),
            status: sandbox.status.as_str().to_owned(),
            status_reason: sandbox.status_reason.clone(),
            container_id: sandbox.container_id.clone(),
            image: sandbox.image.clone(),
            workspace_mount: sandbox.workspace_mount.clone(),
            devcontainer_config: to_json(&sandbox.devcontainer_config)?,
            env_vars: to_json(&sandbox.env_vars)?,
            last_activity: to_micros(sandbox.last_activity),
            created_at: to_micros(sandbox.created_at),
            expires_at: to_micros(sandbox.expires_at),
            deleted_at: sandbox.deleted_at.map(to_micros),
            creator_instance: sandbox
                .create_lease
                .map(|lease| lease.instance.as_uuid().hyphenated().to_string()),
            lease_expires_at: sandbox
                .create_lease
                .map(|lease| to_micros(lease.expires_at)),
        })
    }

    pub(crate) fn into_domain(self, ports: Vec<PortMappingRow>) -> Result<Sandbox, Error> {
        let id = SandboxId::from_uuid(parse_uuid(&self.id)?);
        let env_vars: BTreeMap<String, String> = from_json(&self.env_vars, "env_vars")?;
        Ok(Sandbox {
            id,
            tenant: stored("tenant", TenantId::new(&self.tenant))?,
            name: stored("name", SandboxName::new(&self.name))?,
            template: stored("template", TemplateName::new(&self.template))?,
            status: stored("status", self.status.parse::<SandboxStatus>())?,
            status_reason: self.status_reason,
            container_id: self.container_id,
            image: self.image,
            workspace_mount: self.workspace_mount,
            devcontainer_config: from_json(&self.devcontainer_config, "devcontainer_config")?,
            env_vars,
            port_mappings: ports
                .into_iter()
                .map(PortMappingRow::into_domain)
                .collect::<Result<_, _>>()?,
            last_activity: from_micros(self.last_activity)?,
            created_at: from_micros(self.created_at)?,
            expires_at: from_micros(self.expires_at)?,
            deleted_at: self.deleted_at.map(from_micros).transpose()?,
            create_lease: match (self.creator_instance, self.lease_expires_at) {
                (Some(instance), Some(expires_at)) => Some(CreateLease {
                    instance: InstanceId::from_uuid(parse_uuid(&instance)?),
                    expires_at: from_micros(expires_at)?,
                }),
                _ => None,
            },
        })
    }
}

impl PortMappingRow {
    pub(crate) fn from_domain(sandbox: SandboxId, mapping: &PortMapping) -> Self {
        Self {
            id: mapping.id.hyphenated().to_string(),
            sandbox_id: id_text(sandbox),
            host_port: i32::from(mapping.host_port),
            container_port: i32::from(mapping.container_port),
        }
    }

    fn into_domain(self) -> Result<PortMapping, Error> {
        let port = |p: i32| {
            u16::try_from(p).map_err(|_| Error::internal(format!("stored port {p} out of range")))
        };
        Ok(PortMapping {
            id: parse_uuid(&self.id)?,
            sandbox_id: SandboxId::from_uuid(parse_uuid(&self.sandbox_id)?),
            host_port: port(self.host_port)?,
            container_port: port(self.container_port)?,
        })
    }
}

impl NewEventRow {
    pub(crate) fn new(id: SandboxId, event: &NewEvent, at: OffsetDateTime) -> Result<Self, Error> {
        Ok(Self {
            sandbox_id: id_text(id),
            action: event.action.as_str().to_owned(),
            details: to_json(&event.details)?,
            created_at: to_micros(at),
        })
    }
}

impl EventRow {
    pub(crate) fn into_domain(self) -> Result<SandboxEvent, Error> {
        Ok(SandboxEvent {
            sandbox_id: SandboxId::from_uuid(parse_uuid(&self.sandbox_id)?),
            action: self.action.parse::<EventAction>()?,
            details: from_json(&self.details, "event details")?,
            created_at: from_micros(self.created_at)?,
        })
    }
}

impl SandboxRow {
    pub(crate) fn sandbox_id(&self) -> Result<SandboxId, Error> {
        parse_uuid(&self.id).map(SandboxId::from_uuid)
    }

    pub(crate) fn expires_at_rfc3339(&self) -> String {
        from_micros(self.expires_at)
            .ok()
            .and_then(|t| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
            .unwrap_or_else(|| self.expires_at.to_string())
    }
}
