//! The [`SandboxRepository`] port, written once over the backend's three ways to run
//! queries: `in_transaction!` (atomic writes), `in_statement!` (a single-statement write:
//! autocommitted on PostgreSQL, in the writer's transaction on SQLite) and `in_read!`.

use async_trait::async_trait;
use monza_domain::{
    Admission, ExpiryClaim, InstanceId, NewEvent, PortMapping, Result, RunningUpdate, Sandbox,
    SandboxEvent, SandboxFilter, SandboxId, SandboxRepository, StatusChange, TenantId, Touch,
};
use time::OffsetDateTime;

use super::{Store, queries, specific};

#[async_trait]
impl SandboxRepository for Store {
    #[tracing::instrument(skip_all, fields(sandbox_id = %sandbox.id), err(level = "debug"))]
    async fn insert(&self, sandbox: &Sandbox, max_live: Option<u64>) -> Result<Admission> {
        in_transaction!(self, [sandbox, max_live], |c| queries::insert(
            c, &sandbox, max_live
        ))
    }

    #[tracing::instrument(skip_all, fields(sandbox_id = %id), err(level = "debug"))]
    async fn get(&self, id: SandboxId) -> Result<Sandbox> {
        in_point_read!(self, [id], |c| queries::get(c, id))
    }

    #[tracing::instrument(skip_all, err(level = "debug"))]
    async fn list(&self, filter: &SandboxFilter) -> Result<Vec<Sandbox>> {
        in_read!(self, [filter], |c| queries::list(c, &filter))
    }

    #[tracing::instrument(skip_all, fields(sandbox_id = %id), err(level = "debug"))]
    async fn mark_running(&self, id: SandboxId, update: &RunningUpdate) -> Result<Sandbox> {
        in_transaction!(self, [id, update], |c| queries::mark_running(
            c, id, &update
        ))
    }

    #[tracing::instrument(skip_all, fields(sandbox_id = %id), err(level = "debug"))]
    async fn transition(&self, id: SandboxId, change: &StatusChange) -> Result<Sandbox> {
        in_transaction!(self, [id, change], |c| queries::transition(c, id, &change))
    }

    #[tracing::instrument(skip_all, fields(sandbox_id = %id), err(level = "debug"))]
    async fn record_activity(
        &self,
        id: SandboxId,
        at: OffsetDateTime,
        expires_at: OffsetDateTime,
        record: Option<NewEvent>,
    ) -> Result<Sandbox> {
        match &record {
            // A heartbeat's write is one statement (and the read of its ports): no
            // transaction needed on PostgreSQL.
            None => in_statement!(self, [id, at, expires_at], |c| queries::record_activity(
                c, id, at, expires_at, None
            )),
            Some(_) => in_transaction!(self, [id, at, expires_at, record], |c| {
                queries::record_activity(c, id, at, expires_at, record.as_ref())
            }),
        }
    }

    async fn touch(
        &self,
        id: SandboxId,
        tenant: Option<TenantId>,
        at: OffsetDateTime,
        expires_at: OffsetDateTime,
    ) -> Result<bool> {
        let touch = Touch {
            id,
            tenant,
            at,
            expires_at,
        };
        let changed: Vec<bool> = in_statement!(self, [touches = [touch]], |c| {
            specific::touch_many(c, &touches)
        })?;
        Ok(changed.iter().any(|touched| *touched))
    }

    #[tracing::instrument(skip_all, fields(touches = touches.len()), err)]
    async fn touch_many(&self, touches: &[Touch]) -> Result<Vec<bool>> {
        // One statement on PostgreSQL, one transaction on SQLite: one flush for the batch.
        in_statement!(self, [touches], |c| specific::touch_many(c, &touches))
    }

    #[tracing::instrument(skip_all, fields(sandbox_id = %id), err)]
    async fn replace_port_mappings(&self, id: SandboxId, ports: &[PortMapping]) -> Result<bool> {
        in_transaction!(self, [id, ports], |c| queries::replace_port_mappings(
            c, id, &ports
        ))
    }

    #[tracing::instrument(skip_all, err)]
    async fn claim_expired(&self, claim: &ExpiryClaim) -> Result<Vec<Sandbox>> {
        in_transaction!(self, [claim], |c| queries::claim_expired(c, &claim))
    }

    #[tracing::instrument(skip_all, fields(leases = ids.len()), err)]
    async fn renew_leases(
        &self,
        instance: InstanceId,
        ids: &[SandboxId],
        expires_at: OffsetDateTime,
    ) -> Result<u64> {
        in_statement!(
            self,
            [instance, ids, expires_at],
            |c| queries::renew_leases(c, instance, &ids, expires_at)
        )
    }

    #[tracing::instrument(skip_all, fields(sandbox_id = %id), err)]
    async fn fail_lapsed_create(
        &self,
        id: SandboxId,
        now: OffsetDateTime,
        change: &StatusChange,
    ) -> Result<Option<Sandbox>> {
        in_transaction!(self, [id, now, change], |c| queries::fail_lapsed_create(
            c, id, now, &change
        ))
    }

    #[tracing::instrument(skip_all, fields(sandbox_id = %id), err(level = "debug"))]
    async fn append_event(
        &self,
        id: SandboxId,
        event: &NewEvent,
        at: OffsetDateTime,
    ) -> Result<()> {
        in_transaction!(self, [id, event, at], |c| queries::append_event(
            c, id, &event, at
        ))
    }

    #[tracing::instrument(skip_all, fields(sandbox_id = %id), err(level = "debug"))]
    async fn events(&self, id: SandboxId) -> Result<Vec<SandboxEvent>> {
        in_read!(self, [id], |c| queries::events(c, id))
    }

    async fn ping(&self) -> Result<()> {
        in_read!(self, [], |c| queries::ping(c))
    }
}
