//! [`DirTemplateCatalog`]: templates as folders of a directory, as the domain's
//! [`TemplateCatalog`].
//!
//! File access is synchronous, inside the async methods: the files are a few kilobytes on
//! a local disk, and once parsed a template costs a few `stat` calls per resolve (the cache
//! is checked against each file's modification time and size).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{PoisonError, RwLock};
use std::time::SystemTime;

use async_trait::async_trait;
use monza_domain::{Error, ImageSource, Result, Template, TemplateCatalog, TemplateName};

use crate::config::DevcontainerConfig;
use crate::error::{ALLOW_UNSAFE_SETTING, ParseError};
use crate::variables::template_option_defaults;

/// The catalog directory when `DEVCONTAINERS_PATH` is not set.
pub const DEFAULT_TEMPLATES_DIR: &str = "devcontainers";

/// Where a template's devcontainer.json may be, relative to the template's folder, in the
/// order they are tried.
pub const CONFIG_LOCATIONS: [&str; 3] = [
    "devcontainer.json",
    ".devcontainer/devcontainer.json",
    ".devcontainer.json",
];

/// The file, next to the devcontainer.json locations, holding `${templateOption:NAME}`
/// defaults (the public devcontainers/templates layout).
pub const TEMPLATE_OPTIONS_FILE: &str = "devcontainer-template.json";

/// Templates read from a directory: template `NAME` is the folder `NAME`, holding its
/// devcontainer.json at one of [`CONFIG_LOCATIONS`]. Folders whose name starts with `.`
/// are not templates.
///
/// Parsed templates are cached by file, and re-read when the devcontainer.json or the
/// template-options file changes (modification time or size), so edits are picked up
/// without a restart. The cache is shared by all callers behind a lock.
pub struct DirTemplateCatalog {
    dir: PathBuf,
    allow_unsafe: bool,
    cache: RwLock<HashMap<PathBuf, CachedTemplate>>,
}

struct CachedTemplate {
    stamps: (FileStamp, Option<FileStamp>),
    template: std::result::Result<Template, ParseError>,
}

/// What tells a file changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
}

/// A template's files, found and checked to lie inside the catalog directory.
struct Located {
    /// The devcontainer.json, canonical.
    config: PathBuf,
    /// The same, relative to the catalog directory, for messages.
    display: String,
    /// The devcontainer-template.json, canonical, if present.
    options: Option<PathBuf>,
}

impl fmt::Debug for DirTemplateCatalog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DirTemplateCatalog")
            .field("dir", &self.dir)
            .field("allow_unsafe", &self.allow_unsafe)
            .finish_non_exhaustive()
    }
}

impl DirTemplateCatalog {
    /// A catalog over `dir`. With `allow_unsafe`, templates may use the options that weaken
    /// isolation (`privileged`, `capAdd`, `securityOpt`, mounts, and a build context outside
    /// `dir`); without it, such templates fail to resolve with the reason.
    ///
    /// The directory is read on use, not here: it may be created or filled later.
    pub fn new(dir: impl Into<PathBuf>, allow_unsafe: bool) -> Self {
        Self {
            dir: dir.into(),
            allow_unsafe,
            cache: RwLock::new(HashMap::new()),
        }
    }

    /// The directory templates are read from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether unsafe template options are allowed.
    pub fn allows_unsafe(&self) -> bool {
        self.allow_unsafe
    }

    /// [`TemplateCatalog::resolve`], synchronously.
    pub fn resolve_sync(&self, name: &TemplateName) -> Result<Template> {
        let root = self.root()?;
        match self.load(&root, name)? {
            Some(template) => Ok(template),
            None => {
                let available = self.list_in(&root)?;
                let message = if available.is_empty() {
                    format!("unknown template \"{name}\": no templates are available")
                } else {
                    let names: Vec<&str> = available.iter().map(TemplateName::as_str).collect();
                    format!(
                        "unknown template \"{name}\"; available templates: {}",
                        names.join(", ")
                    )
                };
                Err(Error::not_found(message))
            }
        }
    }

    /// [`TemplateCatalog::list`], synchronously.
    pub fn list_sync(&self) -> Result<Vec<TemplateName>> {
        self.list_in(&self.root()?)
    }

    /// The catalog directory, canonical.
    pub(crate) fn root(&self) -> Result<PathBuf> {
        fs::canonicalize(&self.dir).map_err(|err| {
            Error::unavailable(
                "template catalog",
                format!("cannot read {}: {err}", self.dir.display()),
            )
        })
    }

    fn list_in(&self, root: &Path) -> Result<Vec<TemplateName>> {
        let mut names = Vec::new();
        for folder in template_folders(root)? {
            let Ok(name) = TemplateName::new(&folder) else {
                continue;
            };
            if matches!(locate(root, &name), Ok(Some(_))) {
                names.push(name);
            }
        }
        names.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        Ok(names)
    }

    /// The template, `None` if there is no such template.
    pub(crate) fn load(&self, root: &Path, name: &TemplateName) -> Result<Option<Template>> {
        let Some(located) = locate(root, name)? else {
            return Ok(None);
        };
        let invalid =
            |err: &dyn fmt::Display| Error::invalid(format!("{}: {err}", located.display));
        let stamps = (
            stamp(&located.config).map_err(|err| invalid(&err))?,
            located
                .options
                .as_deref()
                .map(stamp)
                .transpose()
                .map_err(|err| invalid(&err))?,
        );

        let cached = {
            let cache = self.cache.read().unwrap_or_else(PoisonError::into_inner);
            cache
                .get(&located.config)
                .filter(|entry| entry.stamps == stamps)
                .map(|entry| entry.template.clone())
        };
        let template = match cached {
            Some(template) => template,
            None => {
                tracing::debug!(template = %name, file = %located.display, "reading template");
                let template = self.parse(name, &located).map_err(|err| invalid(&err))?;
                self.cache
                    .write()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(
                        located.config.clone(),
                        CachedTemplate {
                            stamps,
                            template: template.clone(),
                        },
                    );
                template
            }
        };
        let template = template.map_err(|err| invalid(&err))?;
        self.check_build(root, template)
            .map(Some)
            .map_err(|err| invalid(&err))
    }

    /// Reads and converts the files. The outer error is a file that cannot be read; the
    /// inner result (cached) is the template or why the document cannot be one.
    fn parse(
        &self,
        name: &TemplateName,
        located: &Located,
    ) -> std::io::Result<std::result::Result<Template, ParseError>> {
        let options = match &located.options {
            Some(path) => match template_option_defaults(&fs::read_to_string(path)?) {
                Ok(options) => options,
                Err(err) => {
                    return Ok(Err(ParseError::Malformed {
                        message: format!("{TEMPLATE_OPTIONS_FILE}: {err}"),
                    }));
                }
            },
            None => BTreeMap::new(),
        };
        let text = fs::read_to_string(&located.config)?;
        let config_dir = located.config.parent().unwrap_or(Path::new("/"));
        Ok(DevcontainerConfig::parse(&text, &options)
            .and_then(|config| config.to_template(name.clone(), config_dir, self.allow_unsafe)))
    }

    /// A build's context must exist and, unless unsafe templates are allowed, lie inside
    /// the catalog directory (it is sent whole to the Docker engine and can end up in the
    /// image); its Dockerfile must exist. Checked on every resolve, not cached.
    fn check_build(
        &self,
        root: &Path,
        mut template: Template,
    ) -> std::result::Result<Template, ParseError> {
        let ImageSource::Build(build) = &mut template.image else {
            return Ok(template);
        };
        let context = fs::canonicalize(&build.context)
            .ok()
            .filter(|context| context.is_dir())
            .ok_or_else(|| {
                ParseError::invalid("build.context", "the build context folder does not exist")
            })?;
        if !self.allow_unsafe && !context.starts_with(root) {
            return Err(ParseError::refused(
                "build.context",
                format!(
                    "the build context is outside the template directory; an operator can \
                     allow it with {ALLOW_UNSAFE_SETTING}=true"
                ),
            ));
        }
        if !context.join(&build.dockerfile).is_file() {
            return Err(ParseError::invalid(
                "build.dockerfile",
                format!("{} does not exist in the build context", build.dockerfile),
            ));
        }
        build.context = context;
        Ok(template)
    }
}

#[async_trait]
impl TemplateCatalog for DirTemplateCatalog {
    // Not `err`: an unknown or unusable template is the client's mistake, answered 400 and
    // logged by the request line, not an ERROR for the operator.
    #[tracing::instrument(skip_all, fields(template = %name))]
    async fn resolve(&self, name: &TemplateName) -> Result<Template> {
        let resolved = self.resolve_sync(name);
        if let Err(e) = &resolved {
            if e.is_client_error() {
                tracing::debug!(error = %e, "template refused");
            } else {
                tracing::error!(error = %e, "reading the template failed");
            }
        }
        resolved
    }

    #[tracing::instrument(skip_all, err)]
    async fn list(&self) -> Result<Vec<TemplateName>> {
        self.list_sync()
    }
}

/// The names of the folders in `root` that could be templates (not hidden), sorted.
pub(crate) fn template_folders(root: &Path) -> Result<Vec<String>> {
    let unreadable = |err: std::io::Error| {
        Error::unavailable(
            "template catalog",
            format!("cannot read {}: {err}", root.display()),
        )
    };
    let mut folders = Vec::new();
    for entry in fs::read_dir(root).map_err(unreadable)? {
        let entry = entry.map_err(unreadable)?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if !name.starts_with('.') && entry.path().is_dir() {
            folders.push(name);
        }
    }
    folders.sort();
    Ok(folders)
}

/// Finds a template's devcontainer.json. `None` if the template has none; invalid input if
/// its files resolve (through symbolic links) outside the catalog directory.
fn locate(root: &Path, name: &TemplateName) -> Result<Option<Located>> {
    // TemplateName allows neither `/` nor `.`/`..`, so this stays one level below root;
    // hidden folders are not templates.
    if name.as_str().starts_with('.') {
        return Ok(None);
    }
    let folder = root.join(name.as_str());
    let Some(relative) = CONFIG_LOCATIONS
        .iter()
        .find(|location| folder.join(location).is_file())
    else {
        return Ok(None);
    };
    let display = format!("{name}/{relative}");
    let config = inside(root, &folder.join(relative), &display)?;
    let options_path = folder.join(TEMPLATE_OPTIONS_FILE);
    let options = if options_path.is_file() {
        Some(inside(
            root,
            &options_path,
            &format!("{name}/{TEMPLATE_OPTIONS_FILE}"),
        )?)
    } else {
        None
    };
    Ok(Some(Located {
        config,
        display,
        options,
    }))
}

/// The canonical path of `path`, which must lie inside `root` (canonical).
fn inside(root: &Path, path: &Path, display: &str) -> Result<PathBuf> {
    let canonical = fs::canonicalize(path)
        .map_err(|err| Error::invalid(format!("{display}: cannot be read: {err}")))?;
    if canonical.starts_with(root) {
        Ok(canonical)
    } else {
        Err(Error::invalid(format!(
            "{display}: refused: it resolves outside the template directory"
        )))
    }
}

fn stamp(path: &Path) -> std::io::Result<FileStamp> {
    let metadata = fs::metadata(path)?;
    Ok(FileStamp {
        modified: metadata.modified().ok(),
        len: metadata.len(),
    })
}
