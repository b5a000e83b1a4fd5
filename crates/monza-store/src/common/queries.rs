//! The repository's queries, written once over diesel-async's `AsyncConnection` and compiled
//! once per backend (`super::Conn`, `super::schema`). Each runs inside the transaction (or,
//! for single statements, the autocommit) its caller in `repository` chose; what differs
//! between the backends is called from `super::specific`.

// `Id` is `Copy` on PostgreSQL (a `Uuid`), not on SQLite (text).
#![allow(clippy::clone_on_copy)]

use std::collections::HashMap;

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use monza_domain::lifecycle::{self, LifecycleEvent};
use monza_domain::{
    Admission, Error, ExpiryClaim, InstanceId, NewEvent, PortMapping, RunningUpdate, Sandbox,
    SandboxEvent, SandboxFilter, SandboxId, SandboxStatus, StatusChange, StatusFilter, TenantId,
};
use time::OffsetDateTime;

use super::codec::{self, Id};
use super::rows::{EventRow, NewEventRow, PortMappingRow, SandboxRow, id_of};
use super::schema::{port_mappings, sandbox_events, sandboxes};
use super::{Conn, IN_CHUNK, specific};
use crate::error::{Tx, TxError, unique_conflict};

pub(crate) fn statuses(list: &[SandboxStatus]) -> Vec<&'static str> {
    list.iter().map(|s| s.as_str()).collect()
}

/// The statuses that end a sandbox's life, as the domain says.
fn terminal() -> Vec<&'static str> {
    SandboxStatus::ALL
        .into_iter()
        .filter(|s| s.is_terminal())
        .map(SandboxStatus::as_str)
        .collect()
}

/// The row one sandbox's `UPDATE … RETURNING` wrote; when it matched none, returns the
/// refusal of `$event` (see [`refusal`]).
macro_rules! updated_or_refused {
    ($conn:ident, $id:expr, $event:expr, $statement:expr) => {
        match $statement
            .get_result::<SandboxRow>($conn)
            .await
            .optional()?
        {
            Some(row) => row,
            None => return Err(refusal($conn, $id, $event).await),
        }
    };
}

fn not_found(id: SandboxId) -> TxError {
    Error::not_found(format!("sandbox {id} not found")).into()
}

async fn ports_of(conn: &mut Conn, ids: &[Id]) -> Tx<HashMap<Id, Vec<PortMappingRow>>> {
    let mut by_sandbox: HashMap<Id, Vec<PortMappingRow>> = HashMap::new();
    for chunk in ids.chunks(IN_CHUNK) {
        let rows: Vec<PortMappingRow> = port_mappings::table
            .filter(port_mappings::sandbox_id.eq_any(chunk))
            .order((port_mappings::sandbox_id, port_mappings::container_port))
            .select(PortMappingRow::as_select())
            .load(conn)
            .await?;
        for row in rows {
            by_sandbox
                .entry(row.sandbox_id.clone())
                .or_default()
                .push(row);
        }
    }
    Ok(by_sandbox)
}

pub(crate) async fn with_ports(conn: &mut Conn, rows: Vec<SandboxRow>) -> Tx<Vec<Sandbox>> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<Id> = rows.iter().map(|r| r.id.clone()).collect();
    let mut ports = ports_of(conn, &ids).await?;
    rows.into_iter()
        .map(|row| {
            let mine = ports.remove(&row.id).unwrap_or_default();
            row.into_domain(mine).map_err(TxError::from)
        })
        .collect()
}

async fn one_with_ports(conn: &mut Conn, row: SandboxRow) -> Tx<Sandbox> {
    let ports: Vec<PortMappingRow> = port_mappings::table
        .filter(port_mappings::sandbox_id.eq(row.id.clone()))
        .order(port_mappings::container_port)
        .select(PortMappingRow::as_select())
        .load(conn)
        .await?;
    Ok(row.into_domain(ports)?)
}

/// One sandbox and its ports in one statement (one snapshot).
async fn find(conn: &mut Conn, id: SandboxId) -> Tx<Option<Sandbox>> {
    let rows: Vec<(SandboxRow, Option<PortMappingRow>)> = sandboxes::table
        .left_join(port_mappings::table)
        .filter(sandboxes::id.eq(id_of(id)))
        .order(port_mappings::container_port)
        .select((
            SandboxRow::as_select(),
            Option::<PortMappingRow>::as_select(),
        ))
        .load(conn)
        .await?;
    let mut rows = rows.into_iter();
    let Some((row, first)) = rows.next() else {
        return Ok(None);
    };
    let ports: Vec<PortMappingRow> = first
        .into_iter()
        .chain(rows.filter_map(|(_, p)| p))
        .collect();
    Ok(Some(row.into_domain(ports)?))
}

async fn exists(conn: &mut Conn, id: SandboxId) -> Tx<bool> {
    Ok(
        diesel::select(diesel::dsl::exists(sandboxes::table.find(id_of(id))))
            .get_result(conn)
            .await?,
    )
}

async fn append(conn: &mut Conn, id: SandboxId, event: &NewEvent, at: OffsetDateTime) -> Tx<()> {
    diesel::insert_into(sandbox_events::table)
        .values(NewEventRow::new(id, event, at)?)
        .execute(conn)
        .await?;
    Ok(())
}

/// After a conditional update matched nothing: not-found, or the conflict the lifecycle
/// names for the row as it is now (or a race, if it now allows the event).
async fn refusal(conn: &mut Conn, id: SandboxId, event: LifecycleEvent) -> TxError {
    match find(conn, id).await {
        Ok(None) => not_found(id),
        Ok(Some(current)) => match lifecycle::check(&current, event) {
            Err(conflict) => conflict.into(),
            Ok(_) => Error::conflict(format!("sandbox {id} changed concurrently; retry")).into(),
        },
        Err(e) => e,
    }
}

/// The assignments that end a create's lease: every status change out of `creating`.
fn lease_ended() -> (
    diesel::dsl::Eq<sandboxes::creator_instance, Option<Id>>,
    diesel::dsl::Eq<sandboxes::lease_expires_at, Option<codec::Time>>,
) {
    (
        sandboxes::creator_instance.eq(None::<Id>),
        sandboxes::lease_expires_at.eq(None::<codec::Time>),
    )
}

/// Records `record` at `at` and reads the changed sandbox back with its ports.
async fn recorded(
    conn: &mut Conn,
    id: SandboxId,
    row: SandboxRow,
    record: &NewEvent,
    at: OffsetDateTime,
) -> Tx<Sandbox> {
    append(conn, id, record, at).await?;
    one_with_ports(conn, row).await
}

/// Inside the caller's transaction; `specific::lock_tenant` makes the count and the insert
/// one step for every connection, process and replica.
pub(crate) async fn insert(
    conn: &mut Conn,
    sandbox: &Sandbox,
    max_live: Option<u64>,
) -> Tx<Admission> {
    let row = SandboxRow::from_domain(sandbox)?;
    if let Some(limit) = max_live {
        specific::lock_tenant(conn, &sandbox.tenant).await?;
        let live = count_live(conn, &sandbox.tenant).await?;
        if live >= limit {
            return Ok(Admission::OverLimit { live, limit });
        }
    }
    let id = sandbox.id;
    diesel::insert_into(sandboxes::table)
        .values(&row)
        .execute(conn)
        .await
        .map_err(unique_conflict(format!("sandbox {id} already exists")))?;
    insert_ports(conn, id, &sandbox.port_mappings).await?;
    append(conn, id, &NewEvent::created(sandbox), sandbox.created_at).await?;
    Ok(Admission::Inserted)
}

/// Writes a sandbox's port mappings; a container port mapped twice (or a mapping id
/// reused) is a conflict.
async fn insert_ports(conn: &mut Conn, id: SandboxId, ports: &[PortMapping]) -> Tx<()> {
    let rows: Vec<PortMappingRow> = ports
        .iter()
        .map(|m| PortMappingRow::from_domain(id, m))
        .collect();
    insert_all!(conn, port_mappings::table, &rows).map_err(unique_conflict(format!(
        "sandbox {id}: a port mapping is duplicated or already in use"
    )))?;
    Ok(())
}

pub(crate) async fn get(conn: &mut Conn, id: SandboxId) -> Tx<Sandbox> {
    find(conn, id).await?.ok_or_else(|| not_found(id))
}

pub(crate) async fn list(conn: &mut Conn, filter: &SandboxFilter) -> Tx<Vec<Sandbox>> {
    let mut query = sandboxes::table
        .select(SandboxRow::as_select())
        .into_boxed();
    if let Some(tenant) = &filter.tenant {
        query = query.filter(sandboxes::tenant.eq(tenant.as_str().to_owned()));
    }
    query = match filter.status {
        StatusFilter::Live => query.filter(sandboxes::status.ne_all(terminal())),
        StatusFilter::Only(status) => query.filter(sandboxes::status.eq(status.as_str())),
        StatusFilter::All => query,
    };
    query = query.order((sandboxes::created_at.desc(), sandboxes::id.desc()));
    if let Some(limit) = filter.limit {
        query = query.limit(i64::from(limit));
    }
    let rows = query.load(conn).await?;
    with_ports(conn, rows).await
}

async fn count_live(conn: &mut Conn, tenant: &TenantId) -> Tx<u64> {
    let count: i64 = sandboxes::table
        .filter(sandboxes::tenant.eq(tenant.as_str()))
        .filter(sandboxes::status.ne_all(terminal()))
        .count()
        .get_result(conn)
        .await?;
    Ok(u64::try_from(count).unwrap_or(0))
}

/// Replaces a sandbox's port mappings with `ports` (inside the caller's transaction).
async fn set_ports(conn: &mut Conn, id: SandboxId, ports: &[PortMapping]) -> Tx<()> {
    diesel::delete(port_mappings::table.filter(port_mappings::sandbox_id.eq(id_of(id))))
        .execute(conn)
        .await?;
    insert_ports(conn, id, ports).await
}

pub(crate) async fn replace_port_mappings(
    conn: &mut Conn,
    id: SandboxId,
    ports: &[PortMapping],
) -> Tx<bool> {
    // The status is read under a lock that keeps a concurrent transition (a delete, the
    // reaper) out until commit.
    let status = specific::status_for_update(conn, id).await?;
    if status.as_deref() != Some(SandboxStatus::Running.as_str()) {
        return Ok(false);
    }
    set_ports(conn, id, ports).await?;
    Ok(true)
}

pub(crate) async fn mark_running(
    conn: &mut Conn,
    id: SandboxId,
    update: &RunningUpdate,
) -> Tx<Sandbox> {
    let event = LifecycleEvent::Start;
    let statement = diesel::update(sandboxes::table.find(id_of(id)))
        .filter(sandboxes::status.eq_any(statuses(&lifecycle::allowed_from(event))))
        .set((
            sandboxes::status.eq(lifecycle::target(event).as_str()),
            sandboxes::container_id.eq(&update.container_id),
            sandboxes::image.eq(&update.image),
            sandboxes::last_activity.eq(codec::time(update.at)),
            sandboxes::expires_at.eq(codec::time(update.expires_at)),
            lease_ended(),
        ))
        .returning(SandboxRow::as_returning());
    let row = updated_or_refused!(conn, id, event, statement);
    set_ports(conn, id, &update.port_mappings).await?;
    recorded(conn, id, row, &update.record, update.at).await
}

pub(crate) async fn transition(
    conn: &mut Conn,
    id: SandboxId,
    change: &StatusChange,
) -> Tx<Sandbox> {
    let event = change.event;
    let to = lifecycle::target(event);
    let allowed = statuses(&lifecycle::allowed_from(event));
    // `deleted_at` is set by a terminal status and empty while the sandbox lives.
    let deleted_at = to.is_terminal().then(|| codec::time(change.at));
    let statement = diesel::update(sandboxes::table.find(id_of(id)))
        .filter(sandboxes::status.eq_any(allowed))
        .set((
            sandboxes::status.eq(to.as_str()),
            sandboxes::status_reason.eq(&change.reason),
            sandboxes::deleted_at.eq(deleted_at),
            lease_ended(),
        ))
        .returning(SandboxRow::as_returning());
    let row = updated_or_refused!(conn, id, event, statement);
    recorded(conn, id, row, &change.record, change.at).await
}

pub(crate) async fn renew_leases(
    conn: &mut Conn,
    instance: InstanceId,
    ids: &[SandboxId],
    expires_at: OffsetDateTime,
) -> Tx<u64> {
    let instance = codec::id(instance.as_uuid());
    let mut renewed = 0;
    for chunk in ids.chunks(IN_CHUNK) {
        let chunk: Vec<Id> = chunk.iter().copied().map(id_of).collect();
        renewed += diesel::update(sandboxes::table)
            .filter(sandboxes::id.eq_any(chunk))
            .filter(sandboxes::status.eq(SandboxStatus::Creating.as_str()))
            .filter(sandboxes::creator_instance.eq(&instance))
            .set(sandboxes::lease_expires_at.eq(Some(codec::time(expires_at))))
            .execute(conn)
            .await?;
    }
    Ok(u64::try_from(renewed).unwrap_or(u64::MAX))
}

pub(crate) async fn fail_lapsed_create(
    conn: &mut Conn,
    id: SandboxId,
    now: OffsetDateTime,
    change: &StatusChange,
) -> Tx<Option<Sandbox>> {
    let to = lifecycle::target(change.event);
    let allowed = statuses(&lifecycle::allowed_from(change.event));
    // One conditional statement: the lease is checked on the row as the UPDATE writes it
    // (PostgreSQL re-reads a row changed meanwhile, SQLite holds its write lock), so a
    // renewed lease or a finished create is never settled.
    let settled: Option<SandboxRow> = diesel::update(sandboxes::table.find(id_of(id)))
        .filter(sandboxes::status.eq_any(allowed))
        .filter(sandboxes::status.eq(SandboxStatus::Creating.as_str()))
        .filter(sandboxes::lease_expires_at.le(codec::time(now)))
        .set((
            sandboxes::status.eq(to.as_str()),
            sandboxes::status_reason.eq(&change.reason),
            lease_ended(),
        ))
        .returning(SandboxRow::as_returning())
        .get_result(conn)
        .await
        .optional()?;
    match settled {
        Some(row) => recorded(conn, id, row, &change.record, change.at)
            .await
            .map(Some),
        None => Ok(None),
    }
}

pub(crate) async fn record_activity(
    conn: &mut Conn,
    id: SandboxId,
    at: OffsetDateTime,
    expires_at: OffsetDateTime,
    record: Option<&NewEvent>,
) -> Tx<Sandbox> {
    let event = LifecycleEvent::Activity;
    let statement = diesel::update(sandboxes::table.find(id_of(id)))
        .filter(sandboxes::status.eq_any(statuses(&lifecycle::allowed_from(event))))
        .set((
            sandboxes::last_activity.eq(codec::time(at)),
            sandboxes::expires_at.eq(codec::time(expires_at)),
        ))
        .returning(SandboxRow::as_returning());
    let row = updated_or_refused!(conn, id, event, statement);
    match record {
        Some(record) => recorded(conn, id, row, record, at).await,
        None => one_with_ports(conn, row).await,
    }
}

/// Claims (`specific::claim_expired`, the backend's own statement of the domain's rule)
/// and records the claim's event for each claimed sandbox, inside the caller's
/// transaction.
pub(crate) async fn claim_expired(conn: &mut Conn, claim: &ExpiryClaim) -> Tx<Vec<Sandbox>> {
    if claim.limit == 0 {
        return Ok(Vec::new());
    }
    let mut rows = specific::claim_expired(conn, claim).await?;
    rows.sort_by(|a, b| {
        a.expires_at
            .cmp(&b.expires_at)
            .then_with(|| a.id.cmp(&b.id))
    });
    let claimed = with_ports(conn, rows).await?;
    let events = claimed
        .iter()
        .map(|sandbox| NewEventRow::new(sandbox.id, &claim.record(sandbox), claim.now))
        .collect::<Result<Vec<_>, _>>()?;
    insert_all!(conn, sandbox_events::table, &events)?;
    Ok(claimed)
}

/// An event for a known sandbox; not-found (decided by a check, the same way on every
/// backend) for an unknown one.
pub(crate) async fn append_event(
    conn: &mut Conn,
    id: SandboxId,
    event: &NewEvent,
    at: OffsetDateTime,
) -> Tx<()> {
    if !exists(conn, id).await? {
        return Err(not_found(id));
    }
    append(conn, id, event, at).await
}

pub(crate) async fn events(conn: &mut Conn, id: SandboxId) -> Tx<Vec<SandboxEvent>> {
    if !exists(conn, id).await? {
        return Err(not_found(id));
    }
    let rows: Vec<EventRow> = sandbox_events::table
        .filter(sandbox_events::sandbox_id.eq(id_of(id)))
        .order(sandbox_events::id)
        .select(EventRow::as_select())
        .load(conn)
        .await?;
    rows.into_iter()
        .map(|row| row.into_domain().map_err(TxError::from))
        .collect()
}

pub(crate) async fn ping(conn: &mut Conn) -> Tx<()> {
    diesel::sql_query("SELECT 1").execute(conn).await?;
    Ok(())
}
