//! devcontainer.json as a document: every field monza reads, typed and checked, before any
//! decision about whether monza will run it.
//!
//! [`DevcontainerConfig::parse`] accepts every configuration the reference devcontainers CLI
//! accepts (compose ones, unsafe options and all). What monza refuses to run is decided
//! later, by [`DevcontainerConfig::to_template`], so a refusal is never confused with a
//! broken file.

use std::collections::BTreeMap;

use monza_domain::{LifecycleCommand, Mount};
use serde_json::{Map, Value};

use crate::error::ParseError;
use crate::fields::{Field, boolean, env_map, get, object, string, strings};
use crate::{jsonc, values, variables};
use monza_domain::error::json_kind;

/// The workspace folder when the template names none.
pub const DEFAULT_WORKSPACE_FOLDER: &str = "/workspace";

/// The lifecycle hooks monza runs, in the order it runs them.
pub const LIFECYCLE_HOOKS: [&str; 4] = [
    "onCreateCommand",
    "updateContentCommand",
    "postCreateCommand",
    "postStartCommand",
];

/// Fields monza reads, keeps in the config, and does not apply, with the reason given in
/// the template's warnings.
const NOT_APPLIED: [(&str, &str); 6] = [
    ("features", "features are not installed"),
    ("customizations", "customizations are not applied"),
    (
        "settings",
        "settings (editor customization) are not applied",
    ),
    (
        "extensions",
        "extensions (editor customization) are not installed",
    ),
    (
        "postAttachCommand",
        "postAttachCommand is not run (nothing attaches)",
    ),
    (
        "initializeCommand",
        "initializeCommand is not run (it would run on the host)",
    ),
];

/// A Dockerfile build as written, paths still relative to the devcontainer.json's folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildConfig {
    /// `build.dockerfile` (or the legacy top-level `dockerFile`).
    pub dockerfile: String,
    /// `build.context` (or the legacy top-level `context`), default `.`.
    pub context: String,
    /// `build.args`.
    pub args: BTreeMap<String, String>,
    /// `build.target`.
    pub target: Option<String>,
}

/// `hostRequirements`, as resource limits.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct HostRequirements {
    /// `hostRequirements.cpus`.
    pub cpus: Option<f64>,
    /// `hostRequirements.memory`, in bytes.
    pub memory_bytes: Option<u64>,
}

/// A devcontainer.json, read and type-checked.
#[derive(Debug, Clone, PartialEq)]
pub struct DevcontainerConfig {
    /// `name`.
    pub name: Option<String>,
    /// `image`.
    pub image: Option<String>,
    /// `build` (or the legacy top-level `dockerFile`/`context`).
    pub build: Option<BuildConfig>,
    /// `dockerComposeFile`, one or several files (monza does not run compose).
    pub docker_compose_files: Vec<String>,
    /// `forwardPorts` then `appPort`, container ports, duplicates removed.
    pub forward_ports: Vec<u16>,
    /// `containerEnv`.
    pub container_env: BTreeMap<String, String>,
    /// `remoteEnv`.
    pub remote_env: BTreeMap<String, String>,
    /// `containerUser`.
    pub container_user: Option<String>,
    /// `remoteUser`.
    pub remote_user: Option<String>,
    /// `workspaceFolder`, default [`DEFAULT_WORKSPACE_FOLDER`].
    pub workspace_folder: String,
    /// `workspaceMount`.
    pub workspace_mount: Option<Mount>,
    /// `mounts`.
    pub mounts: Vec<Mount>,
    /// `overrideCommand`, default true.
    pub override_command: bool,
    /// [`LIFECYCLE_HOOKS`], in that order.
    pub lifecycle_commands: Vec<LifecycleCommand>,
    /// `hostRequirements`.
    pub host_requirements: HostRequirements,
    /// `runArgs`, uninterpreted.
    pub run_args: Vec<String>,
    /// `init`.
    pub init: bool,
    /// `privileged`.
    pub privileged: bool,
    /// `capAdd`.
    pub cap_add: Vec<String>,
    /// `securityOpt`.
    pub security_opt: Vec<String>,
    /// What the document asks for that monza does not apply.
    pub warnings: Vec<String>,
    /// The document as written (comments and trailing commas gone, variables not
    /// substituted).
    pub document: Value,
}

impl DevcontainerConfig {
    /// Reads a devcontainer.json. `template_options` are the `devcontainer-template.json`
    /// option defaults substituted for `${templateOption:NAME}`; other variables stay as
    /// text (see [`crate::variables`]).
    pub fn parse(
        text: &str,
        template_options: &BTreeMap<String, String>,
    ) -> Result<Self, ParseError> {
        let document = jsonc::parse(text)?;
        let mut resolved = document.clone();
        variables::substitute(&mut resolved, &|name| {
            name.strip_prefix("templateOption:")
                .and_then(|option| template_options.get(option.trim()).cloned())
        });
        let Value::Object(root) = &resolved else {
            return Err(ParseError::Malformed {
                message: format!(
                    "the document is {}, not a JSON object",
                    json_kind(&resolved)
                ),
            });
        };
        let workspace_folder = match get(root, "workspaceFolder") {
            Some(value) => string(value, &Field::root("workspaceFolder"))?,
            None => DEFAULT_WORKSPACE_FOLDER.to_owned(),
        };
        let basename = workspace_folder
            .trim_end_matches('/')
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_owned();
        variables::substitute(&mut resolved, &|name| match name {
            "containerWorkspaceFolder" => Some(workspace_folder.clone()),
            "containerWorkspaceFolderBasename" => Some(basename.clone()),
            _ => None,
        });
        let Value::Object(root) = &resolved else {
            return Err(ParseError::Malformed {
                message: "the document is not a JSON object".into(),
            });
        };
        let mut config = Self::from_object(root, workspace_folder)?;
        config.document = document;
        Ok(config)
    }

    fn from_object(
        root: &Map<String, Value>,
        workspace_folder: String,
    ) -> Result<Self, ParseError> {
        let optional_string = |key: &str| -> Result<Option<String>, ParseError> {
            get(root, key)
                .map(|value| string(value, &Field::root(key)))
                .transpose()
        };
        let optional_bool = |key: &str, default: bool| -> Result<bool, ParseError> {
            get(root, key).map_or(Ok(default), |value| boolean(value, &Field::root(key)))
        };
        let string_list = |key: &str| -> Result<Vec<String>, ParseError> {
            get(root, key).map_or(Ok(Vec::new()), |value| strings(value, &Field::root(key)))
        };
        let env = |key: &str| -> Result<BTreeMap<String, String>, ParseError> {
            get(root, key).map_or(Ok(BTreeMap::new()), |value| {
                env_map(value, &Field::root(key))
            })
        };

        if !workspace_folder.starts_with('/') {
            return Err(ParseError::invalid(
                "workspaceFolder",
                format!("{workspace_folder:?} is not an absolute path"),
            ));
        }

        let docker_compose_files = match get(root, "dockerComposeFile") {
            None => Vec::new(),
            Some(Value::String(file)) => vec![file.clone()],
            Some(value) => strings(value, &Field::root("dockerComposeFile"))?,
        };

        let mut forward_ports = Vec::new();
        if let Some(value) = get(root, "forwardPorts") {
            forward_ports.extend(values::forward_ports(value, &Field::root("forwardPorts"))?);
        }
        if let Some(value) = get(root, "appPort") {
            forward_ports.extend(values::app_ports(value, &Field::root("appPort"))?);
        }
        let mut seen = std::collections::BTreeSet::new();
        forward_ports.retain(|port| seen.insert(*port));

        let mut mounts = Vec::new();
        if let Some(value) = get(root, "mounts") {
            let field = Field::root("mounts");
            for (index, item) in crate::fields::array(value, &field)?.iter().enumerate() {
                mounts.push(values::mount(item, &field.index(index))?);
            }
        }
        let workspace_mount = match get(root, "workspaceMount") {
            Some(Value::String(text)) if text.trim().is_empty() => None,
            Some(value) => Some(values::mount(value, &Field::root("workspaceMount"))?),
            None => None,
        };

        let mut lifecycle_commands = Vec::new();
        for hook in LIFECYCLE_HOOKS {
            if let Some(value) = get(root, hook) {
                lifecycle_commands.extend(values::lifecycle(hook, value)?);
            }
        }

        let mut warnings = Vec::new();
        let host_requirements = match get(root, "hostRequirements") {
            Some(value) => host_requirements(value, &mut warnings)?,
            None => HostRequirements::default(),
        };

        if let Some(Value::Object(build)) = get(root, "build")
            && get(build, "options").is_some_and(is_meaningful)
        {
            warnings.push("build.options are not applied".to_owned());
        }
        for (key, reason) in NOT_APPLIED {
            if get(root, key).is_some_and(is_meaningful) {
                warnings.push(reason.to_owned());
            }
        }

        let mut left_as_text = Vec::new();
        for (key, value) in root {
            if !NOT_APPLIED.iter().any(|(ignored, _)| ignored == key) {
                variables::unresolved(value, key, &mut left_as_text);
            }
        }
        if !left_as_text.is_empty() {
            warnings.push(format!(
                "variables left as text: {}",
                left_as_text.join(", ")
            ));
        }

        Ok(Self {
            name: optional_string("name")?,
            image: optional_string("image")?,
            build: build(root)?,
            docker_compose_files,
            forward_ports,
            container_env: env("containerEnv")?,
            remote_env: env("remoteEnv")?,
            container_user: optional_string("containerUser")?,
            remote_user: optional_string("remoteUser")?,
            workspace_folder,
            workspace_mount,
            mounts,
            override_command: optional_bool("overrideCommand", true)?,
            lifecycle_commands,
            host_requirements,
            run_args: string_list("runArgs")?,
            init: optional_bool("init", false)?,
            privileged: optional_bool("privileged", false)?,
            cap_add: string_list("capAdd")?,
            security_opt: string_list("securityOpt")?,
            warnings,
            document: Value::Null,
        })
    }

    /// Whether the document uses docker compose.
    pub fn uses_compose(&self) -> bool {
        !self.docker_compose_files.is_empty()
    }
}

/// An empty object or array asks for nothing.
fn is_meaningful(value: &Value) -> bool {
    match value {
        Value::Object(map) => !map.is_empty(),
        Value::Array(items) => !items.is_empty(),
        Value::String(text) => !text.is_empty(),
        _ => true,
    }
}

fn build(root: &Map<String, Value>) -> Result<Option<BuildConfig>, ParseError> {
    if let Some(value) = get(root, "build") {
        let field = Field::root("build");
        let map = object(value, &field)?;
        let text = |key: &str| -> Result<Option<String>, ParseError> {
            get(map, key)
                .map(|item| string(item, &field.key(key)))
                .transpose()
        };
        // The legacy top-level `dockerFile` may accompany a `build` holding only args.
        let dockerfile = match text("dockerfile")?.or(text("dockerFile")?) {
            Some(dockerfile) => dockerfile,
            None => match legacy_dockerfile(root)? {
                Some(dockerfile) => dockerfile,
                None => return Err(ParseError::invalid(field.key("dockerfile"), "is required")),
            },
        };
        let context = match text("context")? {
            Some(context) => context,
            None => legacy_context(root)?,
        };
        let args = match get(map, "args") {
            Some(args) => env_map(args, &field.key("args"))?,
            None => BTreeMap::new(),
        };
        return Ok(Some(BuildConfig {
            dockerfile: non_empty(dockerfile, &field.key("dockerfile"))?,
            context: non_empty(context, &field.key("context"))?,
            args,
            target: text("target")?.filter(|target| !target.is_empty()),
        }));
    }
    match legacy_dockerfile(root)? {
        Some(dockerfile) => Ok(Some(BuildConfig {
            dockerfile: non_empty(dockerfile, &Field::root("dockerFile"))?,
            context: non_empty(legacy_context(root)?, &Field::root("context"))?,
            args: BTreeMap::new(),
            target: None,
        })),
        None => Ok(None),
    }
}

fn legacy_dockerfile(root: &Map<String, Value>) -> Result<Option<String>, ParseError> {
    for key in ["dockerFile", "dockerfile"] {
        if let Some(value) = get(root, key) {
            return string(value, &Field::root(key)).map(Some);
        }
    }
    Ok(None)
}

fn legacy_context(root: &Map<String, Value>) -> Result<String, ParseError> {
    get(root, "context").map_or(Ok(".".to_owned()), |value| {
        string(value, &Field::root("context"))
    })
}

fn non_empty(text: String, field: &Field) -> Result<String, ParseError> {
    if text.trim().is_empty() {
        Err(ParseError::invalid(field, "must not be empty"))
    } else {
        Ok(text)
    }
}

fn host_requirements(
    value: &Value,
    warnings: &mut Vec<String>,
) -> Result<HostRequirements, ParseError> {
    let field = Field::root("hostRequirements");
    let map = object(value, &field)?;
    let cpus = match get(map, "cpus") {
        None => None,
        Some(cpus) => Some(
            cpus.as_f64()
                .filter(|&count| count > 0.0 && count.is_finite())
                .ok_or_else(|| {
                    ParseError::invalid(
                        field.key("cpus"),
                        format!("{cpus} is not a positive number"),
                    )
                })?,
        ),
    };
    let memory_bytes = match get(map, "memory") {
        None => None,
        Some(Value::String(text)) => Some(values::size(text, &field.key("memory"))?),
        Some(Value::Number(bytes)) => {
            Some(bytes.as_u64().filter(|&bytes| bytes > 0).ok_or_else(|| {
                ParseError::invalid(field.key("memory"), format!("{bytes} is not a size"))
            })?)
        }
        Some(other) => {
            return Err(ParseError::invalid(
                field.key("memory"),
                format!("must be a size such as \"4gb\", not {}", json_kind(other)),
            ));
        }
    };
    for key in ["storage", "gpu"] {
        if get(map, key).is_some() {
            warnings.push(format!("hostRequirements.{key} is not applied"));
        }
    }
    Ok(HostRequirements { cpus, memory_bytes })
}
