//! monza's domain: the [`Sandbox`] entity, its lifecycle rules, the ports the adapters
//! implement, and [`SandboxService`], the use cases.
//!
//! This crate knows no adapter technology (no actix-web, diesel, docker-api, and no tokio
//! runtime): everything outside comes in through the traits in [`ports`].

pub mod auth;
pub mod error;
pub mod files;
pub mod lifecycle;
pub mod paths;
pub mod ports;
pub mod runtime;
pub mod sandbox;
pub mod service;
pub mod template;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use auth::{ApiToken, Bootstrap, IssuedToken, StoredToken, TokenHash, TokenId, TokenService};
pub use error::{Error, FileProblem, Result};
pub use files::{
    ArchiveReport, DEFAULT_LINES, EditFile, FileEntry, FileLimits, FileLines, FileList, GlobFiles,
    GlobResult, ListFiles, SearchFiles, SearchMatch, SearchResult, SpooledArchive, WalkLimits,
};
pub use lifecycle::{LifecycleEvent, transition};
pub use ports::{
    Admission, Clock, ContainerRuntime, ExpiryClaim, RunningUpdate, SandboxRepository,
    StatusChange, SystemClock, TemplateCatalog, TokenRepository, Touch,
};
pub use runtime::{
    ByteStream, ContainerSpec, ContainerState, CreatedContainer, ExecEvent, ExecEvents, ExecOutput,
    ExecRequest, FileDownload, FileKind, FileStat, ManagedContainer, OutputSpan, OutputStream,
    ProcessEvent, ProcessEvents, ProcessExit, ProcessInfo, ProcessRequest, ProcessSignal,
    PublishedPort, TIMED_OUT_EXIT_CODE, TerminalSize, UploadFile, WriteOptions, collect_exactly,
};
pub use sandbox::{
    CreateLease, EventAction, InstanceId, NewEvent, PortMapping, Sandbox, SandboxEvent,
    SandboxFilter, SandboxId, SandboxName, SandboxState, SandboxStatus, StatusFilter, TemplateName,
    TenantId,
};
pub use service::{
    Access, CreateSandbox, ExecLimits, ExecuteCommand, LeaseReport, Readiness, ReapReport,
    ReconcileReport, SandboxService, ServiceConfig, StartProcess, Terminal,
};
pub use service::{
    DEFAULT_PROCESS_OUTPUT_BYTES, MAX_PROCESS_OUTPUT_BYTES, MIN_PROCESS_OUTPUT_BYTES,
};
pub use service::{
    EditRequest, GlobRequest, ListRequest, MoveRequest, ReadLinesRequest, SearchRequest,
};
pub use template::{
    BuildSpec, Command, ImageSource, LifecycleCommand, Mount, RunOptions, Template,
};

#[cfg(any(test, feature = "mock"))]
pub use ports::{
    MockClock, MockContainerRuntime, MockSandboxRepository, MockTemplateCatalog,
    MockTokenRepository,
};
