//! The value syntaxes of devcontainer.json: ports, sizes, mounts and commands.

use monza_domain::{Command, LifecycleCommand, Mount};
use serde_json::Value;

use crate::error::ParseError;
use crate::fields::{Field, array, string};
use monza_domain::error::json_kind;

/// A port number in 1..=65535 from a JSON number.
fn port_number(value: &Value, field: &Field) -> Result<u16, ParseError> {
    let number = value.as_u64().filter(|n| (1..=65535).contains(n));
    number.and_then(|n| u16::try_from(n).ok()).ok_or_else(|| {
        ParseError::invalid(
            field,
            format!("port {value} is not a whole number in 1..=65535"),
        )
    })
}

/// A port number in 1..=65535 from text.
fn port_text(text: &str, field: &Field) -> Result<u16, ParseError> {
    text.trim()
        .parse::<u16>()
        .ok()
        .filter(|&port| port != 0)
        .ok_or_else(|| {
            ParseError::invalid(
                field,
                format!("port {text:?} is not a whole number in 1..=65535"),
            )
        })
}

/// `forwardPorts`: numbers, or `"host:port"` strings (the port is the container's; the host
/// part names a service in compose setups and means nothing for a single container).
pub(crate) fn forward_ports(value: &Value, field: &Field) -> Result<Vec<u16>, ParseError> {
    let mut ports = Vec::new();
    for (index, item) in array(value, field)?.iter().enumerate() {
        let item_field = field.index(index);
        let port = match item {
            Value::Number(_) => port_number(item, &item_field)?,
            Value::String(text) => {
                let port = text
                    .rsplit_once(':')
                    .map_or(text.as_str(), |(_, port)| port);
                port_text(port, &item_field)?
            }
            other => {
                return Err(ParseError::invalid(
                    item_field,
                    format!(
                        "must be a port number or a \"host:port\" string, not {}",
                        json_kind(other)
                    ),
                ));
            }
        };
        ports.push(port);
    }
    Ok(ports)
}

/// `appPort`: a number, a string in `docker run -p` form (`[ip:][host:]container[/tcp]`), or
/// an array of those. The container port is what monza publishes.
pub(crate) fn app_ports(value: &Value, field: &Field) -> Result<Vec<u16>, ParseError> {
    let one = |item: &Value, item_field: &Field| -> Result<u16, ParseError> {
        match item {
            Value::Number(_) => port_number(item, item_field),
            Value::String(text) => {
                let container = text
                    .rsplit_once(':')
                    .map_or(text.as_str(), |(_, port)| port);
                let container = match container.split_once('/') {
                    None => container,
                    Some((port, protocol)) if protocol.eq_ignore_ascii_case("tcp") => port,
                    Some(_) => {
                        return Err(ParseError::invalid(
                            item_field,
                            format!("{text:?}: only TCP ports are published"),
                        ));
                    }
                };
                port_text(container, item_field)
            }
            other => Err(ParseError::invalid(
                item_field,
                format!("must be a port number or string, not {}", json_kind(other)),
            )),
        }
    };
    match value {
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(index, item)| one(item, &field.index(index)))
            .collect(),
        item => Ok(vec![one(item, field)?]),
    }
}

/// A size such as `4gb`, `512m`, `1.5g` or `1048576`, in bytes. Units are binary (`k` =
/// 1024) as in `docker run --memory` and the reference CLI's `hostRequirements.memory`.
pub(crate) fn size(text: &str, field: &Field) -> Result<u64, ParseError> {
    let invalid = || {
        ParseError::invalid(
            field,
            format!("{text:?} is not a size such as \"512mb\", \"4gb\" or a number of bytes"),
        )
    };
    let lower = text.trim().to_ascii_lowercase();
    let split = lower
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(lower.len());
    let (number, unit) = lower.split_at(split);
    let multiplier: u64 = match unit.trim() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        _ => return Err(invalid()),
    };
    let number: f64 = number.parse().map_err(|_| invalid())?;
    // Precision: f64 is exact for every integer up to 2^53 bytes (8 PiB), far beyond any
    // real memory size; the range check below keeps the cast in range.
    #[allow(clippy::cast_precision_loss)]
    let bytes = (number * multiplier as f64).round();
    if !(bytes >= 1.0 && bytes < u64::MAX as f64) {
        return Err(invalid());
    }
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    Ok(bytes as u64)
}

/// A mount in `docker run --mount` string form (`type=bind,source=/a,target=/b,readonly`).
/// `type` defaults to `volume` as in Docker; options monza has no use for (`consistency`)
/// are ignored.
pub(crate) fn mount_string(text: &str, field: &Field) -> Result<Mount, ParseError> {
    let mut kind = None;
    let mut source = None;
    let mut target = None;
    let mut read_only = false;
    for part in text
        .split(',')
        .map(str::trim)
        .filter(|part| !part.is_empty())
    {
        let (key, value) = match part.split_once('=') {
            Some((key, value)) => (key.trim(), Some(value.trim())),
            None => (part, None),
        };
        match (key.to_ascii_lowercase().as_str(), value) {
            ("type", Some(value)) => kind = Some(value.to_owned()),
            ("source" | "src", Some(value)) => source = Some(value.to_owned()),
            ("target" | "destination" | "dst", Some(value)) => target = Some(value.to_owned()),
            ("readonly" | "ro", None | Some("true" | "1")) => read_only = true,
            ("readonly" | "ro", Some("false" | "0")) => read_only = false,
            ("type" | "source" | "src" | "target" | "destination" | "dst", None) => {
                return Err(ParseError::invalid(
                    field,
                    format!("{text:?}: {key} needs a value"),
                ));
            }
            _ => {}
        }
    }
    let target =
        target.ok_or_else(|| ParseError::invalid(field, format!("{text:?} has no target")))?;
    checked_mount(
        kind.unwrap_or_else(|| "volume".into()),
        source,
        target,
        read_only,
        field,
    )
}

/// A mount in object form: `{"type": "volume", "source": "name", "target": "/x"}`.
pub(crate) fn mount_object(value: &Value, field: &Field) -> Result<Mount, ParseError> {
    let map = crate::fields::object(value, field)?;
    let text = |key: &str| -> Result<Option<String>, ParseError> {
        crate::fields::get(map, key)
            .map(|item| string(item, &field.key(key)))
            .transpose()
    };
    let kind =
        text("type")?.ok_or_else(|| ParseError::invalid(field.key("type"), "is required"))?;
    let target =
        text("target")?.ok_or_else(|| ParseError::invalid(field.key("target"), "is required"))?;
    let read_only = match crate::fields::get(map, "readonly") {
        Some(flag) => crate::fields::boolean(flag, &field.key("readonly"))?,
        None => false,
    };
    checked_mount(kind, text("source")?, target, read_only, field)
}

fn checked_mount(
    kind: String,
    source: Option<String>,
    target: String,
    read_only: bool,
    field: &Field,
) -> Result<Mount, ParseError> {
    if !matches!(kind.as_str(), "bind" | "volume" | "tmpfs") {
        return Err(ParseError::invalid(
            field,
            format!("mount type {kind:?} is not bind, volume or tmpfs"),
        ));
    }
    if kind == "bind" && source.is_none() {
        return Err(ParseError::invalid(field, "a bind mount needs a source"));
    }
    if !target.starts_with('/') {
        return Err(ParseError::invalid(
            field,
            format!("mount target {target:?} is not an absolute path"),
        ));
    }
    Ok(Mount {
        kind,
        source,
        target,
        read_only,
    })
}

/// A mount in either form.
pub(crate) fn mount(value: &Value, field: &Field) -> Result<Mount, ParseError> {
    match value {
        Value::String(text) => mount_string(text, field),
        other => mount_object(other, field),
    }
}

/// One command in string or array form; `None` for an empty one (nothing to run).
fn command(value: &Value, field: &Field) -> Result<Option<Command>, ParseError> {
    match value {
        Value::String(line) if line.trim().is_empty() => Ok(None),
        Value::String(line) => Ok(Some(Command::Shell(line.clone()))),
        Value::Array(_) => {
            let argv = crate::fields::strings(value, field)?;
            Ok((!argv.is_empty()).then_some(Command::Argv(argv)))
        }
        other => Err(ParseError::invalid(
            field,
            format!(
                "must be a string or an array of strings, not {}",
                json_kind(other)
            ),
        )),
    }
}

/// A lifecycle hook (`postCreateCommand`, ...) in string, array or object form. The object
/// form's commands are labelled `hook:key` and come in key order (the reference CLI runs
/// them in parallel; monza runs them one after another).
pub(crate) fn lifecycle(hook: &str, value: &Value) -> Result<Vec<LifecycleCommand>, ParseError> {
    let field = Field::root(hook);
    match value {
        Value::Object(commands) => {
            let mut out = Vec::new();
            for (key, item) in commands {
                if let Some(command) = command(item, &field.key(key))? {
                    out.push(LifecycleCommand {
                        label: format!("{hook}:{key}"),
                        command,
                    });
                }
            }
            Ok(out)
        }
        other => Ok(command(other, &field)?
            .map(|command| LifecycleCommand {
                label: hook.to_owned(),
                command,
            })
            .into_iter()
            .collect()),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn f() -> Field {
        Field::root("f")
    }

    #[test]
    fn forward_ports_accept_numbers_and_host_port_strings() {
        let ports = forward_ports(&json!([3000, "db:5432", "localhost:8080", "9000"]), &f());
        assert_eq!(ports.unwrap(), vec![3000, 5432, 8080, 9000]);
    }

    #[test]
    fn forward_ports_out_of_range_name_the_item() {
        for bad in [
            json!([80, 0]),
            json!([80, 65536]),
            json!([80, -1]),
            json!([80, 1.5]),
        ] {
            let err = forward_ports(&bad, &f()).unwrap_err();
            assert!(err.to_string().starts_with("f[1]: port"), "{err}");
        }
        let err = forward_ports(&json!(["db:http"]), &f()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "f[0]: port \"http\" is not a whole number in 1..=65535"
        );
        assert!(forward_ports(&json!([true]), &f()).is_err());
        assert!(forward_ports(&json!(3000), &f()).is_err());
    }

    #[test]
    fn app_port_accepts_number_string_and_array() {
        assert_eq!(app_ports(&json!(3000), &f()).unwrap(), vec![3000]);
        assert_eq!(app_ports(&json!("8000:8001"), &f()).unwrap(), vec![8001]);
        assert_eq!(
            app_ports(&json!(["127.0.0.1:80:8080/tcp", 9000, "7000"]), &f()).unwrap(),
            vec![8080, 9000, 7000]
        );
        assert!(app_ports(&json!("53:53/udp"), &f()).is_err());
        assert!(app_ports(&json!([70000]), &f()).is_err());
        assert!(app_ports(&json!({}), &f()).is_err());
    }

    #[test]
    fn sizes_in_binary_units() {
        assert_eq!(size("4gb", &f()).unwrap(), 4 << 30);
        assert_eq!(size("4GB", &f()).unwrap(), 4 << 30);
        assert_eq!(size("512m", &f()).unwrap(), 512 << 20);
        assert_eq!(size("1.5g", &f()).unwrap(), 3 << 29);
        assert_eq!(size("64kb", &f()).unwrap(), 64 << 10);
        assert_eq!(size("2tb", &f()).unwrap(), 2 << 40);
        assert_eq!(size("1048576", &f()).unwrap(), 1 << 20);
        assert_eq!(size(" 8 mb ", &f()).unwrap(), 8 << 20);
        for bad in ["", "gb", "4xb", "-1gb", "0", "1.2.3g", "99999999999tb"] {
            assert!(size(bad, &f()).is_err(), "{bad:?} accepted");
        }
    }

    /// The mount a test expects.
    fn mount_of(kind: &str, source: Option<&str>, target: &str, read_only: bool) -> Mount {
        Mount {
            kind: kind.into(),
            source: source.map(Into::into),
            target: target.into(),
            read_only,
        }
    }

    #[test]
    fn mount_strings() {
        assert_eq!(
            mount_string("type=bind,source=/src,target=/dst,readonly", &f()).unwrap(),
            mount_of("bind", Some("/src"), "/dst", true)
        );
        assert_eq!(
            mount_string("src=cache, dst=/cache, consistency=cached", &f()).unwrap(),
            mount_of("volume", Some("cache"), "/cache", false)
        );
        assert!(mount_string("type=bind,target=/x", &f()).is_err());
        assert!(mount_string("type=volume,source=x", &f()).is_err());
        assert!(mount_string("type=npipe,target=/x", &f()).is_err());
        assert!(mount_string("type=volume,target=relative", &f()).is_err());
        assert!(mount_string("type,target=/x", &f()).is_err());
    }

    #[test]
    fn mount_objects() {
        assert_eq!(
            mount(&json!({"type": "volume", "target": "/home/x"}), &f()).unwrap(),
            mount_of("volume", None, "/home/x", false)
        );
        assert!(
            mount(
                &json!({"type": "tmpfs", "target": "/t", "readonly": true}),
                &f()
            )
            .unwrap()
            .read_only
        );
        let err = mount(&json!({"target": "/x"}), &f()).unwrap_err();
        assert_eq!(err.to_string(), "f.type: is required");
        assert!(mount(&json!({"type": "volume"}), &f()).is_err());
        assert!(mount(&json!(["x"]), &f()).is_err());
    }

    #[test]
    fn lifecycle_string_form() {
        assert_eq!(
            lifecycle("postCreateCommand", &json!("echo hi")).unwrap(),
            vec![LifecycleCommand {
                label: "postCreateCommand".into(),
                command: Command::Shell("echo hi".into())
            }]
        );
        assert_eq!(
            lifecycle("postCreateCommand", &json!("  ")).unwrap(),
            vec![]
        );
    }

    #[test]
    fn lifecycle_array_form() {
        assert_eq!(
            lifecycle("onCreateCommand", &json!(["touch", "/tmp/a b"])).unwrap(),
            vec![LifecycleCommand {
                label: "onCreateCommand".into(),
                command: Command::Argv(vec!["touch".into(), "/tmp/a b".into()])
            }]
        );
        assert_eq!(lifecycle("onCreateCommand", &json!([])).unwrap(), vec![]);
        let err = lifecycle("onCreateCommand", &json!(["ls", 1])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "onCreateCommand[1]: must be a string, not a number"
        );
    }

    #[test]
    fn lifecycle_object_form_gives_labelled_commands_in_key_order() {
        let commands = lifecycle(
            "postStartCommand",
            &json!({"b-second": ["echo", "2"], "a-first": "echo 1", "empty": ""}),
        )
        .unwrap();
        assert_eq!(
            commands,
            vec![
                LifecycleCommand {
                    label: "postStartCommand:a-first".into(),
                    command: Command::Shell("echo 1".into())
                },
                LifecycleCommand {
                    label: "postStartCommand:b-second".into(),
                    command: Command::Argv(vec!["echo".into(), "2".into()])
                },
            ]
        );
        let err = lifecycle("postStartCommand", &json!({"x": {}})).unwrap_err();
        assert_eq!(
            err.to_string(),
            "postStartCommand.x: must be a string or an array of strings, not an object"
        );
        assert!(lifecycle("postStartCommand", &json!(42)).is_err());
    }
}
