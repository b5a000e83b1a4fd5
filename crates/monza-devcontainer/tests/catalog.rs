//! DirTemplateCatalog against real folders, through the TemplateCatalog port.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns: a panic is the failure report

use std::fs;
use std::path::Path;
use std::sync::Arc;

use monza_devcontainer::{
    CheckStatus, DirTemplateCatalog, check_dir, has_errors, test_templates_dir,
};
use monza_domain::{Error, ImageSource, TemplateCatalog, TemplateName};
use tempfile::TempDir;

mod support;
use support::hook_labels;

fn write(path: &Path, text: &str) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, text).unwrap();
}

fn name(text: &str) -> TemplateName {
    TemplateName::new(text).unwrap()
}

/// A catalog with one template, its devcontainer.json at `config` (relative).
fn one_template(config: &str, text: &str) -> TempDir {
    let dir = tempfile::tempdir().unwrap();
    write(&dir.path().join(config), text);
    dir
}

/// The lines `check_dir` reports for `dir`, as text.
fn check_lines(dir: &Path) -> Vec<String> {
    check_dir(dir, false)
        .iter()
        .map(ToString::to_string)
        .collect()
}

/// A catalog with one template at each of the three locations.
fn three_locations() -> TempDir {
    let dir = tempfile::tempdir().unwrap();
    write(
        &dir.path().join("plain/devcontainer.json"),
        r#"{"image": "plain:1"}"#,
    );
    write(
        &dir.path().join("nested/.devcontainer/devcontainer.json"),
        r#"{"image": "nested:1"}"#,
    );
    write(
        &dir.path().join("dotfile/.devcontainer.json"),
        r#"{"image": "dotfile:1"}"#,
    );
    dir
}

#[tokio::test]
async fn templates_are_found_at_each_of_the_three_locations() {
    let dir = three_locations();
    let catalog = DirTemplateCatalog::new(dir.path(), false);
    for template in ["plain", "nested", "dotfile"] {
        let resolved = catalog.resolve(&name(template)).await.unwrap();
        assert_eq!(resolved.name.as_str(), template);
        assert_eq!(
            resolved.image_name(),
            Some(format!("{template}:1").as_str())
        );
    }
}

#[tokio::test]
async fn list_is_sorted_and_skips_folders_that_are_not_templates() {
    let dir = three_locations();
    fs::create_dir_all(dir.path().join("empty-folder")).unwrap();
    fs::create_dir_all(dir.path().join("has space")).unwrap();
    write(
        &dir.path().join("has space/devcontainer.json"),
        r#"{"image": "a"}"#,
    );
    write(
        &dir.path().join(".hidden/devcontainer.json"),
        r#"{"image": "a"}"#,
    );
    write(&dir.path().join("README.md"), "not a template");
    let catalog = DirTemplateCatalog::new(dir.path(), false);
    let names: Vec<String> = catalog
        .list()
        .await
        .unwrap()
        .iter()
        .map(|name| name.as_str().to_owned())
        .collect();
    assert_eq!(names, ["dotfile", "nested", "plain"]);
    let err = catalog.resolve(&name(".hidden")).await.unwrap_err();
    assert!(matches!(err, Error::NotFound(_)), "{err:?}");
}

#[tokio::test]
async fn an_unknown_template_is_not_found_listing_the_available_ones() {
    let dir = three_locations();
    let catalog = DirTemplateCatalog::new(dir.path(), false);
    let err = catalog.resolve(&name("rust")).await.unwrap_err();
    assert_eq!(
        err,
        Error::NotFound(
            "unknown template \"rust\"; available templates: dotfile, nested, plain".into()
        )
    );
    let empty = tempfile::tempdir().unwrap();
    let err = DirTemplateCatalog::new(empty.path(), false)
        .resolve(&name("rust"))
        .await
        .unwrap_err();
    assert_eq!(
        err,
        Error::NotFound("unknown template \"rust\": no templates are available".into())
    );
}

#[tokio::test]
async fn a_missing_directory_is_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = DirTemplateCatalog::new(dir.path().join("nope"), false);
    let err = catalog.list().await.unwrap_err();
    assert_eq!(err.code(), "unavailable", "{err:?}");
    assert!(err.to_string().contains("nope"), "{err}");
    assert_eq!(
        catalog.resolve(&name("go")).await.unwrap_err().code(),
        "unavailable"
    );
}

#[test]
fn traversal_names_are_invalid_input_before_reaching_the_catalog() {
    for bad in ["../x", "/etc", ".", "..", "a/b", "go/../../etc", "", "x\0y"] {
        let err = TemplateName::new(bad).unwrap_err();
        assert_eq!(err.code(), "invalid_input", "{bad:?}");
    }
}

#[tokio::test]
async fn a_symlink_escaping_the_directory_is_refused() {
    let outside = tempfile::tempdir().unwrap();
    write(
        &outside.path().join("evil/devcontainer.json"),
        r#"{"image": "evil"}"#,
    );
    write(
        &outside.path().join("secret.json"),
        r#"{"image": "secret"}"#,
    );
    let dir = three_locations();
    // The template folder itself is a link out.
    std::os::unix::fs::symlink(outside.path().join("evil"), dir.path().join("evil")).unwrap();
    // The template folder is inside, its devcontainer.json links out.
    fs::create_dir_all(dir.path().join("linked-file")).unwrap();
    std::os::unix::fs::symlink(
        outside.path().join("secret.json"),
        dir.path().join("linked-file/devcontainer.json"),
    )
    .unwrap();
    let catalog = DirTemplateCatalog::new(dir.path(), false);
    for template in ["evil", "linked-file"] {
        let err = catalog.resolve(&name(template)).await.unwrap_err();
        assert_eq!(err.code(), "invalid_input", "{template}: {err:?}");
        assert!(
            err.to_string()
                .contains("resolves outside the template directory"),
            "{err}"
        );
    }
    // Links that stay inside are fine.
    std::os::unix::fs::symlink(dir.path().join("plain"), dir.path().join("alias")).unwrap();
    assert_eq!(
        catalog.resolve(&name("alias")).await.unwrap().image_name(),
        Some("plain:1")
    );
}

#[tokio::test]
async fn a_changed_file_is_picked_up_without_restart() {
    let dir = three_locations();
    let catalog = DirTemplateCatalog::new(dir.path(), false);
    let file = dir.path().join("plain/devcontainer.json");
    assert_eq!(
        catalog.resolve(&name("plain")).await.unwrap().image_name(),
        Some("plain:1")
    );
    write(&file, r#"{"image": "plain:2", "forwardPorts": [8080]}"#);
    let changed = catalog.resolve(&name("plain")).await.unwrap();
    assert_eq!(changed.image_name(), Some("plain:2"));
    assert_eq!(changed.forward_ports, vec![8080]);
    // Same size, later modification time.
    write(&file, r#"{"image": "plain:3", "forwardPorts": [8080]}"#);
    let later = std::time::SystemTime::now() + std::time::Duration::from_secs(5);
    fs::File::options()
        .write(true)
        .open(&file)
        .unwrap()
        .set_modified(later)
        .unwrap();
    assert_eq!(
        catalog.resolve(&name("plain")).await.unwrap().image_name(),
        Some("plain:3")
    );
    // Broken, then fixed again.
    write(&file, r#"{"image": "#);
    let err = catalog.resolve(&name("plain")).await.unwrap_err();
    assert_eq!(err.code(), "invalid_input");
    assert!(
        err.to_string()
            .starts_with("plain/devcontainer.json: malformed devcontainer.json"),
        "{err}"
    );
    write(&file, r#"{"image": "plain:4"}"#);
    assert_eq!(
        catalog.resolve(&name("plain")).await.unwrap().image_name(),
        Some("plain:4")
    );
}

#[tokio::test]
async fn template_options_fill_placeholders_and_their_changes_are_picked_up() {
    let dir = one_template(
        "py/.devcontainer/devcontainer.json",
        r#"{"image": "python:${templateOption:imageVariant}"}"#,
    );
    let options = dir.path().join("py/devcontainer-template.json");
    write(
        &options,
        r#"{"id": "py", "options": {"imageVariant": {"type": "string", "default": "3.12"}}}"#,
    );
    let catalog = DirTemplateCatalog::new(dir.path(), false);
    assert_eq!(
        catalog.resolve(&name("py")).await.unwrap().image_name(),
        Some("python:3.12")
    );
    write(
        &options,
        r#"{"id": "py", "options": {"imageVariant": {"type": "string", "default": "3.13-slim"}}}"#,
    );
    assert_eq!(
        catalog.resolve(&name("py")).await.unwrap().image_name(),
        Some("python:3.13-slim")
    );
    write(&options, r#"{"options": []}"#);
    let err = catalog.resolve(&name("py")).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("devcontainer-template.json: options: must be an object"),
        "{err}"
    );
}

#[tokio::test]
async fn unsafe_templates_resolve_only_when_allowed() {
    let dir = one_template(
        "priv/devcontainer.json",
        r#"{"image": "a", "privileged": true}"#,
    );
    let err = DirTemplateCatalog::new(dir.path(), false)
        .resolve(&name("priv"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "invalid_input");
    assert!(err.to_string().contains("privileged: refused"), "{err}");
    let allowed = DirTemplateCatalog::new(dir.path(), true)
        .resolve(&name("priv"))
        .await
        .unwrap();
    assert!(allowed.run_options.privileged);
}

#[tokio::test]
async fn compose_templates_are_invalid_input_saying_compose_is_unsupported() {
    let dir = one_template(
        "compose/devcontainer.json",
        r#"{"dockerComposeFile": "c.yml", "service": "app"}"#,
    );
    let err = DirTemplateCatalog::new(dir.path(), true)
        .resolve(&name("compose"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "invalid_input");
    assert!(
        err.to_string().contains("unsupported: docker compose"),
        "{err}"
    );
}

#[tokio::test]
async fn build_templates_get_an_absolute_context_and_a_checked_dockerfile() {
    let dir = one_template(
        "built/.devcontainer/devcontainer.json",
        r#"{"build": {"dockerfile": "Dockerfile", "context": ".."}}"#,
    );
    let catalog = DirTemplateCatalog::new(dir.path(), false);
    let err = catalog.resolve(&name("built")).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("build.dockerfile: .devcontainer/Dockerfile does not exist"),
        "{err}"
    );
    write(
        &dir.path().join("built/.devcontainer/Dockerfile"),
        "FROM scratch\n",
    );
    let template = catalog.resolve(&name("built")).await.unwrap();
    let ImageSource::Build(build) = template.image else {
        panic!()
    };
    assert_eq!(
        build.context,
        dir.path().join("built").canonicalize().unwrap()
    );
    assert_eq!(build.dockerfile, ".devcontainer/Dockerfile");

    // A context outside the catalog directory is refused unless unsafe is allowed.
    let outside = tempfile::tempdir().unwrap();
    write(&outside.path().join("Dockerfile"), "FROM scratch\n");
    let context = outside.path().to_str().unwrap();
    write(
        &dir.path().join("escape/devcontainer.json"),
        &format!(
            r#"{{"build": {{"dockerfile": "{context}/Dockerfile", "context": "{context}"}}}}"#
        ),
    );
    let err = catalog.resolve(&name("escape")).await.unwrap_err();
    assert!(err.to_string().contains("build.context: refused"), "{err}");
    assert!(
        DirTemplateCatalog::new(dir.path(), true)
            .resolve(&name("escape"))
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn the_catalog_is_shared_across_threads() {
    let dir = three_locations();
    let catalog: Arc<dyn TemplateCatalog> = Arc::new(DirTemplateCatalog::new(dir.path(), false));
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let catalog = Arc::clone(&catalog);
            let template = ["plain", "nested", "dotfile"][i % 3];
            tokio::spawn(async move { catalog.resolve(&name(template)).await.map(|t| t.name) })
        })
        .collect();
    for (i, task) in tasks.into_iter().enumerate() {
        assert_eq!(
            task.await.unwrap().unwrap().as_str(),
            ["plain", "nested", "dotfile"][i % 3]
        );
    }
}

#[test]
fn check_dir_reports_one_line_per_template() {
    let dir = three_locations();
    write(
        &dir.path().join("feat/devcontainer.json"),
        r#"{"image": "a", "features": {"x": {}}}"#,
    );
    write(
        &dir.path().join("broken/devcontainer.json"),
        r#"{"image": }"#,
    );
    write(
        &dir.path().join("built/devcontainer.json"),
        r#"{"build": {"dockerfile": "Dockerfile"}}"#,
    );
    write(&dir.path().join("built/Dockerfile"), "FROM scratch\n");
    write(
        &dir.path().join("compose/devcontainer.json"),
        r#"{"dockerComposeFile": "c.yml"}"#,
    );
    fs::create_dir_all(dir.path().join("no-config")).unwrap();
    write(
        &dir.path().join("priv/devcontainer.json"),
        r#"{"image": "a", "capAdd": ["ALL"]}"#,
    );
    let lines = check_lines(dir.path());
    assert_eq!(lines.len(), 9, "{lines:#?}");
    assert!(
        lines[0]
            .starts_with("error broken: broken/devcontainer.json: malformed devcontainer.json:"),
        "{}",
        lines[0]
    );
    assert_eq!(lines[1], "ok built (build Dockerfile)");
    assert_eq!(
        lines[2],
        "error compose: compose/devcontainer.json: unsupported: docker compose (dockerComposeFile c.yml) is not supported: a monza sandbox is a single container made from an image or a Dockerfile"
    );
    assert_eq!(lines[3], "ok dotfile (image dotfile:1)");
    assert_eq!(lines[4], "warn feat: features are not installed");
    assert_eq!(lines[5], "ok nested (image nested:1)");
    assert_eq!(
        lines[6],
        "error no-config: no devcontainer.json (looked for no-config/devcontainer.json, no-config/.devcontainer/devcontainer.json, no-config/.devcontainer.json)"
    );
    assert_eq!(lines[7], "ok plain (image plain:1)");
    assert!(
        lines[8].starts_with("error priv: priv/devcontainer.json: capAdd: refused:"),
        "{}",
        lines[8]
    );
    assert!(has_errors(&check_dir(dir.path(), false)));

    // Allowing unsafe templates turns the refusal into ok.
    let allowed = check_dir(dir.path(), true);
    assert_eq!(allowed[8].to_string(), "ok priv (image a)");
}

#[test]
fn check_dir_without_errors_and_on_bad_directories() {
    let dir = three_locations();
    let lines = check_dir(dir.path(), false);
    assert!(
        lines
            .iter()
            .all(|line| matches!(line.status, CheckStatus::Ok { .. }))
    );
    assert!(!has_errors(&lines));

    let empty = tempfile::tempdir().unwrap();
    let lines = check_dir(empty.path(), false);
    assert_eq!(lines.len(), 1);
    assert!(
        lines[0]
            .to_string()
            .ends_with(": no template folders found"),
        "{}",
        lines[0]
    );
    assert!(has_errors(&lines));

    let lines = check_dir(&empty.path().join("missing"), false);
    assert!(has_errors(&lines));
    assert!(lines[0].to_string().starts_with("error "), "{}", lines[0]);
}

/// The templates monza ships pass `monza templates check devcontainers`, with no warnings.
#[test]
fn shipped_templates_pass_the_check() {
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../devcontainers");
    let lines = check_lines(&shipped);
    assert_eq!(
        lines,
        [
            "ok base (build Dockerfile)",
            "ok go (image mcr.microsoft.com/devcontainers/go:1-1.22-bookworm)",
            "ok node (image mcr.microsoft.com/devcontainers/javascript-node:1-20-bookworm)",
            "ok python-3.12 (image mcr.microsoft.com/devcontainers/python:1-3.12-bookworm)",
        ]
    );
}

/// The test templates other crates use against a real engine stay valid.
#[test]
fn test_templates_pass_the_check() {
    let lines = check_lines(test_templates_dir());
    assert_eq!(
        lines,
        [
            "ok busybox (image monza-test/busybox:latest)",
            "ok busybox-build (build Dockerfile)",
            "ok busybox-env (image monza-test/busybox:latest)",
            "ok busybox-failing-hook (image monza-test/busybox:latest)",
            "ok busybox-hooks (image monza-test/busybox:latest)",
            "ok busybox-ports (image monza-test/busybox:latest)",
            "ok busybox-user (image monza-test/busybox:latest)",
            "ok debian (image monza-test/debian:bookworm)",
            "ok debian-user (image monza-test/debian:bookworm)",
        ]
    );
}

#[tokio::test]
async fn test_templates_have_what_their_names_promise() {
    let catalog = DirTemplateCatalog::new(test_templates_dir(), false);
    let ports = catalog.resolve(&name("busybox-ports")).await.unwrap();
    assert_eq!(ports.forward_ports, vec![8080]);
    let hooks = catalog.resolve(&name("busybox-hooks")).await.unwrap();
    assert_eq!(
        hook_labels(&hooks),
        [
            "onCreateCommand",
            "postCreateCommand:a",
            "postCreateCommand:b",
            "postStartCommand"
        ]
    );
    let failing = catalog
        .resolve(&name("busybox-failing-hook"))
        .await
        .unwrap();
    assert!(failing.lifecycle_commands[0].command.argv()[2].ends_with("exit 3"));
    let built = catalog.resolve(&name("busybox-build")).await.unwrap();
    let ImageSource::Build(build) = built.image else {
        panic!()
    };
    assert!(build.context.join("marker.txt").is_file());
    assert_eq!(build.args["GREETING"], "built-by-monza");
    let env = catalog.resolve(&name("busybox-env")).await.unwrap();
    assert_eq!(env.container_env["MONZA_TEST_VAR"], "from-container-env");
    assert_eq!(env.workspace_folder, "/work/project");
    assert_eq!(env.run_options.memory_bytes, Some(256 << 20));
    assert!(env.run_options.init);
}
