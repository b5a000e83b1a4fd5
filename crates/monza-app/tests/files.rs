#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The exact-path file routes (`PUT`, `GET` with `Range`, `HEAD` of `…/files?path=`, and
//! `…/files/stat`) against a real engine, on the busybox image (no python3) with a non-root
//! `remoteUser`: what the API writes belongs to that user, who can then edit it.

#[macro_use]
mod support;

use reqwest::StatusCode;
use serde_json::{Value, json};
use support::{Store, TestApp, assert_error};

async fn put(app: &TestApp, id: &str, query: &str, body: &'static [u8]) -> (StatusCode, Value) {
    app.send(
        app.client
            .put(app.url(&format!("/api/sandboxes/{id}/files?{query}")))
            .body(body),
    )
    .await
}

async fn sh(app: &TestApp, id: &str, command: &str) -> String {
    let out = app.exec_ok(id, command).await;
    assert_eq!(out["exitCode"], 0, "{command}: {out}");
    out["stdout"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn exact_path_files_belong_to_the_sandboxs_user_and_are_never_guessed() {
    let Some(app) = TestApp::spawn(Store::Sqlite, |_| {}).await else {
        return;
    };
    let sandbox = app.create(json!({"template": "busybox-user"})).await;
    assert_eq!(sandbox["status"], "running", "{sandbox}");
    let id = sandbox["id"].as_str().unwrap().to_owned();

    // The workspace folder the engine created is the user's, who can write in it.
    assert_eq!(
        sh(
            &app,
            &id,
            "id -un; stat -c '%U %a' /workspaces/app; touch /workspaces/app/mine"
        )
        .await,
        "dev\ndev 755\n"
    );

    // A new file with a mode; its content and owner as asked.
    let (status, body) = put(
        &app,
        &id,
        "path=/workspaces/app/run.sh&mode=755",
        b"#!/bin/sh\necho hi\n",
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body,
        json!({"path": "/workspaces/app/run.sh", "size": 18, "mode": "0755"})
    );
    assert_eq!(
        sh(
            &app,
            &id,
            "/workspaces/app/run.sh; stat -c '%U %G %a' /workspaces/app/run.sh"
        )
        .await,
        "hi\ndev dev 755\n"
    );
    // Replaced without a mode: the mode stays.
    let (status, body) = put(
        &app,
        &id,
        "path=/workspaces/app/run.sh",
        b"#!/bin/sh\necho 2\n",
    )
    .await;
    assert_eq!(
        (status, &body["mode"]),
        (StatusCode::OK, &json!("0755")),
        "{body}"
    );

    // A missing parent is an error unless asked for; created parents are the user's, the
    // directories that were there are not re-owned.
    assert_error(
        "missing parent",
        &put(&app, &id, "path=/tmp/new/deep/f.txt", b"x").await,
        404,
        "file_not_found",
    );
    let (status, body) = put(&app, &id, "path=/tmp/new/deep/f.txt&parents=true", b"x").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        sh(
            &app,
            &id,
            "cd /tmp && stat -c '%n %U %a' . new new/deep new/deep/f.txt && echo more >> new/deep/f.txt"
        )
        .await,
        ". root 1777\nnew dev 755\nnew/deep dev 755\nnew/deep/f.txt dev 644\n"
    );

    // Never destroy, never guess.
    sh(
        &app,
        &id,
        "mkdir -p /workspaces/app/dir && echo keep > /workspaces/app/dir/k",
    )
    .await;
    assert_error(
        "over a directory",
        &put(&app, &id, "path=/workspaces/app/dir", b"x").await,
        409,
        "is_directory",
    );
    assert_error(
        "under a file",
        &put(
            &app,
            &id,
            "path=/workspaces/app/run.sh/x&parents=true",
            b"x",
        )
        .await,
        400,
        "not_a_directory",
    );
    for (query, what) in [
        ("path=/workspaces/app/m&mode=4755", "a setuid mode"),
        ("path=/workspaces/app/m&mode=9", "a non-octal mode"),
        ("path=/workspaces/app/m&parent=true", "an unknown parameter"),
        ("path=workspaces/m", "a relative path"),
        ("mode=644", "no path"),
    ] {
        assert_error(
            what,
            &put(&app, &id, query, b"x").await,
            400,
            "invalid_input",
        );
    }
    let (status, body) = put(
        &app,
        &id,
        "path=/workspaces/app/%20back%5Cslash.txt%20",
        b"x",
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["path"], "/workspaces/app/ back\\slash.txt ");
    assert_eq!(
        sh(
            &app,
            &id,
            "cat /workspaces/app/dir/k; ls /workspaces/app/' back\\slash.txt '"
        )
        .await,
        "keep\n/workspaces/app/ back\\slash.txt \n"
    );

    // A chunked body (no Content-Length) is written whole.
    let chunks: Vec<Result<&'static [u8], std::io::Error>> = vec![Ok(b"chunk-1 "), Ok(b"chunk-2")];
    let (status, body) = app
        .send(
            app.client
                .put(app.url(&format!(
                    "/api/sandboxes/{id}/files?path=/workspaces/app/c.txt"
                )))
                .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks))),
        )
        .await;
    assert_eq!(
        (status, &body["size"]),
        (StatusCode::OK, &json!(15)),
        "{body}"
    );
    assert_eq!(
        sh(&app, &id, "cat /workspaces/app/c.txt").await,
        "chunk-1 chunk-2"
    );

    // Reads: whole, one range, a suffix, past the end.
    let get = |range: Option<&'static str>| {
        let mut request = app.client.get(app.url(&format!(
            "/api/sandboxes/{id}/files?path=/workspaces/app/c.txt"
        )));
        if let Some(range) = range {
            request = request.header("Range", range);
        }
        request.send()
    };
    let whole = get(None).await.unwrap();
    assert_eq!(whole.status(), StatusCode::OK);
    assert_eq!(whole.headers()["x-monza-file-mode"], "0644");
    assert_eq!(whole.headers()["accept-ranges"], "bytes");
    assert_eq!(whole.bytes().await.unwrap(), &b"chunk-1 chunk-2"[..]);
    let part = get(Some("bytes=2-4")).await.unwrap();
    assert_eq!(part.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(part.headers()["content-range"], "bytes 2-4/15");
    assert_eq!(part.bytes().await.unwrap(), &b"unk"[..]);
    let suffix = get(Some("bytes=-3")).await.unwrap();
    assert_eq!(suffix.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(suffix.bytes().await.unwrap(), &b"k-2"[..]);
    let past = get(Some("bytes=100-")).await.unwrap();
    assert_eq!(past.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(past.headers()["content-range"], "bytes */15");
    assert_eq!(
        past.headers()["x-monza-error-code"],
        "range_not_satisfiable"
    );
    assert_error(
        "read of a directory",
        &app.get_json(&format!(
            "/api/sandboxes/{id}/files?path=/workspaces/app/dir"
        ))
        .await,
        409,
        "is_directory",
    );

    // HEAD and stat: what is there, a link described itself; a missing file and an unknown
    // sandbox are told apart.
    let head = |path: &str, sandbox: &str| {
        app.client
            .head(app.url(&format!("/api/sandboxes/{sandbox}/files?path={path}")))
            .send()
    };
    let file = head("/workspaces/app/run.sh", &id).await.unwrap();
    assert_eq!(file.status(), StatusCode::OK);
    assert_eq!(file.headers()["x-monza-file-type"], "file");
    assert_eq!(file.headers()["x-monza-file-mode"], "0755");
    assert_eq!(file.headers()["content-length"], "17");
    assert!(file.headers().contains_key("last-modified"));
    let dir = head("/workspaces/app/dir", &id).await.unwrap();
    assert_eq!(dir.headers()["x-monza-file-type"], "directory");
    let missing = head("/workspaces/app/nope", &id).await.unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    assert_eq!(missing.headers()["x-monza-error-code"], "file_not_found");
    let unknown = head("/x", "00000000-0000-4000-8000-000000000000")
        .await
        .unwrap();
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
    assert_eq!(unknown.headers()["x-monza-error-code"], "not_found");

    sh(&app, &id, "ln -s run.sh /workspaces/app/link").await;
    let (status, link) = app
        .get_json(&format!(
            "/api/sandboxes/{id}/files/stat?path=/workspaces/app/link"
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{link}");
    assert_eq!(link["type"], "symlink");
    // The engine reports the target resolved to an absolute path.
    assert_eq!(link["link_target"], "/workspaces/app/run.sh");
    assert_eq!(link["name"], "link");
    let (status, dir) = app
        .get_json(&format!(
            "/api/sandboxes/{id}/files/stat?path=/workspaces/app"
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{dir}");
    assert_eq!(
        (&dir["type"], &dir["mode"]),
        (&json!("directory"), &json!("0755"))
    );
    assert!(
        dir["modified_at"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z')),
        "{dir}"
    );
    assert_error(
        "stat of nothing",
        &app.get_json(&format!("/api/sandboxes/{id}/files/stat?path=/nope"))
            .await,
        404,
        "file_not_found",
    );
    app.shutdown().await;
}
