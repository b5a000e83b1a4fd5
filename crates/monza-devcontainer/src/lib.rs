//! monza's template catalog: devcontainer.json templates read from a directory.
//!
//! - [`DevcontainerConfig::parse`] reads a devcontainer.json (JSON with comments and
//!   trailing commas) into a typed configuration; every configuration the reference
//!   devcontainers CLI accepts parses, compose ones included.
//! - [`DevcontainerConfig::to_template`] decides what monza runs: the domain's
//!   [`monza_domain::Template`], or a [`ParseError`] saying why not (compose unsupported,
//!   an unsafe option refused, a field invalid).
//! - [`DirTemplateCatalog`] is the [`monza_domain::TemplateCatalog`] over a directory, with
//!   a cache that notices edited files.
//! - [`check_dir`] is `monza templates check`.
//!
//! This crate knows the domain and the file system, nothing of Docker or HTTP.

mod catalog;
mod check;
mod config;
mod error;
mod fields;
mod jsonc;
mod template;
mod values;
mod variables;

pub use catalog::{
    CONFIG_LOCATIONS, DEFAULT_TEMPLATES_DIR, DirTemplateCatalog, TEMPLATE_OPTIONS_FILE,
};
pub use check::{CheckLine, CheckStatus, check_dir, has_errors};
pub use config::{
    BuildConfig, DEFAULT_WORKSPACE_FOLDER, DevcontainerConfig, HostRequirements, LIFECYCLE_HOOKS,
};
pub use error::{ALLOW_UNSAFE_SETTING, ParseError};
pub use template::{SAFE_RUN_ARGS, UNSAFE_RUN_ARGS};
pub use variables::template_option_defaults;

/// Test templates shipped with this crate (`busybox`, `busybox-ports`, `busybox-build`,
/// `busybox-hooks`, `busybox-failing-hook`, ...; and `debian`, on the Debian test image),
/// all using local images
/// `monza-test/busybox:latest`, for other crates' tests against a real engine. The path is
/// this crate's source folder at build time.
pub fn test_templates_dir() -> &'static std::path::Path {
    std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/templates"))
}
