//! The repository's queries over one `AsyncPgConnection`.

use std::collections::HashMap;

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Integer, Text, Timestamptz};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use monza_domain::lifecycle::{self, LifecycleEvent};
use monza_domain::{
    Admission, Error, EventAction, InstanceId, NewEvent, PortMapping, RunningUpdate, Sandbox,
    SandboxEvent, SandboxFilter, SandboxId, SandboxStatus, StatusChange, StatusFilter, TenantId,
    Touch,
};
use serde_json::json;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::error::{TxError, unique_conflict};
use crate::rows::{EventRow, NewEventRow, PortMappingRow, SandboxRow, micros};
use crate::schema::{port_mappings, sandbox_events, sandboxes};

type Conn = AsyncPgConnection;
type Tx<T> = Result<T, TxError>;

const TERMINAL: [&str; 2] = ["expired", "deleted"];

fn statuses(list: &[SandboxStatus]) -> Vec<&'static str> {
    list.iter().map(|s| s.as_str()).collect()
}

fn not_found(id: SandboxId) -> TxError {
    Error::not_found(format!("sandbox {id} not found")).into()
}

async fn ports_of(conn: &mut Conn, ids: Vec<Uuid>) -> Tx<HashMap<Uuid, Vec<PortMappingRow>>> {
    let rows: Vec<PortMappingRow> = port_mappings::table
        .filter(port_mappings::sandbox_id.eq_any(ids))
        .order((port_mappings::sandbox_id, port_mappings::container_port))
        .select(PortMappingRow::as_select())
        .load(conn)
        .await?;
    let mut by_sandbox: HashMap<Uuid, Vec<PortMappingRow>> = HashMap::new();
    for row in rows {
        by_sandbox.entry(row.sandbox_id).or_default().push(row);
    }
    Ok(by_sandbox)
}

async fn with_ports(conn: &mut Conn, rows: Vec<SandboxRow>) -> Tx<Vec<Sandbox>> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let mut ports = ports_of(conn, rows.iter().map(|r| r.id).collect()).await?;
    rows.into_iter()
        .map(|row| {
            let mine = ports.remove(&row.id).unwrap_or_default();
            row.into_domain(mine).map_err(TxError::from)
        })
        .collect()
}

async fn one_with_ports(conn: &mut Conn, row: SandboxRow) -> Tx<Sandbox> {
    let ports: Vec<PortMappingRow> = port_mappings::table
        .filter(port_mappings::sandbox_id.eq(row.id))
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
        .filter(sandboxes::id.eq(id.as_uuid()))
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
        diesel::select(diesel::dsl::exists(sandboxes::table.find(id.as_uuid())))
            .get_result(conn)
            .await?,
    )
}

async fn append(conn: &mut Conn, id: SandboxId, event: &NewEvent, at: OffsetDateTime) -> Tx<()> {
    diesel::insert_into(sandbox_events::table)
        .values(NewEventRow::new(id, event, at))
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

/// The first key of the transaction-level advisory locks that serialize one tenant's
/// limited inserts (the second is a hash of the tenant). The two-key space of advisory
/// locks is separate from the one-key space of the migration and bootstrap locks.
const TENANT_LOCK_CLASS: i32 = 0x6d6e_7a74;

pub(crate) async fn insert(
    conn: &mut Conn,
    sandbox: &Sandbox,
    max_live: Option<u64>,
) -> Tx<Admission> {
    let row = SandboxRow::from_domain(sandbox)?;
    let ports: Vec<PortMappingRow> = sandbox
        .port_mappings
        .iter()
        .map(|m| PortMappingRow::from_domain(sandbox.id, m))
        .collect();
    let created = NewEvent::new(
        EventAction::Created,
        json!({ "name": sandbox.name, "template": sandbox.template }),
    );
    let id = sandbox.id;
    let created_at = sandbox.created_at;
    let tenant = &sandbox.tenant;
    conn.transaction(async |conn| {
        if let Some(limit) = max_live {
            // Under READ COMMITTED two transactions could count the same live rows and both
            // insert: the tenant's lock, held until this transaction ends, makes the count and
            // the insert one step for every connection and replica. The count runs after the
            // lock is granted, so it sees what the previous holder committed.
            diesel::sql_query("SELECT pg_advisory_xact_lock($1, hashtext($2))")
                .bind::<Integer, _>(TENANT_LOCK_CLASS)
                .bind::<Text, _>(tenant.as_str())
                .execute(conn)
                .await?;
            let live = count_live(conn, tenant).await?;
            if live >= limit {
                return Ok(Admission::OverLimit { live, limit });
            }
        }
        diesel::insert_into(sandboxes::table)
            .values(&row)
            .execute(conn)
            .await
            .map_err(unique_conflict(format!("sandbox {id} already exists")))?;
        if !ports.is_empty() {
            diesel::insert_into(port_mappings::table)
                .values(&ports)
                .execute(conn)
                .await
                .map_err(unique_conflict(format!(
                    "sandbox {id}: a container port is mapped twice"
                )))?;
        }
        append(conn, id, &created, created_at).await?;
        Ok(Admission::Inserted)
    })
    .await
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
        StatusFilter::Live => query.filter(sandboxes::status.ne_all(TERMINAL)),
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
        .filter(sandboxes::status.ne_all(TERMINAL))
        .count()
        .get_result(conn)
        .await?;
    Ok(u64::try_from(count).unwrap_or(0))
}

/// Replaces a sandbox's port mappings with `ports` (inside the caller's transaction).
async fn set_ports(conn: &mut Conn, id: SandboxId, ports: &[PortMappingRow]) -> Tx<()> {
    diesel::delete(port_mappings::table.filter(port_mappings::sandbox_id.eq(id.as_uuid())))
        .execute(conn)
        .await?;
    if !ports.is_empty() {
        diesel::insert_into(port_mappings::table)
            .values(ports)
            .execute(conn)
            .await
            .map_err(unique_conflict(format!(
                "sandbox {id}: a port mapping is duplicated or already in use"
            )))?;
    }
    Ok(())
}

pub(crate) async fn replace_port_mappings(
    conn: &mut Conn,
    id: SandboxId,
    ports: &[PortMapping],
) -> Tx<bool> {
    let rows: Vec<PortMappingRow> = ports
        .iter()
        .map(|m| PortMappingRow::from_domain(id, m))
        .collect();
    conn.transaction(async |conn| {
        // The row lock keeps a concurrent transition (a delete, the reaper) out until commit.
        let status: Option<String> = sandboxes::table
            .find(id.as_uuid())
            .select(sandboxes::status)
            .for_update()
            .first(conn)
            .await
            .optional()?;
        if status.as_deref() != Some(SandboxStatus::Running.as_str()) {
            return Ok(false);
        }
        set_ports(conn, id, &rows).await?;
        Ok(true)
    })
    .await
}

pub(crate) async fn mark_running(
    conn: &mut Conn,
    id: SandboxId,
    update: &RunningUpdate,
) -> Tx<Sandbox> {
    let event = LifecycleEvent::Start;
    let ports: Vec<PortMappingRow> = update
        .port_mappings
        .iter()
        .map(|m| PortMappingRow::from_domain(id, m))
        .collect();
    let started = NewEvent::new(
        EventAction::Started,
        json!({ "container_id": update.container_id, "image": update.image }),
    );
    conn.transaction(async |conn| {
        let row: Option<SandboxRow> = diesel::update(sandboxes::table.find(id.as_uuid()))
            .filter(sandboxes::status.eq_any(statuses(&lifecycle::allowed_from(event))))
            .set((
                sandboxes::status.eq(lifecycle::target(event).as_str()),
                sandboxes::container_id.eq(&update.container_id),
                sandboxes::image.eq(&update.image),
                sandboxes::last_activity.eq(micros(update.at)),
                sandboxes::expires_at.eq(micros(update.expires_at)),
                sandboxes::creator_instance.eq(None::<Uuid>),
                sandboxes::lease_expires_at.eq(None::<OffsetDateTime>),
            ))
            .returning(SandboxRow::as_returning())
            .get_result(conn)
            .await
            .optional()?;
        let Some(row) = row else {
            return Err(refusal(conn, id, event).await);
        };
        set_ports(conn, id, &ports).await?;
        append(conn, id, &started, update.at).await?;
        one_with_ports(conn, row).await
    })
    .await
}

pub(crate) async fn transition(
    conn: &mut Conn,
    id: SandboxId,
    change: &StatusChange,
) -> Tx<Sandbox> {
    let event = change.event;
    let to = lifecycle::target(event);
    let allowed = statuses(&lifecycle::allowed_from(event));
    conn.transaction(async |conn| {
        let target = sandboxes::table
            .find(id.as_uuid())
            .filter(sandboxes::status.eq_any(allowed));
        let updated: Option<SandboxRow> = if to.is_terminal() {
            diesel::update(target)
                .set((
                    sandboxes::status.eq(to.as_str()),
                    sandboxes::status_reason.eq(&change.reason),
                    sandboxes::deleted_at.eq(Some(micros(change.at))),
                    sandboxes::creator_instance.eq(None::<Uuid>),
                    sandboxes::lease_expires_at.eq(None::<OffsetDateTime>),
                ))
                .returning(SandboxRow::as_returning())
                .get_result(conn)
                .await
                .optional()?
        } else {
            diesel::update(target)
                .set((
                    sandboxes::status.eq(to.as_str()),
                    sandboxes::status_reason.eq(&change.reason),
                    sandboxes::creator_instance.eq(None::<Uuid>),
                    sandboxes::lease_expires_at.eq(None::<OffsetDateTime>),
                ))
                .returning(SandboxRow::as_returning())
                .get_result(conn)
                .await
                .optional()?
        };
        let Some(row) = updated else {
            return Err(refusal(conn, id, event).await);
        };
        append(conn, id, &change.record, change.at).await?;
        one_with_ports(conn, row).await
    })
    .await
}

pub(crate) async fn renew_leases(
    conn: &mut Conn,
    instance: InstanceId,
    ids: &[SandboxId],
    expires_at: OffsetDateTime,
) -> Tx<u64> {
    let ids: Vec<Uuid> = ids.iter().map(SandboxId::as_uuid).collect();
    // One statement: one commit for every lease this process renews.
    let renewed = diesel::update(sandboxes::table)
        .filter(sandboxes::id.eq_any(ids))
        .filter(sandboxes::status.eq(SandboxStatus::Creating.as_str()))
        .filter(sandboxes::creator_instance.eq(instance.as_uuid()))
        .set(sandboxes::lease_expires_at.eq(Some(micros(expires_at))))
        .execute(conn)
        .await?;
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
    conn.transaction(async |conn| {
        // The conditions are checked on the row as the UPDATE locks it (a renewal committed
        // meanwhile is seen), so a renewed lease or a finished create is never settled.
        let settled: Option<SandboxRow> = diesel::update(sandboxes::table.find(id.as_uuid()))
            .filter(sandboxes::status.eq_any(allowed))
            .filter(sandboxes::status.eq(SandboxStatus::Creating.as_str()))
            .filter(sandboxes::lease_expires_at.le(micros(now)))
            .set((
                sandboxes::status.eq(to.as_str()),
                sandboxes::status_reason.eq(&change.reason),
                sandboxes::creator_instance.eq(None::<Uuid>),
                sandboxes::lease_expires_at.eq(None::<OffsetDateTime>),
            ))
            .returning(SandboxRow::as_returning())
            .get_result(conn)
            .await
            .optional()?;
        let Some(row) = settled else {
            return Ok(None);
        };
        append(conn, id, &change.record, change.at).await?;
        one_with_ports(conn, row).await.map(Some)
    })
    .await
}

async fn touch(
    conn: &mut Conn,
    id: SandboxId,
    at: OffsetDateTime,
    expires_at: OffsetDateTime,
) -> Tx<Option<SandboxRow>> {
    Ok(diesel::update(sandboxes::table.find(id.as_uuid()))
        .filter(
            sandboxes::status.eq_any(statuses(&lifecycle::allowed_from(LifecycleEvent::Activity))),
        )
        .set((
            sandboxes::last_activity.eq(micros(at)),
            sandboxes::expires_at.eq(micros(expires_at)),
        ))
        .returning(SandboxRow::as_returning())
        .get_result(conn)
        .await
        .optional()?)
}

/// The heartbeat's one statement; `true` if the row changed.
/// The id a batched touch changed.
#[derive(QueryableByName)]
struct Touched {
    #[diesel(sql_type = diesel::sql_types::Uuid)]
    id: Uuid,
}

/// Heartbeats in one statement (so one commit, one WAL flush): each row of the unnested
/// arrays moves `last_activity` and `expires_at` only while the sandbox is `running` and,
/// when the touch names a tenant, belongs to it. A single heartbeat is a batch of one. The caller names each sandbox at most once, so
/// a returned id answers exactly one touch.
pub(crate) async fn touch_many(conn: &mut Conn, touches: &[Touch]) -> Tx<Vec<bool>> {
    use diesel::sql_types::{Array, Nullable};
    let ids: Vec<Uuid> = touches.iter().map(|t| t.id.as_uuid()).collect();
    let tenants: Vec<Option<&str>> = touches
        .iter()
        .map(|t| t.tenant.as_ref().map(TenantId::as_str))
        .collect();
    let ats: Vec<OffsetDateTime> = touches.iter().map(|t| micros(t.at)).collect();
    let expiries: Vec<OffsetDateTime> = touches.iter().map(|t| micros(t.expires_at)).collect();
    // The rows are locked in id order first: two batches in flight at once (or a batch and
    // a reaper) then never wait on each other in a cycle, which PostgreSQL would break by
    // failing one of them as a deadlock.
    let touched: Vec<Touched> = diesel::sql_query(
        "WITH v AS ( \
             SELECT * FROM unnest($1::uuid[], $2::text[], $3::timestamptz[], $4::timestamptz[]) \
                 AS v(id, tenant, at, expires_at)), \
         locked AS MATERIALIZED ( \
             SELECT s.id FROM sandboxes AS s JOIN v ON s.id = v.id \
             WHERE s.status = ANY($5) AND (v.tenant IS NULL OR s.tenant = v.tenant) \
             ORDER BY s.id FOR UPDATE OF s) \
         UPDATE sandboxes AS s \
         SET last_activity = v.at, expires_at = v.expires_at \
         FROM v, locked \
         WHERE s.id = locked.id AND s.id = v.id AND s.status = ANY($5) \
         RETURNING s.id",
    )
    .bind::<Array<diesel::sql_types::Uuid>, _>(ids)
    .bind::<Array<Nullable<Text>>, _>(tenants)
    .bind::<Array<Timestamptz>, _>(ats)
    .bind::<Array<Timestamptz>, _>(expiries)
    .bind::<Array<Text>, _>(statuses(&lifecycle::allowed_from(LifecycleEvent::Activity)))
    .load(conn)
    .await?;
    let touched: std::collections::HashSet<Uuid> = touched.into_iter().map(|t| t.id).collect();
    Ok(touches
        .iter()
        .map(|t| touched.contains(&t.id.as_uuid()))
        .collect())
}

pub(crate) async fn record_activity(
    conn: &mut Conn,
    id: SandboxId,
    at: OffsetDateTime,
    expires_at: OffsetDateTime,
    record: Option<&NewEvent>,
) -> Tx<Sandbox> {
    let event = LifecycleEvent::Activity;
    let row = match record {
        // A heartbeat is one autocommitted statement: durable when it returns.
        None => touch(conn, id, at, expires_at).await?,
        Some(record) => {
            conn.transaction(async |conn| {
                let row = touch(conn, id, at, expires_at).await?;
                if row.is_some() {
                    append(conn, id, record, at).await?;
                }
                Ok::<_, TxError>(row)
            })
            .await?
        }
    };
    match row {
        Some(row) => one_with_ports(conn, row).await,
        None => Err(refusal(conn, id, event).await),
    }
}

pub(crate) async fn claim_expired(
    conn: &mut Conn,
    now: OffsetDateTime,
    limit: u32,
) -> Tx<Vec<Sandbox>> {
    if limit == 0 {
        return Ok(Vec::new());
    }
    let now = micros(now);
    let mut rows: Vec<SandboxRow> = conn
        .transaction(async |conn| {
            // SKIP LOCKED: a concurrent claimer (another process) skips the rows this one
            // holds instead of waiting for them, and re-checks `status` on rows claimed
            // meanwhile, so no sandbox is handed out twice. The candidates are a
            // MATERIALIZED CTE: a `WHERE id IN (SELECT ... LIMIT n)` subquery may be
            // rescanned by the plan and then claims more than `n` rows.
            let rows: Vec<SandboxRow> = diesel::sql_query(
                "WITH claimed AS MATERIALIZED ( \
                     SELECT id FROM sandboxes \
                     WHERE status = 'running' AND expires_at <= $1 \
                     ORDER BY expires_at, id \
                     LIMIT $3 \
                     FOR UPDATE SKIP LOCKED) \
                 UPDATE sandboxes \
                 SET status = 'expired', deleted_at = $1, status_reason = $2 \
                 FROM claimed \
                 WHERE sandboxes.id = claimed.id AND sandboxes.status = 'running' \
                 RETURNING sandboxes.*",
            )
            .bind::<Timestamptz, _>(now)
            .bind::<Text, _>("expired: idle past its time to live")
            .bind::<BigInt, _>(i64::from(limit))
            .load(conn)
            .await?;
            let events: Vec<NewEventRow> = rows
                .iter()
                .map(|row| {
                    let details = json!({ "expires_at": row.expires_at_rfc3339() });
                    NewEventRow::new(
                        SandboxId::from_uuid(row.id),
                        &NewEvent::new(EventAction::Expired, details),
                        now,
                    )
                })
                .collect();
            if !events.is_empty() {
                diesel::insert_into(sandbox_events::table)
                    .values(&events)
                    .execute(conn)
                    .await?;
            }
            Ok::<_, TxError>(rows)
        })
        .await?;
    rows.sort_by(|a, b| {
        a.expires_at
            .cmp(&b.expires_at)
            .then_with(|| a.id.cmp(&b.id))
    });
    with_ports(conn, rows).await
}

pub(crate) async fn append_event(
    conn: &mut Conn,
    id: SandboxId,
    event: &NewEvent,
    at: OffsetDateTime,
) -> Tx<()> {
    let inserted = diesel::insert_into(sandbox_events::table)
        .values(NewEventRow::new(id, event, at))
        .execute(conn)
        .await;
    match inserted {
        Ok(_) => Ok(()),
        Err(diesel::result::Error::DatabaseError(
            diesel::result::DatabaseErrorKind::ForeignKeyViolation,
            _,
        )) => Err(not_found(id)),
        Err(e) => Err(e.into()),
    }
}

pub(crate) async fn events(conn: &mut Conn, id: SandboxId) -> Tx<Vec<SandboxEvent>> {
    let rows: Vec<EventRow> = sandbox_events::table
        .filter(sandbox_events::sandbox_id.eq(id.as_uuid()))
        .order(sandbox_events::id)
        .select(EventRow::as_select())
        .load(conn)
        .await?;
    if rows.is_empty() && !exists(conn, id).await? {
        return Err(not_found(id));
    }
    rows.into_iter()
        .map(|row| row.into_domain().map_err(TxError::from))
        .collect()
}

pub(crate) async fn ping(conn: &mut Conn) -> Tx<()> {
    diesel::sql_query("SELECT 1").execute(conn).await?;
    Ok(())
}
