//! The lifecycle rules of the use cases, against mocked ports.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration as StdDuration;

use mockall::Sequence;
use mockall::predicate::eq;
use time::macros::datetime;
use time::{Duration, OffsetDateTime};

use super::*;
use crate::ports::{MockClock, MockContainerRuntime, MockSandboxRepository, MockTemplateCatalog};
use crate::runtime::{ManagedContainer, OutputSpan, OutputStream, ProcessInfo};
use crate::sandbox::StatusFilter;
use crate::template::LifecycleCommand;
use crate::testing::fixtures::exec_output;

const T0: OffsetDateTime = datetime!(2026-01-01 12:00 UTC);
const CID: &str = "c0ffee";

fn template(hooks: Vec<LifecycleCommand>) -> Template {
    Template {
        container_env: BTreeMap::from([("A".into(), "1".into())]),
        lifecycle_commands: hooks,
        ..crate::testing::fixtures::template("go", "golang:1")
    }
}

fn sandbox(status: SandboxStatus) -> Sandbox {
    Sandbox {
        id: SandboxId::new_random(),
        tenant: TenantId::default_tenant(),
        name: SandboxName::new("s").unwrap(),
        template: TemplateName::new("go").unwrap(),
        state: SandboxState::restore(status, None, status.is_terminal().then_some(T0), None)
            .unwrap(),
        container_id: Some(CID.into()),
        image: "golang:1".into(),
        workspace_mount: "/workspace".into(),
        devcontainer_config: serde_json::json!({}),
        env_vars: BTreeMap::new(),
        remote_env: Default::default(),
        remote_user: None,
        port_mappings: vec![],
        last_activity: T0,
        created_at: T0,
        expires_at: T0 + Duration::minutes(15),
    }
}

/// `s`, its status' reason set to `reason`.
fn with_reason(mut s: Sandbox, reason: Option<String>) -> Sandbox {
    s.state = SandboxState::restore(s.status(), reason, s.deleted_at(), s.create_lease()).unwrap();
    s
}

fn clock_at(t: OffsetDateTime) -> MockClock {
    let mut clock = MockClock::new();
    clock.expect_now().return_const(t);
    clock
}

struct Mocks {
    repo: MockSandboxRepository,
    runtime: MockContainerRuntime,
    catalog: MockTemplateCatalog,
    clock: MockClock,
    config: ServiceConfig,
}

impl Mocks {
    fn new() -> Self {
        Self {
            repo: MockSandboxRepository::new(),
            runtime: MockContainerRuntime::new(),
            catalog: MockTemplateCatalog::new(),
            clock: clock_at(T0),
            config: ServiceConfig::default(),
        }
    }

    /// The repository finds `s`, whatever id it is asked for.
    fn finding(s: &Sandbox) -> Self {
        let mut m = Self::new();
        let found = s.clone();
        m.repo.expect_get().returning(move |_| Ok(found.clone()));
        m
    }

    /// Mocks whose repository finds a running sandbox (container `CID`) at any id, and that
    /// sandbox's id.
    fn finding_running() -> (Self, SandboxId) {
        let s = sandbox(SandboxStatus::Running);
        (Self::finding(&s), s.id)
    }

    fn service(mut self) -> SandboxService {
        // The mocked engine goes to the service; an unused one is left in its place.
        let runtime = std::mem::replace(&mut self.runtime, MockContainerRuntime::new());
        self.service_over(runtime)
    }

    /// The service over these mocks, with `runtime` as its engine (the mocked one unused).
    fn service_over(self, runtime: impl ContainerRuntime + 'static) -> SandboxService {
        SandboxService::new(
            Arc::new(self.repo),
            Arc::new(runtime),
            Arc::new(self.catalog),
            Arc::new(self.clock),
            self.config,
        )
    }

    /// The catalog resolves any name to the `go` template without lifecycle commands.
    fn creating() -> Self {
        Self::new().with_template(template(vec![]))
    }

    /// Runs `command` in sandbox `id`, as the admin.
    async fn execute(self, id: SandboxId, command: ExecuteCommand) -> Result<ExecOutput> {
        self.service().execute(&Access::Admin, id, command).await
    }

    /// Creates a sandbox from the default request, as the admin.
    async fn create(self) -> Result<Sandbox> {
        self.service()
            .create(&Access::Admin, CreateSandbox::default())
            .await
    }

    fn with_template(mut self, template: Template) -> Self {
        self.catalog
            .expect_resolve()
            .returning(move |_| Ok(template.clone()));
        self
    }

    /// The repository echoes writes back as a sandbox in the written state.
    fn with_insert(mut self) -> Self {
        self.repo
            .expect_insert()
            .withf(|s, _| s.status() == SandboxStatus::Creating && s.container_id.is_none())
            .times(1)
            .returning(|_, _| Ok(Admission::Inserted));
        self
    }

    /// One `transition` fails the sandbox, with any reason.
    fn expect_failed(mut self) -> Self {
        self.repo
            .expect_transition()
            .withf(|_, change| is_failure(change, ""))
            .times(1)
            .returning(|_, _| {
                Ok(with_reason(
                    sandbox(SandboxStatus::Error),
                    Some("failed".into()),
                ))
            });
        self
    }

    /// One `transition` fails `id` with a reason, also logged as the event's `error`, that
    /// contains `reason_contains`.
    fn expects_failure(&mut self, id: SandboxId, reason_contains: &'static str) {
        self.repo
            .expect_transition()
            .withf(move |sid, change| {
                *sid == id
                    && is_failure(change, reason_contains)
                    && change.record.details["error"]
                        .as_str()
                        .is_some_and(|r| r.contains(reason_contains))
            })
            .times(1)
            .returning(move |_, change| Ok(failed(id, change)));
    }

    /// The engine creates container `CID` and starts it, publishing no ports.
    fn starts_a_container(&mut self) {
        self.runtime.expect_create().returning(|_| Ok(created()));
        self.runtime.expect_start().returning(|_| Ok(vec![]));
        self.runtime
            .expect_own_directory()
            .returning(|_, _, _| Ok(()));
    }

    /// The engine is asked once to remove `cid`, and does.
    fn removes(&mut self, cid: &'static str) {
        self.runtime
            .expect_remove()
            .with(eq(cid))
            .times(1)
            .returning(|_| Ok(()));
    }

    /// The engine removes whatever it is asked to; the returned list records what that was.
    fn removals(&mut self) -> Arc<Mutex<Vec<String>>> {
        let removed = Arc::new(Mutex::new(Vec::new()));
        let sink = removed.clone();
        self.runtime.expect_remove().returning(move |cid| {
            sink.lock().unwrap().push(cid.to_owned());
            Ok(())
        });
        removed
    }

    /// The engine lists `containers` as the managed ones.
    fn lists_containers(&mut self, containers: Vec<ManagedContainer>) {
        self.runtime
            .expect_list_managed()
            .returning(move || Ok(containers.clone()));
    }

    /// The store lists these `creating` and `running` sandboxes, and answers `get` from `rows`.
    fn lists(&mut self, creating: Vec<Sandbox>, running: Vec<Sandbox>, rows: Vec<Sandbox>) {
        self.repo
            .expect_list()
            .returning(move |filter| match filter.status {
                StatusFilter::Only(SandboxStatus::Creating) => Ok(creating.clone()),
                StatusFilter::Only(SandboxStatus::Running) => Ok(running.clone()),
                other => panic!("unexpected listing {other:?}"),
            });
        self.gets_from(rows);
    }

    /// The store's `get` finds the sandbox of `rows` with the id asked for, or not-found.
    fn gets_from(&mut self, rows: Vec<Sandbox>) {
        self.repo.expect_get().returning(move |id| {
            rows.iter()
                .find(|s| s.id == id)
                .cloned()
                .ok_or_else(|| Error::not_found("no such sandbox"))
        });
    }

    /// `insert` is called once and answers `answer`; the returned slot holds what it was given.
    fn captures_insert(&mut self, answer: Result<Admission>) -> Arc<Mutex<Option<Sandbox>>> {
        let inserted = Arc::new(Mutex::new(None));
        let sink = inserted.clone();
        self.repo.expect_insert().times(1).returning(move |s, _| {
            *sink.lock().unwrap() = Some(s.clone());
            answer.clone()
        });
        inserted
    }

    /// `record_activity` is called once, with an event for which `event` holds, and answers
    /// a running sandbox.
    fn records_activity_once(
        &mut self,
        event: impl Fn(Option<&NewEvent>) -> bool + Send + 'static,
    ) {
        self.repo
            .expect_record_activity()
            .withf(move |_, _, _, e| event(e.as_ref()))
            .times(1)
            .returning(|_, _, _, _| Ok(sandbox(SandboxStatus::Running)));
    }

    /// `record_activity` succeeds, answering `touched`.
    fn records_activity(&mut self, touched: Sandbox) {
        self.repo
            .expect_record_activity()
            .returning(move |_, _, _, _| Ok(touched.clone()));
    }
}

/// `change` fails a sandbox (a `Fail` logged as `failed`) with a reason containing
/// `reason_contains` (any reason for `""`).
fn is_failure(change: &StatusChange, reason_contains: &str) -> bool {
    change.event == LifecycleEvent::Fail
        && change.record.action == EventAction::Failed
        && change
            .reason
            .as_deref()
            .is_some_and(|r| r.contains(reason_contains))
}

/// Sandbox `id` as `change` failed it: in error, with the change's reason.
fn failed(id: SandboxId, change: &StatusChange) -> Sandbox {
    let mut s = with_reason(sandbox(SandboxStatus::Error), change.reason.clone());
    s.id = id;
    s
}

fn managed(id: &str, sandbox_id: Option<SandboxId>, running: bool) -> ManagedContainer {
    ManagedContainer {
        id: id.into(),
        sandbox_id,
        running,
    }
}

/// A request to run the shell command `line`, all else default.
fn command(line: &str) -> ExecuteCommand {
    ExecuteCommand {
        command: line.into(),
        ..Default::default()
    }
}

fn created() -> crate::runtime::CreatedContainer {
    crate::runtime::CreatedContainer {
        id: CID.into(),
        image: "golang:1".into(),
    }
}

#[tokio::test]
async fn create_writes_creating_then_running_with_ports_and_expiry() {
    let mut m = Mocks::creating().with_insert();
    let mut seq = Sequence::new();
    m.runtime
        .expect_create()
        .withf(|spec| spec.template.name.as_str() == "go")
        .times(1)
        .in_sequence(&mut seq)
        .returning(|_| Ok(created()));
    m.runtime
        .expect_start()
        .with(eq(CID))
        .times(1)
        .in_sequence(&mut seq)
        .returning(|_| {
            Ok(vec![PublishedPort {
                container_port: 8080,
                host_port: 49153,
            }])
        });
    m.runtime
        .expect_own_directory()
        .withf(|cid, path, user| cid == CID && path == "/workspace" && user.is_none())
        .times(1)
        .in_sequence(&mut seq)
        .returning(|_, _, _| Ok(()));
    m.repo
        .expect_mark_running()
        .withf(|_, u| {
            u.container_id == CID
                && u.at == T0
                && u.expires_at == T0 + Duration::minutes(15)
                && u.port_mappings.len() == 1
                && u.port_mappings[0].host_port == 49153
                && u.port_mappings[0].container_port == 8080
        })
        .times(1)
        .in_sequence(&mut seq)
        .returning(|id, u| {
            let mut s = sandbox(SandboxStatus::Running);
            s.id = id;
            s.port_mappings = u.port_mappings.clone();
            Ok(s)
        });
    let s = m.create().await.unwrap();
    assert_eq!(s.status(), SandboxStatus::Running);
    assert_eq!(s.port_mappings[0].host_port, 49153);
}

#[tokio::test]
async fn create_defaults_the_name_from_the_template_and_the_tenant_from_the_caller() {
    let mut m = Mocks::creating();
    m.repo
        .expect_insert()
        .withf(|s, _| s.name.as_str() == "sandbox-go" && s.tenant.as_str() == "acme")
        .times(1)
        .returning(|_, _| Err(Error::unavailable("database", "down")));
    let err = m
        .service()
        .create(
            &Access::Tenant(TenantId::new("acme").unwrap()),
            CreateSandbox::default(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Unavailable { .. }));
}

#[tokio::test]
async fn create_with_an_unknown_template_writes_nothing() {
    let mut m = Mocks::new();
    m.catalog
        .expect_resolve()
        .returning(|_| Err(Error::not_found("template nope not found; available: go")));
    // No expectation on the repository or runtime: any call would fail the test.
    let err = m
        .service()
        .create(
            &Access::Admin,
            CreateSandbox {
                template: Some(TemplateName::new("nope").unwrap()),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    // The client's bad input, not a missing resource: a 400 listing what exists.
    assert!(
        matches!(&err, Error::InvalidInput(m) if m.contains("available: go")),
        "{err:?}"
    );
}

#[tokio::test]
async fn readiness_names_what_does_not_answer_and_gives_up_on_what_hangs() {
    let mut m = Mocks::new();
    m.repo.expect_ping().returning(|| Ok(()));
    m.runtime
        .expect_ping()
        .returning(|| Err(Error::unavailable("docker", "connection refused")));
    // A timer that has already fired wins only over a check that is not ready yet.
    let readiness = m.service().readiness(|| std::future::ready(())).await;
    assert!(readiness.database.is_ok(), "{readiness:?}");
    assert!(matches!(readiness.docker, Err(Error::Unavailable { .. })));
    assert!(!readiness.is_ready());

    let mut m = Mocks::new();
    m.repo
        .expect_ping()
        .returning(|| Err(Error::unavailable("database", "down")));
    m.runtime.expect_ping().returning(|| Ok(()));
    let readiness = m.service().readiness(futures::future::pending::<()>).await;
    assert!(
        matches!(readiness.database, Err(Error::Unavailable { ref dependency, .. }) if dependency == "database")
    );
    assert!(readiness.docker.is_ok());

    // A check that never answers is given up when the timer fires, naming its dependency.
    let hung = super::within(
        futures::future::pending::<crate::Result<()>>(),
        std::future::ready(()),
        "docker",
    )
    .await;
    assert!(
        matches!(hung, Err(Error::Unavailable { ref dependency, .. }) if dependency == "docker")
    );
}

#[tokio::test]
async fn create_failing_in_the_repository_makes_no_container() {
    let mut m = Mocks::creating();
    m.repo
        .expect_insert()
        .returning(|_, _| Err(Error::internal("disk full")));
    let err = m.create().await.unwrap_err();
    assert_eq!(err, Error::internal("disk full"));
}

#[tokio::test]
async fn create_failing_at_container_create_marks_error_and_removes_nothing() {
    let mut m = Mocks::creating().with_insert().expect_failed();
    m.runtime
        .expect_create()
        .returning(|_| Err(Error::invalid("image golang:1 not found")));
    m.runtime.expect_remove().never();
    let err = m.create().await.unwrap_err();
    assert_eq!(err, Error::invalid("image golang:1 not found"));
}

#[tokio::test]
async fn create_failing_at_start_removes_the_container_and_marks_error() {
    let mut m = Mocks::creating().with_insert().expect_failed();
    m.runtime.expect_create().returning(|_| Ok(created()));
    m.runtime
        .expect_start()
        .returning(|_| Err(Error::unavailable("docker", "engine gone")));
    m.removes(CID);
    let err = m.create().await.unwrap_err();
    assert!(matches!(err, Error::Unavailable { .. }));
}

#[tokio::test]
async fn a_failing_lifecycle_command_removes_the_container_and_logs_its_output() {
    let hook = LifecycleCommand {
        label: "postCreateCommand".into(),
        command: Command::Shell("exit 3".into()),
    };
    let mut m = Mocks::new()
        .with_template(template(vec![hook]))
        .with_insert();
    m.starts_a_container();
    m.runtime
        .expect_exec()
        .withf(|_, r| r.command == Command::Shell("exit 3".into()))
        .times(1)
        .returning(|_, _| Ok(exec_output(3, "npm ERR! boom")));
    m.removes(CID);
    m.repo
        .expect_transition()
        .withf(|_, change| {
            change.event == LifecycleEvent::Fail
                && change.record.details["output"] == "npm ERR! boom"
                && change.record.details["stage"] == "lifecycle command"
        })
        .times(1)
        .returning(|_, _| Ok(sandbox(SandboxStatus::Error)));
    let err = m.create().await.unwrap_err();
    let Error::InvalidInput(message) = err else {
        panic!("expected invalid input, got {err:?}")
    };
    assert!(
        message.contains("postCreateCommand exited with code 3"),
        "{message}"
    );
}

#[tokio::test]
async fn create_failing_to_record_running_removes_the_container() {
    let mut m = Mocks::creating().with_insert().expect_failed();
    m.starts_a_container();
    m.repo
        .expect_mark_running()
        .returning(|_, _| Err(Error::unavailable("database", "down")));
    m.removes(CID);
    let err = m.create().await.unwrap_err();
    assert!(matches!(err, Error::Unavailable { .. }));
}

#[tokio::test]
async fn create_hands_the_tenant_limit_to_the_insert_and_past_it_makes_no_container() {
    let mut m = Mocks::creating();
    m.config.max_sandboxes_per_tenant = Some(2);
    m.repo
        .expect_insert()
        .withf(|s, max_live| s.tenant.as_str() == "acme" && *max_live == Some(2))
        .times(1)
        .returning(|_, _| Ok(Admission::OverLimit { live: 2, limit: 2 }));
    // No runtime expectation: a container made past the limit would fail the test.
    let err = m
        .service()
        .create(
            &Access::Tenant(TenantId::new("acme").unwrap()),
            CreateSandbox::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(
        err,
        Error::LimitExceeded(
            "tenant acme already has 2 live sandboxes, the limit is 2: delete one first".into()
        )
    );
}

#[tokio::test]
async fn create_without_a_limit_inserts_unconditionally() {
    let mut m = Mocks::creating();
    m.repo
        .expect_insert()
        .withf(|_, max_live| max_live.is_none())
        .times(1)
        .returning(|_, _| Err(Error::internal("stop here")));
    let err = m.create().await.unwrap_err();
    assert_eq!(err, Error::internal("stop here"));
}

#[tokio::test]
async fn delete_marks_deleted_then_removes_the_container() {
    let s = sandbox(SandboxStatus::Running);
    let id = s.id;
    let mut m = Mocks::new();
    let mut seq = Sequence::new();
    let found = s.clone();
    m.repo
        .expect_get()
        .with(eq(id))
        .returning(move |_| Ok(found.clone()));
    m.repo
        .expect_transition()
        .withf(|_, c| c.event == LifecycleEvent::Delete && c.at == T0)
        .times(1)
        .in_sequence(&mut seq)
        .returning(|_, _| Ok(sandbox(SandboxStatus::Deleted)));
    m.runtime
        .expect_remove()
        .with(eq(CID))
        .times(1)
        .in_sequence(&mut seq)
        .returning(|_| Ok(()));
    m.service().delete(&Access::Admin, id).await.unwrap();
}

#[tokio::test]
async fn a_deleted_sandbox_is_not_found_at_its_own_address_but_any_other_status_is_shown() {
    for status in SandboxStatus::ALL {
        let s = sandbox(status);
        let id = s.id;
        let mut m = Mocks::finding(&s);
        m.repo.expect_events().returning(|_| Ok(Vec::new()));
        let service = m.service();
        let shown = service.show(&Access::Admin, id).await;
        let events = service.events(&Access::Admin, id).await;
        if status == SandboxStatus::Deleted {
            assert!(matches!(shown, Err(Error::NotFound(_))), "{shown:?}");
            assert!(matches!(events, Err(Error::NotFound(_))), "{events:?}");
            // `get` (what delete and the activity routes read) still sees it.
            assert!(service.get(&Access::Admin, id).await.is_ok());
        } else {
            assert_eq!(shown.unwrap().status(), status);
            assert!(events.is_ok());
        }
    }
}

#[tokio::test]
async fn deleting_an_ended_sandbox_succeeds_without_a_new_transition() {
    for status in [SandboxStatus::Deleted, SandboxStatus::Expired] {
        let s = sandbox(status);
        let id = s.id;
        let mut m = Mocks::finding(&s);
        m.repo.expect_transition().never();
        m.runtime.expect_remove().times(1).returning(|_| Ok(()));
        m.service().delete(&Access::Admin, id).await.unwrap();
    }
}

#[tokio::test]
async fn delete_racing_with_the_reaper_still_succeeds() {
    let s = sandbox(SandboxStatus::Running);
    let id = s.id;
    let mut m = Mocks::new();
    let mut reads = 0;
    m.repo.expect_get().returning(move |_| {
        reads += 1;
        Ok(if reads == 1 {
            s.clone()
        } else {
            sandbox(SandboxStatus::Expired)
        })
    });
    m.repo
        .expect_transition()
        .returning(|_, _| Err(Error::conflict("cannot delete a sandbox that is expired")));
    m.runtime.expect_remove().times(1).returning(|_| Ok(()));
    m.service().delete(&Access::Admin, id).await.unwrap();
}

#[tokio::test]
async fn delete_of_an_unknown_sandbox_is_not_found() {
    let mut m = Mocks::new();
    m.repo
        .expect_get()
        .returning(|id| Err(Error::not_found(format!("sandbox {id} not found"))));
    let err = m
        .service()
        .delete(&Access::Admin, SandboxId::new_random())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NotFound(_)));
}

#[tokio::test]
async fn another_tenants_sandbox_is_not_found() {
    let (mut m, id) = Mocks::finding_running();
    m.repo
        .expect_touch()
        .withf(|_, tenant, _, _| tenant.as_ref().map(TenantId::as_str) == Some("other"))
        .returning(|_, _, _, _| Ok(false));
    m.repo.expect_record_activity().never();
    m.runtime.expect_remove().never();
    let service = m.service();
    let other = Access::Tenant(TenantId::new("other").unwrap());
    assert!(matches!(
        service.get(&other, id).await,
        Err(Error::NotFound(_))
    ));
    assert!(matches!(
        service.heartbeat(&other, id).await,
        Err(Error::NotFound(_))
    ));
    assert!(matches!(
        service.delete(&other, id).await,
        Err(Error::NotFound(_))
    ));
    let own = Access::Tenant(TenantId::default_tenant());
    assert!(service.get(&own, id).await.is_ok());
}

#[tokio::test]
async fn a_tenant_lists_only_its_own_sandboxes() {
    let mut m = Mocks::new();
    m.repo
        .expect_list()
        .withf(|f| f.tenant.as_ref().map(TenantId::as_str) == Some("acme"))
        .times(1)
        .returning(|_| Ok(vec![]));
    m.service()
        .list(
            &Access::Tenant(TenantId::new("acme").unwrap()),
            SandboxFilter::default(),
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn a_heartbeat_moves_expiry_to_now_plus_ttl() {
    let id = SandboxId::new_random();
    let later = T0 + Duration::minutes(10);
    let mut m = Mocks::new();
    m.clock = clock_at(later);
    m.repo.expect_get().never();
    m.repo
        .expect_touch()
        .withf(move |got, tenant, at, expires| {
            *got == id
                && tenant.as_ref().map(TenantId::as_str) == Some("acme")
                && *at == later
                && *expires == later + Duration::minutes(15)
        })
        .times(1)
        .returning(|_, _, _, _| Ok(true));
    m.service()
        .heartbeat(&Access::Tenant(TenantId::new("acme").unwrap()), id)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_refused_heartbeat_reads_the_sandbox_to_say_why() {
    let s = sandbox(SandboxStatus::Expired);
    let id = s.id;
    let mut m = Mocks::new();
    m.repo
        .expect_touch()
        .times(1)
        .returning(|_, _, _, _| Ok(false));
    m.repo
        .expect_get()
        .times(1)
        .returning(move |_| Ok(s.clone()));
    m.repo.expect_record_activity().never();
    let err = m.service().heartbeat(&Access::Admin, id).await.unwrap_err();
    assert!(
        matches!(err, Error::Conflict(ref m) if m.contains("expired")),
        "{err:?}"
    );
}

#[tokio::test]
async fn activity_on_a_sandbox_that_is_not_running_is_a_conflict() {
    for status in [
        SandboxStatus::Creating,
        SandboxStatus::Expired,
        SandboxStatus::Deleted,
        SandboxStatus::Error,
    ] {
        let s = with_reason(sandbox(status), Some("container vanished".into()));
        let id = s.id;
        let mut m = Mocks::finding(&s);
        m.repo.expect_touch().returning(|_, _, _, _| Ok(false));
        m.repo.expect_record_activity().never();
        m.runtime.expect_exec().never();
        m.runtime.expect_upload().never();
        m.runtime.expect_download().never();
        let service = m.service();
        let heartbeat = service.heartbeat(&Access::Admin, id).await.unwrap_err();
        let Error::Conflict(message) = &heartbeat else {
            panic!("{status}: expected conflict, got {heartbeat:?}")
        };
        assert!(message.contains(status.as_str()), "{message}");
        if status == SandboxStatus::Error {
            assert!(message.contains("container vanished"), "{message}");
        }
        let execute = service.execute(&Access::Admin, id, command("true")).await;
        assert!(matches!(execute, Err(Error::Conflict(_))), "{status}");
        let upload = service
            .upload(&Access::Admin, id, None, upload_file("a.txt", b"x"))
            .await;
        assert!(matches!(upload, Err(Error::Conflict(_))), "{status}");
        let download = service.download(&Access::Admin, id, "/etc/hosts").await;
        assert!(matches!(download, Err(Error::Conflict(_))), "{status}");
    }
}

fn upload_file(name: &str, content: &'static [u8]) -> UploadFile {
    UploadFile {
        name: name.into(),
        size: content.len() as u64,
        content: Box::pin(futures::stream::once(async move {
            Ok(bytes::Bytes::from_static(content))
        })),
        options: WriteOptions::default(),
    }
}

#[tokio::test]
async fn execute_records_activity_then_runs_with_clamped_limits() {
    let (mut m, id) = Mocks::finding_running();
    let mut seq = Sequence::new();
    m.repo
        .expect_record_activity()
        .withf(|_, _, _, event| {
            event
                .as_ref()
                .is_some_and(|e| e.action == EventAction::Executed && e.details["command"] == "ls")
        })
        .times(1)
        .in_sequence(&mut seq)
        .returning(|_, _, _, _| Ok(sandbox(SandboxStatus::Running)));
    m.runtime
        .expect_exec()
        .withf(|cid, r| {
            cid == CID
                && r.max_output_bytes == 16 * 1024 * 1024
                && r.timeout == Some(StdDuration::from_secs(3600))
                && r.workdir.as_deref() == Some("/workspace")
                && r.command == Command::Shell("ls".into())
        })
        .times(1)
        .in_sequence(&mut seq)
        .returning(|_, _| Ok(exec_output(0, "a\n")));
    let out = m
        .execute(
            id,
            ExecuteCommand {
                max_output_bytes: Some(usize::MAX),
                timeout: Some(StdDuration::from_secs(1_000_000)),
                ..command("ls")
            },
        )
        .await
        .unwrap();
    assert_eq!(out.output, "a\n");
}

#[tokio::test]
async fn execute_takes_a_zero_timeout_as_the_maximum_and_passes_stdin_on() {
    let (mut m, id) = Mocks::finding_running();
    m.records_activity(sandbox(SandboxStatus::Running));
    m.runtime
        .expect_exec()
        .withf(|_, r| {
            r.timeout == Some(StdDuration::from_secs(3600))
                && r.stdin.as_deref() == Some(&b"line\n"[..])
        })
        .times(1)
        .returning(|_, _| Ok(exec_output(0, "line\n")));
    m.execute(
        id,
        ExecuteCommand {
            timeout: Some(StdDuration::ZERO),
            stdin: Some(b"line\n".to_vec()),
            ..command("cat")
        },
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn execute_stream_passes_output_through_and_answers_124_for_a_timeout() {
    let (mut m, id) = Mocks::finding_running();
    m.records_activity(sandbox(SandboxStatus::Running));
    m.runtime
        .expect_exec_stream()
        .withf(|cid, r| cid == CID && r.command == Command::Shell("yes".into()))
        .times(1)
        .returning(|_, _| {
            let events = vec![
                Ok(ExecEvent::Output {
                    stream: OutputStream::Stderr,
                    data: bytes::Bytes::from_static(b"\xff"),
                }),
                Ok(ExecEvent::Exit {
                    exit_code: 137,
                    timed_out: true,
                    duration: StdDuration::from_secs(1),
                }),
            ];
            Ok(futures::stream::iter(events).boxed())
        });
    let events: Vec<ExecEvent> = m
        .service()
        .execute_stream(&Access::Admin, id, command("yes"))
        .await
        .unwrap()
        .map(Result::unwrap)
        .collect()
        .await;
    assert_eq!(
        events,
        [
            ExecEvent::Output {
                stream: OutputStream::Stderr,
                data: bytes::Bytes::from_static(b"\xff"),
            },
            ExecEvent::Exit {
                exit_code: TIMED_OUT_EXIT_CODE,
                timed_out: true,
                duration: StdDuration::from_secs(1),
            },
        ]
    );
}

#[tokio::test]
async fn a_command_keeps_its_sandbox_alive_while_its_stream_is_held() {
    let s = sandbox(SandboxStatus::Running);
    let id = s.id;
    let mut m = Mocks::finding(&s);
    // The execute's own touch, then one per activity pass while the stream is held, with
    // no event and an expiry a TTL after the clock's now.
    let touched = s.clone();
    let ttl = m.config.ttl;
    m.repo
        .expect_record_activity()
        .withf(move |got, at, expires_at, event| {
            *got == id
                && *expires_at == *at + ttl
                && event
                    .as_ref()
                    .is_some_and(|e| e.action == EventAction::Executed)
        })
        .times(1)
        .returning(move |_, _, _, _| Ok(touched.clone()));
    m.repo
        .expect_touch_many()
        .withf(move |touches| {
            touches.len() == 1
                && touches[0].id == id
                && touches[0].tenant.is_none()
                && touches[0].expires_at == touches[0].at + ttl
        })
        .times(2)
        .returning(|_| Ok(vec![true]));
    m.runtime
        .expect_exec_stream()
        .times(1)
        .returning(|_, _| Ok(futures::stream::pending().boxed()));
    m.runtime.expect_kept_alive().returning(|| Ok(Vec::new()));
    let service = m.service();
    let events = service
        .execute_stream(&Access::Admin, id, command("sleep 100000"))
        .await
        .unwrap();
    assert_eq!(service.activity_pass().await.unwrap(), 1);
    assert_eq!(service.activity_pass().await.unwrap(), 1);
    drop(events);
    assert_eq!(
        service.activity_pass().await.unwrap(),
        0,
        "nothing runs any more"
    );
}

#[tokio::test]
async fn the_activity_pass_skips_a_sandbox_that_ended_and_reports_a_store_failure() {
    let (mut m, id) = Mocks::finding_running();
    let mut seq = Sequence::new();
    m.repo
        .expect_record_activity()
        .times(1)
        .in_sequence(&mut seq)
        .returning(|_, _, _, _| Ok(sandbox(SandboxStatus::Running)));
    m.repo
        .expect_touch_many()
        .times(1)
        .in_sequence(&mut seq)
        .returning(|_| Ok(vec![false]));
    m.repo
        .expect_touch_many()
        .times(1)
        .in_sequence(&mut seq)
        .returning(|_| Err(Error::unavailable("database", "down")));
    m.runtime
        .expect_exec_stream()
        .returning(|_, _| Ok(futures::stream::pending().boxed()));
    m.runtime.expect_kept_alive().returning(|| Ok(Vec::new()));
    let service = m.service();
    let _events = service
        .execute_stream(&Access::Admin, id, command("sleep 100000"))
        .await
        .unwrap();
    assert_eq!(service.activity_pass().await.unwrap(), 0);
    assert!(matches!(
        service.activity_pass().await,
        Err(Error::Unavailable { .. })
    ));
}

#[tokio::test]
async fn the_activity_pass_keeps_alive_the_sandboxes_of_keep_alive_processes() {
    let mut m = Mocks::new();
    let kept = SandboxId::new_random();
    let ttl = m.config.ttl;
    m.repo
        .expect_touch_many()
        .withf(move |touches| {
            touches.len() == 1
                && touches[0].id == kept
                && touches[0].tenant.is_none()
                && touches[0].expires_at == touches[0].at + ttl
        })
        .times(1)
        .returning(|_| Ok(vec![true]));
    let mut seq = Sequence::new();
    m.runtime
        .expect_kept_alive()
        .times(1)
        .in_sequence(&mut seq)
        .returning(move || Ok(vec![kept, kept]));
    // A runtime that cannot say is no store write and no failure of the pass.
    m.runtime
        .expect_kept_alive()
        .times(1)
        .in_sequence(&mut seq)
        .returning(|| Err(Error::unavailable("agent", "down")));
    let service = m.service();
    assert_eq!(service.activity_pass().await.unwrap(), 1);
    assert_eq!(service.activity_pass().await.unwrap(), 0);
}

#[tokio::test]
async fn a_background_process_is_checked_before_the_store_is_asked() {
    let service = Mocks::new().service();
    let id = SandboxId::new_random();
    for (start, says) in [
        (StartProcess::default(), "command is empty"),
        (
            StartProcess {
                command: "sleep 1".into(),
                workdir: Some("relative".into()),
                ..StartProcess::default()
            },
            "workdir",
        ),
        (
            StartProcess {
                command: "sleep 1".into(),
                output_limit: Some(MAX_PROCESS_OUTPUT_BYTES + 1),
                ..StartProcess::default()
            },
            "output_limit_bytes must be between",
        ),
        (
            StartProcess {
                command: "sleep 1".into(),
                output_limit: Some(MIN_PROCESS_OUTPUT_BYTES - 1),
                ..StartProcess::default()
            },
            "output_limit_bytes must be between",
        ),
    ] {
        match service.start_process(&Access::Admin, id, start).await {
            Err(Error::InvalidInput(message)) => {
                assert!(message.contains(says), "{message:?} should say {says:?}")
            }
            other => panic!("expected invalid input, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_background_process_starts_in_the_workspace_with_the_sandboxs_user_and_env() {
    let (mut m, id) = Mocks::finding_running();
    m.repo
        .expect_record_activity()
        .withf(|_, _, _, event| {
            event.as_ref().is_some_and(|e| {
                e.action == EventAction::Executed && e.details["background"] == true
            })
        })
        .times(1)
        .returning(|_, _, _, _| Ok(sandbox(SandboxStatus::Running)));
    let workspace = sandbox(SandboxStatus::Running).workspace_mount;
    m.runtime
        .expect_start_process()
        .withf(move |_, request| {
            request.workdir.as_deref() == Some(workspace.as_str())
                && request.output_limit == DEFAULT_PROCESS_OUTPUT_BYTES
                && request.timeout.is_none()
                && request.keep_alive
                && request.env.get("EXTRA").map(String::as_str) == Some("1")
        })
        .times(1)
        .returning(|_, request| {
            Ok(ProcessInfo {
                pid: 7,
                command: match &request.command {
                    Command::Shell(line) => line.clone(),
                    Command::Argv(argv) => argv.join(" "),
                },
                started_at: time::OffsetDateTime::UNIX_EPOCH,
                exit: None,
                stdout: OutputSpan::default(),
                stderr: OutputSpan::default(),
                keep_alive: request.keep_alive,
                stdin_open: request.stdin,
                pty: request.pty.is_some(),
            })
        });
    let service = m.service();
    let started = service
        .start_process(
            &Access::Admin,
            id,
            StartProcess {
                command: "npm run dev".into(),
                env: [("EXTRA".to_owned(), "1".to_owned())].into(),
                // Zero is no timeout, as absent.
                timeout: Some(StdDuration::ZERO),
                keep_alive: true,
                ..StartProcess::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(started.pid, 7);
    assert_eq!(started.command, "npm run dev");
}

#[test]
fn the_activity_pass_runs_every_third_of_the_ttl_within_1_s_and_60_s() {
    let interval = |ttl_secs: i64| {
        Mocks {
            config: ServiceConfig {
                ttl: Duration::seconds(ttl_secs),
                ..ServiceConfig::default()
            },
            ..Mocks::new()
        }
        .service()
        .activity_interval()
    };
    assert_eq!(interval(900), StdDuration::from_secs(60));
    assert_eq!(interval(90), StdDuration::from_secs(30));
    assert_eq!(interval(2), StdDuration::from_secs(1));
}

#[tokio::test]
async fn execute_stream_refuses_bad_input_without_touching_anything() {
    let m = Mocks::new();
    let err = m
        .service()
        .execute_stream(&Access::Admin, SandboxId::new_random(), command(" "))
        .await
        .err()
        .unwrap();
    assert!(matches!(err, Error::InvalidInput(_)), "{err:?}");
}

#[test]
fn exec_limits_pick_the_default_the_maximum_for_zero_and_clamp() {
    let limits = ExecLimits::default();
    assert_eq!(limits.timeout(None), limits.default_timeout);
    assert_eq!(limits.timeout(Some(StdDuration::ZERO)), limits.max_timeout);
    assert_eq!(
        limits.timeout(Some(StdDuration::from_secs(5))),
        StdDuration::from_secs(5)
    );
    assert_eq!(
        limits.timeout(Some(StdDuration::from_secs(1_000_000))),
        limits.max_timeout
    );
}

#[tokio::test]
async fn a_timed_out_command_answers_124_and_no_text_passes_the_output_cap() {
    let (mut m, id) = Mocks::finding_running();
    m.records_activity(sandbox(SandboxStatus::Running));
    // A runtime's replacement characters for invalid bytes made the text longer than the
    // four bytes it kept: "a" then two U+FFFD (3 bytes each).
    m.runtime.expect_exec().times(1).returning(|_, _| {
        Ok(ExecOutput {
            timed_out: true,
            exit_code: 137,
            ..exec_output(137, "a\u{fffd}\u{fffd}")
        })
    });
    let out = m
        .execute(
            id,
            ExecuteCommand {
                max_output_bytes: Some(4),
                ..command("sleep 100")
            },
        )
        .await
        .unwrap();
    assert_eq!(out.exit_code, TIMED_OUT_EXIT_CODE);
    assert!(out.timed_out);
    assert_eq!(out.output, "a\u{fffd}", "cut on a character boundary");
    assert_eq!(out.stdout, "a\u{fffd}");
    assert!(out.truncated);
}

#[tokio::test]
async fn execute_runs_as_the_templates_remote_user_with_its_remote_env_under_the_requests() {
    let mut s = sandbox(SandboxStatus::Running);
    s.remote_env = BTreeMap::from([
        ("FROM_TEMPLATE".to_owned(), "t".to_owned()),
        ("OVERRIDDEN".to_owned(), "template".to_owned()),
    ]);
    s.remote_user = Some("vscode".to_owned());
    // The stored document says otherwise: only the typed fields count.
    s.devcontainer_config = serde_json::json!({"remoteUser": "root", "remoteEnv": {"X": "y"}});
    let id = s.id;
    let mut m = Mocks::finding(&s);
    m.records_activity(s.clone());
    m.runtime
        .expect_exec()
        .withf(|_, r| {
            r.user.as_deref() == Some("vscode")
                && r.env
                    == BTreeMap::from([
                        ("FROM_TEMPLATE".to_owned(), "t".to_owned()),
                        ("OVERRIDDEN".to_owned(), "request".to_owned()),
                    ])
        })
        .times(1)
        .returning(|_, _| Ok(exec_output(0, "")));
    m.execute(
        id,
        ExecuteCommand {
            env: BTreeMap::from([("OVERRIDDEN".to_owned(), "request".to_owned())]),
            ..command("env")
        },
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn execute_refuses_an_empty_command_and_bad_input_without_touching_anything() {
    let m = Mocks::new();
    let service = m.service();
    let id = SandboxId::new_random();
    for command in [
        command("  "),
        ExecuteCommand {
            workdir: Some("relative".into()),
            ..command("ls")
        },
        ExecuteCommand {
            env: BTreeMap::from([("A=B".into(), "x".into())]),
            ..command("ls")
        },
    ] {
        let err = service
            .execute(&Access::Admin, id, command)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::InvalidInput(_)), "{err:?}");
    }
}

#[tokio::test]
async fn upload_goes_to_the_workspace_under_its_exact_name() {
    let (mut m, id) = Mocks::finding_running();
    m.records_activity_once(|e| {
        e.is_some_and(|e| e.details["path"] == "/workspace/ a\\b.txt " && e.details["bytes"] == 2)
    });
    m.runtime
        .expect_upload()
        .withf(|cid, dir, file| {
            cid == CID
                && dir == "/workspace"
                && file.name == " a\\b.txt "
                && file.options.create_parents
                && file.options.mode.is_none()
        })
        .times(1)
        .returning(|_, _, file| Ok(crate::testing::fixtures::file_stat(&file.name, file.size)));
    let path = m
        .service()
        .upload(&Access::Admin, id, None, upload_file(" a\\b.txt ", b"hi"))
        .await
        .unwrap();
    assert_eq!(path, "/workspace/ a\\b.txt ");
}

#[tokio::test]
async fn upload_refuses_oversized_files_and_bad_paths() {
    let mut m = Mocks::new();
    m.config.max_upload_bytes = 1;
    let service = m.service();
    let id = SandboxId::new_random();
    let err = service
        .upload(&Access::Admin, id, None, upload_file("a", b"too big"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::TooLarge(_)), "{err:?}");
    let err = service
        .upload(
            &Access::Admin,
            id,
            Some("/a/../etc"),
            upload_file("a", b"x"),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidInput(_)), "{err:?}");
    // A name that is a path is refused, never cut to its last component.
    let err = service
        .upload(
            &Access::Admin,
            id,
            None,
            upload_file("../../etc/passwd", b"x"),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::File {
                problem: crate::FileProblem::InvalidPath,
                ..
            }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn download_checks_the_path_then_records_activity() {
    let (mut m, id) = Mocks::finding_running();
    m.records_activity_once(|_| true);
    m.runtime
        .expect_download()
        .withf(|cid, path| cid == CID && path == "/workspace/a.txt")
        .times(1)
        .returning(|_, _| Err(Error::not_found("no such file /workspace/a.txt")));
    // The container is there: the file is what is missing.
    m.runtime
        .expect_state()
        .returning(|_| Ok(crate::runtime::ContainerState::Running));
    let service = m.service();
    let err = service
        .download(&Access::Admin, id, "/workspace/a.txt/")
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NotFound(_)));
    let err = service
        .download(&Access::Admin, id, "workspace/a.txt")
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidInput(_)));
}

/// The engine answers 404 for a missing path and a missing container alike: a "no such
/// file" from a container that is gone makes the sandbox `error` and answers its conflict,
/// not a 404 that leaves the sandbox `running` for ever.
#[tokio::test]
async fn a_missing_file_answer_from_a_vanished_container_makes_the_sandbox_error() {
    let (mut m, id) = Mocks::finding_running();
    m.records_activity_once(|_| true);
    m.runtime.expect_download().times(1).returning(|_, _| {
        Err(Error::file(
            crate::FileProblem::NotFound,
            "/workspace/a.txt does not exist in the sandbox",
        ))
    });
    m.runtime
        .expect_state()
        .times(1)
        .returning(|_| Ok(crate::runtime::ContainerState::Missing));
    m.repo
        .expect_transition()
        .withf(|_, change| change.event == LifecycleEvent::Fail)
        .times(1)
        .returning(|_, _| Ok(sandbox(SandboxStatus::Error)));
    let err = m
        .service()
        .download(&Access::Admin, id, "/workspace/a.txt")
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Conflict(_)), "{err:?}");
}

#[tokio::test]
async fn the_reaper_expires_exactly_what_the_store_claims_and_removes_their_containers() {
    let later = T0 + Duration::hours(1);
    let mut m = Mocks::new();
    m.clock = clock_at(later);
    m.config.reap_batch = 2;
    let mut batches = vec![
        vec![
            sandbox(SandboxStatus::Expired),
            sandbox(SandboxStatus::Expired),
        ],
        vec![sandbox(SandboxStatus::Expired)],
    ]
    .into_iter();
    m.repo
        .expect_claim_expired()
        .with(eq(crate::ports::ExpiryClaim::new(later, 2)))
        .times(2)
        .returning(move |_| Ok(batches.next().unwrap_or_default()));
    m.runtime
        .expect_remove()
        .with(eq(CID))
        .times(3)
        .returning(|_| Ok(()));
    m.lists_containers(vec![]);
    let report = m.service().reap_expired().await.unwrap();
    assert_eq!(
        report,
        ReapReport {
            expired: 3,
            removed: 3,
            swept: 0,
            failures: 0
        }
    );
}

#[tokio::test]
async fn the_reaper_sweeps_containers_of_ended_sandboxes_only() {
    let mut m = Mocks::new();
    m.repo.expect_claim_expired().returning(|_| Ok(vec![]));
    let statuses = [
        SandboxStatus::Running,
        SandboxStatus::Creating,
        SandboxStatus::Expired,
        SandboxStatus::Deleted,
        SandboxStatus::Error,
    ];
    let sandboxes: Vec<Sandbox> = statuses.iter().map(|s| sandbox(*s)).collect();
    m.lists_containers(
        sandboxes
            .iter()
            .map(|s| managed(&format!("c-{}", s.status()), Some(s.id), true))
            .chain([managed("c-unknown", Some(SandboxId::new_random()), true)])
            .collect(),
    );
    m.gets_from(sandboxes);
    for removed in ["c-expired", "c-deleted", "c-error"] {
        m.removes(removed);
    }
    let report = m.service().reap_expired().await.unwrap();
    assert_eq!(report.swept, 3);
    assert_eq!(report.expired, 0);
}

#[tokio::test]
async fn a_failed_removal_is_counted_and_does_not_stop_the_pass() {
    let mut m = Mocks::new();
    m.repo.expect_claim_expired().returning(|_| {
        Ok(vec![sandbox(SandboxStatus::Expired), {
            let mut s = sandbox(SandboxStatus::Expired);
            s.container_id = Some("other".into());
            s
        }])
    });
    m.runtime
        .expect_remove()
        .with(eq(CID))
        .returning(|_| Err(Error::unavailable("docker", "down")));
    m.runtime
        .expect_remove()
        .with(eq("other"))
        .times(1)
        .returning(|_| Ok(()));
    m.lists_containers(vec![]);
    let report = m.service().reap_expired().await.unwrap();
    assert_eq!((report.expired, report.removed, report.failures), (2, 1, 1));
}

mod files;
mod leases;
mod reconcile;
