//! Controllers start only once their CRD is established; otherwise the operator says how to
//! install it instead of failing on every watch.

use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Api;

use crate::api::Kind;

/// Why the CRDs are not usable.
#[derive(Debug, thiserror::Error)]
pub enum CrdError {
    #[error(
        "the CustomResourceDefinition {name} is not {state} after {waited:?}: install the CRDs with \
         `kubectl apply -f crds/` (or `infrapilot crd | kubectl apply -f -`) and start again"
    )]
    NotEstablished {
        name: String,
        state: &'static str,
        waited: Duration,
    },
    #[error("cannot read the CustomResourceDefinitions: {0}")]
    Api(#[from] kube::Error),
}

fn established(crd: &CustomResourceDefinition) -> bool {
    crd.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|conditions| {
            conditions
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True")
        })
}

/// Waits until the CRD of every kind in `kinds` is established, checking every `interval`
/// for at most `timeout`.
pub async fn wait_established(
    client: kube::Client,
    kinds: &[Kind],
    timeout: Duration,
    interval: Duration,
) -> Result<(), CrdError> {
    let api: Api<CustomResourceDefinition> = Api::all(client);
    let started = tokio::time::Instant::now();
    for kind in kinds {
        let name = format!("{}.{}", kind.plural(), crate::api::GROUP);
        loop {
            let state = match api.get_opt(&name).await? {
                Some(crd) if established(&crd) => break,
                Some(_) => "established",
                None => "installed",
            };
            if started.elapsed() >= timeout {
                return Err(CrdError::NotEstablished {
                    name,
                    state,
                    waited: timeout,
                });
            }
            tokio::time::sleep(interval).await;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::kubernetes::mock::{ApiServer, Reply};

    const PATH: &str =
        "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/alertchannels.infrapilot.io";

    fn crd(established: &str) -> serde_json::Value {
        let mut crd = serde_json::to_value(Kind::AlertChannel.crd()).unwrap();
        crd["status"] = json!({"conditions": [{"type": "Established", "status": established}]});
        crd
    }

    #[tokio::test]
    async fn the_operator_waits_for_a_crd_to_become_established() {
        let (client, server) = ApiServer::new();
        let task = tokio::spawn(server.run(vec![
            Reply::new("GET", PATH, 200, crd("False")),
            Reply::new("GET", PATH, 200, crd("True")),
        ]));
        wait_established(
            client,
            &[Kind::AlertChannel],
            Duration::from_secs(5),
            Duration::from_millis(1),
        )
        .await
        .unwrap();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn a_missing_crd_ends_with_an_install_hint() {
        let (client, server) = ApiServer::new();
        let not_found = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404});
        let task = tokio::spawn(server.run(vec![Reply::new("GET", PATH, 404, not_found)]));
        let error = wait_established(
            client,
            &[Kind::AlertChannel],
            Duration::ZERO,
            Duration::from_millis(1),
        )
        .await
        .unwrap_err();
        let message = error.to_string();
        assert!(
            message.starts_with(
                "the CustomResourceDefinition alertchannels.infrapilot.io is not installed"
            ),
            "{message}"
        );
        assert!(message.contains("kubectl apply -f crds/"), "{message}");
        task.await.unwrap();
    }
}
