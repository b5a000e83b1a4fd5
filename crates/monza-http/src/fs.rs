//! Exact-path file routes: `PUT`, `GET` (with `Range`) and `HEAD` of
//! `/api/sandboxes/{id}/files?path=…`, and `GET …/files/stat?path=…`.
//!
//! A `PUT` body with a `Content-Length` streams straight into the sandbox (nothing on disk,
//! a chunk or two in memory); a chunked one is spooled to an anonymous temporary file first,
//! because the sandbox's archive needs the size before the content.

use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use actix_web::body::SizedStream;
use actix_web::http::StatusCode;
use actix_web::http::header::{self, ByteRangeSpec, HeaderValue, HttpDate, Range};
use actix_web::{HttpRequest, HttpResponse, web};
use bytes::Bytes;
use futures::{Stream, StreamExt, TryStreamExt};
use monza_domain::{
    ByteStream, Error, FileDownload, FileStat, SandboxService, UploadFile, WriteOptions, paths,
};

use crate::HttpConfig;
use crate::access::Caller;
use crate::error::{ApiError, ErrorBody};
use crate::extract::{
    Paced, PathId, announced_length, flag, only, payload_error, query_param, required, strict_query,
};
use crate::files::{content_disposition, over_limit, spool_stream};
use crate::model::{FilePathQuery, FileStatResponse, PutFileQuery, WrittenFileResponse};

/// Creates or replaces the regular file at `path` with the request's body.
#[utoipa::path(
    put, path = "/api/sandboxes/{id}/files", tag = "files",
    params(PutFileQuery),
    request_body(content = Option<Vec<u8>>, content_type = "application/octet-stream",
        description = "The file's bytes, exactly (any content type is accepted; no body is an \
            empty file). With a `Content-Length` the body streams straight into the sandbox; a \
            chunked body is spooled to disk first."),
    responses(
        (status = 200, description = "The file is in the sandbox, owned by the sandbox's user", body = WrittenFileResponse),
        (status = 400, description = "Malformed id, no or bad `path` (relative, `..`, NUL, overlong), bad `mode` or `parents`, an unknown query parameter (`invalid_input`); a name that cannot be stored exactly (`invalid_path`)", body = ErrorBody),
        (status = 403, description = "The sandbox's file system refused the write (`permission_denied`)", body = ErrorBody),
        (status = 404, description = "Unknown sandbox (`not_found`); the parent directory is missing and `parents` is not `true`, or the path cannot be followed (`file_not_found`)", body = ErrorBody),
        (status = 408, description = "The body did not arrive in time or kept too slow a pace", body = ErrorBody),
        (status = 409, description = "The sandbox is not running, or its user is not in its /etc/passwd (`conflict`); a directory is at `path` (`is_directory`: nothing is replaced); a component of `path` is a file (`not_a_directory`)", body = ErrorBody),
        (status = 413, description = "The body is over the upload limit (`MONZA_MAX_UPLOAD_BYTES`, 100 MiB by default)", body = ErrorBody),
        (status = 503, description = "The store or Docker is unavailable", body = ErrorBody),
    )
)]
pub(crate) async fn put_file(
    service: web::Data<SandboxService>,
    config: web::Data<HttpConfig>,
    caller: Caller,
    PathId(id): PathId,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<web::Json<WrittenFileResponse>, ApiError> {
    let query = strict_query(&req)?;
    only(&query, &["path", "mode", "parents"])?;
    let path = required(&query, "path")?;
    let mode = query_param(&query, "mode")?
        .map(|m| paths::parse_file_mode(&m))
        .transpose()?;
    let parents = flag(&query, "parents")?.unwrap_or(false);
    let limit = service.config().max_upload_bytes;
    let body = Paced::upload(payload, &config);
    let options = WriteOptions {
        mode,
        create_parents: parents,
        user: None,
    };
    // The body's own failure (a timeout is a 408, not the sandbox's fault) is kept aside
    // and answered instead of the write's error it causes.
    let failed: Arc<Mutex<Option<ApiError>>> = Arc::default();
    let file = match announced_length(&req) {
        Some(size) if size > limit => return Err(over_limit(limit)),
        Some(size) => {
            let content = forward(body, failed.clone());
            UploadFile {
                name: String::new(),
                size,
                content,
                options,
            }
        }
        None => {
            // Refused before a body of up to the limit is spooled; a body with a length
            // streams in only after the write's own check of the sandbox.
            service.check_upload(&caller.0, id).await?;
            let spooled = spool_stream(
                String::new(),
                body.map_err(payload_error),
                (limit, over_limit),
                config.upload_dir.clone(),
            )
            .await?;
            UploadFile {
                options,
                ..spooled.into_upload()
            }
        }
    };
    let written = service.write_file(&caller.0, id, &path, file).await;
    if let Some(error) = failed.lock().ok().and_then(|mut slot| slot.take()) {
        return Err(error);
    }
    let (path, stat) = written?;
    Ok(web::Json(WrittenFileResponse {
        path,
        size: stat.size,
        mode: octal(stat.mode),
    }))
}

/// Streams a regular file out of a running sandbox, whole or the one byte range asked for.
#[utoipa::path(
    get, path = "/api/sandboxes/{id}/files", tag = "files",
    params(FilePathQuery,
        ("Range" = Option<String>, Header, description = "One byte range, `bytes=START-END`, `bytes=START-` or `bytes=-SUFFIX`; a list of ranges is answered with the whole file")),
    responses(
        (status = 200, description = "The file's bytes, as `application/octet-stream` with `X-Content-Type-Options: nosniff`",
            content_type = "application/octet-stream",
            headers(
                ("Content-Length" = u64, description = "The file's size"),
                ("Accept-Ranges" = String, description = "`bytes`"),
                ("Last-Modified" = String, description = "When the file last changed"),
                ("X-Monza-File-Mode" = String, description = "Its permission bits, in octal (`0644`)"),
            )),
        (status = 206, description = "The range asked for, with `Content-Range: bytes START-END/SIZE`", content_type = "application/octet-stream"),
        (status = 400, description = "Malformed id, no or bad `path`, an unknown query parameter (`invalid_input`)", body = ErrorBody),
        (status = 404, description = "Unknown sandbox (`not_found`), or nothing at `path` (`file_not_found`)", body = ErrorBody),
        (status = 409, description = "The sandbox is not running (`conflict`), or `path` is a directory (`is_directory`); a component of `path` is a file (`not_a_directory`)", body = ErrorBody),
        (status = 416, description = "The range starts past the file's end (`range_not_satisfiable`); `Content-Range: bytes */SIZE` says the size", body = ErrorBody),
        (status = 503, description = "The store or Docker is unavailable", body = ErrorBody),
    )
)]
pub(crate) async fn get_file(
    service: web::Data<SandboxService>,
    caller: Caller,
    PathId(id): PathId,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let query = strict_query(&req)?;
    only(&query, &["path"])?;
    let path = required(&query, "path")?;
    let range = requested_range(&req);
    let FileDownload { stat, content } = service.download(&caller.0, id, &path).await?;
    let (status, start, len) = match range.map(|r| r.to_satisfiable_range(stat.size)) {
        None => (StatusCode::OK, 0, stat.size),
        Some(Some((start, end))) => (StatusCode::PARTIAL_CONTENT, start, end - start + 1),
        Some(None) => {
            return Err(ApiError::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "range_not_satisfiable",
                format!(
                    "the range asked for is outside the file, which is {} bytes",
                    stat.size
                ),
            )
            .with_header("Content-Range", format!("bytes */{}", stat.size)));
        }
    };
    let body = first_chunk_checked(slice(content, start, len)).await?;
    let mut response = HttpResponse::build(status);
    file_headers(&mut response, &stat)?;
    if status == StatusCode::PARTIAL_CONTENT {
        response.insert_header((
            header::CONTENT_RANGE,
            format!("bytes {start}-{}/{}", start + len - 1, stat.size),
        ));
    }
    Ok(response.body(SizedStream::new(len, body)))
}

/// What `path` is, in headers and without a body: its type, size, mode and last change.
#[utoipa::path(
    head, path = "/api/sandboxes/{id}/files", tag = "files",
    params(FilePathQuery),
    responses(
        (status = 200, description = "Something is at `path` (a symbolic link is described itself, not followed)",
            headers(
                ("X-Monza-File-Type" = String, description = "`file`, `directory`, `symlink` or `other`"),
                ("X-Monza-File-Mode" = String, description = "Its permission bits, in octal (`0644`)"),
                ("Content-Length" = u64, description = "Its size in bytes"),
                ("Last-Modified" = String, description = "When it last changed"),
            )),
        (status = 400, description = "Malformed id or bad `path` (`invalid_input`)"),
        (status = 404, description = "Unknown sandbox or nothing at `path` (the `X-Monza-Error-Code` header says which: `not_found`, `file_not_found`)"),
        (status = 409, description = "The sandbox is not running; a component of `path` is a file (`not_a_directory`)"),
        (status = 503, description = "The store or Docker is unavailable"),
    )
)]
pub(crate) async fn head_file(
    service: web::Data<SandboxService>,
    caller: Caller,
    PathId(id): PathId,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let query = strict_query(&req)?;
    only(&query, &["path"])?;
    let path = required(&query, "path")?;
    let stat = service.stat(&caller.0, id, &path).await?;
    let mut response = HttpResponse::Ok();
    file_headers(&mut response, &stat)?;
    Ok(response.body(SizedStream::new(
        stat.size,
        futures::stream::empty::<Result<Bytes, Error>>(),
    )))
}

/// What `path` is, as JSON.
#[utoipa::path(
    get, path = "/api/sandboxes/{id}/files/stat", tag = "files",
    params(FilePathQuery),
    responses(
        (status = 200, description = "Something is at `path` (a symbolic link is described itself, not followed)", body = FileStatResponse),
        (status = 400, description = "Malformed id, no or bad `path`, an unknown query parameter (`invalid_input`)", body = ErrorBody),
        (status = 404, description = "Unknown sandbox (`not_found`), or nothing at `path` (`file_not_found`)", body = ErrorBody),
        (status = 409, description = "The sandbox is not running (`conflict`); a component of `path` is a file (`not_a_directory`)", body = ErrorBody),
        (status = 503, description = "The store or Docker is unavailable", body = ErrorBody),
    )
)]
pub(crate) async fn stat_file(
    service: web::Data<SandboxService>,
    caller: Caller,
    PathId(id): PathId,
    req: HttpRequest,
) -> Result<web::Json<FileStatResponse>, ApiError> {
    let query = strict_query(&req)?;
    only(&query, &["path"])?;
    let path = required(&query, "path")?;
    let stat = service.stat(&caller.0, id, &path).await?;
    Ok(web::Json(FileStatResponse::new(path, stat)))
}

/// The request body as a [`ByteStream`] the sandbox's adapter can take: actix's payload
/// lives on its worker's thread, so a task there forwards its chunks through a channel of a
/// few chunks (a slow sandbox slows the client down; nothing piles up). The body's own
/// failure is put in `failed` and ends the stream with an error.
fn forward(
    body: impl Stream<Item = Result<Bytes, actix_web::error::PayloadError>> + 'static,
    failed: Arc<Mutex<Option<ApiError>>>,
) -> ByteStream {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Bytes, Error>>(4);
    actix_web::rt::spawn(async move {
        let mut body = Box::pin(body);
        while let Some(item) = body.next().await {
            let item = item.map_err(|e| {
                let error = payload_error(e);
                let message = error.message().to_owned();
                if let Ok(mut slot) = failed.lock() {
                    slot.get_or_insert(error);
                }
                Error::invalid(message)
            });
            let stop = item.is_err();
            // A closed channel: the write ended (or failed) and wants no more.
            if tx.send(item).await.is_err() || stop {
                break;
            }
        }
    });
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx)).boxed()
}

/// Permission bits as clients write them: `0644`, `0755`, `02775`.
pub(crate) fn octal(mode: u32) -> String {
    format!("{mode:04o}")
}

/// The one byte range a `Range` header asks for; `None` for no header, a header that is
/// not a byte range (ignored, as RFC 9110 allows), or several ranges (answered whole).
fn requested_range(req: &HttpRequest) -> Option<ByteRangeSpec> {
    let value = req.headers().get(header::RANGE)?.to_str().ok()?;
    match value.parse::<Range>().ok()? {
        Range::Bytes(mut specs) if specs.len() == 1 => specs.pop(),
        _ => None,
    }
}

/// The headers every file answer carries: one content type whatever the bytes (a type
/// guessed from them would let a browser render what a sandbox chose), the name, the mode,
/// the kind and the last change.
fn file_headers(
    response: &mut actix_web::HttpResponseBuilder,
    stat: &FileStat,
) -> Result<(), ApiError> {
    let disposition = HeaderValue::from_str(&content_disposition(&stat.name))
        .map_err(|e| ApiError::internal(format!("Content-Disposition for {:?}: {e}", stat.name)))?;
    response
        .insert_header((header::CONTENT_TYPE, "application/octet-stream"))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::CONTENT_DISPOSITION, disposition))
        .insert_header((header::ACCEPT_RANGES, "bytes"))
        .insert_header(("X-Monza-File-Type", stat.kind.as_str()))
        .insert_header(("X-Monza-File-Mode", octal(stat.mode)));
    if let Some(modified) = stat.modified {
        response.insert_header((
            header::LAST_MODIFIED,
            HttpDate::from(SystemTime::from(modified)),
        ));
    }
    Ok(())
}

/// `len` bytes of `content` from byte `start` on. The engine's archive cannot seek: the bytes
/// before `start` are read and dropped.
fn slice(content: ByteStream, start: u64, len: u64) -> impl Stream<Item = Result<Bytes, Error>> {
    futures::stream::unfold(
        (content, start, len),
        |(mut content, mut skip, mut left)| async move {
            while left > 0 {
                let mut chunk = match content.next().await? {
                    Ok(chunk) => chunk,
                    Err(e) => return Some((Err(e), (content, 0, 0))),
                };
                let n = chunk.len() as u64;
                if skip >= n {
                    skip -= n;
                    continue;
                }
                let from = usize::try_from(skip).unwrap_or(usize::MAX);
                let _ = chunk.split_to(from);
                skip = 0;
                chunk.truncate(usize::try_from(left).unwrap_or(usize::MAX));
                left -= chunk.len() as u64;
                return Some((Ok(chunk), (content, skip, left)));
            }
            None
        },
    )
}

/// Waits for the body's first chunk, so an error reading it is an error answer rather than a
/// cut body, then puts it back in front of the rest.
pub(crate) async fn first_chunk_checked(
    content: impl Stream<Item = Result<Bytes, Error>> + Send + 'static,
) -> Result<impl Stream<Item = Result<Bytes, Error>>, ApiError> {
    let mut content = Box::pin(content);
    let first = match content.next().await {
        Some(Ok(bytes)) => bytes,
        Some(Err(e)) => return Err(e.into()),
        None => Bytes::new(),
    };
    Ok(futures::stream::once(async move { Ok::<_, Error>(first) })
        .chain(content)
        .inspect_err(|e| tracing::warn!(error = %e, "download interrupted")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(content: ByteStream, start: u64, len: u64) -> Vec<u8> {
        futures::executor::block_on(
            slice(content, start, len)
                .map(|c| c.unwrap().to_vec())
                .concat(),
        )
    }

    fn chunks(parts: &[&'static [u8]]) -> ByteStream {
        futures::stream::iter(
            parts
                .iter()
                .map(|p| Ok(Bytes::from_static(p)))
                .collect::<Vec<_>>(),
        )
        .boxed()
    }

    #[test]
    fn a_slice_crosses_chunks_and_stops_at_its_length() {
        let parts: &[&'static [u8]] = &[b"abc", b"defg", b"", b"hij"];
        assert_eq!(collect(chunks(parts), 0, 10), b"abcdefghij");
        assert_eq!(collect(chunks(parts), 2, 3), b"cde");
        assert_eq!(collect(chunks(parts), 3, 4), b"defg");
        assert_eq!(collect(chunks(parts), 9, 1), b"j");
        assert_eq!(collect(chunks(parts), 4, 0), b"");
    }

    #[test]
    fn modes_are_four_octal_digits() {
        assert_eq!(octal(0o644), "0644");
        assert_eq!(octal(0o2775), "2775");
        assert_eq!(octal(0), "0000");
    }
}
