//! How the adapter reaches the engine and what it gives each sandbox.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::Duration;

/// The engine address used when `DOCKER_HOST` is not set.
pub const DEFAULT_DOCKER_HOST: &str = "unix:///var/run/docker.sock";

/// Where the agent's binary and sockets live when `MONZA_AGENT_DIR` is not set.
pub const DEFAULT_AGENT_DIR: &str = "/run/monza/agent";

/// Settings of [`crate::DockerRuntime`]. `monza-app` fills them from its configuration
/// (`DOCKER_HOST`, `MONZA_PUBLISH_ADDR`, `SANDBOX_MEMORY_LIMIT`, `SANDBOX_CPU_LIMIT`, ...).
#[derive(Debug, Clone, PartialEq)]
pub struct DockerSettings {
    /// The engine: `unix:///path/to/docker.sock`, `tcp://host:port` or `http://host:port`.
    pub host: String,
    /// Host address forwarded ports are published on (default `127.0.0.1`).
    pub publish_addr: IpAddr,
    /// Memory limit of every sandbox, in bytes (default 512 MiB). A template may ask for
    /// less, never for more. Swap is not allowed beyond it.
    pub memory_limit_bytes: u64,
    /// CPU limit of every sandbox, in CPUs (default 1.0). A template may ask for less.
    pub cpu_limit: f64,
    /// Most processes in a sandbox (default 512).
    pub pids_limit: i64,
    /// Bound on every short engine call (inspect, create, start, remove, list, ping...):
    /// a down or wedged engine gives an error after this long, never a hang. Default 30 s.
    pub request_timeout: Duration,
    /// Bound on pulling or building an image (default 10 min).
    pub image_timeout: Duration,
    /// Bound on one upload request, and on the silence between two chunks of a download
    /// (default 10 min).
    pub transfer_timeout: Duration,
    /// Timeout applied to an exec that does not give one (default 1 h).
    pub default_exec_timeout: Duration,
    /// Largest build context, in bytes, held in memory while building a template's image
    /// (default 64 MiB).
    pub max_build_context_bytes: u64,
    /// The deployment this runtime serves: every container it creates carries it as the
    /// `monza.deployment` label, and [`monza_domain::ContainerRuntime::list_managed`] lists
    /// only containers carrying it, so reconciliation never touches another deployment's
    /// containers on a shared engine. `None`: no label, every managed container is listed.
    pub deployment: Option<String>,
    /// Run commands through the agent inside each sandbox (default true), falling back to
    /// Docker exec whenever it is not there. `false` (`MONZA_AGENT=off`): Docker exec only,
    /// and containers get neither the agent's mounts nor its socket. Ignored (off) for an
    /// engine reached over TCP, which would not see the host paths the mounts name.
    pub agent: bool,
    /// Host directory the agent lives in (default `/run/monza/agent`; created with its
    /// missing parents, 0711, owned by monza's user; an existing one must be owned by monza's
    /// user and not writable by group or others, else the agent is off): `bin/` holds the
    /// agent binary, one directory per sandbox holds the socket monza listens on. The Docker
    /// engine must see the same paths (a local engine).
    pub agent_dir: PathBuf,
}

impl Default for DockerSettings {
    fn default() -> Self {
        Self {
            host: DEFAULT_DOCKER_HOST.to_owned(),
            publish_addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
            memory_limit_bytes: 512 * 1024 * 1024,
            cpu_limit: 1.0,
            pids_limit: 512,
            request_timeout: Duration::from_secs(30),
            image_timeout: Duration::from_secs(600),
            transfer_timeout: Duration::from_secs(600),
            default_exec_timeout: Duration::from_secs(3600),
            max_build_context_bytes: 64 * 1024 * 1024,
            deployment: None,
            agent: true,
            agent_dir: PathBuf::from(DEFAULT_AGENT_DIR),
        }
    }
}

impl DockerSettings {
    /// The defaults, with `host` taken from `DOCKER_HOST` when it is set and not empty.
    pub fn from_docker_host_env() -> Self {
        let mut settings = Self::default();
        if let Ok(host) = std::env::var("DOCKER_HOST")
            && !host.trim().is_empty()
        {
            settings.host = host.trim().to_owned();
        }
        settings
    }
}
