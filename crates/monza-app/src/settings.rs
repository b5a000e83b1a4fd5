//! Settings from flags and environment variables: `monza serve --help` is the reference.

use std::fmt;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// monza hands out short-lived development sandboxes: Docker containers made from
/// devcontainer.json templates, driven over a REST API, removed when idle.
#[derive(Debug, Parser)]
#[command(name = "monza", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Commands>,
}

#[derive(Debug, Subcommand)]
pub enum Commands {
    /// Run the API server and the reaper (the default).
    Serve(Box<ServeArgs>),
    /// Work with devcontainer templates.
    #[command(subcommand)]
    Templates(TemplatesCommand),
    /// Manage API tokens in the store the server uses (also while it runs).
    Token(TokenArgs),
}

/// `monza token ...`: the store is chosen as `monza serve` chooses it.
#[derive(Debug, Args)]
pub struct TokenArgs {
    /// Database: the same DATABASE_URL as the server. Unset: SQLite in MONZA_DATA_DIR.
    #[arg(long, global = true, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<Secret>,

    /// Directory of the embedded SQLite database, as for the server.
    #[arg(long, global = true, env = "MONZA_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,

    #[command(subcommand)]
    pub command: TokenCommand,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token for a tenant and print it, once, on stdout.
    Create {
        /// The tenant whose sandboxes the token reaches (1 to 64 of A-Z a-z 0-9 . _ -).
        #[arg(long)]
        tenant: String,
        /// An admin token sees and manages every tenant's sandboxes.
        #[arg(long)]
        admin: bool,
    },
    /// List tokens: id, tenant, admin, created, revoked. Never secrets.
    List,
    /// Revoke a token by id (as `monza token list` shows it); refused from then on.
    Revoke {
        /// The token id: 16 hex digits.
        id: String,
    },
}

/// Whether API requests need a bearer token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AuthMode {
    /// Every `/api` route needs `Authorization: Bearer <token>`.
    Enabled,
    /// Every caller is an admin: local experiments only (a warning is logged at each start).
    Disabled,
}

/// Whether commands go through the sandbox agent (`MONZA_AGENT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AgentMode {
    On,
    Off,
}

#[derive(Debug, Subcommand)]
pub enum TemplatesCommand {
    /// Parse every template in a directory: one line each, exit status 1 if any has an error.
    Check {
        /// The templates directory.
        #[arg(env = "DEVCONTAINERS_PATH", default_value = "devcontainers")]
        dir: PathBuf,
        /// Accept templates that weaken sandbox isolation (privileged, capAdd, mounts...).
        #[arg(long, env = "MONZA_ALLOW_UNSAFE_TEMPLATES", default_value_t = false)]
        allow_unsafe_templates: bool,
    },
}

/// A secret whose `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self(value)
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Everything `monza serve` reads.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Database: postgres://USER:PASS@HOST:PORT/DB, sqlite://PATH or sqlite::memory:.
    /// Unset: SQLite in MONZA_DATA_DIR/monza.db.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<Secret>,

    /// How many times start-up tries to reach the database and migrate it.
    #[arg(long, env = "MONZA_DB_CONNECT_ATTEMPTS", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub db_connect_attempts: u32,

    /// Pause between those attempts.
    #[arg(long, env = "MONZA_DB_CONNECT_DELAY", default_value = "2s", value_parser = parse_duration)]
    pub db_connect_delay: Duration,

    /// Directory for the embedded SQLite database (created if missing).
    #[arg(long, env = "MONZA_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,

    /// Listen address: `:PORT` (all interfaces) or `HOST:PORT`.
    #[arg(long, env = "SERVER_ADDR", default_value = ":8080", value_parser = parse_listen_addr)]
    pub addr: SocketAddr,

    /// Directory of devcontainer templates.
    #[arg(long, env = "DEVCONTAINERS_PATH", default_value = "devcontainers")]
    pub devcontainers: PathBuf,

    /// Default template for create requests that name none.
    #[arg(long, env = "MONZA_DEFAULT_TEMPLATE", default_value = "go")]
    pub default_template: String,

    /// Idle time before a sandbox expires: 90s, 15m, 1h or plain seconds.
    #[arg(long, env = "MONZA_SANDBOX_TTL", default_value = "15m", value_parser = parse_duration)]
    pub sandbox_ttl: Duration,

    /// How often the reaper looks for expired sandboxes.
    #[arg(long, env = "MONZA_REAPER_INTERVAL", default_value = "60s", value_parser = parse_duration)]
    pub reaper_interval: Duration,

    /// How often reconciliation compares the engine's containers with the store (it also
    /// runs once at start-up).
    #[arg(long, env = "MONZA_RECONCILE_INTERVAL", default_value = "5m", value_parser = parse_duration)]
    pub reconcile_interval: Duration,

    /// How long a sandbox written without a create lease (by a monza older than leases) may
    /// stay `creating` before reconciliation marks it `error` and removes its container. Keep
    /// it longer than any create can take: until then another replica may still be creating
    /// it. Leased creates are settled by their lease instead (MONZA_CREATE_LEASE).
    #[arg(long, env = "MONZA_CREATE_TIMEOUT", default_value = "10m", value_parser = parse_duration)]
    pub create_timeout: Duration,

    /// The lease a create holds on its `creating` sandbox, renewed every third of it while the
    /// create runs: a create whose server died is marked
    /// `error`, and its container removed, this long after its last renewal, by any replica.
    /// Keep it well above the longest pause of a server or of the database (a lease not
    /// renewed in time gives up a create that was still running), and the same on every
    /// replica.
    #[arg(long, env = "MONZA_CREATE_LEASE", default_value = "15s", value_parser = parse_duration)]
    pub create_lease: Duration,

    /// Bound on each short Docker engine call (ping, inspect, create, start, remove, list):
    /// with the engine down or wedged, a request fails with 503 after at most this long.
    #[arg(long, env = "MONZA_DOCKER_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub docker_timeout: Duration,

    /// The label (`monza.deployment`) that scopes this server's containers on the engine:
    /// reconciliation and the reaper only look at containers carrying it. Replicas of one
    /// deployment must share it. Default: derived from the store (`postgres://HOST:PORT/DB`
    /// or the SQLite file), so replicas with the same DATABASE_URL agree.
    #[arg(long, env = "MONZA_DEPLOYMENT")]
    pub deployment: Option<String>,

    /// Memory limit of each sandbox, in bytes.
    #[arg(long, env = "SANDBOX_MEMORY_LIMIT", default_value_t = 512 * 1024 * 1024)]
    pub memory_limit: u64,

    /// CPU limit of each sandbox, in CPUs.
    #[arg(long, env = "SANDBOX_CPU_LIMIT", default_value_t = 1.0, value_parser = parse_cpus)]
    pub cpu_limit: f64,

    /// Process limit of each sandbox.
    #[arg(long, env = "SANDBOX_PIDS_LIMIT", default_value_t = 512, value_parser = clap::value_parser!(i64).range(16..))]
    pub pids_limit: i64,

    /// Host address sandbox ports are published on.
    #[arg(long, env = "MONZA_PUBLISH_ADDR", default_value = "127.0.0.1")]
    pub publish_addr: IpAddr,

    /// Docker engine address: unix:///var/run/docker.sock or tcp://HOST:PORT.
    #[arg(
        long,
        env = "DOCKER_HOST",
        default_value = "unix:///var/run/docker.sock"
    )]
    pub docker_host: String,

    /// `on`: commands run through the agent inside each sandbox (a unix socket, about a
    /// millisecond), falling back to Docker exec whenever it is not there; `off`: Docker exec
    /// only, and sandboxes get no agent.
    #[arg(long, env = "MONZA_AGENT", value_enum, default_value_t = AgentMode::On)]
    pub agent: AgentMode,

    /// Host directory of the agent's binary and of each sandbox's socket directory
    /// (owned by monza's user, not writable by group or others; created 0711 with its
    /// parents when missing; the Docker engine must see the same paths).
    #[arg(long, env = "MONZA_AGENT_DIR", default_value = monza_docker::DEFAULT_AGENT_DIR)]
    pub agent_dir: PathBuf,

    /// Accept templates that weaken sandbox isolation (privileged, capAdd, mounts...).
    #[arg(long, env = "MONZA_ALLOW_UNSAFE_TEMPLATES", default_value_t = false)]
    pub allow_unsafe_templates: bool,

    /// API authentication: `enabled` (bearer tokens) or `disabled` (everyone is admin).
    #[arg(long, env = "MONZA_AUTH", value_enum, default_value_t = AuthMode::Enabled)]
    pub auth: AuthMode,

    /// The first admin token, used only while the store holds no token: 32 to 512 characters
    /// of A-Z a-z 0-9 - . _ ~ + / (e.g. `openssl rand -hex 32`). Only its hash is stored.
    /// Unset: a token is generated and printed once.
    #[arg(long, env = "MONZA_BOOTSTRAP_TOKEN", hide_env_values = true)]
    pub bootstrap_token: Option<Secret>,

    /// Live sandboxes one tenant may have at once (0: no limit); past it, create is a 429.
    #[arg(long, env = "MONZA_MAX_SANDBOXES_PER_TENANT", default_value_t = 20)]
    pub max_sandboxes_per_tenant: u64,

    /// How long a JSON request body may take to arrive in full; past it, a 408. Uploads get
    /// it as a grace period before MONZA_UPLOAD_MIN_RATE applies.
    #[arg(long, env = "MONZA_BODY_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub body_timeout: Duration,

    /// The slowest average pace an upload may keep after MONZA_BODY_TIMEOUT, in bytes per
    /// second; a slower one is cut with a 408.
    #[arg(long, env = "MONZA_UPLOAD_MIN_RATE", default_value_t = 64 * 1024, value_parser = clap::value_parser!(u64).range(1..))]
    pub upload_min_rate: u64,

    /// Largest execute request body, in bytes (a command line with its env and stdin);
    /// more is a 413. Other JSON bodies stay limited to 64 KiB.
    #[arg(long, env = "MONZA_MAX_COMMAND_BYTES", default_value_t = 1024 * 1024, value_parser = clap::value_parser!(u64).range(1024..=(1 << 30)))]
    pub max_command_bytes: u64,

    /// Largest file one upload may carry, in bytes (`PUT …/files`, the multipart upload);
    /// more is a 413.
    #[arg(long, env = "MONZA_MAX_UPLOAD_BYTES", default_value_t = 100 * 1024 * 1024, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_upload_bytes: u64,

    /// Largest archive `PUT …/files/archive` accepts, in bytes as sent (compressed when it is
    /// gzip); more is a 413. It is spooled to the temporary directory and checked whole
    /// before it is unpacked. Also the most `GET …/files/archive` sends: the stream is cut
    /// there.
    #[arg(long, env = "MONZA_MAX_ARCHIVE_BYTES", default_value_t = 1024 * 1024 * 1024, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_archive_bytes: u64,

    /// Entries one walk of a sandbox's tree (list, search, glob) may look at before it stops
    /// and answers `truncated: true`; also the most entries one archive may hold.
    #[arg(long, env = "MONZA_FILE_WALK_MAX_ENTRIES", default_value_t = 200_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub file_walk_max_entries: u64,

    /// How long one walk of a sandbox's tree may take before it stops and answers
    /// `truncated: true`.
    #[arg(long, env = "MONZA_FILE_WALK_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub file_walk_timeout: Duration,

    /// Most results one search or glob answers (also their default); also the most files
    /// one batch upload or batch read takes.
    #[arg(long, env = "MONZA_FILE_MAX_RESULTS", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub file_max_results: u64,

    /// Most bytes of content one batch read answers, its files together (they travel
    /// base64-encoded in one JSON body); a file past it is answered `too_large`, to be read
    /// alone.
    #[arg(long, env = "MONZA_FILE_BATCH_MAX_BYTES", default_value_t = 16 * 1024 * 1024, value_parser = clap::value_parser!(u64).range(1..=1024 * 1024 * 1024))]
    pub file_batch_max_bytes: u64,

    /// Output bytes a background process keeps per stream inside its sandbox when its start
    /// does not say (`output_limit_bytes`); the oldest are dropped first.
    #[arg(long, env = "MONZA_PROCESS_OUTPUT_BYTES", default_value_t = monza_domain::DEFAULT_PROCESS_OUTPUT_BYTES, value_parser = clap::value_parser!(u64).range(monza_domain::MIN_PROCESS_OUTPUT_BYTES..=monza_domain::MAX_PROCESS_OUTPUT_BYTES))]
    pub process_output_bytes: u64,

    /// Bytes of command output all executes together may hold in memory (each reserves
    /// twice its max_output_bytes); past it, execute is a 503. 0: no bound.
    #[arg(long, env = "MONZA_EXEC_OUTPUT_BUDGET", default_value_t = 256 * 1024 * 1024)]
    pub exec_output_budget: u64,

    /// Log format.
    #[arg(long, env = "MONZA_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// How long shutdown waits for in-flight requests.
    #[arg(long, env = "MONZA_SHUTDOWN_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,

    /// How long an idle client connection is kept open for its next request. Longer than
    /// the pauses of a client that thinks between calls (an agent waiting for its model):
    /// a server that closes first races the client's next request on that connection,
    /// which then fails without an answer.
    #[arg(long, env = "MONZA_HTTP_KEEP_ALIVE", default_value = "75s", value_parser = parse_duration)]
    pub http_keep_alive: Duration,
}

impl ServeArgs {
    /// The defaults, as if no flag and no variable were given.
    pub fn defaults() -> Self {
        #[derive(Parser)]
        struct Only {
            #[command(flatten)]
            args: ServeArgs,
        }
        // Parsing an empty command line only fails if a default value is invalid, which
        // the `defaults_parse` test rules out.
        match Only::try_parse_from(["monza"]) {
            Ok(only) => only.args,
            Err(e) => e.exit(),
        }
    }
}

/// `90s`, `15m`, `1h`, `2d` or plain seconds; zero is refused.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let value: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration: use 90s, 15m, 1h or plain seconds"))?;
    let seconds = match unit {
        "ms" => return non_zero(Duration::from_millis(value), text),
        "s" => value,
        "m" => value.saturating_mul(60),
        "h" => value.saturating_mul(3600),
        "d" => value.saturating_mul(86_400),
        _ => {
            return Err(format!(
                "{text:?} has an unknown unit {unit:?}: use ms, s, m, h or d"
            ));
        }
    };
    non_zero(Duration::from_secs(seconds), text)
}

fn non_zero(d: Duration, text: &str) -> Result<Duration, String> {
    if d.is_zero() {
        Err(format!("{text:?} is zero: give a positive duration"))
    } else {
        Ok(d)
    }
}

/// `:PORT` (all interfaces, as the Go server accepted) or `HOST:PORT`.
pub fn parse_listen_addr(text: &str) -> Result<SocketAddr, String> {
    let text = text.trim();
    let full = if let Some(port) = text.strip_prefix(':') {
        format!("0.0.0.0:{port}")
    } else {
        text.to_owned()
    };
    full.to_socket_addrs()
        .map_err(|e| format!("{text:?} is not a listen address (:PORT or HOST:PORT): {e}"))?
        .next()
        .ok_or_else(|| format!("{text:?} resolves to no address"))
}

fn parse_cpus(text: &str) -> Result<f64, String> {
    let cpus: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a number of CPUs"))?;
    if (0.01..=1024.0).contains(&cpus) {
        Ok(cpus)
    } else {
        Err(format!("{text:?} CPUs is out of range (0.01 to 1024)"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_accept_the_documented_forms() {
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("15m").unwrap(), Duration::from_secs(900));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_duration("42").unwrap(), Duration::from_secs(42));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        for bad in ["", "abc", "10x", "0", "0s", "-5s", "1.5m"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn listen_addresses_accept_port_only_and_host_port() {
        assert_eq!(
            parse_listen_addr(":8080").unwrap(),
            "0.0.0.0:8080".parse().unwrap()
        );
        assert_eq!(
            parse_listen_addr("127.0.0.1:0").unwrap(),
            "127.0.0.1:0".parse().unwrap()
        );
        assert!(parse_listen_addr("8080").is_err());
        assert!(parse_listen_addr(":99999").is_err());
    }

    #[test]
    fn defaults_parse() {
        let d = ServeArgs::defaults();
        assert_eq!(d.sandbox_ttl, Duration::from_secs(900));
        assert_eq!(d.reaper_interval, Duration::from_secs(60));
        assert_eq!(d.memory_limit, 512 * 1024 * 1024);
        assert_eq!(d.addr, "0.0.0.0:8080".parse().unwrap());
        assert_eq!(d.auth, AuthMode::Enabled);
        assert_eq!(d.max_sandboxes_per_tenant, 20);
        assert_eq!(d.create_timeout, Duration::from_secs(600));
        assert_eq!(d.create_lease, Duration::from_secs(15));
        assert!(d.bootstrap_token.is_none());
    }

    #[test]
    fn a_bad_value_names_the_setting() {
        let err = Cli::try_parse_from(["monza", "serve", "--sandbox-ttl", "soon"]).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("--sandbox-ttl"), "{text}");
        assert!(text.contains("not a duration"), "{text}");
    }

    #[test]
    fn secrets_do_not_show_in_debug_output() {
        let secret: Secret = "postgres://u:hunter2@h/db".parse().unwrap();
        assert!(!format!("{secret:?}").contains("hunter2"));
    }
}
