//! What a devcontainer template says about the sandbox to make, in the domain's terms.
//!
//! The devcontainer adapter parses devcontainer.json into a [`Template`]; the container
//! runtime turns a [`Template`] into a container. Neither knows the other.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::sandbox::TemplateName;

/// Where the container's image comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum ImageSource {
    /// A named image (`image` in devcontainer.json): used locally if present, else pulled.
    Image(String),
    /// Built from a Dockerfile (`build` in devcontainer.json).
    Build(BuildSpec),
}

/// A Dockerfile build, with paths already resolved against the template's folder.
#[derive(Debug, Clone, PartialEq)]
pub struct BuildSpec {
    /// The build context directory (absolute).
    pub context: PathBuf,
    /// The Dockerfile, relative to `context`.
    pub dockerfile: String,
    /// `--build-arg`s.
    pub args: BTreeMap<String, String>,
    /// The target stage, if any.
    pub target: Option<String>,
}

/// A command as devcontainer.json writes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// A string, run by `/bin/sh -c`.
    Shell(String),
    /// An argv array, run without a shell.
    Argv(Vec<String>),
}

impl Command {
    /// The argv to execute.
    pub fn argv(&self) -> Vec<String> {
        match self {
            Self::Shell(line) => vec!["/bin/sh".into(), "-c".into(), line.clone()],
            Self::Argv(argv) => argv.clone(),
        }
    }
}

/// One lifecycle command (`onCreateCommand`, ...). The object form of devcontainer.json
/// gives several named commands; the string and array forms give one unnamed command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LifecycleCommand {
    /// Which hook it belongs to, e.g. `postCreateCommand`, and its key in the object form.
    pub label: String,
    /// What to run.
    pub command: Command,
}

/// A mount requested by a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// `bind`, `volume` or `tmpfs`.
    pub kind: String,
    /// Host path or volume name.
    pub source: Option<String>,
    /// Path inside the container.
    pub target: String,
    /// Mounted read-only.
    pub read_only: bool,
}

/// Container options beyond the defaults, from `runArgs`, `privileged`, `capAdd`,
/// `securityOpt` and `hostRequirements`. Options that weaken isolation are only present
/// when the operator allowed unsafe templates; the catalog refuses them otherwise.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RunOptions {
    /// CPUs requested (`hostRequirements.cpus`, `--cpus`).
    pub cpus: Option<f64>,
    /// Memory requested in bytes (`hostRequirements.memory`, `--memory`).
    pub memory_bytes: Option<u64>,
    /// `/dev/shm` size in bytes (`--shm-size`).
    pub shm_size_bytes: Option<u64>,
    /// Run an init process as PID 1 (`--init`).
    pub init: bool,
    /// Container hostname (`--hostname`).
    pub hostname: Option<String>,
    /// Extra labels (`--label`).
    pub labels: BTreeMap<String, String>,
    /// Extra capabilities (unsafe).
    pub cap_add: Vec<String>,
    /// Security options (unsafe).
    pub security_opt: Vec<String>,
    /// Privileged mode (unsafe).
    pub privileged: bool,
}

/// A resolved template: everything needed to create a sandbox's container.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    /// Its name in the catalog.
    pub name: TemplateName,
    /// The image or the build that makes it.
    pub image: ImageSource,
    /// `containerEnv`: environment of the container.
    pub container_env: BTreeMap<String, String>,
    /// `remoteEnv`: environment of commands run in the sandbox.
    pub remote_env: BTreeMap<String, String>,
    /// `containerUser`.
    pub container_user: Option<String>,
    /// `remoteUser`: the user commands run as.
    pub remote_user: Option<String>,
    /// `workspaceFolder`, default `/workspace`.
    pub workspace_folder: String,
    /// `forwardPorts` and `appPort`: container ports to publish.
    pub forward_ports: Vec<u16>,
    /// `overrideCommand` (default true): run a keep-alive command instead of the image's.
    pub override_command: bool,
    /// `onCreateCommand`, `postCreateCommand`, then `postStartCommand`, in that order.
    pub lifecycle_commands: Vec<LifecycleCommand>,
    /// `mounts` and `workspaceMount` (present only when allowed).
    pub mounts: Vec<Mount>,
    /// Options beyond the defaults.
    pub run_options: RunOptions,
    /// The original devcontainer.json, as JSON.
    pub config: serde_json::Value,
    /// What the template asks for that monza does not apply (features, customizations...).
    pub warnings: Vec<String>,
}

impl Template {
    /// The image name when it is known without building.
    pub fn image_name(&self) -> Option<&str> {
        match &self.image {
            ImageSource::Image(name) => Some(name),
            ImageSource::Build(_) => None,
        }
    }
}
