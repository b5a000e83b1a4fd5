//! Reading typed fields out of a JSON document, with errors that name the field by its
//! JSON path.

use std::collections::BTreeMap;
use std::fmt;

use serde_json::{Map, Value};

use crate::error::ParseError;
use monza_domain::error::json_kind;

/// A field's JSON path, for error messages: `build.args`, `forwardPorts[2]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Field(String);

impl Field {
    pub(crate) fn root(name: &str) -> Self {
        Self(name.to_owned())
    }

    pub(crate) fn key(&self, name: &str) -> Self {
        Self(format!("{}.{name}", self.0))
    }

    pub(crate) fn index(&self, index: usize) -> Self {
        Self(format!("{}[{index}]", self.0))
    }
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<Field> for String {
    fn from(field: Field) -> Self {
        field.0
    }
}

impl From<&Field> for String {
    fn from(field: &Field) -> Self {
        field.0.clone()
    }
}

/// A key's value, `null` counting as absent (as the reference CLI treats it).
pub(crate) fn get<'a>(map: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    map.get(key).filter(|value| !value.is_null())
}

pub(crate) fn string(value: &Value, field: &Field) -> Result<String, ParseError> {
    match value {
        Value::String(text) => Ok(text.clone()),
        other => Err(ParseError::invalid(
            field,
            format!("must be a string, not {}", json_kind(other)),
        )),
    }
}

pub(crate) fn boolean(value: &Value, field: &Field) -> Result<bool, ParseError> {
    match value {
        Value::Bool(flag) => Ok(*flag),
        other => Err(ParseError::invalid(
            field,
            format!("must be true or false, not {}", json_kind(other)),
        )),
    }
}

pub(crate) fn object<'a>(
    value: &'a Value,
    field: &Field,
) -> Result<&'a Map<String, Value>, ParseError> {
    match value {
        Value::Object(map) => Ok(map),
        other => Err(ParseError::invalid(
            field,
            format!("must be an object, not {}", json_kind(other)),
        )),
    }
}

pub(crate) fn array<'a>(value: &'a Value, field: &Field) -> Result<&'a [Value], ParseError> {
    match value {
        Value::Array(items) => Ok(items),
        other => Err(ParseError::invalid(
            field,
            format!("must be an array, not {}", json_kind(other)),
        )),
    }
}

/// An array of strings.
pub(crate) fn strings(value: &Value, field: &Field) -> Result<Vec<String>, ParseError> {
    array(value, field)?
        .iter()
        .enumerate()
        .map(|(index, item)| string(item, &field.index(index)))
        .collect()
}

/// An environment object: names to strings. Numbers and booleans are taken as their text;
/// `null` values (which unset a variable in `remoteEnv`) are skipped.
pub(crate) fn env_map(
    value: &Value,
    field: &Field,
) -> Result<BTreeMap<String, String>, ParseError> {
    let mut env = BTreeMap::new();
    for (name, item) in object(value, field)? {
        let item_field = field.key(name);
        if name.is_empty() || name.contains('=') || name.contains('\0') {
            return Err(ParseError::invalid(
                item_field,
                "is not a valid environment variable name",
            ));
        }
        let text = match item {
            Value::Null => continue,
            Value::String(text) => text.clone(),
            Value::Bool(flag) => flag.to_string(),
            Value::Number(number) => number.to_string(),
            other => {
                return Err(ParseError::invalid(
                    item_field,
                    format!("must be a string, not {}", json_kind(other)),
                ));
            }
        };
        env.insert(name.clone(), text);
    }
    Ok(env)
}
