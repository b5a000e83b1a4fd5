//! Reconciliation and the vanished-container path of requests, against mocked ports.

use super::*;
use crate::runtime::ContainerState;

fn with_container(mut s: Sandbox, cid: &str) -> Sandbox {
    s.container_id = Some(cid.into());
    s
}

/// Mocks where the store lists `s` as its only running sandbox, and the engine lists its
/// container, stopped.
fn stopped_container(s: Sandbox) -> Mocks {
    let mut m = Mocks::new();
    let cid = s.container_id.clone().expect("a sandbox with a container");
    m.lists_containers(vec![managed(&cid, Some(s.id), false)]);
    m.lists(vec![], vec![s.clone()], vec![s]);
    m
}

#[tokio::test]
async fn removes_containers_of_unknown_and_ended_sandboxes_and_nothing_else() {
    let mut m = Mocks::new();
    let live = with_container(sandbox(SandboxStatus::Running), "c-live");
    let deleted = sandbox(SandboxStatus::Deleted);
    let expired = sandbox(SandboxStatus::Expired);
    let failed = sandbox(SandboxStatus::Error);
    let unknown = SandboxId::new_random();
    let containers = vec![
        managed("c-live", Some(live.id), true),
        managed("c-deleted", Some(deleted.id), false),
        managed("c-expired", Some(expired.id), true),
        managed("c-error", Some(failed.id), true),
        managed("c-unknown", Some(unknown), true),
        managed("c-unlabelled", None, true),
    ];
    m.lists(
        vec![],
        vec![live.clone()],
        vec![live, deleted, expired, failed],
    );
    m.runtime
        .expect_list_managed()
        .times(1)
        .returning(move || Ok(containers.clone()));
    let removed = m.removals();

    let report = m.service().reconcile().await.unwrap();

    let mut removed = removed.lock().unwrap().clone();
    removed.sort();
    assert_eq!(removed, ["c-deleted", "c-error", "c-expired", "c-unknown"]);
    assert_eq!(report.orphans_removed, 4);
    assert_eq!(report.containers, 6);
    assert_eq!(report.running, 1);
    assert_eq!(report.failures, 0);
}

#[tokio::test]
async fn a_running_sandbox_whose_container_is_gone_becomes_error_with_the_reason() {
    let mut m = Mocks::new();
    let s = with_container(sandbox(SandboxStatus::Running), "gone");
    let id = s.id;
    m.lists(vec![], vec![s.clone()], vec![s]);
    m.lists_containers(vec![]);
    m.runtime
        .expect_state()
        .with(eq("gone"))
        .times(1)
        .returning(|_| Ok(ContainerState::Missing));
    m.expects_failure(id, "container vanished");

    let report = m.service().reconcile().await.unwrap();

    assert_eq!(report.vanished, 1);
    assert!(report.acted());
}

#[tokio::test]
async fn a_stopped_container_is_started_again_and_the_sandbox_stays_running() {
    let mut m = stopped_container(with_container(sandbox(SandboxStatus::Running), "stopped"));
    m.runtime
        .expect_start()
        .with(eq("stopped"))
        .times(1)
        .returning(|_| Ok(vec![]));

    let report = m.service().reconcile().await.unwrap();

    assert_eq!(report.restarted, 1);
    assert_eq!(report.restart_failed, 0);
}

#[tokio::test]
async fn a_restarted_container_on_new_host_ports_has_them_recorded() {
    let mut s = with_container(sandbox(SandboxStatus::Running), "stopped");
    s.port_mappings = vec![PortMapping {
        id: Uuid::new_v4(),
        sandbox_id: s.id,
        host_port: 49_153,
        container_port: 8080,
    }];
    let id = s.id;
    let mut m = stopped_container(s);
    m.runtime.expect_start().times(1).returning(|_| {
        Ok(vec![PublishedPort {
            container_port: 8080,
            host_port: 50_001,
        }])
    });
    m.repo
        .expect_replace_port_mappings()
        .withf(move |sid, ports| {
            *sid == id
                && ports.len() == 1
                && (
                    ports[0].sandbox_id,
                    ports[0].container_port,
                    ports[0].host_port,
                ) == (id, 8080, 50_001)
        })
        .times(1)
        .returning(|_, _| Ok(true));

    let report = m.service().reconcile().await.unwrap();

    assert_eq!((report.restarted, report.failures), (1, 0));
}

#[tokio::test]
async fn a_restarted_container_whose_ports_cannot_be_recorded_is_a_failure_to_retry() {
    let mut m = stopped_container(with_container(sandbox(SandboxStatus::Running), "stopped"));
    m.runtime.expect_start().returning(|_| {
        Ok(vec![PublishedPort {
            container_port: 8080,
            host_port: 50_001,
        }])
    });
    m.repo
        .expect_replace_port_mappings()
        .returning(|_, _| Err(Error::unavailable("SQLite", "database is locked")));

    let report = m.service().reconcile().await.unwrap();

    assert_eq!((report.restarted, report.failures), (1, 1));
}

#[tokio::test]
async fn a_stopped_container_that_will_not_start_makes_the_sandbox_error() {
    let s = with_container(sandbox(SandboxStatus::Running), "broken");
    let id = s.id;
    let mut m = stopped_container(s);
    m.runtime
        .expect_start()
        .times(1)
        .returning(|_| Err(Error::internal("docker answered 500: cannot start")));
    m.expects_failure(id, "could not be started again");

    let report = m.service().reconcile().await.unwrap();

    assert_eq!(report.restart_failed, 1);
    assert_eq!(report.restarted, 0);
}

#[tokio::test]
async fn an_unreachable_engine_on_restart_is_a_failure_to_retry_not_an_error_sandbox() {
    let mut m = stopped_container(with_container(sandbox(SandboxStatus::Running), "stopped"));
    m.runtime
        .expect_start()
        .returning(|_| Err(Error::unavailable("docker", "connection refused")));
    // No transition expected: the mock panics if one is attempted.

    let report = m.service().reconcile().await.unwrap();

    assert_eq!(report.failures, 1);
    assert_eq!(report.restart_failed, 0);
}

#[tokio::test]
async fn creating_past_the_timeout_becomes_error_and_loses_its_container_but_fresh_ones_are_left_alone()
 {
    let mut m = Mocks::new();
    m.config.create_timeout = Duration::minutes(10);
    m.clock = clock_at(T0 + Duration::minutes(30));
    let mut stale = sandbox(SandboxStatus::Creating);
    stale.container_id = None;
    let mut fresh = stale.clone();
    fresh.id = SandboxId::new_random();
    fresh.created_at = T0 + Duration::minutes(25);
    let stale_id = stale.id;
    let containers = vec![
        managed("c-stale", Some(stale.id), false),
        managed("c-fresh", Some(fresh.id), false),
    ];
    m.lists(
        vec![stale.clone(), fresh.clone()],
        vec![],
        vec![stale, fresh],
    );
    m.lists_containers(containers);
    m.expects_failure(stale_id, "creation did not finish within 600s");
    let removed = m.removals();

    let report = m.service().reconcile().await.unwrap();

    assert_eq!(*removed.lock().unwrap(), ["c-stale"]);
    assert_eq!(report.stale_creating, 1);
    assert_eq!(report.creating_in_grace, 1);
}

#[tokio::test]
async fn a_container_whose_sandbox_was_inserted_after_the_listing_is_left_alone() {
    // Another replica inserted the row (creating) and created the container between our
    // listing of rows and our listing of containers.
    let mut m = Mocks::new();
    let mut newcomer = sandbox(SandboxStatus::Creating);
    newcomer.container_id = None;
    let containers = vec![managed("c-new", Some(newcomer.id), true)];
    m.lists(vec![], vec![], vec![newcomer]);
    m.lists_containers(containers);
    // No remove expected.

    let report = m.service().reconcile().await.unwrap();

    assert_eq!(report.creating_in_grace, 1);
    assert!(!report.acted());
}

#[tokio::test]
async fn an_unreachable_engine_fails_the_pass_without_touching_the_store() {
    let mut m = Mocks::new();
    m.lists(vec![], vec![sandbox(SandboxStatus::Running)], vec![]);
    m.runtime
        .expect_list_managed()
        .returning(|| Err(Error::unavailable("docker", "connection refused")));

    let err = m.service().reconcile().await.unwrap_err();

    assert!(matches!(err, Error::Unavailable { .. }), "{err:?}");
}

#[tokio::test]
async fn a_request_on_a_sandbox_whose_container_vanished_is_a_conflict_with_the_reason() {
    let s = sandbox(SandboxStatus::Running);
    let id = s.id;
    let mut m = Mocks::finding(&s);
    m.records_activity(s.clone());
    m.runtime
        .expect_exec()
        .returning(|_, _| Err(Error::not_found("No such container: c0ffee")));
    m.runtime
        .expect_state()
        .with(eq(CID))
        .returning(|_| Ok(ContainerState::Missing));
    m.expects_failure(id, "container vanished");

    let err = m.execute(id, command("ls")).await.unwrap_err();

    match err {
        Error::Conflict(message) => {
            assert!(message.contains("is error"), "{message}");
            assert!(message.contains("container vanished"), "{message}");
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
}

#[tokio::test]
async fn a_missing_file_in_a_live_container_stays_not_found() {
    let (mut m, id) = Mocks::finding_running();
    m.records_activity(sandbox(SandboxStatus::Running));
    m.runtime
        .expect_download()
        .returning(|_, _| Err(Error::not_found("/workspace/x does not exist")));
    m.runtime
        .expect_state()
        .returning(|_| Ok(ContainerState::Running));
    // No transition expected.

    let err = m
        .service()
        .download(&Access::Admin, id, "/workspace/x")
        .await
        .unwrap_err();

    assert!(matches!(err, Error::NotFound(_)), "{err:?}");
}
