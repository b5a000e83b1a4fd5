//! The repository's queries, as synchronous diesel code over one `SqliteConnection`. Each
//! function runs inside a transaction opened by the caller (`BEGIN IMMEDIATE` for writes).

use std::collections::HashMap;

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};
use monza_domain::lifecycle::{self, LifecycleEvent};
use monza_domain::{
    Admission, Error, EventAction, InstanceId, NewEvent, PortMapping, RunningUpdate, Sandbox,
    SandboxEvent, SandboxFilter, SandboxId, SandboxStatus, StatusChange, StatusFilter, TenantId,
};
use serde_json::json;
use time::OffsetDateTime;

use crate::error::{TxError, unique_conflict};
use crate::rows::{EventRow, NewEventRow, PortMappingRow, SandboxRow, id_text, to_micros};
use crate::schema::{port_mappings, sandbox_events, sandboxes};

type Tx<T> = Result<T, TxError>;

/// SQLite keeps at most this many bound parameters in one statement comfortably.
const IN_CHUNK: usize = 500;

const TERMINAL: [&str; 2] = ["expired", "deleted"];

fn statuses(list: &[SandboxStatus]) -> Vec<&'static str> {
    list.iter().map(|s| s.as_str()).collect()
}

fn not_found(id: SandboxId) -> TxError {
    Error::not_found(format!("sandbox {id} not found")).into()
}

fn ports_of(
    conn: &mut SqliteConnection,
    ids: &[String],
) -> Tx<HashMap<String, Vec<PortMappingRow>>> {
    let mut by_sandbox: HashMap<String, Vec<PortMappingRow>> = HashMap::new();
    for chunk in ids.chunks(IN_CHUNK) {
        let rows: Vec<PortMappingRow> = port_mappings::table
            .filter(port_mappings::sandbox_id.eq_any(chunk))
            .order((port_mappings::sandbox_id, port_mappings::container_port))
            .select(PortMappingRow::as_select())
            .load(conn)?;
        for row in rows {
            by_sandbox
                .entry(row.sandbox_id.clone())
                .or_default()
                .push(row);
        }
    }
    Ok(by_sandbox)
}

fn with_ports(conn: &mut SqliteConnection, rows: Vec<SandboxRow>) -> Tx<Vec<Sandbox>> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<String> = rows.iter().map(|r| r.id.clone()).collect();
    let mut ports = ports_of(conn, &ids)?;
    rows.into_iter()
        .map(|row| {
            let mine = ports.remove(&row.id).unwrap_or_default();
            row.into_domain(mine).map_err(TxError::from)
        })
        .collect()
}

fn one_with_ports(conn: &mut SqliteConnection, row: SandboxRow) -> Tx<Sandbox> {
    let ports: Vec<PortMappingRow> = port_mappings::table
        .filter(port_mappings::sandbox_id.eq(&row.id))
        .order(port_mappings::container_port)
        .select(PortMappingRow::as_select())
        .load(conn)?;
    Ok(row.into_domain(ports)?)
}

fn find(conn: &mut SqliteConnection, id: SandboxId) -> Tx<Option<SandboxRow>> {
    Ok(sandboxes::table
        .find(id_text(id))
        .select(SandboxRow::as_select())
        .first(conn)
        .optional()?)
}

fn exists(conn: &mut SqliteConnection, id: SandboxId) -> Tx<bool> {
    Ok(diesel::select(diesel::dsl::exists(sandboxes::table.find(id_text(id)))).get_result(conn)?)
}

fn append(
    conn: &mut SqliteConnection,
    id: SandboxId,
    event: &NewEvent,
    at: OffsetDateTime,
) -> Tx<()> {
    diesel::insert_into(sandbox_events::table)
        .values(NewEventRow::new(id, event, at)?)
        .execute(conn)?;
    Ok(())
}

/// After a conditional update matched nothing: not-found, or the conflict the lifecycle
/// names for the row as it is now.
fn refusal(conn: &mut SqliteConnection, id: SandboxId, event: LifecycleEvent) -> TxError {
    match find(conn, id) {
        Ok(None) => not_found(id),
        Ok(Some(row)) => match one_with_ports(conn, row) {
            Ok(current) => match lifecycle::check(&current, event) {
                Err(conflict) => conflict.into(),
                Ok(_) => {
                    Error::conflict(format!("sandbox {id} changed concurrently; retry")).into()
                }
            },
            Err(e) => e,
        },
        Err(e) => e,
    }
}

/// Inside the caller's `BEGIN IMMEDIATE` transaction, which holds SQLite's one write lock
/// (against every connection and process) from before the count until the commit: no other
/// insert can count the same live sandboxes.
pub(crate) fn insert(
    conn: &mut SqliteConnection,
    sandbox: &Sandbox,
    max_live: Option<u64>,
) -> Tx<Admission> {
    if let Some(limit) = max_live {
        let live = count_live(conn, &sandbox.tenant)?;
        if live >= limit {
            return Ok(Admission::OverLimit { live, limit });
        }
    }
    diesel::insert_into(sandboxes::table)
        .values(SandboxRow::from_domain(sandbox)?)
        .execute(conn)
        .map_err(unique_conflict(format!(
            "sandbox {} already exists",
            sandbox.id
        )))?;
    let ports: Vec<PortMappingRow> = sandbox
        .port_mappings
        .iter()
        .map(|m| PortMappingRow::from_domain(sandbox.id, m))
        .collect();
    if !ports.is_empty() {
        diesel::insert_into(port_mappings::table)
            .values(&ports)
            .execute(conn)?;
    }
    let created = NewEvent::new(
        EventAction::Created,
        json!({ "name": sandbox.name, "template": sandbox.template }),
    );
    append(conn, sandbox.id, &created, sandbox.created_at)?;
    Ok(Admission::Inserted)
}

pub(crate) fn get(conn: &mut SqliteConnection, id: SandboxId) -> Tx<Sandbox> {
    let row = find(conn, id)?.ok_or_else(|| not_found(id))?;
    one_with_ports(conn, row)
}

pub(crate) fn list(conn: &mut SqliteConnection, filter: &SandboxFilter) -> Tx<Vec<Sandbox>> {
    let mut query = sandboxes::table
        .select(SandboxRow::as_select())
        .into_boxed();
    if let Some(tenant) = &filter.tenant {
        query = query.filter(sandboxes::tenant.eq(tenant.as_str().to_owned()));
    }
    query = match filter.status {
        StatusFilter::Live => query.filter(sandboxes::status.ne_all(TERMINAL)),
        StatusFilter::Only(status) => query.filter(sandboxes::status.eq(status.as_str())),
        StatusFilter::All => query,
    };
    query = query.order((sandboxes::created_at.desc(), sandboxes::id.desc()));
    if let Some(limit) = filter.limit {
        query = query.limit(i64::from(limit));
    }
    let rows = query.load(conn)?;
    with_ports(conn, rows)
}

fn count_live(conn: &mut SqliteConnection, tenant: &TenantId) -> Tx<u64> {
    let count: i64 = sandboxes::table
        .filter(sandboxes::tenant.eq(tenant.as_str()))
        .filter(sandboxes::status.ne_all(TERMINAL))
        .count()
        .get_result(conn)?;
    Ok(u64::try_from(count).unwrap_or(0))
}

/// Replaces a sandbox's port mappings with `ports` (inside the caller's transaction).
fn set_ports(conn: &mut SqliteConnection, id: SandboxId, ports: &[PortMapping]) -> Tx<()> {
    diesel::delete(port_mappings::table.filter(port_mappings::sandbox_id.eq(id_text(id))))
        .execute(conn)?;
    let rows: Vec<PortMappingRow> = ports
        .iter()
        .map(|m| PortMappingRow::from_domain(id, m))
        .collect();
    if !rows.is_empty() {
        diesel::insert_into(port_mappings::table)
            .values(&rows)
            .execute(conn)
            .map_err(unique_conflict(format!(
                "sandbox {id}: a port mapping is duplicated or already in use"
            )))?;
    }
    Ok(())
}

pub(crate) fn replace_port_mappings(
    conn: &mut SqliteConnection,
    id: SandboxId,
    ports: &[PortMapping],
) -> Tx<bool> {
    // The writer's BEGIN IMMEDIATE transaction excludes every other write until commit.
    let status: Option<String> = sandboxes::table
        .find(id_text(id))
        .select(sandboxes::status)
        .first(conn)
        .optional()?;
    if status.as_deref() != Some(SandboxStatus::Running.as_str()) {
        return Ok(false);
    }
    set_ports(conn, id, ports)?;
    Ok(true)
}

pub(crate) fn mark_running(
    conn: &mut SqliteConnection,
    id: SandboxId,
    update: &RunningUpdate,
) -> Tx<Sandbox> {
    let event = LifecycleEvent::Start;
    let row: Option<SandboxRow> = diesel::update(sandboxes::table.find(id_text(id)))
        .filter(sandboxes::status.eq_any(statuses(&lifecycle::allowed_from(event))))
        .set((
            sandboxes::status.eq(lifecycle::target(event).as_str()),
            sandboxes::container_id.eq(&update.container_id),
            sandboxes::image.eq(&update.image),
            sandboxes::last_activity.eq(to_micros(update.at)),
            sandboxes::expires_at.eq(to_micros(update.expires_at)),
            sandboxes::creator_instance.eq(None::<String>),
            sandboxes::lease_expires_at.eq(None::<i64>),
        ))
        .returning(SandboxRow::as_returning())
        .get_result(conn)
        .optional()?;
    let Some(row) = row else {
        return Err(refusal(conn, id, event));
    };
    set_ports(conn, id, &update.port_mappings)?;
    let started = NewEvent::new(
        EventAction::Started,
        json!({ "container_id": update.container_id, "image": update.image }),
    );
    append(conn, id, &started, update.at)?;
    one_with_ports(conn, row)
}

pub(crate) fn transition(
    conn: &mut SqliteConnection,
    id: SandboxId,
    change: &StatusChange,
) -> Tx<Sandbox> {
    let event = change.event;
    let to = lifecycle::target(event);
    let allowed = statuses(&lifecycle::allowed_from(event));
    let target = sandboxes::table
        .find(id_text(id))
        .filter(sandboxes::status.eq_any(allowed));
    let updated = if to.is_terminal() {
        diesel::update(target)
            .set((
                sandboxes::status.eq(to.as_str()),
                sandboxes::status_reason.eq(&change.reason),
                sandboxes::deleted_at.eq(Some(to_micros(change.at))),
                sandboxes::creator_instance.eq(None::<String>),
                sandboxes::lease_expires_at.eq(None::<i64>),
            ))
            .returning(SandboxRow::as_returning())
            .get_result(conn)
            .optional()?
    } else {
        diesel::update(target)
            .set((
                sandboxes::status.eq(to.as_str()),
                sandboxes::status_reason.eq(&change.reason),
                sandboxes::creator_instance.eq(None::<String>),
                sandboxes::lease_expires_at.eq(None::<i64>),
            ))
            .returning(SandboxRow::as_returning())
            .get_result(conn)
            .optional()?
    };
    let Some(row) = updated else {
        return Err(refusal(conn, id, event));
    };
    append(conn, id, &change.record, change.at)?;
    one_with_ports(conn, row)
}

pub(crate) fn renew_leases(
    conn: &mut SqliteConnection,
    instance: InstanceId,
    ids: &[SandboxId],
    expires_at: OffsetDateTime,
) -> Tx<u64> {
    let instance = instance.as_uuid().hyphenated().to_string();
    let mut renewed = 0;
    for chunk in ids.chunks(IN_CHUNK) {
        let chunk: Vec<String> = chunk.iter().copied().map(id_text).collect();
        renewed += diesel::update(sandboxes::table)
            .filter(sandboxes::id.eq_any(chunk))
            .filter(sandboxes::status.eq(SandboxStatus::Creating.as_str()))
            .filter(sandboxes::creator_instance.eq(&instance))
            .set(sandboxes::lease_expires_at.eq(Some(to_micros(expires_at))))
            .execute(conn)?;
    }
    Ok(u64::try_from(renewed).unwrap_or(u64::MAX))
}

pub(crate) fn fail_lapsed_create(
    conn: &mut SqliteConnection,
    id: SandboxId,
    now: OffsetDateTime,
    change: &StatusChange,
) -> Tx<Option<Sandbox>> {
    let to = lifecycle::target(change.event);
    let allowed = statuses(&lifecycle::allowed_from(change.event));
    // One conditional statement in the writer's transaction: the lease is read and the row
    // written under SQLite's write lock, so a renewal cannot slip in between.
    let settled: Option<SandboxRow> = diesel::update(sandboxes::table.find(id_text(id)))
        .filter(sandboxes::status.eq_any(allowed))
        .filter(sandboxes::status.eq(SandboxStatus::Creating.as_str()))
        .filter(sandboxes::lease_expires_at.le(to_micros(now)))
        .set((
            sandboxes::status.eq(to.as_str()),
            sandboxes::status_reason.eq(&change.reason),
            sandboxes::creator_instance.eq(None::<String>),
            sandboxes::lease_expires_at.eq(None::<i64>),
        ))
        .returning(SandboxRow::as_returning())
        .get_result(conn)
        .optional()?;
    let Some(row) = settled else {
        return Ok(None);
    };
    append(conn, id, &change.record, change.at)?;
    one_with_ports(conn, row).map(Some)
}

/// The heartbeat's one statement; `true` if the row changed.
pub(crate) fn touch_if_owned(
    conn: &mut SqliteConnection,
    id: SandboxId,
    tenant: Option<&str>,
    at: OffsetDateTime,
    expires_at: OffsetDateTime,
) -> Tx<bool> {
    let update = diesel::update(sandboxes::table.find(id_text(id)))
        .filter(
            sandboxes::status.eq_any(statuses(&lifecycle::allowed_from(LifecycleEvent::Activity))),
        )
        .set((
            sandboxes::last_activity.eq(to_micros(at)),
            sandboxes::expires_at.eq(to_micros(expires_at)),
        ));
    let changed = match tenant {
        Some(tenant) => update.filter(sandboxes::tenant.eq(tenant)).execute(conn)?,
        None => update.execute(conn)?,
    };
    Ok(changed == 1)
}

pub(crate) fn record_activity(
    conn: &mut SqliteConnection,
    id: SandboxId,
    at: OffsetDateTime,
    expires_at: OffsetDateTime,
    record: Option<&NewEvent>,
) -> Tx<Sandbox> {
    let event = LifecycleEvent::Activity;
    let row: Option<SandboxRow> = diesel::update(sandboxes::table.find(id_text(id)))
        .filter(sandboxes::status.eq_any(statuses(&lifecycle::allowed_from(event))))
        .set((
            sandboxes::last_activity.eq(to_micros(at)),
            sandboxes::expires_at.eq(to_micros(expires_at)),
        ))
        .returning(SandboxRow::as_returning())
        .get_result(conn)
        .optional()?;
    let Some(row) = row else {
        return Err(refusal(conn, id, event));
    };
    if let Some(record) = record {
        append(conn, id, record, at)?;
    }
    one_with_ports(conn, row)
}

pub(crate) fn claim_expired(
    conn: &mut SqliteConnection,
    now: OffsetDateTime,
    limit: u32,
) -> Tx<Vec<Sandbox>> {
    if limit == 0 {
        return Ok(Vec::new());
    }
    let now_micros = to_micros(now);
    // One statement inside the caller's `BEGIN IMMEDIATE`: SQLite has a single writer, so
    // no other claimer (thread or process) can see these rows as running any more.
    let mut rows: Vec<SandboxRow> = diesel::sql_query(
        "UPDATE sandboxes \
         SET status = 'expired', deleted_at = ?1, status_reason = ?2 \
         WHERE id IN (SELECT id FROM sandboxes \
                      WHERE status = 'running' AND expires_at <= ?1 \
                      ORDER BY expires_at, id LIMIT ?3) \
         RETURNING *",
    )
    .bind::<BigInt, _>(now_micros)
    .bind::<Text, _>("expired: idle past its time to live")
    .bind::<BigInt, _>(i64::from(limit))
    .load(conn)?;
    rows.sort_by(|a, b| {
        a.expires_at
            .cmp(&b.expires_at)
            .then_with(|| a.id.cmp(&b.id))
    });
    let mut events = Vec::with_capacity(rows.len());
    for row in &rows {
        let details = json!({ "expires_at": row.expires_at_rfc3339() });
        let expired = NewEvent::new(EventAction::Expired, details);
        let sandbox_id = row.sandbox_id()?;
        events.push(NewEventRow::new(sandbox_id, &expired, now)?);
    }
    for chunk in events.chunks(IN_CHUNK / 4) {
        diesel::insert_into(sandbox_events::table)
            .values(chunk)
            .execute(conn)?;
    }
    with_ports(conn, rows)
}

pub(crate) fn append_event(
    conn: &mut SqliteConnection,
    id: SandboxId,
    event: &NewEvent,
    at: OffsetDateTime,
) -> Tx<()> {
    if !exists(conn, id)? {
        return Err(not_found(id));
    }
    append(conn, id, event, at)
}

pub(crate) fn events(conn: &mut SqliteConnection, id: SandboxId) -> Tx<Vec<SandboxEvent>> {
    if !exists(conn, id)? {
        return Err(not_found(id));
    }
    let rows: Vec<EventRow> = sandbox_events::table
        .filter(sandbox_events::sandbox_id.eq(id_text(id)))
        .order(sandbox_events::id)
        .select(EventRow::as_select())
        .load(conn)?;
    rows.into_iter()
        .map(|row| row.into_domain().map_err(TxError::from))
        .collect()
}

pub(crate) fn ping(conn: &mut SqliteConnection) -> Tx<()> {
    diesel::sql_query("SELECT 1").execute(conn)?;
    Ok(())
}
