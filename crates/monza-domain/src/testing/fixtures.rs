//! Values the adapter crates' tests build again and again, written once.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::json;

use crate::runtime::{ContainerSpec, ExecOutput, FileKind, FileStat};
use crate::sandbox::{SandboxId, TemplateName, TenantId};
use crate::template::{ImageSource, RunOptions, Template};

/// An image template as most tests want one: `image` by name, no environment, users,
/// hooks, mounts or options beyond the defaults, the `/workspace` folder, port 8080
/// forwarded, and `{"image": image}` as its devcontainer.json.
///
/// A test sets what it needs otherwise with struct update (`Template { .., ..template(..) }`)
/// or field assignment. Panics if `name` is not a valid [`TemplateName`].
pub fn template(name: &str, image: &str) -> Template {
    Template {
        name: TemplateName::new(name).unwrap_or_else(|e| panic!("{e}")),
        image: ImageSource::Image(image.into()),
        container_env: BTreeMap::new(),
        remote_env: BTreeMap::new(),
        container_user: None,
        remote_user: None,
        workspace_folder: "/workspace".into(),
        forward_ports: vec![8080],
        override_command: true,
        lifecycle_commands: Vec::new(),
        mounts: Vec::new(),
        run_options: RunOptions::default(),
        config: json!({ "image": image }),
        warnings: Vec::new(),
    }
}

/// What a container runtime is asked to create for a new sandbox of the default tenant.
pub fn container_spec(template: Template) -> ContainerSpec {
    ContainerSpec {
        sandbox_id: SandboxId::new_random(),
        tenant: TenantId::default_tenant(),
        template,
    }
}

/// `len` bytes that do not compress to nothing (xorshift), the same for the same `seed`.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A command's output as a runtime reports it: `output` on stdout, nothing dropped, not
/// timed out, 1 ms.
pub fn exec_output(exit_code: i64, output: &str) -> ExecOutput {
    ExecOutput {
        output: output.into(),
        stdout: output.into(),
        stderr: String::new(),
        exit_code,
        truncated: false,
        timed_out: false,
        duration: Duration::from_millis(1),
    }
}

/// A regular file of `size` bytes named `name`, mode 0644, with no known modification time.
pub fn file_stat(name: &str, size: u64) -> FileStat {
    FileStat {
        name: name.into(),
        size,
        kind: FileKind::File,
        mode: 0o644,
        modified: None,
        link_target: None,
    }
}
