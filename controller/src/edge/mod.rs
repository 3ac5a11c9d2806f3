//! The edge: the one nginx container InfraPilot runs and owns, serving every Proxy.
//!
//! One task owns it. Proxies send the configuration they want; requests that arrive while a
//! change is being applied are coalesced into the next one, so a burst of changes costs one
//! or two reloads. Applying a change is: attach networks, write the files, `nginx -t`, and
//! only if it passes, SIGHUP to the master. A file nginx rejects is put back as it was (or
//! removed when new), its Proxy is told nginx's message, and the others go ahead: the
//! running configuration never includes an unvalidated file, and one bad Proxy never blocks
//! the rest.
//!
//! The code is split by job:
//! - `handle`: [`Edge`], the cheap handle reconcilers hold, and the requests it sends;
//! - `actor`: the task that owns the edge, and how it batches requests into few reloads;
//! - `apply`: one batch as a transaction (a pure diff against what is live, then write,
//!   `nginx -t`, put back what nginx rejects, reload);
//! - `recovery`: finding the edge again after an operator restart (or recreating it), and
//!   the marker that tells whether nginx loaded what is on disk;
//! - `acme`: the requests that read or write files without changing configuration
//!   (ACME challenge answers, ACME account state, a Proxy's certificate files).

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;

use crate::audit::ObjectRef;
use crate::docker::DockerError;
pub use crate::docker::LogRotation;

mod acme;
mod actor;
mod apply;
mod handle;
mod recovery;

pub use apply::rejected_id;
pub use handle::Edge;

/// Where the edge reads Proxy configuration (the official image includes `conf.d/*.conf`).
pub(crate) const CONF_DIR: &str = "/etc/nginx/conf.d";
/// The label on everything the operator creates; the edge is recognised by it.
pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub(crate) const MANAGED_BY_VALUE: &str = "infrapilot";

/// How the edge is run.
#[derive(Clone, Debug)]
pub struct EdgeOptions {
    pub name: String,
    /// An image following the official `nginx` image's contract.
    pub image: String,
    /// The host address the ports are published on.
    pub address: String,
    pub http_port: u16,
    pub https_port: u16,
    /// More labels for the edge container.
    pub labels: BTreeMap<String, String>,
    /// How often the edge is checked, and recreated when it is gone.
    pub check_interval: Duration,
    /// How Docker rotates the edge's output, which holds every Proxy's access log.
    pub log: LogRotation,
}

/// What the edge container is made of. A running edge whose spec label differs (made by an
/// earlier release, or with other flags) is recreated once with everything it serves.
pub(crate) const SPEC_LABEL: &str = "infrapilot.io/edge-spec";

impl EdgeOptions {
    /// A digest of everything the container is created with, kept in [`SPEC_LABEL`].
    pub(crate) fn spec_digest(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut hasher = Sha256::new();
        let ports = format!(
            "{}|{}|{}|{}|{}|{}",
            self.image,
            self.address,
            self.http_port,
            self.https_port,
            self.log.max_size,
            self.log.max_files
        );
        hasher.update(ports.as_bytes());
        for (key, value) in &self.labels {
            hasher.update(format!("|{key}={value}").as_bytes());
        }
        hex::encode(&hasher.finalize()[..8])
    }
}

/// The configuration one Proxy wants served.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Wanted {
    /// [`site::site_id`] of the Proxy.
    pub id: String,
    pub object: ObjectRef,
    pub config: String,
    /// The networks the edge must be on to reach the upstream.
    pub networks: Vec<String>,
    /// Files the configuration refers to (a certificate and its key): absolute path and
    /// content. Written with the configuration and validated with it.
    pub files: Vec<(String, Vec<u8>)>,
}

/// What became of a wanted configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Served {
    /// It is what nginx serves.
    Serving,
    /// nginx refused it; the previous configuration of this Proxy (if any) keeps serving.
    Rejected(String),
}

/// Why the edge could not take a change at all.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EdgeError {
    #[error(transparent)]
    Docker(#[from] DockerError),
    #[error(
        "a container named {0} exists and was not created by InfraPilot: remove it or choose another --edge-name"
    )]
    NameTaken(String),
    #[error("the edge has stopped")]
    Stopped,
}

impl EdgeError {
    pub fn category(&self) -> crate::retry::Category {
        use crate::retry::Category;
        match self {
            EdgeError::Docker(error) => error.category(),
            EdgeError::NameTaken(_) => Category::Config,
            EdgeError::Stopped => Category::Internal,
        }
    }
}

/// The edge as Proxy reconcilers see it.
#[async_trait]
pub trait EdgeApi: Send + Sync {
    /// Serves `wanted` (or says why nginx refused it).
    async fn apply(&self, wanted: Wanted) -> Result<Served, EdgeError>;
    /// Stops serving the Proxy `id`.
    async fn remove(&self, id: &str, object: ObjectRef) -> Result<(), EdgeError>;
    /// Asks for the edge to be running soon, without waiting: a Proxy exists, so the edge will
    /// be needed, and starting it (about a second) then overlaps the Proxies reconciled before
    /// the first that is served.
    fn warm(&self);
    /// Serves an ACME HTTP-01 answer at `/.well-known/acme-challenge/<token>` (no reload).
    async fn publish_challenge(&self, token: &str, answer: &str) -> Result<(), EdgeError>;
    /// The files (certificate and key) the edge serves for the Proxy `id`, if any.
    async fn files(&self, id: &str) -> Result<Vec<(String, Vec<u8>)>, EdgeError>;
    /// Whether `host` (a name that passed the hostname grammar) resolves inside the edge, as
    /// nginx resolves a URL upstream per request: `Ok(None)` when the edge cannot tell (not
    /// running yet, no `getent` in its image).
    async fn resolves(&self, host: &str) -> Result<Option<bool>, EdgeError>;
    /// The Proxies the edge stops serving on its own: a recreated edge leaves out those whose
    /// files nginx now refuses, and their reconciler should say so at once. Taken once; `None`
    /// afterwards, and from an edge that never does this.
    fn left_out(&self) -> Option<tokio::sync::mpsc::UnboundedReceiver<ObjectRef>> {
        None
    }
    /// Reads or writes a file of the edge's ACME state (account credentials): `name` is a
    /// plain name under [`ACME_STATE_DIR`].
    async fn acme_state(
        &self,
        name: &str,
        write: Option<Vec<u8>>,
    ) -> Result<Option<Vec<u8>>, EdgeError>;
}

/// Where the edge keeps ACME account credentials, next to the certificate keys.
pub const ACME_STATE_DIR: &str = "/etc/nginx/infrapilot/acme";

#[cfg(test)]
mod tests;
