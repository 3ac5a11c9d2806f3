//! The only writes: the edge (configuration, files, networks) and ACME issuance, with the
//! edge answering the HTTP-01 challenges.

use super::decide::{self, Certified, Plan, Serve, Site, Stop};
use super::{CONTROLLER, Proxies};
use crate::api::proxy::Proxy;
use crate::edge::{EdgeApi, EdgeError, Served};
use crate::proxy::{acme, site};
use crate::reconcile::{Context, object_ref};

/// What was done, for the status: the status is computed from this only.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Outcome {
    /// Nothing was served.
    Stopped(Stop),
    /// Nothing is served any more: the Proxy's site was removed from the edge.
    Withdrawn(Stop),
    Handed(Box<Handed>),
}

/// The site handed to the edge, and the edge's answer.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Handed {
    pub serve: Serve,
    pub certified: Certified,
    pub site: Site,
    pub answer: Result<Served, EdgeError>,
    /// For a URL upstream naming a host, served: whether the edge resolves the name (`None`:
    /// not asked, or the edge could not tell).
    pub resolves: Option<bool>,
}

impl Proxies {
    pub(super) async fn apply(
        &self,
        proxy: &Proxy,
        plan: Plan,
        ctx: &Context,
        now: jiff::Timestamp,
    ) -> Outcome {
        let serve = match plan {
            Plan::Stop(stop) => return Outcome::Stopped(stop),
            Plan::Withdraw { id, stop } => {
                return match self.edge.remove(&id, object_ref(proxy)).await {
                    Ok(()) => Outcome::Withdrawn(stop),
                    Err(error) => Outcome::Stopped(Stop::unavailable(
                        "EdgeUnavailable",
                        format!("{}; its site could not be withdrawn: {error}", stop.message),
                        error.category(),
                    )),
                };
            }
            Plan::Serve(serve) => *serve,
        };
        let issue = serve.acme.as_ref().and_then(|a| a.issue.as_ref());
        let issued = match issue {
            None => None,
            Some(issue) => {
                if let Err(error) = self.edge.apply(issue.prepare.clone()).await {
                    return Outcome::Stopped(Stop::unavailable(
                        "EdgeUnavailable",
                        error.to_string(),
                        error.category(),
                    ));
                }
                Some(self.issue(proxy, &issue.request, ctx).await)
            }
        };
        let certified = match decide::certify(&serve, issued, now) {
            Ok(certified) => certified,
            Err(stop) => return Outcome::Stopped(stop),
        };
        let site = decide::site(proxy, &serve, &certified);
        let answer = self.edge.apply(site.wanted.clone()).await;
        let name = serve.valid.settings.url.as_deref().and_then(site::url_name);
        let resolves = match (&answer, name) {
            (Ok(Served::Serving), Some(name)) => self.edge.resolves(name).await.ok().flatten(),
            _ => None,
        };
        Outcome::Handed(Box::new(Handed {
            serve,
            certified,
            site,
            answer,
            resolves,
        }))
    }

    /// Asks the issuer, and records the attempt in the audit log whatever its outcome.
    async fn issue(
        &self,
        proxy: &Proxy,
        request: &acme::Request,
        ctx: &Context,
    ) -> Result<acme::Issued, String> {
        let responder = EdgeResponder(self.edge.as_ref());
        let issued = self.issuer.issue(request, &responder).await;
        let (outcome, detail) = match &issued {
            Ok(_) => (crate::audit::Outcome::Success, String::new()),
            Err(error) => (crate::audit::Outcome::Failure, error.clone()),
        };
        let record = crate::audit::NewRecord {
            controller: CONTROLLER.to_owned(),
            object: object_ref(proxy),
            action: "certificate.issue".to_owned(),
            target: format!("{} for {}", request.directory, request.hosts.join(", ")),
            outcome,
            detail,
        };
        if let Err(error) = ctx.audit.record(record).await {
            tracing::error!(%error, "could not write the audit record of an issuance");
        }
        issued
    }
}

/// The edge answers HTTP-01 challenges.
struct EdgeResponder<'a>(&'a dyn EdgeApi);

#[async_trait::async_trait]
impl acme::ChallengeResponder for EdgeResponder<'_> {
    async fn publish(&self, token: &str, key_authorization: &str) -> Result<(), String> {
        self.0
            .publish_challenge(token, key_authorization)
            .await
            .map_err(|e| e.to_string())
    }

    async fn account(&self, name: &str) -> Result<Option<String>, String> {
        let stored = self
            .0
            .acme_state(name, None)
            .await
            .map_err(|e| e.to_string())?;
        Ok(stored.map(|bytes| String::from_utf8_lossy(&bytes).into_owned()))
    }

    async fn save_account(&self, name: &str, credentials: &str) -> Result<(), String> {
        self.0
            .acme_state(name, Some(credentials.as_bytes().to_vec()))
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    }
}
