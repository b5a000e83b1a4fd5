//! File transfer: multipart upload spooled to a temporary file (never whole in memory) and
//! streamed into the sandbox; download streamed out with safe headers.

use std::io::SeekFrom;
use std::path::PathBuf;

use actix_multipart::{Field, Multipart, MultipartError};
use actix_web::body::SizedStream;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, web};
use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt, TryStreamExt};
use monza_domain::{Error, FileDownload, SandboxService, UploadFile, WriteOptions};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use tokio_util::io::ReaderStream;

use crate::HttpConfig;
use crate::access::Caller;
use crate::error::{ApiError, ErrorBody};
use crate::extract::{Paced, PathId, payload_error, required, strict_query};
use crate::model::{DownloadQuery, UploadForm, UploadResponse};

/// Read size when streaming a spooled upload into the sandbox, and the least the spool
/// writes at once. Every read or write of a `tokio::fs::File` is a hop to a blocking thread:
/// at the 8–64 KiB a multipart body arrives in, a 100 MiB upload cost thousands of them.
pub(crate) const CHUNK: usize = 256 * 1024;
const SPOOL_WRITE: usize = 1024 * 1024;

/// Copies one file into a running sandbox.
///
/// The `file` part is written to an anonymous temporary file while its size is counted (a
/// 413 as soon as it passes the limit), then streamed to the container. The temporary file
/// has no name on disk and disappears when the request ends, however it ends.
#[utoipa::path(
    post, path = "/api/sandboxes/{id}/files/upload", tag = "files",
    request_body(content = UploadForm, content_type = "multipart/form-data"),
    responses(
        (status = 200, description = "The file is in the sandbox", body = UploadResponse),
        (status = 400, description = "Malformed id or multipart body, no `file` field or filename, bad `path` (relative, `..`, NUL, overlong), unexpected field (`invalid_input`); a filename that cannot be stored exactly as sent, e.g. with a `/` or a control character (`invalid_path`)", body = ErrorBody),
        (status = 403, description = "The sandbox's file system refused the write (`permission_denied`)", body = ErrorBody),
        (status = 404, description = "Unknown sandbox (`not_found`), or the destination cannot be followed (a link loop, a link out of reach: `file_not_found`)", body = ErrorBody),
        (status = 409, description = "The sandbox is not running (`conflict`), or a directory is where the file would go (`is_directory`: nothing is replaced); a component of `path` is a file (`not_a_directory`)", body = ErrorBody),
        (status = 413, description = "The file is over the upload limit (100 MiB by default)", body = ErrorBody),
        (status = 415, description = "The body is not multipart/form-data", body = ErrorBody),
        (status = 503, description = "The store or Docker is unavailable", body = ErrorBody),
    )
)]
pub(crate) async fn upload_file(
    service: web::Data<SandboxService>,
    config: web::Data<HttpConfig>,
    caller: Caller,
    PathId(id): PathId,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<web::Json<UploadResponse>, ApiError> {
    // The whole form must keep a pace, so a trickling client cannot hold the request open.
    let paced = Paced::upload(payload, &config);
    let mut form = Multipart::new(req.headers(), paced);
    // Refuse an unknown or stopped sandbox before reading up to 100 MiB.
    service.check_upload(&caller.0, id).await?;
    let limit = service.config().max_upload_bytes;
    let mut file: Option<Spooled> = None;
    let mut dest_dir: Option<String> = None;
    while let Some(field) = form.try_next().await.map_err(multipart_error)? {
        match field.name() {
            Some("file") if file.is_some() => {
                return Err(ApiError::invalid("the form has more than one `file` field"));
            }
            Some("file") => {
                file = Some(spool(field, limit, config.upload_dir.clone()).await?);
            }
            Some("path") if dest_dir.is_some() => {
                return Err(ApiError::invalid("the form has more than one `path` field"));
            }
            Some("path") => {
                let text = read_text(field, config.max_form_field_bytes).await?;
                // An empty `path` (a blank form input) means the default.
                dest_dir = Some(text).filter(|t| !t.is_empty());
            }
            other => {
                return Err(ApiError::invalid(format!(
                    "unexpected form field {:?}: expected `file` and optionally `path`",
                    other.unwrap_or_default()
                )));
            }
        }
    }
    let file = file.ok_or_else(|| {
        ApiError::invalid("the form has no `file` field: send the file as multipart field `file`")
    })?;
    let path = service
        .upload(&caller.0, id, dest_dir.as_deref(), file.into_upload())
        .await?;
    Ok(web::Json(UploadResponse {
        status: "ok".to_owned(),
        path,
    }))
}

/// An upload written to disk, rewound and ready to be read.
pub(crate) struct Spooled {
    name: String,
    size: u64,
    file: tokio::fs::File,
}

impl Spooled {
    /// The spooled bytes as a file read from its start, and their size.
    pub(crate) async fn into_std(self) -> (std::fs::File, u64) {
        (self.file.into_std().await, self.size)
    }

    pub(crate) fn into_upload(self) -> UploadFile {
        let content = ReaderStream::with_capacity(self.file.take(self.size), CHUNK)
            .map_err(|e| Error::internal(format!("reading the spooled upload: {e}")))
            .boxed();
        UploadFile {
            name: self.name,
            size: self.size,
            content,
            options: WriteOptions::default(),
        }
    }
}

async fn spool(field: Field, limit: u64, dir: PathBuf) -> Result<Spooled, ApiError> {
    let name = field
        .content_disposition()
        .and_then(|cd| cd.get_filename())
        .map(str::to_owned)
        .ok_or_else(|| ApiError::invalid("the `file` field has no filename"))?;
    spool_stream(
        name,
        field.map_err(multipart_error),
        (limit, over_limit),
        dir,
    )
    .await
}

/// Writes `body` to an anonymous temporary file in `dir`, refused with `over(limit)` (a
/// 413) past `limit` bytes, and rewinds it.
pub(crate) async fn spool_stream(
    name: String,
    mut body: impl Stream<Item = Result<Bytes, ApiError>> + Unpin,
    (limit, over): (u64, fn(u64) -> ApiError),
    dir: PathBuf,
) -> Result<Spooled, ApiError> {
    let mut writer = SpoolWriter::new(temp_file(dir, "the upload").await?);
    let mut size: u64 = 0;
    while let Some(chunk) = body.try_next().await? {
        size = size.saturating_add(chunk.len() as u64);
        if size > limit {
            return Err(over(limit));
        }
        writer.write(&chunk).await?;
    }
    let mut file = writer.finish().await?;
    file.seek(SeekFrom::Start(0))
        .await
        .map_err(|e| ApiError::internal(format!("rewinding the spooled upload: {e}")))?;
    Ok(Spooled { name, size, file })
}

/// An anonymous temporary file in `dir` (gone when closed), for spooling `what`.
pub(crate) async fn temp_file(dir: PathBuf, what: &str) -> Result<std::fs::File, ApiError> {
    tokio::task::spawn_blocking(move || tempfile::tempfile_in(dir))
        .await
        .map_err(ApiError::internal)?
        .map_err(|e| ApiError::internal(format!("creating {what}'s temporary file: {e}")))
}

/// Appends a body's chunks to a spool file in writes of at least [`SPOOL_WRITE`] bytes.
pub(crate) struct SpoolWriter {
    file: tokio::fs::File,
    pending: BytesMut,
}

impl SpoolWriter {
    pub(crate) fn new(file: std::fs::File) -> Self {
        Self {
            file: tokio::fs::File::from_std(file),
            pending: BytesMut::new(),
        }
    }

    pub(crate) async fn write(&mut self, chunk: &[u8]) -> Result<(), ApiError> {
        self.pending.extend_from_slice(chunk);
        if self.pending.len() >= SPOOL_WRITE {
            self.file
                .write_all(&self.pending)
                .await
                .map_err(spool_error)?;
            self.pending.clear();
        }
        Ok(())
    }

    /// Writes what is pending and flushes: the spool holds every byte written to it.
    pub(crate) async fn finish(mut self) -> Result<tokio::fs::File, ApiError> {
        self.file
            .write_all(&self.pending)
            .await
            .map_err(spool_error)?;
        self.file.flush().await.map_err(spool_error)?;
        Ok(self.file)
    }
}

fn spool_error(e: std::io::Error) -> ApiError {
    ApiError::internal(format!("writing the upload to disk: {e}"))
}

pub(crate) fn over_limit(limit: u64) -> ApiError {
    ApiError::too_large(format!(
        "the file is over the upload limit of {limit} bytes (MONZA_MAX_UPLOAD_BYTES)"
    ))
}

/// A small text field, refused past `limit` bytes.
async fn read_text(mut field: Field, limit: usize) -> Result<String, ApiError> {
    let name = field.name().unwrap_or_default().to_owned();
    let mut buf = Vec::new();
    while let Some(chunk) = field.try_next().await.map_err(multipart_error)? {
        if buf.len() + chunk.len() > limit {
            return Err(ApiError::invalid(format!(
                "form field `{name}` is longer than {limit} bytes"
            )));
        }
        buf.extend_from_slice(&chunk);
    }
    String::from_utf8(buf)
        .map_err(|_| ApiError::invalid(format!("form field `{name}` is not valid UTF-8")))
}

pub(crate) fn multipart_error(error: MultipartError) -> ApiError {
    match error {
        MultipartError::ContentTypeMissing
        | MultipartError::ContentTypeParse
        | MultipartError::ContentTypeIncompatible => ApiError::unsupported_media_type(
            "expected a multipart/form-data body with a `file` field",
        ),
        MultipartError::Payload(e) => payload_error(e),
        other => ApiError::invalid(format!("malformed multipart body: {other}")),
    }
}

/// Streams a regular file out of a running sandbox.
#[utoipa::path(
    get, path = "/api/sandboxes/{id}/files/download", tag = "files",
    params(DownloadQuery),
    responses(
        (status = 200, description = "The file's bytes, always as `application/octet-stream` (with \
            `X-Content-Type-Options: nosniff`): the name is in `Content-Disposition`",
            content_type = "application/octet-stream",
            headers(
                ("X-Content-Type-Options" = String, description = "`nosniff`"),
                ("Content-Disposition" = String, description = "attachment; filename=\"…\"; filename*=UTF-8''…"),
                ("Content-Length" = u64, description = "The file's size"),
            )),
        (status = 400, description = "Malformed id, no `path`, bad `path` (relative, `..`, NUL, overlong) (`invalid_input`)", body = ErrorBody),
        (status = 404, description = "Unknown sandbox (`not_found`), or nothing at `path` or a path that cannot be followed (`file_not_found`)", body = ErrorBody),
        (status = 409, description = "The sandbox is not running (`conflict`), or `path` is a directory (`is_directory`); a component of `path` is a file (`not_a_directory`)", body = ErrorBody),
        (status = 503, description = "The store or Docker is unavailable", body = ErrorBody),
    )
)]
pub(crate) async fn download_file(
    service: web::Data<SandboxService>,
    caller: Caller,
    PathId(id): PathId,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let query = strict_query(&req)?;
    let path = required(&query, "path")?;
    let FileDownload { stat, content } = service.download(&caller.0, id, &path).await?;
    let body = crate::fs::first_chunk_checked(content).await?;
    let disposition = HeaderValue::from_str(&content_disposition(&stat.name))
        .map_err(|e| ApiError::internal(format!("Content-Disposition for {:?}: {e}", stat.name)))?;
    Ok(HttpResponse::Ok()
        // One type whatever the bytes: a type guessed from the first chunk (`text/html` for
        // a page a sandbox wrote) would let a browser render what a sandbox chose.
        .insert_header((header::CONTENT_TYPE, "application/octet-stream"))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::CONTENT_DISPOSITION, disposition))
        .body(SizedStream::new(stat.size, body)))
}

/// RFC 5987 `attr-char`s are kept, everything else is percent-encoded.
const ATTR_CHAR_COMPLEMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'!')
    .remove(b'#')
    .remove(b'$')
    .remove(b'&')
    .remove(b'+')
    .remove(b'-')
    .remove(b'.')
    .remove(b'^')
    .remove(b'_')
    .remove(b'`')
    .remove(b'|')
    .remove(b'~');

/// `attachment; filename="<ASCII fallback>"; filename*=UTF-8''<percent-encoded>` (RFC 6266):
/// the fallback keeps printable ASCII except `"` and `\`; the rest becomes `_`, so no name can
/// end the header or inject another.
pub(crate) fn content_disposition(name: &str) -> String {
    let fallback: String = name
        .chars()
        .map(|c| {
            if (c.is_ascii_graphic() || c == ' ') && c != '"' && c != '\\' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let fallback = if fallback.trim().is_empty() {
        "download".to_owned()
    } else {
        fallback
    };
    let encoded = utf8_percent_encode(name, ATTR_CHAR_COMPLEMENT);
    format!("attachment; filename=\"{fallback}\"; filename*=UTF-8''{encoded}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_disposition_cannot_be_broken_by_a_hostile_name() {
        let header = content_disposition("a\"b\r\nSet-Cookie: x=1;\\é.txt");
        assert_eq!(
            header,
            "attachment; filename=\"a_b__Set-Cookie: x=1;__.txt\"; \
             filename*=UTF-8''a%22b%0D%0ASet-Cookie%3A%20x%3D1%3B%5C%C3%A9.txt"
        );
        assert!(HeaderValue::from_str(&header).is_ok());
    }

    #[test]
    fn an_all_unicode_name_gets_a_placeholder_fallback() {
        assert_eq!(
            content_disposition("日本"),
            "attachment; filename=\"__\"; filename*=UTF-8''%E6%97%A5%E6%9C%AC"
        );
        assert_eq!(
            content_disposition(""),
            "attachment; filename=\"download\"; filename*=UTF-8''"
        );
    }
}
