//! Files in and out of a sandbox, as tar streams end to end.
//!
//! Upload: a tar of one entry is produced on the fly (header with the announced size, the
//! content as it arrives, padding, end blocks) and sent as the streaming body of
//! `PUT /containers/{id}/archive?path=/`; the entry's path is the destination directory plus
//! the name, so the engine creates missing directories. Download: `GET` of the same
//! endpoint, whose tar is parsed incrementally to yield only the file's bytes. Neither holds
//! more than a chunk or two in memory.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt};
use hyper::{Body, Method, Response};
use monza_domain::{
    ByteStream, Error, FileDownload, FileKind, FileProblem, FileStat, Result, UploadFile,
    collect_exactly,
};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use monza_agent_protocol::{FsAnswer, FsKind, ReadFileRequest, WriteFileRequest};

use crate::engine::query_value;
use crate::error::{Failure, bounded};
use crate::fsops::file_entry;
use crate::owner::{Owner, UserSpec};
use crate::runtime::DockerRuntime;

/// Go's `os.ModeDir`, in the engine's path stat.
const MODE_DIR: u32 = 1 << 31;
/// Go's `os.ModeSymlink`.
const MODE_SYMLINK: u32 = 1 << 27;
/// Go's `os.ModeSetuid`, `os.ModeSetgid` and `os.ModeSticky`.
const MODE_SETUID: u32 = 1 << 23;
const MODE_SETGID: u32 = 1 << 22;
const MODE_STICKY: u32 = 1 << 20;
/// Go's `os.ModeType` less directories and links: devices, pipes, sockets, irregular files.
const MODE_TYPE: u32 = (1 << 26) | (1 << 25) | (1 << 24) | (1 << 21) | (1 << 19);
/// Symlinks followed when downloading before giving up.
const MAX_SYMLINKS: usize = 8;
/// Largest PAX extended header accepted.
const MAX_PAX: u64 = 1 << 20;

/// The engine's `X-Docker-Container-Path-Stat`.
#[derive(Debug, serde::Deserialize)]
pub(crate) struct PathStat {
    name: String,
    size: i64,
    mode: u32,
    #[serde(rename = "linkTarget", default)]
    pub(crate) link_target: String,
    /// RFC 3339.
    #[serde(default)]
    mtime: String,
}

impl PathStat {
    pub(crate) fn is_dir(&self) -> bool {
        self.mode & MODE_DIR != 0
    }

    pub(crate) fn is_symlink(&self) -> bool {
        self.mode & MODE_SYMLINK != 0
    }

    fn into_stat(self) -> FileStat {
        let modified = OffsetDateTime::parse(&self.mtime, &Rfc3339).ok();
        FileStat {
            kind: kind_of(self.mode),
            mode: permission_bits(self.mode),
            size: u64::try_from(self.size).unwrap_or(0),
            modified,
            link_target: Some(self.link_target)
                .filter(|t| !t.is_empty() && self.mode & MODE_SYMLINK != 0),
            name: self.name,
        }
    }
}

/// What the file API needs to know of a container, read with one inspect (a container's
/// mounts and configured user never change).
#[derive(Debug, Default)]
pub(crate) struct ContainerFacts {
    /// Its tmpfs mount points, which the archive endpoint cannot reach.
    tmpfs: Vec<String>,
    /// Its configured user (`containerUser`, else the image's `USER`; empty for root).
    user: String,
    /// User specs already resolved against its `/etc/passwd` and `/etc/group`.
    owners: Mutex<HashMap<String, Owner>>,
}

/// How a path stat says nothing is at a path (the engine's 404), as opposed to a path that
/// cannot be followed.
const ABSENT: &str = " does not exist in the sandbox";

/// Largest `/etc/passwd` or `/etc/group` read to resolve an owner.
const MAX_ID_FILE: usize = 1 << 20;

impl DockerRuntime {
    pub(crate) async fn upload_file(
        &self,
        container_id: &str,
        dest_dir: &str,
        file: UploadFile,
    ) -> Result<FileStat> {
        let what = format!(
            "uploading {} to {dest_dir} in container {container_id}",
            file.name
        );
        let dir = dest_dir.trim_matches('/');
        let entry = if dir.is_empty() {
            file.name.clone()
        } else {
            format!("{dir}/{}", file.name)
        };
        let target = format!("/{entry}");
        let facts = self.facts(container_id).await?;
        refuse_tmpfs(&facts, &target)?;
        let file = match self.write_by_agent(container_id, &target, file).await? {
            Ok(written) => return Ok(written),
            Err(file) => file,
        };
        let owner = self
            .owner(container_id, &facts, file.options.user.as_deref())
            .await?;
        // `Err(true)`: nothing there; `Err(false)`: the stat failed in a way the write itself
        // reports best (a link loop on the way: the engine's PUT names it).
        let existing = match self.path_stat(container_id, &target).await {
            Ok(stat) => Ok(stat),
            Err(Error::File {
                problem: FileProblem::NotFound,
                ..
            }) => Err(true),
            Err(
                e @ (Error::Unavailable { .. }
                | Error::File {
                    problem: FileProblem::NotADirectory,
                    ..
                }),
            ) => return Err(e),
            Err(_) => Err(false),
        };
        if existing.as_ref().is_ok_and(|s| s.mode & MODE_DIR != 0) {
            return Err(Error::file(
                FileProblem::IsDirectory,
                format!("{target} is a directory; a file cannot replace it"),
            ));
        }
        // A file already there keeps its permission bits (a script stays executable) unless
        // the client gives a mode; a new one is 0644.
        let mode = file.options.mode.unwrap_or(match &existing {
            Ok(stat) if stat.mode & MODE_SYMLINK == 0 => stat.mode & 0o777,
            _ => NEW_FILE_MODE,
        });
        // Only directories that are missing get an entry: one for a directory that exists
        // would give it to the sandbox's user and reset its mode.
        let missing = match existing {
            Err(true) => self.missing_dirs(container_id, dest_dir).await?,
            _ => Vec::new(),
        };
        if let Some(first) = missing.first()
            && !file.options.create_parents
        {
            return Err(Error::file(
                FileProblem::NotFound,
                format!(
                    "{target}: directory {first} does not exist (parents=true creates missing \
                     directories)"
                ),
            ));
        }
        let mut tar = TarEntries::default();
        for dir in &missing {
            tar.directory(dir, DIR_MODE, owner)?;
        }
        tar.file_header(&target, file.size, mode, owner)?;
        let failure = Arc::new(Mutex::new(None));
        let size = file.size;
        let body = Body::wrap_stream(tar_body(
            tar.into_bytes(),
            size,
            file.content,
            failure.clone(),
        ));
        let sent = self.put_archive(container_id, body).await;
        if let Some(e) = failure.lock().ok().and_then(|mut slot| slot.take()) {
            return Err(e);
        }
        sent.map_err(|f| {
            path_refusal(&f, &target).unwrap_or_else(|| f.into_domain(&self.settings.host, &what))
        })?;
        Ok(FileStat {
            name: file.name,
            size,
            kind: FileKind::File,
            mode,
            modified: Some(OffsetDateTime::now_utc()),
            link_target: None,
        })
    }

    /// Gives the directory `path` itself to `user` (see [`ContainerRuntime::own_directory`]).
    ///
    /// [`ContainerRuntime::own_directory`]: monza_domain::ContainerRuntime::own_directory
    pub(crate) async fn own_dir(
        &self,
        container_id: &str,
        path: &str,
        user: Option<&str>,
    ) -> Result<()> {
        let facts = self.facts(container_id).await?;
        if path.trim_matches('/').is_empty() || refuse_tmpfs(&facts, path).is_err() {
            return Ok(());
        }
        let owner = self.owner(container_id, &facts, user).await?;
        if owner == Owner::ROOT {
            return Ok(());
        }
        let stat = match self.path_stat(container_id, path).await {
            Ok(stat) if stat.mode & MODE_DIR != 0 => stat,
            Ok(_)
            | Err(Error::File {
                problem: FileProblem::NotFound,
                ..
            }) => return Ok(()),
            Err(e) => return Err(e),
        };
        let mut tar = TarEntries::default();
        tar.directory(path, permission_bits(stat.mode), owner)?;
        tar.end();
        let what = format!("giving {path} to the sandbox's user in container {container_id}");
        self.put_archive(container_id, Body::from(tar.into_bytes()))
            .await
            .map_err(|f| {
                path_refusal(&f, path).unwrap_or_else(|| f.into_domain(&self.settings.host, &what))
            })
    }

    /// Sends a tar to be unpacked at the container's root. `noOverwriteDirNonDir`: a
    /// directory where a file goes (or the reverse) is refused, not replaced (and everything
    /// in it lost).
    pub(crate) async fn put_archive(&self, container_id: &str, body: Body) -> Result<(), Failure> {
        let endpoint = format!(
            "/containers/{}/archive?path=%2F&noOverwriteDirNonDir=true",
            query_value(container_id)
        );
        bounded(
            self.settings.transfer_timeout,
            self.raw
                .send(Method::PUT, &endpoint, Some("application/x-tar"), body),
        )
        .await
        .map(drop)
    }

    /// The directories from `dir` up that do not exist, outermost first. A file on the way
    /// is `not_a_directory`.
    pub(crate) async fn missing_dirs(&self, container_id: &str, dir: &str) -> Result<Vec<String>> {
        let mut missing = Vec::new();
        let mut current = dir.trim_end_matches('/').to_owned();
        // Bounded by the path's depth: each turn drops a component.
        while !current.is_empty() {
            match self.path_stat(container_id, &current).await {
                Ok(stat) if stat.mode & (MODE_DIR | MODE_SYMLINK) != 0 => break,
                Ok(_) => {
                    return Err(Error::file(
                        FileProblem::NotADirectory,
                        format!("{current} is a file, not a directory"),
                    ));
                }
                // Only a path that is not there: a link loop on the way is also "not
                // found", and a directory entry would then try to replace the link.
                Err(Error::File {
                    problem: FileProblem::NotFound,
                    message,
                }) if message.ends_with(ABSENT) => {
                    let parent = current
                        .rsplit_once('/')
                        .map(|(parent, _)| parent.to_owned())
                        .unwrap_or_default();
                    missing.push(std::mem::replace(&mut current, parent));
                }
                Err(e) => return Err(e),
            }
        }
        missing.reverse();
        Ok(missing)
    }

    /// The numeric owner for `user` (the container's configured user when absent).
    pub(crate) async fn owner(
        &self,
        container_id: &str,
        facts: &ContainerFacts,
        user: Option<&str>,
    ) -> Result<Owner> {
        let text = user.unwrap_or(&facts.user);
        if let Some(known) = facts
            .owners
            .lock()
            .ok()
            .and_then(|owners| owners.get(text).copied())
        {
            return Ok(known);
        }
        let spec = UserSpec::parse(text);
        let passwd = match spec.needs_passwd() {
            true => self.id_file(container_id, "/etc/passwd").await?,
            false => None,
        };
        let group = match spec.needs_group() {
            true => self.id_file(container_id, "/etc/group").await?,
            false => None,
        };
        let owner = spec.resolve(passwd.as_deref(), group.as_deref())?;
        if let Ok(mut owners) = facts.owners.lock() {
            owners.insert(text.to_owned(), owner);
        }
        Ok(owner)
    }

    /// A small text file of the sandbox's (`/etc/passwd`), `None` when it is missing.
    async fn id_file(&self, container_id: &str, path: &str) -> Result<Option<String>> {
        let download = match self.download_file(container_id, path).await {
            Ok(download) => download,
            Err(Error::File {
                problem: FileProblem::NotFound,
                ..
            }) => return Ok(None),
            Err(e) => return Err(e),
        };
        if download.stat.size > MAX_ID_FILE as u64 {
            return Err(Error::conflict(format!(
                "the sandbox's {path} is over {MAX_ID_FILE} bytes; the file API reads no more \
                 to find the sandbox's user"
            )));
        }
        let mut text = Vec::with_capacity(usize::try_from(download.stat.size).unwrap_or(0));
        let mut content = download.content;
        while let Some(chunk) = content.next().await {
            text.extend_from_slice(&chunk?);
        }
        Ok(Some(String::from_utf8_lossy(&text).into_owned()))
    }

    /// The container's [`ContainerFacts`], inspected once.
    pub(crate) async fn facts(&self, container_id: &str) -> Result<Arc<ContainerFacts>> {
        if let Some(known) = self
            .facts
            .lock()
            .ok()
            .and_then(|cache| cache.get(container_id).cloned())
        {
            return Ok(known);
        }
        let container = self.docker.containers().get(container_id);
        let inspect = bounded(self.settings.request_timeout, container.inspect())
            .await
            .map_err(|f| {
                f.into_domain(
                    &self.settings.host,
                    format_args!("inspecting container {container_id}"),
                )
            })?;
        let mut mounts: Vec<String> = inspect
            .mounts
            .unwrap_or_default()
            .into_iter()
            .filter(|m| m.type_.as_deref() == Some("tmpfs"))
            .filter_map(|m| m.destination)
            .collect();
        if let Some(tmpfs) = inspect
            .host_config
            .as_ref()
            .and_then(|h| h.get("Tmpfs"))
            .and_then(|t| t.as_object())
        {
            mounts.extend(tmpfs.keys().cloned());
        }
        let tmpfs = mounts
            .into_iter()
            .map(|m| {
                let trimmed = m.trim_end_matches('/');
                if trimmed.is_empty() {
                    "/".to_owned()
                } else {
                    trimmed.to_owned()
                }
            })
            .collect();
        let user = inspect.config.and_then(|c| c.user).unwrap_or_default();
        let facts = Arc::new(ContainerFacts {
            tmpfs,
            user,
            owners: Mutex::default(),
        });
        if let Ok(mut cache) = self.facts.lock() {
            // Containers come and go: a bounded cache, emptied when full.
            if cache.len() >= 4096 {
                cache.clear();
            }
            cache.insert(container_id.to_owned(), facts.clone());
        }
        Ok(facts)
    }

    pub(crate) async fn stat_path(&self, container_id: &str, path: &str) -> Result<FileStat> {
        refuse_tmpfs(&*self.facts(container_id).await?, path)?;
        Ok(self.path_stat(container_id, path).await?.into_stat())
    }

    /// A request without a body (`HEAD`, `GET`) to `endpoint`, within the request timeout.
    pub(crate) async fn bodyless(
        &self,
        method: Method,
        endpoint: &str,
    ) -> Result<Response<Body>, Failure> {
        bounded(
            self.settings.request_timeout,
            self.raw.send(method, endpoint, None, Body::empty()),
        )
        .await
    }

    pub(crate) async fn path_stat(&self, container_id: &str, path: &str) -> Result<PathStat> {
        let what = format!("{path} in container {container_id}");
        let endpoint = format!(
            "/containers/{}/archive?path={}",
            query_value(container_id),
            query_value(path)
        );
        let response = match self.bodyless(Method::HEAD, &endpoint).await {
            Ok(response) => response,
            // A HEAD answer has no body: say what is missing ourselves.
            Err(Failure::Status { code: 404, .. }) => {
                return Err(Error::file(
                    FileProblem::NotFound,
                    format!("{path}{ABSENT}"),
                ));
            }
            // Any other refusal: ask again with GET, whose answer says why.
            Err(Failure::Status { .. }) => {
                let failure = match self.bodyless(Method::GET, &endpoint).await {
                    Err(f) => f,
                    Ok(_) => Failure::Other("HEAD failed where GET did not".into()),
                };
                return Err(path_refusal(&failure, path)
                    .unwrap_or_else(|| failure.into_domain(&self.settings.host, &what)));
            }
            Err(f) => return Err(f.into_domain(&self.settings.host, &what)),
        };
        let header = response
            .headers()
            .get("X-Docker-Container-Path-Stat")
            .ok_or_else(|| {
                Error::internal(format!(
                    "stat of {what}: no X-Docker-Container-Path-Stat header"
                ))
            })?;
        let json = base64::engine::general_purpose::STANDARD
            .decode(header.as_bytes())
            .map_err(|e| Error::internal(format!("stat of {what}: bad base64: {e}")))?;
        serde_json::from_slice(&json)
            .map_err(|e| Error::internal(format!("stat of {what}: bad JSON: {e}")))
    }

    pub(crate) async fn download_file(
        &self,
        container_id: &str,
        path: &str,
    ) -> Result<FileDownload> {
        let facts = self.facts(container_id).await?;
        refuse_tmpfs(&facts, path)?;
        if let Some(download) = self.read_by_agent(container_id, path).await {
            return Ok(download);
        }
        let mut target = path.to_owned();
        let mut stat = self.path_stat(container_id, &target).await?;
        let mut hops = 0;
        while stat.mode & MODE_SYMLINK != 0 && !stat.link_target.is_empty() {
            hops += 1;
            if hops > MAX_SYMLINKS {
                return Err(Error::file(
                    FileProblem::NotFound,
                    format!("{path}: too many levels of symbolic links"),
                ));
            }
            target = stat.link_target.clone();
            refuse_tmpfs(&facts, &target)?;
            stat = self.path_stat(container_id, &target).await?;
        }
        if stat.mode & MODE_DIR != 0 {
            return Err(Error::file(
                FileProblem::IsDirectory,
                format!("{path} is a directory, not a regular file"),
            ));
        }
        let what = format!("downloading {path} from container {container_id}");
        let endpoint = format!(
            "/containers/{}/archive?path={}",
            query_value(container_id),
            query_value(&target)
        );
        let response = self.bodyless(Method::GET, &endpoint).await.map_err(|f| {
            path_refusal(&f, path).unwrap_or_else(|| f.into_domain(&self.settings.host, &what))
        })?;
        let mut reader = TarReader::new(response.into_body(), self.settings.transfer_timeout);
        let size = reader.first_file().await.map_err(|e| match e {
            ReadError::Failure(f) => f.into_domain(&self.settings.host, &what),
            ReadError::Invalid(m) => Error::not_found(format!("{path}: {m}")),
            ReadError::Malformed(m) => Error::internal(format!("{what}: {m}")),
        })?;
        Ok(FileDownload {
            stat: FileStat {
                size,
                ..stat.into_stat()
            },
            content: reader.content(size, self.settings.host.clone()),
        })
    }
}

/// The largest file written or read whole through the agent's connection (one frame, in
/// memory); a larger one streams through the engine's archive endpoint.
pub(crate) const AGENT_FILE_MAX: u64 = 1 << 20;

impl DockerRuntime {
    /// Writes a small file through the agent, connected as the file's owner: one frame and
    /// a rename inside the sandbox instead of a tar through the engine. `Err(file)` (its
    /// content still whole) when the engine must do it: a larger file, no agent connected
    /// as that user, or any refusal, which the engine's path answers the same way whether
    /// or not an agent is connected (it writes as root, so a directory the user cannot
    /// write is no refusal there).
    async fn write_by_agent(
        &self,
        container_id: &str,
        target: &str,
        file: UploadFile,
    ) -> Result<std::result::Result<FileStat, UploadFile>> {
        if file.size > AGENT_FILE_MAX || self.agents.get(container_id).is_none() {
            return Ok(Err(file));
        }
        let UploadFile {
            name,
            size,
            content,
            options,
        } = file;
        let data = collect_exactly(content, size).await?.map_err(|got| {
            Error::invalid(if got > size {
                format!("upload content is longer than its announced size of {size} bytes")
            } else {
                format!("upload content ended after {got} of its announced {size} bytes")
            })
        })?;
        let request = WriteFileRequest {
            path: target.to_owned(),
            mode: options.mode,
            parents: options.create_parents,
        };
        let reply = self
            .agents
            .write_file(
                container_id,
                options.user.as_deref(),
                request,
                data.to_vec(),
                self.settings.request_timeout,
            )
            .await;
        match reply {
            Some(Ok(Ok(FsAnswer::Entry { entry }))) if entry.kind == FsKind::File => {
                Ok(Ok(FileStat {
                    name,
                    ..file_entry(entry).stat
                }))
            }
            other => {
                if let Some(Err(e)) = &other {
                    tracing::debug!(error = %e, "the agent did not write {target}; the engine will");
                }
                Ok(Err(UploadFile {
                    name,
                    size,
                    content: futures::stream::once(std::future::ready(Ok(data))).boxed(),
                    options,
                }))
            }
        }
    }

    /// A small file read whole through the connected agent; `None` when the engine must
    /// read it (a larger file, no agent connected, anything the agent could not read, as
    /// the sandbox's user, that the engine, as root, may).
    async fn read_by_agent(&self, container_id: &str, path: &str) -> Option<FileDownload> {
        let request = ReadFileRequest {
            path: path.to_owned(),
            max_bytes: AGENT_FILE_MAX,
        };
        let reply = self
            .agents
            .read_file(container_id, request, self.settings.request_timeout)
            .await?;
        match reply {
            Ok(Ok((content, data))) if content.complete && content.entry.kind == FsKind::File => {
                let stat = file_entry(content.entry).stat;
                let data = Bytes::from(data);
                Some(FileDownload {
                    stat,
                    content: futures::stream::once(std::future::ready(Ok(data))).boxed(),
                })
            }
            Err(e) => {
                tracing::debug!(error = %e, "the agent did not read {path}; the engine will");
                None
            }
            _ => None,
        }
    }
}

/// The client's mistake behind an engine refusal on the archive endpoint, if it is one: the
/// engine answers 500 for what the file system said (`open …: not a directory`, `file name
/// too long`, `too many links`, `device or resource busy`, …). The answer names the client's
/// path, never the engine's (its messages hold host paths under the storage driver).
pub(crate) fn path_refusal(failure: &Failure, path: &str) -> Option<Error> {
    let Failure::Status { code, message } = failure else {
        return None;
    };
    if !matches!(code, 400 | 403 | 500) {
        return None;
    }
    let message = message.to_ascii_lowercase();
    let says = |text: &str| message.contains(text);
    let file = Error::file;
    Some(if says("not a directory") {
        file(
            FileProblem::NotADirectory,
            format!("{path}: a component of the path is a file, not a directory"),
        )
    } else if says("file name too long") {
        file(
            FileProblem::InvalidPath,
            format!("{path}: a file name in the path is too long"),
        )
    } else if says("too many links") || says("too many levels of symbolic links") {
        file(
            FileProblem::NotFound,
            format!("{path}: too many levels of symbolic links"),
        )
    } else if says("cannot overwrite directory") || says("is a directory") {
        file(
            FileProblem::IsDirectory,
            format!("{path} is a directory; a file cannot replace it"),
        )
    } else if says("device or resource busy") {
        Error::invalid(format!(
            "{path} is a mount point inside the sandbox and cannot be replaced through the file \
             API"
        ))
    } else if says("read-only file system") || says("marked read-only") {
        file(
            FileProblem::PermissionDenied,
            format!("{path} is on a read-only file system"),
        )
    } else if says("permission denied") || says("operation not permitted") {
        file(
            FileProblem::PermissionDenied,
            format!("{path}: permission denied"),
        )
    } else if says("cannot overwrite") || says("file exists") {
        Error::conflict(format!(
            "{path}: a file or directory of another kind is in the way"
        ))
    } else if says("no such file or directory") {
        file(
            FileProblem::NotFound,
            format!(
                "{path}: a directory on the way does not exist (or is a link to a place the \
                 file API cannot reach)"
            ),
        )
    } else if says("invalid argument") {
        file(
            FileProblem::InvalidPath,
            format!("{path}: the file system refused the name"),
        )
    } else {
        return None;
    })
}

/// Refuses `path` when it is on one of the container's tmpfs mounts: the archive endpoint
/// works on the container's root file system and volumes, so a file written there would
/// land underneath the mount, invisible to the sandbox (and a read would see that layer).
pub(crate) fn refuse_tmpfs(facts: &ContainerFacts, path: &str) -> Result<()> {
    match facts
        .tmpfs
        .iter()
        .find(|m| monza_domain::paths::is_under(path, m))
    {
        Some(mount) => Err(Error::invalid(format!(
            "{path} is under {mount}, a tmpfs mount the file API cannot reach: use execute \
             to read or write it"
        ))),
        None => Ok(()),
    }
}

/// The permission bits of an uploaded file that did not exist.
const NEW_FILE_MODE: u32 = 0o644;

/// Permission bits of a directory the file API creates.
const DIR_MODE: u32 = 0o755;

/// Tar entries built in memory: directories, and the header of a file whose content streams
/// after them.
struct TarEntries {
    builder: tar::Builder<Vec<u8>>,
}

impl Default for TarEntries {
    fn default() -> Self {
        Self {
            builder: tar::Builder::new(Vec::with_capacity(2048)),
        }
    }
}

impl TarEntries {
    fn header(kind: tar::EntryType, size: u64, mode: u32, owner: Owner) -> tar::Header {
        let mut header = tar::Header::new_gnu();
        header.set_size(size);
        header.set_mode(mode);
        header.set_uid(owner.uid);
        header.set_gid(owner.gid);
        header.set_entry_type(kind);
        header.set_mtime(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        );
        header
    }

    /// A directory at the absolute `path`.
    fn directory(&mut self, path: &str, mode: u32, owner: Owner) -> Result<()> {
        let mut header = Self::header(tar::EntryType::Directory, 0, mode, owner);
        let name = format!("{}/", path.trim_matches('/'));
        self.builder
            .append_data(&mut header, &name, std::io::empty())
            .map_err(|e| Error::invalid(format!("cannot create directory {path}: {e}")))
    }

    /// The header of a regular file at the absolute `path` (a GNU long-name entry first
    /// when the path needs it); exactly `size` bytes of content must follow.
    fn file_header(&mut self, path: &str, size: u64, mode: u32, owner: Owner) -> Result<()> {
        let mut header = Self::header(tar::EntryType::Regular, size, mode, owner);
        self.builder
            .append_data(&mut header, path.trim_start_matches('/'), std::io::empty())
            .map_err(|e| Error::invalid(format!("cannot upload to {path}: {e}")))
    }

    /// The two zero blocks that end an archive without a streamed file.
    fn end(&mut self) {
        self.builder.get_mut().extend_from_slice(&[0u8; 1024]);
    }

    /// What was appended (`into_inner` would write the end-of-archive blocks as well).
    fn into_bytes(self) -> Bytes {
        Bytes::copy_from_slice(self.builder.get_ref())
    }
}

/// The tar bytes before a single file's content, owned by root (tests of the body).
#[cfg(test)]
fn tar_prefix(path: &str, size: u64, mode: u32) -> Result<Bytes> {
    let mut tar = TarEntries::default();
    tar.file_header(path, size, mode, Owner::ROOT)?;
    Ok(tar.into_bytes())
}

/// Go's `os.FileMode` permission and special bits as Unix mode bits.
fn permission_bits(mode: u32) -> u32 {
    let mut bits = mode & 0o777;
    if mode & MODE_SETUID != 0 {
        bits |= 0o4000;
    }
    if mode & MODE_SETGID != 0 {
        bits |= 0o2000;
    }
    if mode & MODE_STICKY != 0 {
        bits |= 0o1000;
    }
    bits
}

/// The kind of entry a Go `os.FileMode` describes.
fn kind_of(mode: u32) -> FileKind {
    if mode & MODE_DIR != 0 {
        FileKind::Directory
    } else if mode & MODE_SYMLINK != 0 {
        FileKind::Symlink
    } else if mode & MODE_TYPE != 0 {
        FileKind::Other
    } else {
        FileKind::File
    }
}

/// Padding after `size` bytes of content, then the two zero blocks ending the archive.
fn tar_trailer(size: u64) -> Bytes {
    let pad = usize::try_from((512 - size % 512) % 512).unwrap_or(0);
    Bytes::from(vec![0u8; pad + 1024])
}

/// The upload body: prefix, content checked against the announced size, trailer. A content
/// error, or a size mismatch, is put in `failure` and aborts the request.
fn tar_body(
    prefix: Bytes,
    size: u64,
    content: ByteStream,
    failure: Arc<Mutex<Option<Error>>>,
) -> impl Stream<Item = Result<Bytes, Error>> + Send + 'static {
    enum Phase {
        Prefix(Bytes),
        Content,
        Done,
    }
    let fail = move |e: Error| {
        if let Ok(mut slot) = failure.lock() {
            slot.get_or_insert(e.clone());
        }
        e
    };
    futures::stream::unfold(
        (Phase::Prefix(prefix), content, 0u64, fail),
        move |(phase, mut content, sent, fail)| async move {
            match phase {
                Phase::Prefix(prefix) => Some((Ok(prefix), (Phase::Content, content, sent, fail))),
                Phase::Content => match content.next().await {
                    Some(Ok(chunk)) => {
                        let sent = sent + chunk.len() as u64;
                        if sent > size {
                            let e = fail(Error::invalid(format!(
                                "upload content is longer than its announced size of {size} bytes"
                            )));
                            return Some((Err(e), (Phase::Done, content, sent, fail)));
                        }
                        Some((Ok(chunk), (Phase::Content, content, sent, fail)))
                    }
                    Some(Err(e)) => {
                        let e = fail(e);
                        Some((Err(e), (Phase::Done, content, sent, fail)))
                    }
                    None if sent != size => {
                        let e = fail(Error::invalid(format!(
                            "upload content ended after {sent} of its announced {size} bytes"
                        )));
                        Some((Err(e), (Phase::Done, content, sent, fail)))
                    }
                    None => Some((Ok(tar_trailer(size)), (Phase::Done, content, sent, fail))),
                },
                Phase::Done => None,
            }
        },
    )
}

#[derive(Debug)]
enum ReadError {
    /// The engine failed or went silent.
    Failure(Failure),
    /// The path is not a regular file.
    Invalid(String),
    /// The archive is not what the engine should send.
    Malformed(String),
}

/// Reads a tar from the engine incrementally.
struct TarReader {
    body: Body,
    buf: BytesMut,
    idle: Duration,
}

impl TarReader {
    fn new(body: Body, idle: Duration) -> Self {
        Self {
            body,
            buf: BytesMut::new(),
            idle,
        }
    }

    /// The next chunk of the body, or `None` at its end; silence longer than `idle` fails.
    async fn chunk(body: &mut Body, idle: Duration) -> Result<Option<Bytes>, Failure> {
        match bounded(idle, async { body.next().await.transpose() }).await {
            Ok(chunk) => Ok(chunk),
            Err(f) => Err(f),
        }
    }

    async fn fill(&mut self, n: usize) -> Result<(), ReadError> {
        while self.buf.len() < n {
            match Self::chunk(&mut self.body, self.idle)
                .await
                .map_err(ReadError::Failure)?
            {
                Some(chunk) => self.buf.extend_from_slice(&chunk),
                None => return Err(ReadError::Malformed("the archive ended early".into())),
            }
        }
        Ok(())
    }

    async fn skip(&mut self, mut n: u64) -> Result<(), ReadError> {
        while n > 0 {
            if self.buf.is_empty() {
                self.fill(1).await?;
            }
            let take = usize::try_from(n).unwrap_or(usize::MAX).min(self.buf.len());
            let _ = self.buf.split_to(take);
            n -= take as u64;
        }
        Ok(())
    }

    /// Reads headers up to the first regular file's and returns its size; its content is
    /// next in the stream. The headers are parsed by the `tar` crate (octal and base-256
    /// sizes, PAX records); only the buffering is ours, so the content streams.
    async fn first_file(&mut self) -> Result<u64, ReadError> {
        let mut pax_size = None;
        loop {
            self.fill(512).await?;
            let block = self.buf.split_to(512);
            if block.iter().all(|b| *b == 0) {
                return Err(ReadError::Malformed("the archive holds no file".into()));
            }
            let header = tar::Header::from_byte_slice(&block);
            let size = header
                .entry_size()
                .map_err(|e| ReadError::Malformed(format!("bad size in a tar header: {e}")))?;
            let padded = size.div_ceil(512) * 512;
            let kind = header.entry_type();
            if kind.is_file() || kind.is_contiguous() {
                return Ok(pax_size.unwrap_or(size));
            }
            if kind.is_pax_local_extensions() {
                if size > MAX_PAX {
                    return Err(ReadError::Malformed("PAX header too large".into()));
                }
                let len = usize::try_from(padded).unwrap_or(usize::MAX);
                self.fill(len).await?;
                let records = self.buf.split_to(len);
                let records = &records[..usize::try_from(size).unwrap_or(0)];
                pax_size = pax_number(records, "size");
            } else if kind.is_dir() {
                return Err(ReadError::Invalid("is a directory".into()));
            } else if kind.is_hard_link() || kind.is_symlink() {
                return Err(ReadError::Invalid("is a link, not a regular file".into()));
            } else if kind.is_character_special() || kind.is_block_special() || kind.is_fifo() {
                return Err(ReadError::Invalid("is not a regular file".into()));
            } else {
                // Global PAX headers, GNU long names and anything else: skipped.
                self.skip(padded).await?;
            }
        }
    }

    /// The next `size` bytes as a stream; the rest of the archive is not read.
    fn content(self, size: u64, host: String) -> ByteStream {
        let Self { body, buf, idle } = self;
        futures::stream::unfold((body, buf, size), move |(mut body, mut buf, remaining)| {
            let host = host.clone();
            async move {
                if remaining == 0 {
                    return None;
                }
                let want = usize::try_from(remaining).unwrap_or(usize::MAX);
                if !buf.is_empty() {
                    let take = want.min(buf.len());
                    let chunk = buf.split_to(take).freeze();
                    return Some((Ok(chunk), (body, buf, remaining - take as u64)));
                }
                match Self::chunk(&mut body, idle).await {
                    Ok(Some(mut chunk)) => {
                        chunk.truncate(want);
                        let left = remaining - chunk.len() as u64;
                        Some((Ok(chunk), (body, buf, left)))
                    }
                    Ok(None) => Some((
                        Err(Error::internal(format!(
                            "the archive ended {remaining} bytes before the file's end"
                        ))),
                        (body, buf, 0),
                    )),
                    Err(f) => Some((
                        Err(f.into_domain(&host, "downloading a file")),
                        (body, buf, 0),
                    )),
                }
            }
        })
        .boxed()
    }
}

/// The value of `key` in PAX records, as a number.
fn pax_number(records: &[u8], key: &str) -> Option<u64> {
    tar::PaxExtensions::new(records)
        .filter_map(Result::ok)
        .find(|ext| ext.key() == Ok(key))
        .and_then(|ext| ext.value().ok()?.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_refusals_of_a_path_become_the_clients_mistake_without_host_paths() {
        let merged = "/var/lib/docker/overlay2/b5/merged";
        let cases = [
            (
                "Error processing tar file(exit status 1): open /w/aaaa: file name too long",
                "invalid_path",
            ),
            (
                "Error processing tar file(exit status 1): open /w/reg/x: not a directory",
                "not_a_directory",
            ),
            (
                "Error processing tar file(exit status 1): unlinkat /etc/hosts: device or resource busy",
                "invalid_input",
            ),
            (
                "Error processing tar file(exit status 1): open /w/loop1/x: too many levels of symbolic links",
                "file_not_found",
            ),
            (
                "Error processing tar file(exit status 1): open /w/p1/x: no such file or directory",
                "file_not_found",
            ),
            (
                &format!("evalSymlinksInScope: too many links in {merged}/w/loop1") as &str,
                "file_not_found",
            ),
            (
                &format!("lstat {merged}/etc/hostname/x: not a directory") as &str,
                "not_a_directory",
            ),
            (
                "Error processing tar file(exit status 1): cannot overwrite directory \"/w/x\" with non-directory \"/w/x\"",
                "is_directory",
            ),
            (
                "Error processing tar file(exit status 1): open /w/x: permission denied",
                "permission_denied",
            ),
        ];
        for (message, code) in cases {
            let failure = Failure::Status {
                code: 500,
                message: message.to_owned(),
            };
            let error = path_refusal(&failure, "/w/x").unwrap_or_else(|| panic!("{message}"));
            assert_eq!(error.code(), code, "{message}");
            assert!(!error.to_string().contains("overlay2"), "{error}");
            assert!(error.to_string().contains("/w/x"), "{error}");
        }
        let unknown = Failure::Status {
            code: 500,
            message: "something else broke".into(),
        };
        assert!(path_refusal(&unknown, "/w/x").is_none());
        assert!(path_refusal(&Failure::Transport("refused".into()), "/w/x").is_none());
    }
    use std::io::Read;

    fn collect(stream: impl Stream<Item = Result<Bytes, Error>>) -> Vec<Result<Bytes, Error>> {
        futures::executor::block_on(stream.collect::<Vec<_>>())
    }

    fn content(chunks: Vec<&'static [u8]>) -> ByteStream {
        futures::stream::iter(chunks.into_iter().map(|c| Ok(Bytes::from_static(c)))).boxed()
    }

    #[test]
    fn upload_body_is_a_tar_the_tar_crate_reads_back_even_with_a_long_path() {
        let dir = "deep/".repeat(30);
        let path = format!("{dir}file.bin");
        let failure = Arc::new(Mutex::new(None));
        let parts = collect(tar_body(
            tar_prefix(&path, 5, NEW_FILE_MODE).unwrap(),
            5,
            content(vec![b"he", b"llo"]),
            failure.clone(),
        ));
        let bytes: Vec<u8> = parts
            .into_iter()
            .flat_map(|p| p.unwrap().to_vec())
            .collect();
        assert_eq!(bytes.len() % 512, 0);
        let mut archive = tar::Archive::new(bytes.as_slice());
        let mut entries = archive.entries().unwrap();
        let mut entry = entries.next().unwrap().unwrap();
        assert_eq!(entry.path().unwrap().to_str().unwrap(), path);
        let mut text = String::new();
        entry.read_to_string(&mut text).unwrap();
        assert_eq!(text, "hello");
        drop(entry);
        assert!(entries.next().is_none());
        assert!(failure.lock().unwrap().is_none());
    }

    #[test]
    fn upload_body_fails_on_a_size_mismatch() {
        for (chunks, size) in [(vec![&b"abc"[..]], 2u64), (vec![&b"a"[..]], 2)] {
            let failure = Arc::new(Mutex::new(None));
            let parts = collect(tar_body(
                tar_prefix("f", size, NEW_FILE_MODE).unwrap(),
                size,
                content(chunks),
                failure.clone(),
            ));
            assert!(parts.last().unwrap().is_err());
            assert!(
                matches!(failure.lock().unwrap().take(), Some(Error::InvalidInput(m)) if m.contains("announced"))
            );
        }
    }

    #[test]
    fn pax_size_records_are_found() {
        let records = b"26 mtime=1350244992.02340\n19 size=9000000000\n";
        assert_eq!(pax_number(records, "size"), Some(9_000_000_000));
        assert_eq!(pax_number(records, "uid"), None);
        assert_eq!(pax_number(b"garbage", "size"), None);
    }

    #[test]
    fn reader_skips_pax_and_long_names_and_yields_exact_content() {
        // A tar with a PAX header, a GNU long name and the file, sent in 7-byte chunks.
        let mut builder = tar::Builder::new(Vec::new());
        let mut pax = tar::Header::new_ustar();
        let records = b"16 size=0000011\n";
        pax.set_entry_type(tar::EntryType::XHeader);
        pax.set_size(records.len() as u64);
        builder.append_data(&mut pax, "pax", &records[..]).unwrap();
        let mut header = tar::Header::new_gnu();
        header.set_size(11);
        header.set_mode(0o644);
        builder
            .append_data(&mut header, "x".repeat(150), &b"hello world"[..])
            .unwrap();
        let tar = builder.into_inner().unwrap();
        let chunks: Vec<Result<Bytes, std::io::Error>> = tar
            .chunks(7)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        let body = Body::wrap_stream(futures::stream::iter(chunks));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let mut reader = TarReader::new(body, Duration::from_secs(5));
            let size = reader.first_file().await.unwrap();
            assert_eq!(size, 11);
            let parts: Vec<Bytes> = reader
                .content(size, "test".into())
                .map(|r| r.unwrap())
                .collect()
                .await;
            assert_eq!(parts.concat(), b"hello world");
        });
    }
}
