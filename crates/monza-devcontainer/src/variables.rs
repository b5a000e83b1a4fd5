//! `${...}` variables in devcontainer.json strings.
//!
//! monza substitutes what it knows when reading a template: `${templateOption:NAME}` (from
//! devcontainer-template.json defaults), `${containerWorkspaceFolder}` and
//! `${containerWorkspaceFolderBasename}`. Anything else (`${localEnv:...}`,
//! `${localWorkspaceFolder}`, `${containerEnv:...}`, ...) is left as text: a sandbox has no
//! local workspace, and the host's environment is not the template's business.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::error::ParseError;
use crate::fields::{Field, get, object};

/// Replaces, in every string of `value`, each `${NAME}` for which `resolve` answers.
pub(crate) fn substitute(value: &mut Value, resolve: &dyn Fn(&str) -> Option<String>) {
    match value {
        Value::String(text) => {
            if text.contains("${") {
                *text = substitute_str(text, resolve);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|item| substitute(item, resolve)),
        Value::Object(map) => map.values_mut().for_each(|item| substitute(item, resolve)),
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

fn substitute_str(text: &str, resolve: &dyn Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            out.push_str(&rest[start..]);
            return out;
        };
        match resolve(&after[..end]) {
            Some(replacement) => out.push_str(&replacement),
            None => out.push_str(&rest[start..start + 2 + end + 1]),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    out
}

/// The `${...}` variables left in `value`'s strings, with the JSON path of each string.
pub(crate) fn unresolved(value: &Value, path: &str, out: &mut Vec<String>) {
    match value {
        Value::String(text) => {
            let mut rest = text.as_str();
            while let Some(start) = rest.find("${") {
                let after = &rest[start + 2..];
                let Some(end) = after.find('}') else { break };
                out.push(format!("${{{}}} in {path}", &after[..end]));
                rest = &after[end + 1..];
            }
        }
        Value::Array(items) => {
            for (index, item) in items.iter().enumerate() {
                unresolved(item, &format!("{path}[{index}]"), out);
            }
        }
        Value::Object(map) => {
            for (key, item) in map {
                let child = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                unresolved(item, &child, out);
            }
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

/// The option defaults of a devcontainer-template.json (`options.NAME.default`), as text.
/// Options without a default are left out, so their placeholders stay as text.
pub fn template_option_defaults(text: &str) -> Result<BTreeMap<String, String>, ParseError> {
    let document = crate::jsonc::parse(text)?;
    let Value::Object(root) = &document else {
        return Err(ParseError::Malformed {
            message: "devcontainer-template.json is not a JSON object".into(),
        });
    };
    let mut defaults = BTreeMap::new();
    let Some(options) = get(root, "options") else {
        return Ok(defaults);
    };
    let options = object(options, &Field::root("options"))?;
    for (name, option) in options {
        let field = Field::root("options").key(name);
        let Value::Object(option) = option else {
            return Err(ParseError::invalid(field, "must be an object"));
        };
        let text = match option.get("default") {
            None | Some(Value::Null) => continue,
            Some(Value::String(text)) => text.clone(),
            Some(Value::Bool(flag)) => flag.to_string(),
            Some(Value::Number(number)) => number.to_string(),
            Some(_) => {
                return Err(ParseError::invalid(
                    field.key("default"),
                    "must be a string, a boolean or a number",
                ));
            }
        };
        defaults.insert(name.clone(), text);
    }
    Ok(defaults)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn options(name: &str) -> Option<String> {
        match name {
            "templateOption:variant" => Some("3.12".into()),
            "empty" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn known_variables_are_replaced_and_unknown_ones_kept() {
        assert_eq!(
            substitute_str(
                "py:${templateOption:variant}-${localEnv:HOME}${empty}!",
                &options
            ),
            "py:3.12-${localEnv:HOME}!"
        );
    }

    #[test]
    fn unterminated_and_dollar_only_text_is_kept() {
        assert_eq!(substitute_str("a $HOME ${oops", &options), "a $HOME ${oops");
        assert_eq!(
            substitute_str("$${templateOption:variant}", &options),
            "$3.12"
        );
    }

    #[test]
    fn substitution_reaches_nested_strings_but_not_keys() {
        let mut value = json!({"${templateOption:variant}": ["${templateOption:variant}", {"x": "${templateOption:variant}"}], "n": 1});
        substitute(&mut value, &options);
        assert_eq!(
            value,
            json!({"${templateOption:variant}": ["3.12", {"x": "3.12"}], "n": 1})
        );
    }

    #[test]
    fn unresolved_variables_are_listed_with_their_paths() {
        let value =
            json!({"remoteEnv": {"P": "${localEnv:PATH}:${containerEnv:X}"}, "a": ["${b}"]});
        let mut out = Vec::new();
        unresolved(&value, "", &mut out);
        assert_eq!(
            out,
            vec![
                "${b} in a[0]".to_owned(),
                "${localEnv:PATH} in remoteEnv.P".to_owned(),
                "${containerEnv:X} in remoteEnv.P".to_owned(),
            ]
        );
    }

    #[test]
    fn option_defaults_are_read_as_text() {
        let text = r#"{
            "id": "python",
            // comment
            "options": {
                "imageVariant": {"type": "string", "default": "1-3.12-bookworm"},
                "installTools": {"type": "boolean", "default": true},
                "noDefault": {"type": "string"},
            }
        }"#;
        let defaults = template_option_defaults(text).unwrap();
        assert_eq!(
            defaults,
            BTreeMap::from([
                ("imageVariant".to_owned(), "1-3.12-bookworm".to_owned()),
                ("installTools".to_owned(), "true".to_owned()),
            ])
        );
    }

    #[test]
    fn option_file_errors_name_the_field() {
        let err = template_option_defaults(r#"{"options": {"a": {"default": []}}}"#).unwrap_err();
        assert_eq!(
            err.to_string(),
            "options.a.default: must be a string, a boolean or a number"
        );
        assert!(template_option_defaults(r#"{"options": []}"#).is_err());
        assert!(template_option_defaults("[]").is_err());
        assert_eq!(template_option_defaults("{}").unwrap(), BTreeMap::new());
    }
}
