//! File operations inside the sandbox ([`FsRequest`]), done with the standard library as the
//! agent's user, so they need nothing from the image and the kernel checks permissions the
//! way it does for the sandbox's own commands.
//!
//! Every walk is bounded (entries visited, time, results, bytes of answer) and never follows
//! a symlink; what a bound cut short says `truncated`.

use std::fs::{self, File, Metadata, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use globset::{GlobBuilder, GlobMatcher};
use monza_agent_protocol::{
    ErrorCode, ErrorReply, FileContent, FsAnswer, FsEntry, FsKind, FsMatch, FsRequest,
    MAX_FRAME_LEN, ReadFileRequest, WalkBudget, WriteFileRequest,
};
use regex::bytes::{Regex, RegexBuilder};

/// Bytes of paths and text one answer carries at most, well inside a frame.
const ANSWER_BYTES: usize = MAX_FRAME_LEN / 2;
/// Bytes of one search hit's line that are kept (the rest of the line is cut).
const MATCH_LINE_BYTES: usize = 4096;
/// Bytes of a file looked at to decide whether it is binary, as grep does.
const BINARY_PROBE: usize = 8192;
/// The largest file an edit reads whole.
const EDIT_MAX_BYTES: u64 = 64 * 1024 * 1024;

type Outcome<T> = Result<T, ErrorReply>;

/// Does one file operation.
pub fn run(request: FsRequest) -> Outcome<FsAnswer> {
    match request {
        FsRequest::Stat { path } => {
            let path = PathBuf::from(path);
            let meta = fs::symlink_metadata(&path).map_err(|e| os(&e, "cannot stat", &path))?;
            Ok(FsAnswer::Entry {
                entry: entry(&path, &meta),
            })
        }
        FsRequest::List {
            path,
            recursive,
            limit,
            budget,
        } => list(Path::new(&path), recursive, limit, budget),
        FsRequest::Mkdir { path, parents } => mkdir(Path::new(&path), parents),
        FsRequest::Move {
            from,
            to,
            overwrite,
        } => rename(Path::new(&from), Path::new(&to), overwrite),
        FsRequest::Remove { path, recursive } => remove(Path::new(&path), recursive),
        FsRequest::ReadLines {
            path,
            offset,
            limit,
            max_bytes,
        } => read_lines(Path::new(&path), offset, limit, max_bytes),
        FsRequest::Search {
            path,
            pattern,
            regex,
            ignore_case,
            glob,
            max_results,
            budget,
        } => {
            let pattern = if regex {
                pattern
            } else {
                regex::escape(&pattern)
            };
            let matcher = RegexBuilder::new(&pattern)
                .case_insensitive(ignore_case)
                .build()
                .map_err(|e| {
                    bad(format!(
                        "the pattern is not a valid regular expression: {e}"
                    ))
                })?;
            let filter = glob.as_deref().map(name_or_path_glob).transpose()?;
            search(
                Path::new(&path),
                &matcher,
                filter.as_ref(),
                max_results,
                budget,
            )
        }
        FsRequest::Glob {
            path,
            pattern,
            max_results,
            budget,
        } => glob(Path::new(&path), &path_glob(&pattern)?, max_results, budget),
        FsRequest::Edit {
            path,
            old,
            new,
            replace_all,
        } => edit(
            Path::new(&path),
            old.as_bytes(),
            new.as_bytes(),
            replace_all,
        ),
    }
}

/// Creates or replaces the regular file `request.path` with `data` ([`WriteFileRequest`]):
/// a new file is written next to it and renamed over it, so a reader sees the old bytes or
/// the new ones and a failure leaves the old file as it was. A directory there is `EISDIR`,
/// never replaced.
pub fn write_file(request: &WriteFileRequest, data: &[u8]) -> Outcome<FsAnswer> {
    const WHAT: &str = "cannot write";
    let path = Path::new(&request.path);
    let (Some(dir), Some(_)) = (path.parent(), path.file_name()) else {
        return Err(errno(rustix::io::Errno::ISDIR.raw_os_error(), WHAT, path));
    };
    let existing = match fs::symlink_metadata(path) {
        Ok(meta) => Some(meta),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(os(&e, WHAT, path)),
    };
    if existing.as_ref().is_some_and(Metadata::is_dir) {
        return Err(errno(rustix::io::Errno::ISDIR.raw_os_error(), WHAT, path));
    }
    // An existing file keeps its permission bits (a script stays executable).
    let mode = request.mode.unwrap_or(match &existing {
        Some(meta) if meta.is_file() => meta.mode() & 0o777,
        _ => 0o644,
    });
    if existing.is_none() && request.parents {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)
            .map_err(|e| os(&e, "cannot make the directories of", path))?;
    }
    let temp = dir.join(temp_name("write"));
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&temp)
        .map_err(|e| os(&e, WHAT, path))?;
    let replaces = existing.is_some();
    let written = (|| {
        file.write_all(data)?;
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        put_in_place(&temp, path, replaces)
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&temp);
        return Err(os(&e, WHAT, path));
    }
    let meta = file.metadata().map_err(|e| os(&e, "cannot stat", path))?;
    Ok(FsAnswer::Entry {
        entry: entry(path, &meta),
    })
}

/// Moves the finished `temp` to `path`. Over an existing file the two are exchanged
/// (`renameat2(RENAME_EXCHANGE)`, atomic like a rename) and the old one, now at `temp`,
/// removed: ext4 flushes a new file's data to disk before a rename replaces another
/// (`auto_da_alloc`), a millisecond or more per small write, and an exchange is no such
/// replacement. A file system without exchanges gets the plain rename. A directory is
/// never replaced, even one made at `path` a moment ago.
fn put_in_place(temp: &Path, path: &Path, replaces: bool) -> io::Result<()> {
    use rustix::fs::{CWD, RenameFlags, renameat_with};
    if replaces {
        match renameat_with(CWD, temp, CWD, path, RenameFlags::EXCHANGE) {
            Ok(()) => {
                // A directory made at `path` since the stat was swapped out, where a
                // rename would have failed: put it back, untouched.
                if fs::symlink_metadata(temp).is_ok_and(|m| m.is_dir()) {
                    let back = renameat_with(CWD, temp, CWD, path, RenameFlags::EXCHANGE)
                        .map_err(io::Error::from)
                        .or_else(|_| fs::remove_file(path).and_then(|()| fs::rename(temp, path)));
                    if let Err(e) = back {
                        return Err(io::Error::other(format!(
                            "a directory made at {} during the write could not be put back \
                             from {}: {e}",
                            path.display(),
                            temp.display()
                        )));
                    }
                    let _ = fs::remove_file(temp);
                    return Err(io::Error::from_raw_os_error(
                        rustix::io::Errno::ISDIR.raw_os_error(),
                    ));
                }
                // The old file, now under the temporary name; nothing else refers to it.
                let _ = fs::remove_file(temp);
                return Ok(());
            }
            // Gone since the stat: nothing to exchange with.
            Err(rustix::io::Errno::NOENT) => {}
            Err(
                rustix::io::Errno::INVAL | rustix::io::Errno::NOSYS | rustix::io::Errno::OPNOTSUPP,
            ) => {}
            Err(e) => return Err(e.into()),
        }
    }
    fs::rename(temp, path)
}

/// Reads the regular file `request.path` (following symlinks) whole, unless it is larger
/// than `request.max_bytes` ([`ReadFileRequest`]). A FIFO or device is not opened for
/// good: the open does not block, and anything but a regular file is refused.
pub fn read_file(request: &ReadFileRequest) -> Outcome<(FileContent, Vec<u8>)> {
    const WHAT: &str = "cannot read";
    let path = Path::new(&request.path);
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
        .open(path)
        .map_err(|e| os(&e, WHAT, path))?;
    let meta = file.metadata().map_err(|e| os(&e, WHAT, path))?;
    if meta.is_dir() {
        return Err(errno(rustix::io::Errno::ISDIR.raw_os_error(), WHAT, path));
    }
    if !meta.is_file() {
        return Err(errno(rustix::io::Errno::INVAL.raw_os_error(), WHAT, path));
    }
    let mut found = entry(path, &meta);
    let too_large = FileContent {
        entry: found.clone(),
        complete: false,
    };
    if meta.len() > request.max_bytes {
        return Ok((too_large, Vec::new()));
    }
    let mut data = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    // One byte past the bound tells a file that grew since the stat.
    file.take(request.max_bytes.saturating_add(1))
        .read_to_end(&mut data)
        .map_err(|e| os(&e, WHAT, path))?;
    if data.len() as u64 > request.max_bytes {
        return Ok((too_large, Vec::new()));
    }
    found.size = data.len() as u64;
    Ok((
        FileContent {
            entry: found,
            complete: true,
        },
        data,
    ))
}

/// A name for a new file next to the one it will replace, unique in this agent's lifetime
/// and across agents (the pid), short enough for any file system.
fn temp_name(what: &str) -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!(".monza-{what}.{}.{n}", std::process::id())
}

/// The error of a failed system call on `path`, with its errno.
fn os(error: &io::Error, what: &str, path: &Path) -> ErrorReply {
    ErrorReply {
        code: ErrorCode::Fs,
        message: format!("{what} {}: {}", path.display(), plain(error)),
        errno: error.raw_os_error(),
    }
}

/// An error's text without std's " (os error N)" suffix: the errno travels on its own.
fn plain(error: &io::Error) -> String {
    let text = error.to_string();
    match text.find(" (os error ") {
        Some(at) => text[..at].to_owned(),
        None => text,
    }
}

fn errno(error: i32, what: &str, path: &Path) -> ErrorReply {
    os(&io::Error::from_raw_os_error(error), what, path)
}

fn bad(message: String) -> ErrorReply {
    ErrorReply {
        code: ErrorCode::BadRequest,
        message,
        errno: None,
    }
}

fn entry(path: &Path, meta: &Metadata) -> FsEntry {
    let kind = meta.file_type();
    let kind = if kind.is_symlink() {
        FsKind::Symlink
    } else if kind.is_dir() {
        FsKind::Directory
    } else if kind.is_file() {
        FsKind::File
    } else {
        FsKind::Other
    };
    let link_target = (kind == FsKind::Symlink)
        .then(|| fs::read_link(path).ok())
        .flatten()
        .map(|target| target.to_string_lossy().into_owned());
    FsEntry {
        path: path.to_string_lossy().into_owned(),
        kind,
        size: meta.len(),
        mode: meta.mode() & 0o7777,
        uid: meta.uid(),
        gid: meta.gid(),
        modified_ms: meta
            .mtime()
            .saturating_mul(1000)
            .saturating_add(meta.mtime_nsec() / 1_000_000),
        link_target,
    }
}

/// A walk's limits as they run down.
struct Walk {
    visits_left: u64,
    until: Instant,
    /// Bytes of answer so far.
    bytes: usize,
    truncated: bool,
}

impl Walk {
    fn new(budget: WalkBudget) -> Self {
        Self {
            visits_left: budget.max_visits,
            until: Instant::now() + Duration::from_millis(budget.max_ms),
            bytes: 0,
            truncated: false,
        }
    }

    /// Counts one more entry; false (and `truncated`) once a limit is reached.
    fn visit(&mut self) -> bool {
        if self.visits_left == 0 || Instant::now() >= self.until {
            self.truncated = true;
            return false;
        }
        self.visits_left -= 1;
        true
    }

    /// Counts `bytes` more of answer; false (and `truncated`) when they do not fit.
    fn carry(&mut self, bytes: usize) -> bool {
        if self.bytes + bytes > ANSWER_BYTES {
            self.truncated = true;
            return false;
        }
        self.bytes += bytes;
        true
    }
}

/// A directory's entries sorted by name; an unreadable directory inside a walk is skipped.
fn sorted_entries(dir: &Path) -> io::Result<Vec<(PathBuf, Metadata)>> {
    let mut entries = Vec::new();
    for item in fs::read_dir(dir)? {
        let item = item?;
        // `DirEntry::metadata` does not follow symlinks.
        if let Ok(meta) = item.metadata() {
            entries.push((item.path(), meta));
        }
    }
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(entries)
}

/// Walks below `root` depth first, each directory's entries by name, calling `each` with
/// the entry's path, its path relative to `root` and its metadata, until `each` says stop
/// or the walk's limits are reached. Never follows a symlink; skips unreadable directories.
fn walk(
    root: &Path,
    recursive: bool,
    limits: &mut Walk,
    mut each: impl FnMut(&Path, &Path, &Metadata, &mut Walk) -> bool,
) -> Outcome<()> {
    let top = sorted_entries(root).map_err(|e| os(&e, "cannot list", root))?;
    // A stack of iterators over the directories being walked.
    let mut stack = vec![top.into_iter()];
    while let Some(entries) = stack.last_mut() {
        let Some((path, meta)) = entries.next() else {
            stack.pop();
            continue;
        };
        if !limits.visit() {
            break;
        }
        let relative = path.strip_prefix(root).unwrap_or(&path);
        if !each(&path, relative, &meta, limits) {
            break;
        }
        if recursive
            && meta.is_dir()
            && let Ok(children) = sorted_entries(&path)
        {
            stack.push(children.into_iter());
        }
    }
    Ok(())
}

/// The entries of a directory; of anything else, that one entry (as `ls` lists a file).
fn list(path: &Path, recursive: bool, limit: u64, budget: WalkBudget) -> Outcome<FsAnswer> {
    if !fs::metadata(path).is_ok_and(|target| target.is_dir()) {
        // Not a directory, even through a link: that one entry, or why there is none.
        let meta = fs::symlink_metadata(path).map_err(|e| os(&e, "cannot list", path))?;
        return Ok(FsAnswer::Entries {
            entries: vec![entry(path, &meta)],
            truncated: false,
        });
    }
    let mut limits = Walk::new(budget);
    let mut entries = Vec::new();
    walk(path, recursive, &mut limits, |path, _, meta, limits| {
        if entries.len() as u64 >= limit {
            limits.truncated = true;
            return false;
        }
        let found = entry(path, meta);
        if !limits.carry(found.path.len() + 128) {
            return false;
        }
        entries.push(found);
        true
    })?;
    Ok(FsAnswer::Entries {
        entries,
        truncated: limits.truncated,
    })
}

fn mkdir(path: &Path, parents: bool) -> Outcome<FsAnswer> {
    let made = if parents {
        fs::create_dir_all(path)
    } else {
        fs::create_dir(path)
    };
    made.map_err(|e| os(&e, "cannot make the directory", path))?;
    let meta = fs::symlink_metadata(path).map_err(|e| os(&e, "cannot stat", path))?;
    if !meta.is_dir() {
        // `create_dir_all` accepts a symlink to a directory; say what is there.
        return Err(errno(
            rustix::io::Errno::EXIST.raw_os_error(),
            "cannot make the directory",
            path,
        ));
    }
    Ok(FsAnswer::Entry {
        entry: entry(path, &meta),
    })
}

fn rename(from: &Path, to: &Path, overwrite: bool) -> Outcome<FsAnswer> {
    let source = fs::symlink_metadata(from).map_err(|e| os(&e, "cannot move", from))?;
    if from == to {
        // rename(2) of a path onto itself changes nothing.
        return Ok(FsAnswer::Entry {
            entry: entry(to, &source),
        });
    }
    if overwrite {
        // rename(2) itself refuses a directory over a file and a file over a directory.
        if let Ok(target) = fs::symlink_metadata(to)
            && target.is_dir()
            && !source.is_dir()
        {
            return Err(errno(
                rustix::io::Errno::ISDIR.raw_os_error(),
                "cannot move onto the directory",
                to,
            ));
        }
        fs::rename(from, to).map_err(|e| os(&e, "cannot move to", to))?;
    } else {
        use rustix::fs::{CWD, RenameFlags, renameat_with};
        match renameat_with(CWD, from, CWD, to, RenameFlags::NOREPLACE) {
            Ok(()) => {}
            // A file system without RENAME_NOREPLACE: check, then rename (racy, but only
            // against the sandbox's own processes).
            Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOSYS)
                if fs::symlink_metadata(to).is_err() && !to.starts_with(from) =>
            {
                fs::rename(from, to).map_err(|e| os(&e, "cannot move to", to))?;
            }
            Err(e) => return Err(os(&e.into(), "cannot move to", to)),
        }
    }
    let meta = fs::symlink_metadata(to).map_err(|e| os(&e, "cannot stat", to))?;
    Ok(FsAnswer::Entry {
        entry: entry(to, &meta),
    })
}

fn remove(path: &Path, recursive: bool) -> Outcome<FsAnswer> {
    let meta = fs::symlink_metadata(path).map_err(|e| os(&e, "cannot remove", path))?;
    if !meta.is_dir() {
        fs::remove_file(path).map_err(|e| os(&e, "cannot remove", path))?;
        return Ok(FsAnswer::Removed { removed: 1 });
    }
    if !recursive {
        fs::remove_dir(path).map_err(|e| os(&e, "cannot remove the directory", path))?;
        return Ok(FsAnswer::Removed { removed: 1 });
    }
    let removed = remove_tree(path)?;
    Ok(FsAnswer::Removed { removed })
}

/// Removes a directory and everything below it, children first, never following a
/// symlink (a link is removed, not what it points to); counts what it removed.
fn remove_tree(dir: &Path) -> Outcome<u64> {
    let mut removed = 0;
    for item in fs::read_dir(dir).map_err(|e| os(&e, "cannot list", dir))? {
        let item = item.map_err(|e| os(&e, "cannot list", dir))?;
        let path = item.path();
        let is_dir = item
            .file_type()
            .map_err(|e| os(&e, "cannot stat", &path))?
            .is_dir();
        if is_dir {
            removed += remove_tree(&path)?;
        } else {
            fs::remove_file(&path).map_err(|e| os(&e, "cannot remove", &path))?;
            removed += 1;
        }
    }
    fs::remove_dir(dir).map_err(|e| os(&e, "cannot remove the directory", dir))?;
    Ok(removed + 1)
}

/// Opens a regular file for reading, following symlinks; a directory is `EISDIR`.
fn open_file(path: &Path, what: &str) -> Outcome<(File, Metadata)> {
    let file = File::open(path).map_err(|e| os(&e, what, path))?;
    let meta = file.metadata().map_err(|e| os(&e, what, path))?;
    if meta.is_dir() {
        return Err(errno(rustix::io::Errno::ISDIR.raw_os_error(), what, path));
    }
    Ok((file, meta))
}

/// Reads the next line into `line` (without its `\n`), keeping at most `keep` bytes of it
/// and skipping the rest. `Ok(false)` at the end of the input.
fn next_line(reader: &mut impl BufRead, line: &mut Vec<u8>, keep: usize) -> io::Result<bool> {
    line.clear();
    let mut any = false;
    loop {
        let chunk = match reader.fill_buf() {
            Ok(chunk) => chunk,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if chunk.is_empty() {
            return Ok(any);
        }
        any = true;
        let (part, used, end) = match chunk.iter().position(|&b| b == b'\n') {
            Some(at) => (&chunk[..at], at + 1, true),
            None => (chunk, chunk.len(), false),
        };
        let room = keep.saturating_sub(line.len());
        line.extend_from_slice(&part[..part.len().min(room)]);
        reader.consume(used);
        if end {
            return Ok(true);
        }
    }
}

/// A line's text: its `\r` (of a `\r\n` end) dropped, bytes that are not UTF-8 replaced.
fn text(line: &[u8]) -> String {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    String::from_utf8_lossy(line).into_owned()
}

fn read_lines(path: &Path, offset: u64, limit: u64, max_bytes: u64) -> Outcome<FsAnswer> {
    let (file, _) = open_file(path, "cannot read")?;
    let mut reader = BufReader::with_capacity(64 * 1024, file);
    let max_bytes = usize::try_from(max_bytes)
        .unwrap_or(usize::MAX)
        .min(ANSWER_BYTES);
    let mut line = Vec::new();
    let mut number = 0u64;
    while number < offset {
        if !next_line(&mut reader, &mut line, 0).map_err(|e| os(&e, "cannot read", path))? {
            return Ok(FsAnswer::Lines {
                lines: Vec::new(),
                next_offset: None,
            });
        }
        number += 1;
    }
    let mut lines = Vec::new();
    let mut bytes = 0usize;
    while (lines.len() as u64) < limit && bytes < max_bytes {
        let keep = max_bytes - bytes;
        if !next_line(&mut reader, &mut line, keep).map_err(|e| os(&e, "cannot read", path))? {
            return Ok(FsAnswer::Lines {
                lines,
                next_offset: None,
            });
        }
        bytes += line.len() + 1;
        lines.push(text(&line));
    }
    // Whether anything follows decides between "read on from here" and "that was all".
    let more = !reader
        .fill_buf()
        .map_err(|e| os(&e, "cannot read", path))?
        .is_empty();
    let next_offset = more.then(|| offset + lines.len() as u64);
    Ok(FsAnswer::Lines { lines, next_offset })
}

/// A search's file filter: a pattern without `/` matches the file's name (`*.rs`, as
/// `grep --include` does), one with `/` its path relative to the search's root.
fn name_or_path_glob(pattern: &str) -> Outcome<(GlobMatcher, bool)> {
    Ok((path_glob(pattern)?, !pattern.contains('/')))
}

/// A glob over relative paths: `*` and `?` stay within a component, `**` crosses them. As in
/// a shell, a `[` or `{` that opens nothing stands for itself: a pattern that does not parse
/// is tried again with its brackets and braces literal, then as literal text.
fn path_glob(pattern: &str) -> Outcome<GlobMatcher> {
    let build = |pattern: &str| {
        GlobBuilder::new(pattern)
            .literal_separator(true)
            .backslash_escape(true)
            .build()
            .map(|glob| glob.compile_matcher())
    };
    let brackets_literal: String = pattern
        .chars()
        .flat_map(|c| match c {
            '[' | ']' | '{' | '}' => vec!['[', c, ']'],
            _ => vec![c],
        })
        .collect();
    build(pattern)
        .or_else(|_| build(&brackets_literal))
        .or_else(|_| build(&globset::escape(pattern)))
        .map_err(|e| bad(format!("the glob {pattern:?} is not valid: {e}")))
}

fn search(
    root: &Path,
    pattern: &Regex,
    filter: Option<&(GlobMatcher, bool)>,
    max_results: u64,
    budget: WalkBudget,
) -> Outcome<FsAnswer> {
    let mut limits = Walk::new(budget);
    let mut matches = Vec::new();
    let meta = fs::metadata(root).map_err(|e| os(&e, "cannot search", root))?;
    if !meta.is_dir() {
        // One file, searched whatever the filter says (the client named it).
        search_file(root, pattern, max_results, &mut matches, &mut limits)
            .map_err(|e| os(&e, "cannot search", root))?;
    } else {
        walk(root, true, &mut limits, |path, relative, meta, limits| {
            if !meta.is_file() {
                return true;
            }
            if let Some((glob, by_name)) = filter {
                let subject = if *by_name {
                    path.file_name().map_or(relative, Path::new)
                } else {
                    relative
                };
                if !glob.is_match(subject) {
                    return true;
                }
            }
            // A file that cannot be read (permissions, gone) is skipped, as grep -s does.
            let _ = search_file(path, pattern, max_results, &mut matches, limits);
            !limits.truncated && (matches.len() as u64) < max_results
        })?;
    }
    if matches.len() as u64 >= max_results {
        limits.truncated = true;
    }
    Ok(FsAnswer::Matches {
        matches,
        truncated: limits.truncated,
    })
}

/// Adds the matching lines of one file, unless it looks binary.
fn search_file(
    path: &Path,
    pattern: &Regex,
    max_results: u64,
    matches: &mut Vec<FsMatch>,
    limits: &mut Walk,
) -> io::Result<()> {
    let mut reader = BufReader::with_capacity(64 * 1024, File::open(path)?);
    let head = reader.fill_buf()?;
    if head[..head.len().min(BINARY_PROBE)].contains(&0) {
        return Ok(());
    }
    let shown = path.to_string_lossy();
    let mut line = Vec::new();
    let mut number = 0u64;
    while next_line(&mut reader, &mut line, MATCH_LINE_BYTES)? {
        number += 1;
        if number.is_multiple_of(4096) && Instant::now() >= limits.until {
            limits.truncated = true;
            return Ok(());
        }
        if !pattern.is_match(&line) {
            continue;
        }
        if (matches.len() as u64) >= max_results {
            limits.truncated = true;
            return Ok(());
        }
        let found = FsMatch {
            path: shown.clone().into_owned(),
            line: number,
            text: text(&line),
        };
        if !limits.carry(found.path.len() + found.text.len() + 32) {
            return Ok(());
        }
        matches.push(found);
    }
    Ok(())
}

fn glob(
    root: &Path,
    pattern: &GlobMatcher,
    max_results: u64,
    budget: WalkBudget,
) -> Outcome<FsAnswer> {
    // Below a file there is nothing to match.
    let meta = fs::metadata(root).map_err(|e| os(&e, "cannot open", root))?;
    if !meta.is_dir() {
        return Ok(FsAnswer::Paths {
            paths: Vec::new(),
            truncated: false,
        });
    }
    let mut limits = Walk::new(budget);
    let mut paths = Vec::new();
    walk(root, true, &mut limits, |path, relative, _, limits| {
        if !pattern.is_match(relative) {
            return true;
        }
        if paths.len() as u64 >= max_results {
            limits.truncated = true;
            return false;
        }
        let shown = path.to_string_lossy().into_owned();
        if !limits.carry(shown.len() + 8) {
            return false;
        }
        paths.push(shown);
        true
    })?;
    Ok(FsAnswer::Paths {
        paths,
        truncated: limits.truncated,
    })
}

/// Where `needle` starts in `haystack`, without overlaps, left to right.
fn occurrences(haystack: &[u8], needle: &[u8]) -> Vec<usize> {
    memchr::memmem::find_iter(haystack, needle).collect()
}

fn edit(path: &Path, old: &[u8], new: &[u8], replace_all: bool) -> Outcome<FsAnswer> {
    if old.is_empty() {
        return Err(bad("the text to replace is empty".into()));
    }
    // The file a symlink points to is edited, and the link stays.
    let real = fs::canonicalize(path).map_err(|e| os(&e, "cannot edit", path))?;
    // Refused before anything is read, so "may not write it" is not hidden behind a match.
    rustix::fs::access(&real, rustix::fs::Access::WRITE_OK)
        .map_err(|e| os(&e.into(), "cannot edit", path))?;
    let (mut file, meta) = open_file(&real, "cannot edit")?;
    if !meta.is_file() {
        return Err(bad(format!("{} is not a regular file", path.display())));
    }
    if meta.len() > EDIT_MAX_BYTES {
        return Err(bad(format!(
            "{} is {} bytes; an edit reads at most {EDIT_MAX_BYTES}",
            path.display(),
            meta.len()
        )));
    }
    let mut content = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    file.read_to_end(&mut content)
        .map_err(|e| os(&e, "cannot read", path))?;
    drop(file);
    let found = occurrences(&content, old);
    match found.len() {
        0 => {
            return Err(ErrorReply {
                code: ErrorCode::NoMatch,
                message: format!("the text to replace is not in {}", path.display()),
                errno: None,
            });
        }
        1 => {}
        n if !replace_all => {
            return Err(ErrorReply {
                code: ErrorCode::AmbiguousMatch,
                message: format!(
                    "the text to replace is in {} {n} times; give more context to make it \
                     unique, or replace all",
                    path.display()
                ),
                errno: None,
            });
        }
        _ => {}
    }
    let mut edited = Vec::with_capacity(content.len() + found.len() * new.len());
    let mut at = 0;
    for &start in &found {
        edited.extend_from_slice(&content[at..start]);
        edited.extend_from_slice(new);
        at = start + old.len();
    }
    edited.extend_from_slice(&content[at..]);
    replace_contents(&real, &meta, &edited).map_err(|e| os(&e, "cannot write", path))?;
    Ok(FsAnswer::Edited {
        replacements: found.len() as u64,
    })
}

/// Replaces a file's bytes: through a new file renamed over it (atomic: a reader sees the
/// old bytes or the new ones), which keeps its mode and owner. A file with other hard links,
/// one whose owner the agent cannot give the new file, or one in a directory the agent
/// cannot write is rewritten in place instead, so no link and no owner is lost.
fn replace_contents(path: &Path, meta: &Metadata, bytes: &[u8]) -> io::Result<()> {
    let me = rustix::process::geteuid();
    let can_own = me.is_root() || me.as_raw() == meta.uid();
    if meta.nlink() == 1
        && can_own
        && let Some(done) = replace_by_rename(path, meta, bytes)
    {
        return done;
    }
    let mut file = OpenOptions::new().write(true).truncate(true).open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// `None` when the new file cannot be made next to the old one.
fn replace_by_rename(path: &Path, meta: &Metadata, bytes: &[u8]) -> Option<io::Result<()>> {
    let dir = path.parent()?;
    let temp = dir.join(temp_name("edit"));
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&temp)
        .ok()?;
    let written = (|| {
        file.write_all(bytes)?;
        std::os::unix::fs::fchown(&file, Some(meta.uid()), Some(meta.gid()))?;
        file.set_permissions(fs::Permissions::from_mode(meta.mode() & 0o7777))?;
        file.sync_all()?;
        fs::rename(&temp, path)
    })();
    if written.is_err() {
        let _ = fs::remove_file(&temp);
    }
    Some(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BUDGET: WalkBudget = WalkBudget {
        max_visits: 10_000,
        max_ms: 10_000,
    };

    fn tree() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("src/deep")).unwrap();
        fs::create_dir(root.join("empty")).unwrap();
        fs::write(
            root.join("src/main.rs"),
            "fn main() {\n    println!(\"hi\");\n}\n",
        )
        .unwrap();
        fs::write(
            root.join("src/deep/lib.rs"),
            "pub fn Main() {}\r\nfn x() {}\n",
        )
        .unwrap();
        fs::write(root.join("README.md"), "main\n").unwrap();
        fs::write(root.join("blob.bin"), b"main\0main\n").unwrap();
        std::os::unix::fs::symlink("/etc", root.join("link")).unwrap();
        dir
    }

    fn path(dir: &tempfile::TempDir, rel: &str) -> String {
        dir.path().join(rel).to_string_lossy().into_owned()
    }

    fn code(result: Outcome<FsAnswer>) -> (ErrorCode, Option<i32>) {
        let error = result.unwrap_err();
        (error.code, error.errno)
    }

    /// The stat said "a file", but a directory is there by the time the new file goes in
    /// (made in between): it stays where it is with what it holds, the write is `EISDIR`,
    /// and the temporary file is gone.
    #[test]
    fn a_directory_made_during_a_replace_is_put_back_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("name");
        fs::create_dir(&target).unwrap();
        fs::write(target.join("kept"), "mine").unwrap();
        let temp = dir.path().join(temp_name("write"));
        fs::write(&temp, "new").unwrap();
        let refused = put_in_place(&temp, &target, true).unwrap_err();
        assert_eq!(
            refused.raw_os_error(),
            Some(rustix::io::Errno::ISDIR.raw_os_error())
        );
        assert_eq!(fs::read_to_string(target.join("kept")).unwrap(), "mine");
        assert!(!temp.exists(), "the temporary file is left behind");
        // Over a file, the new bytes replace the old and nothing else is left.
        let file = dir.path().join("file");
        fs::write(&file, "old").unwrap();
        fs::write(&temp, "new").unwrap();
        put_in_place(&temp, &file, true).unwrap();
        assert_eq!(fs::read_to_string(&file).unwrap(), "new");
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            2,
            "name and file only"
        );
    }

    #[test]
    fn lists_depth_first_by_name_without_following_links() {
        let dir = tree();
        let answer = run(FsRequest::List {
            path: path(&dir, ""),
            recursive: true,
            limit: 100,
            budget: BUDGET,
        })
        .unwrap();
        let FsAnswer::Entries { entries, truncated } = answer else {
            panic!("{answer:?}")
        };
        let names: Vec<_> = entries
            .iter()
            .map(|e| e.path.strip_prefix(&path(&dir, "")).unwrap().to_owned())
            .collect();
        assert_eq!(
            names,
            [
                "README.md",
                "blob.bin",
                "empty",
                "link",
                "src",
                "src/deep",
                "src/deep/lib.rs",
                "src/main.rs"
            ]
        );
        assert!(!truncated);
        let link = &entries[3];
        assert_eq!(link.kind, FsKind::Symlink);
        assert_eq!(link.link_target.as_deref(), Some("/etc"));

        let answer = run(FsRequest::List {
            path: path(&dir, ""),
            recursive: true,
            limit: 3,
            budget: BUDGET,
        })
        .unwrap();
        let FsAnswer::Entries { entries, truncated } = answer else {
            panic!("{answer:?}")
        };
        assert_eq!((entries.len(), truncated), (3, true));
        // A file is listed as itself, as `ls` does.
        let answer = run(FsRequest::List {
            path: path(&dir, "README.md"),
            recursive: true,
            limit: 10,
            budget: BUDGET,
        })
        .unwrap();
        let FsAnswer::Entries { entries, .. } = answer else {
            panic!("{answer:?}")
        };
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].kind, FsKind::File);
        assert_eq!(
            code(run(FsRequest::List {
                path: path(&dir, "README.md/x"),
                recursive: false,
                limit: 10,
                budget: BUDGET,
            })),
            (ErrorCode::Fs, Some(20))
        );
    }

    #[test]
    fn searches_like_grep_skipping_binary_files_and_filtering_by_name() {
        let dir = tree();
        let search = |pattern: &str, regex, ignore_case, glob: Option<&str>| {
            let answer = run(FsRequest::Search {
                path: path(&dir, ""),
                pattern: pattern.into(),
                regex,
                ignore_case,
                glob: glob.map(str::to_owned),
                max_results: 100,
                budget: BUDGET,
            })
            .unwrap();
            let FsAnswer::Matches { matches, .. } = answer else {
                panic!("{answer:?}")
            };
            matches
                .into_iter()
                .map(|m| {
                    let rel = m.path.strip_prefix(&path(&dir, "")).unwrap().to_owned();
                    (rel, m.line, m.text)
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(
            search("main", false, false, None),
            [
                ("README.md".to_owned(), 1, "main".to_owned()),
                ("src/main.rs".to_owned(), 1, "fn main() {".to_owned()),
            ]
        );
        assert_eq!(
            search("fn [a-z]+\\(", true, true, Some("*.rs")),
            [
                (
                    "src/deep/lib.rs".to_owned(),
                    1,
                    "pub fn Main() {}".to_owned()
                ),
                ("src/deep/lib.rs".to_owned(), 2, "fn x() {}".to_owned()),
                ("src/main.rs".to_owned(), 1, "fn main() {".to_owned()),
            ]
        );
        assert_eq!(search("main", false, false, Some("src/*.rs")).len(), 1);
        assert_eq!(search("(", false, false, None).len(), 4);
        let bad = run(FsRequest::Search {
            path: path(&dir, ""),
            pattern: "(".into(),
            regex: true,
            ignore_case: false,
            glob: None,
            max_results: 1,
            budget: BUDGET,
        });
        assert_eq!(code(bad).0, ErrorCode::BadRequest);
    }

    #[test]
    fn globs_with_components_and_double_star() {
        let dir = tree();
        let glob = |pattern: &str| {
            let answer = run(FsRequest::Glob {
                path: path(&dir, ""),
                pattern: pattern.into(),
                max_results: 100,
                budget: BUDGET,
            })
            .unwrap();
            let FsAnswer::Paths { paths, .. } = answer else {
                panic!("{answer:?}")
            };
            paths
                .into_iter()
                .map(|p| p.strip_prefix(&path(&dir, "")).unwrap().to_owned())
                .collect::<Vec<_>>()
        };
        assert_eq!(glob("*.rs"), Vec::<String>::new());
        assert_eq!(glob("**/*.rs"), ["src/deep/lib.rs", "src/main.rs"]);
        assert_eq!(glob("src/*"), ["src/deep", "src/main.rs"]);
        assert_eq!(glob("src/{main,x}.rs"), ["src/main.rs"]);
        // Unbalanced brackets and braces stand for themselves.
        fs::write(dir.path().join("a[b{c"), "").unwrap();
        assert_eq!(glob("a[b{c"), ["a[b{c"]);
        assert_eq!(glob("*[b{*"), ["a[b{c"]);
    }

    #[test]
    fn reads_lines_from_an_offset_and_says_where_to_go_on() {
        let dir = tree();
        let read = |offset, limit| {
            run(FsRequest::ReadLines {
                path: path(&dir, "src/main.rs"),
                offset,
                limit,
                max_bytes: 1 << 20,
            })
            .unwrap()
        };
        assert_eq!(
            read(1, 1),
            FsAnswer::Lines {
                lines: vec!["    println!(\"hi\");".into()],
                next_offset: Some(2)
            }
        );
        assert_eq!(
            read(1, 10),
            FsAnswer::Lines {
                lines: vec!["    println!(\"hi\");".into(), "}".into()],
                next_offset: None
            }
        );
        assert_eq!(
            read(9, 10),
            FsAnswer::Lines {
                lines: vec![],
                next_offset: None
            }
        );
        let dir_read = run(FsRequest::ReadLines {
            path: path(&dir, "src"),
            offset: 0,
            limit: 1,
            max_bytes: 10,
        });
        assert_eq!(code(dir_read), (ErrorCode::Fs, Some(21)));
    }

    #[test]
    fn edits_exactly_once_or_everywhere_keeping_the_mode() {
        let dir = tree();
        let file = path(&dir, "src/main.rs");
        fs::set_permissions(&file, fs::Permissions::from_mode(0o751)).unwrap();
        let edit = |old: &str, new: &str, replace_all| {
            run(FsRequest::Edit {
                path: file.clone(),
                old: old.into(),
                new: new.into(),
                replace_all,
            })
        };
        assert_eq!(code(edit("nothing", "x", false)).0, ErrorCode::NoMatch);
        assert_eq!(code(edit("i", "x", false)).0, ErrorCode::AmbiguousMatch);
        assert_eq!(
            edit("\"hi\"", "\"bye\"", false).unwrap(),
            FsAnswer::Edited { replacements: 1 }
        );
        assert_eq!(
            edit("n", "N", true).unwrap(),
            FsAnswer::Edited { replacements: 4 }
        );
        assert_eq!(
            fs::read_to_string(&file).unwrap(),
            "fN maiN() {\n    priNtlN!(\"bye\");\n}\n"
        );
        assert_eq!(fs::metadata(&file).unwrap().mode() & 0o7777, 0o751);
        // Nothing is left behind in the directory.
        assert_eq!(fs::read_dir(path(&dir, "src")).unwrap().count(), 2);
    }

    #[test]
    fn writes_whole_files_atomically_keeping_the_mode_and_never_over_a_directory() {
        let dir = tree();
        let write = |rel: &str, data: &[u8], mode: Option<u32>, parents: bool| {
            write_file(
                &WriteFileRequest {
                    path: path(&dir, rel),
                    mode,
                    parents,
                },
                data,
            )
        };
        let Ok(FsAnswer::Entry { entry }) = write("run.sh", b"#!/bin/sh\n", Some(0o755), false)
        else {
            panic!("a new file was not written");
        };
        assert_eq!(
            (entry.kind, entry.size, entry.mode),
            (FsKind::File, 10, 0o755)
        );
        // Replaced without a mode: the mode stays; the bytes are the new ones.
        let Ok(FsAnswer::Entry { entry }) = write("run.sh", b"x", None, false) else {
            panic!("the file was not replaced");
        };
        assert_eq!((entry.size, entry.mode), (1, 0o755));
        assert_eq!(fs::read(path(&dir, "run.sh")).unwrap(), b"x");
        // A directory is never replaced; a missing parent is an error unless asked for.
        assert_eq!(
            code(write("src", b"x", None, true)),
            (ErrorCode::Fs, Some(rustix::io::Errno::ISDIR.raw_os_error()))
        );
        assert!(fs::metadata(path(&dir, "src/main.rs")).is_ok());
        assert_eq!(
            code(write("new/deep/f", b"x", None, false)),
            (ErrorCode::Fs, Some(rustix::io::Errno::NOENT.raw_os_error()))
        );
        assert!(write("new/deep/f", b"", None, true).is_ok());
        assert_eq!(
            fs::metadata(path(&dir, "new/deep")).unwrap().mode() & 0o777,
            0o755
        );
        // No temporary file is left behind, whatever happened.
        let leftovers: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with(".monza-"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn reads_small_files_whole_and_refuses_what_would_block_or_is_too_large() {
        let dir = tree();
        let read = |rel: &str, max_bytes: u64| {
            read_file(&ReadFileRequest {
                path: path(&dir, rel),
                max_bytes,
            })
        };
        let (content, data) = read("src/main.rs", 1 << 20).unwrap();
        assert!(content.complete);
        assert_eq!(content.entry.size, data.len() as u64);
        assert_eq!(data, fs::read(path(&dir, "src/main.rs")).unwrap());
        let (content, data) = read("src/main.rs", 3).unwrap();
        assert!(!content.complete && data.is_empty());
        assert_eq!(
            code(read("src", 10).map(|_| FsAnswer::Removed { removed: 0 })),
            (ErrorCode::Fs, Some(rustix::io::Errno::ISDIR.raw_os_error()))
        );
        // A FIFO with no writer would block an open for reading: refused at once instead.
        let fifo = path(&dir, "pipe");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            fifo.as_str(),
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        assert_eq!(
            code(read("pipe", 10).map(|_| FsAnswer::Removed { removed: 0 })),
            (ErrorCode::Fs, Some(rustix::io::Errno::INVAL.raw_os_error()))
        );
    }

    #[test]
    fn moves_without_replacing_unless_asked_and_removes_trees() {
        let dir = tree();
        let moved = |from: &str, to: &str, overwrite| {
            run(FsRequest::Move {
                from: path(&dir, from),
                to: path(&dir, to),
                overwrite,
            })
        };
        assert_eq!(
            code(moved("README.md", "blob.bin", false)),
            (ErrorCode::Fs, Some(17))
        );
        assert!(moved("README.md", "blob.bin", true).is_ok());
        assert!(moved("blob.bin", "blob.bin", false).is_ok());
        assert_eq!(fs::read(path(&dir, "blob.bin")).unwrap(), b"main\n");
        assert_eq!(
            code(moved("blob.bin", "src", true)),
            (ErrorCode::Fs, Some(21))
        );
        assert_eq!(
            code(run(FsRequest::Remove {
                path: path(&dir, "src"),
                recursive: false
            })),
            (ErrorCode::Fs, Some(39))
        );
        assert_eq!(
            run(FsRequest::Remove {
                path: path(&dir, "src"),
                recursive: true
            })
            .unwrap(),
            FsAnswer::Removed { removed: 4 }
        );
        // The link goes, not what it points to.
        assert_eq!(
            run(FsRequest::Remove {
                path: path(&dir, "link"),
                recursive: true
            })
            .unwrap(),
            FsAnswer::Removed { removed: 1 }
        );
        assert!(Path::new("/etc/passwd").exists());
        assert!(mkdir(&dir.path().join("a/b"), true).is_ok());
        assert_eq!(
            code(mkdir(&dir.path().join("a/b"), false)),
            (ErrorCode::Fs, Some(17))
        );
    }

    #[test]
    fn finds_occurrences_without_overlap() {
        assert_eq!(occurrences(b"aaaa", b"aa"), [0, 2]);
        assert_eq!(occurrences(b"abc", b"abcd"), Vec::<usize>::new());
        assert_eq!(occurrences(b"xabxab", b"ab"), [1, 4]);
    }
}
