//! The API as a whole: the OpenAPI document matches the router and the public contract, and
//! no input makes a handler panic or answer outside the error shape.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns: a panic is the failure report

mod support;

use std::collections::BTreeSet;

use actix_web::http::{Method, header};
use actix_web::test::TestRequest;
use monza_domain::{SandboxId, SandboxStatus, StatusFilter, TemplateName};
use serde_json::{Value, json};
use support::{Mocks, multipart};
use utoipa::OpenApi;

/// The routes issue 5 promises, plus the operator extras (events, ready, the document).
const CONTRACT: &[(&str, &str)] = &[
    ("GET", "/health"),
    ("GET", "/hello"),
    ("GET", "/ready"),
    ("GET", "/api/openapi.json"),
    ("GET", "/api/sandboxes"),
    ("POST", "/api/sandboxes"),
    ("GET", "/api/sandboxes/{id}"),
    ("DELETE", "/api/sandboxes/{id}"),
    ("POST", "/api/sandboxes/{id}/heartbeat"),
    ("POST", "/api/sandboxes/{id}/execute"),
    ("GET", "/api/sandboxes/{id}/events"),
    ("POST", "/api/sandboxes/{id}/files/upload"),
    ("GET", "/api/sandboxes/{id}/files/download"),
    ("PUT", "/api/sandboxes/{id}/files"),
    ("GET", "/api/sandboxes/{id}/files"),
    ("HEAD", "/api/sandboxes/{id}/files"),
    ("GET", "/api/sandboxes/{id}/files/stat"),
    ("DELETE", "/api/sandboxes/{id}/files"),
    ("GET", "/api/sandboxes/{id}/files/list"),
    ("GET", "/api/sandboxes/{id}/files/lines"),
    ("POST", "/api/sandboxes/{id}/files/mkdir"),
    ("POST", "/api/sandboxes/{id}/files/move"),
    ("POST", "/api/sandboxes/{id}/files/search"),
    ("POST", "/api/sandboxes/{id}/files/glob"),
    ("POST", "/api/sandboxes/{id}/files/batch/upload"),
    ("POST", "/api/sandboxes/{id}/files/batch/download"),
    ("POST", "/api/sandboxes/{id}/files/edit"),
    ("PUT", "/api/sandboxes/{id}/files/archive"),
    ("GET", "/api/sandboxes/{id}/files/archive"),
    ("POST", "/api/sandboxes/{id}/processes"),
    ("GET", "/api/sandboxes/{id}/processes"),
    ("GET", "/api/sandboxes/{id}/processes/{pid}"),
    ("DELETE", "/api/sandboxes/{id}/processes/{pid}"),
    ("GET", "/api/sandboxes/{id}/processes/{pid}/output"),
    ("POST", "/api/sandboxes/{id}/processes/{pid}/stdin"),
    ("POST", "/api/sandboxes/{id}/processes/{pid}/signal"),
    ("GET", "/api/sandboxes/{id}/processes/{pid}/pty"),
];

fn documented(doc: &Value) -> BTreeSet<(String, String)> {
    let mut ops = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in ["get", "post", "put", "delete", "patch", "head", "options"] {
            if item.get(method).is_some() {
                ops.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    ops
}

#[actix_web::test]
async fn the_served_document_is_openapi_3_1_and_lists_every_registered_route() {
    let mut mocks = Mocks::new();
    mocks.catalog.expect_list().returning(|| {
        Ok(vec![
            TemplateName::new("busybox").unwrap(),
            TemplateName::new("go").unwrap(),
        ])
    });
    let res = app!(mocks.service()).get("/api/openapi.json").await;
    assert_eq!(res.status, 200);
    let doc = res.json();
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(doc["info"]["title"], "monza");

    // The served document names the server's templates, so a client names one that exists.
    assert_eq!(
        doc["components"]["schemas"]["CreateSandboxRequest"]["properties"]["template"]["enum"],
        json!(["busybox", "go", null])
    );

    let registered: BTreeSet<(String, String)> =
        monza_http::registered_routes().into_iter().collect();
    let in_doc = documented(&doc);
    let missing: Vec<_> = registered.difference(&in_doc).collect();
    assert!(
        missing.is_empty(),
        "registered but not documented: {missing:?}"
    );
    let extra: Vec<_> = in_doc.difference(&registered).collect();
    assert!(extra.is_empty(), "documented but not registered: {extra:?}");

    let contract: BTreeSet<(String, String)> = CONTRACT
        .iter()
        .map(|(m, p)| ((*m).to_owned(), (*p).to_owned()))
        .collect();
    assert_eq!(registered, contract);
}

#[actix_web::test]
async fn the_document_describes_parameters_bodies_and_errors() {
    let doc = serde_json::to_value(monza_http::ApiDoc::openapi()).unwrap();
    let op = |method: &str, path: &str| doc["paths"][path][method].clone();
    let assert_properties = |schema: &str, fields: &[&str]| {
        let properties = &doc["components"]["schemas"][schema]["properties"];
        for field in fields {
            assert!(properties[field].is_object(), "{schema}.{field}");
        }
    };

    let execute = op("post", "/api/sandboxes/{id}/execute");
    assert_eq!(execute["parameters"][0]["name"], "id");
    assert_eq!(execute["parameters"][0]["in"], "path");
    assert!(
        execute["requestBody"]["content"]["application/json"]["schema"]["$ref"]
            .as_str()
            .unwrap()
            .ends_with("/ExecuteRequest")
    );
    for status in ["200", "400", "404", "409", "413"] {
        assert!(execute["responses"][status].is_object(), "execute {status}");
    }
    assert_properties(
        "ExecuteResponse",
        &[
            "output",
            "exitCode",
            "truncated",
            "stdout",
            "stderr",
            "timed_out",
        ],
    );

    let upload = op("post", "/api/sandboxes/{id}/files/upload");
    assert!(upload["requestBody"]["content"]["multipart/form-data"].is_object());
    assert!(upload["responses"]["413"].is_object());

    let download = op("get", "/api/sandboxes/{id}/files/download");
    let names: Vec<&str> = download["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["id", "path"]);

    let list = op("get", "/api/sandboxes");
    assert_eq!(list["parameters"][0]["name"], "status");
    assert_eq!(list["parameters"][0]["in"], "query");

    let create = op("post", "/api/sandboxes");
    assert!(create["responses"]["201"]["headers"]["Location"].is_object());

    assert_properties(
        "SandboxResponse",
        &[
            "id",
            "name",
            "status",
            "container_id",
            "image",
            "workspace_mount",
            "devcontainer_config",
            "env_vars",
            "port_mappings",
            "last_activity",
            "created_at",
            "expires_at",
            "deleted_at",
        ],
    );
}

#[actix_web::test]
async fn every_documented_operation_is_served_by_the_router() {
    let app = app!(Mocks::permissive().service());
    let id = SandboxId::new_random().to_string();
    for (method, path) in monza_http::registered_routes() {
        let uri = path.replace("{id}", &id);
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        let res = app
            .call(TestRequest::default().method(method.clone()).uri(&uri))
            .await;
        let unrouted = res.status == 405
            || res.status == 404
                && res.json()["error"]["message"]
                    .as_str()
                    .unwrap_or_default()
                    .starts_with("no route");
        assert!(!unrouted, "{method} {uri} is not routed: {}", res.status);
    }
}

#[actix_web::test]
async fn no_input_makes_a_handler_panic_or_fail_outside_the_error_shape() {
    let id = SandboxId::new_random().to_string();
    let ids = [
        id.as_str(),
        "",
        "%00",
        "..",
        "%2e%2e",
        "00000000-0000-0000-0000-000000000000",
        "ffffffffffffffffffffffffffffffffffffffffffffffff",
        "%F0%9F%92%A9",
        "%ff%fe",
        "a%0d%0aX-Injected:%201",
    ];
    let suffixes = [
        "",
        "/",
        "/heartbeat",
        "/execute",
        "/events",
        "/files/upload",
        "/files/download",
        "/files/download?path",
        "/files/download?path=%00",
        "/files/download?path=/%ff",
        "/files/download?path=/a&path=/b",
        "/files/../../etc",
        "//execute",
    ];
    let bodies: [(&str, &[u8]); 8] = [
        ("application/json", b""),
        ("application/json", b"null"),
        ("application/json", b"[]"),
        ("application/json", b"{\"command\": 1e999}"),
        (
            "application/json",
            b"{\"command\":\"ls\",\"timeout_secs\":18446744073709551615,\"max_output_bytes\":-1}",
        ),
        ("application/json", b"\xff\xfe{"),
        ("multipart/form-data; boundary=", b"--\r\n"),
        ("application/json; charset=ü", b"{}"),
    ];
    let (form_type, form) = multipart(&[("file", Some("\r\n"), b"x"), ("path", None, b"\0")]);
    // Once where no sandbox exists, once where every id names a running one (so the bodies
    // reach the deeper parsing).
    for mocks in [Mocks::permissive(), Mocks::running()] {
        let app = app!(mocks.service());
        let mut requests = 0;
        for sandbox in ids {
            for suffix in suffixes {
                let uri = format!("/api/sandboxes/{sandbox}{suffix}");
                for method in [Method::GET, Method::POST, Method::DELETE, Method::PATCH] {
                    let mut cases: Vec<TestRequest> = vec![
                        TestRequest::default().method(method.clone()).uri(&uri),
                        TestRequest::default()
                            .method(method.clone())
                            .uri(&uri)
                            .insert_header((header::CONTENT_TYPE, form_type.clone()))
                            .set_payload(form.clone()),
                    ];
                    for (content_type, body) in bodies {
                        cases.push(
                            TestRequest::default()
                                .method(method.clone())
                                .uri(&uri)
                                .insert_header((header::CONTENT_TYPE, content_type))
                                .set_payload(body.to_vec()),
                        );
                    }
                    for req in cases {
                        let res = app.call(req).await;
                        requests += 1;
                        let status = res.status.as_u16();
                        assert!(
                            (400..500).contains(&status) || status == 200 || status == 204,
                            "{method} {uri}: {status} {:?}",
                            res.body
                        );
                        if status >= 400 {
                            let body = res.json();
                            assert!(body["error"]["code"].is_string(), "{method} {uri}: {body}");
                        }
                    }
                }
            }
        }
        assert!(requests > 1000, "{requests}");
    }
}

#[test]
fn every_protected_operation_declares_the_bearer_scheme_and_its_401_and_no_public_one_does() {
    let doc = serde_json::to_value(monza_http::ApiDoc::openapi()).unwrap();
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"],
        json!({"type": "http", "scheme": "bearer",
               "description": "An API token (`monza token create`, or the bootstrap admin token)"})
    );
    for (method, path) in monza_http::registered_routes() {
        let op = &doc["paths"][&path][method.to_lowercase()];
        if monza_http::is_protected(&path) {
            assert_eq!(op["security"], json!([{"bearer": []}]), "{method} {path}");
            let unauthorized = &op["responses"]["401"];
            assert!(
                unauthorized["headers"]["WWW-Authenticate"].is_object(),
                "{method} {path}: {unauthorized}"
            );
            assert!(
                unauthorized["content"]["application/json"].is_object(),
                "{method} {path}"
            );
            // Authentication reads the token store, which may be down.
            assert!(op["responses"]["503"].is_object(), "{method} {path}");
        } else {
            assert!(op.get("security").is_none(), "{method} {path} is public");
            assert!(op["responses"].get("401").is_none(), "{method} {path}");
        }
    }
}

#[test]
fn ids_are_uuids_and_the_status_filter_is_the_domain_s() {
    let doc = serde_json::to_value(monza_http::ApiDoc::openapi()).unwrap();
    for (method, path) in monza_http::registered_routes() {
        let op = &doc["paths"][&path][method.to_lowercase()];
        for param in op["parameters"].as_array().into_iter().flatten() {
            if param["name"] == "id" {
                assert_eq!(param["in"], "path");
                assert_eq!(param["schema"]["format"], "uuid", "{method} {path}");
            }
        }
    }
    let list = &doc["paths"]["/api/sandboxes"]["get"]["parameters"][0];
    let values: Vec<&str> = list["schema"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    for value in &values {
        assert!(value.parse::<StatusFilter>().is_ok(), "{value}");
    }
    for status in SandboxStatus::ALL {
        assert!(values.contains(&status.as_str()), "{status:?}");
    }
    assert!(values.contains(&"live") && values.contains(&"all"));
    // What the document does not list is refused.
    for value in ["", "LIVE", "ok", " running"] {
        assert!(value.parse::<StatusFilter>().is_err(), "{value:?}");
    }
    let statuses = &doc["components"]["schemas"]["SandboxResponse"]["properties"]["status"];
    assert_eq!(
        statuses["enum"],
        json!(SandboxStatus::ALL.map(SandboxStatus::as_str))
    );
}

#[test]
fn a_download_is_documented_as_the_one_type_it_is_served_as() {
    let doc = serde_json::to_value(monza_http::ApiDoc::openapi()).unwrap();
    let ok = &doc["paths"]["/api/sandboxes/{id}/files/download"]["get"]["responses"]["200"];
    let types: Vec<&String> = ok["content"].as_object().unwrap().keys().collect();
    assert_eq!(types, ["application/octet-stream"]);
    assert!(ok["headers"]["Content-Disposition"].is_object());
    assert!(ok["headers"]["X-Content-Type-Options"].is_object());
}

#[test]
fn the_create_body_is_optional_and_an_object_or_null() {
    let doc = serde_json::to_value(monza_http::ApiDoc::openapi()).unwrap();
    let body = &doc["paths"]["/api/sandboxes"]["post"]["requestBody"];
    assert_eq!(body["required"], false);
    assert_eq!(
        body["content"]["application/json"]["schema"],
        json!({"oneOf": [{"$ref": "#/components/schemas/CreateSandboxRequest"}, {"type": "null"}]})
    );
}

/// Every `$ref` in `value`, at any depth.
fn refs<'a>(value: &'a Value, out: &mut Vec<&'a str>) {
    match value {
        Value::Object(map) => {
            for (key, item) in map {
                match (key.as_str(), item) {
                    ("$ref", Value::String(target)) => out.push(target),
                    _ => refs(item, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|item| refs(item, out)),
        _ => {}
    }
}

#[test]
fn every_schema_the_document_refers_to_is_in_it() {
    let doc = serde_json::to_value(monza_http::ApiDoc::openapi()).unwrap();
    let mut found = Vec::new();
    refs(&doc, &mut found);
    assert!(found.len() > 20, "{found:?}");
    let missing: BTreeSet<&str> = found
        .into_iter()
        .filter(|target| {
            let pointer = target.strip_prefix('#').unwrap_or(target);
            doc.pointer(pointer).is_none()
        })
        .collect();
    assert!(
        missing.is_empty(),
        "references to schemas the document lacks: {missing:?}"
    );
}
