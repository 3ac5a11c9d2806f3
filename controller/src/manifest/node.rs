//! YAML read into a tree that remembers where each value was written, so that an error found
//! later (by the schema, by CEL rules, by a reconciler) can name the line and column.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;
use serde_saphyr::{Location, Spanned};

/// A YAML value with the location of every value inside it.
#[derive(Clone, Debug, PartialEq)]
pub enum Node {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Str(String),
    Seq(Vec<Spanned<Node>>),
    Map(Vec<(Spanned<String>, Spanned<Node>)>),
}

impl Node {
    /// The same value as JSON, the form schemas and typed deserialisation work on.
    pub fn to_json(&self) -> Value {
        match self {
            Node::Null => Value::Null,
            Node::Bool(b) => Value::Bool(*b),
            Node::Int(i) => Value::from(*i),
            Node::UInt(u) => Value::from(*u),
            Node::Float(f) => serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number),
            Node::Str(s) => Value::String(s.clone()),
            Node::Seq(items) => Value::Array(items.iter().map(|i| i.value.to_json()).collect()),
            Node::Map(entries) => Value::Object(
                entries
                    .iter()
                    .map(|(k, v)| (k.value.clone(), v.value.to_json()))
                    .collect(),
            ),
        }
    }

    /// The location of the value at `path` (field names and list indexes), or of the deepest
    /// ancestor that exists. With `key` set, the location of the last field's key rather than
    /// its value (for "unknown field" errors).
    pub fn locate(this: &Spanned<Node>, path: &[String], key: bool) -> Location {
        let mut node = this;
        let mut location = this.referenced;
        for (i, segment) in path.iter().enumerate() {
            let last = i + 1 == path.len();
            match &node.value {
                Node::Map(entries) => match entries.iter().find(|(k, _)| &k.value == segment) {
                    Some((k, v)) => {
                        location = if last && key {
                            k.referenced
                        } else {
                            v.referenced
                        };
                        node = v;
                    }
                    None => return location,
                },
                Node::Seq(items) => {
                    match segment.parse::<usize>().ok().and_then(|i| items.get(i)) {
                        Some(item) => {
                            location = item.referenced;
                            node = item;
                        }
                        None => return location,
                    }
                }
                _ => return location,
            }
        }
        location
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_unit<E>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }

    fn visit_none<E>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Node, D::Error> {
        Node::deserialize(deserializer)
    }

    fn visit_bool<E>(self, v: bool) -> Result<Node, E> {
        Ok(Node::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Node, E> {
        Ok(Node::Int(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Node, E> {
        Ok(Node::UInt(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Node, E> {
        Ok(Node::Float(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<Node, E> {
        Ok(Node::Str(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Node, E> {
        Ok(Node::Str(v))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Spanned<Node>>()? {
            items.push(item);
        }
        Ok(Node::Seq(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut entries: Vec<(Spanned<String>, Spanned<Node>)> = Vec::new();
        while let Some(key) = map.next_key::<Spanned<String>>()? {
            if entries.iter().any(|(k, _)| k.value == key.value) {
                return Err(de::Error::custom(format!("duplicate key `{}`", key.value)));
            }
            let value = map.next_value::<Spanned<Node>>()?;
            entries.push((key, value));
        }
        Ok(Node::Map(entries))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Spanned<Node> {
        serde_saphyr::from_str(yaml).expect("valid YAML")
    }

    #[test]
    fn values_convert_to_json() {
        let node = parse("a: 1\nb: [x, true, null, 2.5]\nc: {d: -3}\n");
        assert_eq!(
            node.value.to_json(),
            serde_json::json!({"a": 1, "b": ["x", true, null, 2.5], "c": {"d": -3}})
        );
    }

    #[test]
    fn paths_are_located_at_their_line_and_column() {
        let node =
            parse("spec:\n  hosts:\n    - a.example\n    - b.example\n  upstream:\n    port: 80\n");
        let at = |path: &[&str], key| {
            let path: Vec<String> = path.iter().map(|s| (*s).to_owned()).collect();
            let l = Node::locate(&node, &path, key);
            (l.line(), l.column())
        };
        assert_eq!(at(&["spec", "hosts", "1"], false), (4, 7));
        assert_eq!(at(&["spec", "upstream", "port"], false), (6, 11));
        assert_eq!(at(&["spec", "upstream", "port"], true), (6, 5));
        // A missing field is reported at its nearest existing parent.
        assert_eq!(at(&["spec", "upstream", "name"], false), (6, 5));
    }

    #[test]
    fn duplicate_keys_are_rejected() {
        let error = serde_saphyr::from_str::<Spanned<Node>>("a: 1\na: 2\n").unwrap_err();
        assert!(error.to_string().contains("duplicate"), "{error}");
    }
}
