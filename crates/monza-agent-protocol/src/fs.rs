//! File operations the agent does inside the sandbox, as the sandbox's user, with nothing
//! from the image (no `ls`, `grep`, `python3`): one [`FsRequest`] in a
//! [`crate::Message::Fs`] frame, answered by one [`crate::Message::FsAnswer`] or one
//! [`crate::Message::Error`] whose code is [`crate::ErrorCode::Fs`] (with the OS `errno`) or
//! one of the edit refusals.
//!
//! The same request runs without a connection: `monza-agent --fs` reads one request as JSON
//! on stdin and prints one [`FsOutcome`] as JSON on stdout, so a host whose agent is not
//! connected runs it through a Docker exec of the agent's binary and gets the same answer.

use serde::{Deserialize, Serialize};

use crate::ErrorReply;

/// One file operation. Paths are absolute (the host checks them before they are sent).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum FsRequest {
    /// What is at `path`, not following a symlink there.
    Stat { path: String },
    /// The entries of the directory `path` (its descendants with `recursive`, depth first,
    /// each directory's entries by name), at most `limit`; never follows a symlink.
    List {
        path: String,
        recursive: bool,
        limit: u64,
        budget: WalkBudget,
    },
    /// Makes the directory `path` (and its missing parents with `parents`). An existing
    /// directory is fine with `parents`, `EEXIST` without.
    Mkdir { path: String, parents: bool },
    /// Renames `from` to `to` (one `rename(2)`, so within one file system). An existing `to`
    /// is refused (`EEXIST`) unless `overwrite`, which still never replaces a directory by a
    /// file or a file by a directory.
    Move {
        from: String,
        to: String,
        overwrite: bool,
    },
    /// Removes `path`: a file or symlink, an empty directory, or with `recursive` a whole
    /// tree (never following a symlink out of it).
    Remove { path: String, recursive: bool },
    /// Lines `offset..offset + limit` (0-based) of a text file, without their line ends;
    /// stops early past `max_bytes` of text.
    ReadLines {
        path: String,
        offset: u64,
        limit: u64,
        max_bytes: u64,
    },
    /// The lines under `path` (a file, or every regular file below a directory whose path
    /// relative to it matches `glob`) that contain `pattern`, literally or as a regular
    /// expression, as `grep -rn` would list them. Files that look binary (a NUL in their
    /// first 8 KiB) are skipped.
    Search {
        path: String,
        pattern: String,
        regex: bool,
        ignore_case: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        glob: Option<String>,
        max_results: u64,
        budget: WalkBudget,
    },
    /// The paths below the directory `path` whose path relative to it matches `pattern`
    /// (`*` within a component, `**` across them, `?`, `[…]`, `{a,b}`).
    Glob {
        path: String,
        pattern: String,
        max_results: u64,
        budget: WalkBudget,
    },
    /// Replaces `old` by `new` in the text file `path`: exactly once (refused when `old` is
    /// missing or found more than once) or, with `replace_all`, everywhere. The file is
    /// replaced atomically and keeps its mode and owner.
    Edit {
        path: String,
        old: String,
        new: String,
        replace_all: bool,
    },
}

/// How far a walk may go before it stops and says `truncated`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WalkBudget {
    /// Entries looked at, matched or not.
    pub max_visits: u64,
    /// Milliseconds from the request's arrival.
    pub max_ms: u64,
}

/// The answer to an [`FsRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "answer", rename_all = "snake_case")]
pub enum FsAnswer {
    /// Stat, mkdir, move (the entry at its new path).
    Entry { entry: FsEntry },
    /// List.
    Entries {
        entries: Vec<FsEntry>,
        truncated: bool,
    },
    /// Remove: how many entries went.
    Removed { removed: u64 },
    /// Read lines: `next_offset` is where to read on, absent at the end of the file.
    Lines {
        lines: Vec<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        next_offset: Option<u64>,
    },
    /// Search.
    Matches {
        matches: Vec<FsMatch>,
        truncated: bool,
    },
    /// Glob.
    Paths { paths: Vec<String>, truncated: bool },
    /// Edit: how many times `old` was replaced.
    Edited { replacements: u64 },
}

/// What is at a path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsEntry {
    pub path: String,
    pub kind: FsKind,
    pub size: u64,
    /// Permission bits with setuid, setgid and sticky (`st_mode & 0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Last modification, in milliseconds since the Unix epoch.
    pub modified_ms: i64,
    /// A symlink's target, as stored in the link.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link_target: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FsKind {
    File,
    Directory,
    Symlink,
    Other,
}

/// One line a search found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsMatch {
    pub path: String,
    /// 1-based, as `grep -n` counts.
    pub line: u64,
    pub text: String,
}

/// A whole small file written by the agent ([`crate::Message::WriteFile`]): a new file next
/// to `path` renamed over it, so a reader sees the old bytes or the new ones, never a part.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteFileRequest {
    pub path: String,
    /// Permission bits; absent: an existing regular file's, else 0644.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<u32>,
    /// Creates missing parent directories (0755), else a missing one is `ENOENT`.
    pub parents: bool,
}

/// A small file read whole by the agent ([`crate::Message::ReadFile`]), following symlinks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadFileRequest {
    pub path: String,
    /// A larger file is not read: its answer has `complete: false` and no bytes.
    pub max_bytes: u64,
}

/// The head of a [`crate::Message::FileContent`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileContent {
    /// The file read (what `path` leads to), its size the bytes read when `complete`.
    pub entry: FsEntry,
    /// The bytes follow; `false`: the file is larger than `max_bytes`.
    pub complete: bool,
}

/// What `monza-agent --fs` prints: the answer, or why there is none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FsOutcome {
    Ok(FsAnswer),
    Error(ErrorReply),
}
