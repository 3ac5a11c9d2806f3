//! Certificates from an ACME server (Let's Encrypt) over HTTP-01, with instant-acme. The edge
//! answers the challenges: its port-80 server has a location for them, and the answers are
//! files written into it (no reload needed).

use std::time::Duration;

use async_trait::async_trait;
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};

/// Publishes HTTP-01 answers, and keeps ACME account credentials (a private key: kept where
/// certificate keys are kept, never logged).
#[async_trait]
pub trait ChallengeResponder: Send + Sync {
    async fn publish(&self, token: &str, key_authorization: &str) -> Result<(), String>;
    /// The stored credentials of the account `name`, if any.
    async fn account(&self, name: &str) -> Result<Option<String>, String>;
    async fn save_account(&self, name: &str, credentials: &str) -> Result<(), String>;
}

/// The name an account is stored under: one per ACME server and e-mail address.
pub fn account_name(request: &Request) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(format!("{}\n{}", request.directory, request.email).as_bytes());
    format!("account-{}", &hex::encode(digest)[..16])
}

/// A certificate chain (leaf first) and its private key, both PEM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Issued {
    pub chain_pem: String,
    pub key_pem: String,
}

/// What to ask for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub directory: String,
    /// PEM of the CA that signs the ACME server's own HTTPS certificate, for a private ACME
    /// server; `None` trusts the system's roots.
    pub ca_bundle: Option<String>,
    pub email: String,
    pub hosts: Vec<String>,
}

/// Issues certificates.
#[async_trait]
pub trait Issuer: Send + Sync {
    async fn issue(
        &self,
        request: &Request,
        responder: &dyn ChallengeResponder,
    ) -> Result<Issued, String>;
}

/// Let's Encrypt's production directory, the default server.
pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";

/// An ACME token is base64url: anything else never becomes a file name.
pub fn valid_token(token: &str) -> bool {
    !token.is_empty()
        && token.len() <= 256
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The ACME client, instant-acme over rustls with ring.
#[derive(Debug, Default)]
pub struct AcmeIssuer;

#[async_trait]
impl Issuer for AcmeIssuer {
    async fn issue(
        &self,
        request: &Request,
        responder: &dyn ChallengeResponder,
    ) -> Result<Issued, String> {
        let fail = |what: &str, e: instant_acme::Error| format!("{what}: {e}");
        let builder = match &request.ca_bundle {
            Some(pem) => {
                // instant-acme reads a custom root from a file.
                let file = tempfile_with(pem).map_err(|e| format!("the CA bundle: {e}"))?;
                Account::builder_with_root(file.path())
            }
            None => Account::builder(),
        }
        .map_err(|e| fail("the ACME client", e))?;
        let name = account_name(request);
        let stored = responder
            .account(&name)
            .await?
            .and_then(|json| serde_json::from_str::<AccountCredentials>(&json).ok());
        let account = match stored {
            Some(credentials) => builder
                .from_credentials(credentials)
                .await
                .map_err(|e| fail("restoring the ACME account", e))?,
            None => {
                let contact = format!("mailto:{}", request.email);
                let (account, credentials) = builder
                    .create(
                        &NewAccount {
                            contact: &[&contact],
                            terms_of_service_agreed: true,
                            only_return_existing: false,
                        },
                        request.directory.clone(),
                        None,
                    )
                    .await
                    .map_err(|e| fail("creating the ACME account", e))?;
                let json = serde_json::to_string(&credentials)
                    .map_err(|e| format!("storing the ACME account: {e}"))?;
                responder.save_account(&name, &json).await?;
                tracing::info!(server = %request.directory, "registered an ACME account");
                account
            }
        };
        let identifiers: Vec<Identifier> = request
            .hosts
            .iter()
            .map(|h| Identifier::Dns(h.clone()))
            .collect();
        let mut order = account
            .new_order(&NewOrder::new(&identifiers))
            .await
            .map_err(|e| fail("placing the order", e))?;
        let mut authorizations = order.authorizations();
        while let Some(authorization) = authorizations.next().await {
            let mut authorization =
                authorization.map_err(|e| fail("reading an authorization", e))?;
            if authorization.status == AuthorizationStatus::Valid {
                continue;
            }
            let mut challenge = authorization
                .challenge(ChallengeType::Http01)
                .ok_or_else(|| "the ACME server offers no HTTP-01 challenge".to_owned())?;
            let token = challenge.token.clone();
            if !valid_token(&token) {
                return Err(format!("the ACME server sent an invalid token {token:?}"));
            }
            responder
                .publish(&token, challenge.key_authorization().as_str())
                .await?;
            challenge
                .set_ready()
                .await
                .map_err(|e| fail("answering the challenge", e))?;
        }
        let retry = RetryPolicy::default().timeout(Duration::from_secs(60));
        let status = order
            .poll_ready(&retry)
            .await
            .map_err(|e| fail("validating the challenges", e))?;
        if status != OrderStatus::Ready {
            return Err(format!(
                "the order ended {status:?}: the ACME server could not validate the hosts over HTTP"
            ));
        }
        let key_pem = order.finalize().await.map_err(|e| fail("finalizing", e))?;
        let chain_pem = order
            .poll_certificate(&retry)
            .await
            .map_err(|e| fail("downloading the certificate", e))?;
        Ok(Issued { chain_pem, key_pem })
    }
}

fn tempfile_with(content: &str) -> std::io::Result<tempfile::NamedTempFile> {
    use std::io::Write;
    let mut file = tempfile::NamedTempFile::new()?;
    file.write_all(content.as_bytes())?;
    Ok(file)
}
