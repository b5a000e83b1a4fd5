//! The architecture invariant as a test: which workspace crate may depend on which.
//!
//! - `monza-domain` depends on no other monza crate and on no adapter technology
//!   (actix-web, diesel, docker-api, the tokio runtime) outside its tests.
//! - Each adapter (`monza-devcontainer`, `monza-store`, `monza-docker`,
//!   `monza-http`) depends on `monza-domain` and on no other monza crate, in any kind of
//!   dependency.
//! - Each adapter knows one technology: it names none of the others' (`ADAPTER_FORBIDDEN`,
//!   e.g. `monza-http` knows no store and no Docker, the stores no HTTP and no Docker), in
//!   any kind of dependency.
//! - The agent that runs inside each sandbox (`monza-agent`) and its wire protocol
//!   (`monza-agent-protocol`) stand outside the hexagon: the protocol depends on no monza
//!   crate, the agent only on the protocol, neither on any adapter's technology, and the agent
//!   not on tokio (outside its tests). `monza-docker`, the adapter that talks to the agent,
//!   may depend on the protocol.
//! - Only `monza-app` may name every crate. Any other crate must be added to the rules here.

use std::process::Command;

use anyhow::{Context, Result, bail};
use serde_json::Value;

const DOMAIN: &str = "monza-domain";
const ADAPTERS: [&str; 4] = [
    "monza-devcontainer",
    "monza-store",
    "monza-docker",
    "monza-http",
];
const APP: &str = "monza-app";
const AGENT: &str = "monza-agent";
const AGENT_PROTOCOL: &str = "monza-agent-protocol";
/// The adapter that speaks the agent's protocol.
const AGENT_CLIENT: &str = "monza-docker";
const TOOLS: [&str; 1] = ["xtask"];
/// Technologies the domain must not know, outside dev-dependencies.
const DOMAIN_FORBIDDEN: [&str; 7] = [
    "actix-web",
    "diesel",
    "diesel-async",
    "diesel_migrations",
    "docker-api",
    "tokio",
    "tar",
];

/// The HTTP server's crates.
const HTTP: [&str; 3] = ["actix-web", "actix-multipart", "utoipa"];
/// The stores' crates (diesel and the database drivers).
const STORES: [&str; 6] = [
    "diesel",
    "diesel-async",
    "diesel_migrations",
    "libsqlite3-sys",
    "tokio-postgres",
    "deadpool",
];
/// The Docker engine's crates.
const DOCKER: [&str; 4] = ["docker-api", "hyper", "hyperlocal", "tar"];

/// What each adapter must not use: the technologies of the other adapters. (`monza-store`
/// serves SQLite and PostgreSQL from one crate, so it alone may use every store crate.)
fn adapter_forbidden(adapter: &str) -> Vec<&'static str> {
    let mut forbidden = Vec::new();
    if adapter != "monza-http" {
        forbidden.extend(HTTP);
    }
    if adapter != "monza-store" {
        forbidden.extend(STORES);
    }
    if adapter != "monza-docker" {
        forbidden.extend(DOCKER);
    }
    forbidden
}

/// Checks the current workspace; an error lists every violation.
pub fn check_workspace() -> Result<()> {
    let output = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .output()
        .context("could not run cargo metadata")?;
    if !output.status.success() {
        bail!(
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let metadata: Value = serde_json::from_slice(&output.stdout)?;
    let violations = violations(&metadata);
    if violations.is_empty() {
        eprintln!("xtask: crate dependency rules hold");
        Ok(())
    } else {
        bail!("architecture violations:\n  {}", violations.join("\n  "))
    }
}

/// Every broken rule in `cargo metadata` output, as sentences.
pub fn violations(metadata: &Value) -> Vec<String> {
    let mut found = Vec::new();
    let packages = metadata["packages"].as_array().cloned().unwrap_or_default();
    for package in &packages {
        let name = package["name"].as_str().unwrap_or_default();
        let deps = package["dependencies"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        for dep in &deps {
            let dep_name = dep["name"].as_str().unwrap_or_default();
            let kind = dep["kind"].as_str().unwrap_or("normal");
            let is_monza = dep_name.starts_with("monza-");
            if name == DOMAIN {
                if is_monza {
                    found.push(format!("{DOMAIN} depends on {dep_name} ({kind})"));
                }
                if kind != "dev" && DOMAIN_FORBIDDEN.contains(&dep_name) {
                    found.push(format!(
                        "{DOMAIN} depends on the adapter technology {dep_name} ({kind})"
                    ));
                }
            } else if name == AGENT || name == AGENT_PROTOCOL {
                let allowed = name == AGENT && dep_name == AGENT_PROTOCOL;
                if is_monza && !allowed {
                    found.push(format!(
                        "{name} depends on {dep_name} ({kind}): the agent's crates stand outside the hexagon"
                    ));
                }
                // Every adapter's technology: the agent's crates are no adapter.
                if adapter_forbidden(name).contains(&dep_name) {
                    found.push(format!(
                        "{name} depends on the adapter technology {dep_name} ({kind})"
                    ));
                }
                if name == AGENT && kind != "dev" && dep_name == "tokio" {
                    found.push(format!(
                        "{AGENT} depends on tokio ({kind}): it stays std-only"
                    ));
                }
            } else if ADAPTERS.contains(&name) {
                let protocol = name == AGENT_CLIENT && dep_name == AGENT_PROTOCOL;
                if is_monza && dep_name != DOMAIN && !protocol {
                    found.push(format!(
                        "adapter {name} depends on {dep_name} ({kind}): adapters depend only on {DOMAIN}"
                    ));
                }
                if adapter_forbidden(name).contains(&dep_name) {
                    found.push(format!(
                        "adapter {name} depends on {dep_name} ({kind}), another adapter's technology"
                    ));
                }
            } else if name != APP && !TOOLS.contains(&name) {
                found.push(format!(
                    "crate {name} is not classified in xtask/src/arch.rs: decide its layer first"
                ));
                break;
            }
        }
        if deps.is_empty()
            && name != DOMAIN
            && name != APP
            && name != AGENT
            && name != AGENT_PROTOCOL
            && !ADAPTERS.contains(&name)
            && !TOOLS.contains(&name)
        {
            found.push(format!(
                "crate {name} is not classified in xtask/src/arch.rs: decide its layer first"
            ));
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn package(name: &str, deps: &[(&str, Option<&str>)]) -> Value {
        let deps: Vec<Value> = deps
            .iter()
            .map(|(dep, kind)| json!({ "name": dep, "kind": kind }))
            .collect();
        json!({ "name": name, "dependencies": deps })
    }

    #[test]
    fn the_workspace_follows_the_rules() {
        check_workspace().unwrap();
    }

    #[test]
    fn the_allowed_shape_passes() {
        let metadata = json!({ "packages": [
            package(DOMAIN, &[("serde", None), ("tokio", Some("dev")), ("mockall", None)]),
            package("monza-docker", &[(DOMAIN, None), ("docker-api", None), (DOMAIN, Some("dev"))]),
            package("monza-http", &[(DOMAIN, None), ("actix-web", None)]),
            package(APP, &[(DOMAIN, None), ("monza-docker", None), ("monza-http", None)]),
        ]});
        assert_eq!(violations(&metadata), Vec::<String>::new());
    }

    #[test]
    fn an_adapter_importing_another_adapter_is_caught() {
        let metadata = json!({ "packages": [
            package("monza-http", &[(DOMAIN, None), ("monza-docker", None)]),
            package("monza-store", &[(DOMAIN, None), ("monza-docker", Some("dev"))]),
        ]});
        let found = violations(&metadata);
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found[0].contains("monza-http depends on monza-docker"));
        assert!(found[1].contains("monza-store depends on monza-docker (dev)"));
    }

    #[test]
    fn the_domain_importing_an_adapter_or_its_technology_is_caught() {
        let metadata = json!({ "packages": [
            package(DOMAIN, &[("monza-http", None), ("diesel", None), ("tokio", None)]),
        ]});
        assert_eq!(violations(&metadata).len(), 3);
    }

    #[test]
    fn an_adapter_using_another_adapters_technology_is_caught() {
        let metadata = json!({ "packages": [
            package("monza-http", &[(DOMAIN, None), ("actix-web", None), ("diesel", None)]),
            package("monza-store", &[(DOMAIN, None), ("diesel", None), ("docker-api", Some("dev"))]),
            package("monza-docker", &[(DOMAIN, None), ("hyper", None), ("actix-web", None)]),
            package("monza-devcontainer", &[(DOMAIN, None), ("tokio-postgres", None)]),
            package("monza-store", &[(DOMAIN, None), ("diesel", None), ("deadpool", None), ("libsqlite3-sys", None)]),
        ]});
        let found = violations(&metadata);
        assert_eq!(found.len(), 4, "{found:#?}");
        for (adapter, technology) in [
            ("monza-http", "diesel"),
            ("monza-store", "docker-api"),
            ("monza-docker", "actix-web"),
            ("monza-devcontainer", "tokio-postgres"),
        ] {
            assert!(
                found
                    .iter()
                    .any(|f| f.contains(&format!("{adapter} depends on {technology}"))),
                "{adapter} {technology}: {found:#?}"
            );
        }
    }

    #[test]
    fn the_agent_stands_outside_the_hexagon() {
        let allowed = json!({ "packages": [
            package(AGENT_PROTOCOL, &[("serde", None), ("tokio-util", None)]),
            package(AGENT, &[(AGENT_PROTOCOL, None), ("rustix", None), ("tokio", Some("dev"))]),
            package("monza-docker", &[(DOMAIN, None), (AGENT_PROTOCOL, None)]),
        ]});
        assert_eq!(violations(&allowed), Vec::<String>::new());
        let broken = json!({ "packages": [
            package(AGENT_PROTOCOL, &[(DOMAIN, None)]),
            package(AGENT, &[(AGENT_PROTOCOL, None), ("tokio", None), ("docker-api", None)]),
            package("monza-http", &[(DOMAIN, None), (AGENT_PROTOCOL, None)]),
        ]});
        let found = violations(&broken);
        assert_eq!(found.len(), 4, "{found:#?}");
    }

    #[test]
    fn an_unclassified_crate_is_caught() {
        let metadata = json!({ "packages": [package("monza-redis", &[(DOMAIN, None)])] });
        assert_eq!(violations(&metadata).len(), 1);
    }
}
