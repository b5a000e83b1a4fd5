//! Shared fixtures: a real `SandboxService` over mockall mocks of the ports, and helpers to
//! call the app and read its answers.

#![allow(dead_code)] // Each test binary uses a different subset.

use std::collections::BTreeMap;
use std::sync::Arc;

use actix_web::body::{BodySize, MessageBody};
use actix_web::dev::{Payload, Service, ServiceResponse};
use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderMap};
use actix_web::test::{self, TestRequest};
use bytes::Bytes;
use futures::StreamExt;
use futures::future::LocalBoxFuture;
use monza_domain::testing::fixtures;
use monza_domain::{
    Error, ExecOutput, FileDownload, MockClock, MockContainerRuntime, MockSandboxRepository,
    MockTemplateCatalog, PortMapping, Sandbox, SandboxId, SandboxName, SandboxService,
    SandboxState, SandboxStatus, ServiceConfig, Template, TemplateName, TenantId,
};
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::macros::datetime;

/// Builds a [`TestApp`] over a service: with `Auth::Disabled` and the default `HttpConfig`,
/// with a given `HttpConfig`, or with a given `Auth`.
#[macro_export]
macro_rules! app {
    ($service:expr, auth = $auth:expr) => {
        $crate::app!(@configure monza_http::configure($service, $auth))
    };
    ($service:expr) => {
        $crate::app!($service, auth = monza_http::Auth::Disabled)
    };
    ($service:expr, $config:expr) => {
        $crate::app!(@configure monza_http::configure_with(
            $service,
            monza_http::Auth::Disabled,
            $config,
        ))
    };
    (@configure $configure:expr) => {{
        let app = std::rc::Rc::new(
            actix_web::test::init_service(actix_web::App::new().configure($configure)).await,
        );
        // The closure is written here, where the app's request type is known, so that
        // `TestApp` need not name it.
        $crate::support::TestApp::new(move |req, payload| {
            let app = app.clone();
            Box::pin(async move {
                let req = req.to_request();
                let req = match payload {
                    Some(payload) => req.replace_payload(payload).0,
                    None => req,
                };
                $crate::support::send(&*app, req).await
            })
        })
    }};
}

/// How a [`TestApp`] answers a request, with the payload that replaces its body, if any.
type Handle = dyn Fn(TestRequest, Option<Payload>) -> LocalBoxFuture<'static, Answer>;

/// An app under test (built by [`app!`]): sends requests and reads the whole answers.
pub struct TestApp(Box<Handle>);

impl TestApp {
    pub fn new(
        handle: impl Fn(TestRequest, Option<Payload>) -> LocalBoxFuture<'static, Answer> + 'static,
    ) -> Self {
        Self(Box::new(handle))
    }

    /// Sends `req` as built.
    pub async fn call(&self, req: TestRequest) -> Answer {
        (self.0)(req, None).await
    }

    /// Sends `req` with `payload` as its body (a stream, for bodies that trickle or never
    /// end).
    pub async fn call_streaming(&self, req: TestRequest, payload: Payload) -> Answer {
        (self.0)(req, Some(payload)).await
    }

    pub async fn get(&self, uri: &str) -> Answer {
        self.call(TestRequest::get().uri(uri)).await
    }

    /// A POST without a body.
    pub async fn post(&self, uri: &str) -> Answer {
        self.call(TestRequest::post().uri(uri)).await
    }

    pub async fn post_json(&self, uri: &str, body: &Value) -> Answer {
        self.call(TestRequest::post().uri(uri).set_json(body)).await
    }

    /// A POST of `body` as it is, declared as `content_type`.
    pub async fn post_raw(&self, uri: &str, content_type: &str, body: impl Into<Bytes>) -> Answer {
        let req = TestRequest::post()
            .uri(uri)
            .insert_header((header::CONTENT_TYPE, content_type))
            .set_payload(body.into());
        self.call(req).await
    }

    pub async fn delete(&self, uri: &str) -> Answer {
        self.call(TestRequest::delete().uri(uri)).await
    }
}

/// The route of a sandbox: `/api/sandboxes/{id}` followed by `rest` (`""`, `"/execute"`, …).
pub fn sandbox_uri(id: impl std::fmt::Display, rest: &str) -> String {
    format!("/api/sandboxes/{id}{rest}")
}

/// The fixed "now" of the mock clock: 2030-01-02 03:04:05 UTC.
pub const NOW: OffsetDateTime = datetime!(2030-01-02 03:04:05 UTC);

/// The mocks behind a service; set expectations, then call [`Mocks::service`].
#[derive(Default)]
pub struct Mocks {
    pub repo: MockSandboxRepository,
    pub runtime: MockContainerRuntime,
    pub catalog: MockTemplateCatalog,
    pub config: ServiceConfig,
}

impl Mocks {
    pub fn new() -> Self {
        Self::default()
    }

    /// Every port answers "not found" / empty / ok, so any route can be called without a
    /// mock panicking on an unexpected call.
    pub fn permissive() -> Self {
        let mut m = Self::new();
        m.repo
            .expect_get()
            .returning(|id| Err(Error::not_found(format!("sandbox {id} not found"))));
        m.repo.expect_list().returning(|_| Ok(Vec::new()));
        m.repo.expect_touch().returning(|_, _, _, _| Ok(false));
        m.repo.expect_events().returning(|_| Ok(Vec::new()));
        m.repo.expect_ping().returning(|| Ok(()));
        m.runtime.expect_ping().returning(|| Ok(()));
        m.catalog.expect_resolve().returning(|name| {
            Err(Error::not_found(format!(
                "no template {name}; available: go"
            )))
        });
        m.catalog
            .expect_list()
            .returning(|| Ok(vec![TemplateName::new("go").unwrap()]));
        m
    }

    /// Every id names a running sandbox and every runtime call succeeds.
    pub fn running() -> Self {
        let mut m = Self::new();
        m.repo.expect_get().returning(|id| {
            let mut sb = sandbox(SandboxStatus::Running);
            sb.id = id;
            Ok(sb)
        });
        m.repo.expect_touch().returning(|_, _, _, _| Ok(true));
        m.repo.expect_record_activity().returning(|id, _, _, _| {
            let mut sb = sandbox(SandboxStatus::Running);
            sb.id = id;
            Ok(sb)
        });
        m.repo.expect_transition().returning(|id, _| {
            let mut sb = sandbox(SandboxStatus::Deleted);
            sb.id = id;
            Ok(sb)
        });
        m.repo.expect_events().returning(|_| Ok(Vec::new()));
        m.runtime.expect_remove().returning(|_| Ok(()));
        m.runtime.expect_upload().returning(|_, _, file| {
            Ok(monza_domain::testing::fixtures::file_stat(
                &file.name, file.size,
            ))
        });
        m.runtime.expect_own_directory().returning(|_, _, _| Ok(()));
        m.runtime.expect_exec().returning(|_, _| {
            Ok(ExecOutput {
                output: String::new(),
                stdout: String::new(),
                stderr: String::new(),
                exit_code: 0,
                truncated: false,
                timed_out: false,
                duration: std::time::Duration::ZERO,
            })
        });
        m.runtime.expect_download().returning(|_, _| {
            Ok(FileDownload {
                stat: monza_domain::testing::fixtures::file_stat("f", 1),
                content: futures::stream::iter([Ok(Bytes::from_static(b"x"))]).boxed(),
            })
        });
        m
    }

    /// The store finds `sb` whatever the id asked for.
    pub fn finding(sb: &Sandbox) -> Self {
        let mut m = Self::new();
        let found = sb.clone();
        m.repo.expect_get().returning(move |_| Ok(found.clone()));
        m
    }

    /// The store finds `sb` and records activity on it: what a use case that acts on a
    /// running sandbox (execute, upload, download) reads and writes.
    pub fn serving(sb: &Sandbox) -> Self {
        let mut m = Self::finding(sb);
        let active = sb.clone();
        m.repo
            .expect_record_activity()
            .returning(move |_, _, _, _| Ok(active.clone()));
        m
    }

    pub fn service(self) -> SandboxService {
        let mut clock = MockClock::new();
        clock.expect_now().returning(|| NOW);
        SandboxService::new(
            Arc::new(self.repo),
            Arc::new(self.runtime),
            Arc::new(self.catalog),
            Arc::new(clock),
            self.config,
        )
    }
}

/// A running sandbox, with timestamps deliberately not in UTC (the API must answer in UTC).
pub fn sandbox(status: SandboxStatus) -> Sandbox {
    let id = SandboxId::new_random();
    Sandbox {
        id,
        tenant: TenantId::default_tenant(),
        name: SandboxName::new("demo").unwrap(),
        template: TemplateName::new("go").unwrap(),
        state: SandboxState::restore(status, None, None, None).unwrap(),
        container_id: Some("c0ffee".into()),
        image: "golang:1.22".into(),
        workspace_mount: "/workspace".into(),
        devcontainer_config: json!({"image": "golang:1.22", "forwardPorts": [8080]}),
        env_vars: BTreeMap::from([("GOFLAGS".to_owned(), "-mod=mod".to_owned())]),
        remote_env: Default::default(),
        remote_user: None,
        port_mappings: vec![PortMapping {
            id: uuid::Uuid::new_v4(),
            sandbox_id: id,
            host_port: 49153,
            container_port: 8080,
        }],
        last_activity: datetime!(2030-01-02 05:04:05 +02:00),
        created_at: datetime!(2030-01-02 05:00:00 +02:00),
        expires_at: datetime!(2030-01-02 05:19:05 +02:00),
    }
}

/// A minimal image template.
pub fn template(name: &TemplateName) -> Template {
    fixtures::template(name.as_str(), "golang:1.22")
}

/// A response, read whole.
#[derive(Debug)]
pub struct Answer {
    /// The body's declared size: `Sized(n)` is what the server sends as `Content-Length`.
    pub size: BodySize,
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "{} body is not JSON ({e}): {:?}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .unwrap_or_else(|| panic!("no {name} header in {:?}", self.headers))
            .to_str()
            .unwrap()
    }

    /// Asserts the error shape and returns the message.
    pub fn error(&self, status: u16, code: &str) -> String {
        assert_eq!(
            self.status.as_u16(),
            status,
            "body: {}",
            String::from_utf8_lossy(&self.body)
        );
        let body = self.json();
        assert_eq!(body["error"]["code"], code, "{body}");
        assert_eq!(
            body.as_object().unwrap().len(),
            1,
            "only `error` at the top: {body}"
        );
        body["error"]["message"]
            .as_str()
            .unwrap_or_else(|| panic!("no message: {body}"))
            .to_owned()
    }

    /// Asserts the error shape and that the message mentions `says`.
    pub fn error_mentioning(&self, status: u16, code: &str, says: &str) {
        let message = self.error(status, code);
        assert!(message.contains(says), "{says:?} not in {message:?}");
    }
}

/// Sends a request and reads the whole response.
pub async fn send<S, R, B>(app: &S, req: R) -> Answer
where
    S: Service<R, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody,
{
    let res = test::call_service(app, req).await;
    let status = res.status();
    let headers = res.headers().clone();
    let size = res.response().body().size();
    let body = test::read_body(res).await;
    Answer {
        size,
        status,
        headers,
        body,
    }
}

/// One form part: field name, filename (a file part) or `None` (a text part), content.
pub type Part<'a> = (&'a str, Option<&'a str>, &'a [u8]);

/// A multipart/form-data body from parts.
pub fn multipart(parts: &[Part<'_>]) -> (String, Vec<u8>) {
    let boundary = "monzaBoundary7MA4YWxkTrZu0gW";
    let mut body = Vec::new();
    for (name, filename, content) in parts {
        body.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
        match filename {
            Some(f) => body.extend_from_slice(
                format!(
                    "Content-Disposition: form-data; name=\"{name}\"; filename=\"{f}\"\r\n\
                     Content-Type: application/octet-stream\r\n\r\n"
                )
                .as_bytes(),
            ),
            None => body.extend_from_slice(
                format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n").as_bytes(),
            ),
        }
        body.extend_from_slice(content);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}
