//! Create leases: written by create, renewed while the create runs (and only then), and
//! settled by the lease pass and by reconciliation once lapsed, against mocked ports.

use std::sync::Mutex;

use async_trait::async_trait;

use super::*;
use crate::runtime::{ContainerState, FileStat};
use crate::sandbox::{CreateLease, InstanceId, StatusFilter};

/// A runtime whose `create` never finishes: a create using it stays in flight until its
/// future is dropped. Nothing else may be called.
struct StuckRuntime;

#[async_trait]
impl ContainerRuntime for StuckRuntime {
    async fn ping(&self) -> Result<()> {
        unreachable!("ping")
    }
    async fn create(&self, _: &ContainerSpec) -> Result<crate::runtime::CreatedContainer> {
        futures::future::pending().await
    }
    async fn start(&self, _: &str) -> Result<Vec<PublishedPort>> {
        unreachable!("start")
    }
    async fn state(&self, _: &str) -> Result<ContainerState> {
        unreachable!("state")
    }
    async fn exec(&self, _: &str, _: &ExecRequest) -> Result<ExecOutput> {
        unreachable!("exec")
    }
    async fn exec_stream(&self, _: &str, _: &ExecRequest) -> Result<ExecEvents> {
        unreachable!("exec_stream")
    }
    async fn upload(&self, _: &str, _: &str, _: UploadFile) -> Result<FileStat> {
        unreachable!("upload")
    }
    async fn own_directory(&self, _: &str, _: &str, _: Option<String>) -> Result<()> {
        unreachable!("own_directory")
    }
    async fn stat(&self, _: &str, _: &str) -> Result<FileStat> {
        unreachable!("stat")
    }
    async fn download(&self, _: &str, _: &str) -> Result<FileDownload> {
        unreachable!("download")
    }
    async fn remove(&self, _: &str) -> Result<()> {
        unreachable!("remove")
    }
    async fn list_managed(&self) -> Result<Vec<ManagedContainer>> {
        unreachable!("list_managed")
    }
}

fn leased(expires_at: OffsetDateTime) -> Sandbox {
    let mut s = sandbox(SandboxStatus::Creating);
    s.container_id = None;
    s.state = SandboxState::creating(Some(CreateLease {
        instance: InstanceId::new_random(),
        expires_at,
    }));
    s
}

/// `fail_lapsed_create` settles exactly `id`, at the clock's `now`, with a `Fail` whose reason
/// says the lease lapsed.
fn expect_settle(m: &mut Mocks, id: SandboxId, now: OffsetDateTime, settles: bool) {
    m.repo
        .expect_fail_lapsed_create()
        .withf(move |sid, at, change| {
            *sid == id && *at == now && is_failure(change, "stopped renewing its lease")
        })
        .times(1)
        .returning(move |_, _, change| Ok(settles.then(|| failed(id, change))));
}

#[tokio::test]
async fn create_writes_a_lease_naming_this_instance_for_one_lease_from_now() {
    let mut m = Mocks::creating();
    m.config.create_lease = Duration::seconds(20);
    let inserted = m.captures_insert(Err(Error::internal("stop here")));
    let service = m.service();
    let _ = service
        .create(&Access::Admin, CreateSandbox::default())
        .await;
    let inserted = inserted.lock().unwrap().clone().unwrap();
    assert_eq!(
        inserted.create_lease(),
        Some(CreateLease {
            instance: service.instance(),
            expires_at: T0 + Duration::seconds(20),
        })
    );
    assert!(
        service.in_flight.ids().is_empty(),
        "a create that ended is not renewed"
    );
}

#[tokio::test]
async fn a_create_in_flight_is_renewed_and_stops_being_renewed_once_its_future_is_dropped() {
    let mut m = Mocks::creating();
    m.config.create_lease = Duration::seconds(15);
    let inserted = m.captures_insert(Ok(Admission::Inserted));
    let renewals = Arc::new(Mutex::new(Vec::new()));
    let sink = renewals.clone();
    m.repo
        .expect_renew_leases()
        .times(1)
        .returning(move |instance, ids, until| {
            sink.lock().unwrap().push((instance, ids.to_vec(), until));
            Ok(1)
        });
    let service = m.service_over(StuckRuntime);

    let mut create = Box::pin(service.create(&Access::Admin, CreateSandbox::default()));
    assert!(
        futures::poll!(&mut create).is_pending(),
        "stuck in the engine"
    );
    let id = inserted.lock().unwrap().as_ref().unwrap().id;
    assert_eq!(service.renew_create_leases().await, Ok(1));
    assert_eq!(
        *renewals.lock().unwrap(),
        [(service.instance(), vec![id], T0 + Duration::seconds(15))]
    );

    // Its future is dropped mid-way (a caller's timeout, a cancelled task).
    drop(create);
    assert_eq!(
        service.renew_create_leases().await,
        Ok(0),
        "nothing in flight: no renewal (and no store call)"
    );
}

#[tokio::test]
async fn the_renewal_interval_is_a_third_of_the_lease() {
    let mut m = Mocks::new();
    m.config.create_lease = Duration::seconds(15);
    assert_eq!(
        m.service().lease_renewal_interval(),
        StdDuration::from_secs(5)
    );
}

#[tokio::test]
async fn the_lease_pass_settles_only_lapsed_leases_and_removes_only_their_containers() {
    let mut m = Mocks::new();
    let now = T0 + Duration::minutes(1);
    m.clock = clock_at(now);
    let lapsed = leased(now - Duration::seconds(1));
    let at_expiry = leased(now);
    let live = leased(now + Duration::seconds(5));
    let mut unleased = sandbox(SandboxStatus::Creating);
    unleased.container_id = None;
    unleased.created_at = T0 - Duration::hours(1);
    let rows = vec![
        lapsed.clone(),
        at_expiry.clone(),
        live.clone(),
        unleased.clone(),
    ];
    m.repo
        .expect_list()
        .withf(|f| f.status == StatusFilter::Only(SandboxStatus::Creating) && f.tenant.is_none())
        .returning(move |_| Ok(rows.clone()));
    expect_settle(&mut m, lapsed.id, now, true);
    expect_settle(&mut m, at_expiry.id, now, true);
    let containers = vec![
        managed("c-lapsed", Some(lapsed.id), true),
        managed("c-at-expiry", Some(at_expiry.id), true),
        managed("c-live", Some(live.id), true),
        managed("c-unleased", Some(unleased.id), true),
    ];
    m.lists_containers(containers);
    let removed = m.removals();

    let report = m.service().lease_pass().await.unwrap();

    let mut removed = removed.lock().unwrap().clone();
    removed.sort();
    assert_eq!(removed, ["c-at-expiry", "c-lapsed"]);
    assert_eq!(
        report,
        LeaseReport {
            renewed: 0,
            settled: 2,
            containers_removed: 2,
            failures: 0,
        }
    );
}

#[tokio::test]
async fn a_lease_renewed_after_the_listing_is_not_settled_and_nothing_is_removed() {
    let mut m = Mocks::new();
    let lapsed = leased(T0 - Duration::seconds(1));
    let rows = vec![lapsed.clone()];
    m.repo.expect_list().returning(move |_| Ok(rows.clone()));
    // The store finds the lease renewed when it writes.
    expect_settle(&mut m, lapsed.id, T0, false);
    // No engine expectation: listing or removing would fail the test.

    let report = m.service().settle_lapsed_creates().await.unwrap();

    assert_eq!(report, LeaseReport::default());
    assert!(!report.acted());
}

#[tokio::test]
async fn a_process_that_cannot_renew_its_own_leases_settles_nobody_elses() {
    let mut m = Mocks::creating();
    m.repo
        .expect_insert()
        .returning(|_, _| Ok(Admission::Inserted));
    m.repo
        .expect_renew_leases()
        .returning(|_, _, _| Err(Error::unavailable("database", "timed out")));
    // No `list` expectation: the pass must stop before looking for lapsed leases.
    let service = m.service_over(StuckRuntime);
    let mut create = Box::pin(service.create(&Access::Admin, CreateSandbox::default()));
    assert!(futures::poll!(&mut create).is_pending());

    let err = service.lease_pass().await.unwrap_err();

    assert!(matches!(err, Error::Unavailable { .. }), "{err:?}");
}

#[tokio::test]
async fn a_create_settled_under_its_creator_fails_at_mark_running_and_removes_its_container() {
    let mut m = Mocks::creating().with_insert();
    m.starts_a_container();
    m.repo.expect_mark_running().times(1).returning(|id, _| {
        Err(Error::Conflict(format!(
            "sandbox {id}: cannot start a sandbox that is error"
        )))
    });
    m.removes(CID);
    m.repo
        .expect_transition()
        .times(1)
        .returning(|id, _| Err(Error::Conflict(format!("sandbox {id}: already error"))));

    let err = m.create().await.unwrap_err();

    assert!(matches!(err, Error::Conflict(_)), "{err:?}");
}

#[tokio::test]
async fn reconciliation_settles_a_lapsed_lease_at_once_and_never_times_out_a_live_one() {
    let mut m = Mocks::new();
    m.config.create_timeout = Duration::minutes(10);
    let now = T0 + Duration::minutes(30);
    m.clock = clock_at(now);
    // Both were created 30 minutes ago, past the create timeout; one creator stopped
    // renewing a minute in, the other renews still.
    let lapsed = leased(T0 + Duration::minutes(1));
    let live = leased(now + Duration::seconds(10));
    let creating = vec![lapsed.clone(), live.clone()];
    m.lists(creating.clone(), vec![], creating);
    expect_settle(&mut m, lapsed.id, now, true);
    // No `transition` expectation: the create timeout must not fail the live one.
    let containers = vec![
        managed("c-lapsed", Some(lapsed.id), true),
        managed("c-live", Some(live.id), true),
    ];
    m.lists_containers(containers);
    let removed = m.removals();

    let report = m.service().reconcile().await.unwrap();

    assert_eq!(*removed.lock().unwrap(), ["c-lapsed"]);
    assert_eq!(report.lease_lapsed, 1);
    assert_eq!(report.stale_creating, 0);
    assert_eq!(report.creating_in_grace, 1);
}
