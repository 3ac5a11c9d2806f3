//! The CRD schemas as validators: JSON Schema for structure and grammars, CEL for the
//! `x-kubernetes-validations` rules. Standalone mode has no API server, so the operator checks
//! every manifest against exactly what the API server would enforce.

use std::collections::HashMap;
use std::sync::OnceLock;

use serde_json::{Map, Value};

use crate::api::Kind;

/// A problem found at `path` (field names and list indexes below the object's root).
#[derive(Clone, Debug, PartialEq)]
pub struct Violation {
    pub path: Vec<String>,
    /// The path names an unexpected key rather than a value.
    pub at_key: bool,
    pub reason: String,
}

struct Compiled {
    json_schema: jsonschema::Validator,
    /// The CRD's `x-kubernetes-validations` rules, parsed once: parsing them again for every
    /// object was where a scan of 10,000 objects spent its time.
    cel: kube::core::cel::CompiledSchema,
}

thread_local! {
    /// Building a CEL validator registers every Kubernetes CEL function, which costs far more
    /// than checking one object. One per thread (scans run on the blocking pool, whose threads
    /// are reused): the validator's function table is not shared between threads.
    static CEL: kube::core::cel::Validator = kube::core::cel::Validator::new();
}

fn compiled(kind: Kind) -> &'static Compiled {
    static COMPILED: OnceLock<HashMap<Kind, Compiled>> = OnceLock::new();
    let all = COMPILED.get_or_init(|| {
        Kind::ALL
            .into_iter()
            .map(|kind| {
                let crd_schema = serde_json::to_value(kind.schema()).expect("a CRD schema is JSON");
                let json_schema = jsonschema::validator_for(&root_json_schema(&crd_schema))
                    .unwrap_or_else(|e| panic!("the {kind} schema does not compile: {e}"));
                let cel = kube::core::cel::compile_schema(&crd_schema);
                (kind, Compiled { json_schema, cel })
            })
            .collect()
    });
    &all[&kind]
}

/// Checks `object` (with `apiVersion`, `kind`, `metadata`, `spec`) against the kind's schema
/// and CEL rules; `old` is the previous version for transition rules (`oldSelf`).
pub fn check(kind: Kind, object: &Value, old: Option<&Value>) -> Vec<Violation> {
    let compiled = compiled(kind);
    let mut violations: Vec<Violation> = compiled
        .json_schema
        .iter_errors(object)
        .map(|error| {
            let mut path = pointer_segments(&error.instance_path().to_string());
            match error.kind() {
                jsonschema::error::ValidationErrorKind::AdditionalProperties { unexpected } => {
                    path.push(unexpected.first().cloned().unwrap_or_default());
                    let reason = format!("unknown field {:?}", unexpected.join(", "));
                    Violation {
                        path,
                        at_key: true,
                        reason,
                    }
                }
                jsonschema::error::ValidationErrorKind::Pattern { pattern } => {
                    let reason =
                        format!("{} must be {}", error.instance(), describe_pattern(pattern));
                    Violation {
                        path,
                        at_key: false,
                        reason,
                    }
                }
                jsonschema::error::ValidationErrorKind::Type { .. } => Violation {
                    path,
                    at_key: false,
                    reason: without_null_type(&error.to_string()),
                },
                _ => Violation {
                    path,
                    at_key: false,
                    reason: error.to_string(),
                },
            }
        })
        .collect();
    // CEL rules assume a structurally valid object; report them only when it is.
    if violations.is_empty()
        && let Err(errors) = CEL.with(|cel| cel.validate_compiled(&compiled.cel, object, old))
    {
        for error in errors.into_vec() {
            violations.push(Violation {
                path: field_path_segments(&error.field_path),
                at_key: false,
                reason: error.message,
            });
        }
    }
    violations
}

/// The JSON Schema of a whole object: the CRD schema describes `spec` and `status` only, the
/// API server itself checks the fields every object has.
fn root_json_schema(crd_schema: &Value) -> Value {
    let mut root = crd_schema.clone();
    if let Some(properties) = root.get_mut("properties").and_then(Value::as_object_mut) {
        properties.insert(
            "apiVersion".to_owned(),
            serde_json::json!({"type": "string"}),
        );
        properties.insert("kind".to_owned(), serde_json::json!({"type": "string"}));
        properties.insert("metadata".to_owned(), serde_json::json!({"type": "object"}));
    }
    to_json_schema(&root)
}

/// Optional fields accept `null` as well, which type errors list; a person wants to know the
/// type that was meant.
fn without_null_type(message: &str) -> String {
    message
        .replace(r#"is not of types "null", "#, "is not of type ")
        .replace(r#", "null""#, "")
}

/// Turns a CRD's structural OpenAPI v3 schema into JSON Schema: `nullable` becomes a `null`
/// type, int-or-string an `anyOf`, and objects with declared properties reject unknown fields
/// (as `kubectl apply` does with its default strict field validation).
pub fn to_json_schema(schema: &Value) -> Value {
    let Value::Object(map) = schema else {
        return schema.clone();
    };
    let mut out = Map::new();
    for (key, value) in map {
        let converted = match key.as_str() {
            "properties" | "patternProperties" => match value {
                Value::Object(props) => Value::Object(
                    props
                        .iter()
                        .map(|(k, v)| (k.clone(), to_json_schema(v)))
                        .collect(),
                ),
                other => other.clone(),
            },
            "items" | "additionalProperties" | "not" => to_json_schema(value),
            "allOf" | "anyOf" | "oneOf" => match value {
                Value::Array(items) => Value::Array(items.iter().map(to_json_schema).collect()),
                other => other.clone(),
            },
            // Kubernetes-only keywords: JSON Schema ignores them; CEL reads the CRD schema.
            _ if key.starts_with("x-kubernetes-") => continue,
            "nullable" => continue,
            _ => value.clone(),
        };
        out.insert(key.clone(), converted);
    }
    if map.get("nullable") == Some(&Value::Bool(true)) {
        if let Some(Value::String(ty)) = out.get("type").cloned() {
            out.insert(
                "type".to_owned(),
                Value::Array(vec![Value::String(ty), "null".into()]),
            );
        }
        if let Some(Value::Array(values)) = out.get_mut("enum") {
            values.push(Value::Null);
        }
    }
    if map.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true)) {
        out.remove("type");
        out.insert(
            "anyOf".to_owned(),
            serde_json::json!([{"type": "integer"}, {"type": "string"}]),
        );
    }
    let preserves = map.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
    if map.contains_key("properties") && !map.contains_key("additionalProperties") && !preserves {
        out.insert("additionalProperties".to_owned(), Value::Bool(false));
    }
    out.into()
}

/// `/spec/hosts/0` → `["spec", "hosts", "0"]`.
fn pointer_segments(pointer: &str) -> Vec<String> {
    pointer
        .split('/')
        .skip(1)
        .map(|s| s.replace("~1", "/").replace("~0", "~"))
        .collect()
}

/// `spec.hosts[0].name` → `["spec", "hosts", "0", "name"]`.
fn field_path_segments(path: &str) -> Vec<String> {
    path.split(['.', '['])
        .map(|s| s.trim_end_matches(']').to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

/// A person's words for the grammars the types use.
fn describe_pattern(pattern: &str) -> String {
    use crate::api::common::*;
    let described = [
        (
            HOSTNAME_PATTERN,
            "a lower-case DNS name or wildcard such as *.example.com",
        ),
        (DURATION_PATTERN, "a duration such as 90s, 5m, 1h30m or 7d"),
        (SIZE_PATTERN, "a size such as 512, 10k, 5M or 2G"),
        (
            NAME_PATTERN,
            "a lower-case name of letters, digits, '-' and '.'",
        ),
    ];
    described.iter().find(|(p, _)| *p == pattern).map_or_else(
        || format!("text matching {pattern}"),
        |(_, d)| (*d).to_owned(),
    )
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn nullable_int_or_string_and_unknown_fields_translate() {
        let schema = json!({
            "type": "object",
            "properties": {
                "a": {"type": "string", "nullable": true},
                "b": {"x-kubernetes-int-or-string": true},
                "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                "m": {"type": "object", "additionalProperties": {"type": "string"}},
            },
            "x-kubernetes-validations": [{"rule": "true"}],
        });
        assert_eq!(
            to_json_schema(&schema),
            json!({
                "type": "object",
                "additionalProperties": false,
                "properties": {
                    "a": {"type": ["string", "null"]},
                    "b": {"anyOf": [{"type": "integer"}, {"type": "string"}]},
                    "free": {"type": "object"},
                    "m": {"type": "object", "additionalProperties": {"type": "string"}},
                },
            })
        );
    }

    #[test]
    fn every_kinds_cel_rules_compile() {
        fn errors(node: &kube::core::cel::CompiledSchema, at: &str, out: &mut Vec<String>) {
            out.extend(
                node.compilation_errors()
                    .into_iter()
                    .map(|e| format!("{at}: {e}")),
            );
            for (name, child) in &node.properties {
                errors(child, &format!("{at}.{name}"), out);
            }
            let nested = node.items.iter().chain(&node.additional_properties);
            for child in nested {
                errors(child, &format!("{at}[]"), out);
            }
            for child in node.all_of.iter().chain(&node.one_of).chain(&node.any_of) {
                errors(child, at, out);
            }
        }
        let mut found = Vec::new();
        for kind in Kind::ALL {
            errors(&compiled(kind).cel, kind.name(), &mut found);
        }
        assert!(found.is_empty(), "{found:#?}");
    }

    #[test]
    fn type_errors_do_not_mention_null() {
        assert_eq!(
            without_null_type(r#""eighty" is not of types "null", "integer""#),
            r#""eighty" is not of type "integer""#
        );
    }

    #[test]
    fn cel_field_paths_split_into_segments() {
        assert_eq!(
            field_path_segments("spec.hosts[2].name"),
            ["spec", "hosts", "2", "name"]
        );
        assert_eq!(pointer_segments("/spec/a~1b/0"), ["spec", "a/b", "0"]);
    }
}
