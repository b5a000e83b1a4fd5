//! The [`SandboxRepository`] contract: one suite, written once, that every store adapter
//! runs against itself (atuin's `tests-database` pattern).
//!
//! Each check is an `async fn` taking a fresh, empty repository. Adapter crates run them all
//! with [`repository_contract_tests!`](crate::repository_contract_tests), which expands to
//! one `#[tokio::test]` per check so a failure names the check.
//!
//! What the suite pins down beyond the port's doc comments:
//! - Timestamps are kept to the microsecond: anything finer is truncated (towards the past
//!   for dates after 1970), the same way by every adapter. See [`micros`].
//! - Port mappings come back ordered by container port.
//! - `events` of an unknown sandbox, and `append_event` to one, are not-found.
//! - `claim_expired` claims the sandboxes that expired first, first.
//! - The `created`, `started` and `expired` events are stamped with the sandbox's
//!   `created_at`, the update's `at` and the claim's `now`; a transition's and an
//!   activity's event with their `at`; `append_event` with the time it is given. `events` lists
//!   them in the order they were written.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde_json::json;
use time::{Duration, OffsetDateTime, UtcOffset};
use uuid::Uuid;

use crate::error::Error;
use crate::lifecycle::{self, LifecycleEvent};
use crate::ports::{Admission, ExpiryClaim, RunningUpdate, SandboxRepository, StatusChange, Touch};
use crate::sandbox::{
    CreateLease, EventAction, InstanceId, NewEvent, PortMapping, Sandbox, SandboxEvent,
    SandboxFilter, SandboxId, SandboxName, SandboxState, SandboxStatus, StatusFilter, TemplateName,
    TenantId,
};

/// A repository under test.
pub type Repo = Arc<dyn SandboxRepository>;

/// Runs every contract check as its own `#[tokio::test]`.
///
/// `fresh` is an async function returning `Option<(Repo, Guard)>`: a fresh, empty store and
/// a guard dropped when the check ends (to clean up), or `None` to skip (see
/// [`crate::testing::require`]). `fresh_pair` returns `Option<(Repo, Repo, Guard)>`: two
/// independent instances (as two processes would have) on one fresh store.
///
/// The calling crate needs `tokio` with the `macros` and `rt-multi-thread` features.
#[macro_export]
macro_rules! repository_contract_tests {
    (fresh = $fresh:path, fresh_pair = $pair:path $(,)?) => {
        $crate::contract_checks!(repository_contract, $fresh, (repo);
            insert_then_get_returns_the_same_sandbox,
            get_of_an_unknown_id_is_not_found,
            insert_of_a_duplicate_id_is_a_conflict,
            insert_with_a_container_port_mapped_twice_is_a_conflict,
            insert_records_a_created_event,
            json_fields_round_trip_exactly,
            timestamps_round_trip_to_the_microsecond,
            port_mappings_round_trip_in_container_port_order,
            list_is_newest_first_and_filters_by_tenant_and_status,
            list_honours_the_limit,
            insert_with_a_limit_counts_only_the_tenants_live_sandboxes,
            concurrent_inserts_on_one_instance_never_pass_the_tenant_limit,
            a_create_lease_round_trips_and_ends_when_the_sandbox_leaves_creating,
            renew_leases_moves_only_this_instances_creating_leases,
            fail_lapsed_create_settles_only_a_creating_sandbox_whose_lease_lapsed,
            mark_running_moves_creating_to_running_with_its_container,
            mark_running_is_refused_unless_creating,
            transition_follows_the_lifecycle_for_every_status_and_event,
            transition_of_an_unknown_id_is_not_found,
            record_activity_moves_last_activity_and_expiry_while_running,
            record_activity_is_refused_unless_running,
            touch_moves_expiry_only_for_a_running_sandbox_of_its_tenant,
            touch_many_answers_each_touch_as_touch_would,
            concurrent_touch_batches_over_the_same_rows_all_succeed,
            replace_port_mappings_only_while_running,
            claim_expired_returns_exactly_the_running_sandboxes_past_expiry,
            claim_expired_takes_the_earliest_expiry_first_and_honours_the_limit,
            concurrent_claimers_on_one_instance_never_share_a_sandbox,
            events_are_oldest_first_and_unknown_ids_are_not_found,
            ping_answers,
        );
        $crate::contract_checks!(repository_contract, $pair, (first, second);
            concurrent_claimers_on_two_instances_never_share_a_sandbox,
            an_acknowledged_write_is_visible_to_another_instance,
            concurrent_inserts_on_two_instances_never_pass_the_tenant_limit,
            concurrent_settlers_on_two_instances_settle_a_lapsed_create_once,
        );
    };
}

/// For the contract suites' macros: one `#[tokio::test]` per `$check` of
/// `crate::testing::$suite`, given the stores `$fresh` returns (named as in `($store, ...)`,
/// followed by a guard), or skipped when it returns `None`.
#[doc(hidden)]
#[macro_export]
macro_rules! contract_checks {
    ($suite:ident, $fresh:path, $stores:tt; $($check:ident),* $(,)?) => {
        $(
            $crate::contract_checks!(@check $suite, $fresh, $stores, $check);
        )*
    };
    (@check $suite:ident, $fresh:path, ($($store:ident),+), $check:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $check() {
            let Some(($($store,)+ _guard)) = $fresh().await else {
                return;
            };
            $crate::testing::$suite::$check($($store),+).await;
        }
    };
}

/// `at` truncated to whole microseconds, the precision every store keeps.
pub fn micros(at: OffsetDateTime) -> OffsetDateTime {
    let nanos = at.nanosecond();
    at.replace_nanosecond(nanos - nanos % 1_000).unwrap_or(at)
}

/// A fixed instant in the past to build test data around.
pub fn base_time() -> OffsetDateTime {
    // 2024-01-01T00:00:00Z
    OffsetDateTime::from_unix_timestamp(1_704_067_200).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

fn tenant(name: &str) -> TenantId {
    TenantId::new(name).unwrap_or_else(|e| panic!("test tenant {name:?}: {e}"))
}

/// A valid sandbox in `status` for `tenant`, created at `created_at`, expiring an hour later.
/// Running ones have a container and a published port; ended ones a `deleted_at`.
pub fn sample_sandbox(
    tenant_name: &str,
    status: SandboxStatus,
    created_at: OffsetDateTime,
) -> Sandbox {
    let id = SandboxId::new_random();
    let created_at = micros(created_at);
    let running = matches!(status, SandboxStatus::Running);
    let port_mappings = if running {
        vec![PortMapping {
            id: Uuid::new_v4(),
            sandbox_id: id,
            host_port: 49_153,
            container_port: 8080,
        }]
    } else {
        Vec::new()
    };
    Sandbox {
        id,
        tenant: tenant(tenant_name),
        name: SandboxName::new("my sandbox").unwrap_or_else(|e| panic!("{e}")),
        template: TemplateName::new("python").unwrap_or_else(|e| panic!("{e}")),
        state: SandboxState::restore(
            status,
            matches!(status, SandboxStatus::Error).then(|| "it broke".to_owned()),
            status
                .is_terminal()
                .then_some(created_at + Duration::minutes(5)),
            None,
        )
        .unwrap_or_else(|e| panic!("{e}")),
        container_id: (!matches!(status, SandboxStatus::Creating))
            .then(|| format!("container-{}", id.as_uuid().simple())),
        image: "mcr.microsoft.com/devcontainers/python:3.12".to_owned(),
        workspace_mount: "/workspaces/project".to_owned(),
        devcontainer_config: json!({
            "name": "Python",
            "image": "mcr.microsoft.com/devcontainers/python:3.12",
            "forwardPorts": [8080],
        }),
        env_vars: BTreeMap::from([("LANG".to_owned(), "C.UTF-8".to_owned())]),
        remote_env: BTreeMap::from([("PATH_EXTRA".to_owned(), "/opt/tools/bin".to_owned())]),
        remote_user: Some("vscode".to_owned()),
        port_mappings,
        last_activity: created_at,
        created_at,
        expires_at: created_at + Duration::hours(1),
    }
}

/// A `creating` sample whose create is leased by `instance` until `expires_at`.
pub fn leased_sandbox(
    tenant_name: &str,
    instance: InstanceId,
    expires_at: OffsetDateTime,
) -> Sandbox {
    Sandbox {
        state: SandboxState::creating(Some(CreateLease {
            instance,
            expires_at: micros(expires_at),
        })),
        ..sample_sandbox(tenant_name, SandboxStatus::Creating, base_time())
    }
}

fn event(action: EventAction) -> NewEvent {
    NewEvent::new(action, json!({ "by": "contract" }))
}

async fn insert(repo: &Repo, sandbox: &Sandbox) {
    let admitted = repo
        .insert(sandbox, None)
        .await
        .unwrap_or_else(|e| panic!("insert {}: {e}", sandbox.id));
    assert_eq!(
        admitted,
        Admission::Inserted,
        "insert {} without a limit",
        sandbox.id
    );
}

/// A sample of acme's in `status`, created at the base time, inserted.
async fn insert_sample(repo: &Repo, status: SandboxStatus) -> Sandbox {
    let sandbox = sample_sandbox("acme", status, base_time());
    insert(repo, &sandbox).await;
    sandbox
}

async fn get(repo: &Repo, id: SandboxId) -> Sandbox {
    repo.get(id)
        .await
        .unwrap_or_else(|e| panic!("get {id}: {e}"))
}

async fn events_of(repo: &Repo, id: SandboxId) -> Vec<SandboxEvent> {
    repo.events(id)
        .await
        .unwrap_or_else(|e| panic!("events {id}: {e}"))
}

async fn actions(repo: &Repo, id: SandboxId) -> Vec<EventAction> {
    events_of(repo, id)
        .await
        .into_iter()
        .map(|e| e.action)
        .collect()
}

/// Each event's action and time.
fn stamps(events: &[SandboxEvent]) -> Vec<(EventAction, OffsetDateTime)> {
    events.iter().map(|e| (e.action, e.created_at)).collect()
}

/// Every status but `except`.
fn all_but(except: SandboxStatus) -> impl Iterator<Item = SandboxStatus> {
    SandboxStatus::ALL.into_iter().filter(move |s| *s != except)
}

/// `sandbox` moved to `status`, with `reason` and `deleted_at`, and no lease.
fn in_state(
    sandbox: &Sandbox,
    status: SandboxStatus,
    reason: Option<String>,
    deleted_at: Option<OffsetDateTime>,
) -> Sandbox {
    Sandbox {
        state: SandboxState::restore(status, reason, deleted_at, None)
            .unwrap_or_else(|e| panic!("{e}")),
        ..sandbox.clone()
    }
}

/// A write answered `returned`: it is `expected`, and so is what the store now holds.
async fn assert_written(repo: &Repo, returned: &Sandbox, expected: &Sandbox, what: &str) {
    assert_eq!(returned, expected, "{what}: the answer");
    assert_eq!(&get(repo, expected.id).await, expected, "{what}: the row");
}

/// `result` is a conflict naming `sandbox`'s status, and its row and log are as they were.
async fn assert_refused<T: std::fmt::Debug>(
    repo: &Repo,
    result: Result<T, Error>,
    sandbox: &Sandbox,
    what: &str,
) {
    let status = sandbox.status();
    let message = assert_conflict(result, what);
    assert!(
        message.contains(status.as_str()),
        "{what}: the conflict names the status {status}: {message}"
    );
    assert_eq!(&get(repo, sandbox.id).await, sandbox, "{what}: unchanged");
    assert_eq!(
        actions(repo, sandbox.id).await,
        vec![EventAction::Created],
        "{what}: nothing logged"
    );
}

#[track_caller]
fn assert_not_found<T: std::fmt::Debug>(result: Result<T, Error>, what: &str) {
    match result {
        Err(Error::NotFound(_)) => {}
        other => panic!("{what}: expected not-found, got {other:?}"),
    }
}

#[track_caller]
fn assert_conflict<T: std::fmt::Debug>(result: Result<T, Error>, what: &str) -> String {
    match result {
        Err(Error::Conflict(message)) => message,
        other => panic!("{what}: expected a conflict, got {other:?}"),
    }
}

fn running_update(id: SandboxId, at: OffsetDateTime) -> RunningUpdate {
    let at = micros(at);
    let container_id = format!("started-{}", id.as_uuid().simple());
    RunningUpdate {
        record: NewEvent::started(&container_id, "monza-built:abc123"),
        container_id,
        image: "monza-built:abc123".to_owned(),
        port_mappings: vec![
            PortMapping {
                id: Uuid::new_v4(),
                sandbox_id: id,
                host_port: 40_001,
                container_port: 3000,
            },
            PortMapping {
                id: Uuid::new_v4(),
                sandbox_id: id,
                host_port: 40_002,
                container_port: 8000,
            },
        ],
        at,
        expires_at: at + Duration::minutes(30),
    }
}

/// `insert` then `get` gives back exactly the sandbox written, in every status.
pub async fn insert_then_get_returns_the_same_sandbox(repo: Repo) {
    for (i, status) in SandboxStatus::ALL.into_iter().enumerate() {
        let sandbox = sample_sandbox("acme", status, base_time() + Duration::seconds(i as i64));
        insert(&repo, &sandbox).await;
        assert_eq!(get(&repo, sandbox.id).await, sandbox, "{status}");
    }
}

/// An unknown id is not-found for `get`.
pub async fn get_of_an_unknown_id_is_not_found(repo: Repo) {
    assert_not_found(repo.get(SandboxId::new_random()).await, "get unknown");
    insert(
        &repo,
        &sample_sandbox("acme", SandboxStatus::Creating, base_time()),
    )
    .await;
    assert_not_found(repo.get(SandboxId::new_random()).await, "get unknown");
}

/// Inserting an id twice is a conflict and leaves the first row as it was.
pub async fn insert_of_a_duplicate_id_is_a_conflict(repo: Repo) {
    let first = sample_sandbox("acme", SandboxStatus::Creating, base_time());
    insert(&repo, &first).await;
    let mut again = sample_sandbox("other", SandboxStatus::Running, base_time());
    again.id = first.id;
    for mapping in &mut again.port_mappings {
        mapping.sandbox_id = first.id;
    }
    assert_conflict(repo.insert(&again, None).await, "duplicate insert");
    assert_eq!(get(&repo, first.id).await, first);
    assert_eq!(actions(&repo, first.id).await, vec![EventAction::Created]);
}

/// A container port mapped twice in one insert is a conflict (the same on every backend),
/// and nothing of the sandbox is written.
pub async fn insert_with_a_container_port_mapped_twice_is_a_conflict(repo: Repo) {
    let mut sandbox = sample_sandbox("acme", SandboxStatus::Running, base_time());
    let id = sandbox.id;
    let mapping = |host_port| PortMapping {
        id: Uuid::new_v4(),
        sandbox_id: id,
        host_port,
        container_port: 8080,
    };
    sandbox.port_mappings = vec![mapping(40_001), mapping(40_002)];
    assert_conflict(repo.insert(&sandbox, None).await, "a port mapped twice");
    assert_not_found(repo.get(id).await, "the refused sandbox");
}

/// `insert` writes the `created` event, stamped with the sandbox's `created_at`.
pub async fn insert_records_a_created_event(repo: Repo) {
    let sandbox = insert_sample(&repo, SandboxStatus::Creating).await;
    let events = events_of(&repo, sandbox.id).await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].sandbox_id, sandbox.id);
    assert_eq!(events[0].action, EventAction::Created);
    assert_eq!(events[0].created_at, sandbox.created_at);
    assert_eq!(events[0].details, NewEvent::created(&sandbox).details);
}

/// The JSON and map fields come back exactly: nesting, unicode, escapes, numbers.
pub async fn json_fields_round_trip_exactly(repo: Repo) {
    let mut sandbox = sample_sandbox("acme", SandboxStatus::Creating, base_time());
    sandbox.devcontainer_config = json!({
        "name": "Grüße, 世界 🦀",
        "escapes": "quote \" backslash \\ newline \n tab \t slash /",
        "numbers": {
            "zero": 0,
            "negative": -42,
            "u64_max": u64::MAX,
            "i64_min": i64::MIN,
            "float": 0.1,
            "one_point_five": 1.5,
            "tiny": 1.5e-10,
            "huge": 1e300,
        },
        "nested": {"a": [1, [2, [3, {"b": null}]], {"c": true, "d": false}], "empty": {}},
        "empty_array": [],
        "customizations": {"vscode": {"extensions": ["ms-python.python"]}},
    });
    sandbox.env_vars = BTreeMap::from([
        ("EMPTY".to_owned(), String::new()),
        ("WITH_EQUALS".to_owned(), "a=b=c".to_owned()),
        ("UNICODE_ÄÖÜ".to_owned(), "→ 😀 ←".to_owned()),
        ("JSONISH".to_owned(), r#"{"not": "parsed"}"#.to_owned()),
        ("MULTILINE".to_owned(), "line 1\nline 2".to_owned()),
    ]);
    insert(&repo, &sandbox).await;
    let back = get(&repo, sandbox.id).await;
    assert_eq!(back.devcontainer_config, sandbox.devcontainer_config);
    assert_eq!(back.env_vars, sandbox.env_vars);

    let details = json!({"command": "echo 'héllo' && exit 0", "n": 12_345_678_901_i64, "f": 2.5});
    repo.append_event(
        sandbox.id,
        &NewEvent::new(EventAction::Executed, details.clone()),
        base_time(),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let events = events_of(&repo, sandbox.id).await;
    assert_eq!(events.last().map(|e| &e.details), Some(&details));
}

/// Timestamps come back as the same instant, to the microsecond (finer is truncated), in
/// whatever offset they were given.
pub async fn timestamps_round_trip_to_the_microsecond(repo: Repo) {
    let mut sandbox = sample_sandbox("acme", SandboxStatus::Deleted, base_time());
    let precise = base_time() + Duration::nanoseconds(123_456_789);
    let east = UtcOffset::from_hms(5, 30, 0).unwrap_or(UtcOffset::UTC);
    sandbox.created_at = precise;
    sandbox.last_activity = precise.to_offset(east) + Duration::seconds(1);
    sandbox.expires_at = precise + Duration::days(400);
    sandbox.state = SandboxState::restore(
        SandboxStatus::Deleted,
        None,
        Some(precise + Duration::microseconds(1)),
        None,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    insert(&repo, &sandbox).await;
    let back = get(&repo, sandbox.id).await;
    assert_eq!(
        back.created_at,
        base_time() + Duration::nanoseconds(123_456_000)
    );
    assert_eq!(back.last_activity, micros(sandbox.last_activity));
    assert_eq!(back.expires_at, micros(sandbox.expires_at));
    assert_eq!(back.deleted_at(), sandbox.deleted_at().map(micros));
    assert_eq!(back.created_at.offset(), UtcOffset::UTC, "read back in UTC");
}

/// Port mappings written by `insert` and `mark_running` come back, ordered by container
/// port, from `get`, `list` and `claim_expired`.
pub async fn port_mappings_round_trip_in_container_port_order(repo: Repo) {
    let mut sandbox = sample_sandbox("acme", SandboxStatus::Running, base_time());
    let id = sandbox.id;
    let mapping = |host_port, container_port| PortMapping {
        id: Uuid::new_v4(),
        sandbox_id: id,
        host_port,
        container_port,
    };
    sandbox.port_mappings = vec![mapping(65_535, 9000), mapping(1, 80), mapping(50_000, 443)];
    insert(&repo, &sandbox).await;
    let mut expected = sandbox.port_mappings.clone();
    expected.sort_by_key(|m| m.container_port);
    assert_eq!(get(&repo, id).await.port_mappings, expected);
    let listed = repo
        .list(&SandboxFilter::default())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].port_mappings, expected);

    let claimed = repo
        .claim_expired(&ExpiryClaim::new(sandbox.expires_at, 10))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].port_mappings, expected);

    let creating = insert_sample(&repo, SandboxStatus::Creating).await;
    assert_eq!(get(&repo, creating.id).await.port_mappings, vec![]);
    let update = running_update(creating.id, base_time());
    let running = repo
        .mark_running(creating.id, &update)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(running.port_mappings, update.port_mappings);
    assert_eq!(
        get(&repo, creating.id).await.port_mappings,
        update.port_mappings
    );
}

/// `list` is newest first; filters by tenant and by status (live by default).
pub async fn list_is_newest_first_and_filters_by_tenant_and_status(repo: Repo) {
    let mut written = Vec::new();
    let statuses = [
        SandboxStatus::Running,
        SandboxStatus::Deleted,
        SandboxStatus::Creating,
        SandboxStatus::Expired,
        SandboxStatus::Error,
        SandboxStatus::Running,
    ];
    for (i, status) in statuses.into_iter().enumerate() {
        for tenant_name in ["acme", "globex"] {
            // Inserted out of creation order so insertion order cannot pass for it.
            let created = base_time() + Duration::minutes(((i * 7) % 6) as i64);
            let sandbox = sample_sandbox(tenant_name, status, created);
            insert(&repo, &sandbox).await;
            written.push(sandbox);
        }
    }
    let expect = |tenant_name: Option<&str>, status: StatusFilter| {
        let mut rows: Vec<&Sandbox> = written
            .iter()
            .filter(|s| tenant_name.is_none_or(|t| s.tenant.as_str() == t))
            .filter(|s| status.matches(s.status()))
            .collect();
        rows.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(b.id.cmp(&a.id)));
        rows.into_iter().map(|s| s.id).collect::<Vec<_>>()
    };
    let filters = [
        StatusFilter::Live,
        StatusFilter::All,
        StatusFilter::Only(SandboxStatus::Running),
        StatusFilter::Only(SandboxStatus::Deleted),
        StatusFilter::Only(SandboxStatus::Error),
    ];
    for tenant_name in [None, Some("acme"), Some("globex"), Some("nobody")] {
        for status in filters {
            let filter = SandboxFilter {
                tenant: tenant_name.map(tenant),
                status,
                limit: None,
            };
            let got: Vec<SandboxId> = repo
                .list(&filter)
                .await
                .unwrap_or_else(|e| panic!("{filter:?}: {e}"))
                .into_iter()
                .map(|s| s.id)
                .collect();
            let want = expect(tenant_name, status);
            assert_eq!(got, want, "{filter:?}");
        }
    }
    let all = repo
        .list(&SandboxFilter {
            tenant: None,
            status: StatusFilter::All,
            limit: None,
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    for sandbox in &written {
        assert!(all.contains(sandbox), "list returns whole sandboxes");
    }
}

/// `limit` caps the page, keeping the newest.
pub async fn list_honours_the_limit(repo: Repo) {
    let mut ids = Vec::new();
    for i in 0..7 {
        let sandbox = sample_sandbox(
            "acme",
            SandboxStatus::Running,
            base_time() + Duration::seconds(i),
        );
        insert(&repo, &sandbox).await;
        ids.push(sandbox.id);
    }
    ids.reverse();
    for limit in [0_u32, 1, 3, 7, 50] {
        let got: Vec<SandboxId> = repo
            .list(&SandboxFilter {
                tenant: Some(tenant("acme")),
                status: StatusFilter::Live,
                limit: Some(limit),
            })
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .into_iter()
            .map(|s| s.id)
            .collect();
        let want: Vec<SandboxId> = ids.iter().copied().take(limit as usize).collect();
        assert_eq!(got, want, "limit {limit}");
    }
}

/// With a limit, `insert` counts one tenant's creating, running and error sandboxes (not its
/// expired or deleted ones, nor another tenant's) and writes nothing at the limit.
pub async fn insert_with_a_limit_counts_only_the_tenants_live_sandboxes(repo: Repo) {
    for status in SandboxStatus::ALL {
        insert(&repo, &sample_sandbox("acme", status, base_time())).await;
        insert(&repo, &sample_sandbox("acme", status, base_time())).await;
    }
    for _ in 0..3 {
        insert(
            &repo,
            &sample_sandbox("globex", SandboxStatus::Running, base_time()),
        )
        .await;
    }
    let acme_rows = |repo: Repo| async move {
        repo.list(&SandboxFilter {
            tenant: Some(tenant("acme")),
            status: StatusFilter::All,
            limit: None,
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .len()
    };
    let refused = sample_sandbox("acme", SandboxStatus::Creating, base_time());
    assert_eq!(
        repo.insert(&refused, Some(6)).await,
        Ok(Admission::OverLimit { live: 6, limit: 6 }),
        "6 live of acme's 10: at the limit"
    );
    assert_not_found(
        repo.get(refused.id).await,
        "a refused insert writes nothing",
    );
    assert_not_found(repo.events(refused.id).await, "nor an event");
    assert_eq!(acme_rows(repo.clone()).await, 10);
    assert_eq!(
        repo.insert(&refused, Some(0)).await,
        Ok(Admission::OverLimit { live: 6, limit: 0 })
    );
    let admitted = sample_sandbox("acme", SandboxStatus::Creating, base_time());
    assert_eq!(
        repo.insert(&admitted, Some(7)).await,
        Ok(Admission::Inserted),
        "below the limit"
    );
    assert_eq!(get(&repo, admitted.id).await, admitted);
    assert_eq!(
        actions(&repo, admitted.id).await,
        vec![EventAction::Created]
    );
    assert_eq!(
        repo.insert(
            &sample_sandbox("acme", SandboxStatus::Creating, base_time()),
            Some(7)
        )
        .await,
        Ok(Admission::OverLimit { live: 7, limit: 7 })
    );
    let nobody = sample_sandbox("nobody", SandboxStatus::Creating, base_time());
    assert_eq!(repo.insert(&nobody, Some(1)).await, Ok(Admission::Inserted));
    let globex = sample_sandbox("globex", SandboxStatus::Creating, base_time());
    assert_eq!(
        repo.insert(&globex, Some(3)).await,
        Ok(Admission::OverLimit { live: 3, limit: 3 })
    );
}

/// How many concurrent limited inserts [`race_limited_inserts`] sends.
const RACERS: usize = 60;

/// [`RACERS`] inserts for one tenant at once, alternating between `first` and `second`,
/// with a limit of 10: exactly 10 are written, every other one is refused at the limit,
/// and the store holds exactly 10 rows of that tenant.
async fn race_limited_inserts(first: Repo, second: Repo) {
    const LIMIT: u64 = 10;
    let racers = (0..RACERS).map(|i| {
        let repo = if i % 2 == 0 {
            first.clone()
        } else {
            second.clone()
        };
        async move {
            let sandbox = sample_sandbox("racer", SandboxStatus::Creating, base_time());
            repo.insert(&sandbox, Some(LIMIT))
                .await
                .unwrap_or_else(|e| panic!("insert {i}: {e}"))
        }
    });
    let mut inserted = 0;
    for admission in futures::future::join_all(racers).await {
        match admission {
            Admission::Inserted => inserted += 1,
            Admission::OverLimit { live, limit } => {
                assert_eq!((live, limit), (LIMIT, LIMIT), "refused below the limit");
            }
        }
    }
    assert_eq!(inserted, LIMIT, "inserts admitted");
    let rows = first
        .list(&SandboxFilter {
            tenant: Some(tenant("racer")),
            status: StatusFilter::All,
            limit: None,
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(rows.len() as u64, LIMIT, "rows written");
}

/// Concurrent limited inserts on one instance never pass the tenant's limit together.
pub async fn concurrent_inserts_on_one_instance_never_pass_the_tenant_limit(repo: Repo) {
    race_limited_inserts(repo.clone(), repo).await;
}

/// Concurrent limited inserts on two instances (two processes, two replicas) never pass the
/// tenant's limit together.
pub async fn concurrent_inserts_on_two_instances_never_pass_the_tenant_limit(
    first: Repo,
    second: Repo,
) {
    race_limited_inserts(first, second).await;
}

/// Neither `answered` nor its stored row holds a create lease any more.
async fn assert_lease_ended(repo: &Repo, answered: &Sandbox, what: &str) {
    assert_eq!(answered.create_lease(), None, "{what}: the answer");
    assert_eq!(
        get(repo, answered.id).await.create_lease(),
        None,
        "{what}: the row"
    );
}

/// A create lease is stored with its row and read back as written; it ends (is `None`)
/// once the sandbox leaves `creating`, by `mark_running` or by a transition.
pub async fn a_create_lease_round_trips_and_ends_when_the_sandbox_leaves_creating(repo: Repo) {
    let instance = InstanceId::new_random();
    let until = base_time() + Duration::seconds(15) + Duration::nanoseconds(1_234);
    let started = leased_sandbox("acme", instance, until);
    insert(&repo, &started).await;
    let stored = get(&repo, started.id).await;
    assert_eq!(stored, started);
    assert_eq!(
        stored.create_lease(),
        Some(CreateLease {
            instance,
            expires_at: micros(until),
        })
    );
    let listed = repo
        .list(&SandboxFilter {
            tenant: None,
            status: StatusFilter::Only(SandboxStatus::Creating),
            limit: None,
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(listed, vec![started.clone()], "listing carries the lease");

    let update = running_update(started.id, base_time() + Duration::seconds(3));
    let running = repo
        .mark_running(started.id, &update)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_lease_ended(&repo, &running, "mark_running").await;

    let failed = leased_sandbox("acme", instance, until);
    insert(&repo, &failed).await;
    let change = StatusChange {
        event: LifecycleEvent::Fail,
        at: micros(base_time() + Duration::seconds(4)),
        reason: Some("create failed".into()),
        record: event(EventAction::Failed),
    };
    let ended = repo
        .transition(failed.id, &change)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_lease_ended(&repo, &ended, "a transition").await;
}

/// A create leased by `instance` until `until`, inserted, then marked running at `at` (so no
/// longer creating); as stored.
async fn finished_create(
    repo: &Repo,
    instance: InstanceId,
    until: OffsetDateTime,
    at: OffsetDateTime,
) -> Sandbox {
    let sandbox = leased_sandbox("acme", instance, until);
    insert(repo, &sandbox).await;
    repo.mark_running(sandbox.id, &running_update(sandbox.id, at))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    get(repo, sandbox.id).await
}

/// `renew_leases` moves the lease of the named `creating` sandboxes of this instance only,
/// and says how many it moved.
pub async fn renew_leases_moves_only_this_instances_creating_leases(repo: Repo) {
    let me = InstanceId::new_random();
    let other = InstanceId::new_random();
    let until = base_time() + Duration::seconds(15);
    let later = micros(until + Duration::seconds(10) + Duration::nanoseconds(777));
    let mine = leased_sandbox("acme", me, until);
    let mine_unnamed = leased_sandbox("acme", me, until);
    let theirs = leased_sandbox("acme", other, until);
    let unleased = sample_sandbox("acme", SandboxStatus::Creating, base_time());
    for sandbox in [&mine, &mine_unnamed, &theirs, &unleased] {
        insert(&repo, sandbox).await;
    }
    let finished = finished_create(&repo, me, until, base_time() + Duration::seconds(1)).await;

    let named = [
        mine.id,
        theirs.id,
        unleased.id,
        finished.id,
        SandboxId::new_random(),
    ];
    let renewed = repo
        .renew_leases(me, &named, later)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(renewed, 1);
    assert_eq!(
        get(&repo, mine.id).await.create_lease(),
        Some(CreateLease {
            instance: me,
            expires_at: later
        })
    );
    assert_eq!(get(&repo, mine_unnamed.id).await, mine_unnamed, "not named");
    assert_eq!(get(&repo, theirs.id).await, theirs, "another instance's");
    assert_eq!(get(&repo, unleased.id).await, unleased, "no lease");
    assert_eq!(
        get(&repo, finished.id).await,
        finished,
        "no longer creating"
    );
    assert_eq!(
        repo.renew_leases(me, &[], later).await,
        Ok(0),
        "an empty renewal"
    );
}

fn settle(at: OffsetDateTime) -> StatusChange {
    StatusChange {
        event: LifecycleEvent::Fail,
        at,
        reason: Some("lease lapsed".into()),
        record: event(EventAction::Failed),
    }
}

/// `fail_lapsed_create` settles a `creating` sandbox whose lease lapsed at or before `now`
/// (status `error`, the reason, a `failed` event, no lease), and nothing else: a live or
/// renewed lease, a row without a lease, a sandbox that left `creating`, an unknown id.
pub async fn fail_lapsed_create_settles_only_a_creating_sandbox_whose_lease_lapsed(repo: Repo) {
    let instance = InstanceId::new_random();
    let until = micros(base_time() + Duration::seconds(15));
    let now = until;
    let lapsed = leased_sandbox("acme", instance, until);
    let live = leased_sandbox("acme", instance, until + Duration::microseconds(1));
    let renewed = leased_sandbox("acme", instance, until - Duration::seconds(5));
    let unleased = sample_sandbox("acme", SandboxStatus::Creating, base_time());
    for sandbox in [&lapsed, &live, &renewed, &unleased] {
        insert(&repo, sandbox).await;
    }
    repo.renew_leases(instance, &[renewed.id], until + Duration::seconds(15))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let renewed = get(&repo, renewed.id).await;
    let finished = finished_create(
        &repo,
        instance,
        until - Duration::seconds(5),
        base_time() + Duration::seconds(2),
    )
    .await;

    let change = settle(now);
    let settled = repo
        .fail_lapsed_create(lapsed.id, now, &change)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|| panic!("a lapsed lease is settled"));
    let expected = in_state(
        &lapsed,
        SandboxStatus::Error,
        Some("lease lapsed".into()),
        None,
    );
    assert_written(&repo, &settled, &expected, "settled").await;
    let events = events_of(&repo, lapsed.id).await;
    let last = events.last().unwrap_or_else(|| panic!("no events"));
    assert_eq!(
        (last.action, last.created_at),
        (EventAction::Failed, now),
        "the failed event, stamped with the change's time"
    );
    assert_eq!(
        repo.fail_lapsed_create(lapsed.id, now, &change).await,
        Ok(None),
        "settled once"
    );
    assert_eq!(actions(&repo, lapsed.id).await.len(), events.len());

    for (what, untouched) in [
        ("a live lease", &live),
        ("a renewed lease", &renewed),
        ("no lease", &unleased),
        ("a finished create", &finished),
    ] {
        assert_eq!(
            repo.fail_lapsed_create(untouched.id, now, &change).await,
            Ok(None),
            "{what}"
        );
        assert_eq!(
            &get(&repo, untouched.id).await,
            untouched,
            "{what} unchanged"
        );
    }
    assert_eq!(
        repo.fail_lapsed_create(SandboxId::new_random(), now, &change)
            .await,
        Ok(None),
        "unknown"
    );
}

/// Settlers racing on two instances (two replicas' lease passes) settle a lapsed create
/// exactly once: one gets the sandbox, one `failed` event is written.
pub async fn concurrent_settlers_on_two_instances_settle_a_lapsed_create_once(
    first: Repo,
    second: Repo,
) {
    let until = micros(base_time() + Duration::seconds(15));
    let lapsed = leased_sandbox("acme", InstanceId::new_random(), until);
    insert(&first, &lapsed).await;
    let settlers = (0..8).map(|i| {
        let repo = if i % 2 == 0 {
            first.clone()
        } else {
            second.clone()
        };
        async move {
            repo.fail_lapsed_create(lapsed.id, until, &settle(until))
                .await
                .unwrap_or_else(|e| panic!("{e}"))
        }
    });
    let settled = futures::future::join_all(settlers)
        .await
        .into_iter()
        .filter(Option::is_some)
        .count();
    assert_eq!(settled, 1);
    let failed = actions(&first, lapsed.id)
        .await
        .into_iter()
        .filter(|a| *a == EventAction::Failed)
        .count();
    assert_eq!(failed, 1);
}

/// `mark_running` moves `creating` to `running` with the container's details and a
/// `started` event, and returns the stored sandbox.
pub async fn mark_running_moves_creating_to_running_with_its_container(repo: Repo) {
    let sandbox = insert_sample(&repo, SandboxStatus::Creating).await;
    let update = running_update(sandbox.id, base_time() + Duration::seconds(20));
    let running = repo
        .mark_running(sandbox.id, &update)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let expected = Sandbox {
        container_id: Some(update.container_id.clone()),
        image: update.image.clone(),
        port_mappings: update.port_mappings.clone(),
        last_activity: update.at,
        expires_at: update.expires_at,
        ..in_state(&sandbox, SandboxStatus::Running, None, None)
    };
    assert_written(&repo, &running, &expected, "mark_running").await;
    let events = events_of(&repo, sandbox.id).await;
    assert_eq!(
        stamps(&events),
        vec![
            (EventAction::Created, sandbox.created_at),
            (EventAction::Started, update.at)
        ]
    );
    assert_eq!(
        events.last().map(|e| &e.details),
        Some(&update.record.details)
    );
}

/// `mark_running` is a conflict from any status but `creating` (the row is unchanged) and
/// not-found for an unknown id.
pub async fn mark_running_is_refused_unless_creating(repo: Repo) {
    for status in all_but(SandboxStatus::Creating) {
        let sandbox = insert_sample(&repo, status).await;
        let result = repo
            .mark_running(sandbox.id, &running_update(sandbox.id, base_time()))
            .await;
        assert_refused(
            &repo,
            result,
            &sandbox,
            &format!("mark_running from {status}"),
        )
        .await;
    }
    let unknown = SandboxId::new_random();
    assert_not_found(
        repo.mark_running(unknown, &running_update(unknown, base_time()))
            .await,
        "mark_running unknown",
    );
}

fn action_for(event: LifecycleEvent) -> EventAction {
    match event {
        LifecycleEvent::Start => EventAction::Started,
        LifecycleEvent::Fail => EventAction::Failed,
        LifecycleEvent::Expire => EventAction::Expired,
        LifecycleEvent::Delete => EventAction::Deleted,
        LifecycleEvent::Activity => EventAction::Executed,
    }
}

/// For every (status, event) pair, `transition` does exactly what
/// [`lifecycle::transition`] says: the target status, the reason, `deleted_at` for a
/// terminal target, and the event, atomically; or a conflict naming the status, with the row
/// and its log unchanged.
pub async fn transition_follows_the_lifecycle_for_every_status_and_event(repo: Repo) {
    for from in SandboxStatus::ALL {
        for event in LifecycleEvent::ALL {
            let case = format!("{from} + {event:?}");
            let sandbox = insert_sample(&repo, from).await;
            let at = micros(base_time() + Duration::minutes(10) + Duration::nanoseconds(1_500));
            let change = StatusChange {
                event,
                at,
                reason: Some(format!("because {case}")),
                record: NewEvent::new(action_for(event), json!({ "case": case })),
            };
            let result = repo.transition(sandbox.id, &change).await;
            match lifecycle::transition(from, event) {
                Ok(to) => {
                    let changed = result.unwrap_or_else(|e| panic!("{case}: {e}"));
                    let deleted_at = if to.is_terminal() {
                        Some(at)
                    } else {
                        sandbox.deleted_at()
                    };
                    let expected = in_state(&sandbox, to, change.reason.clone(), deleted_at);
                    assert_written(&repo, &changed, &expected, &case).await;
                    let events = events_of(&repo, sandbox.id).await;
                    assert_eq!(events.len(), 2, "{case}: {events:?}");
                    assert_eq!(events[1].action, change.record.action, "{case}");
                    assert_eq!(events[1].details, change.record.details, "{case}");
                    assert_eq!(events[1].created_at, at, "{case}");
                }
                Err(_) => assert_refused(&repo, result, &sandbox, &case).await,
            }
        }
    }
}

/// `transition` of an unknown id is not-found.
pub async fn transition_of_an_unknown_id_is_not_found(repo: Repo) {
    for event in LifecycleEvent::ALL {
        let change = StatusChange {
            event,
            at: base_time(),
            reason: None,
            record: event_for(event),
        };
        assert_not_found(
            repo.transition(SandboxId::new_random(), &change).await,
            &format!("{event:?} unknown"),
        );
    }
}

fn event_for(event: LifecycleEvent) -> NewEvent {
    NewEvent::new(action_for(event), json!({}))
}

/// `record_activity` moves `last_activity` and `expires_at` of a running sandbox, logs the
/// event when given and nothing for a heartbeat.
pub async fn record_activity_moves_last_activity_and_expiry_while_running(repo: Repo) {
    let sandbox = insert_sample(&repo, SandboxStatus::Running).await;

    let at = micros(base_time() + Duration::minutes(3));
    let expires = at + Duration::minutes(30);
    let touched = repo
        .record_activity(sandbox.id, at, expires, None)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let expected = Sandbox {
        last_activity: at,
        expires_at: expires,
        ..sandbox.clone()
    };
    assert_written(&repo, &touched, &expected, "a heartbeat").await;
    assert_eq!(
        actions(&repo, sandbox.id).await,
        vec![EventAction::Created],
        "a heartbeat is not logged"
    );

    let later = at + Duration::minutes(1);
    let record = NewEvent::new(
        EventAction::Uploaded,
        json!({"path": "/w/a.txt", "bytes": 3}),
    );
    let touched = repo
        .record_activity(
            sandbox.id,
            later,
            later + Duration::minutes(30),
            Some(record.clone()),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(touched.last_activity, later);
    assert_eq!(touched.expires_at, later + Duration::minutes(30));
    let events = events_of(&repo, sandbox.id).await;
    assert_eq!(events.len(), 2);
    assert_eq!(events[1].action, EventAction::Uploaded);
    assert_eq!(events[1].details, record.details);
    assert_eq!(events[1].created_at, later);
}

/// `record_activity` is a conflict naming the status unless running (nothing changes or is
/// logged), and not-found for an unknown id.
pub async fn record_activity_is_refused_unless_running(repo: Repo) {
    for status in all_but(SandboxStatus::Running) {
        let sandbox = insert_sample(&repo, status).await;
        let at = base_time() + Duration::minutes(1);
        let result = repo
            .record_activity(
                sandbox.id,
                at,
                at + Duration::hours(1),
                Some(event(EventAction::Executed)),
            )
            .await;
        assert_refused(&repo, result, &sandbox, &format!("activity on {status}")).await;
    }
    assert_not_found(
        repo.record_activity(
            SandboxId::new_random(),
            base_time(),
            base_time() + Duration::hours(1),
            None,
        )
        .await,
        "activity unknown",
    );
}

/// The heartbeat's fast path: one conditional write, no event, `false` when refused.
pub async fn touch_moves_expiry_only_for_a_running_sandbox_of_its_tenant(repo: Repo) {
    let sandbox = insert_sample(&repo, SandboxStatus::Running).await;
    let at = micros(base_time() + Duration::minutes(5));
    let expires = at + Duration::minutes(15);
    let other = TenantId::new("other").unwrap_or_else(|e| panic!("{e}"));
    let refused = repo
        .touch(sandbox.id, Some(other), at, expires)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(!refused, "another tenant's heartbeat changed the row");
    assert_eq!(
        get(&repo, sandbox.id).await,
        sandbox,
        "unchanged by another tenant"
    );

    let owner = TenantId::new("acme").unwrap_or_else(|e| panic!("{e}"));
    for tenant in [Some(owner), None] {
        let touched = repo
            .touch(sandbox.id, tenant.clone(), at, expires)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(touched, "{tenant:?}");
    }
    let after = get(&repo, sandbox.id).await;
    assert_eq!((after.last_activity, after.expires_at), (at, expires));
    assert_eq!(
        actions(&repo, sandbox.id).await,
        vec![EventAction::Created],
        "a heartbeat is not logged"
    );

    for status in all_but(SandboxStatus::Running) {
        let ended = insert_sample(&repo, status).await;
        let touched = repo
            .touch(ended.id, None, at, expires)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(!touched, "{status}");
        assert_eq!(get(&repo, ended.id).await, ended, "{status} unchanged");
    }
    let unknown = repo
        .touch(SandboxId::new_random(), None, at, expires)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(!unknown);
}

/// A batch of heartbeats: each touch is applied or refused as `touch` would, and the
/// answers come back in the batch's order.
pub async fn touch_many_answers_each_touch_as_touch_would(repo: Repo) {
    let acme = TenantId::new("acme").unwrap_or_else(|e| panic!("{e}"));
    let other = TenantId::new("other").unwrap_or_else(|e| panic!("{e}"));
    let owned = sample_sandbox("acme", SandboxStatus::Running, base_time());
    let foreign = sample_sandbox("other", SandboxStatus::Running, base_time());
    let by_admin = sample_sandbox("other", SandboxStatus::Running, base_time());
    let ended = sample_sandbox("acme", SandboxStatus::Expired, base_time());
    for sandbox in [&owned, &foreign, &by_admin, &ended] {
        insert(&repo, sandbox).await;
    }
    let at = micros(base_time() + Duration::minutes(5));
    let expires = at + Duration::minutes(15);
    let touch = |id: SandboxId, tenant: Option<TenantId>| Touch {
        id,
        tenant,
        at,
        expires_at: expires,
    };
    let batch = [
        touch(owned.id, Some(acme.clone())),
        touch(foreign.id, Some(acme.clone())),
        touch(SandboxId::new_random(), Some(other)),
        touch(by_admin.id, None),
        touch(ended.id, Some(acme)),
    ];
    let answers = repo
        .touch_many(&batch)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(answers, vec![true, false, false, true, false]);
    for changed in [&owned, &by_admin] {
        let after = get(&repo, changed.id).await;
        assert_eq!((after.last_activity, after.expires_at), (at, expires));
        assert_eq!(actions(&repo, changed.id).await, vec![EventAction::Created]);
    }
    assert_eq!(
        get(&repo, foreign.id).await,
        foreign,
        "another tenant's row"
    );
    assert_eq!(get(&repo, ended.id).await, ended, "an ended row");
    let empty = repo.touch_many(&[]).await.unwrap_or_else(|e| panic!("{e}"));
    assert!(empty.is_empty());
}

/// Batches in flight at once over the same sandboxes, in opposite orders (what concurrent
/// heartbeat leaders produce), all succeed: the store must not deadlock on its row locks.
pub async fn concurrent_touch_batches_over_the_same_rows_all_succeed(repo: Repo) {
    let mut sandboxes = Vec::new();
    for _ in 0..40 {
        let sandbox = sample_sandbox("acme", SandboxStatus::Running, base_time());
        insert(&repo, &sandbox).await;
        sandboxes.push(sandbox.id);
    }
    let at = micros(base_time() + Duration::minutes(5));
    let batch = |reverse: bool| {
        let mut ids = sandboxes.clone();
        if reverse {
            ids.reverse();
        }
        ids.into_iter()
            .map(|id| Touch {
                id,
                tenant: None,
                at,
                expires_at: at + Duration::minutes(15),
            })
            .collect::<Vec<_>>()
    };
    let writers = (0..8).map(|i| {
        let repo = repo.clone();
        let batch = batch(i % 2 == 1);
        async move {
            for _ in 0..15 {
                let answers = repo
                    .touch_many(&batch)
                    .await
                    .unwrap_or_else(|e| panic!("a concurrent batch failed: {e}"));
                assert!(answers.iter().all(|changed| *changed));
            }
        }
    });
    futures::future::join_all(writers).await;
}

/// A restarted container's new host ports replace a running sandbox's mappings; an ended
/// or unknown sandbox is left alone.
pub async fn replace_port_mappings_only_while_running(repo: Repo) {
    let sandbox = insert_sample(&repo, SandboxStatus::Running).await;
    let mapping = |sandbox_id: SandboxId, container_port: u16, host_port: u16| PortMapping {
        id: Uuid::new_v4(),
        sandbox_id,
        host_port,
        container_port,
    };
    let new_ports = vec![
        mapping(sandbox.id, 9090, 50_002),
        mapping(sandbox.id, 8080, 50_001),
    ];
    let replaced = repo
        .replace_port_mappings(sandbox.id, &new_ports)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(replaced);
    let after = get(&repo, sandbox.id).await;
    let pairs: Vec<(u16, u16)> = after
        .port_mappings
        .iter()
        .map(|m| (m.container_port, m.host_port))
        .collect();
    assert_eq!(pairs, vec![(8080, 50_001), (9090, 50_002)]);
    assert_eq!(
        Sandbox {
            port_mappings: sandbox.port_mappings.clone(),
            ..after
        },
        sandbox,
        "only the ports change"
    );

    for status in all_but(SandboxStatus::Running) {
        let other = insert_sample(&repo, status).await;
        let replaced = repo
            .replace_port_mappings(other.id, &[mapping(other.id, 8080, 50_003)])
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(!replaced, "{status}");
        assert_eq!(get(&repo, other.id).await, other, "{status} unchanged");
    }
    let unknown = SandboxId::new_random();
    let replaced = repo
        .replace_port_mappings(unknown, &[mapping(unknown, 8080, 50_004)])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(!replaced);
}

/// Writes `count` running sandboxes expiring at `now - 1s`, `now - 2s`, ... (or exactly
/// `now` for the first) and returns them.
async fn expired_sandboxes(repo: &Repo, now: OffsetDateTime, count: usize) -> Vec<Sandbox> {
    let mut rows = Vec::new();
    for i in 0..count {
        let mut sandbox = sample_sandbox("acme", SandboxStatus::Running, base_time());
        sandbox.expires_at = now - Duration::seconds(i as i64);
        insert(repo, &sandbox).await;
        rows.push(sandbox);
    }
    rows
}

/// `claim_expired` returns exactly the running sandboxes with `expires_at <= now`, moved to
/// `expired` with `deleted_at = now`, a reason and one `expired` event each; everything else
/// is untouched, and a second claim finds nothing.
pub async fn claim_expired_returns_exactly_the_running_sandboxes_past_expiry(repo: Repo) {
    let now = micros(base_time() + Duration::hours(2));
    let expired = expired_sandboxes(&repo, now, 3).await;
    let mut untouched = Vec::new();
    let mut not_yet = sample_sandbox("acme", SandboxStatus::Running, base_time());
    not_yet.expires_at = now + Duration::microseconds(1);
    untouched.push(not_yet);
    for status in [
        SandboxStatus::Creating,
        SandboxStatus::Error,
        SandboxStatus::Deleted,
        SandboxStatus::Expired,
    ] {
        let mut sandbox = sample_sandbox("acme", status, base_time());
        sandbox.expires_at = now - Duration::hours(1);
        untouched.push(sandbox);
    }
    for sandbox in &untouched {
        insert(&repo, sandbox).await;
    }

    let claimed = repo
        .claim_expired(&ExpiryClaim::new(now, 100))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let claimed_ids: BTreeSet<SandboxId> = claimed.iter().map(|s| s.id).collect();
    let expired_ids: BTreeSet<SandboxId> = expired.iter().map(|s| s.id).collect();
    assert_eq!(claimed_ids, expired_ids);
    assert_eq!(claimed.len(), expired.len(), "no sandbox twice");
    for sandbox in &claimed {
        let before = expired
            .iter()
            .find(|s| s.id == sandbox.id)
            .unwrap_or_else(|| panic!("claimed unknown {}", sandbox.id));
        assert_eq!(sandbox.status(), SandboxStatus::Expired);
        assert_eq!(sandbox.deleted_at(), Some(now));
        assert!(sandbox.status_reason().is_some(), "a reason is recorded");
        let expected = in_state(
            before,
            SandboxStatus::Expired,
            sandbox.status_reason().map(str::to_owned),
            Some(now),
        );
        assert_written(&repo, sandbox, &expected, "claimed").await;
        let events = events_of(&repo, sandbox.id).await;
        assert_eq!(
            stamps(&events),
            vec![
                (EventAction::Created, before.created_at),
                (EventAction::Expired, now)
            ]
        );
        assert_eq!(
            events[1].details,
            NewEvent::expired(sandbox).details,
            "the domain's payload"
        );
        assert_eq!(sandbox.status_reason(), Some(lifecycle::EXPIRY_REASON));
    }
    for sandbox in &untouched {
        assert_eq!(
            &get(&repo, sandbox.id).await,
            sandbox,
            "{} untouched",
            sandbox.status()
        );
    }
    assert_eq!(
        repo.claim_expired(&ExpiryClaim::new(now, 100)).await,
        Ok(vec![])
    );
}

/// With a limit, `claim_expired` takes the earliest `expires_at` first, never more than the
/// limit, and successive claims drain the rest.
pub async fn claim_expired_takes_the_earliest_expiry_first_and_honours_the_limit(repo: Repo) {
    let now = micros(base_time() + Duration::hours(2));
    let mut expired = expired_sandboxes(&repo, now, 7).await;
    expired.sort_by_key(|s| s.expires_at);
    let order: Vec<SandboxId> = expired.iter().map(|s| s.id).collect();
    let mut claimed = Vec::new();
    for want in [3, 3, 1, 0] {
        let batch = repo
            .claim_expired(&ExpiryClaim::new(now, 3))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(batch.len(), want, "batch sizes");
        let mut batch: Vec<Sandbox> = batch;
        batch.sort_by_key(|s| s.expires_at);
        claimed.extend(batch.into_iter().map(|s| s.id));
    }
    assert_eq!(claimed, order, "earliest expiry first");
    assert_eq!(
        repo.claim_expired(&ExpiryClaim::new(now, 0)).await,
        Ok(vec![])
    );
}

async fn race_claimers(first: Repo, second: Repo) {
    let now = micros(base_time() + Duration::hours(2));
    let expired = expired_sandboxes(&first, now, 40).await;
    let claimer = |repo: Repo| async move {
        let mut mine = Vec::new();
        loop {
            let batch = repo
                .claim_expired(&ExpiryClaim::new(now, 3))
                .await
                .unwrap_or_else(|e| panic!("claim: {e}"));
            if batch.is_empty() {
                return mine;
            }
            mine.extend(batch.into_iter().map(|s| s.id));
        }
    };
    let (a, b, c, d) = futures::join!(
        claimer(first.clone()),
        claimer(second.clone()),
        claimer(first.clone()),
        claimer(second.clone()),
    );
    let mut all: Vec<SandboxId> = [a, b, c, d].concat();
    let total = all.len();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), total, "a sandbox was claimed twice");
    let want: BTreeSet<SandboxId> = expired.iter().map(|s| s.id).collect();
    let got: BTreeSet<SandboxId> = all.into_iter().collect();
    assert_eq!(got, want, "every expired sandbox claimed once");
    for sandbox in &expired {
        let expired_events = actions(&first, sandbox.id)
            .await
            .into_iter()
            .filter(|a| *a == EventAction::Expired)
            .count();
        assert_eq!(expired_events, 1, "one expired event for {}", sandbox.id);
    }
}

/// Four claimers racing on one instance never receive the same sandbox, and together
/// claim every expired one.
pub async fn concurrent_claimers_on_one_instance_never_share_a_sandbox(repo: Repo) {
    race_claimers(repo.clone(), repo).await;
}

/// Claimers racing on two instances (two processes) never receive the same sandbox.
pub async fn concurrent_claimers_on_two_instances_never_share_a_sandbox(first: Repo, second: Repo) {
    race_claimers(first, second).await;
}

/// A write acknowledged by one instance (here a heartbeat) is seen by another: nothing is
/// buffered in memory.
pub async fn an_acknowledged_write_is_visible_to_another_instance(first: Repo, second: Repo) {
    let sandbox = sample_sandbox("acme", SandboxStatus::Running, base_time());
    insert(&first, &sandbox).await;
    let at = micros(base_time() + Duration::minutes(7));
    first
        .record_activity(sandbox.id, at, at + Duration::minutes(30), None)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let seen = get(&second, sandbox.id).await;
    assert_eq!(seen.last_activity, at);
    assert_eq!(seen.expires_at, at + Duration::minutes(30));
}

/// `events` are oldest first (in the order they were written), each stamped with the time
/// it was given; `append_event` and `events` of an unknown sandbox are not-found.
pub async fn events_are_oldest_first_and_unknown_ids_are_not_found(repo: Repo) {
    let sandbox = insert_sample(&repo, SandboxStatus::Creating).await;
    let appended = [
        EventAction::Executed,
        EventAction::Uploaded,
        EventAction::Downloaded,
        EventAction::Executed,
    ];
    for (i, action) in appended.into_iter().enumerate() {
        let at = micros(base_time() + Duration::seconds(i as i64));
        repo.append_event(sandbox.id, &NewEvent::new(action, json!({ "i": i })), at)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let events = events_of(&repo, sandbox.id).await;
    let got: Vec<EventAction> = events.iter().map(|e| e.action).collect();
    let mut want = vec![EventAction::Created];
    want.extend(appended);
    assert_eq!(got, want);
    for (i, event) in events.iter().skip(1).enumerate() {
        assert_eq!(event.details, json!({ "i": i }));
        assert_eq!(event.sandbox_id, sandbox.id);
    }
    for (i, event) in events.iter().skip(1).enumerate() {
        assert_eq!(
            event.created_at,
            micros(base_time() + Duration::seconds(i as i64)),
            "stamped with the time given"
        );
    }

    let unknown = SandboxId::new_random();
    assert_not_found(
        repo.append_event(unknown, &event(EventAction::Executed), base_time())
            .await,
        "append to unknown",
    );
    assert_not_found(repo.events(unknown).await, "events of unknown");
}

/// `ping` answers on a working store.
pub async fn ping_answers(repo: Repo) {
    assert_eq!(repo.ping().await, Ok(()));
}
