//! The request log: one line per request with what an operator needs, and nothing a client
//! sent in the query or body; a 500's cause is in the log, not in the response.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns: a panic is the failure report

mod support;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use monza_domain::{Error, SandboxId};
use support::{Mocks, sandbox_uri};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};

type Fields = BTreeMap<String, String>;

/// A subscriber that keeps every event's fields, merged with those of the spans it is in.
#[derive(Default)]
struct Capture {
    events: Arc<Mutex<Vec<Fields>>>,
    spans: Mutex<HashMap<u64, Fields>>,
    stack: Mutex<Vec<u64>>,
    next: AtomicU64,
}

struct Collect<'a>(&'a mut Fields);

impl Visit for Collect<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
}

impl Subscriber for Capture {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }

    fn new_span(&self, attrs: &Attributes<'_>) -> Id {
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let mut fields = Fields::new();
        attrs.record(&mut Collect(&mut fields));
        self.spans.lock().unwrap().insert(id, fields);
        Id::from_u64(id)
    }

    fn record(&self, _: &Id, _: &Record<'_>) {}

    fn record_follows_from(&self, _: &Id, _: &Id) {}

    fn event(&self, event: &Event<'_>) {
        let mut fields = Fields::new();
        let spans = self.spans.lock().unwrap();
        for id in self.stack.lock().unwrap().iter() {
            if let Some(span) = spans.get(id) {
                fields.extend(span.clone());
            }
        }
        fields.insert("level".into(), event.metadata().level().to_string());
        event.record(&mut Collect(&mut fields));
        self.events.lock().unwrap().push(fields);
    }

    fn enter(&self, id: &Id) {
        self.stack.lock().unwrap().push(id.into_u64());
    }

    fn exit(&self, _: &Id) {
        self.stack.lock().unwrap().pop();
    }
}

fn capture() -> (Arc<Mutex<Vec<Fields>>>, tracing::subscriber::DefaultGuard) {
    let subscriber = Capture::default();
    let events = subscriber.events.clone();
    (events, tracing::subscriber::set_default(subscriber))
}

#[actix_web::test]
async fn each_request_logs_one_line_with_id_method_path_status_and_duration() {
    let (events, _guard) = capture();
    let app = app!(Mocks::permissive().service());
    let id = SandboxId::new_random();
    let res = app
        .get(&sandbox_uri(
            id,
            "/files/download?path=/home/dev/.ssh/id_ed25519",
        ))
        .await;
    res.error(404, "not_found");
    let request_id = res.header("x-request-id").to_owned();

    let events = events.lock().unwrap();
    let lines: Vec<&Fields> = events
        .iter()
        .filter(|e| e.get("message").map(String::as_str) == Some("request"))
        .collect();
    assert_eq!(lines.len(), 1, "{events:#?}");
    let line = lines[0];
    assert_eq!(line["request_id"], request_id);
    assert_eq!(line["method"], "GET");
    assert_eq!(line["path"], format!("/api/sandboxes/{id}/files/download"));
    assert_eq!(line["status"], "404");
    assert!(line["duration_ms"].parse::<f64>().is_ok(), "{line:?}");
    let everything = format!("{events:?}");
    assert!(
        !everything.contains("id_ed25519"),
        "the query leaked: {everything}"
    );
}

#[actix_web::test]
async fn a_500_logs_its_cause_under_the_request_id() {
    let (events, _guard) = capture();
    let mut m = Mocks::new();
    m.repo
        .expect_list()
        .returning(|_| Err(Error::internal("row 7 has status \"zombie\"")));
    let res = app!(m.service()).get("/api/sandboxes").await;
    res.error(500, "internal");
    let request_id = res.header("x-request-id").to_owned();

    let events = events.lock().unwrap();
    let cause = events
        .iter()
        .find(|e| e.get("level").map(String::as_str) == Some("ERROR"))
        .unwrap_or_else(|| panic!("no error logged: {events:#?}"));
    assert!(cause["error"].contains("zombie"), "{cause:?}");
    assert_eq!(cause["request_id"], request_id);
}
