//! The `monza` application: reads its settings, wires the concrete adapters into the
//! domain's [`SandboxService`], runs the reaper, the reconciler and the HTTP server, and
//! shuts down cleanly.
//!
//! This is the only crate that names every concrete adapter type.

mod leases;
mod periodic;
pub mod reaper;
pub mod reconciler;
pub mod settings;
pub mod store;
pub mod telemetry;
pub mod tokens;

use std::net::TcpListener;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::{Server, ServerHandle};
use actix_web::{App, HttpServer};
use anyhow::{Context, Result, anyhow};
use monza_devcontainer::DirTemplateCatalog;
use monza_docker::{DockerRuntime, DockerSettings};
use monza_domain::{
    Bootstrap, ContainerRuntime, FileLimits, SandboxService, ServiceConfig, SystemClock,
    TemplateName, TokenService, WalkLimits,
};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::settings::{AuthMode, Secret, ServeArgs};

/// A built application: the listener is bound, the store migrated, Docker answered and
/// the reaper is running. [`Application::run_until_stopped`] serves until a signal.
pub struct Application {
    port: u16,
    server: Server,
    handle: ServerHandle,
    reaper: JoinHandle<()>,
    reconciler: JoinHandle<()>,
    lease_keeper: JoinHandle<()>,
    cancel: CancellationToken,
    /// Stops the lease keeper, only once the HTTP server is done: creates still running
    /// during shutdown keep their leases.
    cancel_leases: CancellationToken,
    shutdown_timeout: Duration,
    service: SandboxService,
}

impl std::fmt::Debug for Application {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Application")
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

/// Stops a running [`Application`] from elsewhere (tests, embedders).
#[derive(Clone)]
pub struct StopHandle {
    handle: ServerHandle,
    cancel: CancellationToken,
}

impl std::fmt::Debug for StopHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StopHandle").finish_non_exhaustive()
    }
}

impl StopHandle {
    /// Stops accepting, lets in-flight requests finish, stops the reaper and the reconciler.
    pub async fn stop(&self) {
        self.cancel.cancel();
        self.handle.stop(true).await;
    }
}

impl Application {
    /// Start-up in order: configuration → database and migrations (with retry) → the first
    /// admin token if the store has none → Docker ping → reaper and reconciler (its first pass
    /// at once) → HTTP listener.
    pub async fn build(args: ServeArgs) -> Result<Self> {
        let default_template = TemplateName::new(&args.default_template)
            .map_err(|e| anyhow!("MONZA_DEFAULT_TEMPLATE: {e}"))?;
        let retry = store::Retry {
            attempts: args.db_connect_attempts,
            delay: args.db_connect_delay,
        };
        let stores = store::open_stores(args.database_url.as_ref(), &args.data_dir, &retry).await?;
        let repo = stores.sandboxes.clone();
        let auth = match args.auth {
            AuthMode::Disabled => {
                tracing::warn!(
                    "MONZA_AUTH=disabled: authentication is OFF and every caller is an admin; \
                     use this only on a machine nobody else can reach"
                );
                monza_http::Auth::Disabled
            }
            AuthMode::Enabled => {
                let tokens = TokenService::new(stores.tokens.clone(), Arc::new(SystemClock));
                bootstrap(&tokens, args.bootstrap_token.as_ref()).await?;
                monza_http::Auth::Tokens(tokens)
            }
        };

        let deployment = args
            .deployment
            .clone()
            .unwrap_or_else(|| stores.deployment.clone());
        tracing::info!(%deployment, "deployment label of this server's containers");
        let docker = DockerRuntime::new(DockerSettings {
            host: args.docker_host.clone(),
            publish_addr: args.publish_addr,
            memory_limit_bytes: args.memory_limit,
            cpu_limit: args.cpu_limit,
            pids_limit: args.pids_limit,
            request_timeout: args.docker_timeout,
            deployment: Some(deployment),
            agent: args.agent == settings::AgentMode::On,
            agent_dir: args.agent_dir.clone(),
            ..DockerSettings::default()
        })
        .map_err(|e| anyhow!("DOCKER_HOST {}: {e}", args.docker_host))?;
        docker
            .ping()
            .await
            .map_err(|e| anyhow!("Docker engine at {}: {e}", args.docker_host))?;
        tracing::info!(docker_host = %args.docker_host, "Docker engine answers");
        if docker.agent_enabled() {
            match docker.install_agent() {
                Ok(path) => tracing::info!(path = %path.display(), "sandbox agent ready"),
                Err(e) => tracing::warn!(
                    error = %e,
                    "sandbox agent unavailable (set MONZA_AGENT_DIR to a writable directory, or MONZA_AGENT=off); commands go through Docker exec"
                ),
            }
        }

        let catalog = DirTemplateCatalog::new(&args.devcontainers, args.allow_unsafe_templates);
        if let Ok(names) = monza_domain::TemplateCatalog::list(&catalog).await {
            tracing::info!(
                dir = %args.devcontainers.display(),
                templates = ?names.iter().map(TemplateName::as_str).collect::<Vec<_>>(),
                "template catalog"
            );
        }

        let ttl = time::Duration::try_from(args.sandbox_ttl)
            .map_err(|e| anyhow!("MONZA_SANDBOX_TTL: {e}"))?;
        let service = SandboxService::new(
            repo,
            Arc::new(docker),
            Arc::new(catalog),
            Arc::new(SystemClock),
            ServiceConfig {
                ttl,
                default_template,
                max_sandboxes_per_tenant: (args.max_sandboxes_per_tenant > 0)
                    .then_some(args.max_sandboxes_per_tenant),
                create_timeout: time::Duration::try_from(args.create_timeout)
                    .map_err(|e| anyhow!("MONZA_CREATE_TIMEOUT: {e}"))?,
                create_lease: time::Duration::try_from(args.create_lease)
                    .map_err(|e| anyhow!("MONZA_CREATE_LEASE: {e}"))?,
                process_output_bytes: args.process_output_bytes,
                max_upload_bytes: args.max_upload_bytes,
                max_archive_bytes: args.max_archive_bytes,
                file_limits: FileLimits {
                    walk: WalkLimits {
                        max_entries: args.file_walk_max_entries,
                        timeout: args.file_walk_timeout,
                    },
                    max_results: args.file_max_results,
                    max_batch_bytes: args.file_batch_max_bytes,
                    ..FileLimits::default()
                },
                ..ServiceConfig::default()
            },
        );

        let cancel = CancellationToken::new();
        let reaper = tokio::spawn(reaper::run(
            service.clone(),
            args.reaper_interval,
            cancel.clone(),
        ));
        // Its first pass runs now, at start-up: it fails sandboxes a crashed predecessor left
        // `creating` past the timeout and removes containers nobody owns.
        let reconciler = tokio::spawn(reconciler::run(
            service.clone(),
            args.reconcile_interval,
            cancel.clone(),
        ));
        tracing::info!(instance = %service.instance(), "instance id of this server's create leases");
        let cancel_leases = CancellationToken::new();
        let lease_keeper = tokio::spawn(leases::run(service.clone(), cancel_leases.clone()));

        let listener = TcpListener::bind(args.addr)
            .with_context(|| format!("SERVER_ADDR {}: cannot listen", args.addr))?;
        let port = listener.local_addr()?.port();
        let http_service = service.clone();
        // Built once, outside the per-worker factory: its output budget is server-wide.
        let http_config = monza_http::HttpConfig {
            body_timeout: args.body_timeout,
            upload_min_bytes_per_sec: args.upload_min_rate,
            max_command_bytes: usize::try_from(args.max_command_bytes).unwrap_or(usize::MAX),
            exec_output_budget: monza_http::OutputBudget::new(args.exec_output_budget),
            ..monza_http::HttpConfig::default()
        };
        let server = HttpServer::new(move || {
            App::new().configure(monza_http::configure_with(
                http_service.clone(),
                auth.clone(),
                http_config.clone(),
            ))
        })
        .disable_signals()
        // actix keeps the OS default (Nagle on): a streamed response's small header write then
        // waits for the client's delayed ACK, 40 ms per download (docs/BENCHMARKS.md).
        .tcp_nodelay(true)
        .keep_alive(args.http_keep_alive)
        .shutdown_timeout(args.shutdown_timeout.as_secs())
        .listen(listener)?
        .run();
        let handle = server.handle();
        tracing::info!(addr = %args.addr, port, "monza listening");
        Ok(Self {
            port,
            server,
            handle,
            reaper,
            reconciler,
            lease_keeper,
            cancel,
            cancel_leases,
            shutdown_timeout: args.shutdown_timeout,
            service,
        })
    }

    /// The port the server listens on (useful with `127.0.0.1:0`).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The wired use cases (for tests and embedders).
    pub fn service(&self) -> &SandboxService {
        &self.service
    }

    /// A handle that stops the application.
    pub fn stop_handle(&self) -> StopHandle {
        StopHandle {
            handle: self.handle.clone(),
            cancel: self.cancel.clone(),
        }
    }

    /// Serves until SIGINT/SIGTERM (or a [`StopHandle`]): then stops accepting, finishes
    /// in-flight requests (up to the shutdown timeout) and stops the reaper, the reconciler
    /// and (last, so creates finishing during shutdown keep their leases) the lease keeper.
    /// Sandboxes are left running: the next start serves them again. If a background task
    /// dies, says so and returns an error.
    pub async fn run_until_stopped(self) -> Result<()> {
        let Self {
            server,
            handle,
            mut reaper,
            mut reconciler,
            mut lease_keeper,
            cancel,
            cancel_leases,
            shutdown_timeout,
            ..
        } = self;
        let mut server = tokio::spawn(server);
        let mut server_done = false;
        let mut reaper_done = false;
        let mut reconciler_done = false;
        let mut lease_keeper_done = false;
        let outcome = tokio::select! {
            () = shutdown_signal() => {
                tracing::info!("signal received: shutting down");
                Ok(())
            }
            result = &mut server => {
                server_done = true;
                result.context("HTTP server task")?.context("HTTP server")?;
                Ok(())
            }
            result = &mut reaper => {
                reaper_done = true;
                background_ended("reaper", result, &cancel)
            }
            result = &mut reconciler => {
                reconciler_done = true;
                background_ended("reconciler", result, &cancel)
            }
            result = &mut lease_keeper => {
                lease_keeper_done = true;
                background_ended("lease keeper", result, &cancel_leases)
            }
        };
        cancel.cancel();
        handle.stop(true).await;
        if !server_done {
            let _ = tokio::time::timeout(shutdown_timeout, &mut server).await;
        }
        if !reaper_done {
            let _ = tokio::time::timeout(Duration::from_secs(5), &mut reaper).await;
        }
        if !reconciler_done {
            let _ = tokio::time::timeout(Duration::from_secs(5), &mut reconciler).await;
        }
        cancel_leases.cancel();
        if !lease_keeper_done {
            let _ = tokio::time::timeout(Duration::from_secs(5), &mut lease_keeper).await;
        }
        tracing::info!("monza stopped");
        outcome
    }
}

/// What a background task's end means: an orderly stop if a [`StopHandle`] cancelled it,
/// otherwise an error naming it.
fn background_ended(
    task: &str,
    result: std::result::Result<(), tokio::task::JoinError>,
    cancel: &CancellationToken,
) -> Result<()> {
    match result {
        Ok(()) if cancel.is_cancelled() => Ok(()),
        Ok(()) => Err(anyhow!("the {task} stopped unexpectedly")),
        Err(e) => Err(anyhow!("the {task} task died: {e}")),
    }
}

/// The marker that starts the line carrying a generated first token, on stderr.
pub const BOOTSTRAP_MARKER: &str = "MONZA BOOTSTRAP ADMIN TOKEN";

/// First start: makes the first admin token if the store holds none (see
/// [`TokenService::bootstrap`]). A generated token is printed once, on stderr, never logged.
async fn bootstrap(tokens: &TokenService, given: Option<&Secret>) -> Result<()> {
    let outcome = tokens
        .bootstrap(given.map(Secret::expose))
        .await
        .map_err(|e| anyhow!("{e}"))?;
    match outcome {
        Bootstrap::AlreadyConfigured => {
            if given.is_some() {
                tracing::info!(
                    "MONZA_BOOTSTRAP_TOKEN ignored: the store already holds tokens \
                     (manage them with `monza token`)"
                );
            }
        }
        Bootstrap::FromSetting(token) => {
            tracing::info!(token_id = %token.id, "MONZA_BOOTSTRAP_TOKEN is now an admin token");
        }
        Bootstrap::Generated(issued) => {
            eprintln!(
                "\n{BOOTSTRAP_MARKER} (shown once, store it now): {}\n\
                 Send it as `Authorization: Bearer <token>`. More tokens: \
                 `monza token create --tenant NAME [--admin]` (same DATABASE_URL / \
                 MONZA_DATA_DIR); revoke with `monza token revoke ID`.\n",
                issued.reveal()
            );
            tracing::warn!(
                token_id = %issued.token.id,
                "no token in the store: generated an admin token and printed it once on stderr"
            );
        }
    }
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}

/// `monza templates check DIR`: prints one line per template; exit status 1 if any has an
/// error.
pub fn check_templates(dir: &Path, allow_unsafe: bool) -> ExitCode {
    let lines = monza_devcontainer::check_dir(dir, allow_unsafe);
    for line in &lines {
        println!("{line}");
    }
    if monza_devcontainer::has_errors(&lines) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
