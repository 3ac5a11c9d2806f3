//! Secrets by reference. Objects name a Secret and a key; the value is looked up when needed,
//! used, and never written into status, events, logs or the audit log.

use std::collections::BTreeMap;
use std::sync::RwLock;

use async_trait::async_trait;

/// Why a secret value could not be had. The messages name the Secret and key, never a value.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("Secret {namespace}/{name} does not exist")]
    NotFound { namespace: String, name: String },
    #[error("Secret {namespace}/{name} has no key {key:?}")]
    MissingKey {
        namespace: String,
        name: String,
        key: String,
    },
    #[error("Secret {namespace}/{name} key {key:?} is not UTF-8 text")]
    NotText {
        namespace: String,
        name: String,
        key: String,
    },
    #[error("Secrets cannot be read: {0}")]
    Unavailable(String),
}

impl SecretError {
    /// `unreachable` when the API could not be asked, else `secret` (a person must fix it).
    pub fn category(&self) -> crate::retry::Category {
        use crate::retry::Category;
        match self {
            SecretError::Unavailable(_) => Category::Unreachable,
            _ => Category::Secret,
        }
    }

    pub fn not_found(namespace: &str, name: &str) -> Self {
        SecretError::NotFound {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        }
    }

    pub fn missing_key(namespace: &str, name: &str, key: &str) -> Self {
        SecretError::MissingKey {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            key: key.to_owned(),
        }
    }
}

/// Where secret values come from: the API server in Kubernetes mode, Secret manifests in
/// standalone mode.
#[async_trait]
pub trait SecretSource: Send + Sync {
    async fn get(&self, namespace: &str, name: &str, key: &str) -> Result<Vec<u8>, SecretError>;

    /// The value as text (URLs, passwords).
    async fn get_text(
        &self,
        namespace: &str,
        name: &str,
        key: &str,
    ) -> Result<String, SecretError> {
        let bytes = self.get(namespace, name, key).await?;
        String::from_utf8(bytes).map_err(|_| SecretError::NotText {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            key: key.to_owned(),
        })
    }
}

/// Secrets by (namespace, name), each a map of key to value.
pub type Secrets = BTreeMap<(String, String), BTreeMap<String, Vec<u8>>>;

/// Secrets held in memory, as standalone mode reads them from Secret manifests; replaced as a
/// whole whenever the manifests are read again.
#[derive(Debug, Default)]
pub struct SecretMap {
    secrets: RwLock<Secrets>,
}

impl SecretMap {
    /// Replaces every secret with `secrets`: ((namespace, name), key → value).
    pub fn replace(&self, secrets: Secrets) {
        *self
            .secrets
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = secrets;
    }

    pub fn insert(&self, namespace: &str, name: &str, data: BTreeMap<String, Vec<u8>>) {
        self.secrets
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert((namespace.to_owned(), name.to_owned()), data);
    }
}

#[async_trait]
impl SecretSource for SecretMap {
    async fn get(&self, namespace: &str, name: &str, key: &str) -> Result<Vec<u8>, SecretError> {
        let secrets = self
            .secrets
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let data = secrets
            .get(&(namespace.to_owned(), name.to_owned()))
            .ok_or_else(|| SecretError::not_found(namespace, name))?;
        data.get(key)
            .cloned()
            .ok_or_else(|| SecretError::missing_key(namespace, name, key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lookups_name_the_secret_and_key_but_never_a_value() {
        let secrets = SecretMap::default();
        secrets.insert(
            "ops",
            "smtp",
            BTreeMap::from([("password".to_owned(), b"hunter2".to_vec())]),
        );
        assert_eq!(
            secrets.get_text("ops", "smtp", "password").await.unwrap(),
            "hunter2"
        );
        let missing = secrets
            .get("ops", "smtp", "user")
            .await
            .unwrap_err()
            .to_string();
        assert_eq!(missing, "Secret ops/smtp has no key \"user\"");
        let absent = secrets
            .get("dev", "smtp", "password")
            .await
            .unwrap_err()
            .to_string();
        assert_eq!(absent, "Secret dev/smtp does not exist");
        secrets.insert("ops", "bin", BTreeMap::from([("k".to_owned(), vec![0xff])]));
        let binary = secrets
            .get_text("ops", "bin", "k")
            .await
            .unwrap_err()
            .to_string();
        assert!(
            !binary.contains("255") && binary.contains("not UTF-8"),
            "{binary}"
        );
    }
}
