//! `monza templates check [DIR]`: every template of a directory, one line each.

use std::fmt;
use std::path::Path;

use monza_domain::{ImageSource, TemplateName};

use crate::catalog::{CONFIG_LOCATIONS, DirTemplateCatalog, template_folders};

/// One template's verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckLine {
    /// The template's folder name (or the directory, when it cannot be read).
    pub name: String,
    /// The verdict.
    pub status: CheckStatus,
}

/// A template's verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckStatus {
    /// Usable as is. `source` is `image NAME` or `build DOCKERFILE`.
    Ok {
        /// Where the image comes from.
        source: String,
    },
    /// Usable, but asks for things monza does not apply (features, customizations...).
    Warn {
        /// The warnings, joined by `; `.
        message: String,
    },
    /// Not usable: malformed, unsupported, refused or missing.
    Error {
        /// Why.
        message: String,
    },
}

impl CheckLine {
    /// Whether this line is an error.
    pub fn is_error(&self) -> bool {
        matches!(self.status, CheckStatus::Error { .. })
    }

    fn error(name: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            status: CheckStatus::Error {
                message: message.into(),
            },
        }
    }
}

impl fmt::Display for CheckLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.status {
            CheckStatus::Ok { source } => write!(f, "ok {} ({source})", self.name),
            CheckStatus::Warn { message } => write!(f, "warn {}: {message}", self.name),
            CheckStatus::Error { message } => write!(f, "error {}: {message}", self.name),
        }
    }
}

/// Checks every template folder of `dir` (hidden folders and plain files are skipped),
/// as a catalog built with `allow_unsafe` would resolve them, in name order. A directory
/// that cannot be read, or holds no template folder, gives one error line named after it.
pub fn check_dir(dir: &Path, allow_unsafe: bool) -> Vec<CheckLine> {
    let catalog = DirTemplateCatalog::new(dir, allow_unsafe);
    let dir_name = dir.display().to_string();
    let root = match catalog.root() {
        Ok(root) => root,
        Err(err) => return vec![CheckLine::error(dir_name, err.to_string())],
    };
    let folders = match template_folders(&root) {
        Ok(folders) => folders,
        Err(err) => return vec![CheckLine::error(dir_name, err.to_string())],
    };
    if folders.is_empty() {
        return vec![CheckLine::error(dir_name, "no template folders found")];
    }
    folders
        .into_iter()
        .map(|folder| {
            let name = match TemplateName::new(&folder) {
                Ok(name) => name,
                Err(err) => return CheckLine::error(folder, err.to_string()),
            };
            let status = match catalog.load(&root, &name) {
                Ok(Some(template)) if template.warnings.is_empty() => CheckStatus::Ok {
                    source: match &template.image {
                        ImageSource::Image(image) => format!("image {image}"),
                        ImageSource::Build(build) => format!("build {}", build.dockerfile),
                    },
                },
                Ok(Some(template)) => CheckStatus::Warn {
                    message: template.warnings.join("; "),
                },
                Ok(None) => CheckStatus::Error {
                    message: format!(
                        "no devcontainer.json (looked for {})",
                        CONFIG_LOCATIONS
                            .iter()
                            .map(|location| format!("{folder}/{location}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                },
                Err(err) => CheckStatus::Error {
                    message: err.to_string(),
                },
            };
            CheckLine {
                name: folder,
                status,
            }
        })
        .collect()
}

/// Whether any line is an error (the check command then exits with status 1).
pub fn has_errors(lines: &[CheckLine]) -> bool {
    lines.iter().any(CheckLine::is_error)
}
