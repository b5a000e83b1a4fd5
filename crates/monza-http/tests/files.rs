//! Upload and download through the real router: streaming, limits and hostile input.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns: a panic is the failure report

mod support;

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::body::BodySize;
use actix_web::dev::Payload;
use actix_web::error::PayloadError;
use actix_web::http::header;
use actix_web::test::TestRequest;
use bytes::Bytes;
use futures::{Stream, StreamExt, TryStreamExt};
use monza_domain::{Error, FileDownload, SandboxId, SandboxStatus, ServiceConfig, UploadFile};
use monza_http::HttpConfig;
use serde_json::json;
use support::{Answer, Mocks, Part, TestApp, multipart, sandbox, sandbox_uri};

/// What the runtime mock received: the destination and the file, stream included.
type Received = Arc<Mutex<Option<(String, UploadFile)>>>;

/// Mocks for an upload into a running sandbox; the runtime keeps what it receives.
fn uploading(max_upload_bytes: u64) -> (Mocks, SandboxId, Received) {
    let sb = sandbox(SandboxStatus::Running);
    let mut m = Mocks::serving(&sb);
    m.config = ServiceConfig {
        max_upload_bytes,
        ..ServiceConfig::default()
    };
    let received: Received = Arc::default();
    let keep = received.clone();
    m.runtime
        .expect_upload()
        .withf(|cid, _, _| cid == "c0ffee")
        .returning(move |_, dir, file| {
            let stat = monza_domain::testing::fixtures::file_stat(&file.name, file.size);
            *keep.lock().unwrap() = Some((dir.to_owned(), file));
            Ok(stat)
        });
    (m, sb.id, received)
}

fn upload_request(id: SandboxId, parts: &[Part<'_>]) -> TestRequest {
    let (content_type, body) = multipart(parts);
    TestRequest::post()
        .uri(&sandbox_uri(id, "/files/upload"))
        .insert_header((header::CONTENT_TYPE, content_type))
        .set_payload(body)
}

/// Sends an upload whose body is `head` and then nothing, never ending; the answer must come
/// anyway (`why` says why, when it does not).
async fn upload_never_ending(
    app: &TestApp,
    id: SandboxId,
    content_type: String,
    head: Bytes,
    why: &str,
) -> Answer {
    let req = TestRequest::post()
        .uri(&sandbox_uri(id, "/files/upload"))
        .insert_header((header::CONTENT_TYPE, content_type));
    let answer = app.call_streaming(req, Payload::from(endless(head)));
    tokio::time::timeout(Duration::from_secs(10), answer)
        .await
        .expect(why)
}

/// An upload directory of its own, to check nothing is left in it.
fn spool_dir() -> (tempfile::TempDir, HttpConfig) {
    let dir = tempfile::tempdir().unwrap();
    let config = HttpConfig {
        upload_dir: dir.path().to_owned(),
        ..HttpConfig::default()
    };
    (dir, config)
}

fn is_empty(dir: &tempfile::TempDir) -> bool {
    std::fs::read_dir(dir.path()).unwrap().next().is_none()
}

#[actix_web::test]
async fn upload_streams_the_file_into_the_workspace() {
    let (m, id, received) = uploading(1024 * 1024);
    let (dir, config) = spool_dir();
    let app = app!(m.service(), config);
    // Several chunks' worth (the spool is read back 256 KiB at a time), and every byte value.
    let content: Vec<u8> = (0..600_000u32).map(|i| (i % 251) as u8).collect();
    let res = app
        .call(upload_request(id, &[("file", Some("main.go"), &content)]))
        .await;
    assert_eq!(res.status, 200, "{:?}", res.body);
    assert_eq!(
        res.json(),
        json!({"status": "ok", "path": "/workspace/main.go"})
    );
    let (dest, file) = received.lock().unwrap().take().unwrap();
    assert_eq!(dest, "/workspace");
    assert_eq!(file.name, "main.go");
    assert_eq!(file.size, content.len() as u64);
    let chunks: Vec<Bytes> = file.content.try_collect().await.unwrap();
    assert!(chunks.len() > 1, "streamed in chunks, not one buffer");
    assert_eq!(chunks.concat(), content);
    assert!(is_empty(&dir), "the spooled upload left a file behind");
}

#[actix_web::test]
async fn upload_takes_the_path_field_before_or_after_the_file() {
    for path_first in [true, false] {
        let (m, id, received) = uploading(1024);
        let app = app!(m.service());
        let file = ("file", Some("notes.txt"), &b"hello"[..]);
        let path = ("path", None, &b"/home/dev/"[..]);
        let parts = if path_first {
            [path, file]
        } else {
            [file, path]
        };
        let res = app.call(upload_request(id, &parts)).await;
        assert_eq!(res.status, 200, "{:?}", res.body);
        assert_eq!(res.json()["path"], "/home/dev/notes.txt");
        let (dest, file) = received.lock().unwrap().take().unwrap();
        assert_eq!(dest, "/home/dev");
        let bytes: Vec<Bytes> = file.content.try_collect().await.unwrap();
        assert_eq!(bytes.concat(), b"hello");
    }
}

#[actix_web::test]
async fn an_upload_over_the_limit_is_413_and_never_reaches_the_sandbox() {
    let (mut m, id, _) = uploading(1024);
    m.runtime.checkpoint();
    m.runtime.expect_upload().never();
    let (dir, config) = spool_dir();
    let app = app!(m.service(), config);
    let res = app
        .call(upload_request(
            id,
            &[("file", Some("big.bin"), &[7u8; 1025])],
        ))
        .await;
    res.error_mentioning(413, "too_large", "1024 bytes");
    assert!(is_empty(&dir));

    // Exactly at the limit is fine.
    let (m, id, received) = uploading(1024);
    let app = app!(m.service());
    let res = app
        .call(upload_request(
            id,
            &[("file", Some("big.bin"), &[7u8; 1024])],
        ))
        .await;
    assert_eq!(res.status, 200, "{:?}", res.body);
    assert!(received.lock().unwrap().is_some());
}

/// A request body that sends `head`, then nothing, and never ends.
fn endless(head: Bytes) -> Pin<Box<dyn Stream<Item = Result<Bytes, PayloadError>>>> {
    Box::pin(futures::stream::once(async move { Ok(head) }).chain(futures::stream::pending()))
}

#[actix_web::test]
async fn the_upload_limit_is_enforced_while_the_body_is_still_arriving() {
    let (mut m, id, _) = uploading(1024);
    m.runtime.checkpoint();
    m.runtime.expect_upload().never();
    let app = app!(m.service());
    let (content_type, body) = multipart(&[("file", Some("endless.bin"), &[1u8; 4096])]);
    // The first 3 KiB arrive, then the client never sends more and never finishes.
    let head = Bytes::from(body[..3072].to_vec());
    let why = "the 413 must come before the body ends";
    let res = upload_never_ending(&app, id, content_type, head, why).await;
    res.error(413, "too_large");
}

#[actix_web::test]
async fn malformed_or_incomplete_forms_are_400() {
    let (m, id, _) = uploading(1024);
    let app = app!(m.service());
    let uri = sandbox_uri(id, "/files/upload");

    let garbage = app
        .post_raw(
            &uri,
            "multipart/form-data; boundary=XYZ",
            "this is not a multipart body",
        )
        .await;
    let message = garbage.error(400, "invalid_input");
    assert!(message.starts_with("malformed multipart body"), "{message}");

    let no_boundary = app.post_raw(&uri, "multipart/form-data", "--x\r\n").await;
    no_boundary.error(400, "invalid_input");

    let not_multipart = app.post_json(&uri, &json!({"file": "x"})).await;
    not_multipart.error(415, "unsupported_media_type");

    for name in ["..", "../../etc/main.go", "a\tb"] {
        let res = app
            .call(upload_request(id, &[("file", Some(name), b"x")]))
            .await;
        res.error(400, "invalid_path");
    }

    let cases: [(&[Part<'_>], &str); 4] = [
        (&[("path", None, b"/workspace")], "no `file` field"),
        (&[("file", None, b"abc")], "no filename"),
        (
            &[("file", Some("a"), b"1"), ("file", Some("b"), b"2")],
            "more than one `file`",
        ),
        (&[("other", None, b"x")], "unexpected form field \"other\""),
    ];
    for (parts, expected) in cases {
        let res = app.call(upload_request(id, parts)).await;
        let message = res.error(400, "invalid_input");
        assert!(message.contains(expected), "{expected}: {message}");
    }

    let long_path = format!("/{}", "a".repeat(9000));
    let parts: [Part<'_>; 2] = [
        ("path", None, long_path.as_bytes()),
        ("file", Some("a"), b"1"),
    ];
    let res = app.call(upload_request(id, &parts)).await;
    res.error_mentioning(400, "invalid_input", "longer than 8192 bytes");
}

#[actix_web::test]
async fn bad_destination_paths_are_400() {
    for (path, expected) in [
        (&b"workspace"[..], "not absolute"),
        (b"/workspace/../etc", "\"..\""),
        (b"/work\0space", "NUL"),
        (b"/\xff\xfe", "not valid UTF-8"),
    ] {
        let (mut m, id, _) = uploading(1024);
        m.runtime.checkpoint();
        m.runtime.expect_upload().never();
        let app = app!(m.service());
        let parts: [Part<'_>; 2] = [("path", None, path), ("file", Some("a.txt"), b"x")];
        let res = app.call(upload_request(id, &parts)).await;
        let message = res.error(400, "invalid_input");
        assert!(message.contains(expected), "{expected}: {message}");
    }
}

#[actix_web::test]
async fn upload_to_a_stopped_sandbox_is_409_and_to_an_unknown_one_404() {
    let deleted = sandbox(SandboxStatus::Deleted);
    let app = app!(Mocks::finding(&deleted).service());
    // Refused before the body is read: the body never ends.
    let (content_type, _) = multipart(&[]);
    let why = "the 409 must not wait for the body";
    let res = upload_never_ending(&app, deleted.id, content_type, Bytes::new(), why).await;
    res.error(409, "conflict");

    let app = app!(Mocks::permissive().service());
    let res = app
        .call(upload_request(
            SandboxId::new_random(),
            &[("file", Some("a"), b"1")],
        ))
        .await;
    res.error(404, "not_found");
}

/// Mocks for a download of `name` whose content arrives in `chunks`.
fn downloading(name: &str, chunks: Vec<&'static [u8]>) -> (Mocks, SandboxId) {
    let sb = sandbox(SandboxStatus::Running);
    let mut m = Mocks::serving(&sb);
    let name = name.to_owned();
    m.runtime
        .expect_download()
        .withf(|cid, path| cid == "c0ffee" && path == "/workspace/out")
        .returning(move |_, _| {
            let size = chunks.iter().map(|c| c.len() as u64).sum();
            let stream = futures::stream::iter(
                chunks
                    .clone()
                    .into_iter()
                    .map(|c| Ok::<_, Error>(Bytes::from_static(c))),
            );
            Ok(FileDownload {
                stat: monza_domain::testing::fixtures::file_stat(&name, size),
                content: stream.boxed(),
            })
        });
    (m, sb.id)
}

fn download_uri(id: SandboxId) -> String {
    sandbox_uri(id, "/files/download?path=/workspace/out/")
}

#[actix_web::test]
async fn download_streams_the_bytes_with_length_type_and_disposition() {
    // A PNG is still `application/octet-stream`: the type is never guessed from the bytes.
    let png: &'static [u8] = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR";
    let (m, id) = downloading("chart.png", vec![png, b"rest of the image"]);
    let app = app!(m.service());
    let res = app.get(&download_uri(id)).await;
    assert_eq!(res.status, 200);
    assert_eq!(res.header("content-type"), "application/octet-stream");
    assert_eq!(res.header("x-content-type-options"), "nosniff");
    assert_eq!(res.size, BodySize::Sized(png.len() as u64 + 17));
    assert_eq!(
        res.header("content-disposition"),
        "attachment; filename=\"chart.png\"; filename*=UTF-8''chart.png"
    );
    assert_eq!(res.body, [png, b"rest of the image"].concat());
}

#[actix_web::test]
async fn every_download_is_octet_stream_whatever_its_bytes() {
    let cases: [&'static [u8]; 4] = [
        b"package main\n",
        b"\x01\x02\0\x03",
        b"",
        b"<!DOCTYPE html><html><script>alert(1)</script></html>",
    ];
    for content in cases {
        let (m, id) = downloading("f", vec![content]);
        let app = app!(m.service());
        let res = app.get(&download_uri(id)).await;
        assert_eq!(res.status, 200);
        assert_eq!(res.header("content-type"), "application/octet-stream");
        assert_eq!(res.header("x-content-type-options"), "nosniff");
        assert_eq!(res.size, BodySize::Sized(content.len() as u64));
        assert_eq!(res.body, content);
    }
}

#[actix_web::test]
async fn a_hostile_file_name_cannot_inject_headers() {
    let (m, id) = downloading("ré\"port\r\nSet-Cookie: a=b.txt", vec![b"x"]);
    let app = app!(m.service());
    let res = app.get(&download_uri(id)).await;
    assert_eq!(res.status, 200);
    assert!(res.headers.get("set-cookie").is_none());
    assert_eq!(
        res.header("content-disposition"),
        "attachment; filename=\"r__port__Set-Cookie: a=b.txt\"; \
         filename*=UTF-8''r%C3%A9%22port%0D%0ASet-Cookie%3A%20a%3Db.txt"
    );
}

#[actix_web::test]
async fn download_path_errors_are_400_and_a_missing_file_404() {
    let app = app!(Mocks::permissive().service());
    let id = SandboxId::new_random();
    let base = sandbox_uri(id, "/files/download");
    let no_path = app.get(&base).await;
    no_path.error_mentioning(400, "invalid_input", "path");
    for (query, expected) in [
        ("path=relative/file", "not absolute"),
        ("path=/workspace/../etc/shadow", "\"..\""),
        ("path=/a%00b", "NUL"),
        ("path=", "empty"),
    ] {
        let res = app.get(&format!("{base}?{query}")).await;
        let message = res.error(400, "invalid_input");
        assert!(message.contains(expected), "{query}: {message}");
    }

    let sb = sandbox(SandboxStatus::Running);
    let mut m = Mocks::serving(&sb);
    m.runtime
        .expect_download()
        .returning(|_, path| Err(Error::not_found(format!("no such file {path}"))));
    // The container is there: the file is what is missing.
    m.runtime
        .expect_state()
        .returning(|_| Ok(monza_domain::ContainerState::Running));
    let res = app!(m.service())
        .get(&sandbox_uri(sb.id, "/files/download?path=/nope"))
        .await;
    let message = res.error(404, "not_found");
    assert_eq!(message, "no such file /nope");
}
