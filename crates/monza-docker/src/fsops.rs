//! File operations beyond one file in or out (list, mkdir, move, remove, read by lines,
//! search, glob, edit): the agent does them inside the sandbox as the sandbox's user, with
//! nothing from the image. Through its connection when it is connected as that user, else
//! through a Docker exec of its binary (`/.monza-agent --fs`, the same code answering the
//! same way), so they also work while the agent is restarting, for an adopted sandbox, or
//! for a user other than the agent's.

use std::time::Duration;

use monza_agent_protocol::{
    ErrorCode, ErrorReply, FsAnswer, FsEntry, FsKind, FsOutcome, FsRequest, MAX_FRAME_LEN,
    WalkBudget,
};
use monza_domain::{
    Command, Error, ExecRequest, FileEntry, FileKind, FileProblem, FileStat, Result, WalkLimits,
};
use time::OffsetDateTime;

use crate::agent::{BINARY_PATH, FsReply};
use crate::runtime::DockerRuntime;
use crate::sink::Sink;

/// What the host waits past a walk's own time bound for its answer.
const ANSWER_GRACE: Duration = Duration::from_secs(5);

/// A walk's bound as the agent takes it.
pub(crate) fn budget(walk: WalkLimits) -> WalkBudget {
    WalkBudget {
        max_visits: walk.max_entries,
        max_ms: u64::try_from(walk.timeout.as_millis()).unwrap_or(u64::MAX),
    }
}

impl DockerRuntime {
    /// Does one file operation in the container as `user`; `walk` is the bound of a walk
    /// (list, search, glob), which the wait for the answer allows for.
    pub(crate) async fn fs(
        &self,
        container_id: &str,
        user: Option<&str>,
        request: FsRequest,
        walk: Option<WalkLimits>,
    ) -> Result<FsAnswer> {
        if !self.agents.enabled() {
            return Err(Error::conflict(
                "this file operation needs the sandbox agent, and this server runs with \
                 MONZA_AGENT=off",
            ));
        }
        self.adopt_in_background(container_id);
        let timeout = walk.map_or(self.settings.request_timeout, |walk| {
            walk.timeout + ANSWER_GRACE
        });
        let reply = match self.agents.fs(container_id, user, &request, timeout).await {
            Some(reply) => reply?,
            None => {
                self.fs_by_exec(container_id, user, &request, timeout)
                    .await?
            }
        };
        reply.map_err(fs_error)
    }

    /// Runs the agent's binary once through Docker exec for `request`.
    async fn fs_by_exec(
        &self,
        container_id: &str,
        user: Option<&str>,
        request: &FsRequest,
        timeout: Duration,
    ) -> Result<FsReply> {
        let stdin = serde_json::to_vec(request)
            .map_err(|e| Error::internal(format!("encoding a file operation: {e}")))?;
        let exec = ExecRequest {
            command: Command::Argv(vec![BINARY_PATH.to_owned(), "--fs".to_owned()]),
            workdir: Some("/".to_owned()),
            env: Default::default(),
            user: user.map(str::to_owned),
            max_output_bytes: MAX_FRAME_LEN,
            timeout: Some(timeout),
            stdin: Some(stdin),
        };
        let mut sink = Sink::collect(exec.max_output_bytes);
        let finished = self.run_exec(container_id, &exec, &mut sink).await?;
        let output = sink
            .into_output(finished)
            .ok_or_else(|| Error::internal("a collecting sink gave no output"))?;
        if output.timed_out {
            return Err(Error::unavailable(
                "sandbox",
                format!(
                    "the file operation did not finish within {} s",
                    timeout.as_secs()
                ),
            ));
        }
        // The shell's "not found" / "cannot execute": the binary is not mounted.
        if matches!(output.exit_code, 126 | 127) {
            return Err(Error::conflict(
                "this file operation needs the sandbox agent, and this sandbox was created \
                 without it",
            ));
        }
        match serde_json::from_str::<FsOutcome>(&output.stdout) {
            Ok(FsOutcome::Ok(answer)) => Ok(Ok(answer)),
            Ok(FsOutcome::Error(error)) => Ok(Err(error)),
            Err(e) => Err(Error::internal(format!(
                "the agent's binary answered a file operation with exit code {} and no \
                 answer ({e}); stderr: {}",
                output.exit_code,
                output.stderr.chars().take(500).collect::<String>()
            ))),
        }
    }
}

/// The domain's error for the agent's refusal of a file operation.
pub(crate) fn fs_error(reply: ErrorReply) -> Error {
    use crate::errno::*;
    let message = reply.message;
    match reply.code {
        ErrorCode::NoMatch => Error::file(FileProblem::NoMatch, message),
        ErrorCode::AmbiguousMatch => Error::file(FileProblem::AmbiguousMatch, message),
        ErrorCode::BadRequest => Error::invalid(message),
        ErrorCode::Fs => match reply.errno {
            Some(ENOENT) => Error::file(FileProblem::NotFound, message),
            Some(ENOTDIR) => Error::file(FileProblem::NotADirectory, message),
            Some(EISDIR) => Error::file(FileProblem::IsDirectory, message),
            Some(EACCES | EPERM | EROFS) => Error::file(FileProblem::PermissionDenied, message),
            Some(EEXIST) => Error::file(FileProblem::AlreadyExists, message),
            Some(ENOTEMPTY) => Error::file(FileProblem::NotEmpty, message),
            Some(ENAMETOOLONG | ELOOP) => Error::file(FileProblem::InvalidPath, message),
            Some(EINVAL) => Error::invalid(message),
            Some(EXDEV) => Error::conflict(format!(
                "{message}: the two paths are on different file systems; copy it instead"
            )),
            Some(EBUSY) => Error::conflict(format!("{message}: it is in use or a mount point")),
            Some(ENOSPC | EDQUOT) => Error::unavailable("sandbox", message),
            _ => Error::internal(format!("{message} (errno {:?})", reply.errno)),
        },
        other => Error::internal(format!("{message} (agent code {other:?})")),
    }
}

/// An entry as the domain sees it.
pub(crate) fn file_entry(entry: FsEntry) -> FileEntry {
    let name = entry
        .path
        .rsplit('/')
        .next()
        .filter(|name| !name.is_empty())
        .unwrap_or("/")
        .to_owned();
    FileEntry {
        stat: FileStat {
            name,
            size: entry.size,
            kind: match entry.kind {
                FsKind::File => FileKind::File,
                FsKind::Directory => FileKind::Directory,
                FsKind::Symlink => FileKind::Symlink,
                FsKind::Other => FileKind::Other,
            },
            mode: entry.mode,
            modified: OffsetDateTime::from_unix_timestamp_nanos(
                i128::from(entry.modified_ms) * 1_000_000,
            )
            .ok(),
            link_target: entry.link_target,
        },
        path: entry.path,
        uid: entry.uid,
        gid: entry.gid,
    }
}

/// The internal error of an answer of the wrong shape.
pub(crate) fn wrong_answer(answer: &FsAnswer) -> Error {
    Error::internal(format!(
        "the agent answered a file operation with the wrong kind of answer: {answer:?}"
    ))
}
