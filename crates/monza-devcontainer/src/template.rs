//! From a [`DevcontainerConfig`] to the domain's [`Template`]: what monza runs, and what it
//! refuses.
//!
//! Safe by default: options that weaken the sandbox's isolation (`privileged`, `capAdd`,
//! `securityOpt`, `mounts`, `workspaceMount` and their `runArgs` spellings) are refused
//! unless the operator allows unsafe templates; `runArgs` flags outside [`SAFE_RUN_ARGS`]
//! and [`UNSAFE_RUN_ARGS`] are always refused, naming the flag.

use std::path::{Component, Path, PathBuf};

use monza_domain::{BuildSpec, ImageSource, Mount, RunOptions, Template, TemplateName};

use crate::config::DevcontainerConfig;
use crate::error::{ALLOW_UNSAFE_SETTING, ParseError};
use crate::fields::Field;
use crate::values;

/// The `runArgs` flags monza applies for any template.
pub const SAFE_RUN_ARGS: [&str; 7] = [
    "--init",
    "--hostname",
    "--label",
    "--shm-size",
    "--cpus",
    "--memory",
    "--env",
];

/// The `runArgs` flags monza applies only when the operator allows unsafe templates.
pub const UNSAFE_RUN_ARGS: [&str; 5] = [
    "--privileged",
    "--cap-add",
    "--security-opt",
    "--volume",
    "--mount",
];

impl DevcontainerConfig {
    /// The template monza runs from this configuration. `config_dir` is the absolute folder
    /// of the devcontainer.json, against which `build` paths are resolved (lexically: this
    /// function touches no file). `allow_unsafe` admits the options that weaken isolation.
    pub fn to_template(
        &self,
        name: TemplateName,
        config_dir: &Path,
        allow_unsafe: bool,
    ) -> Result<Template, ParseError> {
        if self.uses_compose() {
            return Err(ParseError::Unsupported {
                reason: format!(
                    "docker compose (dockerComposeFile {}) is not supported: a monza sandbox \
                     is a single container made from an image or a Dockerfile",
                    self.docker_compose_files.join(", ")
                ),
            });
        }
        let mut warnings = self.warnings.clone();
        let image = match (&self.build, &self.image) {
            (Some(build), image) => {
                if image.is_some() {
                    warnings.push("image is ignored: build takes precedence".to_owned());
                }
                ImageSource::Build(build_spec(build, config_dir)?)
            }
            (None, Some(image)) if image.trim().is_empty() => {
                return Err(ParseError::invalid("image", "must not be empty"));
            }
            (None, Some(image)) => ImageSource::Image(image.trim().to_owned()),
            (None, None) => {
                return Err(ParseError::invalid(
                    "image",
                    "a template needs an image or a build (build.dockerfile)",
                ));
            }
        };

        let mut run_options = RunOptions {
            cpus: self.host_requirements.cpus,
            memory_bytes: self.host_requirements.memory_bytes,
            init: self.init,
            ..RunOptions::default()
        };
        let mut container_env = self.container_env.clone();
        let mut mounts = Vec::new();

        let unsafe_field = |field: &str, what: &str| -> Result<(), ParseError> {
            if allow_unsafe {
                Ok(())
            } else {
                Err(ParseError::refused(field, unsafe_reason(what)))
            }
        };
        if self.privileged {
            unsafe_field("privileged", "privileged mode")?;
            run_options.privileged = true;
        }
        if !self.cap_add.is_empty() {
            unsafe_field("capAdd", "added capabilities")?;
            run_options.cap_add.extend(self.cap_add.iter().cloned());
        }
        if !self.security_opt.is_empty() {
            unsafe_field("securityOpt", "security options")?;
            run_options
                .security_opt
                .extend(self.security_opt.iter().cloned());
        }
        if let Some(mount) = &self.workspace_mount {
            unsafe_field("workspaceMount", "a workspace mount")?;
            mounts.push(mount.clone());
        }
        if !self.mounts.is_empty() {
            unsafe_field("mounts", "mounts")?;
            mounts.extend(self.mounts.iter().cloned());
        }
        apply_run_args(
            &self.run_args,
            allow_unsafe,
            &mut run_options,
            &mut container_env,
            &mut mounts,
        )?;

        Ok(Template {
            name,
            image,
            container_env,
            remote_env: self.remote_env.clone(),
            container_user: self.container_user.clone(),
            remote_user: self.remote_user.clone(),
            workspace_folder: self.workspace_folder.clone(),
            forward_ports: self.forward_ports.clone(),
            override_command: self.override_command,
            lifecycle_commands: self.lifecycle_commands.clone(),
            mounts,
            run_options,
            config: self.document.clone(),
            warnings,
        })
    }
}

fn unsafe_reason(what: &str) -> String {
    format!(
        "{what} would weaken the sandbox's isolation; an operator can allow it with \
         {ALLOW_UNSAFE_SETTING}=true"
    )
}

/// `build` with the context made absolute and the Dockerfile relative to it. Both are
/// given relative to the devcontainer.json's folder, so the Dockerfile must lie inside the
/// context (Docker builds only see the context).
fn build_spec(
    build: &crate::config::BuildConfig,
    config_dir: &Path,
) -> Result<BuildSpec, ParseError> {
    let context = normalize(&config_dir.join(&build.context));
    let dockerfile = normalize(&config_dir.join(&build.dockerfile));
    let relative = dockerfile.strip_prefix(&context).map_err(|_| {
        ParseError::invalid(
            "build.dockerfile",
            format!(
                "{:?} is outside the build context {:?}",
                build.dockerfile, build.context
            ),
        )
    })?;
    let relative: Vec<String> = relative
        .components()
        .map(|part| part.as_os_str().to_string_lossy().into_owned())
        .collect();
    if relative.is_empty() {
        return Err(ParseError::invalid(
            "build.dockerfile",
            format!("{:?} is the context folder, not a file", build.dockerfile),
        ));
    }
    Ok(BuildSpec {
        context,
        dockerfile: relative.join("/"),
        args: build.args.clone(),
        target: build.target.clone(),
    })
}

/// Resolves `.` and `..` without touching the file system; `..` never climbs above `/`.
pub(crate) fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() && !out.has_root() {
                    out.push("..");
                }
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

/// Applies `runArgs`: [`SAFE_RUN_ARGS`] always, [`UNSAFE_RUN_ARGS`] when allowed, anything
/// else refused. Flags take their value as `--flag value` or `--flag=value`; the short
/// spellings `-h`, `-l`, `-m`, `-e` and `-v` are understood.
fn apply_run_args(
    args: &[String],
    allow_unsafe: bool,
    options: &mut RunOptions,
    env: &mut std::collections::BTreeMap<String, String>,
    mounts: &mut Vec<Mount>,
) -> Result<(), ParseError> {
    let mut tokens = args.iter().enumerate();
    while let Some((index, token)) = tokens.next() {
        let field = Field::root("runArgs").index(index);
        let (flag, inline) = match token.split_once('=') {
            Some((flag, value)) if flag.starts_with('-') => (flag, Some(value)),
            _ => (token.as_str(), None),
        };
        let flag = match flag {
            "-h" => "--hostname",
            "-l" => "--label",
            "-m" => "--memory",
            "-e" => "--env",
            "-v" => "--volume",
            other => other,
        };
        if !flag.starts_with('-') {
            return Err(ParseError::invalid(
                field,
                format!("{token:?} is not a flag (a value without its flag?)"),
            ));
        }
        let is_unsafe = UNSAFE_RUN_ARGS.contains(&flag);
        if !is_unsafe && !SAFE_RUN_ARGS.contains(&flag) {
            return Err(ParseError::refused(
                format!("runArgs {flag}"),
                format!(
                    "flag {flag} is not supported; monza applies {} (and, when an operator \
                     allows unsafe templates, {})",
                    SAFE_RUN_ARGS.join(", "),
                    UNSAFE_RUN_ARGS.join(", ")
                ),
            ));
        }
        if is_unsafe && !allow_unsafe {
            return Err(ParseError::refused(
                format!("runArgs {flag}"),
                unsafe_reason(&format!("flag {flag}")),
            ));
        }
        if matches!(flag, "--init" | "--privileged") {
            let on = match inline {
                None | Some("true") => true,
                Some("false") => false,
                Some(other) => {
                    return Err(ParseError::invalid(
                        field,
                        format!("{flag}={other}: expected true or false"),
                    ));
                }
            };
            if flag == "--init" {
                options.init = on;
            } else {
                options.privileged = on;
            }
            continue;
        }
        let value = match inline {
            Some(value) => value.to_owned(),
            None => match tokens.next() {
                Some((_, value)) => value.clone(),
                None => {
                    return Err(ParseError::invalid(field, format!("{flag} needs a value")));
                }
            },
        };
        apply_flag(flag, &value, &field, options, env, mounts)?;
    }
    Ok(())
}

fn apply_flag(
    flag: &str,
    value: &str,
    field: &Field,
    options: &mut RunOptions,
    env: &mut std::collections::BTreeMap<String, String>,
    mounts: &mut Vec<Mount>,
) -> Result<(), ParseError> {
    match flag {
        "--hostname" => {
            if value.is_empty() || value.contains(char::is_whitespace) {
                return Err(ParseError::invalid(
                    field,
                    format!("--hostname {value:?} is not a host name"),
                ));
            }
            options.hostname = Some(value.to_owned());
        }
        "--label" => {
            let (key, label) = value.split_once('=').unwrap_or((value, ""));
            if key.is_empty() || key.starts_with("monza.") {
                return Err(ParseError::invalid(
                    field,
                    format!(
                        "--label {value:?}: the key must be non-empty and not start with monza."
                    ),
                ));
            }
            options.labels.insert(key.to_owned(), label.to_owned());
        }
        "--shm-size" => options.shm_size_bytes = Some(values::size(value, field)?),
        "--memory" => options.memory_bytes = Some(values::size(value, field)?),
        "--cpus" => {
            let cpus = value
                .parse::<f64>()
                .ok()
                .filter(|cpus| *cpus > 0.0 && cpus.is_finite())
                .ok_or_else(|| {
                    ParseError::invalid(field, format!("--cpus {value:?} is not a positive number"))
                })?;
            options.cpus = Some(cpus);
        }
        "--env" => {
            // `--env NAME` copies the host's variable: not the template's business.
            let Some((name, text)) = value.split_once('=').filter(|(name, _)| !name.is_empty())
            else {
                return Err(ParseError::invalid(
                    field,
                    format!("--env {value:?}: expected NAME=VALUE"),
                ));
            };
            env.insert(name.to_owned(), text.to_owned());
        }
        "--cap-add" => options.cap_add.push(value.to_owned()),
        "--security-opt" => options.security_opt.push(value.to_owned()),
        "--mount" => mounts.push(values::mount_string(value, field)?),
        "--volume" => mounts.push(volume(value, field)?),
        other => {
            return Err(ParseError::refused(
                format!("runArgs {other}"),
                "flag is not supported",
            ));
        }
    }
    Ok(())
}

/// `-v` syntax: `[source:]target[:options]`; a source starting with `/` or `.` is a bind.
fn volume(value: &str, field: &Field) -> Result<Mount, ParseError> {
    let parts: Vec<&str> = value.split(':').collect();
    let (source, target, options) = match parts.as_slice() {
        [target] => (None, *target, ""),
        [source, target] => (Some(*source), *target, ""),
        [source, target, options] => (Some(*source), *target, *options),
        _ => {
            return Err(ParseError::invalid(
                field,
                format!("--volume {value:?} is not [source:]target[:options]"),
            ));
        }
    };
    if !target.starts_with('/') {
        return Err(ParseError::invalid(
            field,
            format!("--volume {value:?}: the target is not an absolute path"),
        ));
    }
    let kind = match source {
        Some(source) if source.starts_with('/') || source.starts_with('.') => "bind",
        _ => "volume",
    };
    Ok(Mount {
        kind: kind.to_owned(),
        source: source.map(str::to_owned),
        target: target.to_owned(),
        read_only: options.split(',').any(|option| option == "ro"),
    })
}
