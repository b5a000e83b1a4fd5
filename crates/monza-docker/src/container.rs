//! The body of `POST /containers/create` for a sandbox: image, labels, environment, ports,
//! keep-alive command, limits and hardening.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use monza_domain::{ContainerSpec, Error, Mount, Result};
use serde_json::{Map, Value, json};

use crate::agent::AgentMounts;
use crate::settings::DockerSettings;

/// Capabilities a sandbox keeps; every other one is dropped (`CapDrop: ["ALL"]`).
///
/// The list is what package managers and ordinary development tools need when run as root
/// in the sandbox, and nothing that reaches beyond the container:
/// - `CHOWN`, `FOWNER`, `FSETID`, `DAC_OVERRIDE`: installing files owned by other users and
///   keeping their modes (dpkg, apk, npm/pip run as root);
/// - `SETUID`, `SETGID`: dropping to another user (apt's `_apt` sandbox, `su`, `runuser`);
/// - `KILL`: signalling processes of other users in the sandbox (also how a timed-out exec
///   is stopped);
/// - `NET_BIND_SERVICE`: dev servers listening on ports below 1024.
///
/// Left out from Docker's default set: `MKNOD`, `NET_RAW` (raw sockets, ARP/ICMP spoofing),
/// `SETFCAP`, `SETPCAP`, `SYS_CHROOT`, `AUDIT_WRITE`. A template adds more only with
/// `capAdd`, which the catalog lets through only when the operator allows unsafe templates.
pub const SANDBOX_CAPABILITIES: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "SETUID",
    "SETGID",
    "KILL",
    "NET_BIND_SERVICE",
];

/// The label every monza container carries with its sandbox id.
pub const LABEL_SANDBOX_ID: &str = "monza.sandbox_id";
/// The label marking a container as monza's (value `true`).
pub const LABEL_MANAGED: &str = "monza.managed";
/// The label naming the template.
pub const LABEL_TEMPLATE: &str = "monza.template";
/// The label naming the tenant.
pub const LABEL_TENANT: &str = "monza.tenant";
/// Label: the user the sandbox's agent runs as (the template's `remoteUser`), so a later
/// monza can adopt the agent of a container it did not create.
pub const LABEL_AGENT_USER: &str = "monza.agent_user";
/// Label: the deployment (store) the container belongs to, when the runtime has one.
pub const LABEL_DEPLOYMENT: &str = "monza.deployment";

/// The keep-alive command run instead of the image's when `overrideCommand` is true (the
/// devcontainers CLI's, in spirit): it idles in `wait`, which a `SIGTERM` interrupts at
/// once, so `docker stop` is immediate.
pub(crate) const KEEP_ALIVE: &str =
    "echo Container started\ntrap 'exit 0' TERM INT\nwhile sleep 1000 & wait $!; do :; done";

/// The container's name: `monza-<sandbox uuid>`.
pub(crate) fn container_name(spec: &ContainerSpec) -> String {
    format!("monza-{}", spec.sandbox_id)
}

/// The create body for `spec` running `image`. `sockets` are the engine socket paths no
/// mount may expose; `agent`, the agent's mounts and environment when it is on.
pub(crate) fn create_body(
    spec: &ContainerSpec,
    image: &str,
    settings: &DockerSettings,
    sockets: &[PathBuf],
    agent: Option<&AgentMounts>,
) -> Result<Value> {
    let template = &spec.template;
    let run = &template.run_options;

    let mut labels: BTreeMap<String, String> = run.labels.clone();
    labels.insert(LABEL_SANDBOX_ID.into(), spec.sandbox_id.to_string());
    labels.insert(LABEL_MANAGED.into(), "true".into());
    labels.insert(LABEL_TEMPLATE.into(), template.name.as_str().into());
    labels.insert(LABEL_TENANT.into(), spec.tenant.as_str().into());
    if let Some(deployment) = &settings.deployment {
        labels.insert(LABEL_DEPLOYMENT.into(), deployment.clone());
    }
    labels.remove(LABEL_AGENT_USER);
    if agent.is_some()
        && let Some(user) = &template.remote_user
    {
        labels.insert(LABEL_AGENT_USER.into(), user.clone());
    }

    let mut env: Vec<String> = template
        .container_env
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    if let Some(agent) = agent {
        env.push(agent.env.clone());
    }

    let mut exposed = Map::new();
    let mut bindings = Map::new();
    for port in &template.forward_ports {
        let key = format!("{port}/tcp");
        exposed.insert(key.clone(), json!({}));
        bindings.insert(
            key,
            json!([{ "HostIp": settings.publish_addr.to_string(), "HostPort": "" }]),
        );
    }

    let memory = run
        .memory_bytes
        .filter(|m| *m > 0)
        .map_or(settings.memory_limit_bytes, |m| {
            m.min(settings.memory_limit_bytes)
        });
    let memory = i64::try_from(memory).unwrap_or(i64::MAX);
    let cpus = run
        .cpus
        .filter(|c| c.is_finite() && *c > 0.0)
        .map_or(settings.cpu_limit, |c| c.min(settings.cpu_limit));
    // Rounded to whole nano-CPUs; the result is far from i64's range for any real limit.
    #[allow(clippy::cast_possible_truncation)]
    let nano_cpus = (cpus * 1e9).round() as i64;

    let mut cap_add: Vec<String> = SANDBOX_CAPABILITIES
        .iter()
        .map(|c| (*c).to_owned())
        .collect();
    for cap in &run.cap_add {
        let cap = cap.trim().to_ascii_uppercase();
        let cap = cap.strip_prefix("CAP_").unwrap_or(&cap).to_owned();
        if !cap.is_empty() && !cap_add.contains(&cap) {
            cap_add.push(cap);
        }
    }
    let mut security_opt = vec!["no-new-privileges".to_owned()];
    security_opt.extend(run.security_opt.iter().cloned());

    let mut mounts = Vec::new();
    for mount in &template.mounts {
        refuse_socket_mount(mount, sockets, &settings.agent_dir)?;
        let mut m = json!({
            "Type": mount.kind,
            "Target": mount.target,
            "ReadOnly": mount.read_only,
        });
        if let (Some(source), Some(obj)) = (&mount.source, m.as_object_mut()) {
            obj.insert("Source".into(), json!(source));
        }
        mounts.push(m);
    }
    if let Some(agent) = agent {
        mounts.extend(agent.mounts.iter().cloned());
    }

    let mut host_config = json!({
        "Memory": memory,
        "MemorySwap": memory,
        "NanoCpus": nano_cpus,
        "PidsLimit": settings.pids_limit,
        "Privileged": run.privileged,
        "SecurityOpt": security_opt,
        "CapDrop": ["ALL"],
        "CapAdd": cap_add,
        "PortBindings": bindings,
        "Mounts": mounts,
        "RestartPolicy": { "Name": "no" },
    });
    if let Some(obj) = host_config.as_object_mut() {
        if run.init {
            obj.insert("Init".into(), json!(true));
        }
        if let Some(shm) = run.shm_size_bytes {
            obj.insert(
                "ShmSize".into(),
                json!(i64::try_from(shm).unwrap_or(i64::MAX)),
            );
        }
    }

    let mut body = json!({
        "Image": image,
        "Labels": labels,
        "Env": env,
        "ExposedPorts": exposed,
        "WorkingDir": template.workspace_folder,
        "Tty": false,
        "OpenStdin": false,
        "AttachStdin": false,
        "AttachStdout": false,
        "AttachStderr": false,
        "HostConfig": host_config,
    });
    if let Some(obj) = body.as_object_mut() {
        if let Some(user) = &template.container_user {
            obj.insert("User".into(), json!(user));
        }
        if let Some(hostname) = &run.hostname {
            obj.insert("Hostname".into(), json!(hostname));
        }
        if template.override_command {
            obj.insert("Entrypoint".into(), json!(["/bin/sh"]));
            obj.insert("Cmd".into(), json!(["-c", KEEP_ALIVE]));
        }
    }
    Ok(body)
}

/// Refuses a mount that would hand the sandbox the engine's socket: the socket itself or any
/// directory containing it (`/`, `/var/run`, ...), whatever the operator allowed; likewise
/// the agent directory, any directory containing it or anything in it (every sandbox's agent
/// socket and the binary monza binds into sandboxes).
fn refuse_socket_mount(mount: &Mount, sockets: &[PathBuf], agent_dir: &Path) -> Result<()> {
    let Some(source) = mount.source.as_deref() else {
        return Ok(());
    };
    if !source.starts_with('/') {
        // A named volume, not a host path.
        return Ok(());
    }
    let lexical = normalize(Path::new(source));
    let resolved = std::fs::canonicalize(source).ok();
    for socket in sockets {
        let socket_resolved = std::fs::canonicalize(socket).ok();
        let exposes = |candidate: &Path| {
            socket.starts_with(candidate)
                || socket_resolved
                    .as_deref()
                    .is_some_and(|s| s.starts_with(candidate))
        };
        if exposes(&lexical) || resolved.as_deref().is_some_and(exposes) {
            return Err(Error::invalid(format!(
                "mount of {source} is refused: it would expose the Docker socket {}",
                socket.display()
            )));
        }
    }
    let agent_dirs = [
        Some(normalize(agent_dir)),
        std::fs::canonicalize(agent_dir).ok(),
    ];
    let touches_agent = |candidate: &Path| {
        agent_dirs
            .iter()
            .flatten()
            .any(|dir| dir.starts_with(candidate) || candidate.starts_with(dir))
    };
    if touches_agent(&lexical) || resolved.as_deref().is_some_and(touches_agent) {
        return Err(Error::invalid(format!(
            "mount of {source} is refused: it would expose monza's agent directory {}",
            agent_dir.display()
        )));
    }
    if lexical.file_name().is_some_and(|n| n == "docker.sock") {
        return Err(Error::invalid(format!(
            "mount of {source} is refused: it looks like a Docker socket"
        )));
    }
    Ok(())
}

/// `path` without `.` components, repeated or trailing slashes; `..` pops a component.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for component in path.components() {
        match component {
            Component::Normal(part) => out.push(part),
            Component::ParentDir => {
                out.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use monza_domain::Template;
    use monza_domain::testing::fixtures::{container_spec, template};

    fn spec() -> ContainerSpec {
        container_spec(Template {
            container_env: BTreeMap::from([("A".into(), "1".into())]),
            ..template("base", "busybox")
        })
    }

    fn sockets() -> Vec<PathBuf> {
        vec![
            PathBuf::from("/var/run/docker.sock"),
            PathBuf::from("/run/docker.sock"),
        ]
    }

    #[test]
    fn template_limits_lower_but_never_raise_the_server_limits() {
        let settings = DockerSettings::default();
        let mut s = spec();
        s.template.run_options.cpus = Some(8.0);
        s.template.run_options.memory_bytes = Some(8 << 30);
        let body = create_body(&s, "img", &settings, &sockets(), None).unwrap();
        assert_eq!(body["HostConfig"]["Memory"], json!(512 * 1024 * 1024));
        assert_eq!(body["HostConfig"]["NanoCpus"], json!(1_000_000_000));
        s.template.run_options.cpus = Some(0.5);
        s.template.run_options.memory_bytes = Some(128 << 20);
        let body = create_body(&s, "img", &settings, &sockets(), None).unwrap();
        assert_eq!(body["HostConfig"]["Memory"], json!(128 << 20));
        assert_eq!(body["HostConfig"]["MemorySwap"], json!(128 << 20));
        assert_eq!(body["HostConfig"]["NanoCpus"], json!(500_000_000));
    }

    #[test]
    fn monza_labels_cannot_be_overridden_by_template_labels() {
        let mut s = spec();
        s.template.run_options.labels = BTreeMap::from([
            (LABEL_MANAGED.to_owned(), "false".to_owned()),
            ("team".to_owned(), "x".to_owned()),
        ]);
        let body = create_body(&s, "img", &DockerSettings::default(), &sockets(), None).unwrap();
        assert_eq!(body["Labels"][LABEL_MANAGED], json!("true"));
        assert_eq!(body["Labels"]["team"], json!("x"));
        assert_eq!(
            body["Labels"][LABEL_SANDBOX_ID],
            json!(s.sandbox_id.to_string())
        );
    }

    #[test]
    fn the_deployment_label_scopes_containers_and_a_template_cannot_forge_it() {
        let mut s = spec();
        s.template.run_options.labels =
            BTreeMap::from([(LABEL_DEPLOYMENT.to_owned(), "other".to_owned())]);
        let settings = DockerSettings {
            deployment: Some("postgres://db:5432/monza".into()),
            ..DockerSettings::default()
        };
        let body = create_body(&s, "img", &settings, &sockets(), None).unwrap();
        assert_eq!(
            body["Labels"][LABEL_DEPLOYMENT],
            json!("postgres://db:5432/monza")
        );
    }

    #[test]
    fn socket_mounts_are_refused_even_through_parents_and_dots() {
        for source in [
            "/var/run/docker.sock",
            "/var/run/",
            "/var//run/./docker.sock",
            "/",
            "/srv/../var/run",
            "/home/me/docker.sock",
            // The default agent directory, a parent of it, something inside it.
            "/run/monza/agent",
            "/run/monza",
            "/run",
            "/run/monza/agent/bin/monza-agent",
            "/run/monza/agent/0195f7c0-0000-7000-8000-000000000000/",
        ] {
            let mut s = spec();
            s.template.mounts = vec![Mount {
                kind: "bind".into(),
                source: Some(source.into()),
                target: "/mnt".into(),
                read_only: true,
            }];
            let result = create_body(&s, "img", &DockerSettings::default(), &sockets(), None);
            assert!(
                matches!(result, Err(Error::InvalidInput(ref m)) if m.contains("refused")),
                "{source}: {result:?}"
            );
        }
        let mut s = spec();
        s.template.mounts = vec![
            Mount {
                kind: "volume".into(),
                source: Some("cache".into()),
                target: "/c".into(),
                read_only: false,
            },
            Mount {
                kind: "bind".into(),
                source: Some("/srv/data".into()),
                target: "/d".into(),
                read_only: true,
            },
        ];
        let body = create_body(&s, "img", &DockerSettings::default(), &sockets(), None).unwrap();
        assert_eq!(
            body["HostConfig"]["Mounts"][1]["Source"],
            json!("/srv/data")
        );
        assert_eq!(body["HostConfig"]["Mounts"][1]["ReadOnly"], json!(true));
    }

    #[test]
    fn the_agent_gets_read_only_mounts_its_socket_and_a_label_no_template_can_forge() {
        let mut s = spec();
        s.template.remote_user = Some("dev".into());
        s.template.run_options.labels =
            BTreeMap::from([(LABEL_AGENT_USER.to_owned(), "root".to_owned())]);
        let agent = AgentMounts::new(Path::new("/run/monza/agent/x"), Path::new("/bin/agent"));
        let body = create_body(
            &s,
            "img",
            &DockerSettings::default(),
            &sockets(),
            Some(&agent),
        )
        .unwrap();
        assert_eq!(body["Labels"][LABEL_AGENT_USER], json!("dev"));
        assert_eq!(
            body["HostConfig"]["Mounts"],
            json!([
                {"Type": "bind", "Source": "/run/monza/agent/x", "Target": "/.monza", "ReadOnly": true},
                {"Type": "bind", "Source": "/bin/agent", "Target": "/.monza-agent", "ReadOnly": true},
            ])
        );
        assert!(
            body["Env"]
                .as_array()
                .unwrap()
                .contains(&json!("MONZA_AGENT_SOCKET=/.monza/agent.sock"))
        );

        // Without the agent: no mounts, no socket, and still no forged label.
        let body = create_body(&s, "img", &DockerSettings::default(), &sockets(), None).unwrap();
        assert!(body["Labels"].get(LABEL_AGENT_USER).is_none());
        assert_eq!(body["HostConfig"]["Mounts"], json!([]));
        assert!(!body["Env"].to_string().contains("MONZA_AGENT"));
    }

    #[test]
    fn keep_alive_only_when_overriding_the_command() {
        let mut s = spec();
        let body = create_body(&s, "img", &DockerSettings::default(), &sockets(), None).unwrap();
        assert_eq!(body["Entrypoint"], json!(["/bin/sh"]));
        s.template.override_command = false;
        let body = create_body(&s, "img", &DockerSettings::default(), &sockets(), None).unwrap();
        assert!(body.get("Entrypoint").is_none() && body.get("Cmd").is_none());
    }
}
