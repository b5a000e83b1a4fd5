#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The exact-path file routes (`PUT`, `GET` with `Range`, `HEAD` of `…/files?path=`, and
//! `…/files/stat`) against a real engine, on the busybox image (no python3) with a non-root
//! `remoteUser`: what the API writes belongs to that user, who can then edit it.

#[macro_use]
mod support;

use monza_app::settings::AgentMode;
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
    exact_path_files(AgentMode::On, "busybox-user", "dev").await;
}

/// The same through the engine's archive endpoint alone (no agent to take small files).
#[tokio::test]
async fn exact_path_files_through_the_engine_alone() {
    exact_path_files(AgentMode::Off, "busybox-user", "dev").await;
}

/// The same on a Debian image (glibc, coreutils) whose user is `vscode`, as the official
/// devcontainer images have.
#[tokio::test]
async fn exact_path_files_on_a_debian_image_with_its_vscode_user() {
    exact_path_files(AgentMode::On, "debian-user", "vscode").await;
}

/// Small files go through the agent when it runs (as the sandbox's user) and through the
/// engine otherwise; the answers, owners and modes are the same either way.
async fn exact_path_files(agent: AgentMode, template: &str, user: &str) {
    let Some(app) = TestApp::spawn(Store::Sqlite, |args| args.agent = agent).await else {
        return;
    };
    let sandbox = app.create(json!({ "template": template })).await;
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
        format!("{user}\n{user} 755\n")
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
        format!("hi\n{user} {user} 755\n")
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
        format!(". root 1777\nnew {user} 755\nnew/deep {user} 755\nnew/deep/f.txt {user} 644\n")
    );

    // A directory the user may not write (root's /etc): the write is done all the same, as
    // before the agent took small files, and the file is the user's.
    let (status, body) = put(&app, &id, "path=/etc/monza-note.txt", b"note").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        sh(
            &app,
            &id,
            "stat -c '%U %a' /etc/monza-note.txt; cat /etc/monza-note.txt"
        )
        .await,
        format!("{user} 644\nnote")
    );
    // A file larger than what the agent takes whole streams through the engine both ways.
    let big: Vec<u8> = (0..(3u32 << 20) / 4).flat_map(u32::to_le_bytes).collect();
    let (status, body) = app
        .send(
            app.client
                .put(app.url(&format!(
                    "/api/sandboxes/{id}/files?path=/workspaces/app/big.bin"
                )))
                .body(big.clone()),
        )
        .await;
    assert_eq!(
        (status, &body["size"]),
        (StatusCode::OK, &json!(big.len())),
        "{body}"
    );
    let back = app
        .client
        .get(app.url(&format!(
            "/api/sandboxes/{id}/files?path=/workspaces/app/big.bin"
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(back.status(), StatusCode::OK);
    assert!(
        back.bytes().await.unwrap() == big,
        "the big file came back changed"
    );
    assert_eq!(
        sh(&app, &id, "stat -c '%U %s' /workspaces/app/big.bin").await,
        format!("{user} {}\n", big.len())
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
        409,
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

/// `POST …/files/{op}` with `query`, and `body` as JSON when there is one.
async fn call(
    app: &TestApp,
    id: &str,
    op: &str,
    query: &[(&str, &str)],
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut request = app
        .client
        .post(app.url(&format!("/api/sandboxes/{id}/files/{op}")))
        .query(query);
    if let Some(body) = body {
        request = request.json(&body);
    }
    app.send(request).await
}

async fn mkdir(app: &TestApp, id: &str, path: &str, parents: bool) -> (StatusCode, Value) {
    let parents = if parents { "true" } else { "false" };
    call(
        app,
        id,
        "mkdir",
        &[("path", path), ("parents", parents)],
        None,
    )
    .await
}

/// The agent-native file operations on the busybox image, which has no python3 (nor
/// anything the routes would need), as a non-root `remoteUser`: what they make is that
/// user's, what that user may not touch they refuse, and no answer is ever a guess.
async fn native_file_operations(store: Store) {
    let Some(app) = TestApp::spawn(store, |_| {}).await else {
        return;
    };
    let sandbox = app.create(json!({"template": "busybox-user"})).await;
    assert_eq!(sandbox["status"], "running", "{sandbox}");
    let id = sandbox["id"].as_str().unwrap().to_owned();
    assert_eq!(
        sh(&app, &id, "command -v python3 || echo none").await,
        "none\n"
    );
    let w = "/workspaces/app";

    // mkdir: the user's; twice is `already_exists` unless `parents`.
    let (status, made) = mkdir(&app, &id, &format!("{w}/src/deep"), true).await;
    assert_eq!(status, StatusCode::OK, "{made}");
    assert_eq!(
        (&made["type"], &made["uid"], &made["name"]),
        (&json!("directory"), &json!(1000), &json!("deep"))
    );
    assert_error(
        "mkdir twice",
        &mkdir(&app, &id, &format!("{w}/src/deep"), false).await,
        409,
        "already_exists",
    );
    assert_error(
        "mkdir without its parent",
        &mkdir(&app, &id, &format!("{w}/no/such"), false).await,
        404,
        "file_not_found",
    );
    assert_error(
        "mkdir where the user may not write",
        &mkdir(&app, &id, "/etc/monza-test", false).await,
        403,
        "permission_denied",
    );
    let x = format!("{w}/x");
    for (query, what) in [
        (vec![("path", "/")], "the root"),
        (vec![("path", "/proc/x")], "a kernel file system"),
        (vec![("path", "rel")], "a relative path"),
        (
            vec![("path", x.as_str()), ("parent", "true")],
            "an unknown parameter",
        ),
        (vec![], "no path"),
    ] {
        assert_error(
            what,
            &call(&app, &id, "mkdir", &query, None).await,
            400,
            "invalid_input",
        );
    }

    // A tree to work on, written by the API and by the sandbox's own commands.
    for (path, content) in [
        (
            "src/main.rs",
            &b"fn main() {\n    println!(\"hi\");\n}\n"[..],
        ),
        ("src/deep/lib.rs", b"pub fn Helper() {}\r\nfn other() {}\n"),
        ("README.md", b"# app\nmain entry is src/main.rs\n"),
    ] {
        let (status, body) = app
            .send(
                app.client
                    .put(app.url(&format!("/api/sandboxes/{id}/files?path={w}/{path}")))
                    .body(content),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
    }
    sh(
        &app,
        &id,
        &format!(
            "cd {w} && printf 'main\\0bin' > blob.bin && ln -s src/main.rs link && mkdir empty"
        ),
    )
    .await;

    // list: by name, depth first, links not followed, with owners.
    let (status, list) = app
        .get_json(&format!(
            "/api/sandboxes/{id}/files/list?path={w}&recursive=true"
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{list}");
    let names: Vec<&str> = list["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap().strip_prefix(w).unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "/README.md",
            "/blob.bin",
            "/empty",
            "/link",
            "/src",
            "/src/deep",
            "/src/deep/lib.rs",
            "/src/main.rs"
        ],
        "{list}"
    );
    let link = &list["entries"][3];
    assert_eq!(
        (&link["type"], &link["link_target"]),
        (&json!("symlink"), &json!("src/main.rs"))
    );
    assert_eq!(list["truncated"], false);
    let (_, short) = app
        .get_json(&format!(
            "/api/sandboxes/{id}/files/list?path={w}&recursive=true&limit=2"
        ))
        .await;
    assert_eq!(
        (
            short["entries"].as_array().unwrap().len(),
            &short["truncated"]
        ),
        (2, &json!(true))
    );
    let (_, top) = app
        .get_json(&format!("/api/sandboxes/{id}/files/list?path={w}/src"))
        .await;
    assert_eq!(top["entries"].as_array().unwrap().len(), 2, "{top}");
    // A file is listed as itself, as `ls` does; a path through a file is `not_a_directory`.
    let (_, file) = app
        .get_json(&format!(
            "/api/sandboxes/{id}/files/list?path={w}/README.md"
        ))
        .await;
    assert_eq!(file["entries"][0]["name"], "README.md", "{file}");
    assert_error(
        "list through a file",
        &app.get_json(&format!(
            "/api/sandboxes/{id}/files/list?path={w}/README.md/x"
        ))
        .await,
        409,
        "not_a_directory",
    );
    assert_error(
        "list of nothing",
        &app.get_json(&format!("/api/sandboxes/{id}/files/list?path={w}/nope"))
            .await,
        404,
        "file_not_found",
    );
    // A limit over the server's maximum is clamped to it, as execute's are.
    let (status, _) = app
        .get_json(&format!(
            "/api/sandboxes/{id}/files/list?path={w}&limit=99999999"
        ))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_error(
        "a zero limit",
        &app.get_json(&format!("/api/sandboxes/{id}/files/list?path={w}&limit=0"))
            .await,
        400,
        "invalid_input",
    );

    // lines: from an offset, `\r\n` ends dropped, where to read on.
    let (status, lines) = app
        .get_json(&format!(
            "/api/sandboxes/{id}/files/lines?path={w}/src/main.rs&offset=1&limit=1"
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{lines}");
    assert_eq!(
        lines,
        json!({"path": format!("{w}/src/main.rs"), "offset": 1, "lines": ["    println!(\"hi\");"], "next_offset": 2})
    );
    let (_, lines) = app
        .get_json(&format!(
            "/api/sandboxes/{id}/files/lines?path={w}/src/deep/lib.rs"
        ))
        .await;
    assert_eq!(
        lines["lines"],
        json!(["pub fn Helper() {}", "fn other() {}"])
    );
    assert_eq!(lines["next_offset"], Value::Null);
    assert_error(
        "lines of a directory",
        &app.get_json(&format!("/api/sandboxes/{id}/files/lines?path={w}/src"))
            .await,
        409,
        "is_directory",
    );

    // search: literal and regex, by name or by path, binary files skipped, as grep -rn.
    let (status, found) = call(&app, &id, "search", &[], Some(json!({"pattern": "main"}))).await;
    assert_eq!(status, StatusCode::OK, "{found}");
    assert_eq!(
        found,
        json!({"matches": [
            {"path": format!("{w}/README.md"), "line": 2, "text": "main entry is src/main.rs"},
            {"path": format!("{w}/src/main.rs"), "line": 1, "text": "fn main() {"},
        ], "truncated": false})
    );
    let (_, found) = call(
        &app,
        &id,
        "search",
        &[("path", w)],
        Some(json!({"regex": "^(pub )?fn [a-z]+", "ignore_case": true, "glob": "*.rs"})),
    )
    .await;
    let hits: Vec<(String, u64)> = found["matches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["path"].as_str().unwrap().to_owned(),
                m["line"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        hits,
        [
            (format!("{w}/src/deep/lib.rs"), 1),
            (format!("{w}/src/deep/lib.rs"), 2),
            (format!("{w}/src/main.rs"), 1)
        ],
        "{found}"
    );
    let (_, one) = call(
        &app,
        &id,
        "search",
        &[],
        Some(json!({"pattern": "fn", "max_results": 1})),
    )
    .await;
    assert_eq!(
        (one["matches"].as_array().unwrap().len(), &one["truncated"]),
        (1, &json!(true))
    );
    assert_error(
        "a regex that does not parse",
        &call(&app, &id, "search", &[], Some(json!({"regex": "("}))).await,
        400,
        "invalid_input",
    );
    for (body, what) in [
        (json!({"pattern": ""}), "an empty pattern"),
        (
            json!({"pattern": "a", "regex": "a"}),
            "both a pattern and a regex",
        ),
        (json!({"ignore_case": true}), "neither"),
    ] {
        assert_error(
            what,
            &call(&app, &id, "search", &[], Some(body)).await,
            400,
            "invalid_input",
        );
    }
    // A literal pattern is literal: `.` is a dot, `(` a parenthesis.
    let (_, literal) = call(&app, &id, "search", &[], Some(json!({"pattern": "n("}))).await;
    assert_eq!(literal["matches"][0]["text"], "fn main() {", "{literal}");

    // glob: components and `**`.
    let (status, globbed) = call(&app, &id, "glob", &[], Some(json!({"pattern": "**/*.rs"}))).await;
    assert_eq!(status, StatusCode::OK, "{globbed}");
    assert_eq!(
        globbed,
        json!({"paths": [format!("{w}/src/deep/lib.rs"), format!("{w}/src/main.rs")], "truncated": false})
    );
    let (_, globbed) = call(
        &app,
        &id,
        "glob",
        &[("path", &format!("{w}/src"))],
        Some(json!({"pattern": "*"})),
    )
    .await;
    assert_eq!(
        globbed["paths"],
        json!([format!("{w}/src/deep"), format!("{w}/src/main.rs")])
    );
    assert_error(
        "an absolute glob",
        &call(&app, &id, "glob", &[], Some(json!({"pattern": "/etc/*"}))).await,
        400,
        "invalid_input",
    );

    // edit: exactly once or everywhere; ambiguity and absence refused with nothing changed;
    // the mode and owner stay, and the file stays the user's to edit.
    sh(&app, &id, &format!("chmod 750 {w}/src/main.rs")).await;
    let main_rs = format!("{w}/src/main.rs");
    let edit = async |old: &str, new: &str, all: bool| {
        call(
            &app,
            &id,
            "edit",
            &[("path", main_rs.as_str())],
            Some(json!({"old_string": old, "new_string": new, "replace_all": all})),
        )
        .await
    };
    assert_error(
        "an ambiguous edit",
        &edit("i", "I", false).await,
        409,
        "ambiguous_match",
    );
    assert_error(
        "an edit of nothing",
        &edit("absent", "x", false).await,
        409,
        "no_match",
    );
    assert_error(
        "an empty edit",
        &edit("", "x", false).await,
        400,
        "invalid_input",
    );
    let (status, edited) = edit("\"hi\"", "\"hello\"", false).await;
    assert_eq!(status, StatusCode::OK, "{edited}");
    assert_eq!(
        edited,
        json!({"path": format!("{w}/src/main.rs"), "replacements": 1})
    );
    let (_, edited) = edit("n", "N", true).await;
    assert_eq!(edited["replacements"], 4, "{edited}");
    assert_eq!(
        sh(
            &app,
            &id,
            &format!("cat {w}/src/main.rs; stat -c '%U %a' {w}/src/main.rs; ls -a {w}/src")
        )
        .await,
        "fN maiN() {\n    priNtlN!(\"hello\");\n}\ndev 750\n.\n..\ndeep\nmain.rs\n"
    );
    // Through the link, the file it points to is edited and the link stays.
    let (status, _) = call(
        &app,
        &id,
        "edit",
        &[("path", &format!("{w}/link"))],
        Some(json!({"old_string": "hello", "new_string": "linked"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        sh(
            &app,
            &id,
            &format!("test -L {w}/link && grep -c linked {w}/src/main.rs")
        )
        .await,
        "1\n"
    );
    assert_error(
        "an edit of a root-owned file",
        &call(
            &app,
            &id,
            "edit",
            &[("path", "/etc/passwd")],
            Some(json!({"old_string": "root", "new_string": "toor"})),
        )
        .await,
        403,
        "permission_denied",
    );

    // move: never over something without `overwrite`, never a file over a directory.
    let mv = async |from: &str, to: &str, overwrite: bool| {
        let (from, to) = (format!("{w}/{from}"), format!("{w}/{to}"));
        let overwrite = if overwrite { "true" } else { "false" };
        call(
            &app,
            &id,
            "move",
            &[("from", &from), ("to", &to), ("overwrite", overwrite)],
            None,
        )
        .await
    };
    assert_error(
        "a move over a file",
        &mv("README.md", "blob.bin", false).await,
        409,
        "already_exists",
    );
    assert_error(
        "a file over a directory",
        &mv("README.md", "empty", true).await,
        409,
        "is_directory",
    );
    assert_error(
        "a move of nothing",
        &mv("nope", "x", false).await,
        404,
        "file_not_found",
    );
    assert_error(
        "a directory into itself",
        &mv("src", "src/deep/src", false).await,
        400,
        "invalid_input",
    );
    let (status, moved) = mv("README.md", "blob.bin", true).await;
    assert_eq!(status, StatusCode::OK, "{moved}");
    assert_eq!(
        (&moved["path"], &moved["size"]),
        (&json!(format!("{w}/blob.bin")), &json!(32))
    );
    // Onto itself: nothing changes, as rename(2) says.
    let (status, same) = mv("blob.bin", "blob.bin", false).await;
    assert_eq!(
        (status, &same["size"]),
        (StatusCode::OK, &json!(32)),
        "{same}"
    );
    let (status, moved) = mv("src", "code", false).await;
    assert_eq!(
        (status, &moved["type"]),
        (StatusCode::OK, &json!("directory")),
        "{moved}"
    );

    // remove: a non-empty directory only with `recursive`; a link goes, not its target.
    let rm = |path: &str, recursive: bool| {
        app.send(app.client.delete(app.url(&format!(
            "/api/sandboxes/{id}/files?path={w}/{path}&recursive={recursive}"
        ))))
    };
    assert_error(
        "a non-empty directory",
        &rm("code", false).await,
        409,
        "directory_not_empty",
    );
    let (status, removed) = rm("link", false).await;
    assert_eq!(
        (status, &removed["removed"]),
        (StatusCode::OK, &json!(1)),
        "{removed}"
    );
    let (status, removed) = rm("code", true).await;
    assert_eq!(
        (status, &removed),
        (
            StatusCode::OK,
            &json!({"path": format!("{w}/code"), "removed": 4})
        )
    );
    assert_error(
        "a removal of nothing",
        &rm("code", true).await,
        404,
        "file_not_found",
    );
    for path in ["/etc/passwd", "/etc/hosts", "/", "/sys/kernel"] {
        assert_error(
            path,
            &app.send(app.client.delete(app.url(&format!(
                "/api/sandboxes/{id}/files?path={path}&recursive=true"
            ))))
            .await,
            400,
            "invalid_input",
        );
    }
    assert_error(
        "a removal the user may not do",
        &app.send(
            app.client
                .delete(app.url(&format!("/api/sandboxes/{id}/files?path=/bin/sh"))),
        )
        .await,
        403,
        "permission_denied",
    );
    assert_eq!(
        sh(&app, &id, &format!("ls {w}; test -e /bin/sh && echo sh")).await,
        "blob.bin\nempty\nsh\n"
    );

    // An unknown sandbox is `not_found`, never a file code.
    assert_error(
        "an unknown sandbox",
        &call(
            &app,
            "00000000-0000-4000-8000-000000000000",
            "glob",
            &[],
            Some(json!({"pattern": "*"})),
        )
        .await,
        404,
        "not_found",
    );
    app.shutdown().await;
}

/// Before a restarted server has adopted a sandbox's agent, the same operations run the
/// agent's binary through Docker exec (the first request after the restart does), as the
/// sandbox's user, and answer the same way.
async fn file_operations_before_the_agent_is_adopted(store: Store) {
    let Some(mut app) = TestApp::spawn(store, |_| {}).await else {
        return;
    };
    let sandbox = app.create(json!({"template": "busybox-user"})).await;
    let id = sandbox["id"].as_str().unwrap().to_owned();

    app = app.restart().await;
    let (status, made) = mkdir(&app, &id, "/workspaces/app/x/y", true).await;
    assert_eq!(
        (status, &made["uid"]),
        (StatusCode::OK, &json!(1000)),
        "{made}"
    );
    app = app.restart().await;
    assert_error(
        "an edit of a directory, through exec",
        &call(
            &app,
            &id,
            "edit",
            &[("path", "/workspaces/app/x")],
            Some(json!({"old_string": "a", "new_string": "b"})),
        )
        .await,
        409,
        "is_directory",
    );
    app = app.restart().await;
    let (status, globbed) = call(&app, &id, "glob", &[], Some(json!({"pattern": "**"}))).await;
    assert_eq!(status, StatusCode::OK, "{globbed}");
    assert_eq!(
        globbed["paths"],
        json!(["/workspaces/app/x", "/workspaces/app/x/y"]),
        "{globbed}"
    );
    app.shutdown().await;
}

on_both_stores!(
    native_file_operations,
    file_operations_before_the_agent_is_adopted
);

/// A tar of `entries` (path, kind, content or link target, mode).
fn tar_of(entries: &[(&str, tar::EntryType, &[u8], u32)]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, kind, data, mode) in entries {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(*kind);
        header.set_mode(*mode);
        header.set_mtime(1_700_000_000);
        match kind {
            tar::EntryType::Symlink | tar::EntryType::Link => {
                header.set_size(0);
                builder
                    .append_link(&mut header, path, std::str::from_utf8(data).unwrap())
                    .unwrap();
            }
            _ => {
                header.set_size(data.len() as u64);
                builder.append_data(&mut header, path, *data).unwrap();
            }
        }
    }
    builder.into_inner().unwrap()
}

/// A tar of empty entries whose names are written raw, as a hostile archive would (the
/// builder refuses `..` and absolute names).
fn hostile_tar(entries: &[(&str, tar::EntryType, &str)]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (name, kind, link) in entries {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(*kind);
        header.set_size(0);
        header.set_mode(0o644);
        header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        header.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
        header.set_cksum();
        builder.append(&header, std::io::empty()).unwrap();
    }
    builder.into_inner().unwrap()
}

async fn put_archive(app: &TestApp, id: &str, path: &str, body: Vec<u8>) -> (StatusCode, Value) {
    app.send(
        app.client
            .put(app.url(&format!("/api/sandboxes/{id}/files/archive")))
            .query(&[("path", path)])
            .body(body),
    )
    .await
}

/// Whole trees in and out as tar streams: links, empty directories, modes and a 100 MiB file
/// round trip; every hostile entry is refused with nothing written.
async fn archives_round_trip_and_refuse_hostile_entries(store: Store) {
    let Some(app) = TestApp::spawn(store, |_| {}).await else {
        return;
    };
    let sandbox = app.create(json!({"template": "busybox-user"})).await;
    let id = sandbox["id"].as_str().unwrap().to_owned();
    let w = "/workspaces/app";

    let big: Vec<u8> = (0..100u64 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    let tree = tar_of(&[
        ("./", tar::EntryType::Directory, b"", 0o755),
        ("bin/", tar::EntryType::Directory, b"", 0o750),
        (
            "bin/run.sh",
            tar::EntryType::Regular,
            b"#!/bin/sh\necho ran\n",
            0o4755,
        ),
        ("empty/", tar::EntryType::Directory, b"", 0o700),
        ("data/big.bin", tar::EntryType::Regular, &big, 0o600),
        ("latest", tar::EntryType::Symlink, b"data/big.bin", 0o777),
        ("bin/again.sh", tar::EntryType::Link, b"bin/run.sh", 0o755),
    ]);
    let (status, body) = put_archive(&app, &id, &format!("{w}/tree"), tree).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body,
        json!({"path": format!("{w}/tree"), "files": 2, "directories": 2, "links": 2, "bytes": 100 * 1024 * 1024 + 19})
    );
    assert_eq!(
        sh(
            &app,
            &id,
            &format!(
                "cd {w}/tree && stat -c '%n %U %a' . bin bin/run.sh empty data/big.bin && \
                 readlink latest && bin/run.sh && stat -c %h bin/again.sh && \
                 sha256sum < data/big.bin"
            )
        )
        .await,
        format!(
            ". dev 755\nbin dev 750\nbin/run.sh dev 755\nempty dev 700\ndata/big.bin dev 600\n\
             data/big.bin\nran\n2\n{}  -\n",
            sha256_hex(&big)
        )
    );

    // Out again: the same tree, as a tar stream.
    let response = app
        .client
        .get(app.url(&format!("/api/sandboxes/{id}/files/archive")))
        .query(&[("path", format!("{w}/tree"))])
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "{:?}",
        response.headers()
    );
    assert_eq!(response.headers()["content-type"], "application/x-tar");
    let bytes = response.bytes().await.unwrap();
    let mut archive = tar::Archive::new(&bytes[..]);
    let mut seen = Vec::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = entry.path().unwrap().to_string_lossy().into_owned();
        let kind = entry.header().entry_type();
        if path == "./data/big.bin" {
            let mut content = Vec::new();
            std::io::Read::read_to_end(&mut entry, &mut content).unwrap();
            assert!(content == big, "the big file came back different");
        }
        seen.push((
            path,
            kind.is_symlink(),
            entry.header().mode().unwrap() & 0o7777,
        ));
    }
    for want in [
        ("./bin/run.sh".to_owned(), false, 0o755),
        ("./empty/".to_owned(), false, 0o700),
        ("./latest".to_owned(), true, 0o777),
    ] {
        assert!(seen.contains(&want), "{want:?} missing from {seen:?}");
    }

    // gzip on request: the same tar, compressed.
    let response = app
        .client
        .get(app.url(&format!("/api/sandboxes/{id}/files/archive")))
        .query(&[("path", format!("{w}/tree")), ("gzip", "true".to_owned())])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "application/gzip");
    assert!(
        response.headers()["content-disposition"]
            .to_str()
            .unwrap()
            .contains("tree.tar.gz"),
        "{:?}",
        response.headers()
    );
    let compressed = response.bytes().await.unwrap();
    assert!(
        compressed.len() < bytes.len(),
        "gzip made the tar no smaller"
    );
    let mut unzipped = Vec::new();
    std::io::Read::read_to_end(
        &mut flate2::read::GzDecoder::new(&compressed[..]),
        &mut unzipped,
    )
    .unwrap();
    let mut paths: Vec<String> = tar::Archive::new(&unzipped[..])
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
        .collect();
    paths.sort();
    let mut want: Vec<String> = seen.iter().map(|(path, _, _)| path.clone()).collect();
    want.sort();
    assert_eq!(paths, want);
    assert_error(
        "gzip that is not a flag",
        &app.get_json(&format!(
            "/api/sandboxes/{id}/files/archive?path={w}/tree&gzip=yes"
        ))
        .await,
        400,
        "invalid_input",
    );

    // Hostile archives: refused, nothing written.
    sh(
        &app,
        &id,
        &format!("mkdir -p {w}/safe && ln -s /etc {w}/safe/etc-link"),
    )
    .await;
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        (
            "a `..` entry",
            hostile_tar(&[
                ("ok", tar::EntryType::Regular, ""),
                ("../escaped", tar::EntryType::Regular, ""),
            ]),
            400,
            "invalid_path",
        ),
        (
            "an absolute entry",
            hostile_tar(&[("/tmp/escaped", tar::EntryType::Regular, "")]),
            400,
            "invalid_path",
        ),
        (
            "a device",
            hostile_tar(&[("null", tar::EntryType::Char, "")]),
            400,
            "invalid_input",
        ),
        (
            "a hard link out",
            hostile_tar(&[("h", tar::EntryType::Link, "../../etc/passwd")]),
            400,
            "invalid_path",
        ),
        (
            "through the archive's own symlink",
            hostile_tar(&[
                ("l", tar::EntryType::Symlink, "/tmp"),
                ("l/escaped", tar::EntryType::Regular, ""),
            ]),
            400,
            "invalid_path",
        ),
        (
            "through a symlink in the sandbox",
            tar_of(&[("etc-link/escaped", tar::EntryType::Regular, b"x", 0o644)]),
            400,
            "invalid_path",
        ),
        (
            "not a tar",
            b"this is not a tar archive, not even close to one".repeat(20),
            400,
            "invalid_input",
        ),
    ];
    for (what, body, status, code) in cases {
        assert_error(
            what,
            &put_archive(&app, &id, &format!("{w}/safe"), body).await,
            status,
            code,
        );
    }
    assert_eq!(
        sh(
            &app,
            &id,
            &format!("ls -A {w}/safe; ls /tmp | grep -c escaped; ls /etc | grep -c escaped; true")
        )
        .await,
        "etc-link\n0\n0\n"
    );
    // gzip is told by its first bytes.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(
        &mut gz,
        &tar_of(&[("z.txt", tar::EntryType::Regular, b"zipped", 0o644)]),
    )
    .unwrap();
    let (status, body) = put_archive(&app, &id, &format!("{w}/safe"), gz.finish().unwrap()).await;
    assert_eq!(
        (status, &body["files"]),
        (StatusCode::OK, &json!(1)),
        "{body}"
    );
    assert_eq!(
        sh(&app, &id, &format!("cat {w}/safe/z.txt")).await,
        "zipped"
    );
    app.shutdown().await;
}

fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

on_both_stores!(
    archives_round_trip_and_refuse_hostile_entries,
    batches_answer_each_file_on_its_own
);

/// A multipart form of `(filename, content)` parts, all named `file`.
fn batch_form(files: &[(&str, &[u8])]) -> reqwest::multipart::Form {
    files
        .iter()
        .fold(reqwest::multipart::Form::new(), |form, (name, data)| {
            form.part(
                "file",
                reqwest::multipart::Part::bytes(data.to_vec()).file_name(name.to_string()),
            )
        })
}

async fn upload_batch(
    app: &TestApp,
    id: &str,
    query: &str,
    form: reqwest::multipart::Form,
) -> (StatusCode, Value) {
    app.send(
        app.client
            .post(app.url(&format!("/api/sandboxes/{id}/files/batch/upload?{query}")))
            .multipart(form),
    )
    .await
}

async fn download_batch(app: &TestApp, id: &str, body: Value) -> (StatusCode, Value) {
    app.send(
        app.client
            .post(app.url(&format!("/api/sandboxes/{id}/files/batch/download")))
            .json(&body),
    )
    .await
}

/// Many files in one request each way: each gets its own answer in the order sent, a
/// refused one does not stop the others, and a malformed request writes nothing.
async fn batches_answer_each_file_on_its_own(store: Store) {
    let Some(app) = TestApp::spawn(store, |_| {}).await else {
        return;
    };
    let sandbox = app.create(json!({"template": "busybox-user"})).await;
    assert_eq!(sandbox["status"], "running", "{sandbox}");
    let id = sandbox["id"].as_str().unwrap().to_owned();
    let w = "/workspaces/app";
    sh(&app, &id, &format!("mkdir {w}/dir && echo x > {w}/plain")).await;

    let big = vec![b'b'; (1 << 20) + 3];
    let form = batch_form(&[
        (&format!("{w}/src/a.txt"), b"alpha"),
        (&format!("{w}/dir"), b"over a directory"),
        (&format!("{w}/plain/under"), b"under a file"),
        ("relative.txt", b"no"),
        (&format!("{w}/src/ b\\c.txt "), b"exact name"),
        (&format!("{w}/src/big.bin"), &big),
        ("/etc/hosts", b"never"),
    ]);
    let (status, body) = upload_batch(&app, &id, "parents=true", form).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let results = body["results"].as_array().unwrap();
    let codes: Vec<(&str, &Value)> = results
        .iter()
        .map(|r| (r["path"].as_str().unwrap(), &r["error"]["code"]))
        .collect();
    assert_eq!(
        codes,
        [
            (&*format!("{w}/src/a.txt"), &Value::Null),
            (&*format!("{w}/dir"), &json!("is_directory")),
            (&*format!("{w}/plain/under"), &json!("not_a_directory")),
            ("relative.txt", &json!("invalid_input")),
            (&*format!("{w}/src/ b\\c.txt "), &Value::Null),
            (&*format!("{w}/src/big.bin"), &Value::Null),
            ("/etc/hosts", &json!("invalid_input")),
        ],
        "{body}"
    );
    assert_eq!(
        (
            &results[0]["size"],
            &results[0]["mode"],
            &results[0]["error"]
        ),
        (&json!(5), &json!("0644"), &Value::Null)
    );
    assert_eq!(results[5]["size"], json!(big.len()));
    assert_eq!(
        sh(
            &app,
            &id,
            &format!(
                "cd {w} && cat src/a.txt && echo && cat 'src/ b\\c.txt ' && echo && \
                 stat -c '%U %s' src src/big.bin && ls dir && cat plain"
            )
        )
        .await,
        format!("alpha\nexact name\ndev 4096\ndev {}\nx\n", big.len())
    );

    // Without `parents`, a missing directory is that file's error alone.
    let form = batch_form(&[
        (&format!("{w}/new/x"), b"x"),
        (&format!("{w}/src/a.txt"), b"again"),
    ]);
    let (status, body) = upload_batch(&app, &id, "mode=600", form).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["results"][0]["error"]["code"], "file_not_found",
        "{body}"
    );
    assert_eq!(body["results"][1]["mode"], "0600", "{body}");

    // A malformed request writes nothing at all.
    let form = batch_form(&[(&format!("{w}/first.txt"), b"1")]).text("path", "/x");
    assert_error(
        "a field that is not a file",
        &upload_batch(&app, &id, "", form).await,
        400,
        "invalid_input",
    );
    let form = reqwest::multipart::Form::new()
        .part(
            "file",
            reqwest::multipart::Part::bytes(b"1".to_vec()).file_name(format!("{w}/first.txt")),
        )
        .part("file", reqwest::multipart::Part::bytes(b"2".to_vec()));
    assert_error(
        "a file without a name",
        &upload_batch(&app, &id, "", form).await,
        400,
        "invalid_input",
    );
    assert_error(
        "no file",
        &upload_batch(&app, &id, "", reqwest::multipart::Form::new()).await,
        400,
        "invalid_input",
    );
    assert_error(
        "an unknown parameter",
        &upload_batch(
            &app,
            &id,
            "parent=true",
            batch_form(&[(&format!("{w}/first.txt"), b"1")]),
        )
        .await,
        400,
        "invalid_input",
    );
    assert_eq!(
        sh(&app, &id, &format!("ls {w}/first.txt 2>&1 || true")).await,
        format!("ls: {w}/first.txt: No such file or directory\n")
    );

    // Reads: content or error per path, in order.
    let (status, body) = download_batch(
        &app,
        &id,
        json!({"paths": [
            format!("{w}/src/a.txt"),
            format!("{w}/missing"),
            format!("{w}/dir"),
            "relative",
            format!("{w}/src/big.bin"),
        ]}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let results = body["results"].as_array().unwrap();
    assert_eq!(
        (
            &results[0]["content_base64"],
            &results[0]["size"],
            &results[0]["mode"]
        ),
        (&json!("YWdhaW4="), &json!(5), &json!("0600")),
        "{body}"
    );
    let codes: Vec<&Value> = results.iter().map(|r| &r["error"]["code"]).collect();
    assert_eq!(
        codes,
        [
            &Value::Null,
            &json!("file_not_found"),
            &json!("is_directory"),
            &json!("invalid_input"),
            &Value::Null
        ],
        "{body}"
    );
    use base64::Engine as _;
    let back = base64::engine::general_purpose::STANDARD
        .decode(results[4]["content_base64"].as_str().unwrap())
        .unwrap();
    assert!(back == big, "the big file came back changed");
    for (what, request) in [
        ("no path", json!({"paths": []})),
        ("not a list", json!({"paths": "/x"})),
        ("an unknown field", json!({"paths": ["/x"], "follow": true})),
    ] {
        assert_error(
            what,
            &download_batch(&app, &id, request).await,
            400,
            "invalid_input",
        );
    }
    let unknown = "00000000-0000-4000-8000-000000000000";
    assert_error(
        "an unknown sandbox",
        &download_batch(&app, unknown, json!({"paths": ["/x"]})).await,
        404,
        "not_found",
    );
    app.shutdown().await;
}
