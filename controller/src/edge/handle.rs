//! The handle reconcilers hold: [`Edge`] turns each [`EdgeApi`] call into a request to the
//! task that owns the edge (see `actor`) and waits for its answer. Separate from the actor so
//! that what callers see (cheap to clone, no Docker, no state) stays apart from what the
//! owner does.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot};

use super::actor::Owner;
use super::{EdgeApi, EdgeError, EdgeOptions, Served, Wanted};
use crate::audit::{Audit, ObjectRef};
use crate::docker::Docker;

/// Where the answer to a question about a Proxy's files goes.
type FilesReply = oneshot::Sender<Result<Vec<(String, Vec<u8>)>, EdgeError>>;

pub(super) enum Request {
    Warm,
    Apply(Wanted, oneshot::Sender<Result<Served, EdgeError>>),
    Remove(String, ObjectRef, oneshot::Sender<Result<(), EdgeError>>),
    Challenge(String, String, oneshot::Sender<Result<(), EdgeError>>),
    Files(String, FilesReply),
    AcmeState(
        String,
        Option<Vec<u8>>,
        oneshot::Sender<Result<Option<Vec<u8>>, EdgeError>>,
    ),
}

/// The handle reconcilers hold; the edge task runs while one exists.
#[derive(Clone)]
pub struct Edge {
    requests: mpsc::UnboundedSender<Request>,
    /// Whether [`EdgeApi::warm`] was asked for already: once is enough.
    warmed: Arc<std::sync::atomic::AtomicBool>,
    /// For [`EdgeApi::resolves`], which asks the edge container directly: a lookup can take
    /// seconds and must not hold up the task that applies every Proxy's changes.
    docker: Arc<dyn Docker>,
    name: String,
    /// Taken once by [`EdgeApi::left_out`].
    left_out: Arc<std::sync::Mutex<Option<mpsc::UnboundedReceiver<ObjectRef>>>>,
}

impl std::fmt::Debug for Edge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Edge").field("name", &self.name).finish()
    }
}

/// How long a name lookup in the edge may take: nginx's own `resolver_timeout` (3 s) plus
/// the time to start the process.
const LOOKUP_SECONDS: &str = "5";

impl Edge {
    /// Starts the task that owns the edge. Nothing touches Docker before the first request
    /// (the first Proxy's [`EdgeApi::warm`]): an operator with no Proxy runs no edge.
    pub fn start(docker: Arc<dyn Docker>, options: EdgeOptions, audit: Arc<dyn Audit>) -> Self {
        let (requests, receiver) = mpsc::unbounded_channel();
        let name = options.name.clone();
        let (left_out, left_out_receiver) = mpsc::unbounded_channel();
        let owner = Owner {
            docker: docker.clone(),
            options,
            audit,
            container: None,
            seeded: false,
            live: BTreeMap::new(),
            attached: BTreeSet::new(),
            resolver: None,
            left_out,
        };
        tokio::spawn(owner.run(receiver));
        Self {
            requests,
            warmed: Arc::default(),
            docker,
            name,
            left_out: Arc::new(std::sync::Mutex::new(Some(left_out_receiver))),
        }
    }
}

#[async_trait]
impl EdgeApi for Edge {
    async fn apply(&self, wanted: Wanted) -> Result<Served, EdgeError> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(Request::Apply(wanted, reply))
            .map_err(|_| EdgeError::Stopped)?;
        answer.await.map_err(|_| EdgeError::Stopped)?
    }

    async fn remove(&self, id: &str, object: ObjectRef) -> Result<(), EdgeError> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(Request::Remove(id.to_owned(), object, reply))
            .map_err(|_| EdgeError::Stopped)?;
        answer.await.map_err(|_| EdgeError::Stopped)?
    }

    fn warm(&self) {
        if !self.warmed.swap(true, std::sync::atomic::Ordering::Relaxed) {
            let _ = self.requests.send(Request::Warm);
        }
    }

    async fn publish_challenge(&self, token: &str, answer: &str) -> Result<(), EdgeError> {
        let (reply, done) = oneshot::channel();
        self.requests
            .send(Request::Challenge(
                token.to_owned(),
                answer.to_owned(),
                reply,
            ))
            .map_err(|_| EdgeError::Stopped)?;
        done.await.map_err(|_| EdgeError::Stopped)?
    }

    async fn files(&self, id: &str) -> Result<Vec<(String, Vec<u8>)>, EdgeError> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(Request::Files(id.to_owned(), reply))
            .map_err(|_| EdgeError::Stopped)?;
        answer.await.map_err(|_| EdgeError::Stopped)?
    }

    async fn resolves(&self, host: &str) -> Result<Option<bool>, EdgeError> {
        // `getent ahosts` asks the resolver of the edge's /etc/resolv.conf, the nameservers
        // nginx's `resolver` is written from. The host is an argument, never a shell word.
        let argv = ["timeout", LOOKUP_SECONDS, "getent", "ahosts", host];
        let output = match self.docker.exec(&self.name, &argv).await {
            Ok(output) => output,
            // Not created yet, or gone: the edge's own check brings it back.
            Err(
                crate::docker::DockerError::NotFound(_) | crate::docker::DockerError::Conflict(_),
            ) => return Ok(None),
            Err(error) => return Err(EdgeError::Docker(error)),
        };
        Ok(match output.exit_code {
            0 => Some(true),
            // getent: "key not found"; timeout: the lookup did not finish in time.
            2 | 124 => Some(false),
            _ => None,
        })
    }

    fn left_out(&self) -> Option<mpsc::UnboundedReceiver<ObjectRef>> {
        self.left_out.lock().ok()?.take()
    }

    async fn acme_state(
        &self,
        name: &str,
        write: Option<Vec<u8>>,
    ) -> Result<Option<Vec<u8>>, EdgeError> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(Request::AcmeState(name.to_owned(), write, reply))
            .map_err(|_| EdgeError::Stopped)?;
        answer.await.map_err(|_| EdgeError::Stopped)?
    }
}
