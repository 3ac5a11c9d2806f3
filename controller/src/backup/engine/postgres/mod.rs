//! PostgreSQL on Docker: a throwaway container of an image that follows the official
//! `postgres` image's contract, driven only through `docker exec` over the server's unix
//! socket, through [`crate::docker::Runner`].
//!
//! The container has no network at all and trusts local connections, so no password exists
//! and nothing a dump runs can reach another machine ([`spec`]). Dumps reach the tools on
//! their standard input or, for a directory dump, as a directory uploaded once ([`exec`]);
//! [`commands`] holds what each step runs and [`output`] reads what the tools print. Starting
//! a server is fast because its data directory comes initialised from a warm image ([`warm`]).
//!
//! Nothing here has a timeout: the caller bounds each call and then removes the server. A call
//! dropped half way leaves no task behind in the operator (the file reader stops as soon as
//! nobody takes its chunks); what still runs inside the container ends with the container.

mod commands;
mod exec;
mod output;
mod spec;
mod warm;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use super::{EngineError, RestoreEngine, ServerSpec, Throwaway};
use crate::docker::{DockerError, Runner};
use commands::Server;
pub use spec::SERVER_SETTINGS;
use spec::{Image, Layout};

/// The database the dump is restored into (`POSTGRES_DB`), unless a plain dump makes its own.
const DATABASE: &str = "validation";
/// The superuser of the official image (`POSTGRES_USER`'s default), also the OS user the tools
/// run as.
const SUPERUSER: &str = "postgres";

/// Restores dumps into throwaway PostgreSQL containers.
#[derive(Clone)]
pub struct Postgres {
    docker: Arc<dyn Runner>,
    /// The image ids a warm image was begun for by this process.
    warming: Arc<Mutex<BTreeSet<String>>>,
}

impl std::fmt::Debug for Postgres {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Postgres")
    }
}

impl Postgres {
    pub fn new(docker: Arc<dyn Runner>) -> Self {
        Self {
            docker,
            warming: Default::default(),
        }
    }

    /// Shares the connection of the operator's Docker engine.
    pub fn from_engine(engine: &crate::docker::Engine) -> Self {
        Self::new(Arc::new(engine.clone()))
    }

    /// What the image is, pulling it first when it is not on this Docker host, as
    /// `docker run` would.
    async fn image(&self, image: &str) -> Result<Image, EngineError> {
        let what = format!("inspecting the image {image}");
        if let Some(facts) = self
            .docker
            .image(image)
            .await
            .map_err(|e| engine_error(&what, e))?
        {
            return Ok(Image::from(facts));
        }
        self.docker.pull(image).await.map_err(|e| match e {
            DockerError::Unreachable(_) | DockerError::Config(_) => {
                EngineError::Unavailable(e.to_string())
            }
            refused => EngineError::Failed(format!(
                "the image {image} is not on this Docker host and pulling it failed: {refused}"
            )),
        })?;
        match self.docker.image(image).await {
            Ok(Some(facts)) => Ok(Image::from(facts)),
            Ok(None) => Err(EngineError::Failed(format!(
                "the image {image} is not on this Docker host after pulling it"
            ))),
            Err(e) => Err(engine_error(&what, e)),
        }
    }

    /// Creates and starts a server of `image` (already on this host) as `spec` says.
    async fn create_and_start(
        &self,
        spec: &ServerSpec,
        image: &str,
        layout: Layout<'_>,
    ) -> Result<Server, EngineError> {
        let warm = matches!(layout, Layout::Warm(_));
        let what = format!(
            "creating the throwaway server {} from {}",
            spec.name, spec.image
        );
        match self
            .docker
            .create_job(&spec::container(spec, image, layout))
            .await
        {
            Ok(_) => {}
            // A leftover of the same name: removing it is the caller's business.
            Err(e @ DockerError::Conflict(_)) => {
                return Err(EngineError::Unavailable(format!("{what}: {e}")));
            }
            Err(e) => return Err(engine_error(&what, e)),
        }
        if let Err(e) = self.docker.start(&spec.name).await {
            let what = format!("starting the throwaway server {}", spec.name);
            let error = match e {
                DockerError::Unreachable(_) | DockerError::Config(_) => engine_error(&what, e),
                // The runtime could not run the image's command: the image is at fault.
                refused => EngineError::Failed(format!("{what}: {refused}")),
            };
            // Best effort: the caller removes it too.
            let _ = self.docker.remove(&spec.name).await;
            return Err(error);
        }
        Ok(Server::new(self.docker.clone(), spec.name.clone(), warm))
    }
}

/// An error of a Docker call. Docker that cannot be reached or fails on its own is
/// `Unavailable`; a missing container or one that stopped (the server died, likely of the
/// dump) is `Failed`.
fn engine_error(what: &str, error: DockerError) -> EngineError {
    match error {
        DockerError::NotFound(_) | DockerError::Conflict(_) => {
            EngineError::Failed(format!("{what}: {error}"))
        }
        DockerError::Unreachable(_) | DockerError::Refused(_) | DockerError::Config(_) => {
            EngineError::Unavailable(format!("{what}: {error}"))
        }
    }
}

#[async_trait]
impl RestoreEngine for Postgres {
    async fn start(&self, spec: &ServerSpec) -> Result<Box<dyn Throwaway>, EngineError> {
        let source = self.image(&spec.image).await?;
        let warm = warm::reference(&source.id);
        let has_warm = self
            .docker
            .image(&warm)
            .await
            .map_err(|e| engine_error(&format!("inspecting the image {warm}"), e))?
            .is_some();
        let server = if has_warm {
            self.create_and_start(spec, &warm, Layout::Warm(&source))
                .await?
        } else {
            self.warm_later(&spec.image, &source.id);
            self.create_and_start(spec, &spec.image, Layout::Scratch)
                .await?
        };
        Ok(Box::new(server))
    }

    async fn remove(&self, name: &str) -> Result<(), EngineError> {
        self.docker
            .remove(name)
            .await
            .map_err(|e| engine_error(&format!("removing {name}"), e))
    }

    async fn list(&self, labels: &BTreeMap<String, String>) -> Result<Vec<String>, EngineError> {
        // Docker matches `key=value` exactly; a label with an empty value matches any value,
        // so it is checked here on what the others select.
        let exact: BTreeMap<String, String> = labels
            .iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut names: Vec<String> = self
            .docker
            .containers_with_labels(&exact)
            .await
            .map_err(|e| engine_error("listing throwaway servers", e))?
            .into_iter()
            .filter(|c| labels.keys().all(|k| c.labels.contains_key(k)))
            .map(|c| c.name)
            .collect();
        names.sort();
        Ok(names)
    }
}
