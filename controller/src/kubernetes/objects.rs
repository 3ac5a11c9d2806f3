//! Other objects as reconcilers see them ([`crate::runtime::objects`]), through the API server.

use kube::Api;
use kube::api::{ApiResource, DeleteParams, DynamicObject, ListParams, PostParams};
use serde_json::Value;

use crate::api::{GROUP, Kind, VERSION};
use crate::reconcile::{Category, Failure};
use crate::runtime::objects::{ObjectStore, Selector};

/// Objects of every kind, by the API server's dynamic client.
#[derive(Clone)]
pub struct KubeObjects {
    client: kube::Client,
}

impl std::fmt::Debug for KubeObjects {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KubeObjects")
    }
}

impl KubeObjects {
    pub fn new(client: kube::Client) -> Self {
        Self { client }
    }

    fn api(&self, kind: Kind, namespace: &str) -> Api<DynamicObject> {
        let resource = resource(kind);
        if kind.namespaced() {
            Api::namespaced_with(self.client.clone(), namespace, &resource)
        } else {
            Api::all_with(self.client.clone(), &resource)
        }
    }
}

/// The API resource of an InfraPilot kind.
pub fn resource(kind: Kind) -> ApiResource {
    ApiResource {
        group: GROUP.to_owned(),
        version: VERSION.to_owned(),
        api_version: format!("{GROUP}/{VERSION}"),
        kind: kind.name().to_owned(),
        plural: kind.plural().to_owned(),
    }
}

fn failure(error: kube::Error) -> Failure {
    let category = match &error {
        kube::Error::Api(_) => Category::Kubernetes,
        _ => Category::Unreachable,
    };
    Failure {
        category,
        message: format!("the Kubernetes API: {error}"),
    }
}

fn status_code(error: &kube::Error) -> Option<u16> {
    match error {
        kube::Error::Api(status) => Some(status.code),
        _ => None,
    }
}

fn live(object: DynamicObject) -> Option<Value> {
    if object.metadata.deletion_timestamp.is_some() {
        return None;
    }
    serde_json::to_value(object).ok()
}

/// The live objects `api` lists that `selector` selects.
async fn select(api: Api<DynamicObject>, selector: &Selector) -> Result<Vec<Value>, Failure> {
    let mut params = ListParams::default();
    if !selector.labels.is_empty() {
        let labels: Vec<String> = selector
            .labels
            .iter()
            .map(|(key, value)| format!("{key}={value}"))
            .collect();
        params = params.labels(&labels.join(","));
    }
    let list = api.list(&params).await.map_err(failure)?;
    // Selected again here: the owner is not a server-side filter.
    Ok(list
        .items
        .into_iter()
        .filter_map(live)
        .filter(|object| selector.matches(object))
        .collect())
}

#[async_trait::async_trait]
impl ObjectStore for KubeObjects {
    async fn get(&self, kind: Kind, namespace: &str, name: &str) -> Result<Option<Value>, Failure> {
        let object = self
            .api(kind, namespace)
            .get_opt(name)
            .await
            .map_err(failure)?;
        Ok(object.and_then(live))
    }

    async fn list(
        &self,
        kind: Kind,
        namespace: &str,
        selector: &Selector,
    ) -> Result<Vec<Value>, Failure> {
        select(self.api(kind, namespace), selector).await
    }

    async fn list_all(&self, kind: Kind, selector: &Selector) -> Result<Vec<Value>, Failure> {
        select(
            Api::all_with(self.client.clone(), &resource(kind)),
            selector,
        )
        .await
    }

    async fn create(&self, kind: Kind, object: Value) -> Result<(), Failure> {
        let object: DynamicObject = serde_json::from_value(object).map_err(|error| Failure {
            category: Category::Internal,
            message: format!("a {} cannot be sent: {error}", kind.name()),
        })?;
        let namespace = object.metadata.namespace.clone().unwrap_or_default();
        match self
            .api(kind, &namespace)
            .create(&PostParams::default(), &object)
            .await
        {
            Ok(_) => Ok(()),
            Err(error) if status_code(&error) == Some(409) => Ok(()),
            Err(error) => Err(failure(error)),
        }
    }

    async fn delete(&self, kind: Kind, namespace: &str, name: &str) -> Result<(), Failure> {
        match self
            .api(kind, namespace)
            .delete(name, &DeleteParams::background())
            .await
        {
            Ok(_) => Ok(()),
            Err(error) if status_code(&error) == Some(404) => Ok(()),
            Err(error) => Err(failure(error)),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use std::sync::Arc;

    use super::*;
    use crate::api::backup::BackupValidationRun;
    use crate::kubernetes::mock::{ApiServer, Reply};
    use crate::runtime::objects::Objects;

    fn run_json(name: &str, policy: &str) -> serde_json::Value {
        json!({"apiVersion": "infrapilot.io/v1alpha1", "kind": "BackupValidationRun",
               "metadata": {"name": name, "namespace": "shop"},
               "spec": {"policyRef": {"name": policy}}})
    }

    #[tokio::test]
    async fn objects_are_created_once_listed_and_deleted_idempotently() {
        let (client, server) = ApiServer::new();
        let path = "/apis/infrapilot.io/v1alpha1/namespaces/shop/backupvalidationruns";
        let conflict = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
            "reason": "AlreadyExists", "code": 409, "message": "already exists"});
        let gone = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
            "reason": "NotFound", "code": 404, "message": "not found"});
        let task = tokio::spawn(server.run(vec![
            Reply::new("POST", &format!("{path}?"), 201, run_json("nightly-1", "nightly"))
                .with_body_field("/metadata/ownerReferences/0/uid", json!("policy-uid"))
                .with_body_field("/spec/policyRef/name", json!("nightly")),
            // A restarted operator creating the same scheduled run again.
            Reply::new("POST", &format!("{path}?"), 409, conflict),
            Reply::new(
                "GET",
                &format!("{path}?"),
                200,
                json!({"apiVersion": "infrapilot.io/v1alpha1", "kind": "BackupValidationRunList",
                       "metadata": {}, "items": [run_json("nightly-1", "nightly"), run_json("other-1", "other")]}),
            ),
            Reply::new("DELETE", &format!("{path}/nightly-1?"), 200, run_json("nightly-1", "nightly")),
            Reply::new("DELETE", &format!("{path}/nightly-1?"), 404, gone),
        ]));
        let objects = Objects(Arc::new(KubeObjects::new(client)));
        let mut run: BackupValidationRun =
            serde_json::from_value(run_json("nightly-1", "nightly")).unwrap();
        run.metadata.owner_references = Some(vec![
            k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
                api_version: "infrapilot.io/v1alpha1".into(),
                kind: "BackupValidationPolicy".into(),
                name: "nightly".into(),
                uid: "policy-uid".into(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            },
        ]);
        objects.create(&run).await.unwrap();
        objects.create(&run).await.unwrap();
        let runs: Vec<BackupValidationRun> =
            objects.list("shop", &Selector::everything()).await.unwrap();
        assert_eq!(runs.len(), 2);
        assert_eq!(runs[0].metadata.name.as_deref(), Some("nightly-1"));
        objects
            .delete::<BackupValidationRun>("shop", "nightly-1")
            .await
            .unwrap();
        objects
            .delete::<BackupValidationRun>("shop", "nightly-1")
            .await
            .unwrap();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn objects_are_listed_in_every_namespace_without_those_being_deleted() {
        let (client, server) = ApiServer::new();
        let proxy = |namespace: &str, name: &str, deleting: bool| {
            let mut metadata = json!({"name": name, "namespace": namespace});
            if deleting {
                metadata["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
            }
            json!({"apiVersion": "infrapilot.io/v1alpha1", "kind": "Proxy", "metadata": metadata,
                   "spec": {"hosts": ["a.example.com"], "upstream": {"url": "http://10.0.0.5"}}})
        };
        let task = tokio::spawn(server.run(vec![Reply::new(
            "GET",
            "/apis/infrapilot.io/v1alpha1/proxies?",
            200,
            json!({"apiVersion": "infrapilot.io/v1alpha1", "kind": "ProxyList", "metadata": {},
                   "items": [proxy("team-a", "shop", false), proxy("team-b", "shop", false),
                             proxy("team-c", "gone", true)]}),
        )]));
        let objects = Objects(Arc::new(KubeObjects::new(client)));
        let proxies: Vec<crate::api::proxy::Proxy> =
            objects.list_all(&Selector::everything()).await.unwrap();
        let found: Vec<_> = proxies
            .iter()
            .map(|p| p.metadata.namespace.clone().unwrap_or_default())
            .collect();
        assert_eq!(found, ["team-a", "team-b"]);
        task.await.unwrap();
    }
}
