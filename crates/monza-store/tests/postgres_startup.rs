//! Start-up: URLs, migrations with retry, clear errors without the password, and a
//! database that goes away.

#![cfg(feature = "postgres")]
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns: a panic is the failure report

mod pg;

use std::time::{Duration, Instant};

use diesel::sql_types::BigInt;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use monza_domain::testing::repository_contract::{base_time, sample_sandbox};
use monza_domain::{Error, SandboxRepository, SandboxStatus};
use monza_store::postgres::{PgOptions, PgSandboxRepository, parse_postgres_url};
use pg::{TestDb, server_url, test_options};

const SECRET: &str = "s3cret-Pa55word";

#[test]
fn parses_postgres_urls_and_never_shows_the_password() {
    for scheme in ["postgres", "postgresql"] {
        let url = parse_postgres_url(&format!(
            "{scheme}://monza:{SECRET}@db.internal:6432/sandboxes"
        ))
        .unwrap();
        assert_eq!(url.host(), "db.internal");
        assert_eq!(url.port(), 6432);
        assert_eq!(url.database(), "sandboxes");
        assert_eq!(url.user(), "monza");
        let shown = format!("{url} {url:?} {}", url.describe());
        assert!(!shown.contains(SECRET), "{shown}");
        assert!(shown.contains("db.internal"), "{shown}");
    }
    let url = parse_postgres_url("postgres://localhost").unwrap();
    assert_eq!((url.port(), url.database().as_str()), (5432, "postgres"));
    for bad in [
        "mysql://x@y/z",
        "sqlite://monza.db",
        "postgres://",
        "db.internal:5432",
    ] {
        let err = parse_postgres_url(bad).unwrap_err();
        assert!(matches!(err, Error::InvalidInput(_)), "{bad}: {err:?}");
    }
}

fn quick(attempts: u32) -> PgOptions {
    PgOptions {
        migration_attempts: attempts,
        migration_retry_delay: Duration::from_millis(100),
        connect_timeout: Duration::from_secs(2),
        ..PgOptions::default()
    }
}

#[track_caller]
fn assert_one_clear_line(err: &Error, host: &str, port: u16, database: &str) {
    let message = err.to_string();
    assert!(
        matches!(err, Error::Unavailable { dependency, .. } if dependency == "database"),
        "{err:?}"
    );
    assert!(!message.contains(SECRET), "the password leaked: {message}");
    assert!(!message.contains('\n'), "one line: {message}");
    assert!(message.contains(&format!("{host}:{port}")), "{message}");
    assert!(message.contains(&format!("\"{database}\"")), "{message}");
}

#[tokio::test]
async fn an_unreachable_host_is_one_clear_error_after_the_retries() {
    let started = Instant::now();
    let url = format!("postgres://postgres:{SECRET}@127.0.0.1:1/monza");
    let err = PgSandboxRepository::connect(&url, quick(3))
        .await
        .unwrap_err();
    assert_one_clear_line(&err, "127.0.0.1", 1, "monza");
    eprintln!("{err}");
    assert!(err.to_string().contains("after 3 attempts"), "{err}");
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "two pauses between three tries"
    );
    assert!(started.elapsed() < Duration::from_secs(10), "bounded");
}

#[tokio::test]
async fn a_host_that_never_answers_times_out() {
    // A listener that accepts and never speaks: the connect timeout, not a hang.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let url = format!("postgres://postgres:{SECRET}@127.0.0.1:{port}/monza");
    let options = PgOptions {
        connect_timeout: Duration::from_millis(300),
        ..quick(2)
    };
    let started = Instant::now();
    let err = PgSandboxRepository::connect(&url, options)
        .await
        .unwrap_err();
    assert_one_clear_line(&err, "127.0.0.1", port, "monza");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    drop(listener);
}

#[tokio::test]
async fn a_wrong_password_is_one_clear_error_without_the_password() {
    let server = server_url();
    // Skips (or fails in CI) when the server itself is unreachable.
    let Some(_db) = TestDb::create().await else {
        return;
    };
    let url = format!(
        "postgres://{}:{SECRET}@{}:{}/{}",
        server.user(),
        server.host(),
        server.port(),
        server.database()
    );
    let err = PgSandboxRepository::connect(&url, quick(2))
        .await
        .unwrap_err();
    assert_one_clear_line(&err, server.host(), server.port(), &server.database());
    eprintln!("{err}");
    assert!(
        err.to_string().contains("password authentication failed"),
        "{err}"
    );
}

async fn migrations_applied(db: &TestDb) -> i64 {
    #[derive(diesel::QueryableByName)]
    struct Count {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    let mut conn = AsyncPgConnection::establish(db.url.expose()).await.unwrap();
    diesel::sql_query("SELECT count(*) AS n FROM __diesel_schema_migrations")
        .get_result::<Count>(&mut conn)
        .await
        .unwrap()
        .n
}

#[tokio::test]
async fn migrations_run_on_a_new_and_on_an_already_migrated_database() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let sandbox = sample_sandbox("acme", SandboxStatus::Running, base_time());
    {
        let repo = PgSandboxRepository::connect_to(db.url.clone(), test_options())
            .await
            .unwrap();
        assert_eq!(
            repo.insert(&sandbox, None).await.unwrap(),
            monza_domain::Admission::Inserted
        );
    }
    let applied = migrations_applied(&db).await;
    assert!(applied >= 1);
    let repo = PgSandboxRepository::connect_to(db.url.clone(), test_options())
        .await
        .unwrap();
    assert_eq!(repo.get(sandbox.id).await.unwrap(), sandbox);
    assert_eq!(
        migrations_applied(&db).await,
        applied,
        "nothing applied twice"
    );
}

#[tokio::test]
async fn processes_starting_together_migrate_once() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let (a, b, c) = tokio::join!(
        PgSandboxRepository::connect_to(db.url.clone(), test_options()),
        PgSandboxRepository::connect_to(db.url.clone(), test_options()),
        PgSandboxRepository::connect_to(db.url.clone(), test_options()),
    );
    for repo in [a, b, c] {
        repo.unwrap().ping().await.unwrap();
    }
}

#[tokio::test]
async fn a_database_that_goes_away_is_unavailable_not_a_hang() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let options = PgOptions {
        acquire_timeout: Duration::from_secs(2),
        connect_timeout: Duration::from_secs(2),
        ..test_options()
    };
    let repo = PgSandboxRepository::connect_to(db.url.clone(), options)
        .await
        .unwrap();
    repo.ping().await.unwrap();
    drop(db); // DROP DATABASE ... WITH (FORCE) ends the pool's connections.
    let started = Instant::now();
    for _ in 0..2 {
        let err = repo
            .get(monza_domain::SandboxId::new_random())
            .await
            .unwrap_err();
        assert!(
            matches!(&err, Error::Unavailable { dependency, .. } if dependency == "database"),
            "{err:?}"
        );
        assert!(!err.to_string().contains("postgres:postgres@"), "{err}");
    }
    assert!(started.elapsed() < Duration::from_secs(10));
}
