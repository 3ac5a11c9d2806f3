//! Reading and checking manifests: the YAML people write, in files or in a cluster.
//!
//! Every document is read into a [`node::Node`] tree that remembers positions, classified by
//! `apiVersion` and `kind`, and checked the way the API server would check it (metadata, the
//! CRD schema, its CEL rules). A problem names the file, line, column, field and reason. One
//! bad document never hides the others: each document gets its own outcome.

pub mod body;
pub mod node;
pub mod read;
pub mod schema;

use std::fmt;
use std::path::Path;

use k8s_openapi::api::core::v1::Secret;
use serde_json::Value;
use serde_saphyr::{Location, Spanned};

use self::node::Node;
use crate::api::{GROUP, Kind, VERSION};

/// One problem in one manifest document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub file: String,
    pub line: u64,
    pub column: u64,
    /// The field, as `spec.hosts[1]`; empty for the document as a whole.
    pub field: String,
    pub reason: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            // A problem with the file as a whole (it cannot be read): no position to give.
            write!(f, "{}: ", self.file)?;
        } else {
            write!(f, "{}:{}:{}: ", self.file, self.line, self.column)?;
        }
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        f.write_str(&self.reason)
    }
}

/// What a manifest declares.
#[derive(Clone, Debug, PartialEq)]
pub enum Object {
    /// An object of ours, checked against its CRD. Its `status` (if the file had one) is
    /// dropped: status belongs to the operator. Kept as text ([`body::Body`]): the scan keeps
    /// the objects of every unchanged file.
    Custom { kind: Kind, object: body::Body },
    /// A `v1` Secret, which our objects reference.
    Secret(Box<Secret>),
}

/// A checked manifest document and where it came from.
#[derive(Clone, Debug, PartialEq)]
pub struct Manifest {
    pub file: String,
    /// The document's first line in its file.
    pub line: u64,
    pub name: String,
    /// `None` for cluster-scoped kinds.
    pub namespace: Option<String>,
    pub object: Object,
}

impl Manifest {
    pub fn kind_name(&self) -> &str {
        match &self.object {
            Object::Custom { kind, .. } => kind.name(),
            Object::Secret(_) => "Secret",
        }
    }
}

/// The outcome for one document.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    Valid(Manifest),
    /// Not one of ours (a Deployment in the same GitOps directory, say): left alone.
    Skipped {
        file: String,
        line: u64,
        api_version: String,
        kind: String,
    },
    Invalid(Vec<Problem>),
}

/// The namespace given to namespaced objects that name none, as kubectl does.
pub const DEFAULT_NAMESPACE: &str = "default";

/// Reads every document of a YAML text. `file` names it in problems.
pub fn read_str(file: &str, text: &str) -> Vec<Outcome> {
    match serde_saphyr::from_str_multiple::<Spanned<Node>, Vec<_>>(text) {
        Ok(documents) => documents
            .iter()
            .map(|doc| check_document(file, doc))
            .collect(),
        Err(error) => {
            let location = error.location();
            vec![Outcome::Invalid(vec![Problem {
                file: file.to_owned(),
                line: location.map_or(0, |l| l.line()),
                column: location.map_or(0, |l| l.column()),
                field: String::new(),
                reason: format!("not valid YAML: {}", first_line(&error.to_string())),
            }])]
        }
    }
}

/// Reads a manifest file, or every `*.yaml` / `*.yml` file below a directory (sorted, hidden
/// entries skipped). A place that cannot be read is a problem of its own.
pub fn read_path(path: &Path) -> Vec<Outcome> {
    let tree = read::read_tree(path, read::Limits::default());
    let mut outcomes = tree.outcomes;
    outcomes.extend(
        tree.unreadable
            .into_iter()
            .map(|u| Outcome::Invalid(vec![u.problem])),
    );
    outcomes
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or(text)
}

struct Doc<'a> {
    file: &'a str,
    root: &'a Spanned<Node>,
}

impl Doc<'_> {
    fn problem(&self, path: &[String], at_key: bool, reason: impl Into<String>) -> Problem {
        let location: Location = Node::locate(self.root, path, at_key);
        Problem {
            file: self.file.to_owned(),
            line: location.line(),
            column: location.column(),
            field: field_path(path),
            reason: reason.into(),
        }
    }
}

/// `["spec", "hosts", "1"]` → `spec.hosts[1]`.
pub fn field_path(path: &[String]) -> String {
    let mut out = String::new();
    for segment in path {
        if segment.parse::<usize>().is_ok() {
            out.push_str(&format!("[{segment}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(segment);
        }
    }
    out
}

fn path(segments: &[&str]) -> Vec<String> {
    segments.iter().map(|s| (*s).to_owned()).collect()
}

fn check_document(file: &str, root: &Spanned<Node>) -> Outcome {
    let doc = Doc { file, root };
    let line = root.referenced.line();
    let mut object = root.value.to_json();
    let Some(map) = object.as_object_mut() else {
        return Outcome::Invalid(vec![doc.problem(
            &[],
            false,
            "a manifest must be a mapping with apiVersion, kind and metadata",
        )]);
    };
    let text = |key: &str| map.get(key).and_then(Value::as_str).map(str::to_owned);
    let (Some(api_version), Some(kind_name)) = (text("apiVersion"), text("kind")) else {
        let missing = if text("apiVersion").is_none() {
            "apiVersion"
        } else {
            "kind"
        };
        return Outcome::Invalid(vec![doc.problem(
            &[],
            false,
            format!("{missing} is missing"),
        )]);
    };

    let ours = format!("{GROUP}/{VERSION}");
    let kind = match (api_version.as_str(), kind_name.as_str()) {
        (v, k) if v == ours => match Kind::from_name(k) {
            Some(kind) => Some(kind),
            None => {
                let known: Vec<&str> = Kind::ALL.iter().map(|k| k.name()).collect();
                return Outcome::Invalid(vec![doc.problem(
                    &path(&["kind"]),
                    false,
                    format!(
                        "{k} is not a kind of {ours}; the kinds are {}",
                        known.join(", ")
                    ),
                )]);
            }
        },
        (v, _) if v.starts_with(&format!("{GROUP}/")) => {
            return Outcome::Invalid(vec![doc.problem(
                &path(&["apiVersion"]),
                false,
                format!("{v} is not served; use {ours}"),
            )]);
        }
        ("v1", "Secret") => None,
        _ => {
            return Outcome::Skipped {
                file: file.to_owned(),
                line,
                api_version,
                kind: kind_name,
            };
        }
    };

    // Status is the operator's to write; a manifest exported with one is read without it.
    map.remove("status");

    let mut problems = Vec::new();
    let namespaced = kind.is_none_or(Kind::namespaced);
    let (name, namespace) = check_metadata(&doc, &mut object, namespaced, &mut problems);

    let object = match kind {
        Some(kind) => {
            for violation in schema::check(kind, &object, None) {
                problems.push(doc.problem(&violation.path, violation.at_key, violation.reason));
            }
            if problems.is_empty()
                && let Err(error) = typed_check(kind, &object)
            {
                problems.push(doc.problem(&[], false, error));
            }
            Object::Custom {
                kind,
                object: body::Body::new(&object),
            }
        }
        None => match read_secret(&object) {
            Ok(secret) => Object::Secret(Box::new(secret)),
            Err((segments, reason)) => {
                problems.push(doc.problem(&segments, false, reason));
                Object::Secret(Box::default())
            }
        },
    };
    if !problems.is_empty() {
        return Outcome::Invalid(problems);
    }
    Outcome::Valid(Manifest {
        file: file.to_owned(),
        line,
        name,
        namespace,
        object,
    })
}

/// Name and namespace as the API server checks them. The namespace of a namespaced object
/// defaults to `default` and is written into the object.
fn check_metadata(
    doc: &Doc<'_>,
    object: &mut Value,
    namespaced: bool,
    problems: &mut Vec<Problem>,
) -> (String, Option<String>) {
    let metadata = object.get("metadata");
    let name = metadata
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    if name.is_empty() {
        problems.push(doc.problem(
            &path(&["metadata", "name"]),
            false,
            "metadata.name is required",
        ));
    } else if let Some(reason) = dns_subdomain_problem(&name) {
        problems.push(doc.problem(&path(&["metadata", "name"]), false, reason));
    }
    let given = metadata
        .and_then(|m| m.get("namespace"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    let namespace = match (namespaced, given) {
        (true, Some(ns)) => {
            if let Some(reason) = dns_label_problem(&ns) {
                problems.push(doc.problem(&path(&["metadata", "namespace"]), false, reason));
            }
            Some(ns)
        }
        (true, None) => {
            if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
                meta.insert("namespace".to_owned(), DEFAULT_NAMESPACE.into());
            }
            Some(DEFAULT_NAMESPACE.to_owned())
        }
        (false, Some(_)) => {
            problems.push(doc.problem(
                &path(&["metadata", "namespace"]),
                false,
                "this kind is cluster-scoped and takes no namespace",
            ));
            None
        }
        (false, None) => None,
    };
    (name, namespace)
}

fn dns_subdomain_problem(name: &str) -> Option<String> {
    let ok = name.len() <= 253
        && name
            .split('.')
            .all(|label| !label.is_empty() && dns_label_problem(label).is_none());
    (!ok).then(|| format!("{name:?} must be a lower-case name of letters, digits, '-' and '.', starting and ending with a letter or digit, at most 253 characters"))
}

fn dns_label_problem(label: &str) -> Option<String> {
    let bytes = label.as_bytes();
    let ok = !bytes.is_empty()
        && bytes.len() <= 63
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes[0] != b'-'
        && bytes[bytes.len() - 1] != b'-';
    (!ok).then(|| format!("{label:?} must be a lower-case name of letters, digits and '-', starting and ending with a letter or digit, at most 63 characters"))
}

/// The schema has passed, so this only fails where the types are stricter than the schema.
fn typed_check(kind: Kind, object: &Value) -> Result<(), String> {
    use crate::api::{alert, backup, proxy, tenant};
    fn parse<T: serde::de::DeserializeOwned>(object: &Value) -> Result<(), String> {
        serde_json::from_value::<T>(object.clone())
            .map(drop)
            .map_err(|e| e.to_string())
    }
    match kind {
        Kind::Proxy => parse::<proxy::Proxy>(object),
        Kind::AlertChannel => parse::<alert::AlertChannel>(object),
        Kind::AlertRule => parse::<alert::AlertRule>(object),
        Kind::Tenant => parse::<tenant::Tenant>(object),
        Kind::BackupValidationPolicy => parse::<backup::BackupValidationPolicy>(object),
        Kind::BackupValidationRun => parse::<backup::BackupValidationRun>(object),
    }
}

/// A Secret with `stringData` folded into `data`, as the API server stores it.
fn read_secret(object: &Value) -> Result<Secret, (Vec<String>, String)> {
    let mut object = object.clone();
    let string_data = object.as_object_mut().and_then(|m| m.remove("stringData"));
    let mut secret: Secret = serde_json::from_value(object)
        .map_err(|e| (Vec::new(), format!("not a valid Secret: {e}")))?;
    if let Some(string_data) = string_data {
        let Value::Object(entries) = string_data else {
            return Err((
                path(&["stringData"]),
                "stringData must map keys to strings".to_owned(),
            ));
        };
        let data = secret.data.get_or_insert_with(Default::default);
        for (key, value) in entries {
            let Value::String(value) = value else {
                return Err((path(&["stringData", &key]), "must be a string".to_owned()));
            };
            data.insert(key, k8s_openapi::ByteString(value.into_bytes()));
        }
    }
    Ok(secret)
}

#[cfg(test)]
mod tests;
