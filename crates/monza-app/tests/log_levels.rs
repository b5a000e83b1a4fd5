#![allow(clippy::unwrap_used, clippy::expect_used)]
//! ERROR is for what an operator must act on: a client's mistakes (an unknown template, a
//! malformed id, bad input, an unknown sandbox) are answered 4xx and never logged at ERROR.
//! One test in a binary of its own, since it installs the process's log subscriber.

mod support;

use std::sync::{Arc, Mutex};

use reqwest::StatusCode;
use serde_json::json;
use support::{Store, TestApp};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

/// Every event's level and message, as logged.
#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<(Level, String)>>>);

impl<S: Subscriber> Layer<S> for Recorder {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        struct Fields(String);
        impl tracing::field::Visit for Fields {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                self.0.push_str(&format!("{}={value:?} ", field.name()));
            }
        }
        let mut fields = Fields(String::new());
        event.record(&mut fields);
        self.0
            .lock()
            .unwrap()
            .push((*event.metadata().level(), fields.0));
    }
}

#[tokio::test]
async fn client_mistakes_are_never_logged_at_error() {
    let recorder = Recorder::default();
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(recorder.clone()))
        .unwrap();
    let Some(app) = TestApp::spawn(Store::Sqlite, |_| {}).await else {
        return;
    };
    let post = |path: &str, body: serde_json::Value| app.client.post(app.url(path)).json(&body);
    let missing = uuid::Uuid::new_v4();
    let mistakes = [
        (
            post("/api/sandboxes", json!({"template": "no-such-template"})),
            400,
        ),
        (post("/api/sandboxes", json!({"name": ""})), 400),
        (app.client.get(app.url("/api/sandboxes/not-a-uuid")), 400),
        (
            app.client
                .get(app.url(&format!("/api/sandboxes/{missing}"))),
            404,
        ),
        (
            post(
                &format!("/api/sandboxes/{missing}/execute"),
                json!({"command": "true"}),
            ),
            404,
        ),
        (
            app.client.get(app.url("/api/sandboxes?status=sleeping")),
            400,
        ),
        (app.client.get(app.url("/no/such/route")), 404),
    ];
    for (request, want) in mistakes {
        let (status, body) = app.send(request).await;
        assert_eq!(status.as_u16(), want, "{body}");
    }
    let sandbox = app.create(json!({})).await;
    let id = sandbox["id"].as_str().unwrap();
    let (status, body) = app
        .get_json(&format!(
            "/api/sandboxes/{id}/files/download?path=/no/such/file"
        ))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    app.shutdown().await;

    let events = recorder.0.lock().unwrap();
    let errors: Vec<&String> = events
        .iter()
        .filter(|(level, _)| *level == Level::ERROR)
        .map(|(_, message)| message)
        .collect();
    assert!(
        errors.is_empty(),
        "client mistakes logged at ERROR: {errors:#?}"
    );
    // The request lines are there: the recorder saw the server's logs.
    assert!(
        events.iter().any(|(_, m)| m.contains("status=400")),
        "no request line was recorded"
    );
}
