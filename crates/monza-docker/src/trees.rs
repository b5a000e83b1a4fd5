//! Whole trees in and out of a sandbox as tar streams.
//!
//! In: the client's archive (plain or gzip) arrives spooled to a file, so every entry is
//! checked before anything is written: names relative and without `..`, only files,
//! directories, symlinks and hard links to earlier entries, nothing written through a
//! symlink (one of the archive's own, or one already in the sandbox under the target
//! directory), at most the walk's entry bound. Then it is rewritten as the engine's upload
//! tar (entries under the target directory, owned by the sandbox's user, setuid and setgid
//! bits dropped) and streamed to the archive endpoint with `noOverwriteDirNonDir`. Out: the
//! engine's tar of the directory's contents, streamed as it comes.

use std::collections::{BTreeSet, HashSet};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Component, Path};

use bytes::Bytes;
use futures::StreamExt;
use hyper::{Body, Method};
use monza_domain::{ArchiveReport, ByteStream, Error, FileProblem, Result, SpooledArchive, paths};
use tokio::sync::mpsc;

use crate::engine::query_value;
use crate::owner::Owner;
use crate::runtime::DockerRuntime;

/// Directories of an archive looked up in the sandbox before it is written, at most.
const MAX_CHECKED_DIRS: usize = 10_000;
/// Chunks of the rewritten tar in flight to the engine.
const CHUNKS: usize = 8;

/// An archive's entry, checked.
struct Checked {
    /// Relative, normalised (no `.`, no trailing `/`).
    path: String,
    kind: tar::EntryType,
}

/// The archive's entries, checked, and what they add up to.
struct Plan {
    entries: Vec<Checked>,
    report: ArchiveReport,
    /// Every directory an entry lies in (relative), parents before children.
    parents: BTreeSet<String>,
}

/// The archive's bytes: gunzipped when they start with gzip's magic.
fn reader(file: &mut std::fs::File) -> std::io::Result<Box<dyn Read + '_>> {
    file.seek(SeekFrom::Start(0))?;
    let mut buffered = BufReader::new(file);
    let gzip = buffered.fill_buf()?.starts_with(&[0x1f, 0x8b]);
    Ok(if gzip {
        Box::new(flate2::bufread::MultiGzDecoder::new(buffered))
    } else {
        Box::new(buffered)
    })
}

fn bad_entry(index: usize, name: &str, why: &str) -> Error {
    Error::file(
        FileProblem::InvalidPath,
        format!("archive entry {index} ({name:?}) {why}; nothing was written"),
    )
}

/// `name` as a relative path of normal components; `None` for an absolute one or one with
/// `..` (`.` components are dropped).
fn relative(name: &Path) -> Option<String> {
    let mut parts = Vec::new();
    for component in name.components() {
        match component {
            Component::Normal(part) => parts.push(part.to_str()?.to_owned()),
            Component::CurDir => {}
            Component::RootDir | Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    Some(parts.join("/"))
}

/// Reads every entry and checks it (see the module docs); `max_entries` bounds them.
fn plan(archive: &mut std::fs::File, max_entries: u64) -> Result<Plan> {
    let io = |e: std::io::Error| Error::invalid(format!("the archive cannot be read: {e}"));
    let mut tar = tar::Archive::new(reader(archive).map_err(io)?);
    let mut entries: Vec<Checked> = Vec::new();
    let mut report = ArchiveReport::default();
    let mut links: HashSet<String> = HashSet::new();
    let mut seen: HashSet<String> = HashSet::new();
    let mut parents = BTreeSet::new();
    for (index, entry) in tar.entries().map_err(io)?.enumerate() {
        let entry = entry.map_err(io)?;
        if index as u64 >= max_entries {
            return Err(Error::TooLarge(format!(
                "the archive has more than {max_entries} entries (MONZA_FILE_WALK_MAX_ENTRIES)"
            )));
        }
        let raw = entry.path().map_err(io)?.into_owned();
        let shown = raw.to_string_lossy().into_owned();
        let Some(path) = relative(&raw) else {
            return Err(bad_entry(
                index,
                &shown,
                "is absolute or has a `..` component",
            ));
        };
        let kind = entry.header().entry_type();
        if path.is_empty() {
            // `./`: the target directory itself.
            if kind.is_dir() {
                continue;
            }
            return Err(bad_entry(
                index,
                &shown,
                "names the target directory itself",
            ));
        }
        for (at, _) in path.match_indices('/') {
            let parent = &path[..at];
            if links.contains(parent) {
                return Err(bad_entry(
                    index,
                    &shown,
                    &format!("would be written through the archive's symlink {parent:?}"),
                ));
            }
            parents.insert(parent.to_owned());
        }
        match kind {
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                report.files += 1;
                report.bytes += entry.header().size().map_err(io)?;
            }
            tar::EntryType::Directory => report.directories += 1,
            tar::EntryType::Symlink => {
                let target = entry.link_name().map_err(io)?.unwrap_or_default();
                if target.as_os_str().is_empty() || target.to_str().is_none() {
                    return Err(bad_entry(
                        index,
                        &shown,
                        "is a symlink without a readable target",
                    ));
                }
                links.insert(path.clone());
                report.links += 1;
            }
            tar::EntryType::Link => {
                let target = entry.link_name().map_err(io)?.unwrap_or_default();
                match relative(&target) {
                    Some(target) if seen.contains(&target) && !links.contains(&target) => {}
                    _ => {
                        return Err(bad_entry(
                            index,
                            &shown,
                            "is a hard link to something that is not an earlier file of the \
                             archive",
                        ));
                    }
                }
                report.links += 1;
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                return Err(Error::invalid(format!(
                    "archive entry {index} ({shown:?}) is a device or a pipe; an archive may \
                     hold files, directories and links only; nothing was written"
                )));
            }
            other => {
                return Err(Error::invalid(format!(
                    "archive entry {index} ({shown:?}) is of a kind this server does not \
                     unpack ({other:?}); nothing was written"
                )));
            }
        }
        if links.contains(&path) && kind != tar::EntryType::Symlink {
            return Err(bad_entry(
                index,
                &shown,
                "replaces one of the archive's symlinks",
            ));
        }
        seen.insert(path.clone());
        entries.push(Checked { path, kind });
    }
    Ok(Plan {
        entries,
        report,
        parents,
    })
}

/// A `Write` that hands what is written to an async receiver in chunks.
struct ChannelWriter {
    tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
    buffer: Vec<u8>,
}

const CHUNK: usize = 256 * 1024;

impl ChannelWriter {
    fn flush_chunk(&mut self) -> std::io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(
            &mut self.buffer,
            Vec::with_capacity(CHUNK),
        ));
        self.tx.blocking_send(Ok(chunk)).map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the engine stopped reading")
        })
    }
}

impl std::io::Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buffer.extend_from_slice(data);
        if self.buffer.len() >= CHUNK {
            self.flush_chunk()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.flush_chunk()
    }
}

/// Writes the engine's upload tar: `missing` directories first, then every checked entry
/// under `dir` (relative to the container's root), owned by `owner`.
fn rewrite(
    archive: &mut std::fs::File,
    plan: &Plan,
    dir: &str,
    missing: &[String],
    owner: Owner,
    out: ChannelWriter,
) -> std::io::Result<()> {
    let base = dir.trim_matches('/');
    let under = |path: &str| {
        if base.is_empty() {
            path.to_owned()
        } else {
            format!("{base}/{path}")
        }
    };
    let mut builder = tar::Builder::new(out);
    builder.mode(tar::HeaderMode::Complete);
    for missing in missing {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Directory);
        header.set_mode(0o755);
        header.set_uid(owner.uid);
        header.set_gid(owner.gid);
        header.set_size(0);
        header.set_mtime(0);
        builder.append_data(
            &mut header,
            format!("{}/", missing.trim_matches('/')),
            std::io::empty(),
        )?;
    }
    let mut tar = tar::Archive::new(reader(archive)?);
    let mut checked = plan.entries.iter();
    for entry in tar.entries()? {
        let mut entry = entry?;
        let raw = entry.path()?.into_owned();
        let Some(path) = relative(&raw) else {
            return Err(std::io::Error::other(
                "the archive changed while it was unpacked",
            ));
        };
        if path.is_empty() {
            continue;
        }
        let Some(expected) = checked.next() else {
            return Err(std::io::Error::other(
                "the archive changed while it was unpacked",
            ));
        };
        if expected.path != path || expected.kind != entry.header().entry_type() {
            return Err(std::io::Error::other(
                "the archive changed while it was unpacked",
            ));
        }
        let source = entry.header().clone();
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(expected.kind);
        // Data, not privileges: no setuid or setgid bit survives.
        header.set_mode(source.mode()? & 0o1777);
        header.set_uid(owner.uid);
        header.set_gid(owner.gid);
        header.set_mtime(source.mtime().unwrap_or(0));
        let target = under(&path);
        match expected.kind {
            tar::EntryType::Symlink => {
                let link = entry.link_name()?.unwrap_or_default().into_owned();
                header.set_size(0);
                builder.append_link(&mut header, &target, link)?;
            }
            tar::EntryType::Link => {
                let link = relative(&entry.link_name()?.unwrap_or_default())
                    .ok_or_else(|| std::io::Error::other("a hard link changed"))?;
                header.set_size(0);
                builder.append_link(&mut header, &target, under(&link))?;
            }
            tar::EntryType::Directory => {
                header.set_size(0);
                builder.append_data(&mut header, format!("{target}/"), std::io::empty())?;
            }
            _ => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_size(source.size()?);
                builder.append_data(&mut header, &target, &mut entry)?;
            }
        }
    }
    builder.into_inner()?.flush_chunk()
}

impl DockerRuntime {
    /// Unpacks a checked archive into `dir` (see the module docs).
    pub(crate) async fn unpack_tree(
        &self,
        container_id: &str,
        dir: &str,
        user: Option<&str>,
        archive: SpooledArchive,
        max_entries: u64,
    ) -> Result<ArchiveReport> {
        let what = format!("unpacking an archive into {dir} in container {container_id}");
        let facts = self.facts(container_id).await?;
        crate::files::refuse_tmpfs(&facts, dir)?;
        let owner = self.owner(container_id, &facts, user).await?;
        let mut file = archive.file;
        let (plan, mut file) = tokio::task::spawn_blocking(move || {
            let plan = plan(&mut file, max_entries);
            (plan, file)
        })
        .await
        .map_err(|e| Error::internal(format!("checking an archive: {e}")))?;
        let plan = plan?;
        // The target directory: created (with its missing parents) when absent.
        let missing = match self.path_stat(container_id, dir).await {
            Ok(stat) if stat.is_dir() => Vec::new(),
            Ok(stat) if stat.is_symlink() => {
                return Err(Error::file(
                    FileProblem::InvalidPath,
                    format!(
                        "{dir} is a symbolic link; unpack into the directory it points to ({})",
                        stat.link_target
                    ),
                ));
            }
            Ok(_) => {
                return Err(Error::file(
                    FileProblem::NotADirectory,
                    format!("{dir} is a file, not a directory"),
                ));
            }
            Err(Error::File {
                problem: FileProblem::NotFound,
                ..
            }) => self.missing_dirs(container_id, dir).await?,
            Err(e) => return Err(e),
        };
        // A directory already in the sandbox that is a symlink (or a file) where the
        // archive puts entries: refused, not written through. Parents come before their
        // children, so once one is missing, so is everything below it.
        if missing.is_empty() {
            if plan.parents.len() > MAX_CHECKED_DIRS {
                return Err(Error::TooLarge(format!(
                    "the archive puts entries in more than {MAX_CHECKED_DIRS} directories"
                )));
            }
            let mut absent: Vec<&str> = Vec::new();
            for parent in &plan.parents {
                if absent.iter().any(|gone| paths::is_under(parent, gone)) {
                    continue;
                }
                let path = paths::join(dir, parent);
                match self.path_stat(container_id, &path).await {
                    Ok(stat) if stat.is_dir() => {}
                    Ok(stat) if stat.is_symlink() => {
                        return Err(Error::file(
                            FileProblem::InvalidPath,
                            format!(
                                "{path} is a symbolic link in the sandbox; an archive is never \
                                 unpacked through one; nothing was written"
                            ),
                        ));
                    }
                    Ok(_) => {
                        return Err(Error::file(
                            FileProblem::NotADirectory,
                            format!("{path} is a file, not a directory; nothing was written"),
                        ));
                    }
                    Err(Error::File {
                        problem: FileProblem::NotFound,
                        ..
                    }) => absent.push(parent),
                    Err(e) => return Err(e),
                }
            }
        }
        let (tx, mut rx) = mpsc::channel(CHUNKS);
        let target = dir.to_owned();
        let writer = tokio::task::spawn_blocking(move || {
            let out = ChannelWriter {
                tx: tx.clone(),
                buffer: Vec::with_capacity(CHUNK),
            };
            if let Err(e) = rewrite(&mut file, &plan, &target, &missing, owner, out) {
                let _ = tx.blocking_send(Err(e));
            }
            plan.report
        });
        let body = Body::wrap_stream(futures::stream::poll_fn(move |cx| rx.poll_recv(cx)));
        let sent = self.put_archive(container_id, body).await;
        let report = writer
            .await
            .map_err(|e| Error::internal(format!("rewriting an archive: {e}")))?;
        sent.map_err(|f| {
            crate::files::path_refusal(&f, dir)
                .unwrap_or_else(|| f.into_domain(&self.settings.host, &what))
        })?;
        Ok(report)
    }

    /// The directory `dir`'s contents as the engine's tar stream (entries `./…`).
    pub(crate) async fn pack_tree(&self, container_id: &str, dir: &str) -> Result<ByteStream> {
        let facts = self.facts(container_id).await?;
        crate::files::refuse_tmpfs(&facts, dir)?;
        let stat = self.path_stat(container_id, dir).await?;
        if !stat.is_dir() {
            return Err(Error::file(
                FileProblem::NotADirectory,
                format!("{dir} is not a directory (a symbolic link is not followed)"),
            ));
        }
        let what = format!("archiving {dir} in container {container_id}");
        let source = format!("{}/.", dir.trim_end_matches('/'));
        let endpoint = format!(
            "/containers/{}/archive?path={}",
            query_value(container_id),
            query_value(&source)
        );
        let response = self.bodyless(Method::GET, &endpoint).await.map_err(|f| {
            crate::files::path_refusal(&f, dir)
                .unwrap_or_else(|| f.into_domain(&self.settings.host, &what))
        })?;
        let host = self.settings.host.clone();
        Ok(response
            .into_body()
            .map(move |chunk| {
                chunk.map_err(|e| Error::unavailable("docker", format!("{what} at {host}: {e}")))
            })
            .boxed())
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn archive(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> std::fs::File {
        let mut builder = tar::Builder::new(Vec::new());
        build(&mut builder);
        let bytes = builder.into_inner().unwrap();
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(&bytes).unwrap();
        file
    }

    fn header(kind: tar::EntryType, size: u64) -> tar::Header {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(kind);
        header.set_size(size);
        header.set_mode(0o644);
        header
    }

    /// An entry whose name is written raw, as a hostile archive would (the builder refuses
    /// `..` and absolute names).
    fn raw(builder: &mut tar::Builder<Vec<u8>>, name: &str, kind: tar::EntryType, link: &str) {
        let mut header = header(kind, 0);
        header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        header.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
        header.set_cksum();
        builder.append(&header, std::io::empty()).unwrap();
    }

    fn refusal(file: &mut std::fs::File) -> String {
        match plan(file, 1000) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("the archive was accepted"),
        }
    }

    #[test]
    fn a_tree_with_links_and_empty_directories_is_counted() {
        let mut file = archive(|b| {
            b.append_data(
                &mut header(tar::EntryType::Directory, 0),
                "./",
                std::io::empty(),
            )
            .unwrap();
            b.append_data(
                &mut header(tar::EntryType::Directory, 0),
                "empty/",
                std::io::empty(),
            )
            .unwrap();
            b.append_data(
                &mut header(tar::EntryType::Regular, 3),
                "src/a.txt",
                &b"abc"[..],
            )
            .unwrap();
            b.append_link(&mut header(tar::EntryType::Symlink, 0), "up", "../../etc")
                .unwrap();
            b.append_link(
                &mut header(tar::EntryType::Link, 0),
                "src/b.txt",
                "src/a.txt",
            )
            .unwrap();
        });
        let plan = plan(&mut file, 1000).unwrap();
        assert_eq!(
            (
                plan.report.files,
                plan.report.directories,
                plan.report.links,
                plan.report.bytes
            ),
            (1, 1, 2, 3)
        );
        assert_eq!(plan.parents.into_iter().collect::<Vec<_>>(), ["src"]);
    }

    #[test]
    fn hostile_entries_are_refused() {
        for (name, kind, link, says) in [
            ("../x", tar::EntryType::Regular, "", "`..`"),
            ("/etc/x", tar::EntryType::Regular, "", "absolute"),
            ("a/../../x", tar::EntryType::Regular, "", "`..`"),
            ("dev", tar::EntryType::Char, "", "device"),
            ("fifo", tar::EntryType::Fifo, "", "pipe"),
            ("h", tar::EntryType::Link, "../../etc/passwd", "hard link"),
            ("h", tar::EntryType::Link, "missing", "hard link"),
        ] {
            let mut file = archive(|b| raw(b, name, kind, link));
            let message = refusal(&mut file);
            assert!(message.contains(says), "{name}: {message}");
        }
        // Through the archive's own symlink.
        let mut file = archive(|b| {
            raw(b, "l", tar::EntryType::Symlink, "/etc");
            raw(b, "l/passwd", tar::EntryType::Regular, "");
        });
        assert!(refusal(&mut file).contains("symlink \"l\""));
        let mut file = archive(|b| {
            b.append_data(
                &mut header(tar::EntryType::Regular, 0),
                "a",
                std::io::empty(),
            )
            .unwrap();
            b.append_data(
                &mut header(tar::EntryType::Regular, 0),
                "b",
                std::io::empty(),
            )
            .unwrap();
        });
        assert!(matches!(plan(&mut file, 1), Err(Error::TooLarge(_))));
    }
}
