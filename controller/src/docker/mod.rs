//! Docker as the reconcilers see it: the few facts and actions they need, behind one narrow
//! trait, and its implementation on bollard. Unit tests use fakes; e2e tests the real engine.

mod engine;

use std::collections::BTreeMap;
use std::net::IpAddr;

use async_trait::async_trait;

pub use engine::Engine;

/// A container as far as proxying to it goes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ContainerFacts {
    pub id: String,
    /// Without the leading `/`.
    pub name: String,
    pub running: bool,
    /// `default`, `bridge`, `host`, `none`, `container:<id>` or a network name.
    pub network_mode: String,
    pub labels: BTreeMap<String, String>,
    pub networks: Vec<Attachment>,
}

/// A container's membership of a network.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Attachment {
    pub network: String,
    pub network_id: String,
    pub ip: Option<IpAddr>,
}

/// What makes a network eligible for the edge to join.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetworkFacts {
    pub id: String,
    pub name: String,
    pub driver: String,
    /// `local`, `swarm` or `global`.
    pub scope: String,
}

/// A container to create and start (the edge).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NewContainer {
    pub name: String,
    pub image: String,
    pub labels: BTreeMap<String, String>,
    /// (host address, host port, container port), TCP.
    pub ports: Vec<(String, u16, u16)>,
    /// Files written into the container before it starts: absolute path and content.
    pub files: Vec<(String, Vec<u8>)>,
}

/// The result of a command run inside a container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecOutput {
    pub exit_code: i64,
    /// stdout and stderr, interleaved.
    pub output: String,
}

/// Why a Docker call failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DockerError {
    #[error("the Docker engine is unreachable: {0}")]
    Unreachable(String),
    #[error("{0} does not exist")]
    NotFound(String),
    #[error("Docker refused: {0}")]
    Refused(String),
}

impl DockerError {
    pub fn category(&self) -> crate::retry::Category {
        use crate::retry::Category;
        match self {
            DockerError::Unreachable(_) => Category::Unreachable,
            DockerError::NotFound(_) | DockerError::Refused(_) => Category::Docker,
        }
    }
}

/// Something that happened to a container, as far as following upstreams goes: it started,
/// stopped or died, was renamed or removed, or joined or left a network.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ContainerEvent {
    pub action: String,
    pub container_id: String,
    /// Known for container events; empty for network ones.
    pub container_name: String,
    pub labels: BTreeMap<String, String>,
}

/// The Docker operations InfraPilot performs.
#[async_trait]
pub trait Docker: Send + Sync {
    /// The container with this name or id, if any.
    async fn container(&self, name: &str) -> Result<Option<ContainerFacts>, DockerError>;
    /// Every container carrying all of `labels`.
    async fn containers_with_labels(
        &self,
        labels: &BTreeMap<String, String>,
    ) -> Result<Vec<ContainerFacts>, DockerError>;
    /// The network with this name or id, if any.
    async fn network(&self, name: &str) -> Result<Option<NetworkFacts>, DockerError>;
    /// Creates, fills and starts a container; returns its id.
    async fn create(&self, container: &NewContainer) -> Result<String, DockerError>;
    /// Removes a container, running or not.
    async fn remove(&self, container: &str) -> Result<(), DockerError>;
    async fn connect(&self, network: &str, container: &str) -> Result<(), DockerError>;
    async fn disconnect(&self, network: &str, container: &str) -> Result<(), DockerError>;
    /// Writes files (absolute paths) into a container, each replaced whole.
    async fn put_files(
        &self,
        container: &str,
        files: &[(String, Vec<u8>)],
    ) -> Result<(), DockerError>;
    /// The regular files directly in `dir` of a container: name and content. A missing
    /// directory is empty.
    async fn read_files(
        &self,
        container: &str,
        dir: &str,
    ) -> Result<Vec<(String, Vec<u8>)>, DockerError>;
    /// Runs a command inside a container.
    async fn exec(&self, container: &str, argv: &[&str]) -> Result<ExecOutput, DockerError>;
    /// Sends a signal (`HUP`) to a container's main process.
    async fn signal(&self, container: &str, signal: &str) -> Result<(), DockerError>;
    /// Container and network events from now on; the stream ends when the connection does.
    fn events(&self) -> futures::stream::BoxStream<'static, Result<ContainerEvent, DockerError>>;
}
