//! Background processes: started by one request, they run on after it (and after the
//! server: the sandbox's agent owns them), their output kept inside the sandbox and read
//! from any offset. Every request on them is activity of the sandbox; reading the output
//! while following it keeps the sandbox alive for as long as the reader is attached, and a
//! process started with `keep_alive` keeps it alive while it runs (see the activity pass).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration as StdDuration;

use bytes::Bytes;
use serde_json::json;

use super::{SandboxService, checked_command, container_of, truncate};
use crate::Access;
use crate::error::{Error, Result};
use crate::ports::ContainerRuntime;
use crate::runtime::{ProcessEvents, ProcessInfo, ProcessRequest, ProcessSignal, TerminalSize};
use crate::sandbox::{EventAction, NewEvent, SandboxId};
use crate::template::Command;

/// Output bytes a background process keeps per stream when neither its start nor the
/// server's configuration says: 1 MiB.
pub const DEFAULT_PROCESS_OUTPUT_BYTES: u64 = 1024 * 1024;
/// The fewest output bytes a start may ask to keep per stream.
pub const MIN_PROCESS_OUTPUT_BYTES: u64 = 1024;
/// The most output bytes a start may ask to keep per stream (the agent's own bound).
pub const MAX_PROCESS_OUTPUT_BYTES: u64 = 16 * 1024 * 1024;

/// A background process as a client asks for it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct StartProcess {
    /// The shell command line (`/bin/sh -c`).
    pub command: String,
    /// Working directory (absolute); the workspace folder when absent.
    pub workdir: Option<String>,
    /// Extra environment.
    pub env: BTreeMap<String, String>,
    /// Killed with every process it started after this long; absent or zero: never.
    pub timeout: Option<StdDuration>,
    /// Keep its stdin open for writes.
    pub stdin: bool,
    /// Keep the sandbox alive while it runs.
    pub keep_alive: bool,
    /// Output bytes kept per stream, [`MIN_PROCESS_OUTPUT_BYTES`] to
    /// [`MAX_PROCESS_OUTPUT_BYTES`]; the server's default when absent.
    pub output_limit: Option<u64>,
    /// Run it on a terminal of this size.
    pub pty: Option<TerminalSize>,
}

impl SandboxService {
    /// Starts a background process in a running sandbox.
    #[tracing::instrument(skip_all, fields(sandbox_id = %id), err(level = "info"))]
    pub async fn start_process(
        &self,
        access: &Access,
        id: SandboxId,
        start: StartProcess,
    ) -> Result<ProcessInfo> {
        let workdir = checked_command(&start.command, start.workdir.as_deref(), &start.env)?;
        let output_limit = start
            .output_limit
            .unwrap_or(self.config.process_output_bytes);
        if !(MIN_PROCESS_OUTPUT_BYTES..=MAX_PROCESS_OUTPUT_BYTES).contains(&output_limit) {
            return Err(Error::invalid(format!(
                "output_limit_bytes must be between {MIN_PROCESS_OUTPUT_BYTES} and \
                 {MAX_PROCESS_OUTPUT_BYTES}, not {output_limit}"
            )));
        }
        let sandbox = self.running(access, id).await?;
        let mut env = sandbox.remote_env.clone();
        env.extend(start.env);
        let request = ProcessRequest {
            command: Command::Shell(start.command.clone()),
            workdir: Some(workdir.unwrap_or_else(|| sandbox.workspace_mount.clone())),
            env,
            user: sandbox.remote_user.clone(),
            timeout: start.timeout.filter(|t| !t.is_zero()),
            stdin: start.stdin,
            keep_alive: start.keep_alive,
            output_limit,
            pty: start.pty,
        };
        let event = NewEvent::new(
            EventAction::Executed,
            json!({
                "command": truncate(&start.command, 256),
                "background": true,
                "keep_alive": start.keep_alive,
            }),
        );
        let sandbox = self.touch(&sandbox, Some(event)).await?;
        let cid = container_of(&sandbox)?;
        let started = self.runtime.start_process(cid, &request).await;
        self.or_vanished(&sandbox, started).await
    }

    /// A running sandbox's background processes, running and recently ended, by pid.
    #[tracing::instrument(skip_all, fields(sandbox_id = %id), err(level = "info"))]
    pub async fn processes(&self, access: &Access, id: SandboxId) -> Result<Vec<ProcessInfo>> {
        let sandbox = self.running(access, id).await?;
        let sandbox = self.touch(&sandbox, None).await?;
        let cid = container_of(&sandbox)?;
        let listed = self.runtime.processes(cid).await;
        self.or_vanished(&sandbox, listed).await
    }

    /// One background process of a running sandbox.
    pub async fn process(&self, access: &Access, id: SandboxId, pid: u32) -> Result<ProcessInfo> {
        self.processes(access, id)
            .await?
            .into_iter()
            .find(|p| p.pid == pid)
            .ok_or_else(|| no_process(id, pid))
    }

    /// Sends `signal` to a background process's process group.
    #[tracing::instrument(skip_all, fields(sandbox_id = %id, pid), err(level = "info"))]
    pub async fn signal_process(
        &self,
        access: &Access,
        id: SandboxId,
        pid: u32,
        signal: ProcessSignal,
    ) -> Result<()> {
        let sandbox = self.running(access, id).await?;
        let sandbox = self.touch(&sandbox, None).await?;
        let cid = container_of(&sandbox)?;
        let signalled = self.runtime.signal_process(cid, pid, signal).await;
        self.or_vanished(&sandbox, signalled)
            .await
            .map_err(|e| named(e, id, pid))
    }

    /// Kills a background process's group and forgets it: later requests for it are
    /// not-found (a `signal` of `KILL` instead keeps it listed, with its output).
    #[tracing::instrument(skip_all, fields(sandbox_id = %id, pid), err(level = "info"))]
    pub async fn remove_process(&self, access: &Access, id: SandboxId, pid: u32) -> Result<()> {
        let sandbox = self.running(access, id).await?;
        let sandbox = self.touch(&sandbox, None).await?;
        let cid = container_of(&sandbox)?;
        let removed = self.runtime.remove_process(cid, pid).await;
        self.or_vanished(&sandbox, removed)
            .await
            .map_err(|e| named(e, id, pid))
    }

    /// Writes `data` to a background process's stdin (started with `stdin`), then closes
    /// it when `close`.
    #[tracing::instrument(skip_all, fields(sandbox_id = %id, pid, bytes = data.len()), err(level = "info"))]
    pub async fn process_stdin(
        &self,
        access: &Access,
        id: SandboxId,
        pid: u32,
        data: Bytes,
        close: bool,
    ) -> Result<()> {
        let sandbox = self.running(access, id).await?;
        let sandbox = self.touch(&sandbox, None).await?;
        let cid = container_of(&sandbox)?;
        let written = self.runtime.process_stdin(cid, pid, data, close).await;
        self.or_vanished(&sandbox, written)
            .await
            .map_err(|e| named(e, id, pid))
    }

    /// Attaches to the terminal of a background process started with one: its output from
    /// `offsets` on, followed until it ends (keeping the sandbox alive meanwhile), and a
    /// handle to type into it and resize it. The sandbox is checked and its activity
    /// recorded once, here, not on every keystroke.
    #[tracing::instrument(skip_all, fields(sandbox_id = %id, pid), err(level = "info"))]
    pub async fn attach_terminal(
        &self,
        access: &Access,
        id: SandboxId,
        pid: u32,
        offsets: (u64, u64),
    ) -> Result<(Terminal, ProcessEvents)> {
        let sandbox = self.running(access, id).await?;
        let sandbox = self.touch(&sandbox, None).await?;
        let cid = container_of(&sandbox)?.to_owned();
        let listed = self.runtime.processes(&cid).await;
        let process = self
            .or_vanished(&sandbox, listed)
            .await?
            .into_iter()
            .find(|p| p.pid == pid)
            .ok_or_else(|| no_process(id, pid))?;
        if !process.pty {
            return Err(Error::conflict(format!(
                "background process {pid} was not started with a terminal (`pty`)"
            )));
        }
        let busy = self.busy.enter(sandbox.id);
        let events = self.runtime.process_output(&cid, pid, offsets, true).await;
        let events = self
            .or_vanished(&sandbox, events)
            .await
            .map_err(|e| named(e, id, pid))?;
        let events = self.checked_stream(sandbox, events, Some(busy));
        let terminal = Terminal {
            runtime: self.runtime.clone(),
            container_id: cid,
            sandbox: id,
            pid,
        };
        Ok((terminal, events))
    }

    /// A background process's output from `offsets` (stdout, stderr) on; with `follow`, on
    /// as it comes until the process ends, keeping the sandbox alive meanwhile. Dropping the
    /// stream stops the reading, never the process.
    #[tracing::instrument(skip_all, fields(sandbox_id = %id, pid), err(level = "info"))]
    pub async fn process_output(
        &self,
        access: &Access,
        id: SandboxId,
        pid: u32,
        offsets: (u64, u64),
        follow: bool,
    ) -> Result<ProcessEvents> {
        let sandbox = self.running(access, id).await?;
        let sandbox = self.touch(&sandbox, None).await?;
        let cid = container_of(&sandbox)?;
        let busy = follow.then(|| self.busy.enter(sandbox.id));
        let events = self.runtime.process_output(cid, pid, offsets, follow).await;
        let events = self
            .or_vanished(&sandbox, events)
            .await
            .map_err(|e| named(e, id, pid))?;
        Ok(self.checked_stream(sandbox, events, busy))
    }
}

/// A terminal attached by [`SandboxService::attach_terminal`]: what is typed into it and
/// its size. Its sandbox stays alive through the output stream attached with it.
pub struct Terminal {
    runtime: Arc<dyn ContainerRuntime>,
    container_id: String,
    sandbox: SandboxId,
    pid: u32,
}

impl std::fmt::Debug for Terminal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Terminal")
            .field("sandbox", &self.sandbox)
            .field("pid", &self.pid)
            .finish_non_exhaustive()
    }
}

impl Terminal {
    /// Types `data` into the terminal (written once this returns).
    pub async fn input(&self, data: Bytes) -> Result<()> {
        self.runtime
            .process_stdin(&self.container_id, self.pid, data, false)
            .await
            .map_err(|e| named(e, self.sandbox, self.pid))
    }

    /// Resizes the terminal; its processes get `SIGWINCH`.
    pub async fn resize(&self, size: TerminalSize) -> Result<()> {
        self.runtime
            .resize_process(&self.container_id, self.pid, size)
            .await
            .map_err(|e| named(e, self.sandbox, self.pid))
    }
}

/// A runtime's not-found for a pid, said with the sandbox's id.
fn named(error: Error, id: SandboxId, pid: u32) -> Error {
    match error {
        Error::NotFound(_) => no_process(id, pid),
        other => other,
    }
}

fn no_process(id: SandboxId, pid: u32) -> Error {
    Error::not_found(format!(
        "sandbox {id} has no background process {pid} (ended ones are kept for a while, then \
         forgotten)"
    ))
}
