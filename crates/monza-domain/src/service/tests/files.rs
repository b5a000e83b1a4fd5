//! The file operations' rules: paths and limits are checked before anything is asked of the
//! store or the runtime, and the runtime is asked as the sandbox's user, with the server's
//! walk bounds, in the workspace folder when no path is given.

use super::*;
use crate::files::{GlobResult, SearchResult};

async fn refused<T: std::fmt::Debug>(result: Result<T>, says: &str) {
    match result {
        Err(Error::InvalidInput(message)) => {
            assert!(message.contains(says), "{message:?} should say {says:?}")
        }
        other => panic!("expected invalid input saying {says:?}, got {other:?}"),
    }
}

#[tokio::test]
async fn bad_paths_patterns_and_limits_are_refused_before_the_store_is_asked() {
    // No expectations: any call to the store or the runtime fails the test.
    let service = Mocks::new().service();
    let id = SandboxId::new_random();
    let a = &Access::Admin;
    refused(service.make_directory(a, id, "/", true).await, "root").await;
    refused(
        service.make_directory(a, id, "/proc/x", true).await,
        "/proc",
    )
    .await;
    refused(
        service.remove_path(a, id, "/etc/./passwd", false).await,
        "/etc/passwd",
    )
    .await;
    refused(
        service.remove_path(a, id, "/etc/hosts", true).await,
        "engine",
    )
    .await;
    refused(
        service.remove_path(a, id, "relative", true).await,
        "absolute",
    )
    .await;
    let mv = |from: &str, to: &str| MoveRequest {
        from: from.into(),
        to: to.into(),
        overwrite: false,
    };
    refused(
        service.move_path(a, id, mv("/a", "/a/b")).await,
        "into itself",
    )
    .await;
    refused(
        service.move_path(a, id, mv("/etc/group", "/g")).await,
        "/etc/group",
    )
    .await;
    let list = |limit| ListRequest {
        path: "/w".into(),
        recursive: false,
        limit: Some(limit),
    };
    refused(
        service.list_files(a, id, list(0)).await,
        "limit must be at least 1",
    )
    .await;
    let lines = ReadLinesRequest {
        path: "/w/f".into(),
        offset: 0,
        limit: Some(0),
    };
    refused(service.read_lines(a, id, lines).await, "limit").await;
    let search = |pattern: &str, glob: Option<&str>, max| SearchRequest {
        pattern: pattern.into(),
        glob: glob.map(str::to_owned),
        max_results: max,
        ..SearchRequest::default()
    };
    refused(
        service.search_files(a, id, search("", None, None)).await,
        "pattern is empty",
    )
    .await;
    refused(
        service.search_files(a, id, search("a\0", None, None)).await,
        "NUL",
    )
    .await;
    refused(
        service
            .search_files(a, id, search("a", Some(""), None))
            .await,
        "glob is empty",
    )
    .await;
    refused(
        service
            .search_files(a, id, search(&"x".repeat(4097), None, None))
            .await,
        "4096",
    )
    .await;
    refused(
        service
            .search_files(a, id, search("a", None, Some(0)))
            .await,
        "max_results",
    )
    .await;
    let glob = |pattern: &str| GlobRequest {
        pattern: pattern.into(),
        ..GlobRequest::default()
    };
    refused(service.glob_files(a, id, glob("/etc/*")).await, "relative").await;
    let edit = |old: &str, new: &str| EditRequest {
        path: "/w/f".into(),
        old: old.into(),
        new: new.into(),
        replace_all: false,
    };
    refused(
        service.edit_file(a, id, edit("", "x")).await,
        "old_string is empty",
    )
    .await;
}

#[tokio::test]
async fn operations_run_as_the_sandboxs_user_within_the_servers_walk_bounds() {
    let mut running = sandbox(SandboxStatus::Running);
    running.remote_user = Some("dev".into());
    let mut m = Mocks::finding(&running);
    m.records_activity(running.clone());
    m.config.file_limits.walk.max_entries = 77;
    let walk = m.config.file_limits.walk;
    m.runtime
        .expect_search_files()
        .withf(move |cid, user, search| {
            cid == CID
                && user.as_deref() == Some("dev")
                && search.path == "/workspace"
                && search.max_results == 1000
                && search.walk == walk
        })
        .times(1)
        .returning(|_, _, _| Ok(SearchResult::default()));
    m.runtime
        .expect_glob_files()
        .withf(move |_, user, glob| {
            user.as_deref() == Some("dev") && glob.path == "/src" && glob.max_results == 1000
        })
        .times(1)
        .returning(|_, _, _| Ok(GlobResult::default()));
    m.runtime
        .expect_remove_path()
        .withf(|_, user, path, recursive| {
            user.as_deref() == Some("dev") && path == "/workspace/a/b" && *recursive
        })
        .times(1)
        .returning(|_, _, _, _| Ok(3));
    let service = m.service();
    let a = &Access::Admin;
    let id = running.id;
    service
        .search_files(
            a,
            id,
            SearchRequest {
                pattern: "x".into(),
                ..SearchRequest::default()
            },
        )
        .await
        .unwrap();
    service
        .glob_files(
            a,
            id,
            GlobRequest {
                pattern: "*".into(),
                path: Some("/src/".into()),
                // Over the server's maximum: clamped to it.
                max_results: Some(5000),
            },
        )
        .await
        .unwrap();
    // Spelled with `.` and doubled slashes, the path is the one the checks saw.
    assert_eq!(
        service
            .remove_path(a, id, "/workspace/./a//b/", true)
            .await
            .unwrap(),
        3
    );
}

#[tokio::test]
async fn a_file_operation_on_a_sandbox_that_is_not_running_is_a_conflict() {
    let stopped = sandbox(SandboxStatus::Expired);
    let service = Mocks::finding(&stopped).service();
    let result = service
        .make_directory(&Access::Admin, stopped.id, "/workspace/x", true)
        .await;
    assert!(matches!(result, Err(Error::Conflict(_))), "{result:?}");
}

#[tokio::test]
async fn an_archive_out_is_cut_with_an_error_past_the_limit() {
    let running = sandbox(SandboxStatus::Running);
    let mut m = Mocks::finding(&running);
    m.records_activity(running.clone());
    m.config.max_archive_bytes = 25;
    m.runtime.expect_get_tree().times(1).returning(|_, _| {
        let chunks = (0..4).map(|_| Ok(bytes::Bytes::from_static(&[0u8; 10])));
        Ok(futures::stream::iter(chunks).boxed())
    });
    let service = m.service();
    let tree = service
        .get_tree(&Access::Admin, running.id, "/workspace")
        .await
        .unwrap();
    let items: Vec<Result<bytes::Bytes>> = tree.collect().await;
    assert_eq!(items.len(), 3, "{items:?}");
    assert!(items[0].is_ok() && items[1].is_ok());
    assert!(
        matches!(&items[2], Err(Error::TooLarge(m)) if m.contains("MONZA_MAX_ARCHIVE_BYTES")),
        "{:?}",
        items[2]
    );
}
