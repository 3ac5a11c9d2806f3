//! Docker as InfraPilot sees it: the few facts and actions it needs, behind two narrow traits
//! ([`Docker`] for the edge and the Proxy reconciler, [`Runner`] for the backup restore
//! engine's throwaway servers), and their one implementation on bollard ([`Engine`]), which
//! reaches the engine the way the docker CLI does ([`host`]). This module is the only code
//! that uses bollard: one error mapping, one way to remove a container, one exec. Unit tests
//! use fakes; e2e tests the real engine.

mod engine;
pub mod host;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::pin::Pin;

use async_trait::async_trait;
use futures::future::BoxFuture;
use futures::stream::BoxStream;

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
    /// How Docker keeps the container's output; the engine's default logging when `None`.
    pub log: Option<LogRotation>,
}

/// The `json-file` log driver with rotation: at most `max_files` files of `max_size` each
/// (`10m`, `512k`, `1g`), so that a container's output takes bounded disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogRotation {
    pub max_size: String,
    pub max_files: u32,
}

/// One line of a container's output, with the time Docker received it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogLine {
    pub time: jiff::Timestamp,
    /// Without the trailing newline.
    pub line: Vec<u8>,
}

/// The result of a command run inside a container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecOutput {
    pub exit_code: i64,
    /// stdout and stderr, interleaved.
    pub output: String,
}

/// Why a Docker call failed. Each message says what was attempted and what Docker said.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DockerError {
    /// No answer: the engine is down, `DOCKER_HOST` is wrong, or the connection broke.
    #[error("the Docker engine is unreachable: {0}")]
    Unreachable(String),
    /// The container, image or network does not exist (404).
    #[error("{0}")]
    NotFound(String),
    /// The object is in the way or in the wrong state: a name taken, a container that is not
    /// running (409).
    #[error("{0}")]
    Conflict(String),
    /// Any other refusal.
    #[error("Docker refused: {0}")]
    Refused(String),
    /// How to reach the engine is malformed or unusable (`DOCKER_HOST`, TLS files).
    #[error("{0}")]
    Config(String),
}

impl DockerError {
    pub fn category(&self) -> crate::retry::Category {
        use crate::retry::Category;
        match self {
            DockerError::Unreachable(_) => Category::Unreachable,
            DockerError::Config(_) => Category::Config,
            DockerError::NotFound(_) | DockerError::Conflict(_) | DockerError::Refused(_) => {
                Category::Docker
            }
        }
    }
}

/// Something that happened to a container: it started, stopped or died, was killed (asked to
/// stop), ran out of memory, changed health, was renamed or removed, or joined or left a
/// network.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ContainerEvent {
    /// Docker's action: `start`, `die`, `kill`, `oom`, `health_status: unhealthy`, ...
    pub action: String,
    pub container_id: String,
    /// Known for container events; empty for network ones.
    pub container_name: String,
    pub labels: BTreeMap<String, String>,
    /// A `die` event's exit code.
    pub exit_code: Option<i64>,
}

impl ContainerEvent {
    /// Whether the event can move an upstream: the others (a kill, an OOM, a health change)
    /// are followed by a `die` or change nothing a Proxy routes to.
    pub fn moves_upstreams(&self) -> bool {
        matches!(
            self.action.as_str(),
            "start" | "die" | "stop" | "destroy" | "rename" | "connect" | "disconnect"
        )
    }
}

/// A container's state as a look after missed events sees it: how it last ended, and its
/// health.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ContainerState {
    pub id: String,
    /// Without the leading `/`.
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub running: bool,
    /// How it last exited (0 when it never did).
    pub exit_code: i64,
    pub oom_killed: bool,
    pub unhealthy: bool,
    /// When it last exited.
    pub finished_at: Option<jiff::Timestamp>,
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
    /// Every container's state, running or not: one list and one inspect each, made only
    /// when the event stream (re)connects.
    async fn container_states(&self) -> Result<Vec<ContainerState>, DockerError>;
    /// The network with this name or id, if any.
    async fn network(&self, name: &str) -> Result<Option<NetworkFacts>, DockerError>;
    /// Creates, fills and starts a container; returns its id.
    async fn create(&self, container: &NewContainer) -> Result<String, DockerError>;
    /// Removes a container, running or not, with its anonymous volumes; one that does not
    /// exist is removed already.
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
    /// A container's standard output from `since` (whole seconds: a line of that second may
    /// come again) to now, then with `follow` as it is written, until the container or the
    /// connection ends. A container that does not exist is the stream's one error.
    fn output(
        &self,
        container: &str,
        since: jiff::Timestamp,
        follow: bool,
    ) -> futures::stream::BoxStream<'static, Result<LogLine, DockerError>>;
}

/// An image as far as running servers of it goes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImageFacts {
    /// `sha256:...`.
    pub id: String,
    pub entrypoint: Vec<String>,
    /// `KEY=value`.
    pub env: Vec<String>,
}

/// A container that runs a job (a throwaway server): created from an image already on the
/// host, never restarted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JobContainer {
    pub name: String,
    pub image: String,
    pub labels: BTreeMap<String, String>,
    /// `KEY=value`.
    pub env: Vec<String>,
    /// The image's when `None`.
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Vec<String>,
    /// Without any network (`network_mode: none`).
    pub isolated: bool,
    /// The size of `/dev/shm`; Docker's default (64 MiB) when `None`.
    pub shm_bytes: Option<i64>,
}

/// A command to run inside a container.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExecCommand {
    pub argv: Vec<String>,
    /// `KEY=value`, besides the container's.
    pub env: Vec<String>,
    /// The container's user when `None`.
    pub user: Option<String>,
    /// Whether the command reads a standard input ([`Attached::stdin`]).
    pub stdin: bool,
}

/// A piece of a command's output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
}

/// A command started inside a container, attached to its standard streams.
pub struct Attached {
    /// Its standard input, when [`ExecCommand::stdin`] asked for one: shutting it down closes
    /// the command's input. A write fails once the command stopped reading.
    pub stdin: Option<Pin<Box<dyn tokio::io::AsyncWrite + Send>>>,
    /// Its standard output and error as they come; ends when the command does.
    pub output: BoxStream<'static, Result<Output, DockerError>>,
    /// Its exit code, once `output` has ended (Docker records it a moment after the output).
    pub exit_code: BoxFuture<'static, Result<i64, DockerError>>,
}

impl std::fmt::Debug for Attached {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Attached")
    }
}

/// What running throwaway servers from images needs beyond [`Docker`]: images, job
/// containers, commands with streamed input and output, uploads, logs and commits. The backup
/// restore engine uses it.
#[async_trait]
pub trait Runner: Docker {
    /// The image with this reference or id on this host, if any.
    async fn image(&self, reference: &str) -> Result<Option<ImageFacts>, DockerError>;
    /// Pulls an image, as `docker run` does for one that is not on this host.
    async fn pull(&self, image: &str) -> Result<(), DockerError>;
    /// Creates a container, not started; returns its id. A taken name is a `Conflict`.
    async fn create_job(&self, container: &JobContainer) -> Result<String, DockerError>;
    /// Starts a created container; `Refused` when its command cannot run.
    async fn start(&self, container: &str) -> Result<(), DockerError>;
    /// Stops a container cleanly (SIGTERM, then SIGKILL after Docker's grace period).
    async fn stop(&self, container: &str) -> Result<(), DockerError>;
    /// `None` while the container runs, its exit code once it stopped.
    async fn exited(&self, container: &str) -> Result<Option<i64>, DockerError>;
    /// Starts a command inside a running container.
    async fn attach(&self, container: &str, command: &ExecCommand)
    -> Result<Attached, DockerError>;
    /// Extracts a tar archive, streamed, into `dir` of a container. An error item of `tar`
    /// cuts the upload short, so that Docker extracts nothing of a broken archive.
    async fn upload(
        &self,
        container: &str,
        dir: &str,
        tar: BoxStream<'static, std::io::Result<Vec<u8>>>,
    ) -> Result<(), DockerError>;
    /// The last `lines` lines of a container's log (standard output and error).
    async fn log_tail(&self, container: &str, lines: usize) -> Result<String, DockerError>;
    /// Commits a stopped container as `repository:tag`, with `labels` set over the
    /// container's; everything else (entry point, command, environment, labels) is kept.
    async fn commit(
        &self,
        container: &str,
        repository: &str,
        tag: &str,
        comment: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<(), DockerError>;
}
