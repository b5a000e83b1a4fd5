//! Many files in one round trip: `POST …/files/batch/upload` (a multipart form of files,
//! each named by its absolute path) and `POST …/files/batch/download` (a JSON list of
//! paths). Each file gets its own answer, success or error, in the order asked; one refused
//! does not stop the others.
//!
//! The upload's parts are spooled, one after another, into one anonymous temporary file
//! before anything is written, so a malformed or oversized body writes nothing.

use std::sync::Arc;

use actix_multipart::Multipart;
use actix_web::{HttpRequest, web};
use base64::Engine as _;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use monza_domain::{ByteStream, Error, SandboxService, UploadFile, WriteOptions, paths};

use crate::HttpConfig;
use crate::access::Caller;
use crate::error::{ApiError, ErrorBody, ErrorDetail};
use crate::extract::{CommandJson, Paced, PathId, flag, only, query_param, strict_query};
use crate::files::{CHUNK, SpoolWriter, multipart_error, over_limit, temp_file};
use crate::fs::octal;
use crate::model::{
    BatchDownloadRequest, BatchDownloadResponse, BatchDownloadResult, BatchUploadForm,
    BatchUploadQuery, BatchUploadResponse, BatchUploadResult,
};

/// Writes many files into a running sandbox in one request.
#[utoipa::path(
    post, path = "/api/sandboxes/{id}/files/batch/upload", tag = "files",
    params(BatchUploadQuery),
    request_body(content = BatchUploadForm, content_type = "multipart/form-data"),
    responses(
        (status = 200, description = "Each file's own answer, in the form's order: where it is, or its error (`error.code` is one of the file codes: `file_not_found`, `is_directory`, `not_a_directory`, `permission_denied`, `invalid_path`, `invalid_input`, `too_large`, …)", body = BatchUploadResponse),
        (status = 400, description = "Malformed id or multipart body, a part that is not a `file` field or has no filename, no file, more than `MONZA_FILE_MAX_RESULTS` files, a bad `mode` or `parents`, an unknown query parameter (`invalid_input`): nothing is written", body = ErrorBody),
        (status = 404, description = "Unknown sandbox (`not_found`)", body = ErrorBody),
        (status = 408, description = "The body did not arrive in time or kept too slow a pace", body = ErrorBody),
        (status = 409, description = "The sandbox is not running (`conflict`)", body = ErrorBody),
        (status = 413, description = "A file over the upload limit (`MONZA_MAX_UPLOAD_BYTES`), or the files together over `MONZA_MAX_ARCHIVE_BYTES`: nothing is written", body = ErrorBody),
        (status = 415, description = "The body is not multipart/form-data", body = ErrorBody),
        (status = 503, description = "The store or Docker is unavailable", body = ErrorBody),
    )
)]
pub(crate) async fn upload_batch(
    service: web::Data<SandboxService>,
    config: web::Data<HttpConfig>,
    caller: Caller,
    PathId(id): PathId,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<web::Json<BatchUploadResponse>, ApiError> {
    let query = strict_query(&req)?;
    only(&query, &["mode", "parents"])?;
    let mode = query_param(&query, "mode")?
        .map(|m| paths::parse_file_mode(&m))
        .transpose()?;
    let parents = flag(&query, "parents")?.unwrap_or(false);
    service.check_upload(&caller.0, id).await?;
    let settings = service.config();
    let (per_file, total, max_files) = (
        settings.max_upload_bytes,
        settings.max_archive_bytes,
        settings.file_limits.max_results,
    );
    let mut form = Multipart::new(req.headers(), Paced::upload(payload, &config));
    let spool = temp_file(config.upload_dir.clone(), "the batch").await?;
    let mut writer = SpoolWriter::new(
        spool
            .try_clone()
            .map_err(|e| ApiError::internal(format!("opening the batch's temporary file: {e}")))?,
    );
    // (path, offset in the spool, size)
    let mut parts: Vec<(String, u64, u64)> = Vec::new();
    let mut spooled: u64 = 0;
    while let Some(mut field) = form.try_next().await.map_err(multipart_error)? {
        if field.name() != Some("file") {
            return Err(ApiError::invalid(format!(
                "unexpected form field {:?}: every part is a `file` whose filename is its \
                 absolute path in the sandbox",
                field.name().unwrap_or_default()
            )));
        }
        let path = field
            .content_disposition()
            .and_then(|cd| cd.get_filename())
            .map(str::to_owned)
            .ok_or_else(|| {
                ApiError::invalid(format!(
                    "file {} of the form has no filename: it names the file's absolute path",
                    parts.len() + 1
                ))
            })?;
        if parts.len() as u64 >= max_files {
            return Err(ApiError::invalid(format!(
                "the form has more than {max_files} files (MONZA_FILE_MAX_RESULTS)"
            )));
        }
        let offset = spooled;
        while let Some(chunk) = field.try_next().await.map_err(multipart_error)? {
            spooled += chunk.len() as u64;
            if spooled - offset > per_file {
                return Err(over_limit(per_file));
            }
            if spooled > total {
                return Err(ApiError::too_large(format!(
                    "the files together are over {total} bytes (MONZA_MAX_ARCHIVE_BYTES)"
                )));
            }
            writer.write(&chunk).await?;
        }
        parts.push((path, offset, spooled - offset));
    }
    drop(writer.finish().await?);
    let spool = Arc::new(spool);
    let files = parts
        .into_iter()
        .map(|(path, offset, size)| {
            let file = UploadFile {
                name: String::new(),
                size,
                content: part_content(spool.clone(), offset, size),
                options: WriteOptions {
                    mode,
                    create_parents: parents,
                    user: None,
                },
            };
            (path, file)
        })
        .collect();
    let answers = service.write_files(&caller.0, id, files).await?;
    Ok(web::Json(BatchUploadResponse {
        results: answers
            .into_iter()
            .map(|(path, written)| match written {
                Ok(stat) => BatchUploadResult {
                    path,
                    size: Some(stat.size),
                    mode: Some(octal(stat.mode)),
                    error: None,
                },
                Err(e) => BatchUploadResult {
                    path,
                    size: None,
                    mode: None,
                    error: Some(detail(e)),
                },
            })
            .collect(),
    }))
}

/// Reads many regular files of a running sandbox in one request.
#[utoipa::path(
    post, path = "/api/sandboxes/{id}/files/batch/download", tag = "files",
    request_body = BatchDownloadRequest,
    responses(
        (status = 200, description = "Each path's own answer, in the order asked: the file's bytes (base64) or its error (`file_not_found`, `is_directory`, `not_a_directory`, `permission_denied`, `invalid_input`, `too_large` past `MONZA_FILE_BATCH_MAX_BYTES` for the files together, …)", body = BatchDownloadResponse),
        (status = 400, description = "Malformed id or JSON, no path, more than `MONZA_FILE_MAX_RESULTS` paths (`invalid_input`)", body = ErrorBody),
        (status = 404, description = "Unknown sandbox (`not_found`)", body = ErrorBody),
        (status = 409, description = "The sandbox is not running (`conflict`)", body = ErrorBody),
        (status = 413, description = "Body over MONZA_MAX_COMMAND_BYTES", body = ErrorBody),
        (status = 503, description = "The store or Docker is unavailable", body = ErrorBody),
    )
)]
pub(crate) async fn download_batch(
    service: web::Data<SandboxService>,
    caller: Caller,
    PathId(id): PathId,
    req: HttpRequest,
    body: CommandJson<BatchDownloadRequest>,
) -> Result<web::Json<BatchDownloadResponse>, ApiError> {
    let query = strict_query(&req)?;
    only(&query, &[])?;
    let answers = service.read_files(&caller.0, id, body.0.paths).await?;
    let base64 = base64::engine::general_purpose::STANDARD;
    Ok(web::Json(BatchDownloadResponse {
        results: answers
            .into_iter()
            .map(|(path, read)| match read {
                Ok((stat, bytes)) => BatchDownloadResult {
                    path,
                    size: Some(stat.size),
                    mode: Some(octal(stat.mode)),
                    content_base64: Some(base64.encode(&bytes)),
                    error: None,
                },
                Err(e) => BatchDownloadResult {
                    path,
                    size: None,
                    mode: None,
                    content_base64: None,
                    error: Some(detail(e)),
                },
            })
            .collect(),
    }))
}

/// One file's error as the client sees it, its code and words as a whole request's.
fn detail(error: Error) -> ErrorDetail {
    let error = ApiError::from(error);
    ErrorDetail {
        code: error.code(),
        message: error.message().to_owned(),
    }
}

/// The bytes `offset..offset + size` of the spool, read with `pread` (each part on its own,
/// whatever order they are read in).
fn part_content(spool: Arc<std::fs::File>, offset: u64, size: u64) -> ByteStream {
    futures::stream::try_unfold((spool, offset, size), |(spool, at, left)| async move {
        if left == 0 {
            return Ok(None);
        }
        let want = usize::try_from(left.min(CHUNK as u64)).unwrap_or(CHUNK);
        let (spool, chunk) = tokio::task::spawn_blocking(move || {
            use std::os::unix::fs::FileExt;
            let mut buf = vec![0; want];
            let read = spool.read_exact_at(&mut buf, at);
            (spool, read.map(|()| Bytes::from(buf)))
        })
        .await
        .map_err(|e| Error::internal(format!("reading the spooled batch: {e}")))?;
        let chunk =
            chunk.map_err(|e| Error::internal(format!("reading the spooled batch: {e}")))?;
        let n = chunk.len() as u64;
        Ok(Some((chunk, (spool, at + n, left - n))))
    })
    .boxed()
}
