//! The ports: what the use cases need from the outside world, shaped by the use cases.
//!
//! Each port is an `#[async_trait]` trait object (`Arc<dyn Port>`). With the `mock` feature
//! (or in this crate's tests) mockall generates `MockSandboxRepository`, `MockContainerRuntime`,
//! `MockTemplateCatalog` and `MockClock`.

use async_trait::async_trait;
use bytes::Bytes;
use time::OffsetDateTime;

use crate::auth::{ApiToken, StoredToken, TokenId};
use crate::error::{Error, Result};
use crate::files::{
    ArchiveReport, EditFile, FileEntry, FileLines, FileList, GlobFiles, GlobResult, ListFiles,
    SearchFiles, SearchResult, SpooledArchive,
};
use crate::lifecycle::LifecycleEvent;
use crate::runtime::{
    ByteStream, ContainerSpec, ContainerState, CreatedContainer, ExecEvents, ExecOutput,
    ExecRequest, FileDownload, FileStat, ManagedContainer, ProcessEvents, ProcessInfo,
    ProcessRequest, ProcessSignal, PublishedPort, TerminalSize, UploadFile,
};
use crate::sandbox::{
    InstanceId, NewEvent, PortMapping, Sandbox, SandboxEvent, SandboxFilter, SandboxId,
    SandboxStatus, TemplateName, TenantId,
};
use crate::template::Template;

/// One reaper claim, as [`SandboxRepository::claim_expired`] takes it: the rule of
/// [`crate::lifecycle::is_expired`] as data, decided by the domain.
#[derive(Debug, Clone, PartialEq)]
pub struct ExpiryClaim {
    /// Claim sandboxes with `expires_at <= now`; `now` also becomes their `deleted_at` and
    /// their `expired` events' time.
    pub now: OffsetDateTime,
    /// At most this many.
    pub limit: u32,
    /// Only sandboxes in this status ([`crate::lifecycle::REAPABLE`]).
    pub from: SandboxStatus,
    /// Moved to this status (`lifecycle::target(Expire)`).
    pub to: SandboxStatus,
    /// Kept as each claimed sandbox's `status_reason`.
    pub reason: String,
}

impl ExpiryClaim {
    /// The reaper's claim of up to `limit` sandboxes expired at `now`.
    pub fn new(now: OffsetDateTime, limit: u32) -> Self {
        Self {
            now,
            limit,
            from: crate::lifecycle::REAPABLE,
            to: crate::lifecycle::target(LifecycleEvent::Expire),
            reason: crate::lifecycle::EXPIRY_REASON.to_owned(),
        }
    }

    /// The event recorded with each claimed sandbox (as the claim leaves it).
    pub fn record(&self, sandbox: &Sandbox) -> NewEvent {
        NewEvent::expired(sandbox)
    }
}

/// The fields a sandbox gains when it starts (`creating` → `running`).
#[derive(Debug, Clone, PartialEq)]
pub struct RunningUpdate {
    /// The container's id.
    pub container_id: String,
    /// The image it runs.
    pub image: String,
    /// Its published ports.
    pub port_mappings: Vec<PortMapping>,
    /// When it became running: the new `last_activity`.
    pub at: OffsetDateTime,
    /// `at + ttl`.
    pub expires_at: OffsetDateTime,
    /// The `started` event recorded with it ([`NewEvent::started`]).
    pub record: NewEvent,
}

/// One heartbeat's write, as [`SandboxRepository::touch`] takes it.
#[derive(Debug, Clone, PartialEq)]
pub struct Touch {
    /// The sandbox.
    pub id: SandboxId,
    /// Only if it belongs to this tenant (`None`: any tenant, an admin's heartbeat).
    pub tenant: Option<TenantId>,
    /// The new `last_activity`.
    pub at: OffsetDateTime,
    /// The new `expires_at`.
    pub expires_at: OffsetDateTime,
}

/// A status change other than start and activity.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusChange {
    /// What happens; the store applies [`crate::lifecycle::transition`]'s target, only if the
    /// row's current status allows it ([`crate::lifecycle::allowed_from`]).
    pub event: LifecycleEvent,
    /// When. For a terminal target this becomes `deleted_at`.
    pub at: OffsetDateTime,
    /// Why, kept as the sandbox's `status_reason`.
    pub reason: Option<String>,
    /// Recorded in the event log in the same transaction.
    pub record: NewEvent,
}

/// What [`SandboxRepository::insert`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Admission {
    /// The row and its `created` event are written.
    Inserted,
    /// Nothing was written: the tenant already had `live` live sandboxes, and `limit` is the
    /// limit the insert was given (`live >= limit`).
    OverLimit {
        /// The tenant's live (not deleted, not expired) sandboxes at the time.
        live: u64,
        /// The limit.
        limit: u64,
    },
}

/// Where sandboxes are kept. Every write is durable when the call returns: an acknowledged
/// heartbeat survives a crash.
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
#[async_trait]
pub trait SandboxRepository: Send + Sync {
    /// Writes a new sandbox (normally `creating`, with its creator's lease) and its `created`
    /// event ([`NewEvent::created`], stamped `created_at`). A duplicate id, or a container
    /// port mapped twice, is a conflict.
    ///
    /// With `max_live`, the count of the tenant's live (not deleted, not expired) sandboxes
    /// and the insert are one atomic decision, across every instance on the store (other
    /// processes included): when the tenant already has `max_live` or more, nothing is written
    /// and the answer is [`Admission::OverLimit`]. So of any number of concurrent inserts for
    /// one tenant, at most `max_live` minus the live count succeed.
    async fn insert(&self, sandbox: &Sandbox, max_live: Option<u64>) -> Result<Admission>;

    /// One sandbox, whatever its status; not-found if unknown.
    async fn get(&self, id: SandboxId) -> Result<Sandbox>;

    /// Sandboxes matching the filter, newest first.
    async fn list(&self, filter: &SandboxFilter) -> Result<Vec<Sandbox>>;

    /// `creating` → `running` with the container's details, and the update's `record` (the
    /// `started` event, stamped `at`); the create lease is cleared. Not-found if unknown; conflict if the sandbox is no longer `creating`
    /// (its create was settled meanwhile, e.g. because its lease lapsed).
    async fn mark_running(&self, id: SandboxId, update: &RunningUpdate) -> Result<Sandbox>;

    /// Applies a status change if the current status allows it, with its event, atomically;
    /// the create lease is cleared. Not-found if unknown; conflict (naming the current status)
    /// if not allowed.
    async fn transition(&self, id: SandboxId, change: &StatusChange) -> Result<Sandbox>;

    /// Moves `last_activity` to `at` and `expires_at` to `expires_at`, only while `running`,
    /// appending `record` if given (heartbeats record nothing).
    /// Not-found if unknown; conflict if not running.
    async fn record_activity(
        &self,
        id: SandboxId,
        at: OffsetDateTime,
        expires_at: OffsetDateTime,
        record: Option<NewEvent>,
    ) -> Result<Sandbox>;

    /// The heartbeat's fast path, one statement: moves `last_activity` to `at` and
    /// `expires_at` to `expires_at` only while `running` and, when `tenant` is given, only if
    /// the sandbox belongs to it. Records no event and returns whether a row changed; `false`
    /// (unknown, another tenant's, not running) leaves the caller to ask `get` why.
    async fn touch(
        &self,
        id: SandboxId,
        tenant: Option<TenantId>,
        at: OffsetDateTime,
        expires_at: OffsetDateTime,
    ) -> Result<bool>;

    /// Several heartbeats in one transaction (one flush to disk for all of them), each as
    /// [`SandboxRepository::touch`] would apply it; the answer holds one `bool` per touch, in
    /// order. All are durable when the call returns, or none is applied and it fails. The
    /// caller never names one sandbox twice in a batch.
    async fn touch_many(&self, touches: &[Touch]) -> Result<Vec<bool>>;

    /// Replaces a running sandbox's published ports, in one transaction (its container was
    /// started again and the engine chose new host ports). Returns `false`, changing
    /// nothing, when the sandbox is unknown or not `running`.
    async fn replace_port_mappings(&self, id: SandboxId, ports: &[PortMapping]) -> Result<bool>;

    /// Atomically moves up to `claim.limit` sandboxes in `claim.from` with
    /// `expires_at <= claim.now`, earliest expiry first, to `claim.to` (with
    /// `deleted_at = now`, `status_reason = claim.reason` and the event `claim.record` gives,
    /// stamped `now`) and returns them. Two concurrent callers never receive the same
    /// sandbox.
    async fn claim_expired(&self, claim: &ExpiryClaim) -> Result<Vec<Sandbox>>;

    /// Moves the create lease of each of `ids` that is still `creating` with a lease held by
    /// `instance` to `expires_at`, in one write; returns how many it moved. Rows of another
    /// instance, without a lease, or no longer `creating` (settled, finished, deleted) are
    /// left alone, so a renewal never revives a create that was given up.
    async fn renew_leases(
        &self,
        instance: InstanceId,
        ids: &[SandboxId],
        expires_at: OffsetDateTime,
    ) -> Result<u64>;

    /// Settles a create whose creator is gone: applies `change` (a `Fail`, with its event)
    /// only if the sandbox is still `creating` and its create lease lapsed
    /// (`lease expires_at <= now`, the rule of [`crate::lifecycle::lease_lapsed`]), checked
    /// and written atomically, so a lease renewed meanwhile, a create that finished, or a
    /// second settler changes nothing. Returns the settled sandbox, or `None` when it did not
    /// apply (also for an unknown id or a row without a lease).
    async fn fail_lapsed_create(
        &self,
        id: SandboxId,
        now: OffsetDateTime,
        change: &StatusChange,
    ) -> Result<Option<Sandbox>>;

    /// Appends an event, stamped `at`, to a sandbox's log. Not-found if the sandbox is
    /// unknown.
    async fn append_event(&self, id: SandboxId, event: &NewEvent, at: OffsetDateTime)
    -> Result<()>;

    /// A sandbox's events, oldest first.
    async fn events(&self, id: SandboxId) -> Result<Vec<SandboxEvent>>;

    /// Checks the store answers.
    async fn ping(&self) -> Result<()>;
}

/// Where API tokens are kept: ids, tenants, flags, times and hashes, never a token's text.
/// Every write is durable when the call returns (a revoke is in force at once).
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
#[async_trait]
pub trait TokenRepository: Send + Sync {
    /// Writes a new token. A duplicate id is a conflict.
    async fn insert_token(&self, token: &StoredToken) -> Result<()>;

    /// Writes `token` only if the store holds no token at all (revoked ones count), and says
    /// whether it did. Atomic: of concurrent callers on one store, one at most succeeds.
    async fn insert_first_token(&self, token: &StoredToken) -> Result<bool>;

    /// One token with its hash; not-found if unknown.
    async fn find_token(&self, id: &TokenId) -> Result<StoredToken>;

    /// Every token, oldest first (by `created_at`, then id).
    async fn list_tokens(&self) -> Result<Vec<ApiToken>>;

    /// Sets `revoked_at = at` unless already revoked (the first time stays) and returns the
    /// token. Not-found if unknown.
    async fn revoke_token(&self, id: &TokenId, at: OffsetDateTime) -> Result<ApiToken>;

    /// How many tokens exist, revoked ones included.
    async fn count_tokens(&self) -> Result<u64>;
}

/// Where sandboxes run.
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
#[async_trait]
pub trait ContainerRuntime: Send + Sync {
    /// Checks the engine answers.
    async fn ping(&self) -> Result<()>;

    /// Prepares the image (local, pulled or built) and creates the container, labelled with
    /// the sandbox id, without starting it.
    async fn create(&self, spec: &ContainerSpec) -> Result<CreatedContainer>;

    /// Starts a created or stopped container (a running one is left alone) and returns its
    /// published ports.
    async fn start(&self, container_id: &str) -> Result<Vec<PublishedPort>>;

    /// Whether the container runs, is stopped, or is gone.
    async fn state(&self, container_id: &str) -> Result<ContainerState>;

    /// Runs a command to completion (or to its timeout).
    async fn exec(&self, container_id: &str, request: &ExecRequest) -> Result<ExecOutput>;

    /// Starts a command and streams its output as it comes, then its exit; see
    /// [`ExecEvents`] for what dropping the stream does.
    async fn exec_stream(&self, container_id: &str, request: &ExecRequest) -> Result<ExecEvents>;

    /// Copies one file into `dest_dir`, streaming, as [`UploadFile::options`] say: a regular
    /// file is created or replaced, never anything else. Returns what was written.
    async fn upload(
        &self,
        container_id: &str,
        dest_dir: &str,
        file: UploadFile,
    ) -> Result<FileStat>;

    /// Gives the directory `path` (not what is in it) to `user` (the image's user when
    /// absent), so the sandbox's own commands can create files in its workspace. Nothing
    /// happens when `path` is missing or not a directory.
    async fn own_directory(
        &self,
        container_id: &str,
        path: &str,
        user: Option<String>,
    ) -> Result<()>;

    /// What `path` is; not-found if it does not exist.
    async fn stat(&self, container_id: &str, path: &str) -> Result<FileStat>;

    /// Streams a regular file out; not-found if missing, invalid input if a directory.
    async fn download(&self, container_id: &str, path: &str) -> Result<FileDownload>;

    /// Removes the container, forced. A missing container is success.
    async fn remove(&self, container_id: &str) -> Result<()>;

    /// Every container carrying monza's labels.
    async fn list_managed(&self) -> Result<Vec<ManagedContainer>>;

    /// Starts a background process, which outlives the call (see [`ProcessRequest`]).
    /// A runtime without background processes answers unavailable, naming the agent.
    async fn start_process(
        &self,
        container_id: &str,
        request: &ProcessRequest,
    ) -> Result<ProcessInfo> {
        let _ = (container_id, request);
        Err(no_processes())
    }

    /// The container's background processes, running and recently ended, by pid.
    async fn processes(&self, container_id: &str) -> Result<Vec<ProcessInfo>> {
        let _ = container_id;
        Err(no_processes())
    }

    /// Sends `signal` to a background process's group; not-found for an unknown pid.
    async fn signal_process(
        &self,
        container_id: &str,
        pid: u32,
        signal: ProcessSignal,
    ) -> Result<()> {
        let _ = (container_id, pid, signal);
        Err(no_processes())
    }

    /// Kills a background process's group (unless it already exited) and drops it and its
    /// output; not-found for an unknown pid, and for it from then on.
    async fn remove_process(&self, container_id: &str, pid: u32) -> Result<()> {
        let _ = (container_id, pid);
        Err(no_processes())
    }

    /// Writes `data` to a background process's stdin, then closes it when `close`;
    /// not-found for an unknown pid or one whose stdin is not open.
    async fn process_stdin(
        &self,
        container_id: &str,
        pid: u32,
        data: Bytes,
        close: bool,
    ) -> Result<()> {
        let _ = (container_id, pid, data, close);
        Err(no_processes())
    }

    /// Resizes the terminal of a background process started on one; invalid input for
    /// one that was not.
    async fn resize_process(&self, container_id: &str, pid: u32, size: TerminalSize) -> Result<()> {
        let _ = (container_id, pid, size);
        Err(no_processes())
    }

    /// A background process's output from the offsets `(stdout, stderr)` on, then, with
    /// `follow`, as it comes until it ends (see [`ProcessEvents`]).
    async fn process_output(
        &self,
        container_id: &str,
        pid: u32,
        offsets: (u64, u64),
        follow: bool,
    ) -> Result<ProcessEvents> {
        let _ = (container_id, pid, offsets, follow);
        Err(no_processes())
    }

    /// The entries of a directory (or its tree), as `user` sees them.
    async fn list_files(
        &self,
        container_id: &str,
        user: Option<String>,
        request: &ListFiles,
    ) -> Result<FileList> {
        let _ = (container_id, user, request);
        Err(no_file_operations())
    }

    /// Makes a directory (and its missing parents with `parents`) as `user`.
    async fn make_directory(
        &self,
        container_id: &str,
        user: Option<String>,
        path: &str,
        parents: bool,
    ) -> Result<FileEntry> {
        let _ = (container_id, user, path, parents);
        Err(no_file_operations())
    }

    /// Renames `from` to `to` as `user`; an existing `to` only with `overwrite`, and never a
    /// directory replaced by a file.
    async fn move_path(
        &self,
        container_id: &str,
        user: Option<String>,
        from: &str,
        to: &str,
        overwrite: bool,
    ) -> Result<FileEntry> {
        let _ = (container_id, user, from, to, overwrite);
        Err(no_file_operations())
    }

    /// Removes a file, a link, an empty directory or (with `recursive`) a tree, as `user`;
    /// answers how many entries went.
    async fn remove_path(
        &self,
        container_id: &str,
        user: Option<String>,
        path: &str,
        recursive: bool,
    ) -> Result<u64> {
        let _ = (container_id, user, path, recursive);
        Err(no_file_operations())
    }

    /// Lines `offset..offset + limit` of a text file, as `user` reads it.
    async fn read_lines(
        &self,
        container_id: &str,
        user: Option<String>,
        path: &str,
        offset: u64,
        limit: u64,
    ) -> Result<FileLines> {
        let _ = (container_id, user, path, offset, limit);
        Err(no_file_operations())
    }

    /// The lines of files under a path that match a pattern.
    async fn search_files(
        &self,
        container_id: &str,
        user: Option<String>,
        request: &SearchFiles,
    ) -> Result<SearchResult> {
        let _ = (container_id, user, request);
        Err(no_file_operations())
    }

    /// The paths below a directory that match a glob.
    async fn glob_files(
        &self,
        container_id: &str,
        user: Option<String>,
        request: &GlobFiles,
    ) -> Result<GlobResult> {
        let _ = (container_id, user, request);
        Err(no_file_operations())
    }

    /// Replaces text in a file, atomically, as `user`; answers how many times.
    async fn edit_file(
        &self,
        container_id: &str,
        user: Option<String>,
        request: &EditFile,
    ) -> Result<u64> {
        let _ = (container_id, user, request);
        Err(no_file_operations())
    }

    /// Unpacks a tar archive into the directory `dir` (created when missing), owned by
    /// `user`; every entry is checked first, so a refused archive writes nothing. At most
    /// `max_entries` entries.
    async fn put_tree(
        &self,
        container_id: &str,
        dir: &str,
        user: Option<String>,
        archive: SpooledArchive,
        max_entries: u64,
    ) -> Result<ArchiveReport> {
        let _ = (container_id, dir, user, archive, max_entries);
        Err(no_file_operations())
    }

    /// The contents of the directory `dir` as a tar stream (entries `./…`).
    async fn get_tree(&self, container_id: &str, dir: &str) -> Result<ByteStream> {
        let _ = (container_id, dir);
        Err(no_file_operations())
    }

    /// The sandboxes on this runtime with a `keep_alive` background process running (as
    /// last seen, including ones of containers adopted from an earlier server).
    async fn kept_alive(&self) -> Result<Vec<SandboxId>> {
        Ok(Vec::new())
    }
}

/// What a runtime without background processes answers.
fn no_processes() -> Error {
    Error::unavailable(
        "agent",
        "background processes need the sandbox agent, which this runtime does not run",
    )
}

/// What a runtime without file operations answers.
fn no_file_operations() -> Error {
    Error::unavailable(
        "agent",
        "this file operation needs the sandbox agent, which this runtime does not run",
    )
}

/// Where templates come from.
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
#[async_trait]
pub trait TemplateCatalog: Send + Sync {
    /// A template by name. Not-found (the message lists the available ones) if unknown;
    /// invalid input if it exists but cannot be used, with the reason.
    async fn resolve(&self, name: &TemplateName) -> Result<Template>;

    /// The names of the templates available.
    async fn list(&self) -> Result<Vec<TemplateName>>;
}

/// The time, so expiry can be tested without sleeping.
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
pub trait Clock: Send + Sync {
    /// Now, in UTC.
    fn now(&self) -> OffsetDateTime;
}

/// The real clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }
}
