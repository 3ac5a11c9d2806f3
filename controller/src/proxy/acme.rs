//! Certificates from an ACME server (Let's Encrypt) over HTTP-01, with instant-acme. The edge
//! answers the challenges: its port-80 server has a location for them, and the answers are
//! files written into it (no reload needed).

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, BodyWrapper, BytesBody, BytesResponse,
    ChallengeType, HttpClient, Identifier, NewAccount, NewOrder, OrderStatus, RetryPolicy,
};

/// How long one request to the ACME server may take, connecting included.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(10);
/// How long one issuance may take in all: the account, the order, the challenges (the server
/// fetching them over HTTP) and the certificate. Past it the issuance fails and is retried
/// on the ACME backoff, so an ACME server that never answers holds no reconcile for longer.
pub const ISSUANCE_DEADLINE: Duration = Duration::from_secs(120);

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
        match tokio::time::timeout(ISSUANCE_DEADLINE, issue(request, responder)).await {
            Ok(issued) => issued,
            Err(_) => Err(format!(
                "the ACME server at {} did not complete the issuance within {} s",
                request.directory,
                ISSUANCE_DEADLINE.as_secs()
            )),
        }
    }
}

async fn issue(request: &Request, responder: &dyn ChallengeResponder) -> Result<Issued, String> {
    let fail = |what: &str, e: instant_acme::Error| format!("{what}: {e}");
    let builder = Account::builder_with_http(Box::new(
        Deadlined::new(request.ca_bundle.as_deref())
            .map_err(|e| format!("the ACME client: {e}"))?,
    ));
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
        let mut authorization = authorization.map_err(|e| fail("reading an authorization", e))?;
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

/// instant-acme's HTTP over reqwest, with a deadline on every request. instant-acme's own
/// client sets none and cannot be given one, and the ACME server is chosen by whoever writes
/// the Proxy: one that accepts connections and never answers would hold the reconcile, its
/// slot and the operator's shutdown forever. A thin adapter: reqwest does the HTTP and TLS.
struct Deadlined(reqwest::Client);

impl Deadlined {
    /// Trusts the system's roots, or only `ca_bundle` (PEM) for a private ACME server.
    fn new(ca_bundle: Option<&str>) -> Result<Self, reqwest::Error> {
        let mut client = reqwest::Client::builder()
            .timeout(REQUEST_DEADLINE)
            .connect_timeout(REQUEST_DEADLINE)
            .redirect(reqwest::redirect::Policy::none());
        if let Some(pem) = ca_bundle {
            client = client.tls_built_in_root_certs(false);
            for certificate in reqwest::Certificate::from_pem_bundle(pem.as_bytes())? {
                client = client.add_root_certificate(certificate);
            }
        }
        Ok(Deadlined(client.build()?))
    }
}

impl HttpClient for Deadlined {
    fn request(
        &self,
        request: http::Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, instant_acme::Error>> + Send>> {
        let client = self.0.clone();
        Box::pin(async move {
            let other = |e: reqwest::Error| {
                let message = if e.is_timeout() {
                    format!(
                        "no answer from {} within {} s",
                        e.url().map_or("the ACME server", |u| u.as_str()),
                        REQUEST_DEADLINE.as_secs()
                    )
                } else {
                    // reqwest's message leaves the cause (refused, TLS) to its source.
                    let mut message = e.to_string();
                    let mut source = std::error::Error::source(&e);
                    while let Some(cause) = source {
                        message.push_str(&format!(": {cause}"));
                        source = cause.source();
                    }
                    message
                };
                instant_acme::Error::Other(message.into())
            };
            let (parts, body) = request.into_parts();
            let body = match http_body_util::BodyExt::collect(body).await {
                Ok(collected) => collected.to_bytes(),
                Err(never) => match never {},
            };
            let response = client
                .request(parts.method, parts.uri.to_string())
                .headers(parts.headers)
                .body(body)
                .send()
                .await
                .map_err(other)?;
            let mut head = http::Response::builder().status(response.status());
            if let Some(headers) = head.headers_mut() {
                headers.extend(response.headers().clone());
            }
            let body = response.bytes().await.map_err(other)?;
            let (parts, ()) = head
                .body(())
                .map_err(|e| instant_acme::Error::Other(Box::new(e)))?
                .into_parts();
            Ok(BytesResponse {
                parts,
                body: Box::new(body) as Box<dyn BytesBody>,
            })
        })
    }
}
