//! A checked object as it is kept between its check and the store: its compact JSON text and
//! the two hashes the store compares, rather than a `serde_json::Value`.
//!
//! The scan keeps every unchanged file's objects from one scan to the next, so that they are
//! not parsed and checked again. As `Value`s, 10,000 small objects took about 35 MB (every map
//! a B-tree of boxed strings), a third of the operator's memory; as text they take a tenth of
//! that. A `Value` is made again only when the store takes a new version of the object.

use std::sync::Arc;

use serde_json::Value;
use sha2::{Digest, Sha256};

/// An object's compact JSON text with the hashes of the whole and of its `spec`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Body {
    /// Shared: the scan's cache, the scan and the store's write hold one text.
    text: Arc<str>,
    spec_hash: [u8; 32],
    object_hash: [u8; 32],
}

impl Body {
    pub fn new(object: &Value) -> Body {
        let text = object.to_string();
        let spec = object.get("spec").unwrap_or(&Value::Null).to_string();
        Body {
            object_hash: Sha256::digest(text.as_bytes()).into(),
            spec_hash: Sha256::digest(spec.as_bytes()).into(),
            text: text.into(),
        }
    }

    /// The object, parsed again from its text.
    pub fn value(&self) -> Value {
        // The text was written by serde_json from a `Value`, so it reads back as the same value.
        serde_json::from_str(&self.text).expect("a Body's text is JSON that serde_json wrote")
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    /// Hex SHA-256 of the compact text of `spec` (of `null` without one): a new generation when
    /// it changes.
    pub fn spec_hash(&self) -> String {
        hex::encode(self.spec_hash)
    }

    /// Hex SHA-256 of the whole text: metadata edits show here.
    pub fn object_hash(&self) -> String {
        hex::encode(self.object_hash)
    }
}

impl From<Value> for Body {
    fn from(object: Value) -> Body {
        Body::new(&object)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_body_reads_back_as_its_value_and_hashes_the_compact_text() {
        let object = json!({"kind": "Proxy", "metadata": {"name": "web", "labels": {"a": "ü\"1"}}, "spec": {"port": 8080, "ratio": 0.5, "big": u64::MAX}});
        let body = Body::new(&object);
        assert_eq!(body.value(), object);
        assert_eq!(body.text(), object.to_string());
        // The hashes the store has always recorded: stored objects keep their generation.
        assert_eq!(
            body.object_hash(),
            hex::encode(Sha256::digest(object.to_string()))
        );
        assert_eq!(
            body.spec_hash(),
            hex::encode(Sha256::digest(object["spec"].to_string()))
        );
        assert_eq!(
            Body::new(&json!({"kind": "Tenant"})).spec_hash(),
            hex::encode(Sha256::digest("null"))
        );
        // A label edit changes the object's hash, not the spec's.
        let mut relabelled = object.clone();
        relabelled["metadata"]["labels"]["a"] = json!("2");
        let relabelled = Body::new(&relabelled);
        assert_ne!(relabelled.object_hash(), body.object_hash());
        assert_eq!(relabelled.spec_hash(), body.spec_hash());
    }
}
