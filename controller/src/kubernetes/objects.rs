//! The backup reconcilers' view of the other objects, through the API server.
//!
//! Runs are listed per namespace and matched on `spec.policyRef` rather than selected by
//! label: hand-made runs need not carry the label.

use async_trait::async_trait;
use kube::Api;
use kube::api::{DeleteParams, ListParams, PostParams};

use crate::api::alert::AlertChannel;
use crate::api::backup::{BackupValidationPolicy, BackupValidationRun};
use crate::reconcile::Failure;
use crate::reconcile::backup::BackupObjects;

/// RBAC: get on policies and channels; list, create and delete on runs.
#[derive(Clone)]
pub struct KubeBackupObjects {
    client: kube::Client,
}

impl std::fmt::Debug for KubeBackupObjects {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KubeBackupObjects")
    }
}

impl KubeBackupObjects {
    pub fn new(client: kube::Client) -> Self {
        Self { client }
    }
}

fn failure(error: kube::Error) -> Failure {
    let category = match &error {
        kube::Error::Api(_) => "api",
        _ => "unreachable",
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

#[async_trait]
impl BackupObjects for KubeBackupObjects {
    async fn policy(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<BackupValidationPolicy>, Failure> {
        let api: Api<BackupValidationPolicy> = Api::namespaced(self.client.clone(), namespace);
        api.get_opt(name).await.map_err(failure)
    }

    async fn runs(
        &self,
        namespace: &str,
        policy: &str,
    ) -> Result<Vec<BackupValidationRun>, Failure> {
        let api: Api<BackupValidationRun> = Api::namespaced(self.client.clone(), namespace);
        let list = api.list(&ListParams::default()).await.map_err(failure)?;
        Ok(list
            .items
            .into_iter()
            .filter(|run| run.spec.policy_ref.name == policy)
            .filter(|run| run.metadata.deletion_timestamp.is_none())
            .collect())
    }

    async fn create_run(&self, run: &BackupValidationRun) -> Result<(), Failure> {
        let namespace = run.metadata.namespace.as_deref().unwrap_or("default");
        let api: Api<BackupValidationRun> = Api::namespaced(self.client.clone(), namespace);
        match api.create(&PostParams::default(), run).await {
            Ok(_) => Ok(()),
            Err(error) if status_code(&error) == Some(409) => Ok(()),
            Err(error) => Err(failure(error)),
        }
    }

    async fn delete_run(&self, namespace: &str, name: &str) -> Result<(), Failure> {
        let api: Api<BackupValidationRun> = Api::namespaced(self.client.clone(), namespace);
        match api.delete(name, &DeleteParams::background()).await {
            Ok(_) => Ok(()),
            Err(error) if status_code(&error) == Some(404) => Ok(()),
            Err(error) => Err(failure(error)),
        }
    }

    async fn channel(&self, namespace: &str, name: &str) -> Result<Option<AlertChannel>, Failure> {
        let api: Api<AlertChannel> = Api::namespaced(self.client.clone(), namespace);
        api.get_opt(name).await.map_err(failure)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::kubernetes::mock::{ApiServer, Reply};

    fn run_json(name: &str, policy: &str) -> serde_json::Value {
        json!({"apiVersion": "infrapilot.io/v1alpha1", "kind": "BackupValidationRun",
               "metadata": {"name": name, "namespace": "shop"},
               "spec": {"policyRef": {"name": policy}}})
    }

    #[tokio::test]
    async fn runs_are_created_once_listed_by_policy_and_deleted_idempotently() {
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
        let objects = KubeBackupObjects::new(client);
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
        objects.create_run(&run).await.unwrap();
        objects.create_run(&run).await.unwrap();
        let runs = objects.runs("shop", "nightly").await.unwrap();
        assert_eq!(runs.len(), 1);
        assert_eq!(runs[0].metadata.name.as_deref(), Some("nightly-1"));
        objects.delete_run("shop", "nightly-1").await.unwrap();
        objects.delete_run("shop", "nightly-1").await.unwrap();
        task.await.unwrap();
    }
}
