//! Params: declared with a type (`string`, `array`, `object`) and an optional default; given
//! as values; resolved into one value per declared param with Tekton's errors
//! (`ParameterMissing`, `ParameterTypeMismatch`, `InvalidParamValue`).

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

/// A param's (or result's) value: a string, an array of strings or an object of strings.
/// A number or a boolean where a string goes is read as its text (`value: 8080`), as Tekton
/// reads it.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum ParamValue {
    String(String),
    Array(Vec<String>),
    Object(BTreeMap<String, String>),
}

fn scalar(v: Value) -> Result<String, String> {
    match v {
        Value::String(s) => Ok(s),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        Value::Null => Ok(String::new()),
        other => Err(format!("{other} is not a string")),
    }
}

impl<'de> Deserialize<'de> for ParamValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        match Value::deserialize(d)? {
            Value::Array(items) => items
                .into_iter()
                .map(scalar)
                .collect::<Result<Vec<_>, _>>()
                .map(ParamValue::Array)
                .map_err(|e| D::Error::custom(format!("an array of strings: {e}"))),
            Value::Object(m) => m
                .into_iter()
                .map(|(k, v)| scalar(v).map(|v| (k, v)))
                .collect::<Result<BTreeMap<_, _>, _>>()
                .map(ParamValue::Object)
                .map_err(|e| D::Error::custom(format!("an object of strings: {e}"))),
            other => scalar(other)
                .map(ParamValue::String)
                .map_err(D::Error::custom),
        }
    }
}

impl ParamValue {
    pub fn kind(&self) -> ParamType {
        match self {
            ParamValue::String(_) => ParamType::String,
            ParamValue::Array(_) => ParamType::Array,
            ParamValue::Object(_) => ParamType::Object,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamType {
    String,
    Array,
    Object,
}

impl ParamType {
    pub fn name(self) -> &'static str {
        match self {
            ParamType::String => "string",
            ParamType::Array => "array",
            ParamType::Object => "object",
        }
    }
}

/// A declared param.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ParamSpec {
    pub name: String,
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<ParamValue>,
    /// An object's keys: `{key: {type: string}}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub properties: Option<Value>,
    #[serde(default, rename = "enum", skip_serializing_if = "Vec::is_empty")]
    pub allowed: Vec<String>,
}

impl ParamSpec {
    /// The declared type; without one, Tekton's inference: `object` with `properties`, else
    /// the default's type, else `string`. `Err` for a type that is none of the three.
    pub fn param_type(&self) -> Result<ParamType, String> {
        match self.kind.as_deref() {
            Some("string") => Ok(ParamType::String),
            Some("array") => Ok(ParamType::Array),
            Some("object") => Ok(ParamType::Object),
            Some(other) => Err(format!(
                "type {other:?} is not one of string, array, object"
            )),
            None if self.properties.is_some() => Ok(ParamType::Object),
            None => Ok(self
                .default
                .as_ref()
                .map_or(ParamType::String, ParamValue::kind)),
        }
    }

    /// The keys an object param declares.
    pub fn keys(&self) -> Vec<String> {
        self.properties
            .as_ref()
            .and_then(Value::as_object)
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
    }
}

/// Why a param could not be resolved: Tekton's reason and a message naming the param.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParamError {
    /// `ParameterMissing`, `ParameterTypeMismatch` or `InvalidParamValue`.
    pub reason: &'static str,
    pub param: String,
    pub message: String,
}

/// One value per declared param: the given one (an object merged over its default), else
/// the default. Undeclared given params are ignored (Tekton accepts them).
pub fn resolve(
    specs: &[ParamSpec],
    given: &[(String, ParamValue)],
) -> Result<BTreeMap<String, ParamValue>, Vec<ParamError>> {
    let mut out = BTreeMap::new();
    let mut errors = Vec::new();
    for spec in specs {
        let err = |reason, message: String| ParamError {
            reason,
            param: spec.name.clone(),
            message,
        };
        let ty = match spec.param_type() {
            Ok(t) => t,
            Err(m) => {
                errors.push(err(
                    "ParameterTypeMismatch",
                    format!("param {:?}: {m}", spec.name),
                ));
                continue;
            }
        };
        let value = given
            .iter()
            .rev()
            .find(|(n, _)| *n == spec.name)
            .map(|(_, v)| v.clone());
        let value = match (value, &spec.default, ty) {
            (
                Some(ParamValue::Object(mut given)),
                Some(ParamValue::Object(default)),
                ParamType::Object,
            ) => {
                for (k, v) in default {
                    given.entry(k.clone()).or_insert_with(|| v.clone());
                }
                ParamValue::Object(given)
            }
            (Some(v), _, _) => v,
            (None, Some(d), _) => d.clone(),
            (None, None, _) => {
                errors.push(err(
                    "ParameterMissing",
                    format!("param {:?} has no value and no default", spec.name),
                ));
                continue;
            }
        };
        if value.kind() != ty {
            errors.push(err(
                "ParameterTypeMismatch",
                format!(
                    "param {:?} is declared {} but given {}",
                    spec.name,
                    ty.name(),
                    value.kind().name()
                ),
            ));
            continue;
        }
        if let ParamValue::Object(m) = &value {
            let missing: Vec<String> = spec
                .keys()
                .into_iter()
                .filter(|k| !m.contains_key(k))
                .collect();
            if !missing.is_empty() {
                errors.push(err(
                    "ParameterMissing",
                    format!(
                        "object param {:?} lacks the keys {}",
                        spec.name,
                        missing.join(", ")
                    ),
                ));
                continue;
            }
        }
        if let (ParamValue::String(s), false) = (&value, spec.allowed.is_empty()) {
            if !spec.allowed.contains(s) {
                errors.push(err(
                    "InvalidParamValue",
                    format!(
                        "param {:?}: {s:?} is not one of {}",
                        spec.name,
                        spec.allowed.join(", ")
                    ),
                ));
                continue;
            }
        }
        out.insert(spec.name.clone(), value);
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(v: Value) -> ParamSpec {
        serde_json::from_value(v).unwrap()
    }

    fn s(x: &str) -> ParamValue {
        ParamValue::String(x.into())
    }

    #[test]
    fn numbers_and_booleans_are_read_as_text() {
        let v: ParamValue = serde_json::from_value(json!(8080)).unwrap();
        assert_eq!(v, s("8080"));
        let v: ParamValue = serde_json::from_value(json!([1, true, "x"])).unwrap();
        assert_eq!(
            v,
            ParamValue::Array(vec!["1".into(), "true".into(), "x".into()])
        );
        assert!(serde_json::from_value::<ParamValue>(json!([["nested"]])).is_err());
    }

    #[test]
    fn types_are_inferred_as_tekton_does() {
        assert_eq!(
            spec(json!({"name": "a"})).param_type(),
            Ok(ParamType::String)
        );
        assert_eq!(
            spec(json!({"name": "a", "default": ["x"]})).param_type(),
            Ok(ParamType::Array)
        );
        assert_eq!(
            spec(json!({"name": "a", "properties": {"k": {}}})).param_type(),
            Ok(ParamType::Object)
        );
        assert!(spec(json!({"name": "a", "type": "number"}))
            .param_type()
            .is_err());
    }

    #[test]
    fn values_defaults_and_errors() {
        let specs = vec![
            spec(json!({"name": "given"})),
            spec(json!({"name": "defaulted", "default": "d"})),
            spec(json!({"name": "missing"})),
            spec(json!({"name": "list", "type": "array"})),
            spec(
                json!({"name": "obj", "properties": {"url": {}, "commit": {}}, "default": {"url": "u"}}),
            ),
            spec(json!({"name": "color", "enum": ["red", "blue"]})),
        ];
        let given = vec![
            ("given".to_string(), s("g")),
            ("list".to_string(), s("not a list")),
            (
                "obj".to_string(),
                ParamValue::Object([("commit".to_string(), "c".to_string())].into()),
            ),
            ("color".to_string(), s("green")),
            ("extra".to_string(), s("ignored")),
        ];
        let errors = resolve(&specs, &given).unwrap_err();
        let reasons: Vec<(&str, &str)> = errors
            .iter()
            .map(|e| (e.reason, e.param.as_str()))
            .collect();
        assert_eq!(
            reasons,
            [
                ("ParameterMissing", "missing"),
                ("ParameterTypeMismatch", "list"),
                ("InvalidParamValue", "color"),
            ]
        );
        let ok = resolve(&specs[..2], &given).unwrap();
        assert_eq!(ok["given"], s("g"));
        assert_eq!(ok["defaulted"], s("d"));
        // An object given in part is merged over its default.
        let obj = resolve(&specs[4..5], &given).unwrap();
        assert_eq!(
            obj["obj"],
            ParamValue::Object([("commit".into(), "c".into()), ("url".into(), "u".into())].into())
        );
    }
}
