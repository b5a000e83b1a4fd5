//! The use cases: create, get, list, delete, heartbeat, execute, upload, download, reap.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration as StdDuration;

use futures::StreamExt;
use serde_json::json;
use time::Duration;
use uuid::Uuid;

use crate::error::{Error, FileProblem, Result};
use crate::files::FileLimits;
use crate::lifecycle::{self, LifecycleEvent};
use crate::paths;
use crate::ports::{
    Admission, Clock, ContainerRuntime, ExpiryClaim, RunningUpdate, SandboxRepository,
    StatusChange, TemplateCatalog, Touch,
};
use crate::runtime::{
    ContainerSpec, ExecEvent, ExecEvents, ExecOutput, ExecRequest, FileDownload, FileStat,
    PublishedPort, TIMED_OUT_EXIT_CODE, UploadFile, WriteOptions,
};
use crate::sandbox::{
    CreateLease, EventAction, InstanceId, NewEvent, PortMapping, Sandbox, SandboxFilter, SandboxId,
    SandboxName, SandboxState, SandboxStatus, TemplateName, TenantId,
};
use crate::template::{Command, Template};

/// Who is asking: decides which sandboxes are visible.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// Sees and manages every tenant's sandboxes; creates in the default tenant.
    Admin,
    /// Sees only this tenant's sandboxes; another tenant's are "not found".
    Tenant(TenantId),
}

impl Access {
    /// Whether this caller may see the sandbox.
    pub fn can_see(&self, sandbox: &Sandbox) -> bool {
        match self {
            Self::Admin => true,
            Self::Tenant(tenant) => &sandbox.tenant == tenant,
        }
    }

    /// The tenant a sandbox created by this caller belongs to.
    pub fn owner(&self) -> TenantId {
        match self {
            Self::Admin => TenantId::default_tenant(),
            Self::Tenant(tenant) => tenant.clone(),
        }
    }

    fn tenant_filter(&self) -> Option<TenantId> {
        match self {
            Self::Admin => None,
            Self::Tenant(tenant) => Some(tenant.clone()),
        }
    }
}

/// Bounds on what one command may ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecLimits {
    /// Output kept when the request does not say.
    pub default_output_bytes: usize,
    /// The most output a request may ask to keep.
    pub max_output_bytes: usize,
    /// Timeout when the request does not say.
    pub default_timeout: StdDuration,
    /// The longest timeout a request may ask for.
    pub max_timeout: StdDuration,
}

impl ExecLimits {
    /// The output a request asking for `requested` bytes keeps: the default when it says
    /// nothing, never more than [`ExecLimits::max_output_bytes`].
    pub fn output_cap(&self, requested: Option<usize>) -> usize {
        requested
            .unwrap_or(self.default_output_bytes)
            .min(self.max_output_bytes)
    }

    /// The timeout of a request asking for `requested`: the default when it says nothing,
    /// the maximum for zero (LangChain DeepAgents' "no timeout"), never more than
    /// [`ExecLimits::max_timeout`].
    pub fn timeout(&self, requested: Option<StdDuration>) -> StdDuration {
        match requested {
            None => self.default_timeout,
            Some(t) if t.is_zero() => self.max_timeout,
            Some(t) => t,
        }
        .min(self.max_timeout)
    }
}

impl Default for ExecLimits {
    fn default() -> Self {
        Self {
            default_output_bytes: 64 * 1024,
            max_output_bytes: 16 * 1024 * 1024,
            default_timeout: StdDuration::from_secs(10 * 60),
            max_timeout: StdDuration::from_secs(60 * 60),
        }
    }
}

/// Server-wide settings of the use cases.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceConfig {
    /// Idle time after which a sandbox expires.
    pub ttl: Duration,
    /// The template used when a create request names none.
    pub default_template: TemplateName,
    /// Bounds on execute requests.
    pub exec_limits: ExecLimits,
    /// Largest accepted upload, in bytes.
    pub max_upload_bytes: u64,
    /// Live sandboxes a tenant may have at once (`None`: unlimited).
    pub max_sandboxes_per_tenant: Option<u64>,
    /// Sandboxes claimed per reaper batch.
    pub reap_batch: u32,
    /// Containers removed at once by the reaper.
    pub reap_concurrency: usize,
    /// How long a sandbox written without a create lease (by an older monza) may stay
    /// `creating` before reconciliation gives up on it: longer than any create can take, since
    /// another replica may still be creating it. Leased creates are settled by their lease.
    pub create_timeout: Duration,
    /// How long a create's lease lasts unless renewed: a create whose creator stops renewing
    /// it (crashed, or dropped the create) is settled this long after the last renewal.
    /// The creator renews it every third of this ([`SandboxService::lease_renewal_interval`]).
    pub create_lease: Duration,
    /// Output bytes a background process keeps per stream when its start does not say.
    pub process_output_bytes: u64,
    /// Bounds on listing, search, glob and reading by lines.
    pub file_limits: FileLimits,
    /// Largest archive accepted by `PUT …/files/archive`, in bytes (as sent: compressed
    /// when it is gzip).
    pub max_archive_bytes: u64,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        Self {
            ttl: Duration::minutes(15),
            default_template: TemplateName::trusted("go"),
            exec_limits: ExecLimits::default(),
            max_upload_bytes: 100 * 1024 * 1024,
            max_sandboxes_per_tenant: None,
            reap_batch: 100,
            reap_concurrency: 16,
            create_timeout: Duration::minutes(10),
            create_lease: Duration::seconds(15),
            process_output_bytes: DEFAULT_PROCESS_OUTPUT_BYTES,
            file_limits: FileLimits::default(),
            max_archive_bytes: 1024 * 1024 * 1024,
        }
    }
}

/// A create request, already validated.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CreateSandbox {
    /// The name; default `sandbox-<template>`.
    pub name: Option<SandboxName>,
    /// The template; default from [`ServiceConfig::default_template`].
    pub template: Option<TemplateName>,
}

/// An execute request as a client sends it; limits are applied by the service.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ExecuteCommand {
    /// The shell command line (`/bin/sh -c`).
    pub command: String,
    /// Output to keep, clamped to [`ExecLimits::max_output_bytes`].
    pub max_output_bytes: Option<usize>,
    /// Timeout, clamped to [`ExecLimits::max_timeout`]; zero means the maximum.
    pub timeout: Option<StdDuration>,
    /// Working directory (absolute).
    pub workdir: Option<String>,
    /// Extra environment.
    pub env: BTreeMap<String, String>,
    /// Fed to the command's stdin, which is then closed.
    pub stdin: Option<Vec<u8>>,
}

/// What one reaper pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReapReport {
    /// Sandboxes moved to `expired`.
    pub expired: usize,
    /// Their containers removed.
    pub removed: usize,
    /// Containers of ended sandboxes removed on a later pass (retries).
    pub swept: usize,
    /// Removals that failed (retried on the next pass).
    pub failures: usize,
}

/// The use cases, over the ports.
#[derive(Clone)]
pub struct SandboxService {
    repo: Arc<dyn SandboxRepository>,
    runtime: Arc<dyn ContainerRuntime>,
    catalog: Arc<dyn TemplateCatalog>,
    clock: Arc<dyn Clock>,
    config: ServiceConfig,
    heartbeats: Arc<heartbeats::Heartbeats>,
    /// This process, as the creator named in create leases.
    instance: InstanceId,
    /// The creates this process is running, whose leases it renews.
    in_flight: Arc<leases::InFlight>,
    /// The sandboxes whose commands this process runs, kept alive while they run.
    busy: Arc<activity::Busy>,
}

impl std::fmt::Debug for SandboxService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SandboxService")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Why a create failed, with what must be cleaned up.
struct CreateFailure {
    error: Error,
    stage: &'static str,
    container_id: Option<String>,
    output: Option<String>,
}

impl CreateFailure {
    fn at(stage: &'static str, container_id: Option<&str>) -> impl FnOnce(Error) -> Self {
        let container_id = container_id.map(str::to_owned);
        move |error| Self {
            error,
            stage,
            container_id,
            output: None,
        }
    }
}

impl SandboxService {
    /// Wires the use cases to their ports.
    pub fn new(
        repo: Arc<dyn SandboxRepository>,
        runtime: Arc<dyn ContainerRuntime>,
        catalog: Arc<dyn TemplateCatalog>,
        clock: Arc<dyn Clock>,
        config: ServiceConfig,
    ) -> Self {
        Self {
            repo,
            runtime,
            catalog,
            clock,
            config,
            heartbeats: Arc::default(),
            instance: InstanceId::new_random(),
            in_flight: Arc::default(),
            busy: Arc::default(),
        }
    }

    /// This service's instance id: random per construction (so per process start), the
    /// creator named in the leases of the creates it runs.
    pub fn instance(&self) -> InstanceId {
        self.instance
    }

    /// The settings in force.
    pub fn config(&self) -> &ServiceConfig {
        &self.config
    }

    /// The container runtime (tests and benchmarks look at the engine through it).
    pub fn runtime(&self) -> &Arc<dyn ContainerRuntime> {
        &self.runtime
    }

    /// Whether the store and the container runtime answer, each checked at once and each
    /// given up when `timer()` completes first (the domain has no clock to sleep on: the
    /// caller brings one, e.g. `|| tokio::time::sleep(d)`).
    pub async fn readiness<T, F>(&self, timer: T) -> Readiness
    where
        T: Fn() -> F,
        F: Future<Output = ()>,
    {
        let (database, docker) = futures::join!(
            within(self.repo.ping(), timer(), "database"),
            within(self.runtime.ping(), timer(), "docker"),
        );
        Readiness { database, docker }
    }

    /// Refuses early an upload to a sandbox that is unknown, another tenant's, or not
    /// running, before its body (up to the upload limit) is read; [`Self::upload`] checks
    /// again once the file is in.
    pub async fn check_upload(&self, access: &Access, id: SandboxId) -> Result<()> {
        self.running(access, id).await.map(drop)
    }

    /// The template catalog.
    pub fn catalog(&self) -> &Arc<dyn TemplateCatalog> {
        &self.catalog
    }

    /// Creates a sandbox from a template and returns it `running`.
    ///
    /// Crash-consistent by construction: the row is written as `creating` before any
    /// container work and the container carries the sandbox id as a label; success moves
    /// the row to `running`; any failure moves it to `error` and removes the container made.
    /// The row carries this process's create lease, renewed while this future lives (see
    /// `leases`), so a create whose process dies or whose future is dropped is settled once
    /// the lease lapses. Past [`ServiceConfig::max_sandboxes_per_tenant`] nothing is written
    /// (the store counts and inserts atomically) and the answer is `LimitExceeded`.
    #[tracing::instrument(skip_all, err(level = "info"))]
    pub async fn create(&self, access: &Access, request: CreateSandbox) -> Result<Sandbox> {
        let template_name = request
            .template
            .unwrap_or_else(|| self.config.default_template.clone());
        // Nothing exists yet that could be "not found" but the template the client named:
        // that is bad input (the catalog's message lists the available templates).
        let template = self
            .catalog
            .resolve(&template_name)
            .await
            .map_err(|e| match e {
                Error::NotFound(message) => Error::InvalidInput(message),
                other => other,
            })?;
        let name = match request.name {
            Some(name) => name,
            None => SandboxName::new(&format!("sandbox-{template_name}"))?,
        };
        let tenant = access.owner();
        let now = self.clock.now();
        let id = SandboxId::new_random();
        // Registered before the row exists and dropped with this future: the lease is
        // renewed exactly while this create runs, however it ends.
        let _in_flight = self.in_flight.enter(id);
        let sandbox = Sandbox {
            id,
            tenant,
            name,
            template: template_name,
            state: SandboxState::creating(Some(CreateLease {
                instance: self.instance,
                expires_at: now + self.config.create_lease,
            })),
            container_id: None,
            image: template.image_name().unwrap_or_default().to_owned(),
            workspace_mount: template.workspace_folder.clone(),
            devcontainer_config: template.config.clone(),
            env_vars: template.container_env.clone(),
            remote_env: template.remote_env.clone(),
            remote_user: template.remote_user.clone(),
            port_mappings: Vec::new(),
            last_activity: now,
            created_at: now,
            expires_at: lifecycle::expires_at(now, self.config.ttl),
        };
        // The count and the insert are one decision in the store: concurrent creates (on
        // any replica) cannot pass the limit together.
        match self
            .repo
            .insert(&sandbox, self.config.max_sandboxes_per_tenant)
            .await?
        {
            Admission::Inserted => {}
            Admission::OverLimit { live, limit } => {
                return Err(Error::LimitExceeded(format!(
                    "tenant {} already has {live} live sandboxes, the limit is {limit}: \
                     delete one first",
                    sandbox.tenant
                )));
            }
        }
        tracing::info!(sandbox_id = %sandbox.id, template = %sandbox.template, "creating sandbox");
        match self.provision(&sandbox, template).await {
            Ok(running) => Ok(running),
            Err(failure) => Err(self.fail_creation(sandbox.id, failure).await),
        }
    }

    async fn provision(
        &self,
        sandbox: &Sandbox,
        template: Template,
    ) -> Result<Sandbox, CreateFailure> {
        let commands = template.lifecycle_commands.clone();
        let user = template.remote_user.clone();
        let env = template.remote_env.clone();
        let workdir = template.workspace_folder.clone();
        let spec = ContainerSpec {
            sandbox_id: sandbox.id,
            tenant: sandbox.tenant.clone(),
            template,
        };
        let created = self
            .runtime
            .create(&spec)
            .await
            .map_err(CreateFailure::at("create container", None))?;
        let cid = created.id.as_str();
        let published = self
            .runtime
            .start(cid)
            .await
            .map_err(CreateFailure::at("start container", Some(cid)))?;
        // The engine creates a missing workspace folder as root: the sandbox's user could not
        // create a file in it.
        self.runtime
            .own_directory(cid, &workdir, user.clone())
            .await
            .map_err(CreateFailure::at("own workspace folder", Some(cid)))?;
        for hook in &commands {
            let request = ExecRequest {
                command: hook.command.clone(),
                workdir: Some(workdir.clone()),
                env: env.clone(),
                user: user.clone(),
                max_output_bytes: self.config.exec_limits.default_output_bytes,
                timeout: Some(self.config.exec_limits.max_timeout),
                stdin: None,
            };
            let output = self
                .runtime
                .exec(cid, &request)
                .await
                .map_err(CreateFailure::at("lifecycle command", Some(cid)))?;
            if output.exit_code != 0 || output.timed_out {
                let how = if output.timed_out {
                    "timed out".to_owned()
                } else {
                    format!("exited with code {}", output.exit_code)
                };
                return Err(CreateFailure {
                    error: Error::InvalidInput(format!(
                        "template {}: {} {how}: {}",
                        sandbox.template,
                        hook.label,
                        tail(&output.output, 500)
                    )),
                    stage: "lifecycle command",
                    container_id: Some(created.id.clone()),
                    output: Some(tail(&output.output, 16 * 1024)),
                });
            }
        }
        let now = self.clock.now();
        let update = RunningUpdate {
            container_id: created.id.clone(),
            image: created.image.clone(),
            port_mappings: port_mappings(sandbox.id, &published),
            at: now,
            expires_at: lifecycle::expires_at(now, self.config.ttl),
            record: NewEvent::started(&created.id, &created.image),
        };
        self.repo
            .mark_running(sandbox.id, &update)
            .await
            .map_err(CreateFailure::at("record running sandbox", Some(cid)))
    }

    /// Cleans up after a failed create: removes the container, marks the row `error`.
    async fn fail_creation(&self, id: SandboxId, failure: CreateFailure) -> Error {
        tracing::warn!(sandbox_id = %id, stage = failure.stage, error = %failure.error, "create failed");
        if let Some(cid) = &failure.container_id
            && let Err(e) = self.runtime.remove(cid).await
        {
            tracing::warn!(sandbox_id = %id, container_id = %cid, error = %e,
                "could not remove the container of a failed create; the reaper retries");
        }
        let mut details = json!({
            "stage": failure.stage,
            "error": failure.error.to_string(),
        });
        if let Some(output) = &failure.output {
            details["output"] = json!(output);
        }
        let change = StatusChange {
            event: LifecycleEvent::Fail,
            at: self.clock.now(),
            reason: Some(format!("{} failed: {}", failure.stage, failure.error)),
            record: NewEvent::new(EventAction::Failed, details),
        };
        if let Err(e) = self.repo.transition(id, &change).await {
            tracing::warn!(sandbox_id = %id, error = %e, "could not mark the failed sandbox as error");
        }
        failure.error
    }

    /// One sandbox as a client reads it (`GET /api/sandboxes/{id}` and its events): any
    /// status but `deleted`. A deleted sandbox is not found at its own address any more, as a
    /// deleted resource should be; its row stays, listed with `StatusFilter::Only(Deleted)`
    /// or `All`. An expired one is still shown, so its client learns why it ended.
    pub async fn show(&self, access: &Access, id: SandboxId) -> Result<Sandbox> {
        let sandbox = self.get(access, id).await?;
        if sandbox.status() == SandboxStatus::Deleted {
            return Err(Error::NotFound(format!(
                "sandbox {id} was deleted; it is still listed with ?status=deleted"
            )));
        }
        Ok(sandbox)
    }

    /// One sandbox the caller may see, in any status.
    pub async fn get(&self, access: &Access, id: SandboxId) -> Result<Sandbox> {
        let sandbox = self.repo.get(id).await?;
        if access.can_see(&sandbox) {
            Ok(sandbox)
        } else {
            Err(not_found(id))
        }
    }

    /// The caller's sandboxes, newest first.
    pub async fn list(&self, access: &Access, mut filter: SandboxFilter) -> Result<Vec<Sandbox>> {
        if let Some(tenant) = access.tenant_filter() {
            filter.tenant = Some(tenant);
        }
        self.repo.list(&filter).await
    }

    /// A sandbox's event log, oldest first; not found once the sandbox is deleted (as
    /// [`Self::show`]).
    pub async fn events(
        &self,
        access: &Access,
        id: SandboxId,
    ) -> Result<Vec<crate::sandbox::SandboxEvent>> {
        self.show(access, id).await?;
        self.repo.events(id).await
    }

    /// Deletes a sandbox and removes its container. Idempotent: deleting an ended sandbox
    /// succeeds (and retries the container's removal).
    #[tracing::instrument(skip_all, fields(sandbox_id = %id), err(level = "info"))]
    pub async fn delete(&self, access: &Access, id: SandboxId) -> Result<()> {
        let sandbox = self.get(access, id).await?;
        let ended = if sandbox.status().is_terminal() {
            sandbox
        } else {
            let change = StatusChange {
                event: LifecycleEvent::Delete,
                at: self.clock.now(),
                reason: Some("deleted by a client".into()),
                record: NewEvent::new(EventAction::Deleted, json!({})),
            };
            match self.repo.transition(id, &change).await {
                Ok(deleted) => deleted,
                // Ended meanwhile (reaped, or deleted by a concurrent request): still a success.
                Err(Error::Conflict(_)) => self.repo.get(id).await?,
                Err(e) => return Err(e),
            }
        };
        if let Some(cid) = &ended.container_id {
            self.runtime.remove(cid).await?;
        }
        Ok(())
    }

    /// Keeps a running sandbox alive: `expires_at` moves to now + TTL.
    ///
    /// The common case is one conditional write (heartbeats are the hottest route); only a
    /// refused heartbeat reads the sandbox, to say why (not found, or not running).
    pub async fn heartbeat(&self, access: &Access, id: SandboxId) -> Result<()> {
        let now = self.clock.now();
        let expires_at = lifecycle::expires_at(now, self.config.ttl);
        let touch = Touch {
            id,
            tenant: access.tenant_filter(),
            at: now,
            expires_at,
        };
        if self.heartbeats.touch(self.repo.as_ref(), touch).await? {
            return Ok(());
        }
        let sandbox = self.running(access, id).await?;
        // It became running between the two statements (a create finishing): record it now.
        self.touch(&sandbox, None).await.map(drop)
    }

    /// Runs a shell command in a running sandbox.
    #[tracing::instrument(skip_all, fields(sandbox_id = %id), err(level = "info"))]
    pub async fn execute(
        &self,
        access: &Access,
        id: SandboxId,
        command: ExecuteCommand,
    ) -> Result<ExecOutput> {
        let (sandbox, request, event) = self.exec_request(access, id, command).await?;
        let cid = container_of(&sandbox)?;
        let _busy = self.busy.enter(sandbox.id);
        // The activity is written while the command runs (a store write costs about what a
        // command through the agent does). The sandbox was running a moment ago; if it
        // ended meanwhile, the touch's conflict is the answer, as if it had come first.
        let (touched, output) = futures::join!(
            self.touch(&sandbox, Some(event)),
            self.runtime.exec(cid, &request)
        );
        let sandbox = touched?;
        let output = self.or_vanished(&sandbox, output).await?;
        Ok(answered(output, request.max_output_bytes))
    }

    /// Starts a shell command in a running sandbox and streams its output as it comes,
    /// then its exit (a timed-out command's exit code is [`TIMED_OUT_EXIT_CODE`], as with
    /// [`SandboxService::execute`]). Every byte is streamed: `max_output_bytes` does not
    /// apply. Dropping the stream kills the command.
    #[tracing::instrument(skip_all, fields(sandbox_id = %id), err(level = "info"))]
    pub async fn execute_stream(
        &self,
        access: &Access,
        id: SandboxId,
        command: ExecuteCommand,
    ) -> Result<ExecEvents> {
        let (sandbox, request, event) = self.exec_request(access, id, command).await?;
        let sandbox = self.touch(&sandbox, Some(event)).await?;
        let cid = container_of(&sandbox)?;
        let busy = self.busy.enter(sandbox.id);
        let events = self.runtime.exec_stream(cid, &request).await;
        let events = self.or_vanished(&sandbox, events).await?;
        Ok(self
            .checked_stream(sandbox, events, Some(busy))
            .map(|event| match event {
                Ok(ExecEvent::Exit {
                    exit_code,
                    timed_out,
                    duration,
                }) => Ok(ExecEvent::Exit {
                    exit_code: answered_exit(exit_code, timed_out),
                    timed_out,
                    duration,
                }),
                other => other,
            })
            .boxed())
    }

    /// A runtime's stream for `sandbox`, holding `busy` (a command keeps its sandbox alive
    /// while its client reads it) for as long as it lives; an error mid-stream is checked
    /// like a call's (a vanished container makes the sandbox `error` and the answer its
    /// conflict). Only an error needs the sandbox again: items go straight on.
    fn checked_stream<T: Send + 'static>(
        &self,
        sandbox: Sandbox,
        items: futures::stream::BoxStream<'static, Result<T>>,
        busy: Option<activity::BusyGuard>,
    ) -> futures::stream::BoxStream<'static, Result<T>> {
        let service = self.clone();
        items
            .then(move |item| {
                let _busy = &busy;
                let recheck = item.is_err().then(|| (service.clone(), sandbox.clone()));
                async move {
                    match recheck {
                        Some((service, sandbox)) => service.or_vanished(&sandbox, item).await,
                        None => item,
                    }
                }
            })
            .boxed()
    }

    /// What execute and its streamed form share: the command checked, the sandbox found
    /// running, the limits applied, and the event the caller records with the activity.
    async fn exec_request(
        &self,
        access: &Access,
        id: SandboxId,
        command: ExecuteCommand,
    ) -> Result<(Sandbox, ExecRequest, NewEvent)> {
        let workdir = checked_command(&command.command, command.workdir.as_deref(), &command.env)?;
        let limits = &self.config.exec_limits;
        let max_output_bytes = limits.output_cap(command.max_output_bytes);
        let timeout = limits.timeout(command.timeout);
        let sandbox = self.running(access, id).await?;
        let mut env = sandbox.remote_env.clone();
        env.extend(command.env);
        let user = sandbox.remote_user.clone();
        let request = ExecRequest {
            command: Command::Shell(command.command.clone()),
            workdir: Some(workdir.unwrap_or_else(|| sandbox.workspace_mount.clone())),
            env,
            user,
            max_output_bytes,
            timeout: Some(timeout),
            stdin: command.stdin,
        };
        let event = NewEvent::new(
            EventAction::Executed,
            json!({ "command": truncate(&command.command, 256) }),
        );
        Ok((sandbox, request, event))
    }

    /// Copies a file into a running sandbox's `dest_dir` (default: its workspace folder),
    /// creating missing directories, and returns the file's path.
    #[tracing::instrument(skip_all, fields(sandbox_id = %id), err(level = "info"))]
    pub async fn upload(
        &self,
        access: &Access,
        id: SandboxId,
        dest_dir: Option<&str>,
        file: UploadFile,
    ) -> Result<String> {
        let dest_dir = dest_dir
            .map(|dir| paths::sandbox_path("path", dir))
            .transpose()?;
        let file = UploadFile {
            options: WriteOptions {
                create_parents: true,
                ..file.options
            },
            ..file
        };
        self.put_file(access, id, dest_dir, file)
            .await
            .map(|(path, _)| path)
    }

    /// Creates or replaces the regular file at `path` in a running sandbox (`file.name` is
    /// ignored: the name is `path`'s last component, kept exactly), as `file.options` say
    /// (the owner is always the sandbox's user). Returns the path and what was written.
    #[tracing::instrument(skip_all, fields(sandbox_id = %id), err(level = "info"))]
    pub async fn write_file(
        &self,
        access: &Access,
        id: SandboxId,
        path: &str,
        file: UploadFile,
    ) -> Result<(String, FileStat)> {
        let (dir, name) = file_destination(path)?;
        let file = UploadFile { name, ..file };
        self.put_file(access, id, Some(dir), file).await
    }

    async fn put_file(
        &self,
        access: &Access,
        id: SandboxId,
        dest_dir: Option<String>,
        file: UploadFile,
    ) -> Result<(String, FileStat)> {
        let name = self.checked_upload(&file)?;
        let sandbox = self.running(access, id).await?;
        let dest_dir = dest_dir.unwrap_or_else(|| sandbox.workspace_mount.clone());
        paths::upload_destination(&dest_dir, &name)?;
        let path = paths::join(&dest_dir, &name);
        let event = NewEvent::new(
            EventAction::Uploaded,
            json!({ "path": path, "bytes": file.size }),
        );
        let sandbox = self.touch(&sandbox, Some(event)).await?;
        self.upload_into(&sandbox, dest_dir, name, file)
            .await
            .map(|stat| (path, stat))
    }

    /// The safe name of an upload within the limits, or why it is refused.
    fn checked_upload(&self, file: &UploadFile) -> Result<String> {
        if file.size > self.config.max_upload_bytes {
            return Err(Error::TooLarge(format!(
                "the file is {} bytes; uploads are limited to {} bytes",
                file.size, self.config.max_upload_bytes
            )));
        }
        if let Some(mode) = file.options.mode {
            paths::file_mode(mode)?;
        }
        paths::safe_file_name(&file.name)
    }

    /// Writes a checked upload as `dest_dir/name` into a running sandbox (already touched),
    /// owned by its user.
    async fn upload_into(
        &self,
        sandbox: &Sandbox,
        dest_dir: String,
        name: String,
        file: UploadFile,
    ) -> Result<FileStat> {
        let cid = container_of(sandbox)?;
        let file = UploadFile {
            name,
            options: WriteOptions {
                user: sandbox.remote_user.clone(),
                ..file.options
            },
            ..file
        };
        let uploaded = self.runtime.upload(cid, &dest_dir, file).await;
        self.or_vanished(sandbox, uploaded).await
    }

    /// What `path` is in a running sandbox (a symbolic link itself, not what it points to).
    #[tracing::instrument(skip_all, fields(sandbox_id = %id), err(level = "info"))]
    pub async fn stat(&self, access: &Access, id: SandboxId, path: &str) -> Result<FileStat> {
        let path = paths::sandbox_path("path", path)?;
        paths::reachable("path", &path)?;
        let sandbox = self.running(access, id).await?;
        let sandbox = self.touch(&sandbox, None).await?;
        let cid = container_of(&sandbox)?;
        let stat = self.runtime.stat(cid, &path).await;
        self.or_vanished(&sandbox, stat).await
    }

    /// Streams a regular file out of a running sandbox.
    #[tracing::instrument(skip_all, fields(sandbox_id = %id), err(level = "info"))]
    pub async fn download(
        &self,
        access: &Access,
        id: SandboxId,
        path: &str,
    ) -> Result<FileDownload> {
        let path = paths::sandbox_path("path", path)?;
        paths::reachable("path", &path)?;
        let sandbox = self.running(access, id).await?;
        let event = NewEvent::new(EventAction::Downloaded, json!({ "path": path }));
        let sandbox = self.touch(&sandbox, Some(event)).await?;
        let cid = container_of(&sandbox)?;
        let download = self.runtime.download(cid, &path).await;
        self.or_vanished(&sandbox, download).await
    }

    /// One reaper pass: claims every running sandbox past `expires_at`, marks it `expired`
    /// and removes its container; then removes leftover containers of ended sandboxes
    /// (removals that failed on an earlier pass). A failed removal is counted and retried
    /// on the next pass.
    #[tracing::instrument(skip_all, err)]
    pub async fn reap_expired(&self) -> Result<ReapReport> {
        let mut report = ReapReport::default();
        let now = self.clock.now();
        loop {
            let claim = ExpiryClaim::new(now, self.config.reap_batch);
            let claimed = self.repo.claim_expired(&claim).await?;
            report.expired += claimed.len();
            let containers: Vec<String> = claimed
                .iter()
                .filter_map(|s| s.container_id.clone())
                .collect();
            let (removed, failed) = self.remove_all(containers).await;
            report.removed += removed;
            report.failures += failed;
            if claimed.len() < self.config.reap_batch as usize {
                break;
            }
        }
        let mut leftovers = Vec::new();
        for container in self.runtime.list_managed().await? {
            let Some(sandbox_id) = container.sandbox_id else {
                continue;
            };
            match self.repo.get(sandbox_id).await {
                Ok(sandbox)
                    if sandbox.status().is_terminal()
                        || sandbox.status() == SandboxStatus::Error =>
                {
                    leftovers.push(container.id);
                }
                Ok(_) | Err(Error::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        let (swept, failed) = self.remove_all(leftovers).await;
        report.swept += swept;
        report.failures += failed;
        Ok(report)
    }

    async fn remove_all(&self, containers: Vec<String>) -> (usize, usize) {
        let results: Vec<(String, Result<()>)> = futures::stream::iter(containers)
            .map(|cid| async move {
                let result = self.runtime.remove(&cid).await;
                (cid, result)
            })
            .buffer_unordered(self.config.reap_concurrency.max(1))
            .collect()
            .await;
        let mut removed = 0;
        let mut failed = 0;
        for (cid, result) in results {
            match result {
                Ok(()) => removed += 1,
                Err(e) => {
                    failed += 1;
                    tracing::warn!(container_id = %cid, error = %e, "could not remove container; retrying on the next pass");
                }
            }
        }
        (removed, failed)
    }

    /// The sandbox, if visible and running; a conflict naming its status otherwise.
    async fn running(&self, access: &Access, id: SandboxId) -> Result<Sandbox> {
        let sandbox = self.get(access, id).await?;
        lifecycle::check(&sandbox, LifecycleEvent::Activity)?;
        Ok(sandbox)
    }

    /// Records activity: `last_activity = now`, `expires_at = now + ttl`, only if running.
    async fn touch(&self, sandbox: &Sandbox, event: Option<NewEvent>) -> Result<Sandbox> {
        let now = self.clock.now();
        self.repo
            .record_activity(
                sandbox.id,
                now,
                lifecycle::expires_at(now, self.config.ttl),
                event,
            )
            .await
    }
}

/// Checks a command line, its working directory and environment as a client sent them;
/// the working directory, normalised.
fn checked_command(
    command: &str,
    workdir: Option<&str>,
    env: &BTreeMap<String, String>,
) -> Result<Option<String>> {
    if command.trim().is_empty() {
        return Err(Error::invalid("command is empty"));
    }
    if command.contains('\0') {
        return Err(Error::invalid(
            "command contains a NUL byte, which no shell command can hold",
        ));
    }
    let workdir = workdir
        .map(|dir| paths::sandbox_path("workdir", dir))
        .transpose()?;
    for (key, value) in env {
        if key.is_empty() || key.contains('=') || key.contains('\0') {
            return Err(Error::invalid(format!(
                "environment variable name {key:?} is invalid"
            )));
        }
        if value.contains('\0') {
            return Err(Error::invalid(format!(
                "environment variable {key} contains a NUL byte"
            )));
        }
    }
    Ok(workdir)
}

/// What [`SandboxService::readiness`] found: each dependency's answer.
#[derive(Debug)]
pub struct Readiness {
    /// The sandbox store.
    pub database: Result<()>,
    /// The container runtime.
    pub docker: Result<()>,
}

impl Readiness {
    /// Every dependency answered.
    pub fn is_ready(&self) -> bool {
        self.database.is_ok() && self.docker.is_ok()
    }
}

/// `check`, or unavailable naming `dependency` when `timer` completes first.
async fn within<F>(
    check: impl Future<Output = Result<()>>,
    timer: F,
    dependency: &str,
) -> Result<()>
where
    F: Future<Output = ()>,
{
    futures::pin_mut!(check);
    futures::pin_mut!(timer);
    match futures::future::select(check, timer).await {
        futures::future::Either::Left((result, _)) => result,
        futures::future::Either::Right(((), _)) => Err(Error::unavailable(
            dependency,
            format!("the {dependency} did not answer the readiness check in time"),
        )),
    }
}

fn not_found(id: SandboxId) -> Error {
    Error::NotFound(format!("sandbox {id} not found"))
}

/// The directory and the exact name of the regular file a client names by its absolute
/// path (checked, normalized).
fn file_destination(path: &str) -> Result<(String, String)> {
    let path = paths::sandbox_path("path", path)?;
    let Some((dir, name)) = path.rsplit_once('/').filter(|(_, name)| !name.is_empty()) else {
        return Err(Error::file(
            FileProblem::IsDirectory,
            "path \"/\" is the root directory; a file cannot replace it",
        ));
    };
    let dir = if dir.is_empty() { "/" } else { dir };
    Ok((dir.to_owned(), name.to_owned()))
}

fn container_of(sandbox: &Sandbox) -> Result<&str> {
    sandbox.container_id.as_deref().ok_or_else(|| {
        Error::internal(format!(
            "running sandbox {} has no container id",
            sandbox.id
        ))
    })
}

fn port_mappings(id: SandboxId, published: &[PublishedPort]) -> Vec<PortMapping> {
    published
        .iter()
        .map(|p| PortMapping {
            id: Uuid::new_v4(),
            sandbox_id: id,
            host_port: p.host_port,
            container_port: p.container_port,
        })
        .collect()
}

/// The last `max` bytes of `s`, on a character boundary.
fn tail(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    s[start..].to_owned()
}

/// What execute answers for `output`: a timed-out command's exit code is
/// [`TIMED_OUT_EXIT_CODE`] whatever signal the runtime reports, and no text is longer than
/// `cap` bytes (a runtime's replacement characters for bytes that are not UTF-8 can make it
/// longer than the bytes it kept), cut on a character boundary and flagged `truncated`.
fn answered(mut output: ExecOutput, cap: usize) -> ExecOutput {
    output.exit_code = answered_exit(output.exit_code, output.timed_out);
    for text in [&mut output.output, &mut output.stdout, &mut output.stderr] {
        if text.len() > cap {
            let kept = truncate(text, cap).len();
            text.truncate(kept);
            output.truncated = true;
        }
    }
    output
}

/// The exit code a command answers: [`TIMED_OUT_EXIT_CODE`] when its timeout killed it,
/// whatever the runtime reports, else the runtime's.
fn answered_exit(exit_code: i64, timed_out: bool) -> i64 {
    if timed_out {
        TIMED_OUT_EXIT_CODE
    } else {
        exit_code
    }
}

/// The first `max` bytes of `s`, on a character boundary.
fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

mod activity;
mod files;
mod heartbeats;
mod leases;
mod processes;
mod reconcile;

pub use processes::{
    DEFAULT_PROCESS_OUTPUT_BYTES, MAX_PROCESS_OUTPUT_BYTES, MIN_PROCESS_OUTPUT_BYTES, StartProcess,
    Terminal,
};

pub use files::{
    EditRequest, GlobRequest, ListRequest, MoveRequest, ReadLinesRequest, SearchRequest,
};
pub use leases::LeaseReport;
pub use reconcile::ReconcileReport;

#[cfg(test)]
mod tests;
