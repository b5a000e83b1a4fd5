//! devcontainer.json fields, as a template author writes them, to the domain's Template.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns: a panic is the failure report

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use monza_devcontainer::{DevcontainerConfig, ParseError};
use monza_domain::{
    BuildSpec, Command, ImageSource, LifecycleCommand, Mount, Template, TemplateName,
};
use serde_json::json;

mod support;
use support::hook_labels;

const DIR: &str = "/srv/templates/t";

fn template_with(text: &str, allow_unsafe: bool) -> Result<Template, ParseError> {
    DevcontainerConfig::parse(text, &BTreeMap::new())?.to_template(
        TemplateName::new("t").unwrap(),
        Path::new(DIR),
        allow_unsafe,
    )
}

fn template(text: &str) -> Template {
    template_with(text, false).unwrap_or_else(|err| panic!("{err}\n{text}"))
}

fn error(text: &str) -> String {
    template_with(text, false).unwrap_err().to_string()
}

#[test]
fn a_commented_document_with_trailing_commas() {
    let t = template(
        r#"
        // A template.
        {
            /* the image */ "image": "alpine:3", // trailing comment
            "forwardPorts": [3000, /* inline */ 4000,],
            "containerEnv": {"URL": "http://x//y", "GLOB": "/*.rs",},
        }"#,
    );
    assert_eq!(t.image, ImageSource::Image("alpine:3".into()));
    assert_eq!(t.forward_ports, vec![3000, 4000]);
    assert_eq!(t.container_env["URL"], "http://x//y");
    assert_eq!(t.container_env["GLOB"], "/*.rs");
    assert_eq!(
        t.config,
        json!({"image": "alpine:3", "forwardPorts": [3000, 4000], "containerEnv": {"URL": "http://x//y", "GLOB": "/*.rs"}})
    );
}

#[test]
fn defaults_of_a_minimal_template() {
    let t = template(r#"{"image": "alpine"}"#);
    assert_eq!(t.name.as_str(), "t");
    assert_eq!(t.workspace_folder, "/workspace");
    assert!(t.override_command);
    assert!(t.forward_ports.is_empty());
    assert!(t.lifecycle_commands.is_empty());
    assert!(t.mounts.is_empty());
    assert_eq!(t.run_options, Default::default());
    assert!(t.container_user.is_none() && t.remote_user.is_none());
    assert!(t.warnings.is_empty());
}

#[test]
fn users_env_workspace_and_override_command() {
    let t = template(
        r#"{
            "name": "n", "image": "alpine",
            "containerUser": "root", "remoteUser": "dev",
            "containerEnv": {"A": "1", "NUM": 2, "B": true},
            "remoteEnv": {"R": "x", "UNSET": null},
            "workspaceFolder": "/home/dev/project",
            "overrideCommand": false
        }"#,
    );
    assert_eq!(t.container_user.as_deref(), Some("root"));
    assert_eq!(t.remote_user.as_deref(), Some("dev"));
    assert_eq!(
        t.container_env,
        BTreeMap::from([
            ("A".into(), "1".into()),
            ("B".into(), "true".into()),
            ("NUM".into(), "2".into())
        ])
    );
    assert_eq!(t.remote_env, BTreeMap::from([("R".into(), "x".into())]));
    assert_eq!(t.workspace_folder, "/home/dev/project");
    assert!(!t.override_command);
}

#[test]
fn wrong_types_and_values_name_the_field() {
    assert_eq!(
        error(r#"{"image": 3}"#),
        "image: must be a string, not a number"
    );
    assert_eq!(
        error(r#"{"image": "a", "overrideCommand": "yes"}"#),
        "overrideCommand: must be true or false, not a string"
    );
    assert_eq!(
        error(r#"{"image": "a", "containerEnv": {"A=B": "x"}}"#),
        "containerEnv.A=B: is not a valid environment variable name"
    );
    assert_eq!(
        error(r#"{"image": "a", "workspaceFolder": "src"}"#),
        "workspaceFolder: \"src\" is not an absolute path"
    );
    assert_eq!(
        error(r#"{"image": "a", "forwardPorts": [22, 70000]}"#),
        "forwardPorts[1]: port 70000 is not a whole number in 1..=65535"
    );
    assert_eq!(error(r#"{"image": " "}"#), "image: must not be empty");
    assert_eq!(
        error(r#"{"name": "x"}"#),
        "image: a template needs an image or a build (build.dockerfile)"
    );
    assert_eq!(
        error("[1]"),
        "malformed devcontainer.json: the document is an array, not a JSON object"
    );
    assert!(error(r#"{"image": "a""#).starts_with("malformed devcontainer.json:"));
}

#[test]
fn forward_ports_and_app_port_merge_without_duplicates() {
    let t = template(
        r#"{"image": "a", "forwardPorts": [3000, "db:5432", 3000], "appPort": ["8080:80", 5432, 9000]}"#,
    );
    assert_eq!(t.forward_ports, vec![3000, 5432, 80, 9000]);
    assert_eq!(
        template(r#"{"image": "a", "appPort": 8000}"#).forward_ports,
        vec![8000]
    );
    assert_eq!(
        template(r#"{"image": "a", "appPort": "127.0.0.1:1:7000"}"#).forward_ports,
        vec![7000]
    );
}

#[test]
fn lifecycle_commands_in_hook_order_whatever_the_document_order() {
    let t = template(
        r#"{
            "image": "a",
            "postStartCommand": ["echo", "start"],
            "postCreateCommand": {"z": "echo z", "a": ["echo", "a"]},
            "updateContentCommand": "echo update",
            "onCreateCommand": "echo create",
            "postAttachCommand": "echo attach"
        }"#,
    );
    assert_eq!(
        hook_labels(&t),
        [
            "onCreateCommand",
            "updateContentCommand",
            "postCreateCommand:a",
            "postCreateCommand:z",
            "postStartCommand"
        ]
    );
    assert_eq!(
        t.lifecycle_commands[0],
        LifecycleCommand {
            label: "onCreateCommand".into(),
            command: Command::Shell("echo create".into())
        }
    );
    assert_eq!(
        t.lifecycle_commands[2].command,
        Command::Argv(vec!["echo".into(), "a".into()])
    );
    assert_eq!(
        t.warnings,
        vec!["postAttachCommand is not run (nothing attaches)".to_owned()]
    );
}

#[test]
fn host_requirements_become_limits() {
    let t = template(r#"{"image": "a", "hostRequirements": {"cpus": 2, "memory": "4gb"}}"#);
    assert_eq!(t.run_options.cpus, Some(2.0));
    assert_eq!(t.run_options.memory_bytes, Some(4 * 1024 * 1024 * 1024));
    let t = template(
        r#"{"image": "a", "hostRequirements": {"memory": "512mb", "storage": "32gb", "gpu": true}}"#,
    );
    assert_eq!(t.run_options.memory_bytes, Some(512 * 1024 * 1024));
    assert_eq!(
        t.warnings,
        vec![
            "hostRequirements.storage is not applied",
            "hostRequirements.gpu is not applied"
        ]
    );
    assert_eq!(
        error(r#"{"image": "a", "hostRequirements": {"memory": "lots"}}"#),
        "hostRequirements.memory: \"lots\" is not a size such as \"512mb\", \"4gb\" or a number of bytes"
    );
    assert!(
        error(r#"{"image": "a", "hostRequirements": {"cpus": 0}}"#)
            .starts_with("hostRequirements.cpus:")
    );
}

#[test]
fn safe_run_args_become_run_options() {
    let t = template(
        r#"{"image": "a", "init": false, "runArgs": [
            "--init", "--hostname", "box", "--label=team=core", "-l", "flag",
            "--shm-size", "256m", "--cpus=1.5", "-m", "1g", "-e", "A=b=c", "--env=EMPTY="
        ]}"#,
    );
    let options = &t.run_options;
    assert!(options.init);
    assert_eq!(options.hostname.as_deref(), Some("box"));
    assert_eq!(
        options.labels,
        BTreeMap::from([
            ("team".into(), "core".into()),
            ("flag".into(), String::new())
        ])
    );
    assert_eq!(options.shm_size_bytes, Some(256 << 20));
    assert_eq!(options.cpus, Some(1.5));
    assert_eq!(options.memory_bytes, Some(1 << 30));
    assert_eq!(t.container_env["A"], "b=c");
    assert_eq!(t.container_env["EMPTY"], "");
    assert!(!options.privileged && options.cap_add.is_empty());
}

#[test]
fn run_args_override_host_requirements() {
    let t =
        template(r#"{"image": "a", "hostRequirements": {"cpus": 4}, "runArgs": ["--cpus", "1"]}"#);
    assert_eq!(t.run_options.cpus, Some(1.0));
}

#[test]
fn top_level_init() {
    assert!(template(r#"{"image": "a", "init": true}"#).run_options.init);
}

#[test]
fn unknown_run_args_are_refused_naming_the_flag_even_when_unsafe_is_allowed() {
    for (args, flag) in [
        (r#"["--network", "host"]"#, "--network"),
        (r#"["--network=host"]"#, "--network"),
        (r#"["--pid=host"]"#, "--pid"),
        (r#"["--device", "/dev/kvm"]"#, "--device"),
        (r#"["--init", "--platform", "linux/amd64"]"#, "--platform"),
    ] {
        for allow_unsafe in [false, true] {
            let text = format!(r#"{{"image": "a", "runArgs": {args}}}"#);
            let err = template_with(&text, allow_unsafe).unwrap_err();
            assert!(
                matches!(&err, ParseError::Refused { field, .. } if field == &format!("runArgs {flag}")),
                "{err:?}"
            );
            assert!(
                err.to_string()
                    .contains(&format!("flag {flag} is not supported")),
                "{err}"
            );
        }
    }
}

#[test]
fn malformed_run_args_name_the_item() {
    assert_eq!(
        error(r#"{"image": "a", "runArgs": ["--hostname"]}"#),
        "runArgs[0]: --hostname needs a value"
    );
    assert_eq!(
        error(r#"{"image": "a", "runArgs": ["box"]}"#),
        "runArgs[0]: \"box\" is not a flag (a value without its flag?)"
    );
    assert_eq!(
        error(r#"{"image": "a", "runArgs": ["--init", "-e", "HOME"]}"#),
        "runArgs[1]: --env \"HOME\": expected NAME=VALUE"
    );
    assert!(
        error(r#"{"image": "a", "runArgs": ["--label", "monza.managed=false"]}"#)
            .starts_with("runArgs[0]: --label")
    );
    assert!(
        error(r#"{"image": "a", "runArgs": ["--cpus", "-1"]}"#).starts_with("runArgs[0]: --cpus")
    );
    assert!(
        error(r#"{"image": "a", "runArgs": "--init"}"#).starts_with("runArgs: must be an array")
    );
}

#[test]
fn unsafe_options_are_refused_by_default_with_the_reason() {
    for (text, field) in [
        (r#"{"image": "a", "privileged": true}"#, "privileged"),
        (r#"{"image": "a", "capAdd": ["SYS_PTRACE"]}"#, "capAdd"),
        (
            r#"{"image": "a", "securityOpt": ["seccomp=unconfined"]}"#,
            "securityOpt",
        ),
        (
            r#"{"image": "a", "mounts": ["type=volume,source=v,target=/v"]}"#,
            "mounts",
        ),
        (
            r#"{"image": "a", "workspaceMount": "type=bind,source=/,target=/workspace"}"#,
            "workspaceMount",
        ),
        (
            r#"{"image": "a", "runArgs": ["--privileged"]}"#,
            "runArgs --privileged",
        ),
        (
            r#"{"image": "a", "runArgs": ["--cap-add", "NET_ADMIN"]}"#,
            "runArgs --cap-add",
        ),
        (
            r#"{"image": "a", "runArgs": ["--security-opt=apparmor=unconfined"]}"#,
            "runArgs --security-opt",
        ),
        (
            r#"{"image": "a", "runArgs": ["-v", "/:/host"]}"#,
            "runArgs --volume",
        ),
        (
            r#"{"image": "a", "runArgs": ["--mount", "type=bind,source=/,target=/host"]}"#,
            "runArgs --mount",
        ),
    ] {
        let err = template_with(text, false).unwrap_err();
        let ParseError::Refused {
            field: refused,
            reason,
        } = &err
        else {
            panic!("{text}: {err:?}");
        };
        assert_eq!(refused, field, "{text}");
        assert!(
            reason.contains("MONZA_ALLOW_UNSAFE_TEMPLATES=true"),
            "{reason}"
        );
        assert!(reason.contains("isolation"), "{reason}");
    }
    // Explicitly safe values are not refusals.
    assert!(
        !template(r#"{"image": "a", "privileged": false, "capAdd": [], "mounts": []}"#)
            .run_options
            .privileged
    );
}

#[test]
fn unsafe_options_are_applied_when_allowed() {
    let t = template_with(
        r#"{
            "image": "a",
            "privileged": true,
            "capAdd": ["SYS_PTRACE"],
            "securityOpt": ["seccomp=unconfined"],
            "workspaceMount": "source=/srv/code,target=/workspace,type=bind,consistency=cached",
            "mounts": [
                "source=cache,target=/cache,type=volume",
                {"type": "tmpfs", "target": "/scratch"}
            ],
            "runArgs": ["--cap-add=NET_ADMIN", "-v", "/data:/data:ro", "--mount", "type=volume,target=/anon"]
        }"#,
        true,
    )
    .unwrap();
    assert!(t.run_options.privileged);
    assert_eq!(t.run_options.cap_add, vec!["SYS_PTRACE", "NET_ADMIN"]);
    assert_eq!(t.run_options.security_opt, vec!["seccomp=unconfined"]);
    let mount = |kind: &str, source: Option<&str>, target: &str, read_only| Mount {
        kind: kind.into(),
        source: source.map(Into::into),
        target: target.into(),
        read_only,
    };
    assert_eq!(
        t.mounts,
        vec![
            mount("bind", Some("/srv/code"), "/workspace", false),
            mount("volume", Some("cache"), "/cache", false),
            mount("tmpfs", None, "/scratch", false),
            mount("bind", Some("/data"), "/data", true),
            mount("volume", None, "/anon", false),
        ]
    );
}

#[test]
fn build_paths_resolve_against_the_config_folder() {
    let t =
        template(r#"{"build": {"dockerfile": "Dockerfile", "args": {"V": "1"}, "target": "dev"}}"#);
    assert_eq!(
        t.image,
        ImageSource::Build(BuildSpec {
            context: PathBuf::from(DIR),
            dockerfile: "Dockerfile".into(),
            args: BTreeMap::from([("V".into(), "1".into())]),
            target: Some("dev".into()),
        })
    );
    // .devcontainer/ layout: context "..", Dockerfile next to the config.
    let t = template(r#"{"build": {"dockerfile": "./docker/../Dockerfile.dev", "context": ".."}}"#);
    let ImageSource::Build(build) = t.image else {
        panic!()
    };
    assert_eq!(build.context, PathBuf::from("/srv/templates"));
    assert_eq!(build.dockerfile, "t/Dockerfile.dev");
    // Legacy top-level dockerFile and context.
    let t = template(r#"{"dockerFile": "Dockerfile", "context": "."}"#);
    let ImageSource::Build(build) = t.image else {
        panic!()
    };
    assert_eq!(
        (build.context, build.dockerfile.as_str()),
        (PathBuf::from(DIR), "Dockerfile")
    );
    // A build wins over an image, with a warning.
    let t = template(r#"{"image": "a", "build": {"dockerfile": "Dockerfile"}}"#);
    assert!(matches!(t.image, ImageSource::Build(_)));
    assert_eq!(t.warnings, vec!["image is ignored: build takes precedence"]);
}

#[test]
fn build_errors_name_the_field() {
    assert_eq!(
        error(r#"{"build": {"context": "."}}"#),
        "build.dockerfile: is required"
    );
    assert_eq!(
        error(r#"{"build": {"dockerfile": "../Dockerfile"}}"#),
        "build.dockerfile: \"../Dockerfile\" is outside the build context \".\""
    );
    assert_eq!(
        error(r#"{"build": {"dockerfile": ""}}"#),
        "build.dockerfile: must not be empty"
    );
    assert_eq!(
        error(r#"{"build": "Dockerfile"}"#),
        "build: must be an object, not a string"
    );
}

#[test]
fn compose_is_unsupported_not_malformed() {
    let err = template_with(
        r#"{"dockerComposeFile": ["a.yml", "b.yml"], "service": "app", "image": "x"}"#,
        true,
    )
    .unwrap_err();
    assert_eq!(
        err,
        ParseError::Unsupported {
            reason: "docker compose (dockerComposeFile a.yml, b.yml) is not supported: a monza \
                     sandbox is a single container made from an image or a Dockerfile"
                .into()
        }
    );
    assert!(err.is_unsupported());
    assert!(err.to_string().starts_with("unsupported: docker compose"));
}

#[test]
fn features_and_customizations_are_kept_and_reported_as_not_applied() {
    let t = template(
        r#"{"image": "a",
            "features": {"ghcr.io/devcontainers/features/git:1": {}},
            "customizations": {"vscode": {"extensions": ["x"]}}}"#,
    );
    assert_eq!(
        t.warnings,
        vec![
            "features are not installed",
            "customizations are not applied"
        ]
    );
    assert_eq!(
        t.config["features"],
        json!({"ghcr.io/devcontainers/features/git:1": {}})
    );
    // Empty ones ask for nothing.
    assert!(
        template(r#"{"image": "a", "features": {}, "customizations": {}}"#)
            .warnings
            .is_empty()
    );
}

#[test]
fn template_options_and_workspace_variables_are_substituted_others_kept() {
    let options = BTreeMap::from([("variant".to_owned(), "3.12-bookworm".to_owned())]);
    let text = r#"{
        "image": "python:${templateOption:variant}",
        "workspaceFolder": "/work/app",
        "containerEnv": {"HOME_HINT": "${localEnv:HOME}", "WS": "${containerWorkspaceFolder}", "BASE": "${containerWorkspaceFolderBasename}", "MISSING": "${templateOption:missing}"}
    }"#;
    let t = DevcontainerConfig::parse(text, &options)
        .unwrap()
        .to_template(TemplateName::new("t").unwrap(), Path::new(DIR), false)
        .unwrap();
    assert_eq!(t.image, ImageSource::Image("python:3.12-bookworm".into()));
    assert_eq!(t.container_env["WS"], "/work/app");
    assert_eq!(t.container_env["BASE"], "app");
    assert_eq!(t.container_env["HOME_HINT"], "${localEnv:HOME}");
    assert_eq!(t.container_env["MISSING"], "${templateOption:missing}");
    assert_eq!(
        t.warnings,
        vec![
            "variables left as text: ${localEnv:HOME} in containerEnv.HOME_HINT, ${templateOption:missing} in containerEnv.MISSING"
        ]
    );
    // The config is the document as written.
    assert_eq!(t.config["image"], "python:${templateOption:variant}");
}
