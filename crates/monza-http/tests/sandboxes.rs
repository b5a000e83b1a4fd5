//! The health and sandbox routes through the real router, over a real `SandboxService` whose
//! ports are mocks: success shapes and each error mapping.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns: a panic is the failure report

mod support;

use std::time::Duration;

use actix_web::http::{Method, header};
use actix_web::test::TestRequest;
use bytes::Bytes;
use futures::StreamExt;
use monza_domain::testing::fixtures::exec_output;
use monza_domain::{
    CreatedContainer, Error, ExecEvent, ExecLimits, ExecOutput, LifecycleEvent, OutputStream,
    PublishedPort, SandboxId, SandboxState, SandboxStatus, ServiceConfig,
};
use serde_json::{Value, json};
use support::{Mocks, NOW, sandbox, sandbox_uri, template};

#[actix_web::test]
async fn health_and_hello_answer_their_fixed_bodies() {
    let app = app!(Mocks::new().service());
    let health = app.get("/health").await;
    assert_eq!(health.status, 200);
    assert_eq!(health.json(), json!({"status": "ok"}));
    let hello = app.get("/hello").await;
    assert_eq!(hello.status, 200);
    assert_eq!(hello.json(), json!({"message": "hello, world"}));
}

/// `GET /ready`, where the store answers and Docker answers `docker`, is `status` with `body`.
async fn ready_answers(docker: monza_domain::Result<()>, status: u16, body: Value) {
    let mut m = Mocks::new();
    m.repo.expect_ping().returning(|| Ok(()));
    m.runtime.expect_ping().returning(move || docker.clone());
    let res = app!(m.service()).get("/ready").await;
    assert_eq!(res.status, status);
    assert_eq!(res.json(), body);
}

#[actix_web::test]
async fn ready_is_ok_when_both_dependencies_answer() {
    let ok = json!({"status": "ok", "database": "ok", "docker": "ok"});
    ready_answers(Ok(()), 200, ok).await;
}

#[actix_web::test]
async fn ready_is_503_naming_the_dependency_that_is_down() {
    let down = Error::unavailable("docker", "connection refused");
    let body = json!({"status": "unavailable", "database": "ok", "docker": "unavailable"});
    ready_answers(Err(down), 503, body).await;
}

#[actix_web::test]
async fn get_returns_every_documented_field_with_utc_timestamps() {
    let sb = sandbox(SandboxStatus::Running);
    let id = sb.id;
    let port_id = sb.port_mappings[0].id;
    let mut m = Mocks::new();
    let found = sb.clone();
    m.repo
        .expect_get()
        .withf(move |got| *got == id)
        .returning(move |_| Ok(found.clone()));
    let res = app!(m.service()).get(&sandbox_uri(id, "")).await;
    assert_eq!(res.status, 200);
    assert_eq!(
        res.json(),
        json!({
            "id": id.to_string(),
            "name": "demo",
            "status": "running",
            "status_reason": null,
            "template": "go",
            "tenant": "default",
            "container_id": "c0ffee",
            "image": "golang:1.22",
            "workspace_mount": "/workspace",
            "devcontainer_config": {"image": "golang:1.22", "forwardPorts": [8080]},
            "env_vars": {"GOFLAGS": "-mod=mod"},
            "port_mappings": [{
                "id": port_id.to_string(),
                "sandbox_id": id.to_string(),
                "host_port": 49153,
                "container_port": 8080,
            }],
            "last_activity": "2030-01-02T03:04:05Z",
            "created_at": "2030-01-02T03:00:00Z",
            "expires_at": "2030-01-02T03:19:05Z",
            "deleted_at": null,
        })
    );
}

#[actix_web::test]
async fn an_ended_sandbox_shows_its_status_and_deleted_at() {
    let mut sb = sandbox(SandboxStatus::Expired);
    sb.state = SandboxState::restore(SandboxStatus::Expired, None, Some(NOW), None).unwrap();
    let res = app!(Mocks::finding(&sb).service())
        .get(&sandbox_uri(sb.id, ""))
        .await;
    assert_eq!(res.status, 200);
    let body = res.json();
    assert_eq!(body["status"], "expired");
    assert_eq!(body["deleted_at"], "2030-01-02T03:04:05Z");
}

#[actix_web::test]
async fn a_malformed_id_is_400_on_every_sandbox_route_without_touching_the_store() {
    // No expectations: any call to a port would panic.
    let app = app!(Mocks::new().service());
    let cases = [
        (Method::GET, "/api/sandboxes/not-a-uuid"),
        (Method::DELETE, "/api/sandboxes/not-a-uuid"),
        (Method::POST, "/api/sandboxes/123/heartbeat"),
        (Method::GET, "/api/sandboxes/123/events"),
        (
            Method::GET,
            "/api/sandboxes/%E2%9C%93/files/download?path=/a",
        ),
    ];
    for (method, uri) in cases {
        let res = app
            .call(TestRequest::default().method(method).uri(uri))
            .await;
        let message = res.error(400, "invalid_input");
        assert!(message.contains("malformed sandbox id"), "{uri}: {message}");
    }
    let res = app
        .post_json("/api/sandboxes/zzz/execute", &json!({"command": "true"}))
        .await;
    res.error(400, "invalid_input");
}

#[actix_web::test]
async fn list_passes_the_status_filter_and_keeps_the_store_order() {
    use monza_domain::StatusFilter;
    let newer = sandbox(SandboxStatus::Running);
    let older = sandbox(SandboxStatus::Deleted);
    let ids = [newer.id.to_string(), older.id.to_string()];
    let mut m = Mocks::new();
    m.repo
        .expect_list()
        .withf(|f| f.status == StatusFilter::All && f.tenant.is_none())
        .times(1)
        .returning(move |_| Ok(vec![newer.clone(), older.clone()]));
    m.repo
        .expect_list()
        .withf(|f| f.status == StatusFilter::Live)
        .times(1)
        .returning(|_| Ok(Vec::new()));
    m.repo
        .expect_list()
        .withf(|f| f.status == StatusFilter::Only(SandboxStatus::Running))
        .times(1)
        .returning(|_| Ok(Vec::new()));
    let app = app!(m.service());

    let all = app.get("/api/sandboxes?status=all").await;
    assert_eq!(all.status, 200);
    let listed: Vec<String> = all
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(listed, ids);

    let live = app.get("/api/sandboxes").await;
    assert_eq!(live.json(), json!([]));
    let running = app.get("/api/sandboxes?status=running").await;
    assert_eq!(running.json(), json!([]));
}

#[actix_web::test]
async fn an_unknown_status_filter_is_400() {
    let app = app!(Mocks::new().service());
    let res = app.get("/api/sandboxes?status=zombie").await;
    res.error_mentioning(400, "invalid_input", "zombie");
}

/// Mocks for a create that succeeds with template `tpl`.
fn creating(tpl: &'static str) -> Mocks {
    let mut m = Mocks::new();
    m.catalog
        .expect_resolve()
        .withf(move |name| name.as_str() == tpl)
        .returning(|name| Ok(template(name)));
    m.repo
        .expect_insert()
        .returning(|_, _| Ok(monza_domain::Admission::Inserted));
    m.runtime.expect_create().returning(|_| {
        Ok(CreatedContainer {
            id: "c0ffee".into(),
            image: "golang:1.22".into(),
        })
    });
    m.runtime.expect_start().returning(|_| {
        Ok(vec![PublishedPort {
            container_port: 8080,
            host_port: 49153,
        }])
    });
    m.runtime.expect_own_directory().returning(|_, _, _| Ok(()));
    m.repo.expect_mark_running().returning(|id, update| {
        let mut sb = sandbox(SandboxStatus::Running);
        sb.id = id;
        sb.container_id = Some(update.container_id.clone());
        sb.port_mappings = update.port_mappings.clone();
        Ok(sb)
    });
    m
}

#[actix_web::test]
async fn create_is_201_with_location_and_the_running_sandbox() {
    let app = app!(creating("python").service());
    let res = app
        .post_json(
            "/api/sandboxes",
            &json!({"name": "mine", "template": "python"}),
        )
        .await;
    assert_eq!(res.status, 201, "{:?}", res.body);
    let body = res.json();
    assert_eq!(body["status"], "running");
    let id = body["id"].as_str().unwrap();
    assert_eq!(res.header("location"), format!("/api/sandboxes/{id}"));
    assert_eq!(body["port_mappings"][0]["host_port"], 49153);
}

#[actix_web::test]
async fn create_without_a_body_uses_the_default_template() {
    let app = app!(creating("go").service());
    let res = app.post("/api/sandboxes").await;
    assert_eq!(res.status, 201, "{:?}", res.body);
    let typed_but_empty = TestRequest::post()
        .uri("/api/sandboxes")
        .insert_header((header::CONTENT_TYPE, "application/json"))
        .insert_header((header::CONTENT_LENGTH, "0"));
    let res = app.call(typed_but_empty).await;
    assert_eq!(res.status, 201, "{:?}", res.body);
}

#[actix_web::test]
async fn create_rejects_bad_json_names_and_templates_with_400() {
    let app = app!(Mocks::permissive().service());
    let bad_json = app
        .post_raw("/api/sandboxes", "application/json", "{\"name\": ")
        .await;
    let message = bad_json.error(400, "invalid_input");
    assert!(message.starts_with("invalid JSON body"), "{message}");

    for body in [
        json!({"name": "   "}),
        json!({"template": "../etc"}),
        json!({"name": 5}),
    ] {
        let res = app.post_json("/api/sandboxes", &body).await;
        res.error(400, "invalid_input");
    }

    // The catalog's "not found" is the client's mistake here: 400, listing what exists.
    let unknown = app
        .post_json("/api/sandboxes", &json!({"template": "cobol"}))
        .await;
    unknown.error_mentioning(400, "invalid_input", "available: go");
}

#[actix_web::test]
async fn create_past_the_tenant_limit_is_429() {
    let mut m = Mocks::new();
    m.config = ServiceConfig {
        max_sandboxes_per_tenant: Some(2),
        ..ServiceConfig::default()
    };
    m.catalog.expect_resolve().returning(|n| Ok(template(n)));
    m.repo.expect_insert().returning(|_, limit| {
        Ok(monza_domain::Admission::OverLimit {
            live: 2,
            limit: limit.unwrap(),
        })
    });
    let res = app!(m.service()).post("/api/sandboxes").await;
    res.error_mentioning(429, "limit_exceeded", "limit is 2");
}

#[actix_web::test]
async fn json_bodies_over_their_limit_are_413_and_a_body_that_is_not_json_is_400_whatever_its_type()
{
    let app = app!(Mocks::permissive().service());
    let big = json!({"name": "x".repeat(70 * 1024)});
    let res = app.post_json("/api/sandboxes", &big).await;
    res.error_mentioning(413, "too_large", "65536");

    let execute = sandbox_uri(SandboxId::new_random(), "/execute");
    let res = app.post_raw(&execute, "text/plain", "ls").await;
    res.error_mentioning(400, "invalid_input", "invalid JSON body");

    // Execute's limit is its own, 1 MiB by default: past it, the 413 names the setting.
    let over = json!({"command": "cat", "stdin": "x".repeat(1024 * 1024)});
    let res = app.post_json(&execute, &over).await;
    res.error_mentioning(413, "too_large", "MONZA_MAX_COMMAND_BYTES");
}

#[actix_web::test]
async fn execute_takes_a_body_of_almost_1_mib_and_feeds_its_stdin() {
    let sb = sandbox(SandboxStatus::Running);
    let mut m = Mocks::serving(&sb);
    // A DeepAgents edit: 50,000 bytes base64-encoded in the command line, and a stdin.
    let edit = "QUJD".repeat(16_667); // base64 of 50,001 bytes
    let stdin = "é".repeat(400 * 1024);
    let (want_edit, want_stdin) = (edit.clone(), stdin.clone());
    m.runtime
        .expect_exec()
        .withf(move |_, r| {
            r.command.argv()[2].contains(&want_edit)
                && r.stdin.as_deref() == Some(want_stdin.as_bytes())
        })
        .times(1)
        .returning(|_, _| Ok(exec_output(0, "done")));
    let request = json!({"command": format!("echo {edit} | base64 -d > f"), "stdin": stdin});
    let res = app!(m.service())
        .post_json(&sandbox_uri(sb.id, "/execute"), &request)
        .await;
    assert_eq!(res.status, 200, "{:?}", res.body);
    assert_eq!(res.json()["output"], "done");
}

#[actix_web::test]
async fn execute_streams_ndjson_or_sse_when_asked_and_errors_before_it_stay_json() {
    for (accept, content_type) in [
        ("application/x-ndjson", "application/x-ndjson"),
        ("text/event-stream", "text/event-stream"),
    ] {
        let sb = sandbox(SandboxStatus::Running);
        let mut m = Mocks::serving(&sb);
        m.runtime
            .expect_exec_stream()
            .withf(|cid, r| cid == "c0ffee" && r.stdin.as_deref() == Some(&b"in"[..]))
            .times(1)
            .returning(|_, _| {
                let events = vec![
                    Ok(ExecEvent::Output {
                        stream: OutputStream::Stdout,
                        data: Bytes::from_static(b"hi\n"),
                    }),
                    Ok(ExecEvent::Exit {
                        exit_code: 137,
                        timed_out: true,
                        duration: Duration::from_millis(7),
                    }),
                ];
                Ok(futures::stream::iter(events).boxed())
            });
        let req = TestRequest::post()
            .uri(&sandbox_uri(sb.id, "/execute"))
            .insert_header((header::ACCEPT, accept))
            .set_json(json!({"command": "cat", "stdin": "in"}));
        let res = app!(m.service()).call(req).await;
        assert_eq!(res.status, 200, "{:?}", res.body);
        assert_eq!(res.header("content-type"), content_type);
        let text = String::from_utf8(res.body.to_vec()).unwrap();
        let objects: Vec<Value> = text
            .lines()
            .filter_map(|line| match accept {
                "text/event-stream" => line.strip_prefix("data: "),
                _ => Some(line),
            })
            .map(|json| serde_json::from_str(json).unwrap())
            .collect();
        assert_eq!(
            objects,
            [
                json!({"type": "stdout", "data": "hi\n"}),
                json!({"type": "exit", "exitCode": 124, "timed_out": true, "duration_ms": 7}),
            ],
            "{accept}: {text}"
        );
    }
    // An unknown sandbox is found out before the stream starts: an ordinary JSON 404.
    let req = TestRequest::post()
        .uri(&sandbox_uri(SandboxId::new_random(), "/execute"))
        .insert_header((header::ACCEPT, "application/x-ndjson"))
        .set_json(json!({"command": "true"}));
    app!(Mocks::permissive().service())
        .call(req)
        .await
        .error(404, "not_found");
}

#[actix_web::test]
async fn a_timed_out_command_answers_124_and_timeout_0_is_the_servers_maximum() {
    let sb = sandbox(SandboxStatus::Running);
    let mut m = Mocks::serving(&sb);
    m.runtime
        .expect_exec()
        .withf(|_, r| r.timeout == Some(ExecLimits::default().max_timeout))
        .times(1)
        .returning(|_, _| {
            Ok(ExecOutput {
                timed_out: true,
                ..exec_output(137, "started\n")
            })
        });
    let request = json!({"command": "sleep 100000", "timeout_secs": 0});
    let res = app!(m.service())
        .post_json(&sandbox_uri(sb.id, "/execute"), &request)
        .await;
    assert_eq!(res.status, 200, "{:?}", res.body);
    assert_eq!(res.json()["exitCode"], 124);
    assert_eq!(res.json()["timed_out"], true);
}

#[actix_web::test]
async fn delete_is_204_and_removes_the_container_and_again_is_204() {
    let live = sandbox(SandboxStatus::Running);
    let id = live.id;
    let mut ended = live.clone();
    ended.state = live.state.after(LifecycleEvent::Delete, NOW, None).unwrap();
    let mut m = Mocks::new();
    let mut seq = mockall::Sequence::new();
    m.repo
        .expect_get()
        .times(1)
        .in_sequence(&mut seq)
        .returning(move |_| Ok(live.clone()));
    let after = ended.clone();
    m.repo
        .expect_transition()
        .times(1)
        .in_sequence(&mut seq)
        .returning(move |_, _| Ok(after.clone()));
    m.runtime
        .expect_remove()
        .withf(|cid| cid == "c0ffee")
        .times(2)
        .returning(|_| Ok(()));
    m.repo
        .expect_get()
        .times(1)
        .in_sequence(&mut seq)
        .returning(move |_| Ok(ended.clone()));
    let app = app!(m.service());
    for _ in 0..2 {
        let res = app.delete(&sandbox_uri(id, "")).await;
        assert_eq!(res.status, 204);
        assert!(res.body.is_empty());
    }
}

#[actix_web::test]
async fn unknown_sandboxes_are_404_on_every_sandbox_route() {
    let app = app!(Mocks::permissive().service());
    let id = SandboxId::new_random();
    let uri = |rest| sandbox_uri(id, rest);
    let requests = [
        TestRequest::get().uri(&uri("")),
        TestRequest::delete().uri(&uri("")),
        TestRequest::post().uri(&uri("/heartbeat")),
        TestRequest::get().uri(&uri("/events")),
        TestRequest::post()
            .uri(&uri("/execute"))
            .set_json(json!({"command": "ls"})),
        TestRequest::get().uri(&uri("/files/download?path=/etc/hosts")),
    ];
    for req in requests {
        let res = app.call(req).await;
        res.error_mentioning(404, "not_found", &id.to_string());
    }
}

#[actix_web::test]
async fn heartbeat_is_204_when_running_and_409_otherwise() {
    let running = sandbox(SandboxStatus::Running);
    let id = running.id;
    let mut m = Mocks::new();
    m.repo
        .expect_touch()
        .withf(move |got, _, at, _| *got == id && *at == NOW)
        .times(1)
        .returning(|_, _, _, _| Ok(true));
    let res = app!(m.service()).post(&sandbox_uri(id, "/heartbeat")).await;
    assert_eq!(res.status, 204);

    let deleted = sandbox(SandboxStatus::Deleted);
    let mut m = Mocks::finding(&deleted);
    m.repo.expect_touch().returning(|_, _, _, _| Ok(false));
    let res = app!(m.service())
        .post(&sandbox_uri(deleted.id, "/heartbeat"))
        .await;
    res.error(409, "conflict");
}

#[actix_web::test]
async fn execute_returns_the_deepagents_shape_and_passes_the_request_through() {
    let sb = sandbox(SandboxStatus::Running);
    let mut m = Mocks::serving(&sb);
    m.runtime
        .expect_exec()
        .withf(|cid, r| {
            cid == "c0ffee"
                && r.command.argv() == ["/bin/sh", "-c", "echo hi; echo oops >&2"]
                && r.workdir.as_deref() == Some("/tmp")
                && r.env.get("FOO").map(String::as_str) == Some("bar")
                && r.max_output_bytes == 100
                && r.timeout == Some(Duration::from_secs(7))
        })
        .times(1)
        .returning(|_, _| {
            Ok(ExecOutput {
                output: "hi\noops\n".into(),
                stdout: "hi\n".into(),
                stderr: "oops\n".into(),
                exit_code: 3,
                truncated: false,
                timed_out: false,
                duration: Duration::from_millis(1234),
            })
        });
    let request = json!({
        "command": "echo hi; echo oops >&2",
        "max_output_bytes": 100,
        "timeout_secs": 7,
        "workdir": "/tmp",
        "env": {"FOO": "bar"},
    });
    let res = app!(m.service())
        .post_json(&sandbox_uri(sb.id, "/execute"), &request)
        .await;
    assert_eq!(res.status, 200, "{:?}", res.body);
    assert_eq!(
        res.json(),
        json!({
            "output": "hi\noops\n",
            "exitCode": 3,
            "truncated": false,
            "stdout": "hi\n",
            "stderr": "oops\n",
            "timed_out": false,
            "duration_ms": 1234,
        })
    );
}

#[actix_web::test]
async fn execute_without_a_command_is_400_naming_it() {
    let app = app!(Mocks::permissive().service());
    let uri = sandbox_uri(SandboxId::new_random(), "/execute");
    for (body, says) in [
        (json!({"timeout_secs": 1}), "`command`"),
        (json!({"command": "  "}), "command is empty"),
        (json!({"command": "ls", "workdir": "tmp"}), ""), // any message
    ] {
        let message = app.post_json(&uri, &body).await.error(400, "invalid_input");
        assert!(message.contains(says), "{body}: {message}");
    }
}

#[actix_web::test]
async fn events_are_listed_oldest_first() {
    use monza_domain::{EventAction, SandboxEvent};
    let sb = sandbox(SandboxStatus::Running);
    let id = sb.id;
    let mut m = Mocks::finding(&sb);
    m.repo.expect_events().returning(move |id| {
        Ok(vec![
            SandboxEvent {
                sandbox_id: id,
                action: EventAction::Created,
                details: json!({}),
                created_at: NOW,
            },
            SandboxEvent {
                sandbox_id: id,
                action: EventAction::Executed,
                details: json!({"command": "ls"}),
                created_at: NOW,
            },
        ])
    });
    let res = app!(m.service()).get(&sandbox_uri(id, "/events")).await;
    assert_eq!(res.status, 200);
    assert_eq!(
        res.json(),
        json!([
            {"sandbox_id": id.to_string(), "action": "created", "details": {}, "created_at": "2030-01-02T03:04:05Z"},
            {"sandbox_id": id.to_string(), "action": "executed", "details": {"command": "ls"}, "created_at": "2030-01-02T03:04:05Z"},
        ])
    );
}

#[actix_web::test]
async fn an_unavailable_store_is_503_with_the_dependency_named() {
    let mut m = Mocks::new();
    m.repo
        .expect_list()
        .returning(|_| Err(Error::unavailable("database", "connection refused")));
    let res = app!(m.service()).get("/api/sandboxes").await;
    let message = res.error(503, "unavailable");
    assert_eq!(message, "database is unavailable: connection refused");
}

#[actix_web::test]
async fn an_internal_error_is_500_with_a_generic_message() {
    let mut m = Mocks::new();
    m.repo.expect_get().returning(|_| {
        Err(Error::internal(
            "row has status \"zombie\"; dsn=postgres://monza:s3cret@db",
        ))
    });
    let res = app!(m.service())
        .get(&sandbox_uri(SandboxId::new_random(), ""))
        .await;
    let message = res.error(500, "internal");
    assert_eq!(message, "internal server error");
    let raw = String::from_utf8_lossy(&res.body);
    assert!(!raw.contains("s3cret") && !raw.contains("zombie"), "{raw}");
}

#[actix_web::test]
async fn unknown_routes_are_json_404_and_wrong_methods_json_405_with_allow() {
    let app = app!(Mocks::new().service());
    let res = app.get("/api/nope").await;
    res.error_mentioning(404, "not_found", "/api/nope");

    let res = app.call(TestRequest::put().uri("/api/sandboxes")).await;
    res.error(405, "method_not_allowed");
    assert_eq!(res.header("allow"), "GET, POST");

    let res = app.post("/health").await;
    res.error(405, "method_not_allowed");
    assert_eq!(res.header("allow"), "GET");
}

#[actix_web::test]
async fn every_response_carries_a_request_id_and_a_plain_client_id_is_kept() {
    let app = app!(Mocks::new().service());
    let res = app.get("/health").await;
    let generated = res.header("x-request-id");
    assert!(uuid::Uuid::parse_str(generated).is_ok(), "{generated}");

    let with_id = |uri, id| {
        TestRequest::get()
            .uri(uri)
            .insert_header(("x-request-id", id))
    };
    let res = app.call(with_id("/api/nope", "trace-42.a_b")).await;
    assert_eq!(res.header("x-request-id"), "trace-42.a_b");

    let res = app.call(with_id("/health", "a b\" forged=1")).await;
    assert!(uuid::Uuid::parse_str(res.header("x-request-id")).is_ok());
}
