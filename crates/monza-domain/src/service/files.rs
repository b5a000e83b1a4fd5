//! File operations on a running sandbox beyond one file in or out: list, make a directory,
//! move, remove, read by lines, search, glob, edit. Each is activity of the sandbox and runs
//! as the sandbox's user (its template's `remoteUser`), so the kernel allows or refuses it
//! as it would the sandbox's own commands. Paths are checked here, limits applied here; the
//! runtime only carries them out.

use std::future::Future;
use std::sync::Arc;

use futures::StreamExt;

use bytes::Bytes;
use serde_json::json;

use super::{SandboxService, container_of, file_destination};
use crate::Access;
use crate::error::{Error, Result};
use crate::files::{
    ArchiveReport, DEFAULT_LINES, EditFile, FileEntry, FileLines, FileList, GlobFiles, GlobResult,
    ListFiles, SearchFiles, SearchResult, SpooledArchive,
};
use crate::paths;
use crate::ports::ContainerRuntime;
use crate::runtime::{ByteStream, FileStat, UploadFile, collect_exactly};
use crate::sandbox::{EventAction, NewEvent};
use crate::sandbox::{Sandbox, SandboxId};

/// Entries a list answers when the request does not say.
const DEFAULT_LIST_ENTRIES: u64 = 1000;
/// The longest search pattern or glob accepted, in bytes.
const MAX_PATTERN_BYTES: usize = 4096;

/// List a directory, as a client asks.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ListRequest {
    pub path: String,
    pub recursive: bool,
    /// At most this many entries (clamped to the server's maximum); 1000 (or the maximum,
    /// if lower) when absent.
    pub limit: Option<u64>,
}

/// Rename a path, as a client asks.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MoveRequest {
    pub from: String,
    pub to: String,
    /// Replace what is at `to` (never a directory by a file, or a file by a directory).
    pub overwrite: bool,
}

/// Read a text file by lines, as a client asks.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReadLinesRequest {
    pub path: String,
    /// The first line to read, 0-based.
    pub offset: u64,
    /// Lines to read; [`DEFAULT_LINES`] when absent.
    pub limit: Option<u64>,
}

/// Search files, as a client asks.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SearchRequest {
    /// A file or a directory; the workspace folder when absent.
    pub path: Option<String>,
    pub pattern: String,
    pub regex: bool,
    pub ignore_case: bool,
    pub glob: Option<String>,
    /// Clamped to the server's maximum, which is also the default.
    pub max_results: Option<u64>,
}

/// Find paths by glob, as a client asks.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GlobRequest {
    /// The workspace folder when absent.
    pub path: Option<String>,
    pub pattern: String,
    /// Clamped to the server's maximum, which is also the default.
    pub max_results: Option<u64>,
}

/// Replace text in a file, as a client asks.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EditRequest {
    pub path: String,
    pub old: String,
    pub new: String,
    pub replace_all: bool,
}

/// `asked`, clamped to `max` (as execute's limits are), or `default` (itself at most `max`)
/// when absent; zero is refused.
fn bounded(what: &str, asked: Option<u64>, default: u64, max: u64) -> Result<u64> {
    match asked {
        None => Ok(default.min(max)),
        Some(0) => Err(Error::invalid(format!("{what} must be at least 1"))),
        Some(n) => Ok(n.min(max)),
    }
}

/// A search pattern or glob: not empty, not huge, no NUL.
fn pattern(what: &str, text: &str) -> Result<()> {
    if text.is_empty() {
        return Err(Error::invalid(format!("{what} is empty")));
    }
    if text.len() > MAX_PATTERN_BYTES {
        return Err(Error::invalid(format!(
            "{what} is {} bytes; at most {MAX_PATTERN_BYTES} are accepted",
            text.len()
        )));
    }
    if text.contains('\0') {
        return Err(Error::invalid(format!("{what} contains a NUL byte")));
    }
    Ok(())
}

/// What became of one file of a batch: its path (as written, else as asked) and its stat,
/// or why it was not written.
pub type BatchWritten = (String, Result<FileStat>);

/// What became of one path of a batch read: the file and its bytes, or why there are none.
pub type BatchRead = (String, Result<(FileStat, Bytes)>);

impl SandboxService {
    /// Many files written into a running sandbox in one call, each as [`Self::write_file`]
    /// writes one, in order: every file gets its own answer, and one refused does not stop
    /// the others. Every path is checked before anything is written.
    #[tracing::instrument(skip_all, fields(sandbox_id = %id, files = files.len()), err(level = "info"))]
    pub async fn write_files(
        &self,
        access: &Access,
        id: SandboxId,
        files: Vec<(String, UploadFile)>,
    ) -> Result<Vec<BatchWritten>> {
        self.batch_of(files.len())?;
        let sandbox = self.running(access, id).await?;
        let checked: Vec<_> = files
            .into_iter()
            .map(|(asked, file)| {
                let checked = file_destination(&asked).and_then(|(dir, name)| {
                    let file = UploadFile { name, ..file };
                    let name = self.checked_upload(&file)?;
                    paths::upload_destination(&dir, &name)?;
                    Ok((paths::join(&dir, &name), dir, name, file))
                });
                (asked, checked)
            })
            .collect();
        let accepted = || checked.iter().filter_map(|(_, c)| c.as_ref().ok());
        let written: Vec<&String> = accepted().map(|(path, ..)| path).collect();
        let bytes = accepted()
            .map(|(.., file)| file.size)
            .fold(0u64, u64::saturating_add);
        let event = NewEvent::new(
            EventAction::Uploaded,
            json!({ "paths": written, "bytes": bytes }),
        );
        let sandbox = self.touch(&sandbox, Some(event)).await?;
        let mut answers = Vec::with_capacity(checked.len());
        for (asked, checked) in checked {
            answers.push(match checked {
                Err(e) => (asked, Err(e)),
                Ok((path, dir, name, file)) => {
                    let stat = self.upload_into(&sandbox, dir, name, file).await;
                    (path, stat)
                }
            });
        }
        Ok(answers)
    }

    /// Many regular files read from a running sandbox in one call, whole, in order: each
    /// path gets its content or its own error. Their bytes together are bounded
    /// ([`FileLimits::max_batch_bytes`]): a file past the bound is `too_large`, to be read
    /// alone.
    #[tracing::instrument(skip_all, fields(sandbox_id = %id, files = asked.len()), err(level = "info"))]
    pub async fn read_files(
        &self,
        access: &Access,
        id: SandboxId,
        asked: Vec<String>,
    ) -> Result<Vec<BatchRead>> {
        self.batch_of(asked.len())?;
        let sandbox = self.running(access, id).await?;
        let checked: Vec<_> = asked
            .into_iter()
            .map(|asked| {
                let checked = paths::sandbox_path("path", &asked)
                    .and_then(|path| paths::reachable("path", &path).map(|()| path));
                (asked, checked)
            })
            .collect();
        let reading: Vec<&String> = checked
            .iter()
            .filter_map(|(_, c)| c.as_ref().ok())
            .collect();
        let event = NewEvent::new(EventAction::Downloaded, json!({ "paths": reading }));
        let sandbox = self.touch(&sandbox, Some(event)).await?;
        let cid = container_of(&sandbox)?;
        let mut left = self.config.file_limits.max_batch_bytes;
        let mut answers = Vec::with_capacity(checked.len());
        for (asked, checked) in checked {
            let path = match checked {
                Ok(path) => path,
                Err(e) => {
                    answers.push((asked, Err(e)));
                    continue;
                }
            };
            let read = async {
                let download = self.runtime.download(cid, &path).await;
                let download = self.or_vanished(&sandbox, download).await?;
                if download.stat.size > left {
                    return Err(Error::TooLarge(format!(
                        "{path} is {} bytes, past what is left of this batch's {} bytes \
                         (MONZA_FILE_BATCH_MAX_BYTES); read it alone",
                        download.stat.size, self.config.file_limits.max_batch_bytes
                    )));
                }
                let size = download.stat.size;
                let bytes = collect_exactly(download.content, size)
                    .await?
                    .map_err(|got| {
                        Error::internal(format!(
                            "the file's content was {got} bytes where its size said {size}"
                        ))
                    })?;
                Ok((download.stat, bytes))
            };
            let read = read.await;
            if let Ok((stat, _)) = &read {
                left -= stat.size;
            }
            answers.push((path, read));
        }
        Ok(answers)
    }

    /// Refuses a batch with no entries or more than a request answers.
    fn batch_of(&self, n: usize) -> Result<()> {
        let max = self.config.file_limits.max_results;
        if n == 0 {
            return Err(Error::invalid("the batch names no file"));
        }
        if n as u64 > max {
            return Err(Error::invalid(format!(
                "the batch names {n} files; at most {max} are taken at once \
                 (MONZA_FILE_MAX_RESULTS)"
            )));
        }
        Ok(())
    }

    /// A running sandbox the caller may see, touched: every file operation is activity.
    async fn for_files(&self, access: &Access, id: SandboxId) -> Result<Sandbox> {
        let sandbox = self.running(access, id).await?;
        self.touch(&sandbox, None).await
    }

    /// Runs one file operation on a running sandbox the caller may see (touched first):
    /// `op` gets the runtime, the container and the sandbox's user; a failure caused by the
    /// container having vanished becomes the sandbox's conflict.
    async fn on_files<T, F, Fut>(&self, access: &Access, id: SandboxId, op: F) -> Result<T>
    where
        F: FnOnce(Arc<dyn ContainerRuntime>, String, Option<String>) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let sandbox = self.for_files(access, id).await?;
        let cid = container_of(&sandbox)?.to_owned();
        let done = op(self.runtime.clone(), cid, sandbox.remote_user.clone()).await;
        self.or_vanished(&sandbox, done).await
    }

    /// The entries of a directory in a running sandbox.
    #[tracing::instrument(skip_all, fields(sandbox_id = %id), err(level = "info"))]
    pub async fn list_files(
        &self,
        access: &Access,
        id: SandboxId,
        request: ListRequest,
    ) -> Result<FileList> {
        let limits = self.config.file_limits;
        let path = paths::sandbox_path("path", &request.path)?;
        let limit = bounded(
            "limit",
            request.limit,
            DEFAULT_LIST_ENTRIES,
            limits.max_list_entries,
        )?;
        let list = ListFiles {
            path,
            recursive: request.recursive,
            limit,
            walk: limits.walk,
        };
        self.on_files(access, id, async |runtime, cid, user| {
            runtime.list_files(&cid, user, &list).await
        })
        .await
    }

    /// Makes a directory in a running sandbox, owned by the sandbox's user.
    #[tracing::instrument(skip_all, fields(sandbox_id = %id), err(level = "info"))]
    pub async fn make_directory(
        &self,
        access: &Access,
        id: SandboxId,
        path: &str,
        parents: bool,
    ) -> Result<FileEntry> {
        let path = paths::changeable("path", path)?;
        self.on_files(access, id, async |runtime, cid, user| {
            runtime.make_directory(&cid, user, &path, parents).await
        })
        .await
    }

    /// Renames a file, link or directory in a running sandbox.
    #[tracing::instrument(skip_all, fields(sandbox_id = %id), err(level = "info"))]
    pub async fn move_path(
        &self,
        access: &Access,
        id: SandboxId,
        request: MoveRequest,
    ) -> Result<FileEntry> {
        let from = paths::changeable("from", &request.from)?;
        let to = paths::changeable("to", &request.to)?;
        // A path moved onto itself changes nothing (as rename(2) says); one moved into
        // itself is refused.
        if from != to && paths::is_under(&to, &from) {
            return Err(Error::invalid(format!(
                "cannot move {from:?} into itself ({to:?})"
            )));
        }
        self.on_files(access, id, async |runtime, cid, user| {
            runtime
                .move_path(&cid, user, &from, &to, request.overwrite)
                .await
        })
        .await
    }

    /// Removes a file, link, empty directory or (with `recursive`) a tree from a running
    /// sandbox; answers how many entries went.
    #[tracing::instrument(skip_all, fields(sandbox_id = %id), err(level = "info"))]
    pub async fn remove_path(
        &self,
        access: &Access,
        id: SandboxId,
        path: &str,
        recursive: bool,
    ) -> Result<u64> {
        let path = paths::changeable("path", path)?;
        self.on_files(access, id, async |runtime, cid, user| {
            runtime.remove_path(&cid, user, &path, recursive).await
        })
        .await
    }

    /// Lines of a text file in a running sandbox.
    #[tracing::instrument(skip_all, fields(sandbox_id = %id), err(level = "info"))]
    pub async fn read_lines(
        &self,
        access: &Access,
        id: SandboxId,
        request: ReadLinesRequest,
    ) -> Result<FileLines> {
        let path = paths::sandbox_path("path", &request.path)?;
        let limit = bounded(
            "limit",
            request.limit,
            DEFAULT_LINES,
            self.config.file_limits.max_lines,
        )?;
        self.on_files(access, id, async |runtime, cid, user| {
            runtime
                .read_lines(&cid, user, &path, request.offset, limit)
                .await
        })
        .await
    }

    /// The lines of files in a running sandbox that match a pattern.
    #[tracing::instrument(skip_all, fields(sandbox_id = %id), err(level = "info"))]
    pub async fn search_files(
        &self,
        access: &Access,
        id: SandboxId,
        request: SearchRequest,
    ) -> Result<SearchResult> {
        let limits = self.config.file_limits;
        pattern("pattern", &request.pattern)?;
        if let Some(glob) = &request.glob {
            pattern("glob", glob)?;
        }
        let max_results = bounded(
            "max_results",
            request.max_results,
            limits.max_results,
            limits.max_results,
        )?;
        let path = request
            .path
            .as_deref()
            .map(|path| paths::sandbox_path("path", path))
            .transpose()?;
        let sandbox = self.for_files(access, id).await?;
        let search = SearchFiles {
            path: path.unwrap_or_else(|| sandbox.workspace_mount.clone()),
            pattern: request.pattern,
            regex: request.regex,
            ignore_case: request.ignore_case,
            glob: request.glob,
            max_results,
            walk: limits.walk,
        };
        let found = self
            .runtime
            .search_files(
                container_of(&sandbox)?,
                sandbox.remote_user.clone(),
                &search,
            )
            .await;
        self.or_vanished(&sandbox, found).await
    }

    /// The paths below a directory in a running sandbox that match a glob.
    #[tracing::instrument(skip_all, fields(sandbox_id = %id), err(level = "info"))]
    pub async fn glob_files(
        &self,
        access: &Access,
        id: SandboxId,
        request: GlobRequest,
    ) -> Result<GlobResult> {
        let limits = self.config.file_limits;
        pattern("pattern", &request.pattern)?;
        if request.pattern.starts_with('/') {
            return Err(Error::invalid(
                "pattern is relative to path; it must not start with /",
            ));
        }
        let max_results = bounded(
            "max_results",
            request.max_results,
            limits.max_results,
            limits.max_results,
        )?;
        let path = request
            .path
            .as_deref()
            .map(|path| paths::sandbox_path("path", path))
            .transpose()?;
        let sandbox = self.for_files(access, id).await?;
        let glob = GlobFiles {
            path: path.unwrap_or_else(|| sandbox.workspace_mount.clone()),
            pattern: request.pattern,
            max_results,
            walk: limits.walk,
        };
        let found = self
            .runtime
            .glob_files(container_of(&sandbox)?, sandbox.remote_user.clone(), &glob)
            .await;
        self.or_vanished(&sandbox, found).await
    }

    /// Unpacks a tar archive into a directory of a running sandbox (created when missing),
    /// everything owned by the sandbox's user; a refused archive writes nothing.
    #[tracing::instrument(skip_all, fields(sandbox_id = %id), err(level = "info"))]
    pub async fn put_tree(
        &self,
        access: &Access,
        id: SandboxId,
        dir: &str,
        archive: SpooledArchive,
    ) -> Result<ArchiveReport> {
        let dir = paths::changeable("path", dir)?;
        if archive.size > self.config.max_archive_bytes {
            return Err(Error::TooLarge(format!(
                "the archive is {} bytes; archives are limited to {} bytes \
                 (MONZA_MAX_ARCHIVE_BYTES)",
                archive.size, self.config.max_archive_bytes
            )));
        }
        let max_entries = self.config.file_limits.walk.max_entries;
        self.on_files(access, id, async move |runtime, cid, user| {
            runtime
                .put_tree(&cid, &dir, user, archive, max_entries)
                .await
        })
        .await
    }

    /// The contents of a directory of a running sandbox as a tar stream, cut with an error
    /// past [`crate::ServiceConfig::max_archive_bytes`] (a bound on what one request may pull
    /// out, whatever the directory holds).
    #[tracing::instrument(skip_all, fields(sandbox_id = %id), err(level = "info"))]
    pub async fn get_tree(&self, access: &Access, id: SandboxId, dir: &str) -> Result<ByteStream> {
        let dir = paths::sandbox_path("path", dir)?;
        paths::reachable("path", &dir)?;
        let sandbox = self.for_files(access, id).await?;
        let tree = self.runtime.get_tree(container_of(&sandbox)?, &dir).await;
        let tree = self.or_vanished(&sandbox, tree).await?;
        let limit = self.config.max_archive_bytes;
        Ok(tree
            .scan((0u64, false), move |(sent, ended), chunk| {
                if *ended {
                    return futures::future::ready(None);
                }
                let item = chunk.and_then(|chunk| {
                    *sent = sent.saturating_add(chunk.len() as u64);
                    if *sent > limit {
                        Err(Error::TooLarge(format!(
                            "{dir} holds more than {limit} bytes of archive \
                             (MONZA_MAX_ARCHIVE_BYTES); the stream was cut"
                        )))
                    } else {
                        Ok(chunk)
                    }
                });
                *ended = item.is_err();
                futures::future::ready(Some(item))
            })
            .boxed())
    }

    /// Replaces text in a file of a running sandbox, atomically; answers how many times.
    #[tracing::instrument(skip_all, fields(sandbox_id = %id), err(level = "info"))]
    pub async fn edit_file(
        &self,
        access: &Access,
        id: SandboxId,
        request: EditRequest,
    ) -> Result<u64> {
        // An edit changes a file's content in place: `/etc/passwd` may be edited, though not
        // moved or removed.
        let path = paths::sandbox_path("path", &request.path)?;
        paths::reachable("path", &path)?;
        if request.old.is_empty() {
            return Err(Error::invalid("old_string is empty: say what to replace"));
        }
        let edit = EditFile {
            path,
            old: request.old,
            new: request.new,
            replace_all: request.replace_all,
        };
        self.on_files(access, id, async |runtime, cid, user| {
            runtime.edit_file(&cid, user, &edit).await
        })
        .await
    }
}
