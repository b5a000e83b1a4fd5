//! monza's [`ContainerRuntime`](monza_domain::ContainerRuntime) adapter: every sandbox is a
//! Docker container, driven through [docker-api](https://docs.rs/docker-api) 0.14.
//!
//! - [`DockerRuntime::new`] takes [`DockerSettings`] (engine address, publish address,
//!   limits, timeouts). Every short engine call is bounded by `request_timeout`; pulls and
//!   builds, transfers and execs have their own bounds. Engine errors become domain errors
//!   at the port (404 → not found, 409 → conflict, unreachable → unavailable with the
//!   address, else internal).
//! - Containers are labelled `monza.sandbox_id`, `monza.managed=true`, `monza.template`,
//!   `monza.tenant`, run hardened (no privileges, `no-new-privileges`, every capability
//!   dropped but [`SANDBOX_CAPABILITIES`], memory/CPU/pids limits) and publish forwarded
//!   ports on the publish address, host port picked by Docker.
//! - Built templates are tagged `monza-build/<template>:<hash of the context, Dockerfile,
//!   args and target>` and reused.
//! - Files move as tar streams both ways, never whole in memory.
//!
//! docker-api 0.14 cannot express container hardening (`CapDrop`, `PidsLimit`, ...), build
//! args, or streaming archive bodies; for those few endpoints this crate sends plain HTTP
//! requests over the same socket (module `engine`).

mod agent;
mod container;
mod engine;
mod errno;
mod error;
mod exec;
mod files;
mod fsops;
mod image;
mod owner;
mod runtime;
mod settings;
mod sink;
mod trees;

pub use agent::AGENT_BINARY;
pub use container::{
    LABEL_AGENT_USER, LABEL_DEPLOYMENT, LABEL_MANAGED, LABEL_SANDBOX_ID, LABEL_TEMPLATE,
    LABEL_TENANT, SANDBOX_CAPABILITIES,
};
pub use image::BUILD_REPOSITORY;
pub use runtime::DockerRuntime;
pub use settings::{DEFAULT_AGENT_DIR, DEFAULT_DOCKER_HOST, DockerSettings};
