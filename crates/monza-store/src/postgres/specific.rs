//! What PostgreSQL does its own way: the advisory locks, `FOR UPDATE` row locks, claiming
//! with `SKIP LOCKED`, and heartbeats batched into one statement over unnested arrays.

use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Integer, Nullable, Text, Timestamptz};
use diesel_async::RunQueryDsl;
use monza_domain::lifecycle::{self, LifecycleEvent};
use monza_domain::{ExpiryClaim, SandboxId, TenantId, Touch};
use time::OffsetDateTime;
use uuid::Uuid;

use super::Conn;
use super::codec;
use super::queries::statuses;
use super::rows::SandboxRow;
use super::schema::sandboxes;
use crate::error::Tx;

/// The first key of the transaction-level advisory locks that serialize one tenant's
/// limited inserts (the second is a hash of the tenant). The two-key space of advisory
/// locks is separate from the one-key space of the migration and bootstrap locks.
const TENANT_LOCK_CLASS: i32 = 0x6d6e_7a74;

/// Serializes first-token inserts (bootstrap) between processes (an arbitrary constant).
const BOOTSTRAP_LOCK: i64 = 0x6d6f_6e7a_615f_746b;

/// Under READ COMMITTED two transactions could count the same live rows and both insert:
/// the tenant's lock, held until the transaction ends, makes the count and the insert one
/// step for every connection and replica. The count runs after the lock is granted, so it
/// sees what the previous holder committed.
pub(crate) async fn lock_tenant(conn: &mut Conn, tenant: &TenantId) -> Tx<()> {
    diesel::sql_query("SELECT pg_advisory_xact_lock($1, hashtext($2))")
        .bind::<Integer, _>(TENANT_LOCK_CLASS)
        .bind::<Text, _>(tenant.as_str())
        .execute(conn)
        .await?;
    Ok(())
}

/// A transaction-scoped advisory lock from the count of tokens to the insert.
pub(crate) async fn lock_first_token(conn: &mut Conn) -> Tx<()> {
    diesel::sql_query(format!("SELECT pg_advisory_xact_lock({BOOTSTRAP_LOCK})"))
        .execute(conn)
        .await?;
    Ok(())
}

/// The status, with the row locked until the transaction ends.
pub(crate) async fn status_for_update(conn: &mut Conn, id: SandboxId) -> Tx<Option<String>> {
    Ok(sandboxes::table
        .find(id.as_uuid())
        .select(sandboxes::status)
        .for_update()
        .first(conn)
        .await
        .optional()?)
}

/// SKIP LOCKED: a concurrent claimer (another process) skips the rows this one holds
/// instead of waiting for them, and re-checks `status` on rows claimed meanwhile, so no
/// sandbox is handed out twice. The candidates are a MATERIALIZED CTE: a
/// `WHERE id IN (SELECT ... LIMIT n)` subquery may be rescanned by the plan and then claims
/// more than `n` rows.
pub(crate) async fn claim_expired(conn: &mut Conn, claim: &ExpiryClaim) -> Tx<Vec<SandboxRow>> {
    // The statuses are the domain's (`lifecycle::REAPABLE` and its target), written into the
    // statement as literals so the partial index on running rows' `expires_at` serves it.
    let sql = format!(
        "WITH claimed AS MATERIALIZED ( \
             SELECT id FROM sandboxes \
             WHERE status = '{from}' AND expires_at <= $1 \
             ORDER BY expires_at, id \
             LIMIT $3 \
             FOR UPDATE SKIP LOCKED) \
         UPDATE sandboxes \
         SET status = '{to}', deleted_at = $1, status_reason = $2 \
         FROM claimed \
         WHERE sandboxes.id = claimed.id AND sandboxes.status = '{from}' \
         RETURNING sandboxes.*",
        from = claim.from.as_str(),
        to = claim.to.as_str(),
    );
    Ok(diesel::sql_query(sql)
        .bind::<Timestamptz, _>(codec::time(claim.now))
        .bind::<Text, _>(&claim.reason)
        .bind::<BigInt, _>(i64::from(claim.limit))
        .load(conn)
        .await?)
}

/// The id a batched touch changed.
#[derive(QueryableByName)]
struct Touched {
    #[diesel(sql_type = diesel::sql_types::Uuid)]
    id: Uuid,
}

/// Heartbeats in one statement (so one commit, one WAL flush): each row of the unnested
/// arrays moves `last_activity` and `expires_at` only while the sandbox is `running` and,
/// when the touch names a tenant, belongs to it. A single heartbeat is a batch of one. The
/// caller names each sandbox at most once, so a returned id answers exactly one touch.
pub(crate) async fn touch_many(conn: &mut Conn, touches: &[Touch]) -> Tx<Vec<bool>> {
    let ids: Vec<Uuid> = touches.iter().map(|t| t.id.as_uuid()).collect();
    let tenants: Vec<Option<&str>> = touches
        .iter()
        .map(|t| t.tenant.as_ref().map(TenantId::as_str))
        .collect();
    let ats: Vec<OffsetDateTime> = touches.iter().map(|t| codec::time(t.at)).collect();
    let expiries: Vec<OffsetDateTime> = touches.iter().map(|t| codec::time(t.expires_at)).collect();
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
