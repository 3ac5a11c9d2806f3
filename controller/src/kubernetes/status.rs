//! Status written by server-side apply: each controller owns its status fields under its own
//! field manager, and an unchanged status is not written at all.

use kube::api::{Api, Patch, PatchParams};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// The field manager of a controller: `infrapilot.io/<controller>`.
pub fn field_manager(controller: &str) -> String {
    format!("{}/{controller}", crate::api::GROUP)
}

/// The apply patch carrying only the status (with the identifying fields SSA needs).
pub fn status_patch<K: Resource<DynamicType = ()>>(status: &impl Serialize) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    })
}

/// Applies `status` to `object` unless it already has exactly that status. Returns whether a
/// request was made.
pub async fn apply_status<K, S>(
    api: &Api<K>,
    object: &K,
    current: Option<&S>,
    status: &S,
    controller: &str,
) -> kube::Result<bool>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
    S: Serialize + PartialEq,
{
    if current == Some(status) {
        return Ok(false);
    }
    let params = PatchParams::apply(&field_manager(controller)).force();
    api.patch_status(
        &object.name_any(),
        &params,
        &Patch::Apply(status_patch::<K>(status)),
    )
    .await?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::api::alert::{AlertChannel, AlertChannelStatus};
    use crate::kubernetes::mock::{ApiServer, Reply};

    fn channel() -> AlertChannel {
        let mut channel = AlertChannel::new(
            "ops",
            serde_saphyr::from_str("webhook:\n  url: http://127.0.0.1:9/x\n").unwrap(),
        );
        channel.metadata.namespace = Some("default".to_owned());
        channel
    }

    #[tokio::test]
    async fn status_is_applied_with_the_controllers_field_manager_and_only_when_changed() {
        let status = AlertChannelStatus {
            observed_generation: Some(3),
            verified: true,
            ..Default::default()
        };
        let (client, server) = ApiServer::new();
        let expected = Reply::new(
            "PATCH",
            "/apis/infrapilot.io/v1alpha1/namespaces/default/alertchannels/ops/status?&force=true&fieldManager=infrapilot.io%2Falertchannel",
            200,
            serde_json::to_value(channel()).unwrap(),
        )
        .with_content_type("application/apply-patch+yaml")
        .with_body(json!({
            "apiVersion": "infrapilot.io/v1alpha1",
            "kind": "AlertChannel",
            "status": {"observedGeneration": 3, "verified": true, "deliveryFailures": 0},
        }));
        let task = tokio::spawn(server.run(vec![expected]));
        let api: Api<AlertChannel> = Api::namespaced(client, "default");

        assert!(
            apply_status(&api, &channel(), None, &status, "alertchannel")
                .await
                .unwrap()
        );
        // The same status again: no request (the mock would fail on an unexpected one).
        assert!(
            !apply_status(&api, &channel(), Some(&status), &status, "alertchannel")
                .await
                .unwrap()
        );
        task.await.unwrap();
    }
}
