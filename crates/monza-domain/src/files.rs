//! File operations beyond copying one file in or out: listing, directories, moves,
//! removal, reading by lines, search, glob and edit, as the runtime does them inside a
//! sandbox (as the sandbox's user, needing nothing from the image). The requests here are
//! checked by the service before they reach a runtime.

use std::time::Duration;

use crate::runtime::FileStat;

/// How far one walk of a tree (list, search, glob) may go before it stops and says
/// `truncated`: a bound on the sandbox's work for one request, whatever its tree holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalkLimits {
    /// Entries looked at, matched or not.
    pub max_entries: u64,
    /// Time spent walking.
    pub timeout: Duration,
}

/// Bounds on the file operations; [`crate::ServiceConfig::file_limits`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileLimits {
    /// Every walk's bound.
    pub walk: WalkLimits,
    /// Most entries one list answers; also its default.
    pub max_list_entries: u64,
    /// Most lines one search or glob answers; also their default.
    pub max_results: u64,
    /// Most lines one read by lines answers.
    pub max_lines: u64,
    /// Most bytes of content one batch read answers, its files together.
    pub max_batch_bytes: u64,
}

/// Lines a read by lines answers when the request does not say (what DeepAgents reads).
pub const DEFAULT_LINES: u64 = 2000;

impl Default for FileLimits {
    fn default() -> Self {
        Self {
            walk: WalkLimits {
                max_entries: 200_000,
                timeout: Duration::from_secs(10),
            },
            max_list_entries: 10_000,
            max_results: 1_000,
            max_lines: 100_000,
            max_batch_bytes: 16 * 1024 * 1024,
        }
    }
}

/// A path in a sandbox with what is there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileEntry {
    /// Absolute.
    pub path: String,
    /// What is there (a symlink is not followed; its target is as stored in the link).
    pub stat: FileStat,
    /// Owner and group, as numbers.
    pub uid: u32,
    pub gid: u32,
}

/// Entries of a directory (or of a tree).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FileList {
    pub entries: Vec<FileEntry>,
    /// A limit cut the list short.
    pub truncated: bool,
}

/// List a directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListFiles {
    pub path: String,
    /// Its whole tree, depth first, not following symlinks.
    pub recursive: bool,
    pub limit: u64,
    pub walk: WalkLimits,
}

/// Lines of a text file.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FileLines {
    /// Without their line ends; bytes that are not UTF-8 replaced by U+FFFD.
    pub lines: Vec<String>,
    /// Where to read on; `None` at the end of the file.
    pub next_offset: Option<u64>,
}

/// Search files for a pattern, as `grep -rn` would.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchFiles {
    /// A file, or a directory searched below.
    pub path: String,
    pub pattern: String,
    /// `pattern` is a regular expression (else literal text).
    pub regex: bool,
    pub ignore_case: bool,
    /// Only files matching it: by name without `/` (`*.py`), by relative path with one.
    pub glob: Option<String>,
    pub max_results: u64,
    pub walk: WalkLimits,
}

/// One line a search found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchMatch {
    pub path: String,
    /// 1-based.
    pub line: u64,
    pub text: String,
}

/// What a search found.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SearchResult {
    pub matches: Vec<SearchMatch>,
    /// A limit cut the search short.
    pub truncated: bool,
}

/// Paths matching a glob below a directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GlobFiles {
    pub path: String,
    /// Relative to `path`: `*` and `?` within a component, `**` across them.
    pub pattern: String,
    pub max_results: u64,
    pub walk: WalkLimits,
}

/// What a glob found.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GlobResult {
    pub paths: Vec<String>,
    pub truncated: bool,
}

/// A tar archive (plain or gzip) a client sent, spooled to an anonymous file so that every
/// entry can be checked before anything is written.
#[derive(Debug)]
pub struct SpooledArchive {
    pub file: std::fs::File,
    /// Its size in bytes.
    pub size: u64,
}

/// What an archive put into a sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ArchiveReport {
    pub files: u64,
    pub directories: u64,
    /// Symbolic and hard links.
    pub links: u64,
    /// Bytes of file content.
    pub bytes: u64,
}

/// Replace text in a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EditFile {
    pub path: String,
    /// Not empty.
    pub old: String,
    pub new: String,
    /// Every occurrence; otherwise exactly one must be there.
    pub replace_all: bool,
}
