//! What SQLite does its own way. Every write runs in the single writer's `BEGIN IMMEDIATE`
//! transaction, which already excludes every other writer (connection or process) from the
//! first statement to the commit: no advisory or row locks are needed, a claim is one
//! `UPDATE … RETURNING`, and a batch of heartbeats is one statement per touch in one
//! transaction.

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};
use diesel_async::RunQueryDsl;
use monza_domain::lifecycle::{self, LifecycleEvent};
use monza_domain::{ExpiryClaim, SandboxId, TenantId, Touch};

use super::Conn;
use super::codec;
use super::queries::statuses;
use super::rows::{SandboxRow, id_of};
use super::schema::sandboxes;
use crate::error::Tx;

/// The writer's transaction already serializes the count and the insert.
pub(crate) async fn lock_tenant(_conn: &mut Conn, _tenant: &TenantId) -> Tx<()> {
    Ok(())
}

/// The writer's transaction already serializes the count and the insert.
pub(crate) async fn lock_first_token(_conn: &mut Conn) -> Tx<()> {
    Ok(())
}

/// The status; the writer's transaction keeps every other write out until commit.
pub(crate) async fn status_for_update(conn: &mut Conn, id: SandboxId) -> Tx<Option<String>> {
    Ok(sandboxes::table
        .find(id_of(id))
        .select(sandboxes::status)
        .first(conn)
        .await
        .optional()?)
}

/// One statement inside the writer's `BEGIN IMMEDIATE`: no other claimer (thread or
/// process) can see these rows as running any more.
pub(crate) async fn claim_expired(conn: &mut Conn, claim: &ExpiryClaim) -> Tx<Vec<SandboxRow>> {
    // The statuses are the domain's (`lifecycle::REAPABLE` and its target), written into the
    // statement as literals so the partial index on running rows' `expires_at` serves it.
    let sql = format!(
        "UPDATE sandboxes \
         SET status = '{to}', deleted_at = ?1, status_reason = ?2 \
         WHERE id IN (SELECT id FROM sandboxes \
                      WHERE status = '{from}' AND expires_at <= ?1 \
                      ORDER BY expires_at, id LIMIT ?3) \
         RETURNING *",
        from = claim.from.as_str(),
        to = claim.to.as_str(),
    );
    Ok(diesel::sql_query(sql)
        .bind::<BigInt, _>(codec::time(claim.now))
        .bind::<Text, _>(&claim.reason)
        .bind::<BigInt, _>(i64::from(claim.limit))
        .load(conn)
        .await?)
}

/// Each touch is one conditional statement; the caller's transaction makes the batch one
/// commit (one WAL sync).
pub(crate) async fn touch_many(conn: &mut Conn, touches: &[Touch]) -> Tx<Vec<bool>> {
    let running = statuses(&lifecycle::allowed_from(LifecycleEvent::Activity));
    let mut changed = Vec::with_capacity(touches.len());
    for touch in touches {
        let update = diesel::update(sandboxes::table.find(id_of(touch.id)))
            .filter(sandboxes::status.eq_any(running.clone()))
            .set((
                sandboxes::last_activity.eq(codec::time(touch.at)),
                sandboxes::expires_at.eq(codec::time(touch.expires_at)),
            ));
        let rows = match &touch.tenant {
            Some(tenant) => {
                update
                    .filter(sandboxes::tenant.eq(tenant.as_str()))
                    .execute(conn)
                    .await?
            }
            None => update.execute(conn).await?,
        };
        changed.push(rows == 1);
    }
    Ok(changed)
}
