//! Every devcontainer.json the reference devcontainers CLI accepts (its test configurations,
//! copied into tests/fixtures/devcontainer-cli-configs) parses; the compose ones come out
//! as unsupported, and the rest either become templates or are refused for a named reason.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns: a panic is the failure report

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use monza_devcontainer::{DevcontainerConfig, ParseError};
use monza_domain::TemplateName;

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/devcontainer-cli-configs")
}

fn devcontainer_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            devcontainer_files(&path, out);
        } else if matches!(
            path.file_name().and_then(|name| name.to_str()),
            Some("devcontainer.json" | ".devcontainer.json")
        ) {
            out.push(path);
        }
    }
}

/// The fixture's folder name: `image` for `image/.devcontainer.json`.
fn fixture_name(path: &Path) -> String {
    let relative = path.strip_prefix(fixtures_dir()).unwrap();
    relative
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy()
        .into_owned()
}

fn all_fixtures() -> Vec<(String, PathBuf, DevcontainerConfig)> {
    let mut files = Vec::new();
    devcontainer_files(&fixtures_dir(), &mut files);
    files.sort();
    files
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).unwrap();
            let config = DevcontainerConfig::parse(&text, &BTreeMap::new())
                .unwrap_or_else(|err| panic!("{} does not parse: {err}", path.display()));
            (fixture_name(&path), path, config)
        })
        .collect()
}

#[test]
fn every_fixture_parses_as_a_document() {
    let fixtures = all_fixtures();
    // The folder holds 40 configurations; fewer means the walk is broken, not that all parse.
    assert!(
        fixtures.len() >= 40,
        "found only {} fixtures in {}",
        fixtures.len(),
        fixtures_dir().display()
    );
}

#[test]
fn compose_fixtures_are_unsupported_with_that_reason_and_only_they() {
    let mut compose = 0;
    for (name, path, config) in all_fixtures() {
        let dir = path.parent().unwrap();
        let result = config.to_template(TemplateName::new("fixture").unwrap(), dir, true);
        if config.uses_compose() {
            compose += 1;
            match result {
                Err(ParseError::Unsupported { reason }) => {
                    assert!(reason.contains("docker compose"), "{name}: {reason}");
                }
                other => panic!("{name}: compose config gave {other:?}"),
            }
        } else {
            assert!(
                !matches!(result, Err(ParseError::Unsupported { .. })),
                "{name}: {result:?}"
            );
        }
    }
    assert_eq!(compose, 13, "compose fixtures");
}

/// With unsafe options allowed, every non-compose fixture becomes a template except those
/// that ask for something monza cannot do at all; those fail naming the reason.
#[test]
fn non_compose_fixtures_become_templates_or_fail_for_a_named_reason() {
    let mut templates = 0;
    for (name, path, config) in all_fixtures() {
        if config.uses_compose() {
            continue;
        }
        let dir = path.parent().unwrap();
        let result = config.to_template(TemplateName::new("fixture").unwrap(), dir, true);
        match (name.as_str(), result) {
            // `set-up` configures an existing container: no image, no build.
            ("set-up-with-config", Err(err)) => {
                assert_eq!(
                    err.to_string(),
                    "image: a template needs an image or a build (build.dockerfile)"
                );
            }
            // `docker run --platform` has no counterpart in a sandbox.
            (platform, Err(err)) if platform.ends_with("-platform-option") => {
                assert!(
                    err.to_string().starts_with(
                        "runArgs --platform: refused: flag --platform is not supported"
                    ),
                    "{name}: {err}"
                );
            }
            (_, Ok(_)) => templates += 1,
            (_, Err(err)) => panic!("{name} ({}): {err}", path.display()),
        }
    }
    assert!(
        templates >= 20,
        "only {templates} fixtures became templates"
    );
}

#[test]
fn under_the_safe_default_unsafe_fixtures_are_refused() {
    let (_, path, config) = all_fixtures()
        .into_iter()
        .find(|(name, _, _)| name == "image-with-mounts")
        .unwrap();
    let err = config
        .to_template(
            TemplateName::new("m").unwrap(),
            path.parent().unwrap(),
            false,
        )
        .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("mounts: refused: mounts would weaken"),
        "{err}"
    );
}

#[test]
fn fixture_fields_come_through() {
    let fixtures = all_fixtures();
    let find = |wanted: &str| {
        let (_, path, config) = fixtures
            .iter()
            .find(|(name, path, _)| name == wanted && !path.to_string_lossy().contains("subfolder"))
            .unwrap();
        config
            .to_template(
                TemplateName::new("t").unwrap(),
                path.parent().unwrap(),
                true,
            )
            .unwrap()
    };

    let poetry = find("poetry-example");
    assert_eq!(poetry.lifecycle_commands.len(), 1);
    assert_eq!(
        poetry.lifecycle_commands[0].label,
        "postStartCommand:poetry setup"
    );
    assert_eq!(poetry.lifecycle_commands[0].command.argv()[0], "/bin/bash");
    assert_eq!(
        poetry.warnings,
        vec!["features are not installed".to_owned()]
    );

    let target = find("dockerfile-with-target");
    let monza_domain::ImageSource::Build(build) = &target.image else {
        panic!("not a build: {:?}", target.image);
    };
    assert_eq!(build.target.as_deref(), Some("desired-image"));
    assert_eq!(build.dockerfile, "Dockerfile");
    assert_eq!(build.args["VARIANT"], "18-bookworm");
    assert!(
        target
            .warnings
            .contains(&"build.options are not applied".to_owned())
    );
    assert!(
        target
            .warnings
            .contains(&"postAttachCommand is not run (nothing attaches)".to_owned())
    );

    let image = find("image");
    assert_eq!(image.container_env["TEST_CE"], "TEST_VALUE3");
    assert_eq!(image.remote_env["LOCAL_PATH"], "${localEnv:PATH}");
    assert!(
        image
            .warnings
            .iter()
            .any(|warning| warning.contains("${localEnv:PATH} in remoteEnv.LOCAL_PATH")),
        "{:?}",
        image.warnings
    );

    let initialize = find("image-with-parallel-initialize-command");
    assert!(initialize.lifecycle_commands.is_empty());
    assert_eq!(
        initialize.warnings,
        vec!["initializeCommand is not run (it would run on the host)".to_owned()]
    );
}
