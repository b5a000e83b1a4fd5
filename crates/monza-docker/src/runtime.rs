//! [`DockerRuntime`]: the [`ContainerRuntime`] port on a Docker engine.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use docker_api::Docker;
use docker_api::opts::{ContainerFilter, ContainerListOpts, ContainerRemoveOpts};
use futures::StreamExt;
use monza_agent_protocol::{FsAnswer, FsRequest, MAX_FRAME_LEN};
use monza_domain::{
    ArchiveReport, ByteStream, ContainerRuntime, ContainerSpec, ContainerState, CreatedContainer,
    EditFile, Error, ExecEvents, ExecOutput, ExecRequest, FileDownload, FileEntry, FileLines,
    FileList, FileStat, GlobFiles, GlobResult, ListFiles, ManagedContainer, ProcessEvents,
    ProcessInfo, ProcessRequest, ProcessSignal, PublishedPort, Result, SearchFiles, SearchMatch,
    SearchResult, SpooledArchive, UploadFile,
};
use tokio::sync::mpsc;

use crate::agent::{self, Agents, Outcome};
use crate::container::{
    LABEL_AGENT_USER, LABEL_DEPLOYMENT, LABEL_MANAGED, LABEL_SANDBOX_ID, container_name,
    create_body,
};
use crate::engine::{Address, RawClient, query_value};
use crate::error::{Failure, bounded};
use crate::files::ContainerFacts;
use crate::fsops;
use crate::settings::DockerSettings;
use crate::sink::{Finished, STREAM_EVENTS, Sink};

/// How long a container whose agent lost an exec may still look running before the agent's
/// error stands (the engine sees a killed container stop a moment later).
const LOST_SETTLE: Duration = Duration::from_millis(1000);

/// Sandboxes as Docker containers, through docker-api (and plain HTTP on the same socket
/// where docker-api 0.14 falls short; see the crate docs).
///
/// Cheap to clone: clones share the engine connections.
#[derive(Debug, Clone)]
pub struct DockerRuntime {
    pub(crate) docker: Docker,
    pub(crate) raw: RawClient,
    pub(crate) settings: DockerSettings,
    /// Engine socket paths no mount may expose.
    sockets: Vec<PathBuf>,
    /// What the file API knows of each container (see [`ContainerFacts`]).
    pub(crate) facts: Arc<Mutex<HashMap<String, Arc<ContainerFacts>>>>,
    /// Each sandbox's agent (see module `agent`).
    pub(crate) agents: Arc<Agents>,
}

impl DockerRuntime {
    /// A runtime for the engine at `settings.host`. Does not connect: an unreachable engine
    /// shows on the first call (see [`ContainerRuntime::ping`]). A malformed host is invalid
    /// input.
    pub fn new(settings: DockerSettings) -> Result<Self> {
        let address = Address::parse(&settings.host)?;
        let docker = Docker::new(&settings.host)
            .map_err(|e| Error::invalid(format!("DOCKER_HOST {:?}: {e}", settings.host)))?;
        let mut sockets = vec![
            PathBuf::from("/var/run/docker.sock"),
            PathBuf::from("/run/docker.sock"),
        ];
        if let Address::Unix(path) = &address {
            sockets.push(path.clone());
        }
        let raw = RawClient::new(&address);
        // The agent's mounts are host paths: only a local engine (a unix socket) sees them.
        let local = matches!(address, Address::Unix(_));
        if settings.agent && !local {
            tracing::info!(host = %settings.host, "a remote Docker engine: commands go through Docker exec, no agent");
        }
        let agents = Arc::new(Agents::new(
            settings.agent && local,
            settings.agent_dir.clone(),
            raw.clone(),
            settings.request_timeout,
        ));
        Ok(Self {
            raw,
            agents,
            docker,
            settings,
            sockets,
            facts: Arc::default(),
        })
    }

    /// Writes the agent binary under `agent_dir` now (once, checked by its hash) rather than
    /// at the first sandbox. When it cannot, the agent is off for this runtime (every
    /// command goes through Docker exec) and the error says why.
    pub fn install_agent(&self) -> Result<PathBuf> {
        self.agents.install_or_disable()
    }

    /// Whether new sandboxes get the agent (the setting, unless installing it failed).
    pub fn agent_enabled(&self) -> bool {
        self.agents.enabled()
    }

    /// Whether the container's agent is connected now.
    pub fn agent_connected(&self, container_id: &str) -> bool {
        self.agents
            .get(container_id)
            .is_some_and(|slot| slot.connected())
    }

    /// How many commands the container's agent ran to their end (not through Docker exec).
    pub fn agent_execs(&self, container_id: &str) -> u64 {
        self.agents.get(container_id).map_or(0, |slot| {
            slot.served.load(std::sync::atomic::Ordering::Relaxed)
        })
    }

    /// The settings it runs with.
    pub fn settings(&self) -> &DockerSettings {
        &self.settings
    }

    /// Takes over the agent of a container created by an earlier monza (or runtime): when
    /// it has the agent's mounts, makes sure their sources exist (its start needs them) and,
    /// with the agent on, listens on its socket directory again. An agent still running in
    /// it reconnects by itself; a dead one is restarted by the next exec. Best effort: a
    /// failure leaves the container to Docker exec.
    async fn adopt_agent(&self, container_id: &str) {
        let container = self.docker.containers().get(container_id);
        let Ok(inspect) = bounded(self.settings.request_timeout, container.inspect()).await else {
            return;
        };
        let running = inspect
            .state
            .as_ref()
            .and_then(|state| state.running)
            .unwrap_or(false);
        let labels = inspect.config.and_then(|c| c.labels).unwrap_or_default();
        // A path component: only a well-formed sandbox id.
        let Some(sandbox_id) = labels
            .get(LABEL_SANDBOX_ID)
            .and_then(|id| id.parse::<monza_domain::SandboxId>().ok())
            .map(|id| id.to_string())
        else {
            return;
        };
        let dir = self.agents.sandbox_dir(&sandbox_id);
        let mounted = inspect.mounts.unwrap_or_default().into_iter().any(|m| {
            m.destination.as_deref() == Some(crate::agent::SOCKET_DIR)
                && m.source.as_deref().map(std::path::Path::new) == Some(dir.as_path())
        });
        if !mounted {
            return;
        }
        // The token of the agent still running there, if an earlier monza saved it: that
        // agent, with its background processes, is served when it reconnects.
        let token = running
            .then(|| self.agents.saved_token(&sandbox_id))
            .flatten();
        let reconnecting = token.is_some();
        let adopted = if self.agents.enabled() {
            let user = labels.get(LABEL_AGENT_USER).cloned();
            self.agents
                .prepare(&sandbox_id, user, token)
                .map(|prepared| {
                    self.agents.register(container_id, prepared.slot.clone());
                    Some(prepared.slot)
                })
        } else {
            self.agents
                .binary()
                .and_then(|_| agent::make_dir(&dir))
                .map(|()| None)
        };
        let adopted = match adopted {
            Ok(Some(slot)) if running => {
                // Without a saved token, an agent still running in it holds a token this
                // runtime cannot know: it is refused (and exits); a fresh start replaces it.
                let started = if reconnecting {
                    slot.reconnect_or_start().await
                } else {
                    slot.start_agent().await
                };
                if let Err(e) = started {
                    tracing::warn!(container_id, error = %e, "starting the adopted agent failed");
                }
                Ok(())
            }
            other => other.map(|_| ()),
        };
        match adopted {
            Ok(()) => tracing::info!(container_id, %sandbox_id, "agent directory adopted"),
            Err(Error::Conflict(message)) => {
                tracing::debug!(container_id, %message, "agent not adopted")
            }
            Err(e) => tracing::warn!(container_id, error = %e, "adopting the agent failed"),
        }
    }

    /// Adopts the agent of a container created by an earlier monza, waiting for it (a
    /// background-process request cannot go through Docker exec meanwhile).
    async fn adopt_now(&self, container_id: &str) {
        if self.first_adoption(container_id) {
            self.adopt_agent(container_id).await;
        }
    }

    /// Whether the container's agent is to be adopted now: the agent is on, no slot holds
    /// the container, and its adoption was not tried yet (this claims it).
    fn first_adoption(&self, container_id: &str) -> bool {
        self.agents.enabled()
            && self.agents.get(container_id).is_none()
            && self.agents.first_adoption(container_id)
    }

    /// A background-process request's error when the agent is gone or missing because the
    /// container is: what Docker says of the container (not found, not running), which the
    /// service turns into the ended sandbox's conflict.
    async fn or_gone<T>(&self, container_id: &str, result: Result<T>) -> Result<T> {
        match result {
            Err(e @ (Error::Unavailable { .. } | Error::Conflict(_))) => {
                match self.state(container_id).await {
                    Ok(ContainerState::Missing) => Err(Error::not_found(format!(
                        "No such container: {container_id}"
                    ))),
                    Ok(ContainerState::Stopped) => Err(Error::conflict(format!(
                        "container {container_id} is not running"
                    ))),
                    _ => Err(e),
                }
            }
            other => other,
        }
    }

    /// Runs `request` through the agent when it can, else through Docker exec, its output
    /// into `sink`.
    async fn exec_into(
        &self,
        container_id: &str,
        request: &ExecRequest,
        sink: &mut Sink,
    ) -> Result<Finished> {
        self.adopt_in_background(container_id);
        if self.agents.enabled() {
            match self
                .agents
                .exec(
                    container_id,
                    request,
                    self.settings.default_exec_timeout,
                    sink,
                )
                .await
            {
                Some(Outcome::Done(finished)) => return finished,
                Some(Outcome::Lost(error)) => {
                    return Err(self.lost_exec(container_id, error).await);
                }
                None => {}
            }
        }
        self.run_exec(container_id, request, sink).await
    }

    /// For a container this runtime did not create (monza restarted), the first request
    /// starts adopting its agent in the background; that request goes through Docker exec.
    pub(crate) fn adopt_in_background(&self, container_id: &str) {
        if self.first_adoption(container_id) {
            let runtime = self.clone();
            let id = container_id.to_owned();
            tokio::spawn(async move { runtime.adopt_agent(&id).await });
        }
    }

    /// The agent lost an exec it had been handed (see [`Outcome::Lost`]). Deleting or
    /// stopping the sandbox kills its agent, so first: is the container still running? When
    /// it is gone or not running, the answer is what Docker exec answers for such a container
    /// (not found, or the conflict "is not running"), which the service turns into the ended
    /// sandbox's conflict; only a container still running keeps the agent's `error`. The
    /// engine may take a moment to see a killed container stop: a running one is asked again
    /// for up to [`LOST_SETTLE`].
    async fn lost_exec(&self, container_id: &str, error: Error) -> Error {
        let what = format!("running a command in container {container_id}");
        let until = Instant::now() + LOST_SETTLE;
        loop {
            let container = self.docker.containers().get(container_id);
            match bounded(self.settings.request_timeout, container.inspect()).await {
                Err(f) if f.is_not_found() => {
                    return Error::not_found(format!("{what}: No such container: {container_id}"));
                }
                Err(f) => {
                    tracing::warn!(container_id, error = %f.into_domain(&self.settings.host, &what),
                        "inspecting a container whose agent lost an exec failed");
                    return error;
                }
                Ok(inspect) => {
                    let state = inspect.state.as_ref();
                    let removing = state.and_then(|s| s.status.as_deref()) == Some("removing");
                    let running = state.and_then(|s| s.running).unwrap_or(false);
                    if removing || !running {
                        return Error::conflict(format!(
                            "{what}: container {container_id} is not running"
                        ));
                    }
                }
            }
            if Instant::now() >= until {
                return error;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn fail<'a>(&'a self, what: impl std::fmt::Display + 'a) -> impl FnOnce(Failure) -> Error + 'a {
        move |f| f.into_domain(&self.settings.host, what)
    }

    async fn published_ports(&self, container_id: &str) -> Result<Vec<PublishedPort>> {
        let container = self.docker.containers().get(container_id);
        let inspect = bounded(self.settings.request_timeout, container.inspect())
            .await
            .map_err(self.fail(format_args!("inspecting container {container_id}")))?;
        let mut ports = Vec::new();
        let map = inspect
            .network_settings
            .and_then(|n| n.ports)
            .unwrap_or_default();
        for (key, bindings) in map {
            let Some(container_port) = key.strip_suffix("/tcp").and_then(|p| p.parse::<u16>().ok())
            else {
                continue;
            };
            let host_port = bindings
                .unwrap_or_default()
                .into_iter()
                .filter_map(|b| b.host_port.and_then(|p| p.parse::<u16>().ok()))
                .find(|p| *p != 0);
            if let Some(host_port) = host_port {
                ports.push(PublishedPort {
                    container_port,
                    host_port,
                });
            }
        }
        ports.sort_by_key(|p| p.container_port);
        Ok(ports)
    }
}

#[async_trait]
impl ContainerRuntime for DockerRuntime {
    #[tracing::instrument(skip_all, err(level = "info"))]
    async fn ping(&self) -> Result<()> {
        bounded(self.settings.request_timeout, self.docker.ping())
            .await
            .map(drop)
            .map_err(self.fail("ping"))
    }

    #[tracing::instrument(skip_all, fields(sandbox_id = %spec.sandbox_id, template = %spec.template.name), err(level = "info"))]
    async fn create(&self, spec: &ContainerSpec) -> Result<CreatedContainer> {
        let image = self.prepare_image(&spec.template).await?;
        let agent = if self.agents.enabled() {
            // No agent is no reason to fail the create: its commands go through Docker exec.
            match self.agents.prepare(
                &spec.sandbox_id.to_string(),
                spec.template.remote_user.clone(),
                None,
            ) {
                Ok(prepared) => Some(prepared),
                Err(e) => {
                    tracing::warn!(sandbox_id = %spec.sandbox_id, error = %e, "preparing the agent failed; this sandbox gets none");
                    None
                }
            }
        } else {
            None
        };
        // Until the container exists, a failed or cancelled create removes the agent's
        // directory and lock file.
        let mut pending = PendingAgent(agent);
        let body = create_body(
            spec,
            &image,
            &self.settings,
            &self.sockets,
            pending.0.as_ref().map(|a| &a.container),
        )?;
        let name = container_name(spec);
        let endpoint = format!("/containers/create?name={}", query_value(&name));
        let what = format!("creating container {name} from {image}");
        let created = bounded(
            self.settings.request_timeout,
            self.raw.post_for_id(&endpoint, body.to_string()),
        )
        .await
        .map_err(self.fail(&what))?;
        tracing::info!(container_id = %created, %image, "container created");
        if let Some(agent) = pending.0.take() {
            self.agents.register(&created, agent.slot);
        }
        Ok(CreatedContainer { id: created, image })
    }

    #[tracing::instrument(skip_all, fields(container_id), err(level = "info"))]
    async fn start(&self, container_id: &str) -> Result<Vec<PublishedPort>> {
        if self.agents.get(container_id).is_none() {
            self.adopt_agent(container_id).await;
        }
        let container = self.docker.containers().get(container_id);
        let already_running = match bounded(self.settings.request_timeout, container.start()).await
        {
            Ok(()) => false,
            // 304: already started.
            Err(Failure::Status { code: 304, .. }) => true,
            // `docker rm -f` under way: the container is going, as if already gone.
            Err(Failure::Status { code: 409, message })
                if message.contains("marked for removal") =>
            {
                return Err(Error::not_found(format!(
                    "starting container {container_id}: it is being removed ({message})"
                )));
            }
            Err(f) => {
                return Err(f.into_domain(
                    &self.settings.host,
                    format_args!("starting container {container_id}"),
                ));
            }
        };
        if let Some(slot) = self.agents.get(container_id)
            && !slot.connected()
            // Adopted while running: adoption has just started it.
            && !(already_running && slot.recently_started())
        {
            // Beside the inspect below rather than before it: a create does not wait for the
            // agent's exec (two engine round trips).
            slot.start_in_background();
        }
        self.published_ports(container_id).await
    }

    #[tracing::instrument(skip_all, fields(container_id), err(level = "info"))]
    async fn state(&self, container_id: &str) -> Result<ContainerState> {
        let container = self.docker.containers().get(container_id);
        match bounded(self.settings.request_timeout, container.inspect()).await {
            Ok(inspect) => {
                let running = inspect
                    .state
                    .and_then(|state| state.running)
                    .unwrap_or(false);
                Ok(if running {
                    ContainerState::Running
                } else {
                    ContainerState::Stopped
                })
            }
            Err(f) if f.is_not_found() => Ok(ContainerState::Missing),
            Err(f) => Err(f.into_domain(
                &self.settings.host,
                format_args!("inspecting container {container_id}"),
            )),
        }
    }

    #[tracing::instrument(skip_all, fields(container_id), err(level = "info"))]
    async fn exec(&self, container_id: &str, request: &ExecRequest) -> Result<ExecOutput> {
        let mut sink = Sink::collect(request.max_output_bytes);
        let finished = self.exec_into(container_id, request, &mut sink).await?;
        sink.into_output(finished)
            .ok_or_else(|| Error::internal("a collecting sink gave no output"))
    }

    #[tracing::instrument(skip_all, fields(container_id), err(level = "info"))]
    async fn exec_stream(&self, container_id: &str, request: &ExecRequest) -> Result<ExecEvents> {
        let (tx, mut rx) = mpsc::channel(STREAM_EVENTS);
        let runtime = self.clone();
        let container_id = container_id.to_owned();
        let request = request.clone();
        // Its own task, so the command runs while the consumer is between two reads; the
        // consumer dropping the stream is noticed by the sink, which kills the command.
        tokio::spawn(async move {
            let mut sink = Sink::send(tx);
            let finished = runtime.exec_into(&container_id, &request, &mut sink).await;
            sink.end(finished).await;
        });
        Ok(futures::stream::poll_fn(move |cx| rx.poll_recv(cx)).boxed())
    }

    #[tracing::instrument(skip_all, fields(container_id, dest_dir, size = file.size), err(level = "info"))]
    async fn upload(
        &self,
        container_id: &str,
        dest_dir: &str,
        file: UploadFile,
    ) -> Result<FileStat> {
        self.upload_file(container_id, dest_dir, file).await
    }

    #[tracing::instrument(skip_all, fields(container_id, path), err(level = "info"))]
    async fn own_directory(
        &self,
        container_id: &str,
        path: &str,
        user: Option<String>,
    ) -> Result<()> {
        self.own_dir(container_id, path, user.as_deref()).await
    }

    #[tracing::instrument(skip_all, fields(container_id, path), err(level = "info"))]
    async fn stat(&self, container_id: &str, path: &str) -> Result<FileStat> {
        self.stat_path(container_id, path).await
    }

    #[tracing::instrument(skip_all, fields(container_id, path), err(level = "info"))]
    async fn download(&self, container_id: &str, path: &str) -> Result<FileDownload> {
        self.download_file(container_id, path).await
    }

    #[tracing::instrument(skip_all, fields(container_id), err(level = "info"))]
    async fn remove(&self, container_id: &str) -> Result<()> {
        let container = self.docker.containers().get(container_id);
        // A container this runtime holds no slot for (created by an earlier monza, not
        // adopted yet) may still have an agent directory: found from its label first.
        let leftover = if self.agents.get(container_id).is_none() {
            match bounded(self.settings.request_timeout, container.inspect()).await {
                Ok(inspect) => inspect
                    .config
                    .and_then(|c| c.labels)
                    .and_then(|labels| labels.get(LABEL_SANDBOX_ID).cloned())
                    .and_then(|id| id.parse::<monza_domain::SandboxId>().ok())
                    .map(|id| id.to_string()),
                Err(_) => None,
            }
        } else {
            None
        };
        let opts = ContainerRemoveOpts::builder()
            .force(true)
            .volumes(true)
            .build();
        let removed = bounded(self.settings.request_timeout, container.remove(&opts)).await;
        if removed.is_ok() || removed.as_ref().is_err_and(Failure::is_not_found) {
            self.agents.forget(container_id);
            if let Some(sandbox_id) = leftover {
                self.agents.remove_leftovers(&sandbox_id);
            }
        }
        match removed {
            Ok(_) => Ok(()),
            Err(f) if f.is_not_found() => Ok(()),
            Err(Failure::Status { code: 409, message })
                if message.contains("already in progress") =>
            {
                Ok(())
            }
            Err(f) => Err(f.into_domain(
                &self.settings.host,
                format_args!("removing container {container_id}"),
            )),
        }
    }

    #[tracing::instrument(skip_all, fields(container_id), err(level = "info"))]
    async fn start_process(
        &self,
        container_id: &str,
        request: &ProcessRequest,
    ) -> Result<ProcessInfo> {
        self.adopt_now(container_id).await;
        let started = self.agents.start_process(container_id, request).await;
        self.or_gone(container_id, started).await
    }

    #[tracing::instrument(skip_all, fields(container_id), err(level = "info"))]
    async fn processes(&self, container_id: &str) -> Result<Vec<ProcessInfo>> {
        self.adopt_now(container_id).await;
        let listed = self.agents.processes(container_id).await;
        self.or_gone(container_id, listed).await
    }

    #[tracing::instrument(skip_all, fields(container_id, pid), err(level = "info"))]
    async fn signal_process(
        &self,
        container_id: &str,
        pid: u32,
        signal: ProcessSignal,
    ) -> Result<()> {
        self.adopt_now(container_id).await;
        let signalled = self.agents.signal_process(container_id, pid, signal).await;
        self.or_gone(container_id, signalled).await
    }

    #[tracing::instrument(skip_all, fields(container_id, pid), err(level = "info"))]
    async fn remove_process(&self, container_id: &str, pid: u32) -> Result<()> {
        self.adopt_now(container_id).await;
        let removed = self.agents.forget_process(container_id, pid).await;
        self.or_gone(container_id, removed).await
    }

    #[tracing::instrument(skip_all, fields(container_id, pid, bytes = data.len()), err(level = "info"))]
    async fn process_stdin(
        &self,
        container_id: &str,
        pid: u32,
        data: bytes::Bytes,
        close: bool,
    ) -> Result<()> {
        self.adopt_now(container_id).await;
        let written = self
            .agents
            .process_stdin(container_id, pid, data.to_vec(), close)
            .await;
        self.or_gone(container_id, written).await
    }

    #[tracing::instrument(skip_all, fields(container_id, pid), err(level = "info"))]
    async fn resize_process(
        &self,
        container_id: &str,
        pid: u32,
        size: monza_domain::TerminalSize,
    ) -> Result<()> {
        self.adopt_now(container_id).await;
        let resized = self.agents.resize_process(container_id, pid, size).await;
        self.or_gone(container_id, resized).await
    }

    #[tracing::instrument(skip_all, fields(container_id, pid), err(level = "info"))]
    async fn process_output(
        &self,
        container_id: &str,
        pid: u32,
        offsets: (u64, u64),
        follow: bool,
    ) -> Result<ProcessEvents> {
        self.adopt_now(container_id).await;
        let output = self
            .agents
            .process_output(container_id, pid, offsets, follow)
            .await;
        self.or_gone(container_id, output).await
    }

    #[tracing::instrument(skip_all, fields(container_id), err(level = "info"))]
    async fn list_files(
        &self,
        container_id: &str,
        user: Option<String>,
        request: &ListFiles,
    ) -> Result<FileList> {
        let op = FsRequest::List {
            path: request.path.clone(),
            recursive: request.recursive,
            limit: request.limit,
            budget: fsops::budget(request.walk),
        };
        match self
            .fs(container_id, user.as_deref(), op, Some(request.walk))
            .await?
        {
            FsAnswer::Entries { entries, truncated } => Ok(FileList {
                entries: entries.into_iter().map(fsops::file_entry).collect(),
                truncated,
            }),
            other => Err(fsops::wrong_answer(&other)),
        }
    }

    #[tracing::instrument(skip_all, fields(container_id), err(level = "info"))]
    async fn make_directory(
        &self,
        container_id: &str,
        user: Option<String>,
        path: &str,
        parents: bool,
    ) -> Result<FileEntry> {
        let op = FsRequest::Mkdir {
            path: path.to_owned(),
            parents,
        };
        match self.fs(container_id, user.as_deref(), op, None).await? {
            FsAnswer::Entry { entry } => Ok(fsops::file_entry(entry)),
            other => Err(fsops::wrong_answer(&other)),
        }
    }

    #[tracing::instrument(skip_all, fields(container_id), err(level = "info"))]
    async fn move_path(
        &self,
        container_id: &str,
        user: Option<String>,
        from: &str,
        to: &str,
        overwrite: bool,
    ) -> Result<FileEntry> {
        let op = FsRequest::Move {
            from: from.to_owned(),
            to: to.to_owned(),
            overwrite,
        };
        match self.fs(container_id, user.as_deref(), op, None).await? {
            FsAnswer::Entry { entry } => Ok(fsops::file_entry(entry)),
            other => Err(fsops::wrong_answer(&other)),
        }
    }

    #[tracing::instrument(skip_all, fields(container_id), err(level = "info"))]
    async fn remove_path(
        &self,
        container_id: &str,
        user: Option<String>,
        path: &str,
        recursive: bool,
    ) -> Result<u64> {
        let op = FsRequest::Remove {
            path: path.to_owned(),
            recursive,
        };
        match self.fs(container_id, user.as_deref(), op, None).await? {
            FsAnswer::Removed { removed } => Ok(removed),
            other => Err(fsops::wrong_answer(&other)),
        }
    }

    #[tracing::instrument(skip_all, fields(container_id), err(level = "info"))]
    async fn read_lines(
        &self,
        container_id: &str,
        user: Option<String>,
        path: &str,
        offset: u64,
        limit: u64,
    ) -> Result<FileLines> {
        let op = FsRequest::ReadLines {
            path: path.to_owned(),
            offset,
            limit,
            max_bytes: u64::try_from(MAX_FRAME_LEN / 2).unwrap_or(u64::MAX),
        };
        match self.fs(container_id, user.as_deref(), op, None).await? {
            FsAnswer::Lines { lines, next_offset } => Ok(FileLines { lines, next_offset }),
            other => Err(fsops::wrong_answer(&other)),
        }
    }

    #[tracing::instrument(skip_all, fields(container_id), err(level = "info"))]
    async fn search_files(
        &self,
        container_id: &str,
        user: Option<String>,
        request: &SearchFiles,
    ) -> Result<SearchResult> {
        let op = FsRequest::Search {
            path: request.path.clone(),
            pattern: request.pattern.clone(),
            regex: request.regex,
            ignore_case: request.ignore_case,
            glob: request.glob.clone(),
            max_results: request.max_results,
            budget: fsops::budget(request.walk),
        };
        match self
            .fs(container_id, user.as_deref(), op, Some(request.walk))
            .await?
        {
            FsAnswer::Matches { matches, truncated } => Ok(SearchResult {
                matches: matches
                    .into_iter()
                    .map(|m| SearchMatch {
                        path: m.path,
                        line: m.line,
                        text: m.text,
                    })
                    .collect(),
                truncated,
            }),
            other => Err(fsops::wrong_answer(&other)),
        }
    }

    #[tracing::instrument(skip_all, fields(container_id), err(level = "info"))]
    async fn glob_files(
        &self,
        container_id: &str,
        user: Option<String>,
        request: &GlobFiles,
    ) -> Result<GlobResult> {
        let op = FsRequest::Glob {
            path: request.path.clone(),
            pattern: request.pattern.clone(),
            max_results: request.max_results,
            budget: fsops::budget(request.walk),
        };
        match self
            .fs(container_id, user.as_deref(), op, Some(request.walk))
            .await?
        {
            FsAnswer::Paths { paths, truncated } => Ok(GlobResult { paths, truncated }),
            other => Err(fsops::wrong_answer(&other)),
        }
    }

    #[tracing::instrument(skip_all, fields(container_id), err(level = "info"))]
    async fn edit_file(
        &self,
        container_id: &str,
        user: Option<String>,
        request: &EditFile,
    ) -> Result<u64> {
        let op = FsRequest::Edit {
            path: request.path.clone(),
            old: request.old.clone(),
            new: request.new.clone(),
            replace_all: request.replace_all,
        };
        match self.fs(container_id, user.as_deref(), op, None).await? {
            FsAnswer::Edited { replacements } => Ok(replacements),
            other => Err(fsops::wrong_answer(&other)),
        }
    }

    #[tracing::instrument(skip_all, fields(container_id), err(level = "info"))]
    async fn put_tree(
        &self,
        container_id: &str,
        dir: &str,
        user: Option<String>,
        archive: SpooledArchive,
        max_entries: u64,
    ) -> Result<ArchiveReport> {
        let put = self
            .unpack_tree(container_id, dir, user.as_deref(), archive, max_entries)
            .await;
        self.or_gone(container_id, put).await
    }

    #[tracing::instrument(skip_all, fields(container_id), err(level = "info"))]
    async fn get_tree(&self, container_id: &str, dir: &str) -> Result<ByteStream> {
        self.pack_tree(container_id, dir).await
    }

    async fn kept_alive(&self) -> Result<Vec<monza_domain::SandboxId>> {
        Ok(self
            .agents
            .kept_alive()
            .await
            .into_iter()
            .filter_map(|id| id.parse().ok())
            .collect())
    }

    #[tracing::instrument(skip_all, err(level = "info"))]
    async fn list_managed(&self) -> Result<Vec<ManagedContainer>> {
        let mut filters = vec![ContainerFilter::Label(LABEL_MANAGED.into(), "true".into())];
        if let Some(deployment) = &self.settings.deployment {
            filters.push(ContainerFilter::Label(
                LABEL_DEPLOYMENT.into(),
                deployment.clone(),
            ));
        }
        let opts = ContainerListOpts::builder()
            .all(true)
            .filter(filters)
            .build();
        let containers = self.docker.containers();
        let summaries = bounded(self.settings.request_timeout, containers.list(&opts))
            .await
            .map_err(self.fail("listing managed containers"))?;
        Ok(summaries
            .into_iter()
            .filter_map(|c| {
                let id = c.id?;
                let sandbox_id = c
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(LABEL_SANDBOX_ID))
                    .and_then(|v| v.parse().ok());
                Some(ManagedContainer {
                    id,
                    sandbox_id,
                    running: c.state.as_deref() == Some("running"),
                })
            })
            .inspect(|c| {
                // Containers of an earlier monza (this one restarted): their agents are
                // adopted now rather than at their next command, so the background
                // processes that keep them alive are seen.
                if c.running && self.first_adoption(&c.id) {
                    let runtime = self.clone();
                    let id = c.id.clone();
                    tokio::spawn(async move { runtime.adopt_agent(&id).await });
                }
            })
            .collect())
    }
}

/// An agent prepared for a container not created yet: dropped unused (the create failed or
/// was cancelled), it closes its slot and removes the directory and lock file.
struct PendingAgent(Option<crate::agent::Prepared>);

impl Drop for PendingAgent {
    fn drop(&mut self) {
        if let Some(agent) = self.0.take() {
            agent.slot.close(true);
        }
    }
}
