//! The image a sandbox runs: local, pulled, or built from a template's folder and tagged by
//! a hash of what went into the build, so the next sandbox reuses it.

use std::fs;
use std::io::Read;
use std::path::Path;

use docker_api::models::ImageBuildChunk;
use docker_api::opts::PullOpts;
use futures::StreamExt;
use hyper::{Body, Method};
use monza_domain::{BuildSpec, Error, ImageSource, Result, Template};
use sha2::{Digest, Sha256};

use crate::error::{Failure, bounded};
use crate::runtime::DockerRuntime;

/// The repository built images are tagged in: `monza-build/<template>:<hash>`.
pub const BUILD_REPOSITORY: &str = "monza-build";

impl DockerRuntime {
    /// The image for `template`, made available locally.
    pub(crate) async fn prepare_image(&self, template: &Template) -> Result<String> {
        match &template.image {
            ImageSource::Image(name) => {
                if !self.image_exists(name).await? {
                    self.pull(name).await?;
                }
                Ok(name.clone())
            }
            ImageSource::Build(build) => self.build(template, build).await,
        }
    }

    /// Whether the engine has `name` locally.
    pub(crate) async fn image_exists(&self, name: &str) -> Result<bool> {
        let image = self.docker.images().get(name);
        match bounded(self.settings.request_timeout, image.inspect()).await {
            Ok(_) => Ok(true),
            Err(f) if f.is_not_found() => Ok(false),
            Err(f) => {
                Err(f.into_domain(&self.settings.host, format_args!("inspecting image {name}")))
            }
        }
    }

    async fn pull(&self, name: &str) -> Result<()> {
        let (repository, tag) = split_reference(name);
        tracing::info!(image = name, "image not present locally, pulling it");
        let opts = PullOpts::builder().image(repository).tag(tag).build();
        let images = self.docker.images();
        let pulling = async {
            let mut stream = images.pull(&opts);
            let mut last_status = String::new();
            while let Some(chunk) = stream.next().await {
                match chunk.map_err(Failure::from)? {
                    ImageBuildChunk::Error { error, .. } => {
                        return Err(Failure::Status {
                            code: 500,
                            message: error,
                        });
                    }
                    ImageBuildChunk::PullStatus {
                        status,
                        id,
                        progress,
                        ..
                    } => {
                        if status != last_status {
                            tracing::info!(image = name, layer = id.as_deref(), "{status}");
                            last_status = status;
                        } else {
                            tracing::debug!(
                                image = name,
                                layer = id.as_deref(),
                                progress = progress.as_deref(),
                                "{status}"
                            );
                        }
                    }
                    ImageBuildChunk::Update { stream } => {
                        tracing::debug!(image = name, "{}", stream.trim_end())
                    }
                    ImageBuildChunk::Digest { .. } => {}
                }
            }
            Ok::<(), Failure>(())
        };
        let pulled = bounded(self.settings.image_timeout, pulling).await;
        let pulled = match pulled {
            Ok(()) if self.image_exists(name).await? => Ok(()),
            Ok(()) => Err("the engine reported no error, yet the image is not there".to_owned()),
            Err(Failure::Status { message, .. }) => Err(message),
            Err(f) => {
                return Err(
                    f.into_domain(&self.settings.host, format_args!("pulling image {name}"))
                );
            }
        };
        pulled.map_err(|message| {
            tracing::warn!(image = name, %message, "pull failed");
            Error::unavailable(
                "image registry",
                format!("image {name} is not present locally and pulling it failed: {message}"),
            )
        })
    }

    async fn build(&self, template: &Template, build: &BuildSpec) -> Result<String> {
        let name = template.name.as_str().to_owned();
        let spec = build.clone();
        let max = self.settings.max_build_context_bytes;
        let context = tokio::task::spawn_blocking(move || BuildContext::read(&spec, max))
            .await
            .map_err(|e| Error::internal(format!("reading the build context panicked: {e}")))??;
        let tag = build_tag(&name, &context.hash);
        if self.image_exists(&tag).await? {
            tracing::debug!(template = %name, image = %tag, "reusing built image");
            return Ok(tag);
        }
        tracing::info!(template = %name, image = %tag, context_bytes = context.tar.len(), "building image");
        let mut endpoint = format!(
            "/build?t={}&dockerfile={}&rm=1&forcerm=1&labels={}",
            crate::engine::query_value(&tag),
            crate::engine::query_value(&build.dockerfile),
            crate::engine::query_value(&serde_json::json!({ "monza.template": name }).to_string()),
        );
        if !build.args.is_empty() {
            let args = serde_json::to_string(&build.args)
                .map_err(|e| Error::internal(format!("encoding build args: {e}")))?;
            endpoint.push_str(&format!("&buildargs={}", crate::engine::query_value(&args)));
        }
        if let Some(target) = &build.target {
            endpoint.push_str(&format!("&target={}", crate::engine::query_value(target)));
        }
        let building = async {
            let response = self
                .raw
                .send(
                    Method::POST,
                    &endpoint,
                    Some("application/x-tar"),
                    Body::from(context.tar),
                )
                .await?;
            let mut body = response.into_body();
            let mut lines = LineBuffer::default();
            while let Some(chunk) = body.next().await {
                for line in lines.push(&chunk?) {
                    build_progress(&name, &line)?;
                }
            }
            if let Some(line) = lines.finish() {
                build_progress(&name, &line)?;
            }
            Ok::<(), Failure>(())
        };
        match bounded(self.settings.image_timeout, building).await {
            Ok(()) => {}
            Err(Failure::Status { code: 503, message }) => {
                tracing::warn!(template = %name, %message, "build could not reach a registry");
                return Err(Error::unavailable(
                    "image registry",
                    format!(
                        "building the image of template {name}: a base image could not be \
                         pulled, the registry did not answer: {message}"
                    ),
                ));
            }
            Err(Failure::Status {
                code: 400 | 500,
                message,
            }) => {
                return Err(Error::invalid(format!(
                    "building the image of template {name} failed: {message}"
                )));
            }
            Err(f) => {
                return Err(f.into_domain(
                    &self.settings.host,
                    format_args!("building the image of template {name}"),
                ));
            }
        }
        if !self.image_exists(&tag).await? {
            return Err(Error::internal(format!(
                "built image {tag} is missing after the build"
            )));
        }
        Ok(tag)
    }
}

/// Handles one line of the build's JSON progress; an `error` ends the build: as a 400 (the
/// Dockerfile failed: a step exited non-zero, an unknown image, a syntax error), or as a 503
/// when the engine could not reach a registry for a base image (see
/// [`is_registry_unreachable`]).
fn build_progress(template: &str, line: &[u8]) -> Result<(), Failure> {
    #[derive(serde::Deserialize)]
    struct Progress {
        stream: Option<String>,
        error: Option<String>,
        #[serde(rename = "errorDetail")]
        error_detail: Option<ErrorDetail>,
    }
    #[derive(serde::Deserialize)]
    struct ErrorDetail {
        /// A step's exit code: the Dockerfile's own failure, whatever it printed.
        code: Option<i64>,
    }
    match serde_json::from_slice::<Progress>(line) {
        Ok(Progress {
            error: Some(error),
            error_detail,
            ..
        }) => {
            let step_failed = error_detail.is_some_and(|d| d.code.is_some());
            let code = if !step_failed && is_registry_unreachable(&error) {
                503
            } else {
                400
            };
            Err(Failure::Status {
                code,
                message: error,
            })
        }
        Ok(Progress {
            stream: Some(text), ..
        }) => {
            tracing::debug!(template, "{}", text.trim_end());
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Whether the engine's error says it could not talk to a registry (connection refused, no
/// such host, a timeout): the registry is down or unreachable, not the template wrong.
fn is_registry_unreachable(message: &str) -> bool {
    const TRANSPORT: [&str; 8] = [
        "dial tcp",
        "no such host",
        "connection refused",
        "connection reset",
        "i/o timeout",
        "tls handshake timeout",
        "network is unreachable",
        "context deadline exceeded",
    ];
    let message = message.to_ascii_lowercase();
    TRANSPORT.iter().any(|t| message.contains(t))
}

/// Splits newline-delimited records arriving in arbitrary chunks; a record longer than
/// 1 MiB is cut (build output is for the log only).
#[derive(Default)]
struct LineBuffer {
    pending: Vec<u8>,
}

impl LineBuffer {
    const MAX: usize = 1 << 20;

    fn push(&mut self, chunk: &[u8]) -> Vec<Vec<u8>> {
        let mut lines = Vec::new();
        for &b in chunk {
            if b == b'\n' {
                lines.push(std::mem::take(&mut self.pending));
            } else if self.pending.len() < Self::MAX {
                self.pending.push(b);
            }
        }
        lines
    }

    fn finish(self) -> Option<Vec<u8>> {
        (!self.pending.is_empty()).then_some(self.pending)
    }
}

/// `name` as repository and tag (`latest` when none is given; a digest stays in the name).
fn split_reference(name: &str) -> (&str, &str) {
    if name.contains('@') {
        return (name, "");
    }
    let last_slash = name.rfind('/').map_or(0, |i| i + 1);
    match name[last_slash..].rfind(':') {
        Some(i) => (&name[..last_slash + i], &name[last_slash + i + 1..]),
        None => (name, "latest"),
    }
}

/// The tag of a template's built image: `monza-build/<template>:<first 32 hex of hash>`.
pub(crate) fn build_tag(template: &str, hash: &str) -> String {
    let mut repo: String = template
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    repo = repo.trim_matches('-').to_owned();
    if repo.is_empty() {
        repo.push_str("template");
    }
    format!("{BUILD_REPOSITORY}/{repo}:{}", &hash[..hash.len().min(32)])
}

/// A build context as a tar in memory (bounded), and the hash that names its image.
pub(crate) struct BuildContext {
    pub(crate) tar: Vec<u8>,
    pub(crate) hash: String,
}

impl BuildContext {
    /// Reads the context folder in a fixed order. The hash covers every path, mode, symlink
    /// target and file content, the Dockerfile's name, the build args and the target: not
    /// timestamps, so touching a file does not rebuild.
    pub(crate) fn read(spec: &BuildSpec, max_bytes: u64) -> Result<Self> {
        let root = &spec.context;
        let meta = fs::metadata(root).map_err(|e| {
            Error::invalid(format!(
                "build context {} cannot be read: {e}",
                root.display()
            ))
        })?;
        if !meta.is_dir() {
            return Err(Error::invalid(format!(
                "build context {} is not a directory",
                root.display()
            )));
        }
        let mut walk = Walk {
            builder: tar::Builder::new(Vec::new()),
            hasher: Sha256::new(),
            total: 0,
            max_bytes,
            root: root.clone(),
        };
        walk.dir(root, "")?;
        let mut hasher = walk.hasher;
        hasher.update(b"dockerfile\0");
        hasher.update(spec.dockerfile.as_bytes());
        for (k, v) in &spec.args {
            hasher.update(b"\0arg\0");
            hasher.update(k.as_bytes());
            hasher.update(b"=");
            hasher.update(v.as_bytes());
        }
        if let Some(target) = &spec.target {
            hasher.update(b"\0target\0");
            hasher.update(target.as_bytes());
        }
        let tar = walk
            .builder
            .into_inner()
            .map_err(|e| Error::internal(format!("finishing the build context tar: {e}")))?;
        let hash = hasher
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Ok(Self { tar, hash })
    }
}

struct Walk {
    builder: tar::Builder<Vec<u8>>,
    hasher: Sha256,
    total: u64,
    max_bytes: u64,
    root: std::path::PathBuf,
}

impl Walk {
    fn io(&self, path: &Path, e: std::io::Error) -> Error {
        Error::invalid(format!(
            "build context file {} cannot be read: {e}",
            path.display()
        ))
    }

    fn dir(&mut self, dir: &Path, rel: &str) -> Result<()> {
        let mut entries = fs::read_dir(dir)
            .map_err(|e| self.io(dir, e))?
            .collect::<std::io::Result<Vec<_>>>()
            .map_err(|e| self.io(dir, e))?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let path = entry.path();
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                return Err(Error::invalid(format!(
                    "build context file name {} is not UTF-8",
                    path.display()
                )));
            };
            let rel = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            let meta = fs::symlink_metadata(&path).map_err(|e| self.io(&path, e))?;
            let kind = meta.file_type();
            let mut header = tar::Header::new_gnu();
            header.set_metadata_in_mode(&meta, tar::HeaderMode::Deterministic);
            header.set_mtime(mtime(&meta));
            if kind.is_dir() {
                self.hasher
                    .update(format!("d\0{rel}\0{:o}\0", header.mode().unwrap_or(0)));
                header.set_size(0);
                self.builder
                    .append_data(&mut header, format!("{rel}/"), std::io::empty())
                    .map_err(|e| self.io(&path, e))?;
                self.dir(&path, &rel)?;
            } else if kind.is_symlink() {
                let target = fs::read_link(&path).map_err(|e| self.io(&path, e))?;
                self.hasher
                    .update(format!("l\0{rel}\0{}\0", target.display()));
                header.set_size(0);
                self.builder
                    .append_link(&mut header, &rel, &target)
                    .map_err(|e| self.io(&path, e))?;
            } else if kind.is_file() {
                self.total = self.total.saturating_add(meta.len());
                if self.total > self.max_bytes {
                    return Err(Error::TooLarge(format!(
                        "build context {} is larger than {} bytes",
                        self.root.display(),
                        self.max_bytes
                    )));
                }
                let mut content = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
                fs::File::open(&path)
                    .and_then(|mut f| f.read_to_end(&mut content))
                    .map_err(|e| self.io(&path, e))?;
                self.hasher.update(format!(
                    "f\0{rel}\0{:o}\0{}\0",
                    header.mode().unwrap_or(0),
                    content.len()
                ));
                self.hasher.update(&content);
                header.set_size(content.len() as u64);
                self.builder
                    .append_data(&mut header, &rel, content.as_slice())
                    .map_err(|e| self.io(&path, e))?;
            }
            // Sockets, fifos and devices have no place in a build context: skipped.
        }
        Ok(())
    }
}

fn mtime(meta: &fs::Metadata) -> u64 {
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn a_registry_that_does_not_answer_is_a_503_and_a_failing_step_a_400() {
        let refused = br#"{"errorDetail":{"message":"Get \"http://127.0.0.1:1/v2/\": dial tcp 127.0.0.1:1: connect: connection refused"},"error":"Get \"http://127.0.0.1:1/v2/\": dial tcp 127.0.0.1:1: connect: connection refused"}"#;
        let no_host = br#"{"errorDetail":{"message":"Get \"https://registry-1.docker.io/v2/\": dial tcp: lookup registry-1.docker.io on 10.0.0.53:53: no such host"},"error":"Get \"https://registry-1.docker.io/v2/\": dial tcp: lookup registry-1.docker.io: no such host"}"#;
        // A RUN step that itself failed to reach the network is the Dockerfile's failure.
        let step = br#"{"errorDetail":{"code":6,"message":"The command '/bin/sh -c curl x' returned a non-zero code: 6 (connection refused)"},"error":"The command '/bin/sh -c curl x' returned a non-zero code: 6 (connection refused)"}"#;
        let unknown = br#"{"errorDetail":{"message":"pull access denied for nosuch, repository does not exist"},"error":"pull access denied for nosuch, repository does not exist"}"#;
        for (line, want) in [
            (&refused[..], 503),
            (no_host, 503),
            (step, 400),
            (unknown, 400),
        ] {
            match build_progress("t", line) {
                Err(Failure::Status { code, .. }) => {
                    assert_eq!(code, want, "{}", String::from_utf8_lossy(line));
                }
                other => panic!("{other:?}"),
            }
        }
        assert!(build_progress("t", br#"{"stream":"Step 1/2"}"#).is_ok());
    }

    #[test]
    fn references_split_into_repository_and_tag() {
        assert_eq!(split_reference("busybox"), ("busybox", "latest"));
        assert_eq!(
            split_reference("monza-test/busybox:1.0"),
            ("monza-test/busybox", "1.0")
        );
        assert_eq!(
            split_reference("localhost:5000/x"),
            ("localhost:5000/x", "latest")
        );
        assert_eq!(
            split_reference("localhost:5000/x:2"),
            ("localhost:5000/x", "2")
        );
        assert_eq!(split_reference("x@sha256:abc"), ("x@sha256:abc", ""));
    }

    #[test]
    fn build_tags_are_valid_docker_references() {
        assert_eq!(
            build_tag("Python-3.12", "0123456789abcdef0123456789abcdef99"),
            "monza-build/python-3-12:0123456789abcdef0123456789abcdef"
        );
        assert_eq!(build_tag("__", "ab"), "monza-build/template:ab");
    }

    #[test]
    fn context_hash_follows_content_args_and_target_not_timestamps() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("Dockerfile"), "FROM scratch\n").unwrap();
        fs::create_dir(dir.path().join("sub")).unwrap();
        fs::write(dir.path().join("sub/file"), "one").unwrap();
        let spec = BuildSpec {
            context: dir.path().to_path_buf(),
            dockerfile: "Dockerfile".into(),
            args: BTreeMap::new(),
            target: None,
        };
        let first = BuildContext::read(&spec, 1 << 20).unwrap();
        let names: Vec<String> = tar::Archive::new(first.tar.as_slice())
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        assert_eq!(names, ["Dockerfile", "sub/", "sub/file"]);

        let f = fs::File::options()
            .write(true)
            .open(dir.path().join("sub/file"))
            .unwrap();
        f.set_modified(std::time::SystemTime::UNIX_EPOCH).unwrap();
        assert_eq!(BuildContext::read(&spec, 1 << 20).unwrap().hash, first.hash);

        fs::write(dir.path().join("sub/file"), "two").unwrap();
        let changed = BuildContext::read(&spec, 1 << 20).unwrap();
        assert_ne!(changed.hash, first.hash);

        let mut with_arg = spec.clone();
        with_arg.args.insert("V".into(), "1".into());
        assert_ne!(
            BuildContext::read(&with_arg, 1 << 20).unwrap().hash,
            changed.hash
        );
        let mut with_target = spec.clone();
        with_target.target = Some("dev".into());
        assert_ne!(
            BuildContext::read(&with_target, 1 << 20).unwrap().hash,
            changed.hash
        );

        assert!(matches!(
            BuildContext::read(&spec, 4),
            Err(Error::TooLarge(_))
        ));
    }
}
