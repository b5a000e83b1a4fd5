//! File operations past one file in or out: list, make a directory, move, remove, read by
//! lines, search, glob and edit. The sandbox's agent does them as the sandbox's user, so
//! they need nothing in the image (no `ls`, `grep` or `python3`).

use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, web};
use futures::TryStreamExt;
use monza_domain::{
    EditRequest, GlobRequest, ListRequest, MoveRequest, ReadLinesRequest, SandboxService,
    SearchRequest, SpooledArchive, paths,
};

use crate::HttpConfig;
use crate::files::{content_disposition, spool_stream};
use crate::fs::first_chunk_checked;

use crate::access::Caller;
use crate::error::{ApiError, ErrorBody};
use crate::extract::{
    CommandJson, Paced, PathId, announced_length, flag, number, only, payload_error, query_param,
    required, strict_query,
};
use crate::model::{
    ArchiveQuery, ArchiveResponse, EditQuery, EditRequestBody, EditResponse, FileEntryResponse,
    FileLinesResponse, FileListResponse, GetArchiveQuery, GlobRequestBody, GlobResponse,
    ListFilesQuery, MakeDirectoryQuery, MoveQuery, ReadLinesQuery, RemoveFileQuery,
    RemovedResponse, SearchMatchResponse, SearchPathQuery, SearchRequestBody, SearchResponse,
};

/// The entries of a directory, or of its whole tree.
#[utoipa::path(
    get, path = "/api/sandboxes/{id}/files/list", tag = "files",
    params(ListFilesQuery),
    responses(
        (status = 200, description = "The entries, depth first and by name", body = FileListResponse),
        (status = 400, description = "Malformed id, no or bad `path`, bad `recursive` or `limit`, an unknown query parameter (`invalid_input`)", body = ErrorBody),
        (status = 403, description = "The sandbox's user may not read the directory (`permission_denied`)", body = ErrorBody),
        (status = 404, description = "Unknown sandbox (`not_found`), or nothing at `path` (`file_not_found`)", body = ErrorBody),
        (status = 409, description = "The sandbox is not running, or has no agent (`conflict`); a component of `path` is a file (`not_a_directory`; `path` itself a file is listed as that one entry)", body = ErrorBody),
        (status = 503, description = "The store, Docker or the sandbox's agent is unavailable", body = ErrorBody),
    )
)]
pub(crate) async fn list_files(
    service: web::Data<SandboxService>,
    caller: Caller,
    PathId(id): PathId,
    req: HttpRequest,
) -> Result<web::Json<FileListResponse>, ApiError> {
    let query = strict_query(&req)?;
    only(&query, &["path", "recursive", "limit"])?;
    let request = ListRequest {
        path: required(&query, "path")?,
        recursive: flag(&query, "recursive")?.unwrap_or(false),
        limit: number(&query, "limit")?,
    };
    let path = request.path.clone();
    let list = service.list_files(&caller.0, id, request).await?;
    Ok(web::Json(FileListResponse {
        path,
        entries: list.entries.into_iter().map(Into::into).collect(),
        truncated: list.truncated,
    }))
}

/// Makes a directory, owned by the sandbox's user.
#[utoipa::path(
    post, path = "/api/sandboxes/{id}/files/mkdir", tag = "files",
    params(MakeDirectoryQuery),
    responses(
        (status = 200, description = "The directory is there", body = FileEntryResponse),
        (status = 400, description = "Malformed id, no or bad `path` (relative, `..`, `/`, under `/proc`, `/sys` or `/dev`), bad `parents`, an unknown query parameter (`invalid_input`)", body = ErrorBody),
        (status = 403, description = "The sandbox's user may not write there (`permission_denied`)", body = ErrorBody),
        (status = 404, description = "Unknown sandbox (`not_found`); the parent is missing and `parents` is not `true` (`file_not_found`)", body = ErrorBody),
        (status = 409, description = "The sandbox is not running, or has no agent (`conflict`); something is already at `path` (`already_exists`: with `parents`, only when it is not a directory); a component of `path` is a file (`not_a_directory`)", body = ErrorBody),
        (status = 503, description = "The store, Docker or the sandbox's agent is unavailable", body = ErrorBody),
    )
)]
pub(crate) async fn make_directory(
    service: web::Data<SandboxService>,
    caller: Caller,
    PathId(id): PathId,
    req: HttpRequest,
) -> Result<web::Json<FileEntryResponse>, ApiError> {
    let query = strict_query(&req)?;
    only(&query, &["path", "parents"])?;
    let path = required(&query, "path")?;
    let parents = flag(&query, "parents")?.unwrap_or(false);
    let entry = service
        .make_directory(&caller.0, id, &path, parents)
        .await?;
    Ok(web::Json(entry.into()))
}

/// Renames a file, link or directory (within one of the sandbox's file systems).
#[utoipa::path(
    post, path = "/api/sandboxes/{id}/files/move", tag = "files",
    params(MoveQuery),
    responses(
        (status = 200, description = "Moved: what is at `to` now (moving a path onto itself changes nothing)", body = FileEntryResponse),
        (status = 400, description = "Malformed id, no or bad `from` or `to`, bad `overwrite`, an unknown query parameter, a directory into itself (`invalid_input`)", body = ErrorBody),
        (status = 403, description = "The sandbox's user may not move it (`permission_denied`)", body = ErrorBody),
        (status = 404, description = "Unknown sandbox (`not_found`); nothing at `from`, or the directory of `to` is missing (`file_not_found`)", body = ErrorBody),
        (status = 409, description = "The sandbox is not running, has no agent, or the paths are on different file systems (`conflict`); something is at `to` and `overwrite` is not `true` (`already_exists`); a file would replace a directory (`is_directory`); a directory would replace a non-empty one (`directory_not_empty`); a component of a path is a file (`not_a_directory`)", body = ErrorBody),
        (status = 503, description = "The store, Docker or the sandbox's agent is unavailable", body = ErrorBody),
    )
)]
pub(crate) async fn move_path(
    service: web::Data<SandboxService>,
    caller: Caller,
    PathId(id): PathId,
    req: HttpRequest,
) -> Result<web::Json<FileEntryResponse>, ApiError> {
    let query = strict_query(&req)?;
    only(&query, &["from", "to", "overwrite"])?;
    let request = MoveRequest {
        from: required(&query, "from")?,
        to: required(&query, "to")?,
        overwrite: flag(&query, "overwrite")?.unwrap_or(false),
    };
    let entry = service.move_path(&caller.0, id, request).await?;
    Ok(web::Json(entry.into()))
}

/// Removes a file, a link, an empty directory, or with `recursive=true` a whole tree.
#[utoipa::path(
    delete, path = "/api/sandboxes/{id}/files", tag = "files",
    params(RemoveFileQuery),
    responses(
        (status = 200, description = "Removed", body = RemovedResponse),
        (status = 400, description = "Malformed id, no or bad `path` (relative, `..`, `/`, a kernel or engine-mounted file, `/etc/passwd`, `/etc/group`), bad `recursive`, an unknown query parameter (`invalid_input`)", body = ErrorBody),
        (status = 403, description = "The sandbox's user may not remove it (`permission_denied`)", body = ErrorBody),
        (status = 404, description = "Unknown sandbox (`not_found`), or nothing at `path` (`file_not_found`)", body = ErrorBody),
        (status = 409, description = "The sandbox is not running or has no agent, or `path` is a mount point (`conflict`); a directory with entries and `recursive` is not `true` (`directory_not_empty`); a component of `path` is a file (`not_a_directory`)", body = ErrorBody),
        (status = 503, description = "The store, Docker or the sandbox's agent is unavailable", body = ErrorBody),
    )
)]
pub(crate) async fn remove_file(
    service: web::Data<SandboxService>,
    caller: Caller,
    PathId(id): PathId,
    req: HttpRequest,
) -> Result<web::Json<RemovedResponse>, ApiError> {
    let query = strict_query(&req)?;
    only(&query, &["path", "recursive"])?;
    let path = required(&query, "path")?;
    let recursive = flag(&query, "recursive")?.unwrap_or(false);
    let removed = service.remove_path(&caller.0, id, &path, recursive).await?;
    Ok(web::Json(RemovedResponse { path, removed }))
}

/// Lines of a text file, from a line offset.
#[utoipa::path(
    get, path = "/api/sandboxes/{id}/files/lines", tag = "files",
    params(ReadLinesQuery),
    responses(
        (status = 200, description = "The lines asked for (none past the end of the file)", body = FileLinesResponse),
        (status = 400, description = "Malformed id, no or bad `path`, bad `offset` or `limit`, an unknown query parameter (`invalid_input`)", body = ErrorBody),
        (status = 403, description = "The sandbox's user may not read it (`permission_denied`)", body = ErrorBody),
        (status = 404, description = "Unknown sandbox (`not_found`), or nothing at `path` (`file_not_found`)", body = ErrorBody),
        (status = 409, description = "The sandbox is not running, or has no agent (`conflict`); `path` is a directory (`is_directory`); a component of `path` is a file (`not_a_directory`)", body = ErrorBody),
        (status = 503, description = "The store, Docker or the sandbox's agent is unavailable", body = ErrorBody),
    )
)]
pub(crate) async fn read_lines(
    service: web::Data<SandboxService>,
    caller: Caller,
    PathId(id): PathId,
    req: HttpRequest,
) -> Result<web::Json<FileLinesResponse>, ApiError> {
    let query = strict_query(&req)?;
    only(&query, &["path", "offset", "limit"])?;
    let request = ReadLinesRequest {
        path: required(&query, "path")?,
        offset: number(&query, "offset")?.unwrap_or(0),
        limit: number(&query, "limit")?,
    };
    let (path, offset) = (request.path.clone(), request.offset);
    let lines = service.read_lines(&caller.0, id, request).await?;
    Ok(web::Json(FileLinesResponse {
        path,
        offset,
        lines: lines.lines,
        next_offset: lines.next_offset,
    }))
}

/// The lines of files that contain a text or match a regular expression, as `grep -rn`
/// lists them.
#[utoipa::path(
    post, path = "/api/sandboxes/{id}/files/search", tag = "files",
    params(SearchPathQuery),
    request_body = SearchRequestBody,
    responses(
        (status = 200, description = "What was found", body = SearchResponse),
        (status = 400, description = "Malformed id or JSON, not exactly one of `pattern` and `regex`, one that is empty, a `regex` that does not parse, a bad `glob`, `path` or `max_results`, an unknown query parameter (`invalid_input`)", body = ErrorBody),
        (status = 403, description = "The sandbox's user may not read `path` (`permission_denied`)", body = ErrorBody),
        (status = 404, description = "Unknown sandbox (`not_found`), or nothing at `path` (`file_not_found`)", body = ErrorBody),
        (status = 409, description = "The sandbox is not running, or has no agent (`conflict`); a component of `path` is a file (`not_a_directory`)", body = ErrorBody),
        (status = 413, description = "Body over MONZA_MAX_COMMAND_BYTES", body = ErrorBody),
        (status = 503, description = "The store, Docker or the sandbox's agent is unavailable", body = ErrorBody),
    )
)]
pub(crate) async fn search_files(
    service: web::Data<SandboxService>,
    caller: Caller,
    PathId(id): PathId,
    req: HttpRequest,
    body: CommandJson<SearchRequestBody>,
) -> Result<web::Json<SearchResponse>, ApiError> {
    let query = strict_query(&req)?;
    only(&query, &["path"])?;
    let body = body.0;
    let (pattern, regex) = match (body.pattern, body.regex) {
        (Some(text), None) => (text, false),
        (None, Some(expression)) => (expression, true),
        _ => {
            return Err(ApiError::invalid(
                "give exactly one of `pattern` (literal text) and `regex` (a regular expression)",
            ));
        }
    };
    let request = SearchRequest {
        path: query_param(&query, "path")?,
        pattern,
        regex,
        ignore_case: body.ignore_case,
        glob: body.glob,
        max_results: body.max_results,
    };
    let found = service.search_files(&caller.0, id, request).await?;
    Ok(web::Json(SearchResponse {
        matches: found
            .matches
            .into_iter()
            .map(|m| SearchMatchResponse {
                path: m.path,
                line: m.line,
                text: m.text,
            })
            .collect(),
        truncated: found.truncated,
    }))
}

/// The paths below a directory that match a glob.
#[utoipa::path(
    post, path = "/api/sandboxes/{id}/files/glob", tag = "files",
    params(SearchPathQuery),
    request_body = GlobRequestBody,
    responses(
        (status = 200, description = "What matched", body = GlobResponse),
        (status = 400, description = "Malformed id or JSON, an empty or absolute `pattern`, a bad `path` or `max_results`, an unknown query parameter (`invalid_input`)", body = ErrorBody),
        (status = 403, description = "The sandbox's user may not read `path` (`permission_denied`)", body = ErrorBody),
        (status = 404, description = "Unknown sandbox (`not_found`), or nothing at `path` (`file_not_found`)", body = ErrorBody),
        (status = 409, description = "The sandbox is not running, or has no agent (`conflict`); a component of `path` is a file (`not_a_directory`; below a file nothing matches)", body = ErrorBody),
        (status = 413, description = "Body over MONZA_MAX_COMMAND_BYTES", body = ErrorBody),
        (status = 503, description = "The store, Docker or the sandbox's agent is unavailable", body = ErrorBody),
    )
)]
pub(crate) async fn glob_files(
    service: web::Data<SandboxService>,
    caller: Caller,
    PathId(id): PathId,
    req: HttpRequest,
    body: CommandJson<GlobRequestBody>,
) -> Result<web::Json<GlobResponse>, ApiError> {
    let query = strict_query(&req)?;
    only(&query, &["path"])?;
    let body = body.0;
    let request = GlobRequest {
        path: query_param(&query, "path")?,
        pattern: body.pattern,
        max_results: body.max_results,
    };
    let found = service.glob_files(&caller.0, id, request).await?;
    Ok(web::Json(GlobResponse {
        paths: found.paths,
        truncated: found.truncated,
    }))
}

/// Replaces text in a file, atomically, keeping its mode and owner.
#[utoipa::path(
    post, path = "/api/sandboxes/{id}/files/edit", tag = "files",
    params(EditQuery),
    request_body = EditRequestBody,
    responses(
        (status = 200, description = "Edited", body = EditResponse),
        (status = 400, description = "Malformed id or JSON, no or bad `path`, an unknown query parameter, an empty `old_string`, a file over 64 MiB or not a regular file (`invalid_input`)", body = ErrorBody),
        (status = 403, description = "The sandbox's user may not write it (`permission_denied`)", body = ErrorBody),
        (status = 404, description = "Unknown sandbox (`not_found`), or nothing at `path` (`file_not_found`)", body = ErrorBody),
        (status = 409, description = "The sandbox is not running, or has no agent (`conflict`); `path` is a directory (`is_directory`); `old_string` is not in the file (`no_match`), or is there more than once without `replace_all` (`ambiguous_match`); nothing was changed; a component of `path` is a file (`not_a_directory`)", body = ErrorBody),
        (status = 413, description = "Body over MONZA_MAX_COMMAND_BYTES", body = ErrorBody),
        (status = 503, description = "The store, Docker or the sandbox's agent is unavailable", body = ErrorBody),
    )
)]
pub(crate) async fn edit_file(
    service: web::Data<SandboxService>,
    caller: Caller,
    PathId(id): PathId,
    req: HttpRequest,
    body: CommandJson<EditRequestBody>,
) -> Result<web::Json<EditResponse>, ApiError> {
    let query = strict_query(&req)?;
    only(&query, &["path"])?;
    let path = required(&query, "path")?;
    let body = body.0;
    let request = EditRequest {
        path: path.clone(),
        old: body.old_string,
        new: body.new_string,
        replace_all: body.replace_all,
    };
    let replacements = service.edit_file(&caller.0, id, request).await?;
    Ok(web::Json(EditResponse { path, replacements }))
}

/// Unpacks a tar archive (plain or gzip) into a directory.
#[utoipa::path(
    put, path = "/api/sandboxes/{id}/files/archive", tag = "files",
    params(ArchiveQuery),
    request_body(content = Option<Vec<u8>>, content_type = "application/x-tar",
        description = "A tar archive, or a gzip of one (told by its first bytes; any content type is accepted). Entries are relative to `path`: files, directories, symbolic links and hard links to earlier entries. The whole archive is received and checked before anything is written."),
    responses(
        (status = 200, description = "Unpacked; everything is the sandbox user's, setuid and setgid bits dropped", body = ArchiveResponse),
        (status = 400, description = "Malformed id, no or bad `path`, an unknown query parameter, an archive that does not parse or holds a device, a pipe or an entry of another kind (`invalid_input`); an absolute entry, one with `..`, one written through a symbolic link (the archive's or one in the sandbox), a hard link to anything but an earlier entry, `path` itself a symbolic link (`invalid_path`). Nothing is written", body = ErrorBody),
        (status = 403, description = "The sandbox's file system refused it (`permission_denied`)", body = ErrorBody),
        (status = 404, description = "Unknown sandbox (`not_found`)", body = ErrorBody),
        (status = 408, description = "The body did not arrive in time or kept too slow a pace", body = ErrorBody),
        (status = 409, description = "The sandbox is not running (`conflict`); an entry where a directory is, or the reverse (`is_directory`); a file on the way (`not_a_directory`)", body = ErrorBody),
        (status = 413, description = "The archive is over MONZA_MAX_ARCHIVE_BYTES (1 GiB by default) or has more entries than MONZA_FILE_WALK_MAX_ENTRIES", body = ErrorBody),
        (status = 503, description = "The store or Docker is unavailable", body = ErrorBody),
    )
)]
pub(crate) async fn put_archive(
    service: web::Data<SandboxService>,
    config: web::Data<HttpConfig>,
    caller: Caller,
    PathId(id): PathId,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<web::Json<ArchiveResponse>, ApiError> {
    let query = strict_query(&req)?;
    only(&query, &["path"])?;
    let path = required(&query, "path")?;
    let limit = service.config().max_archive_bytes;
    if announced_length(&req).is_some_and(|size| size > limit) {
        return Err(archive_over(limit));
    }
    // Checked before the body is read: a bad path or an ended sandbox costs no upload.
    paths::changeable("path", &path)?;
    service.check_upload(&caller.0, id).await?;
    let body = Paced::upload(payload, &config);
    let spooled = spool_stream(
        String::new(),
        body.map_err(payload_error),
        (limit, archive_over),
        config.upload_dir.clone(),
    )
    .await?;
    let (file, size) = spooled.into_std().await;
    let report = service
        .put_tree(&caller.0, id, &path, SpooledArchive { file, size })
        .await?;
    Ok(web::Json(ArchiveResponse {
        path,
        files: report.files,
        directories: report.directories,
        links: report.links,
        bytes: report.bytes,
    }))
}

fn archive_over(limit: u64) -> ApiError {
    ApiError::too_large(format!(
        "the archive is over the limit of {limit} bytes (MONZA_MAX_ARCHIVE_BYTES)"
    ))
}

/// The contents of a directory as a tar stream.
#[utoipa::path(
    get, path = "/api/sandboxes/{id}/files/archive", tag = "files",
    params(GetArchiveQuery),
    responses(
        (status = 200, description = "A tar of the directory's contents (entries `./…`, symbolic links as links), gzip-compressed with `gzip=true`, streamed as the sandbox produces it; past MONZA_MAX_ARCHIVE_BYTES (1 GiB by default) of tar the stream is cut, so the client sees an incomplete tar", content(("application/x-tar"), ("application/gzip"))),
        (status = 400, description = "Malformed id, no or bad `path` or `gzip`, an unknown query parameter (`invalid_input`)", body = ErrorBody),
        (status = 404, description = "Unknown sandbox (`not_found`), or nothing at `path` (`file_not_found`)", body = ErrorBody),
        (status = 409, description = "The sandbox is not running (`conflict`); `path` is not a directory (`not_a_directory`)", body = ErrorBody),
        (status = 503, description = "The store or Docker is unavailable", body = ErrorBody),
    )
)]
pub(crate) async fn get_archive(
    service: web::Data<SandboxService>,
    caller: Caller,
    PathId(id): PathId,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let query = strict_query(&req)?;
    only(&query, &["path", "gzip"])?;
    let path = required(&query, "path")?;
    let gzip = flag(&query, "gzip")?.unwrap_or(false);
    let tree = service.get_tree(&caller.0, id, &path).await?;
    let name = path
        .rsplit('/')
        .find(|part| !part.is_empty())
        .unwrap_or("root");
    let (file_name, content_type) = if gzip {
        (format!("{name}.tar.gz"), "application/gzip")
    } else {
        (format!("{name}.tar"), "application/x-tar")
    };
    let disposition = HeaderValue::from_str(&content_disposition(&file_name))
        .map_err(|e| ApiError::internal(format!("Content-Disposition for {name:?}: {e}")))?;
    let body = first_chunk_checked(tree).await?;
    let mut answer = HttpResponse::Ok();
    answer
        .insert_header((header::CONTENT_TYPE, content_type))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::CONTENT_DISPOSITION, disposition));
    if !gzip {
        return Ok(answer.streaming(body));
    }
    // Compressed as it streams (the fastest level: a tree goes out at the pace it is read).
    let reader =
        tokio_util::io::StreamReader::new(body.map_err(|e| std::io::Error::other(e.to_string())));
    let encoder = async_compression::tokio::bufread::GzipEncoder::with_quality(
        reader,
        async_compression::Level::Fastest,
    );
    Ok(answer.streaming(tokio_util::io::ReaderStream::new(encoder)))
}
