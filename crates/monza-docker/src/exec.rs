//! Running a command in a sandbox: demultiplexed, capped output, exit code, timeout.
//!
//! Every command runs under a tiny `/bin/sh` wrapper that first writes its own pid to stderr
//! (one marker line this module strips) and then `exec`s the command, so the command keeps
//! that pid. On timeout, a second exec kills that process and all its descendants
//! (`SIGSTOP` first so none can fork away, then `SIGKILL`). The image needs `/bin/sh`.
//!
//! Output beyond `max_output_bytes` is read and dropped, never buffered: the command is not
//! blocked on a full pipe and memory stays bounded whatever it prints.

use std::time::{Duration, Instant};

use bytes::Bytes;
use docker_api::Exec;
use docker_api::conn::TtyChunk;
use docker_api::opts::{ExecCreateOpts, ExecStartOpts};
use futures::{AsyncWriteExt, StreamExt};
use monza_domain::{ExecOutput, ExecRequest, OutputStream, Result};

use crate::error::{Failure, bounded};
use crate::runtime::DockerRuntime;
use crate::sink::{Finished, Sink, consumer_gone};

/// The marker line the wrapper writes to stderr before running the command.
const PID_MARKER: &[u8] = b"__monza_exec_pid=";
/// Longest marker line (the marker, a pid and a newline).
const MARKER_MAX: usize = 40;
/// How long a killed command's stream may take to end before we stop waiting for it.
const KILL_GRACE: Duration = Duration::from_secs(2);

/// The wrapper: prints its pid, then becomes the command.
const WRAPPER: &str = "printf '__monza_exec_pid=%s\\n' $$ >&2; exec \"$@\"";

/// Kills a process and its descendants, found by scanning `/proc/*/stat` (the parent pid is
/// the second field after the `(comm)` one, which may contain spaces).
const KILL_TREE: &str = r#"ppid() { s=$(cat "$1" 2>/dev/null) || return 1; s=${s##*) }; set -- $s; echo "$2"; }
k() { local f p; kill -STOP "$1" 2>/dev/null
  for f in /proc/[0-9]*/stat; do p=${f#/proc/}; p=${p%/stat}
    [ "$(ppid "$f")" = "$1" ] && k "$p"; done
  kill -KILL "$1" 2>/dev/null; kill -CONT "$1" 2>/dev/null; }
k "$1""#;

impl DockerRuntime {
    pub(crate) async fn run_exec(
        &self,
        container_id: &str,
        request: &ExecRequest,
        sink: &mut Sink,
    ) -> Result<Finished> {
        let what = format!("running a command in container {container_id}");
        let host = &self.settings.host;
        let started = Instant::now();
        let timeout = request
            .timeout
            .unwrap_or(self.settings.default_exec_timeout);

        let mut argv = vec![
            "/bin/sh".to_owned(),
            "-c".to_owned(),
            WRAPPER.to_owned(),
            "monza-exec".to_owned(),
        ];
        argv.extend(request.command.argv());
        let env: Vec<String> = request
            .env
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let mut opts = ExecCreateOpts::builder()
            .command(argv)
            .attach_stdin(request.stdin.is_some())
            .attach_stdout(true)
            .attach_stderr(true)
            .env(env);
        if let Some(workdir) = &request.workdir {
            opts = opts.working_dir(workdir);
        }
        if let Some(user) = &request.user {
            opts = opts.user(user);
        }
        let opts = opts.build();

        let bound = self.settings.request_timeout;
        let exec = bounded(
            bound,
            Exec::create(self.docker.clone(), container_id, &opts),
        )
        .await
        .map_err(|f| f.into_domain(host, &what))?;
        let (stream, mut stdin) = bounded(bound, exec.start(&ExecStartOpts::default()))
            .await
            .map_err(|f| f.into_domain(host, &what))?
            .split();
        tokio::pin!(stream);
        // Fed beside the output, so a command that prints before it reads (or never reads)
        // cannot block on a full pipe while we block on its stdin. Closing our half of the
        // connection closes the command's stdin. A command that exits without reading it
        // all makes the write fail, which is not an error of the command's.
        let feed = async {
            if let Some(bytes) = &request.stdin {
                if let Err(e) = stdin.write_all(bytes).await {
                    tracing::debug!(container_id, error = %e, "a command's stdin was not read in full");
                }
                let _ = stdin.close().await;
            }
        };
        tokio::pin!(feed);
        let mut fed = request.stdin.is_none();

        let mut marker = PidMarker::default();
        let mut gone = false;
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let mut timed_out = false;
        let grace = tokio::time::sleep(Duration::MAX / 4);
        tokio::pin!(grace);
        loop {
            tokio::select! {
                chunk = stream.next(), if sink.ready() => {
                    match chunk {
                        None if gone => return Err(consumer_gone()),
                        None => break,
                        Some(Ok(TtyChunk::StdOut(bytes))) => sink.push(OutputStream::Stdout, bytes.into()),
                        Some(Ok(TtyChunk::StdErr(bytes))) => sink.push(OutputStream::Stderr, marker.stderr(&bytes)),
                        Some(Ok(TtyChunk::StdIn(_))) => {}
                        Some(Err(e)) => return Err(Failure::from(e).into_domain(host, &what)),
                    }
                }
                // The consumer went away: the command goes too (with what it started), once
                // its pid is known (the wrapper's first line, read above if not yet).
                live = sink.drive() => gone = !live,
                () = &mut deadline, if !timed_out => {
                    timed_out = true;
                    grace.as_mut().reset(tokio::time::Instant::now() + KILL_GRACE);
                    match marker.pid {
                        Some(pid) => self.kill_tree(container_id, pid).await,
                        None => tracing::warn!(container_id, "exec timed out before it reported its pid"),
                    }
                }
                () = &mut grace, if timed_out => {
                    tracing::warn!(container_id, "killed exec's output did not end; leaving it");
                    break;
                }
                () = &mut feed, if !fed => fed = true,
            }
            if gone && let Some(pid) = marker.pid {
                self.kill_tree(container_id, pid).await;
                return Err(consumer_gone());
            }
        }

        sink.push(OutputStream::Stderr, marker.finish());
        let exit_code = self
            .exit_code(&exec, timed_out)
            .await
            .map_err(|f| f.into_domain(host, &what))?;
        Ok(Finished {
            exit_code,
            timed_out,
            duration: started.elapsed(),
        })
    }

    /// The exec's exit code from its inspect; the engine may record it a moment after the
    /// output ends, so a still-running exec is asked again briefly. -1 when there is none.
    async fn exit_code(&self, exec: &Exec, timed_out: bool) -> Result<i64, Failure> {
        for attempt in 0..50 {
            let inspect = bounded(self.settings.request_timeout, exec.inspect()).await?;
            if inspect.running != Some(true) {
                return Ok(inspect.exit_code.map_or(-1, |c| c as i64));
            }
            if timed_out && attempt >= 10 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(if attempt < 10 { 2 } else { 20 })).await;
        }
        Ok(-1)
    }

    /// Kills `pid` and its descendants in the container, as root. Best effort: a failure is
    /// logged (the caller stops waiting after a grace period anyway).
    async fn kill_tree(&self, container_id: &str, pid: u32) {
        let opts = ExecCreateOpts::builder()
            .command(["/bin/sh", "-c", KILL_TREE, "monza-kill", &pid.to_string()])
            .attach_stdout(true)
            .attach_stderr(true)
            .user("0")
            .build();
        let kill = async {
            let exec = Exec::create(self.docker.clone(), container_id, &opts).await?;
            let mut stream = exec.start(&ExecStartOpts::default()).await?;
            while stream.next().await.is_some() {}
            Ok::<(), docker_api::Error>(())
        };
        if let Err(e) = bounded(self.settings.request_timeout, kill).await {
            tracing::warn!(container_id, pid, error = ?e, "killing a timed-out exec failed");
        }
    }
}

/// A buffer that keeps at most `cap` bytes and remembers whether it dropped any.
#[derive(Debug)]
struct Capped {
    buf: Vec<u8>,
    cap: usize,
    truncated: bool,
}

impl Capped {
    fn new(cap: usize) -> Self {
        Self {
            buf: Vec::with_capacity(cap.min(64 * 1024)),
            cap,
            truncated: false,
        }
    }

    fn push(&mut self, bytes: &[u8]) {
        let room = self.cap - self.buf.len();
        if bytes.len() > room {
            self.truncated = true;
        }
        self.buf.extend_from_slice(&bytes[..bytes.len().min(room)]);
    }

    /// The text kept. A cut made by the cap never splits a character: the bytes of a
    /// character the cap cut short are dropped rather than shown as U+FFFD.
    fn into_text(mut self) -> String {
        if self.truncated {
            let tail = incomplete_tail(&self.buf);
            self.buf.truncate(self.buf.len() - tail);
        }
        text(self.buf)
    }
}

/// How many bytes at the end of `buf` start a UTF-8 character they do not finish (0 to 3).
fn incomplete_tail(buf: &[u8]) -> usize {
    // A character is at most 4 bytes: look back at most 3 for the lead byte of the last one.
    for back in 1..=buf.len().min(3) {
        let byte = buf[buf.len() - back];
        if byte & 0b1100_0000 == 0b1000_0000 {
            continue; // a continuation byte: keep looking for its lead
        }
        let needs = match byte {
            0xC0..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF7 => 4,
            _ => return 0, // ASCII or not a lead byte at all: nothing to cut
        };
        return if needs > back { back } else { 0 };
    }
    0
}

/// Strips the wrapper's pid line from the start of stderr and keeps the pid.
#[derive(Debug)]
pub(crate) struct PidMarker {
    /// stderr bytes held back while they may still be the marker line; `None` once decided.
    pending: Option<Vec<u8>>,
    pid: Option<u32>,
}

impl Default for PidMarker {
    fn default() -> Self {
        Self {
            pending: Some(Vec::new()),
            pid: None,
        }
    }
}

impl PidMarker {
    /// What of `bytes` is the command's own stderr (possibly nothing yet, while the marker
    /// line may still be arriving).
    fn stderr(&mut self, bytes: &[u8]) -> Bytes {
        let Some(mut pending) = self.pending.take() else {
            return Bytes::copy_from_slice(bytes);
        };
        pending.extend_from_slice(bytes);
        if let Some(newline) = pending.iter().position(|b| *b == b'\n') {
            if let Some(pid) = pending[..newline].strip_prefix(PID_MARKER) {
                self.pid = std::str::from_utf8(pid).ok().and_then(|p| p.parse().ok());
                return Bytes::from(pending).slice(newline + 1..);
            }
        } else if pending.len() < MARKER_MAX
            && PID_MARKER.starts_with(&pending[..pending.len().min(PID_MARKER.len())])
        {
            self.pending = Some(pending);
            return Bytes::new();
        }
        // Not the marker after all (a wrapper that could not run): ordinary stderr.
        Bytes::from(pending)
    }

    /// What was held back when the output ended.
    fn finish(&mut self) -> Bytes {
        self.pending.take().map(Bytes::from).unwrap_or_default()
    }
}

/// stdout, stderr and both in arrival order, each capped.
///
/// Memory stays near the cap: while only one stream has spoken, its own buffer would equal
/// the combined one, so it is not kept; it is made (a copy of the combined output so far)
/// only when the other stream first speaks.
#[derive(Debug)]
pub(crate) struct Collector {
    output: Capped,
    /// The one stream that has spoken so far, while there is only one.
    only: Option<OutputStream>,
    /// Each stream's own buffer, once both have spoken.
    split: Option<(Capped, Capped)>,
    cap: usize,
}

impl Collector {
    pub(crate) fn new(cap: usize) -> Self {
        Self {
            output: Capped::new(cap),
            only: None,
            split: None,
            cap,
        }
    }

    pub(crate) fn push(&mut self, source: OutputStream, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        if self.split.is_none() {
            match self.only {
                None => self.only = Some(source),
                Some(only) if only == source => {}
                Some(only) => {
                    // The second stream speaks: the first one's buffer is what was kept so far.
                    let first = Capped {
                        buf: self.output.buf.clone(),
                        cap: self.cap,
                        truncated: self.output.truncated,
                    };
                    let empty = Capped::new(self.cap);
                    self.split = Some(match only {
                        OutputStream::Stdout => (first, empty),
                        OutputStream::Stderr => (empty, first),
                    });
                    self.only = None;
                }
            }
        }
        self.output.push(bytes);
        if let Some((stdout, stderr)) = &mut self.split {
            match source {
                OutputStream::Stdout => stdout.push(bytes),
                OutputStream::Stderr => stderr.push(bytes),
            }
        }
    }

    pub(crate) fn finish(self, exit_code: i64, timed_out: bool, duration: Duration) -> ExecOutput {
        let truncated = self.output.truncated
            || self
                .split
                .as_ref()
                .is_some_and(|(o, e)| o.truncated || e.truncated);
        let output = self.output.into_text();
        let (stdout, stderr) = match (self.split, self.only) {
            (Some((o, e)), _) => (o.into_text(), e.into_text()),
            (None, Some(OutputStream::Stdout)) => (output.clone(), String::new()),
            (None, Some(OutputStream::Stderr)) => (String::new(), output.clone()),
            (None, None) => (String::new(), String::new()),
        };
        ExecOutput {
            output,
            stdout,
            stderr,
            exit_code,
            truncated,
            timed_out,
            duration,
        }
    }
}

/// The bytes as text, without a copy when they are valid UTF-8 (invalid sequences become
/// U+FFFD).
fn text(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Docker path's pipeline: stderr through the pid marker, then the collector.
    struct Marked {
        marker: PidMarker,
        out: Collector,
    }

    impl Marked {
        fn new(cap: usize) -> Self {
            Self {
                marker: PidMarker::default(),
                out: Collector::new(cap),
            }
        }

        fn stdout(&mut self, bytes: &[u8]) {
            self.out.push(OutputStream::Stdout, bytes);
        }

        fn stderr(&mut self, bytes: &[u8]) {
            let rest = self.marker.stderr(bytes);
            self.out.push(OutputStream::Stderr, &rest);
        }

        fn finish(mut self, exit_code: i64, timed_out: bool, duration: Duration) -> ExecOutput {
            let rest = self.marker.finish();
            self.out.push(OutputStream::Stderr, &rest);
            self.out.finish(exit_code, timed_out, duration)
        }
    }

    /// A pipeline keeping `cap` bytes that has already read the wrapper's pid line.
    fn past_the_marker(cap: usize) -> Marked {
        let mut c = Marked::new(cap);
        c.stderr(b"__monza_exec_pid=7\n");
        assert_eq!(c.marker.pid, Some(7));
        c
    }

    #[test]
    fn marker_is_stripped_even_when_split_across_chunks() {
        let mut c = Marked::new(100);
        c.stderr(b"__monza_ex");
        c.stdout(b"out1 ");
        c.stderr(b"ec_pid=42\nerr1 ");
        c.stdout(b"out2");
        assert_eq!(c.marker.pid, Some(42));
        let out = c.finish(3, false, Duration::ZERO);
        assert_eq!(out.stdout, "out1 out2");
        assert_eq!(out.stderr, "err1 ");
        assert_eq!(out.output, "out1 err1 out2");
        assert_eq!(out.exit_code, 3);
        assert!(!out.truncated);
    }

    #[test]
    fn stderr_without_marker_is_kept() {
        let mut c = Marked::new(100);
        c.stderr(b"sh: not found\n");
        assert_eq!(c.marker.pid, None);
        let out = c.finish(127, false, Duration::ZERO);
        assert_eq!(out.stderr, "sh: not found\n");
        assert_eq!(out.output, "sh: not found\n");
    }

    #[test]
    fn one_stream_alone_is_kept_once_and_copied_at_the_end() {
        let mut c = past_the_marker(8);
        c.stdout(b"abcdefghij");
        assert!(
            c.out.split.is_none(),
            "a lone stream has no buffer of its own"
        );
        assert_eq!(c.out.output.buf.len(), 8);
        let out = c.finish(0, false, Duration::ZERO);
        assert_eq!(out.output, "abcdefgh");
        assert_eq!(out.stdout, "abcdefgh");
        assert_eq!(out.stderr, "");
        assert!(out.truncated);
    }

    #[test]
    fn a_second_stream_starts_with_the_first_ones_output_so_far() {
        let mut c = past_the_marker(100);
        c.stderr(b"e1 ");
        c.stdout(b"o1 ");
        c.stderr(b"e2");
        let out = c.finish(0, false, Duration::ZERO);
        assert_eq!(out.output, "e1 o1 e2");
        assert_eq!(out.stdout, "o1 ");
        assert_eq!(out.stderr, "e1 e2");
        assert!(!out.truncated);
    }

    #[test]
    fn invalid_utf8_becomes_replacement_characters() {
        let mut c = past_the_marker(100);
        c.stdout(b"a\xffb");
        let out = c.finish(0, false, Duration::ZERO);
        assert_eq!(out.output, "a\u{fffd}b");
        assert_eq!(out.stdout, "a\u{fffd}b");
    }

    #[test]
    fn each_buffer_is_capped_and_flags_truncation() {
        let mut c = past_the_marker(4);
        c.stdout(b"abc");
        c.stderr(b"xyz");
        c.stdout(&[b'a'; 1000]);
        let out = c.finish(0, false, Duration::ZERO);
        assert_eq!(out.output, "abcx");
        assert_eq!(out.stdout, "abca");
        assert_eq!(out.stderr, "xyz");
        assert!(out.truncated);
    }

    #[test]
    fn a_cut_never_splits_a_character() {
        // "é" is 2 bytes, "€" 3, "😀" 4: a cap of 5 falls inside each of them in turn.
        for (input, kept) in [
            ("abcdé", "abcd"),
            ("abc€", "abc"),
            ("ab€", "ab€"), // fits exactly: whole
            ("ab😀", "ab"),
            ("abcde€", "abcde"),
        ] {
            let mut c = past_the_marker(5);
            c.stdout(input.as_bytes());
            c.stdout(b"more");
            let out = c.finish(0, false, Duration::ZERO);
            assert_eq!(out.output, kept, "{input:?}");
            assert_eq!(out.stdout, kept, "{input:?}");
            assert!(out.truncated);
        }
        // Not cut by the cap: invalid bytes at the end are the command's and stay visible.
        let mut c = past_the_marker(100);
        c.stdout(b"ab\xe2\x82");
        assert_eq!(c.finish(0, false, Duration::ZERO).output, "ab\u{fffd}");
    }

    #[test]
    fn the_incomplete_tail_is_found_from_every_lead_byte() {
        assert_eq!(incomplete_tail(b""), 0);
        assert_eq!(incomplete_tail(b"a"), 0);
        assert_eq!(incomplete_tail("é".as_bytes()), 0);
        assert_eq!(incomplete_tail(&"é".as_bytes()[..1]), 1);
        assert_eq!(incomplete_tail(&"€".as_bytes()[..2]), 2);
        assert_eq!(incomplete_tail(&"😀".as_bytes()[..3]), 3);
        assert_eq!(incomplete_tail("😀".as_bytes()), 0);
        assert_eq!(incomplete_tail(b"\x80\x80\x80"), 0);
    }
}
