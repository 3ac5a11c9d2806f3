//! Secrets read from the API server, by reference, when a reconciler needs them.

use async_trait::async_trait;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;

use crate::secrets::{SecretError, SecretSource};

/// Reads Secrets with the operator's service account (RBAC: `get` on `secrets`).
#[derive(Clone)]
pub struct KubeSecrets {
    client: kube::Client,
}

impl std::fmt::Debug for KubeSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KubeSecrets")
    }
}

impl KubeSecrets {
    pub fn new(client: kube::Client) -> Self {
        Self { client }
    }
}

#[async_trait]
impl SecretSource for KubeSecrets {
    async fn get(&self, namespace: &str, name: &str, key: &str) -> Result<Vec<u8>, SecretError> {
        let api: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
        let secret = api
            .get_opt(name)
            .await
            .map_err(|e| SecretError::Unavailable(e.to_string()))?
            .ok_or_else(|| SecretError::not_found(namespace, name))?;
        let from_data = secret
            .data
            .and_then(|mut data| data.remove(key))
            .map(|bytes| bytes.0);
        let from_string_data = secret
            .string_data
            .and_then(|mut data| data.remove(key))
            .map(String::into_bytes);
        from_data
            .or(from_string_data)
            .ok_or_else(|| SecretError::missing_key(namespace, name, key))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::kubernetes::mock::{ApiServer, Reply};

    #[tokio::test]
    async fn a_secret_key_is_read_and_a_missing_secret_named() {
        let (client, server) = ApiServer::new();
        let slack = || {
            Reply::new(
                "GET",
                "/api/v1/namespaces/ops/secrets/slack",
                200,
                json!({
                    "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "slack"}, "data": {"url": "aHR0cHM6Ly9ob29rcw=="}
                }),
            )
        };
        // Each lookup reads the Secret afresh: a rotated value is used at once.
        let task = tokio::spawn(server.run(vec![
            slack(),
            slack(),
            Reply::new("GET", "/api/v1/namespaces/ops/secrets/gone", 404, json!({
                "kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "secrets \"gone\" not found"
            })),
        ]));
        let secrets = KubeSecrets::new(client);
        assert_eq!(
            secrets.get_text("ops", "slack", "url").await.unwrap(),
            "https://hooks"
        );
        assert_eq!(
            secrets
                .get("ops", "slack", "token")
                .await
                .unwrap_err()
                .to_string(),
            "Secret ops/slack has no key \"token\""
        );
        assert_eq!(
            secrets
                .get("ops", "gone", "url")
                .await
                .unwrap_err()
                .to_string(),
            "Secret ops/gone does not exist"
        );
        task.await.unwrap();
    }
}
