//! From an AlertChannel's spec to a deliverable [`Target`], looking up its secrets.

use super::{SmtpTarget, Target};
use crate::api::alert::AlertChannelSpec;
use crate::api::common::SecretKeySelector;
use crate::secrets::{SecretError, SecretSource};

/// Why a channel cannot be turned into a target.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    #[error("{field}: {source}")]
    Secret { field: String, source: SecretError },
    #[error("the spec sets none of smtp, slack or webhook")]
    NoDestination,
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
}

impl ResolveError {
    pub fn category(&self) -> crate::retry::Category {
        use crate::retry::Category;
        match self {
            ResolveError::Secret { source, .. } => source.category(),
            ResolveError::NoDestination | ResolveError::Invalid { .. } => Category::Invalid,
        }
    }
}

/// Resolves `spec` (of an object in `namespace`) into a target with its secret values.
pub async fn resolve(
    spec: &AlertChannelSpec,
    namespace: &str,
    secrets: &dyn SecretSource,
) -> Result<Target, ResolveError> {
    let secret = |field: &'static str, selector: &SecretKeySelector| {
        let (name, key) = (selector.name.clone(), selector.key.clone());
        async move {
            secrets
                .get_text(namespace, &name, &key)
                .await
                .map_err(|source| ResolveError::Secret {
                    field: field.to_owned(),
                    source,
                })
        }
    };
    if let Some(smtp) = &spec.smtp {
        if let Some(pem) = &smtp.ca_bundle {
            super::smtp::check_ca_bundle(pem).map_err(|reason| ResolveError::Invalid {
                field: "spec.smtp.caBundle".to_owned(),
                reason,
            })?;
        }
        let credentials = match (&smtp.username_secret_ref, &smtp.password_secret_ref) {
            (Some(user), Some(password)) => Some((
                secret("spec.smtp.usernameSecretRef", user).await?,
                secret("spec.smtp.passwordSecretRef", password).await?,
            )),
            (None, Some(password)) => {
                // Many relays take the sender address as the login name.
                Some((
                    smtp.from.clone(),
                    secret("spec.smtp.passwordSecretRef", password).await?,
                ))
            }
            _ => None,
        };
        return Ok(Target::Smtp(SmtpTarget {
            host: smtp.host.clone(),
            port: smtp.port,
            tls: smtp.tls,
            from: smtp.from.clone(),
            to: smtp.to.clone(),
            credentials,
            ca_bundle: smtp.ca_bundle.clone(),
        }));
    }
    if let Some(slack) = &spec.slack {
        return Ok(Target::Slack {
            webhook_url: secret(
                "spec.slack.webhookUrlSecretRef",
                &slack.webhook_url_secret_ref,
            )
            .await?,
            channel: slack.channel.clone(),
        });
    }
    if let Some(webhook) = &spec.webhook {
        let url = match (&webhook.url, &webhook.url_secret_ref) {
            (Some(url), _) => url.clone(),
            (None, Some(selector)) => secret("spec.webhook.urlSecretRef", selector).await?,
            (None, None) => return Err(ResolveError::NoDestination),
        };
        let mut headers = Vec::new();
        for header in &webhook.headers {
            let value = match (&header.value, &header.value_from) {
                (Some(value), _) => value.clone(),
                (None, Some(selector)) => {
                    secret("spec.webhook.headers.valueFrom", selector).await?
                }
                (None, None) => String::new(),
            };
            headers.push((header.name.clone(), value));
        }
        return Ok(Target::Webhook {
            url,
            method: webhook.method,
            headers,
        });
    }
    Err(ResolveError::NoDestination)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::secrets::SecretMap;

    fn spec(yaml: &str) -> AlertChannelSpec {
        serde_saphyr::from_str(yaml).unwrap()
    }

    #[tokio::test]
    async fn secrets_are_looked_up_in_the_objects_namespace() {
        let secrets = SecretMap::default();
        secrets.insert(
            "ops",
            "slack",
            BTreeMap::from([(
                "url".to_owned(),
                b"https://hooks.example.com/T/B/X".to_vec(),
            )]),
        );
        let target = resolve(
            &spec("slack:\n  webhookUrlSecretRef: {name: slack, key: url}\n"),
            "ops",
            &secrets,
        )
        .await
        .unwrap();
        assert_eq!(
            target,
            Target::Slack {
                webhook_url: "https://hooks.example.com/T/B/X".to_owned(),
                channel: None
            }
        );
        // Debug output never shows the secret URL.
        assert_eq!(format!("{target:?}"), "Slack");

        let error = resolve(
            &spec("slack:\n  webhookUrlSecretRef: {name: slack, key: url}\n"),
            "dev",
            &secrets,
        )
        .await
        .unwrap_err();
        assert_eq!(
            error.to_string(),
            "spec.slack.webhookUrlSecretRef: Secret dev/slack does not exist"
        );
        assert_eq!(error.category(), crate::retry::Category::Secret);
    }

    #[tokio::test]
    async fn webhook_headers_take_values_inline_or_from_secrets() {
        let secrets = SecretMap::default();
        secrets.insert(
            "default",
            "token",
            BTreeMap::from([("t".to_owned(), b"Bearer abc".to_vec())]),
        );
        let yaml = "webhook:\n  url: http://127.0.0.1:9/x\n  method: PUT\n  headers:\n    - {name: X-A, value: one}\n    - {name: Authorization, valueFrom: {name: token, key: t}}\n";
        let Target::Webhook {
            url,
            method,
            headers,
        } = resolve(&spec(yaml), "default", &secrets).await.unwrap()
        else {
            panic!("a webhook target")
        };
        assert_eq!(url, "http://127.0.0.1:9/x");
        assert_eq!(method, crate::api::alert::WebhookMethod::PUT);
        assert_eq!(
            headers,
            [
                ("X-A".to_owned(), "one".to_owned()),
                ("Authorization".to_owned(), "Bearer abc".to_owned())
            ]
        );
    }
}
