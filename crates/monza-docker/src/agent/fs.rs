//! File operations through the agent's connection: one request, one answer.

use std::time::Duration;

use monza_agent_protocol::{
    ErrorCode, ErrorReply, FileContent, FsAnswer, FsRequest, Message, ReadFileRequest,
    WriteFileRequest,
};
use monza_domain::Result;

use super::Agents;
use super::processes::{reply_error, unexpected};

/// What the agent made of a file operation: its answer, or its refusal (a file error with
/// its errno, an edit that did not match, a request it could not take), for the caller to
/// word as the domain's error.
pub(crate) type FsReply = std::result::Result<FsAnswer, ErrorReply>;

/// A small file the agent read: what it is and, when `complete`, its bytes.
pub(crate) type ReadReply = std::result::Result<(FileContent, Vec<u8>), ErrorReply>;

/// Whose agent may take a request.
#[derive(Clone, Copy)]
enum Runner<'a> {
    /// Only one running as this user (what it creates is that user's).
    As(Option<&'a str>),
    /// Any (a read, whose refusal the caller answers another way).
    Any,
}

impl Agents {
    /// Does `request` through the container's connected agent when it runs as `user`;
    /// `None` when it cannot (no agent, not connected, another user): the caller runs the
    /// agent's binary through Docker exec instead. A dead agent is restarted in the
    /// background. `Err` only when the exchange itself failed.
    pub(crate) async fn fs(
        &self,
        container_id: &str,
        user: Option<&str>,
        request: &FsRequest,
        timeout: Duration,
    ) -> Option<Result<FsReply>> {
        let answer = self
            .exchange(container_id, Runner::As(user), timeout, |id| Message::Fs {
                id,
                request: request.clone(),
            })
            .await?;
        Some(answer.and_then(fs_reply))
    }

    /// Writes a small file whole through the connected agent running as `user`; `None` as
    /// for [`Agents::fs`].
    pub(crate) async fn write_file(
        &self,
        container_id: &str,
        user: Option<&str>,
        request: WriteFileRequest,
        data: Vec<u8>,
        timeout: Duration,
    ) -> Option<Result<FsReply>> {
        let answer = self
            .exchange(container_id, Runner::As(user), timeout, |id| {
                Message::WriteFile { id, request, data }
            })
            .await?;
        Some(answer.and_then(fs_reply))
    }

    /// Reads a small file whole through whichever agent is connected; `None` when none is.
    pub(crate) async fn read_file(
        &self,
        container_id: &str,
        request: ReadFileRequest,
        timeout: Duration,
    ) -> Option<Result<ReadReply>> {
        let answer = self
            .exchange(container_id, Runner::Any, timeout, |id| Message::ReadFile {
                id,
                request,
            })
            .await?;
        Some(answer.and_then(|answer| match answer {
            Message::FileContent { content, data, .. } => Ok(Ok((content, data))),
            other => refusal(other),
        }))
    }

    /// One request and its one answer frame over the connection of an agent `runner` allows.
    async fn exchange(
        &self,
        container_id: &str,
        runner: Runner<'_>,
        timeout: Duration,
        make: impl FnOnce(u64) -> Message,
    ) -> Option<Result<Message>> {
        let slot = self.get(container_id)?;
        if let Runner::As(user) = runner
            && slot.user.as_deref() != user
        {
            return None;
        }
        let Some(conn) = slot.connection().await else {
            slot.restart_in_background();
            return None;
        };
        let answer = conn.call(timeout, make).await;
        if conn.is_closed() {
            slot.restart_in_background();
        }
        Some(answer)
    }
}

/// An `FsAnswer` as the reply to a file request, or the agent's refusal.
fn fs_reply(answer: Message) -> Result<FsReply> {
    match answer {
        Message::FsAnswer { answer, .. } => Ok(Ok(answer)),
        other => refusal(other),
    }
}

/// An answer that is not the one asked for: the agent's refusal of the operation (for the
/// caller to word) or a failure of the exchange.
fn refusal<T>(answer: Message) -> Result<std::result::Result<T, ErrorReply>> {
    match answer {
        Message::Error { error, .. } => match error.code {
            ErrorCode::Fs
            | ErrorCode::NoMatch
            | ErrorCode::AmbiguousMatch
            | ErrorCode::BadRequest => Ok(Err(error)),
            _ => Err(reply_error(error, "a file operation")),
        },
        other => Err(unexpected(&other)),
    }
}
