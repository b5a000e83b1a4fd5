//! The JSON the API speaks: request and response bodies, separate from the domain types so
//! the wire format is stated here once and changes only on purpose.

use std::collections::BTreeMap;
use std::time::Duration;

use monza_domain::{
    CreateSandbox, EventAction, ExecOutput, ExecuteCommand, PortMapping, Sandbox, SandboxEvent,
    SandboxName, SandboxStatus, TemplateName,
};
use serde::{Deserialize, Serialize};
use time::{OffsetDateTime, UtcOffset};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::error::{ApiError, ErrorDetail};

/// `POST /api/sandboxes`. Both fields are optional; an empty body is allowed too.
///
/// A field it does not name is refused (400), so a misspelt one is never silently ignored.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSandboxRequest {
    /// Display name (1 to 128 characters, trimmed, no control characters); default
    /// `sandbox-<template>`.
    #[schema(
        example = "my-sandbox",
        min_length = 1,
        max_length = 128,
        pattern = r"^[^\u0000-\u001f\u007f-\u009f]*[^\u0000-\u0020\u007f-\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000][^\u0000-\u001f\u007f-\u009f]*$"
    )]
    pub name: Option<String>,
    /// Template from the catalog; default the server's default template. The document
    /// served by a running server lists its templates as this field's `enum`.
    #[schema(
        min_length = 1,
        max_length = 128,
        pattern = r"^(?!\.{1,2}$)[A-Za-z0-9._-]+$"
    )]
    pub template: Option<String>,
}

impl CreateSandboxRequest {
    /// Validates the fields into the domain's request.
    pub fn into_domain(self) -> Result<CreateSandbox, ApiError> {
        Ok(CreateSandbox {
            name: self.name.as_deref().map(SandboxName::new).transpose()?,
            template: self
                .template
                .as_deref()
                .map(TemplateName::new)
                .transpose()?,
        })
    }
}

/// A published port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PortMappingResponse {
    /// Identity of the mapping.
    pub id: Uuid,
    /// The sandbox it belongs to.
    pub sandbox_id: Uuid,
    /// Port on the host (where clients connect).
    pub host_port: u16,
    /// Port inside the container.
    pub container_port: u16,
}

impl From<&PortMapping> for PortMappingResponse {
    fn from(p: &PortMapping) -> Self {
        Self {
            id: p.id,
            sandbox_id: p.sandbox_id.as_uuid(),
            host_port: p.host_port,
            container_port: p.container_port,
        }
    }
}

/// A sandbox, in any status. Timestamps are RFC 3339 in UTC.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SandboxResponse {
    /// Identity (a UUID).
    pub id: Uuid,
    /// Display name.
    pub name: String,
    /// `creating`, `running`, `expired`, `deleted` or `error`.
    #[schema(example = "running", schema_with = status_schema)]
    pub status: String,
    /// Why it is in `error`, or how it ended, when known.
    pub status_reason: Option<String>,
    /// The template it was made from.
    pub template: String,
    /// The tenant that owns it.
    pub tenant: String,
    /// The Docker container id, once created.
    pub container_id: Option<String>,
    /// The image the container runs.
    pub image: String,
    /// The workspace folder inside the container.
    #[schema(example = "/workspace")]
    pub workspace_mount: String,
    /// The template's devcontainer.json.
    #[schema(value_type = Object)]
    pub devcontainer_config: serde_json::Value,
    /// Environment of the container.
    pub env_vars: BTreeMap<String, String>,
    /// Published ports.
    pub port_mappings: Vec<PortMappingResponse>,
    /// Last heartbeat or use.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub last_activity: OffsetDateTime,
    /// Creation time.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
    /// When it expires unless used or heartbeated.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub expires_at: OffsetDateTime,
    /// When it was deleted or expired; null while live.
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub deleted_at: Option<OffsetDateTime>,
}

fn utc(t: OffsetDateTime) -> OffsetDateTime {
    t.to_offset(UtcOffset::UTC)
}

impl From<Sandbox> for SandboxResponse {
    fn from(s: Sandbox) -> Self {
        let deleted_at = s.deleted_at().map(utc);
        Self {
            id: s.id.as_uuid(),
            name: s.name.as_str().to_owned(),
            status: s.status().as_str().to_owned(),
            status_reason: s.status_reason().map(str::to_owned),
            template: s.template.as_str().to_owned(),
            tenant: s.tenant.as_str().to_owned(),
            container_id: s.container_id,
            image: s.image,
            workspace_mount: s.workspace_mount,
            devcontainer_config: s.devcontainer_config,
            env_vars: s.env_vars,
            port_mappings: s.port_mappings.iter().map(Into::into).collect(),
            last_activity: utc(s.last_activity),
            created_at: utc(s.created_at),
            expires_at: utc(s.expires_at),
            deleted_at,
        }
    }
}

/// One entry of a sandbox's event log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct EventResponse {
    /// The sandbox.
    pub sandbox_id: Uuid,
    /// `created`, `started`, `executed`, `uploaded`, `downloaded`, `deleted`, `expired` or
    /// `failed`.
    #[schema(example = "executed", schema_with = action_schema)]
    pub action: String,
    /// Details (the command, the path, the failure...); never file contents.
    #[schema(value_type = Object)]
    pub details: serde_json::Value,
    /// When it happened (RFC 3339, UTC).
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
}

impl From<SandboxEvent> for EventResponse {
    fn from(e: SandboxEvent) -> Self {
        Self {
            sandbox_id: e.sandbox_id.as_uuid(),
            action: e.action.as_str().to_owned(),
            details: e.details,
            created_at: utc(e.created_at),
        }
    }
}

/// `GET /api/sandboxes` query. Describes the query for the OpenAPI document; the handler
/// reads it strictly (`extract::strict_query`).
#[derive(Debug, Clone, Default, IntoParams)]
#[allow(dead_code)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// `live` (default: not deleted, not expired), `all`, or one status (`creating`,
    /// `running`, `expired`, `deleted`, `error`).
    #[param(example = "all", schema_with = status_filter_schema)]
    pub status: Option<String>,
}

/// `POST /api/sandboxes/{id}/execute`.
///
/// A field it does not name is refused (400): `{"command": "make", "timeout": 5}` must not
/// run for the default 10 minutes.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecuteRequest {
    /// The command line, run by `/bin/sh -c`. Must not be empty or only white space, and
    /// holds no NUL byte.
    #[schema(
        example = "ls -la",
        pattern = r"^[^\u0000]*[^\u0000\t\n\u000b\f\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000][^\u0000]*$"
    )]
    pub command: String,
    /// Output to keep, in bytes (default 65536; clamped to the server's maximum, 16 MiB by
    /// default).
    #[schema(minimum = 0, maximum = 18446744073709551615_u64)]
    #[serde(default, deserialize_with = "whole_number")]
    pub max_output_bytes: Option<u64>,
    /// Kill the command, and every process it started, after this many seconds (default
    /// 600; clamped to the server's maximum, 3600 by default). `0` means no timeout but the
    /// server's maximum. A command killed by its timeout answers `exitCode` 124 and
    /// `timed_out: true`.
    #[schema(minimum = 0, maximum = 18446744073709551615_u64)]
    #[serde(default, deserialize_with = "whole_number")]
    pub timeout_secs: Option<u64>,
    /// Working directory, absolute, without `..`, at most 3072 bytes (255 a component) (default: the
    /// sandbox's workspace folder).
    #[schema(
        example = "/workspace",
        max_length = 3072,
        pattern = r"^(?![^\u0000]*/\.\.(/|$))(/[^/\u0000]{0,255})+$"
    )]
    pub workdir: Option<String>,
    /// Extra environment variables: names not empty and without `=`, no NUL anywhere.
    #[schema(schema_with = env_schema)]
    pub env: Option<BTreeMap<String, String>>,
    /// Text fed to the command's stdin, which is then closed (default: an empty stdin).
    #[schema(example = "hello\n")]
    pub stdin: Option<String>,
}

/// An optional string that, when given, is a string: `null` is refused (the field is left
/// out instead), so "which of two fields was given" is never ambiguous.
fn not_null<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    String::deserialize(d).map(Some)
}

/// A required count, read as [`whole_number`] reads an optional one.
fn whole<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    use serde::de::Error as _;
    whole_number(d)?.ok_or_else(|| D::Error::custom("expected a whole number, not null"))
}

/// An optional count: JSON has one number type, so `1000.0` is the integer 1000 (as JSON
/// Schema's `integer` says); a fraction, a negative number or one past `u64` is refused.
pub(crate) fn whole_number<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<u64>, D::Error> {
    use serde::de::Error as _;
    match Option::<serde_json::Number>::deserialize(d)? {
        None => Ok(None),
        Some(n) => {
            if let Some(v) = n.as_u64() {
                return Ok(Some(v));
            }
            match n.as_f64() {
                // 2^64 is the first float past u64::MAX.
                Some(f) if f.fract() == 0.0 && (0.0..18_446_744_073_709_551_616.0).contains(&f) =>
                {
                    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                    Ok(Some(f as u64))
                }
                _ => Err(D::Error::custom(format!(
                    "invalid value {n}: expected a whole number from 0 to {}",
                    u64::MAX
                ))),
            }
        }
    }
}

impl From<ExecuteRequest> for ExecuteCommand {
    fn from(r: ExecuteRequest) -> Self {
        Self {
            command: r.command,
            max_output_bytes: r
                .max_output_bytes
                .map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
            timeout: r.timeout_secs.map(Duration::from_secs),
            workdir: r.workdir,
            env: r.env.unwrap_or_default(),
            stdin: r.stdin.map(String::into_bytes),
        }
    }
}

/// A duration in whole milliseconds, as every answer gives `duration_ms`.
pub(crate) fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// What a command did. `output`, `exitCode` and `truncated` are the shape LangChain
/// DeepAgents sandboxes expect.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ExecuteResponse {
    /// stdout and stderr combined, in arrival order.
    pub output: String,
    /// The exit code: 124 when the timeout killed it, -1 when it ended without one.
    #[serde(rename = "exitCode")]
    pub exit_code: i64,
    /// Output beyond `max_output_bytes` was dropped (never in the middle of a character:
    /// no text is longer than `max_output_bytes` bytes).
    pub truncated: bool,
    /// stdout alone.
    pub stdout: String,
    /// stderr alone.
    pub stderr: String,
    /// The timeout killed the command.
    pub timed_out: bool,
    /// How long it ran, in milliseconds.
    pub duration_ms: u64,
}

impl From<ExecOutput> for ExecuteResponse {
    fn from(o: ExecOutput) -> Self {
        Self {
            output: o.output,
            exit_code: o.exit_code,
            truncated: o.truncated,
            stdout: o.stdout,
            stderr: o.stderr,
            timed_out: o.timed_out,
            duration_ms: millis(o.duration),
        }
    }
}

/// One line of a streamed execute (`Accept: application/x-ndjson`; with
/// `Accept: text/event-stream` the same object is each event's `data`, the event named by
/// `type`). Output comes as `stdout`/`stderr` objects as the command writes it, with `data`
/// (UTF-8 text) or `data_base64` (bytes that are not UTF-8). The last object is `exit`, or
/// `error` when the output could not be read to its end. After 5 s without output a
/// `keepalive` object (an SSE comment) is sent; ignore it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ExecuteEvent {
    /// `stdout`, `stderr`, `exit`, `error` or `keepalive`.
    #[schema(example = "stdout")]
    #[serde(rename = "type")]
    pub kind: String,
    /// Output, when it is UTF-8 (a character is never split between two events).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
    /// Output that is not UTF-8, base64-encoded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_base64: Option<String>,
    /// `exit`: the exit code (124 when the timeout killed the command).
    #[serde(rename = "exitCode", default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i64>,
    /// `exit`: the timeout killed the command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timed_out: Option<bool>,
    /// `exit`: how long it ran, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// `error`: what went wrong, as in every error response.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<serde_json::Value>,
}

/// The multipart form of `POST /api/sandboxes/{id}/files/upload`.
#[derive(Debug, ToSchema)]
#[allow(dead_code)] // Only describes the form for the OpenAPI document.
pub struct UploadForm {
    /// The file (required). Its filename (a quoted-string: `\\` and `\"` escaped) is the
    /// name in the sandbox exactly, spaces and backslashes included, or the upload is refused
    /// (`invalid_path`: empty, `.`, `..`, a `/`, a control character, over 255 bytes); it
    /// never replaces a directory (`is_directory`).
    #[schema(value_type = String, format = Binary)]
    file: Vec<u8>,
    /// Destination directory, absolute, without `..`, at most 3072 bytes (255 a component),
    /// not under `/proc`, `/sys` or `/dev`, nor `/etc/hosts`, `/etc/hostname`,
    /// `/etc/resolv.conf` (the engine's mounts), `/etc/passwd` or `/etc/group`, and the file
    /// may not land over one of the engine's mounts; absent or empty: the sandbox's workspace
    /// folder.
    #[schema(value_type = String, required = false)]
    #[schema(
        example = "/workspace",
        max_length = 3072,
        pattern = r"^$|^(?!/(proc|sys|dev)(/|$)|/etc/(hosts|hostname|resolv\.conf|passwd|group)(/|$))(?![^\u0000]*/\.\.(/|$))(/[^/\u0000]{0,255})+$"
    )]
    path: Option<String>,
}

/// A file was uploaded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct UploadResponse {
    /// Always `ok`.
    #[schema(example = "ok")]
    pub status: String,
    /// Where the file is in the sandbox.
    #[schema(example = "/workspace/main.go")]
    pub path: String,
}

/// `GET /api/sandboxes/{id}/files/download` query. Describes the query for the OpenAPI
/// document; the handler reads it strictly (`extract::strict_query`).
#[derive(Debug, Clone, IntoParams)]
#[allow(dead_code)]
#[into_params(parameter_in = Query)]
pub struct DownloadQuery {
    /// The file, absolute, without `..`, at most 3072 bytes (255 a component), not under
    /// `/proc`, `/sys` or `/dev` (kernel file systems the file API cannot reach: use execute).
    #[param(
        example = "/workspace/main.go",
        max_length = 3072,
        pattern = r"^(?!/(proc|sys|dev)(/|$))(?![^\u0000]*/\.\.(/|$))(/[^/\u0000]{0,255})+$"
    )]
    pub path: String,
}

/// The query of `GET` and `HEAD` of `/api/sandboxes/{id}/files` and of `…/files/stat`.
/// Describes the query for the OpenAPI document; the handlers read it strictly.
#[derive(Debug, Clone, IntoParams)]
#[allow(dead_code)]
#[into_params(parameter_in = Query)]
pub struct FilePathQuery {
    /// The path, absolute, without `..`, at most 3072 bytes (255 a component), not under
    /// `/proc`, `/sys` or `/dev`.
    #[param(
        example = "/workspace/main.go",
        max_length = 3072,
        pattern = r"^(?!/(proc|sys|dev)(/|$))(?![^\u0000]*/\.\.(/|$))(/[^/\u0000]{0,255})+$"
    )]
    pub path: String,
}

/// The query of `PUT /api/sandboxes/{id}/files`. Describes the query for the OpenAPI
/// document; the handler reads it strictly.
#[derive(Debug, Clone, IntoParams)]
#[allow(dead_code)]
#[into_params(parameter_in = Query)]
pub struct PutFileQuery {
    /// Where the file goes: absolute, without `..`, at most 3072 bytes (255 a component);
    /// its last component is the name, stored exactly: not `.` or `..`, no control
    /// character (`invalid_path` otherwise).
    #[param(
        example = "/workspace/main.go",
        max_length = 3072,
        pattern = r"^(?!/(proc|sys|dev)(/|$))(?![^\u0000]*/\.\.(/|$))(?![^\u0000]*/\.$)(/[^/\u0000]{0,255})*/[^/\u0000-\u001f\u007f-\u009f]{1,255}$"
    )]
    pub path: String,
    /// Permission bits in octal, `000` to `777` (a leading `0` or `0o` is accepted). Absent:
    /// a file already there keeps its own, a new one is `0644`.
    #[param(example = "755", pattern = r"^(0o)?0?[0-7]{1,3}$")]
    pub mode: Option<String>,
    /// `true` creates missing directories on the way (owned by the sandbox's user, `0755`);
    /// `false` (the default) answers `file_not_found` for a missing parent.
    pub parents: Option<bool>,
}

/// The multipart form of `POST /api/sandboxes/{id}/files/batch/upload`.
#[derive(Debug, ToSchema)]
#[allow(dead_code)] // Only describes the form for the OpenAPI document.
pub struct BatchUploadForm {
    /// The files, one part each, all named `file`. A part's filename (a quoted-string: `\\`
    /// and `\"` escaped) is the file's absolute path in the sandbox, kept exactly; each is
    /// checked and written as `PUT …/files?path=` writes one.
    #[schema(value_type = Vec<String>, format = Binary, min_items = 1, max_items = 1000)]
    file: Vec<Vec<u8>>,
}

/// How every file of a batch upload is written.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // Only describes the query for the OpenAPI document.
pub struct BatchUploadQuery {
    /// Permission bits of every file, in octal (`644`, `0755`); absent: an existing file
    /// keeps its mode, a new one is 0644.
    #[param(example = "755", pattern = r"^(0o)?0?[0-7]{1,3}$")]
    mode: Option<String>,
    /// Create missing parent directories (owned by the sandbox's user); `false` by default.
    parents: Option<bool>,
}

/// Each file of a batch upload, in the form's order.
#[derive(Debug, Serialize, ToSchema)]
pub struct BatchUploadResponse {
    pub results: Vec<BatchUploadResult>,
}

/// One file of a batch upload: written (`size`, `mode`) or not (`error`).
#[derive(Debug, Serialize, ToSchema)]
pub struct BatchUploadResult {
    /// Where it is (normalized), or the filename as sent when it was refused.
    #[schema(example = "/workspace/src/main.rs")]
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(example = 42)]
    pub size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(example = "0644")]
    pub mode: Option<String>,
    /// Why it was not written; absent when it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorDetail>,
}

/// The paths of a batch download.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchDownloadRequest {
    /// Absolute paths of regular files, at most `MONZA_FILE_MAX_RESULTS` (1000).
    #[schema(min_items = 1, max_items = 1000, example = json!(["/workspace/a.txt", "/workspace/b.txt"]))]
    pub paths: Vec<String>,
}

/// Each path of a batch download, in the order asked.
#[derive(Debug, Serialize, ToSchema)]
pub struct BatchDownloadResponse {
    pub results: Vec<BatchDownloadResult>,
}

/// One path of a batch download: its content or its error.
#[derive(Debug, Serialize, ToSchema)]
pub struct BatchDownloadResult {
    /// The path (normalized), or as asked when it was refused.
    #[schema(example = "/workspace/a.txt")]
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(example = 5)]
    pub size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(example = "0644")]
    pub mode: Option<String>,
    /// The file's bytes, base64 (standard alphabet, padded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(example = "aGVsbG8=")]
    pub content_base64: Option<String>,
    /// Why there is no content; absent when there is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorDetail>,
}

/// A file was written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct WrittenFileResponse {
    /// Where it is.
    #[schema(example = "/workspace/run.sh")]
    pub path: String,
    /// Its size in bytes.
    #[schema(example = 42)]
    pub size: u64,
    /// Its permission bits, in octal.
    #[schema(example = "0755")]
    pub mode: String,
}

/// What a path in a sandbox is. A symbolic link is described itself, not what it points to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FileStatResponse {
    /// The path asked about.
    #[schema(example = "/workspace/run.sh")]
    pub path: String,
    /// Its last component.
    #[schema(example = "run.sh")]
    pub name: String,
    /// `file`, `directory`, `symlink` or `other` (a device, socket or pipe).
    #[serde(rename = "type")]
    #[schema(example = "file")]
    pub kind: String,
    /// Size in bytes (of the link itself for a symbolic link).
    #[schema(example = 42)]
    pub size: u64,
    /// Permission bits (with setuid, setgid and sticky), in octal.
    #[schema(example = "0755")]
    pub mode: String,
    /// Last change, RFC 3339 in UTC, when the file system reports one.
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub modified_at: Option<OffsetDateTime>,
    /// Where a symbolic link points, resolved to an absolute path inside the sandbox (the
    /// engine reports it so).
    #[schema(example = "/workspace/bin/tool")]
    pub link_target: Option<String>,
}

impl FileStatResponse {
    /// The answer for `path`.
    pub fn new(path: String, stat: monza_domain::FileStat) -> Self {
        Self {
            path,
            name: stat.name,
            kind: stat.kind.as_str().to_owned(),
            size: stat.size,
            mode: format!("{:04o}", stat.mode),
            modified_at: stat.modified,
            link_target: stat.link_target,
        }
    }
}

/// `GET /api/openapi.json`: an OpenAPI 3.1 document (described here only at its top level).
#[derive(Debug, ToSchema)]
#[allow(dead_code)] // Only describes the document for the OpenAPI document.
pub struct OpenApiDocument {
    /// The OpenAPI version.
    #[schema(example = "3.1.0")]
    openapi: String,
    /// Title, version, description.
    #[schema(value_type = Object)]
    info: serde_json::Value,
    /// The operations, by path.
    #[schema(value_type = Object)]
    paths: serde_json::Value,
    /// The schemas and security schemes.
    #[schema(value_type = Object)]
    components: serde_json::Value,
}

/// `GET /health`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct HealthResponse {
    /// Always `ok`.
    #[schema(example = "ok")]
    pub status: String,
}

/// `GET /hello`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct HelloResponse {
    /// Always `hello, world`.
    #[schema(example = "hello, world")]
    pub message: String,
}

/// `GET /ready`: each dependency is `ok` or `unavailable`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ReadyResponse {
    /// `ok` when every dependency answers, else `unavailable`.
    #[schema(example = "ok")]
    pub status: String,
    /// The sandbox store.
    #[schema(example = "ok")]
    pub database: String,
    /// The Docker engine.
    #[schema(example = "ok")]
    pub docker: String,
}

/// `SandboxResponse::status`: one of the domain's statuses.
fn status_schema() -> utoipa::openapi::schema::Schema {
    text_enum(SandboxStatus::ALL.iter().map(|s| s.as_str()))
}

/// `ListQuery::status`: `live`, `all` or one status (what `StatusFilter` parses).
fn status_filter_schema() -> utoipa::openapi::schema::Schema {
    let statuses = SandboxStatus::ALL.iter().map(|s| s.as_str());
    text_enum(["live", "all"].into_iter().chain(statuses))
}

/// `EventResponse::action`: one of the domain's event actions.
fn action_schema() -> utoipa::openapi::schema::Schema {
    text_enum(EventAction::ALL.iter().map(|a| a.as_str()))
}

fn text_enum<'a>(values: impl IntoIterator<Item = &'a str>) -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(values))
        .into()
}

/// `ExecuteRequest::env`: an object of text values, or null.
fn env_schema() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{AdditionalProperties, ObjectBuilder, SchemaType, Type};
    ObjectBuilder::new()
        .schema_type(SchemaType::from_iter([Type::Object, Type::Null]))
        .property_names(Some(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .min_length(Some(1))
                .pattern(Some(r"^[^=\u0000]+$")),
        ))
        .additional_properties(Some(AdditionalProperties::RefOr(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some(r"^[^\u0000]*$"))
                .into(),
        )))
        .into()
}

/// The body of `POST /api/sandboxes/{id}/processes`: a background process, which runs on
/// after the request (and after a restart of the server) until it exits, is killed or its
/// sandbox ends.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartProcessRequest {
    /// The command line, run by `/bin/sh -c` in its own process group. Must not be empty or
    /// only white space, and holds no NUL byte.
    #[schema(
        example = "python3 -m http.server 8000",
        pattern = r"^[^\u0000]*[^\u0000\t\n\u000b\f\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000][^\u0000]*$"
    )]
    pub command: String,
    /// Working directory, absolute, without `..`, at most 3072 bytes (255 a component)
    /// (default: the sandbox's workspace folder). `workdir` is taken too.
    #[schema(
        example = "/workspace",
        max_length = 3072,
        pattern = r"^(?![^\u0000]*/\.\.(/|$))(/[^/\u0000]{0,255})+$"
    )]
    #[serde(alias = "workdir")]
    pub cwd: Option<String>,
    /// Extra environment variables: names not empty and without `=`, no NUL anywhere.
    #[schema(schema_with = env_schema)]
    pub env: Option<BTreeMap<String, String>>,
    /// Kill the process, and every process it started, after this many seconds (its exit
    /// code is then 124). Absent or `0`: it runs until it exits or is killed.
    #[schema(minimum = 0, maximum = 18446744073709551615_u64)]
    #[serde(default, deserialize_with = "whole_number")]
    pub timeout_secs: Option<u64>,
    /// Keep its stdin open for `POST …/processes/{pid}/stdin` (default: it reads nothing).
    #[serde(default)]
    pub stdin: Option<bool>,
    /// Keep the sandbox alive while the process runs, as if it were used (default: only
    /// the sandbox's use and heartbeats do).
    #[serde(default)]
    pub keep_alive: Option<bool>,
    /// Output bytes kept per stream, the oldest dropped first (1024 to 16777216; default
    /// MONZA_PROCESS_OUTPUT_BYTES, 1 MiB unless set).
    #[schema(minimum = 1024, maximum = 16777216)]
    #[serde(default, deserialize_with = "whole_number")]
    pub output_limit_bytes: Option<u64>,
    /// Run it on a pseudo-terminal of this size (for a shell, an editor, a REPL): it is
    /// then the leader of a session whose controlling terminal that is, its output (stdout
    /// and stderr together) is the terminal's, as `stdout`, and it is used through
    /// `GET …/processes/{pid}/pty` (a WebSocket) or `…/stdin`.
    pub pty: Option<PtyRequest>,
}

/// A terminal's size, in characters.
#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PtyRequest {
    /// Columns, 1 to 1000.
    #[schema(minimum = 1, maximum = 1000, example = 80)]
    #[serde(deserialize_with = "whole")]
    pub cols: u64,
    /// Rows, 1 to 1000.
    #[schema(minimum = 1, maximum = 1000, example = 24)]
    #[serde(deserialize_with = "whole")]
    pub rows: u64,
}

impl StartProcessRequest {
    /// The domain's request; a terminal size out of range is invalid.
    pub fn into_domain(self) -> Result<monza_domain::StartProcess, ApiError> {
        let pty = self
            .pty
            .map(|p| monza_domain::TerminalSize::new(p.cols, p.rows))
            .transpose()?;
        Ok(monza_domain::StartProcess {
            command: self.command,
            workdir: self.cwd,
            env: self.env.unwrap_or_default(),
            timeout: self.timeout_secs.map(Duration::from_secs),
            stdin: self.stdin.unwrap_or(false),
            keep_alive: self.keep_alive.unwrap_or(false),
            output_limit: self.output_limit_bytes,
            pty,
        })
    }
}

/// The bytes a background process's stream still has: `[start, end)`. `end` counts every
/// byte it wrote; `start` is above 0 once the oldest were dropped.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
pub struct OutputSpanResponse {
    /// Offset of the first byte kept.
    pub start: u64,
    /// Offset one past the last byte written.
    pub end: u64,
}

impl From<monza_domain::OutputSpan> for OutputSpanResponse {
    fn from(s: monza_domain::OutputSpan) -> Self {
        Self {
            start: s.start,
            end: s.end,
        }
    }
}

/// A background process.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ProcessResponse {
    /// Its process id in the sandbox, which names it in the routes.
    #[schema(example = 42)]
    pub pid: u32,
    /// The command line it runs.
    pub command: String,
    /// `running` or `exited`.
    #[schema(example = "running")]
    pub status: String,
    /// When it started.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub started_at: OffsetDateTime,
    /// Its exit code once it exited (128 + the signal when a signal ended it, 124 when its
    /// timeout did); null while it runs.
    pub exit_code: Option<i64>,
    /// The signal that ended it, if one did.
    pub signal: Option<i32>,
    /// Its timeout killed it.
    pub timed_out: bool,
    /// How long it ran, once it exited.
    pub duration_ms: Option<u64>,
    /// It keeps its sandbox alive while it runs.
    pub keep_alive: bool,
    /// Its stdin is open for writes.
    pub stdin_open: bool,
    /// It runs on a pseudo-terminal (`GET …/processes/{pid}/pty` attaches to it).
    pub pty: bool,
    /// What its stdout still has.
    pub stdout: OutputSpanResponse,
    /// What its stderr still has.
    pub stderr: OutputSpanResponse,
}

impl From<monza_domain::ProcessInfo> for ProcessResponse {
    fn from(p: monza_domain::ProcessInfo) -> Self {
        Self {
            pid: p.pid,
            command: p.command,
            status: if p.exit.is_some() {
                "exited"
            } else {
                "running"
            }
            .to_owned(),
            started_at: utc(p.started_at),
            exit_code: p.exit.map(|e| e.exit_code),
            signal: p.exit.and_then(|e| e.signal),
            timed_out: p.exit.is_some_and(|e| e.timed_out),
            duration_ms: p.exit.map(|e| millis(e.duration)),
            keep_alive: p.keep_alive,
            stdin_open: p.stdin_open,
            pty: p.pty,
            stdout: p.stdout.into(),
            stderr: p.stderr.into(),
        }
    }
}

/// The body of `POST …/processes/{pid}/signal`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignalRequest {
    /// `TERM`, `INT`, `KILL` or `HUP` (a `SIG` prefix and any case are taken), sent to the
    /// process's whole process group.
    #[schema(
        example = "TERM",
        pattern = "^([Ss][Ii][Gg])?([Tt][Ee][Rr][Mm]|[Ii][Nn][Tt]|[Kk][Ii][Ll][Ll]|[Hh][Uu][Pp])$"
    )]
    pub signal: String,
}

/// One line (or server-sent event) of `GET …/processes/{pid}/output`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ProcessOutputEvent {
    /// `stdout`, `stderr`, `exit`, `caught_up`, `error` or `keepalive`.
    #[schema(example = "stdout")]
    #[serde(rename = "type")]
    pub kind: String,
    /// `stdout`/`stderr`: the offset in its stream of the first byte of this chunk (past
    /// the one asked for when the oldest bytes were dropped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// Output, when it is UTF-8 (a character is never split between two events).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
    /// Output that is not UTF-8, base64-encoded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_base64: Option<String>,
    /// `exit`: the exit code (124 when the timeout killed it).
    #[serde(rename = "exitCode", default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i64>,
    /// `exit`: the timeout killed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timed_out: Option<bool>,
    /// `exit`: how long it ran, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// `exit` and `caught_up`: where to read stdout on from (`stdout_offset=`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdout_offset: Option<u64>,
    /// `exit` and `caught_up`: where to read stderr on from (`stderr_offset=`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stderr_offset: Option<u64>,
    /// `error`: what went wrong, as in every error response.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<serde_json::Value>,
}

/// One entry of a listing (or what a make-directory or move made). A symbolic link is
/// described itself, not what it points to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FileEntryResponse {
    /// Absolute.
    #[schema(example = "/workspace/src/main.rs")]
    pub path: String,
    /// Its last component.
    #[schema(example = "main.rs")]
    pub name: String,
    /// `file`, `directory`, `symlink` or `other` (a device, socket or pipe).
    #[serde(rename = "type")]
    #[schema(example = "file")]
    pub kind: String,
    /// Size in bytes (of the link itself for a symbolic link).
    #[schema(example = 42)]
    pub size: u64,
    /// Permission bits (with setuid, setgid and sticky), in octal.
    #[schema(example = "0644")]
    pub mode: String,
    /// Last change, RFC 3339 in UTC.
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub modified_at: Option<OffsetDateTime>,
    /// Where a symbolic link points, as stored in the link (relative or absolute).
    #[schema(example = "../lib/tool")]
    pub link_target: Option<String>,
    /// Owner and group, as numbers.
    #[schema(example = 1000)]
    pub uid: u32,
    #[schema(example = 1000)]
    pub gid: u32,
}

impl From<monza_domain::FileEntry> for FileEntryResponse {
    fn from(entry: monza_domain::FileEntry) -> Self {
        Self {
            path: entry.path,
            name: entry.stat.name,
            kind: entry.stat.kind.as_str().to_owned(),
            size: entry.stat.size,
            mode: format!("{:04o}", entry.stat.mode),
            modified_at: entry.stat.modified,
            link_target: entry.stat.link_target,
            uid: entry.uid,
            gid: entry.gid,
        }
    }
}

/// The query of `GET /api/sandboxes/{id}/files/list`. Describes the query for the OpenAPI
/// document; the handler reads it strictly.
#[derive(Debug, Clone, IntoParams)]
#[allow(dead_code)]
#[into_params(parameter_in = Query)]
pub struct ListFilesQuery {
    /// The directory, absolute, without `..` (a symbolic link to a directory is followed).
    #[param(
        example = "/workspace",
        max_length = 3072,
        pattern = r"^(?![^\u0000]*/\.\.(/|$))(/[^/\u0000]{0,255})+$"
    )]
    pub path: String,
    /// `true`: every entry below it, depth first (symbolic links are listed, never followed).
    pub recursive: Option<bool>,
    /// At most this many entries (default 1000; more is clamped to the server's maximum,
    /// 10000 by default); `truncated` says whether more were left.
    #[param(minimum = 1, example = 100)]
    pub limit: Option<u64>,
}

/// A directory's entries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FileListResponse {
    /// The directory listed.
    #[schema(example = "/workspace")]
    pub path: String,
    /// Depth first, each directory's entries by name.
    pub entries: Vec<FileEntryResponse>,
    /// A limit (`limit`, or the server's bound on a walk's entries or time) cut it short.
    pub truncated: bool,
}

/// The query of `POST /api/sandboxes/{id}/files/mkdir`.
#[derive(Debug, Clone, IntoParams)]
#[allow(dead_code)]
#[into_params(parameter_in = Query)]
pub struct MakeDirectoryQuery {
    /// The directory to make: absolute, without `..`, not `/`, not under `/proc`, `/sys` or
    /// `/dev`.
    #[param(
        example = "/workspace/src/util",
        max_length = 3072,
        pattern = r"^(?!/+$)(?!/(proc|sys|dev)(/|$))(?![^\u0000]*/\.\.(/|$))(/[^/\u0000]{0,255})+$"
    )]
    pub path: String,
    /// `true`: make missing parents too, and an existing directory is fine (like
    /// `mkdir -p`); `false` (the default): the parent must exist and the path must not.
    pub parents: Option<bool>,
}

/// The query of `POST /api/sandboxes/{id}/files/move`.
#[derive(Debug, Clone, IntoParams)]
#[allow(dead_code)]
#[into_params(parameter_in = Query)]
pub struct MoveQuery {
    /// What to move: absolute, without `..`, not `/`, not under `/proc`, `/sys` or `/dev`.
    #[param(
        example = "/workspace/old.txt",
        max_length = 3072,
        pattern = r"^(?!/+$)(?!/(proc|sys|dev)(/|$))(?![^\u0000]*/\.\.(/|$))(/[^/\u0000]{0,255})+$"
    )]
    pub from: String,
    /// Its new path (not a directory to move it into), checked as `from` is.
    #[param(
        example = "/workspace/new.txt",
        max_length = 3072,
        pattern = r"^(?!/+$)(?!/(proc|sys|dev)(/|$))(?![^\u0000]*/\.\.(/|$))(/[^/\u0000]{0,255})+$"
    )]
    pub to: String,
    /// `true`: replace what is at `to` (never a directory by a file or a file by a
    /// directory). `false` (the default): something at `to` is `already_exists`.
    pub overwrite: Option<bool>,
}

/// The query of `DELETE /api/sandboxes/{id}/files`.
#[derive(Debug, Clone, IntoParams)]
#[allow(dead_code)]
#[into_params(parameter_in = Query)]
pub struct RemoveFileQuery {
    /// What to remove: absolute, without `..`, not `/`. A symbolic link is removed, not
    /// what it points to.
    #[param(
        example = "/workspace/build",
        max_length = 3072,
        pattern = r"^(?!/+$)(?!/(proc|sys|dev)(/|$))(?![^\u0000]*/\.\.(/|$))(/[^/\u0000]{0,255})+$"
    )]
    pub path: String,
    /// `true`: a directory goes with everything in it. `false` (the default): only a file,
    /// a link or an empty directory (`directory_not_empty` otherwise).
    pub recursive: Option<bool>,
}

/// Something was removed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RemovedResponse {
    #[schema(example = "/workspace/build")]
    pub path: String,
    /// How many entries went (a directory counts itself).
    #[schema(example = 12)]
    pub removed: u64,
}

/// The query of `GET /api/sandboxes/{id}/files/lines`.
#[derive(Debug, Clone, IntoParams)]
#[allow(dead_code)]
#[into_params(parameter_in = Query)]
pub struct ReadLinesQuery {
    /// The text file: absolute, without `..` (a symbolic link is followed).
    #[param(
        example = "/workspace/main.go",
        max_length = 3072,
        pattern = r"^(?![^\u0000]*/\.\.(/|$))(/[^/\u0000]{0,255})+$"
    )]
    pub path: String,
    /// The first line to read, 0-based (default 0).
    #[param(minimum = 0, example = 0)]
    pub offset: Option<u64>,
    /// Lines to read (default 2000; more is clamped to the server's maximum, 100000).
    #[param(minimum = 1, example = 2000)]
    pub limit: Option<u64>,
}

/// Lines of a text file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FileLinesResponse {
    #[schema(example = "/workspace/main.go")]
    pub path: String,
    /// The line number (0-based) of the first line.
    #[schema(example = 0)]
    pub offset: u64,
    /// Without their line ends (`\n` or `\r\n`); bytes that are not UTF-8 are replaced by
    /// U+FFFD. Fewer than asked for when about 4 MiB of text is reached.
    pub lines: Vec<String>,
    /// Where to read on; `null` at the end of the file.
    #[schema(example = 2000)]
    pub next_offset: Option<u64>,
}

/// The query of `POST /api/sandboxes/{id}/files/search` and `…/files/glob`.
#[derive(Debug, Clone, IntoParams)]
#[allow(dead_code)]
#[into_params(parameter_in = Query)]
pub struct SearchPathQuery {
    /// Where to look: a file or a directory searched below (symbolic links are not
    /// followed); the sandbox's workspace folder when absent.
    #[param(
        example = "/workspace",
        max_length = 3072,
        pattern = r"^(?![^\u0000]*/\.\.(/|$))(/[^/\u0000]{0,255})+$"
    )]
    pub path: Option<String>,
}

/// `POST /api/sandboxes/{id}/files/search`: the lines that contain a text or match a
/// regular expression, as `grep -rn` lists them. Needs nothing in the sandbox's image.
/// Exactly one of `pattern` and `regex`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SearchRequestBody {
    /// Literal text to look for (not a pattern: `.` is a dot). Not empty, at most 4096
    /// bytes.
    #[schema(
        example = "fn main",
        min_length = 1,
        max_length = 4096,
        nullable = false,
        pattern = r"^[^\u0000]*$"
    )]
    #[serde(default, deserialize_with = "not_null")]
    pub pattern: Option<String>,
    /// A regular expression to look for instead (Rust's `regex` syntax: no look-around or
    /// backreferences). Not empty, at most 4096 bytes.
    #[schema(
        example = "fn [a-z_]+\\(",
        min_length = 1,
        max_length = 4096,
        format = Regex,
        nullable = false,
        pattern = r"^[^\u0000]*$"
    )]
    #[serde(default, deserialize_with = "not_null")]
    pub regex: Option<String>,
    /// Match regardless of case (default `false`).
    #[serde(default)]
    pub ignore_case: bool,
    /// Only files that match this glob: without `/` by name (`*.py`, like `grep
    /// --include`), with `/` by path relative to `path` (`src/**/*.rs`). An unbalanced `[`
    /// or `{` stands for itself, as in a shell.
    #[schema(
        example = "*.rs",
        min_length = 1,
        max_length = 4096,
        pattern = r"^[^\u0000]*$"
    )]
    pub glob: Option<String>,
    /// At most this many lines (default: the server's maximum, 1000 unless configured;
    /// more is clamped to it).
    #[schema(minimum = 1, maximum = 18446744073709551615_u64, example = 100)]
    #[serde(default, deserialize_with = "whole_number")]
    pub max_results: Option<u64>,
}

/// One line a search found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SearchMatchResponse {
    #[schema(example = "/workspace/src/main.rs")]
    pub path: String,
    /// 1-based, as `grep -n` counts.
    #[schema(example = 1)]
    pub line: u64,
    /// The line, without its end (at most 4 KiB of it); bytes that are not UTF-8 are
    /// replaced by U+FFFD.
    #[schema(example = "fn main() {")]
    pub text: String,
}

/// What a search found. Files that look binary (a NUL byte in their first 8 KiB) are
/// skipped, as are files the sandbox's user cannot read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SearchResponse {
    /// Files in walk order (depth first, by name), lines in order.
    pub matches: Vec<SearchMatchResponse>,
    /// `max_results`, or the server's bound on a walk's entries or time, cut it short.
    pub truncated: bool,
}

/// `POST /api/sandboxes/{id}/files/glob`: the paths below a directory (`path` in the query)
/// that match a glob.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GlobRequestBody {
    /// Relative to `path`: `*` and `?` within a component, `**` across components,
    /// `[abc]`, `{a,b}`; `\` escapes; an unbalanced `[` or `{` stands for itself, as in a
    /// shell. Not empty, not starting with `/`.
    #[schema(
        example = "**/*.rs",
        min_length = 1,
        max_length = 4096,
        pattern = r"^[^/\u0000][^\u0000]*$"
    )]
    pub pattern: String,
    /// At most this many paths (default: the server's maximum, 1000 unless configured;
    /// more is clamped to it).
    #[schema(minimum = 1, maximum = 18446744073709551615_u64, example = 100)]
    #[serde(default, deserialize_with = "whole_number")]
    pub max_results: Option<u64>,
}

/// What a glob found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct GlobResponse {
    /// Absolute, in walk order (depth first, by name); directories too.
    pub paths: Vec<String>,
    pub truncated: bool,
}

/// The query of `POST /api/sandboxes/{id}/files/edit`.
#[derive(Debug, Clone, IntoParams)]
#[allow(dead_code)]
#[into_params(parameter_in = Query)]
pub struct EditQuery {
    /// The file (a symbolic link is followed and stays a link): absolute, without `..`,
    /// not under `/proc`, `/sys` or `/dev`.
    #[param(
        example = "/workspace/main.go",
        max_length = 3072,
        pattern = r"^(?!/(proc|sys|dev)(/|$))(?![^\u0000]*/\.\.(/|$))(/[^/\u0000]{0,255})+$"
    )]
    pub path: String,
}

/// `POST /api/sandboxes/{id}/files/edit`: replace text in a file, atomically (a reader sees
/// the old content or the new, never a mix); the file keeps its mode and owner.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EditRequestBody {
    /// The exact text to replace; not empty.
    #[schema(
        example = "fmt.Println(\"hi\")",
        min_length = 1,
        pattern = r"^[^\u0000]*$"
    )]
    pub old_string: String,
    /// What replaces it.
    #[schema(example = "fmt.Println(\"hello\")", pattern = r"^[^\u0000]*$")]
    pub new_string: String,
    /// `true`: every occurrence. `false` (the default): `old_string` must be in the file
    /// exactly once (`ambiguous_match` when more, `no_match` when none).
    #[serde(default)]
    pub replace_all: bool,
}

/// An edit was made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct EditResponse {
    #[schema(example = "/workspace/main.go")]
    pub path: String,
    /// How many occurrences were replaced.
    #[schema(example = 1)]
    pub replacements: u64,
}

/// The query of `PUT` and `GET /api/sandboxes/{id}/files/archive`.
#[derive(Debug, Clone, IntoParams)]
#[allow(dead_code)]
#[into_params(parameter_in = Query)]
pub struct ArchiveQuery {
    /// The directory: absolute, without `..`, not `/`, not under `/proc`, `/sys` or `/dev`.
    /// A `PUT` creates it (and its missing parents) when it is missing.
    #[param(
        example = "/workspace",
        max_length = 3072,
        pattern = r"^(?!/+$)(?!/(proc|sys|dev)(/|$))(?![^\u0000]*/\.\.(/|$))(/[^/\u0000]{0,255})+$"
    )]
    pub path: String,
}

/// Which directory `GET …/files/archive` sends, and how.
#[derive(Debug, Clone, IntoParams)]
#[allow(dead_code)]
#[into_params(parameter_in = Query)]
pub struct GetArchiveQuery {
    /// The directory: absolute, without `..`, not `/`, not under `/proc`, `/sys` or `/dev`.
    #[param(
        example = "/workspace",
        max_length = 3072,
        pattern = r"^(?!/+$)(?!/(proc|sys|dev)(/|$))(?![^\u0000]*/\.\.(/|$))(/[^/\u0000]{0,255})+$"
    )]
    pub path: String,
    /// `true`: the tar gzip-compressed (`application/gzip`, a `.tar.gz`); `false` by default.
    pub gzip: Option<bool>,
}

/// What an archive put into a sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ArchiveResponse {
    /// The directory it was unpacked into.
    #[schema(example = "/workspace")]
    pub path: String,
    #[schema(example = 12)]
    pub files: u64,
    #[schema(example = 3)]
    pub directories: u64,
    /// Symbolic and hard links.
    #[schema(example = 1)]
    pub links: u64,
    /// Bytes of file content.
    #[schema(example = 40960)]
    pub bytes: u64,
}
