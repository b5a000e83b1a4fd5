//! File operations through the agent's connection: one request, one answer.

use std::time::Duration;

use monza_agent_protocol::{ErrorCode, ErrorReply, FsAnswer, FsRequest, Message};
use monza_domain::Result;

use super::Agents;
use super::processes::{reply_error, unexpected};

/// What the agent made of a file operation: its answer, or its refusal (a file error with
/// its errno, an edit that did not match, a request it could not take), for the caller to
/// word as the domain's error.
pub(crate) type FsReply = std::result::Result<FsAnswer, ErrorReply>;

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
        let slot = self.get(container_id)?;
        if slot.user.as_deref() != user {
            return None;
        }
        let Some(conn) = slot.connection().await else {
            slot.restart_in_background();
            return None;
        };
        let answer = conn
            .call(timeout, |id| Message::Fs {
                id,
                request: request.clone(),
            })
            .await;
        if conn.is_closed() {
            slot.restart_in_background();
        }
        Some(answer.and_then(|answer| match answer {
            Message::FsAnswer { answer, .. } => Ok(Ok(answer)),
            Message::Error { error, .. } => match error.code {
                ErrorCode::Fs
                | ErrorCode::NoMatch
                | ErrorCode::AmbiguousMatch
                | ErrorCode::BadRequest => Ok(Err(error)),
                _ => Err(reply_error(error, "a file operation")),
            },
            other => Err(unexpected(&other)),
        }))
    }
}
