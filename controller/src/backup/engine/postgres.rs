//! PostgreSQL on Docker: a throwaway container of an image that follows the official
//! `postgres` image's contract, driven only through `docker exec` over the server's unix
//! socket.
//!
//! The container has no network at all (`network_mode: none`) and trusts local connections,
//! so no password exists and nothing a dump runs can reach another machine. Dumps reach the
//! tools on their standard input (custom, tar and plain formats, decompressed here) or, for a
//! directory dump, as a directory uploaded once through Docker's archive API.
//!
//! Nothing here has a timeout: the caller bounds each call and then removes the server. A call
//! dropped half way leaves no task behind in the operator (the file reader stops as soon as
//! nobody takes its chunks); what still runs inside the container ends with the container.
//!
//! Initialising a data directory (initdb, then the entry point's temporary server that creates
//! the database) takes two to three seconds, longer than every other check together. It is
//! done once per image: when an image has no *warm image* yet, its server is initialised as
//! usual and, beside it, a server of the image initialises a template directory outside the
//! image's `VOLUME` (a commit leaves volumes out), stops cleanly and is committed as
//! `infrapilot-restore-warm:<image id>-<layout>`. Later servers start from that image: the
//! template (about 40 MB) is copied into the image's own PGDATA, a volume, before the image's
//! entry point runs, which then finds the directory initialised and starts the server at once.
//! The restore itself writes to the volume, as it would without a warm image: writing to the
//! container's overlay file system instead makes it three times slower. A warm image that
//! cannot be made only costs speed, and is tried once per image and process.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bollard::container::LogOutput;
use bollard::errors::Error as BollardError;
use bollard::exec::{CreateExecOptions, StartExecResults};
use bollard::models::{ContainerConfig, ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    CommitContainerOptionsBuilder, CreateContainerOptionsBuilder, CreateImageOptionsBuilder,
    InspectContainerOptions, ListContainersOptionsBuilder, LogsOptionsBuilder,
    RemoveContainerOptionsBuilder, StartContainerOptions, StopContainerOptions,
    UploadToContainerOptionsBuilder,
};
use futures::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use super::{
    EngineError, QueryRows, RestoreEngine, RestoreStats, ServerSpec, ServerVersion,
    TableOfContents, TableRows, Throwaway,
};
use crate::backup::{Compression, Dump, DumpFormat};

/// The database the dump is restored into (`POSTGRES_DB`), unless a plain dump makes its own.
const DATABASE: &str = "validation";
/// The superuser of the official image (`POSTGRES_USER`'s default), also the OS user the tools
/// run as.
const SUPERUSER: &str = "postgres";
/// Where the official image's server puts its unix socket.
const SOCKET_DIR: &str = "/var/run/postgresql";
/// Printed by the official image's entry point once the temporary init server has stopped;
/// only after it is the server that answers the final one.
const INIT_COMPLETE: &str = "PostgreSQL init process complete; ready for start up.";
/// Printed instead when the data directory was already initialised (a restarted container).
const INIT_SKIPPED: &str = "Skipping initialization";
/// Where a warm image keeps its initialised data directory: outside the official images'
/// `VOLUME` (`/var/lib/postgresql/data`, or `/var/lib/postgresql` from PostgreSQL 18), so that
/// a commit keeps it. The entry point, as root, creates and chowns PGDATA.
const TEMPLATE: &str = "/opt/infrapilot-template";
/// The official images' PGDATA, for an image that does not say.
const DEFAULT_PGDATA: &str = "/var/lib/postgresql/data";
/// The entry point of a server started from a warm image: copies the template into PGDATA
/// (a tar pipe: twice as fast as `cp -a` on its 1,300 files), then runs the image's own entry
/// point (the arguments). Fixed text; nothing of a user's.
const WARM_START: &str = "mkdir -p \"$PGDATA\" && tar -C /opt/infrapilot-template -cf - . | tar -C \"$PGDATA\" -xf - && exec \"$@\"";
/// The repository of warm images; the tag is the source image's id and [`WARM_LAYOUT`].
const WARM_REPOSITORY: &str = "infrapilot-restore-warm";
/// Changes whenever what a warm image holds changes (the environment, the database), so that
/// an operator of another version never starts from a warm image it did not make.
const WARM_LAYOUT: &str = "v1";
/// How long making a warm image may take.
const WARM_TIMEOUT: Duration = Duration::from_secs(120);
/// The label of the containers that make warm images, for the sweeps that look for leftovers.
/// A commit keeps the container's labels, and containers of the image inherit them: the warm
/// image gets it with another value, so that no sweep takes its servers for builders.
const WARM_LABEL: (&str, &str, &str) = ("infrapilot.io/warm-image-build", "true", "false");
/// Runs its arguments as a command, then reads the rest of standard input, and exits with the
/// command's code (see [`Server::run`]). Fixed text; the command comes as separate arguments.
const DRAIN: &str = "\"$@\"; code=$?; cat >/dev/null; exit $code";
/// Directory dumps are uploaded below this directory of the container.
const UPLOAD_PARENT: &str = "/tmp";
/// The size of the pieces a dump is streamed in.
const CHUNK: usize = 256 * 1024;
/// How many pieces may wait between the file reader and the writer into Docker.
const CHUNKS_IN_FLIGHT: usize = 8;
/// A data check's statement runs at most this long (PostgreSQL's own limit, as PGOPTIONS).
const STATEMENT_TIMEOUT: &str = "5min";
/// The most a tool may print on standard output where it is kept (a listing, a result).
const MAX_STDOUT: usize = 64 << 20;
/// How much of the end of standard error is kept for error messages.
const STDERR_TAIL: usize = 64 << 10;
/// Error messages quote at most this many of the tool's last lines, and this many characters.
const ERROR_LINES: usize = 20;
const ERROR_CHARS: usize = 2000;
/// `/dev/shm` of the container: Docker's 64 MiB default is too small for parallel index
/// builds and hash joins of PostgreSQL's dynamic shared memory. A tmpfs: only what is used
/// is allocated.
const SHM_BYTES: i64 = 512 << 20;

/// The server settings of a throwaway server: its data is thrown away, so durability is
/// traded for speed, and it listens on its unix socket only. Public for the benchmark, whose
/// baseline runs with the same settings.
pub const SERVER_SETTINGS: &[&str] = &[
    "fsync=off",
    "full_page_writes=off",
    "synchronous_commit=off",
    "wal_level=minimal",
    "max_wal_senders=0",
    "maintenance_work_mem=512MB",
    "max_wal_size=8GB",
    "checkpoint_timeout=1h",
    "autovacuum=off",
    "listen_addresses=",
    // The restore is one transaction (see `restore`), which locks every table and index it
    // creates: room for about 100,000 locks. Few connections keep that table small.
    "max_connections=20",
    "max_locks_per_transaction=4096",
];

/// Restores dumps into throwaway PostgreSQL containers on the local Docker engine.
#[derive(Clone)]
pub struct Postgres {
    docker: bollard::Docker,
    /// The client with the API version negotiated, on first use.
    negotiated: std::sync::Arc<tokio::sync::OnceCell<bollard::Docker>>,
    /// The image ids a warm image was begun for by this process.
    warming: std::sync::Arc<std::sync::Mutex<BTreeSet<String>>>,
}

impl std::fmt::Debug for Postgres {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Postgres")
    }
}

impl Postgres {
    /// Uses `docker`; its API version is negotiated with the engine on first use.
    pub fn new(docker: bollard::Docker) -> Self {
        Self {
            docker,
            negotiated: Default::default(),
            warming: Default::default(),
        }
    }

    /// Shares the connection of the operator's Docker engine.
    pub fn from_engine(engine: &crate::docker::Engine) -> Self {
        Self::new(engine.client())
    }

    async fn client(&self) -> Result<bollard::Docker, EngineError> {
        self.negotiated
            .get_or_try_init(|| async {
                self.docker
                    .clone()
                    .negotiate_version()
                    .await
                    .map_err(|e| EngineError::Unavailable(format!("reaching Docker: {e}")))
            })
            .await
            .cloned()
    }

    /// What the image is, pulling it first when it is not on this Docker host, as
    /// `docker run` would.
    async fn image(&self, docker: &bollard::Docker, image: &str) -> Result<Image, EngineError> {
        match docker.inspect_image(image).await {
            Ok(inspect) => return Ok(Image::from(inspect)),
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(docker_error(&format!("inspecting the image {image}"), e)),
        }
        let pull = CreateImageOptionsBuilder::default()
            .from_image(image)
            .build();
        let mut progress = docker.create_image(Some(pull), None, None);
        while let Some(step) = progress.next().await {
            step.map_err(|e| match e {
                BollardError::DockerResponseServerError { message, .. } => {
                    EngineError::Failed(format!(
                        "the image {image} is not on this Docker host and pulling it failed: \
                         {message}"
                    ))
                }
                other => EngineError::Unavailable(format!("pulling {image}: {other}")),
            })?;
        }
        let inspect = docker
            .inspect_image(image)
            .await
            .map_err(|e| docker_error(&format!("inspecting the image {image}"), e))?;
        Ok(Image::from(inspect))
    }

    /// Makes the warm image of `image` in the background, once per image and process.
    fn warm_later(&self, docker: &bollard::Docker, image: &str, id: &str) {
        let first = self
            .warming
            .lock()
            .is_ok_and(|mut begun| begun.insert(id.to_owned()));
        if !first {
            return;
        }
        let (this, docker, image, id) = (
            self.clone(),
            docker.clone(),
            image.to_owned(),
            id.to_owned(),
        );
        tokio::spawn(async move {
            match this.make_warm(&docker, &image, &id).await {
                Ok(reference) => tracing::info!(%image, warm = %reference, "made the warm image"),
                Err(error) => {
                    tracing::warn!(%image, "could not make a warm image; servers of it are initialised from scratch: {error}")
                }
            }
        });
    }

    /// Initialises a server of `image`, stops it cleanly and commits it as its warm image.
    async fn make_warm(
        &self,
        docker: &bollard::Docker,
        image: &str,
        id: &str,
    ) -> Result<String, EngineError> {
        let (repository, tag) = warm_reference(id);
        // What an earlier process left when it stopped half way.
        let leftovers = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&HashMap::from([(
                "label".to_owned(),
                vec![format!("{}={}", WARM_LABEL.0, WARM_LABEL.1)],
            )]))
            .build();
        if let Ok(found) = docker.list_containers(Some(leftovers)).await {
            for name in found.into_iter().filter_map(|c| c.id) {
                let _ = remove_container(docker, &name).await;
            }
        }
        let name = format!("infrapilot-warm-{}", uuid::Uuid::new_v4().simple());
        let spec = ServerSpec {
            name: name.clone(),
            image: image.to_owned(),
            labels: BTreeMap::from([
                (
                    "app.kubernetes.io/managed-by".to_owned(),
                    "infrapilot".to_owned(),
                ),
                (WARM_LABEL.0.to_owned(), WARM_LABEL.1.to_owned()),
            ]),
        };
        let made = tokio::time::timeout(WARM_TIMEOUT, async {
            let server = self
                .create_and_start(docker, &spec, image, Layout::Template)
                .await?;
            server.ready(WARM_TIMEOUT).await?;
            // SIGTERM: a clean shutdown, so that the committed directory needs no recovery.
            docker
                .stop_container(&name, None::<StopContainerOptions>)
                .await
                .map_err(|e| docker_error(&format!("stopping {name}"), e))?;
            let options = CommitContainerOptionsBuilder::default()
                .container(&name)
                .repo(&repository)
                .tag(&tag)
                .comment(&format!("{image} with an initialised data directory"))
                .build();
            // What is not set here is kept from the container (entry point, command, ...).
            let config = ContainerConfig {
                labels: Some(HashMap::from([(
                    WARM_LABEL.0.to_owned(),
                    WARM_LABEL.2.to_owned(),
                )])),
                ..Default::default()
            };
            docker
                .commit_container(options, config)
                .await
                .map_err(|e| docker_error(&format!("committing {name}"), e))?;
            Ok::<_, EngineError>(())
        })
        .await
        .unwrap_or_else(|_| {
            Err(EngineError::Failed(format!(
                "making the warm image took longer than {WARM_TIMEOUT:?}"
            )))
        });
        let _ = remove_container(docker, &name).await;
        made.map(|()| format!("{repository}:{tag}"))
    }

    /// Creates and starts a server of `image` (already on this host) as `spec` says.
    async fn create_and_start(
        &self,
        docker: &bollard::Docker,
        spec: &ServerSpec,
        image: &str,
        layout: Layout<'_>,
    ) -> Result<Server, EngineError> {
        let warm = matches!(layout, Layout::Warm(_));
        let options = CreateContainerOptionsBuilder::default()
            .name(&spec.name)
            .build();
        let what = format!(
            "creating the throwaway server {} from {}",
            spec.name, spec.image
        );
        match docker
            .create_container(Some(options), container_body(spec, image, layout))
            .await
        {
            Ok(_) => {}
            Err(BollardError::DockerResponseServerError {
                status_code: 409,
                message,
            }) => {
                // A leftover of the same name: removing it is the caller's business.
                return Err(EngineError::Unavailable(format!("{what}: {message}")));
            }
            Err(e) => return Err(docker_error(&what, e)),
        }
        if let Err(e) = docker
            .start_container(&spec.name, None::<StartContainerOptions>)
            .await
        {
            let what = format!("starting the throwaway server {}", spec.name);
            let error = match e {
                // The runtime could not run the image's command: the image is at fault.
                BollardError::DockerResponseServerError { message, .. } => {
                    EngineError::Failed(format!("{what}: {message}"))
                }
                other => docker_error(&what, other),
            };
            // Best effort: the caller removes it too.
            let _ = remove_container(docker, &spec.name).await;
            return Err(error);
        }
        Ok(Server {
            docker: docker.clone(),
            name: spec.name.clone(),
            warm,
            database: OnceLock::new(),
            uploaded: tokio::sync::Mutex::new(Vec::new()),
        })
    }
}

/// An error of a Docker call. Docker that cannot be reached or fails on its own is
/// `Unavailable`; a missing container or one that stopped (the server died, likely of the
/// dump) is `Failed`.
fn docker_error(what: &str, error: BollardError) -> EngineError {
    match error {
        BollardError::DockerResponseServerError {
            status_code: 404 | 409,
            message,
        } => EngineError::Failed(format!("{what}: {message}")),
        BollardError::DockerResponseServerError { message, .. } => {
            EngineError::Unavailable(format!("{what}: Docker refused: {message}"))
        }
        other => EngineError::Unavailable(format!("{what}: {other}")),
    }
}

/// What the engine needs to know of an image.
#[derive(Debug)]
struct Image {
    id: String,
    entrypoint: Vec<String>,
    pgdata: String,
}

impl From<bollard::models::ImageInspect> for Image {
    fn from(inspect: bollard::models::ImageInspect) -> Self {
        let config = inspect.config.unwrap_or_default();
        let pgdata = config
            .env
            .unwrap_or_default()
            .into_iter()
            .find_map(|e| e.strip_prefix("PGDATA=").map(str::to_owned))
            .unwrap_or_else(|| DEFAULT_PGDATA.to_owned());
        Self {
            id: inspect.id.unwrap_or_default(),
            entrypoint: config.entrypoint.unwrap_or_default(),
            pgdata,
        }
    }
}

/// Where a container's data directory comes from.
#[derive(Clone, Copy, Debug)]
enum Layout<'a> {
    /// Initialised by the image's entry point, in the image's PGDATA.
    Scratch,
    /// Initialised into [`TEMPLATE`], to be committed as a warm image.
    Template,
    /// Copied from a warm image's template into the source image's PGDATA and entry point.
    Warm(&'a Image),
}

/// The repository and tag of the warm image of the image with this id.
fn warm_reference(id: &str) -> (String, String) {
    let hex = id.trim_start_matches("sha256:");
    (
        WARM_REPOSITORY.to_owned(),
        format!("{}-{WARM_LAYOUT}", &hex[..hex.len().min(16)]),
    )
}

fn is_not_found(error: &BollardError) -> bool {
    matches!(
        error,
        BollardError::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

async fn remove_container(docker: &bollard::Docker, name: &str) -> Result<(), EngineError> {
    // `v`: the image declares PGDATA a volume; its anonymous volume goes with the container.
    let options = RemoveContainerOptionsBuilder::default()
        .force(true)
        .v(true)
        .build();
    match docker.remove_container(name, Some(options)).await {
        Ok(()) => Ok(()),
        Err(e) if is_not_found(&e) => Ok(()),
        Err(e) => Err(match e {
            BollardError::DockerResponseServerError { message, .. } => {
                EngineError::Unavailable(format!("removing {name}: Docker refused: {message}"))
            }
            other => EngineError::Unavailable(format!("removing {name}: {other}")),
        }),
    }
}

/// The container's definition: the official image's contract, no network, fast settings.
fn container_body(spec: &ServerSpec, image: &str, layout: Layout<'_>) -> ContainerCreateBody {
    let mut cmd = vec!["postgres".to_owned()];
    for setting in SERVER_SETTINGS {
        cmd.push("-c".to_owned());
        cmd.push((*setting).to_owned());
    }
    let mut env = vec![
        "POSTGRES_HOST_AUTH_METHOD=trust".to_owned(),
        format!("POSTGRES_DB={DATABASE}"),
        format!("POSTGRES_USER={SUPERUSER}"),
        // The directory is thrown away (or committed after a clean stop).
        "POSTGRES_INITDB_ARGS=--no-sync".to_owned(),
    ];
    let entrypoint = match layout {
        Layout::Scratch => None,
        Layout::Template => {
            env.push(format!("PGDATA={TEMPLATE}"));
            None
        }
        Layout::Warm(source) => {
            // The warm image carries the template's PGDATA in its environment: set the
            // source image's back.
            env.push(format!("PGDATA={}", source.pgdata));
            let mut entrypoint = vec![
                "/bin/sh".to_owned(),
                "-c".to_owned(),
                WARM_START.to_owned(),
                "infrapilot-warm-start".to_owned(),
            ];
            entrypoint.extend(source.entrypoint.iter().cloned());
            Some(entrypoint)
        }
    };
    ContainerCreateBody {
        image: Some(image.to_owned()),
        labels: Some(spec.labels.clone().into_iter().collect()),
        env: Some(env),
        entrypoint,
        cmd: Some(cmd),
        host_config: Some(HostConfig {
            network_mode: Some("none".to_owned()),
            shm_size: Some(SHM_BYTES),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[async_trait]
impl RestoreEngine for Postgres {
    async fn start(&self, spec: &ServerSpec) -> Result<Box<dyn Throwaway>, EngineError> {
        let docker = self.client().await?;
        let source = self.image(&docker, &spec.image).await?;
        let (repository, tag) = warm_reference(&source.id);
        let warm = format!("{repository}:{tag}");
        let server = if docker.inspect_image(&warm).await.is_ok() {
            self.create_and_start(&docker, spec, &warm, Layout::Warm(&source))
                .await?
        } else {
            self.warm_later(&docker, &spec.image, &source.id);
            self.create_and_start(&docker, spec, &spec.image, Layout::Scratch)
                .await?
        };
        Ok(Box::new(server))
    }

    async fn remove(&self, name: &str) -> Result<(), EngineError> {
        remove_container(&self.client().await?, name).await
    }

    async fn list(&self, labels: &BTreeMap<String, String>) -> Result<Vec<String>, EngineError> {
        let docker = self.client().await?;
        let filter: Vec<String> = labels
            .iter()
            .map(|(k, v)| {
                if v.is_empty() {
                    k.clone()
                } else {
                    format!("{k}={v}")
                }
            })
            .collect();
        let options = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&HashMap::from([("label".to_owned(), filter)]))
            .build();
        let mut names: Vec<String> = docker
            .list_containers(Some(options))
            .await
            .map_err(|e| docker_error("listing throwaway servers", e))?
            .into_iter()
            .filter_map(|c| c.names.and_then(|n| n.into_iter().next()))
            .map(|n| n.trim_start_matches('/').to_owned())
            .collect();
        names.sort();
        Ok(names)
    }
}

/// A directory dump uploaded into the container.
#[derive(Debug)]
struct Uploaded {
    source: PathBuf,
    /// Where it is in the container.
    target: String,
    /// The size of its files.
    bytes: u64,
}

/// One throwaway PostgreSQL container.
#[derive(Debug)]
struct Server {
    docker: bollard::Docker,
    name: String,
    /// Started from a warm image: its data directory is initialised already.
    warm: bool,
    /// Set by the restore of a plain dump that makes its own database.
    database: OnceLock<String>,
    uploaded: tokio::sync::Mutex<Vec<Uploaded>>,
}

/// What a tool run with [`Server::run`] did.
#[derive(Debug)]
struct Finished {
    exit_code: i64,
    /// Standard output, when kept.
    stdout: Vec<u8>,
    /// The end of standard error.
    tail: String,
    /// Bytes fed to the tool's standard input.
    fed: u64,
}

impl Finished {
    /// The tool's last lines, for an error message.
    fn error_text(&self) -> String {
        last_lines(&self.tail)
    }
}

/// What a tool reads on its standard input.
#[derive(Clone, Copy, Debug)]
struct Input<'a> {
    path: &'a Path,
    compression: Compression,
}

/// Reads `input` decompressed on a blocking thread and sends it in [`CHUNK`]s; stops when the
/// receiver is gone. A read error is sent as the last item.
fn spawn_reader(input: Input<'_>) -> mpsc::Receiver<std::io::Result<Vec<u8>>> {
    let (tx, rx) = mpsc::channel(CHUNKS_IN_FLIGHT);
    let path = input.path.to_owned();
    let compression = input.compression;
    tokio::task::spawn_blocking(move || {
        let mut reader = match crate::backup::open(&path, compression) {
            Ok(reader) => reader,
            Err(e) => {
                let _ = tx.blocking_send(Err(e));
                return;
            }
        };
        loop {
            let mut chunk = vec![0u8; CHUNK];
            let mut filled = 0;
            let result = loop {
                match reader.read(&mut chunk[filled..]) {
                    Ok(0) => break Ok(()),
                    Ok(n) => {
                        filled += n;
                        if filled == CHUNK {
                            break Ok(());
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => break Err(e),
                }
            };
            let end = filled < CHUNK;
            if filled > 0 {
                chunk.truncate(filled);
                if tx.blocking_send(Ok(chunk)).is_err() {
                    return;
                }
            }
            if let Err(e) = result {
                let _ = tx.blocking_send(Err(e));
                return;
            }
            if end {
                return;
            }
        }
    });
    rx
}

/// Keeps the last `limit` bytes written to it.
#[derive(Debug, Default)]
struct Tail {
    bytes: VecDeque<u8>,
}

impl Tail {
    fn push(&mut self, data: &[u8]) {
        let data = &data[data.len().saturating_sub(STDERR_TAIL)..];
        self.bytes.extend(data);
        let excess = self.bytes.len().saturating_sub(STDERR_TAIL);
        self.bytes.drain(..excess);
    }

    fn text(&self) -> String {
        let (a, b) = self.bytes.as_slices();
        let mut all = a.to_vec();
        all.extend_from_slice(b);
        String::from_utf8_lossy(&all).into_owned()
    }
}

impl Server {
    fn database_name(&self) -> &str {
        self.database.get().map_or(DATABASE, String::as_str)
    }

    /// Runs `argv` in the container as the superuser's OS user, with `input` on its standard
    /// input. Returns when the tool has ended; a read error of `input` fails at once.
    async fn run(
        &self,
        argv: &[&str],
        env: &[String],
        input: Option<Input<'_>>,
        keep_stdout: bool,
    ) -> Result<Finished, EngineError> {
        let tool = argv.first().copied().unwrap_or_default();
        let what = format!("running {tool} in {}", self.name);
        let mut full_env = vec![
            format!("PGHOST={SOCKET_DIR}"),
            format!("PGUSER={SUPERUSER}"),
            "PGAPPNAME=infrapilot".to_owned(),
        ];
        full_env.extend(env.iter().cloned());
        // A tool that stops reading its input early (`pg_restore --list` once it has the
        // table of contents, or a restore that failed) would end the exec while the dump is
        // still being written into it: Docker then resets the connection, and the tool's last
        // output may be lost with it. So the input is read to its end, after the tool.
        let mut cmd: Vec<String> = Vec::new();
        if input.is_some() {
            cmd.extend([
                "/bin/sh".to_owned(),
                "-c".to_owned(),
                DRAIN.to_owned(),
                "infrapilot-drain".to_owned(),
            ]);
        }
        cmd.extend(argv.iter().map(|s| (*s).to_owned()));
        let exec = self
            .docker
            .create_exec(
                &self.name,
                CreateExecOptions {
                    cmd: Some(cmd),
                    env: Some(full_env),
                    user: Some(SUPERUSER.to_owned()),
                    attach_stdin: Some(input.is_some()),
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    tty: Some(false),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| docker_error(&what, e))?;
        let StartExecResults::Attached {
            output: mut stream,
            input: mut stdin,
        } = self
            .docker
            .start_exec(&exec.id, None)
            .await
            .map_err(|e| docker_error(&what, e))?
        else {
            return Err(EngineError::Unavailable(format!(
                "{what}: Docker did not attach to the command"
            )));
        };

        let fed = AtomicU64::new(0);
        // Feeds the input; ends with Err only when the dump could not be read. A write error
        // means the tool stopped reading (it exited, e.g. `pg_restore --list` once it has the
        // table of contents): its exit code tells whether that was a failure.
        let feed = async {
            let Some(input) = input else {
                drop(stdin);
                return Ok(());
            };
            let mut chunks = spawn_reader(input);
            while let Some(chunk) = chunks.recv().await {
                let chunk = chunk.map_err(|e| {
                    EngineError::Failed(format!(
                        "reading the dump {} failed after {} bytes: {e}",
                        input.path.display(),
                        fed.load(Ordering::Relaxed)
                    ))
                })?;
                if stdin.write_all(&chunk).await.is_err() {
                    return Ok(());
                }
                fed.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            }
            // The end of the input: Docker closes the tool's standard input.
            let _ = stdin.shutdown().await;
            // Keep the connection's write half until the output is read.
            std::future::pending::<()>().await;
            Ok(())
        };
        let collect = async {
            let mut stdout = Vec::new();
            let mut tail = Tail::default();
            while let Some(chunk) = stream.next().await {
                match chunk.map_err(|e| docker_error(&what, e))? {
                    LogOutput::StdOut { message } if keep_stdout => {
                        if stdout.len() + message.len() > MAX_STDOUT {
                            return Err(EngineError::Failed(format!(
                                "{tool} printed more than {} MiB",
                                MAX_STDOUT >> 20
                            )));
                        }
                        stdout.extend_from_slice(&message);
                    }
                    LogOutput::StdErr { message } => tail.push(&message),
                    // Not kept: psql's result tables of a script's SELECTs, say.
                    _ => {}
                }
            }
            Ok::<_, EngineError>((stdout, tail))
        };
        tokio::pin!(feed);
        tokio::pin!(collect);
        let mut feeding = true;
        let (stdout, tail) = loop {
            tokio::select! {
                biased;
                fed = &mut feed, if feeding => {
                    fed?;
                    feeding = false;
                }
                output = &mut collect => break output?,
            }
        };
        let exit_code = self.exit_code(&exec.id, &what).await?;
        Ok(Finished {
            exit_code,
            stdout,
            tail: tail.text(),
            fed: fed.load(Ordering::Relaxed),
        })
    }

    /// The exit code of a finished exec. Its output ends as the process does; Docker records
    /// the exit code a moment later.
    async fn exit_code(&self, exec: &str, what: &str) -> Result<i64, EngineError> {
        for _ in 0..200 {
            let inspect = self
                .docker
                .inspect_exec(exec)
                .await
                .map_err(|e| docker_error(what, e))?;
            if inspect.running != Some(true)
                && let Some(code) = inspect.exit_code
            {
                return Ok(code);
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        Err(EngineError::Unavailable(format!(
            "{what}: Docker reports no exit code"
        )))
    }

    /// The container's last log lines.
    async fn log_tail(&self, lines: usize) -> Result<String, EngineError> {
        let tail = lines.to_string();
        let options = LogsOptionsBuilder::default()
            .stdout(true)
            .stderr(true)
            .tail(&tail)
            .build();
        let mut stream = self.docker.logs(&self.name, Some(options));
        let mut text = String::new();
        while let Some(chunk) = stream.next().await {
            match chunk
                .map_err(|e| docker_error(&format!("reading the log of {}", self.name), e))?
            {
                LogOutput::StdOut { message } | LogOutput::StdErr { message } => {
                    text.push_str(&String::from_utf8_lossy(&message));
                }
                _ => {}
            }
        }
        Ok(text)
    }

    /// `psql --csv` of one statement in `database`, NULL told from the empty string by a
    /// marker no value can guess (psql prints both as an empty field otherwise).
    async fn psql_rows(
        &self,
        database: &str,
        sql: &str,
        statement_timeout: &str,
    ) -> Result<QueryRows, EngineError> {
        let marker = format!("NULL-{}", uuid::Uuid::new_v4().simple());
        let null = format!("null={marker}");
        let options = format!(
            "PGOPTIONS=-c default_transaction_read_only=on -c statement_timeout={statement_timeout}"
        );
        let finished = self
            .run(
                &[
                    "psql", "-X", "--csv", "-P", &null, "-d", database, "-c", sql,
                ],
                &[options],
                None,
                true,
            )
            .await?;
        if finished.exit_code != 0 {
            let message = server_error(&finished.tail);
            return Err(EngineError::Failed(if message.is_empty() {
                format!(
                    "psql failed with exit code {} and printed nothing",
                    finished.exit_code
                )
            } else {
                message
            }));
        }
        parse_csv(&finished.stdout, &marker)
    }

    /// Uploads a directory dump (once per source) and returns its path in the container.
    async fn upload(&self, dump: &Dump) -> Result<(String, u64), EngineError> {
        let mut uploaded = self.uploaded.lock().await;
        if let Some(done) = uploaded.iter().find(|u| u.source == dump.path) {
            return Ok((done.target.clone(), done.bytes));
        }
        let dir_name = format!("infrapilot-dump-{}", uploaded.len());
        let target = format!("{UPLOAD_PARENT}/{dir_name}");
        let (tx, rx) = mpsc::channel::<std::io::Result<Vec<u8>>>(CHUNKS_IN_FLIGHT);
        let source = dump.path.clone();
        let archiver = tokio::task::spawn_blocking(move || archive_dir(&source, &dir_name, tx));
        let body = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item.map(Into::into), rx))
        });
        let options = UploadToContainerOptionsBuilder::default()
            .path(UPLOAD_PARENT)
            .build();
        let sent = self
            .docker
            .upload_to_container(&self.name, Some(options), bollard::body_try_stream(body))
            .await;
        // The dump's own error first: an upload cut short by it fails for that reason.
        let bytes = match archiver.await {
            Ok(Ok(bytes)) => bytes,
            Ok(Err(e)) => {
                return Err(EngineError::Failed(format!(
                    "reading the directory dump {}: {e}",
                    dump.path.display()
                )));
            }
            Err(e) => {
                return Err(EngineError::Failed(format!(
                    "reading the directory dump {}: {e}",
                    dump.path.display()
                )));
            }
        };
        sent.map_err(|e| {
            docker_error(
                &format!("uploading the directory dump into {}", self.name),
                e,
            )
        })?;
        uploaded.push(Uploaded {
            source: dump.path.clone(),
            target: target.clone(),
            bytes,
        });
        Ok((target, bytes))
    }

    /// Creates the roles that are missing, without login.
    async fn create_roles(&self, roles: &[String]) -> Result<(), EngineError> {
        let wanted: BTreeSet<&str> = roles.iter().map(String::as_str).collect();
        if wanted.is_empty() {
            return Ok(());
        }
        let existing = self
            .psql_rows(DATABASE, "SELECT rolname FROM pg_catalog.pg_roles", "0")
            .await?;
        let existing: BTreeSet<&str> = existing
            .rows
            .iter()
            .filter_map(|row| row.first().and_then(|v| v.as_deref()))
            .collect();
        let statements: Vec<String> = wanted
            .difference(&existing)
            .map(|role| format!("CREATE ROLE {} NOLOGIN", quote_ident(role)))
            .collect();
        if statements.is_empty() {
            return Ok(());
        }
        let mut argv = vec!["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", DATABASE];
        for statement in &statements {
            argv.push("-c");
            argv.push(statement);
        }
        let finished = self.run(&argv, &[], None, false).await?;
        if finished.exit_code != 0 {
            return Err(EngineError::Failed(format!(
                "creating the dump's roles failed: {}",
                finished.error_text()
            )));
        }
        Ok(())
    }
}

/// The `pg_restore -F` letter of an archive format.
fn archive_format(format: DumpFormat) -> Option<&'static str> {
    match format {
        DumpFormat::Custom => Some("c"),
        DumpFormat::Tar => Some("t"),
        DumpFormat::Directory => Some("d"),
        DumpFormat::Plain => None,
    }
}

/// Writes a tar of `source` (as `name/...`) into `tx` in [`CHUNK`]s; returns the size of the
/// files archived. Ownership and modes are normalised (root, 0644/0755) so that the server's
/// OS user can read them whatever they are on the operator's side.
fn archive_dir(
    source: &Path,
    name: &str,
    tx: mpsc::Sender<std::io::Result<Vec<u8>>>,
) -> std::io::Result<u64> {
    struct Sink {
        tx: mpsc::Sender<std::io::Result<Vec<u8>>>,
        buffer: Vec<u8>,
    }
    impl Sink {
        fn send(&mut self) -> std::io::Result<()> {
            let data = std::mem::replace(&mut self.buffer, Vec::with_capacity(CHUNK));
            self.tx
                .blocking_send(Ok(data))
                .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "upload ended"))
        }
    }
    impl Write for Sink {
        fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
            self.buffer.extend_from_slice(data);
            if self.buffer.len() >= CHUNK {
                self.send()?;
            }
            Ok(data.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            if !self.buffer.is_empty() {
                self.send()?;
            }
            Ok(())
        }
    }

    let error_tx = tx.clone();
    let result: std::io::Result<u64> = (|| {
        let mut bytes = 0;
        for entry in std::fs::read_dir(source)? {
            let metadata = entry?.metadata()?;
            if metadata.is_file() {
                bytes += metadata.len();
            }
        }
        let mut builder = tar::Builder::new(Sink {
            tx,
            buffer: Vec::with_capacity(CHUNK),
        });
        builder.mode(tar::HeaderMode::Deterministic);
        builder.append_dir_all(name, source)?;
        let mut sink = builder.into_inner()?;
        sink.flush()?;
        Ok(bytes)
    })();
    if let Err(e) = &result {
        // Cuts the upload short so that Docker does not take a partial directory for whole.
        let _ = error_tx.blocking_send(Err(std::io::Error::new(e.kind(), e.to_string())));
    }
    result
}

#[async_trait]
impl Throwaway for Server {
    fn name(&self) -> &str {
        &self.name
    }

    async fn version(&self) -> Result<ServerVersion, EngineError> {
        let finished = self
            .run(&["postgres", "--version"], &[], None, true)
            .await?;
        let text = String::from_utf8_lossy(&finished.stdout);
        if finished.exit_code != 0 {
            return Err(EngineError::Failed(format!(
                "postgres --version failed: {}",
                finished.error_text()
            )));
        }
        parse_version(&text).ok_or_else(|| {
            EngineError::Failed(format!(
                "postgres --version printed no version: {}",
                text.trim()
            ))
        })
    }

    async fn list_contents(&self, dump: &Dump) -> Result<TableOfContents, EngineError> {
        let Some(format) = archive_format(dump.format) else {
            return Err(EngineError::Failed(
                "a plain dump has no table of contents (pg_restore reads archives only)".to_owned(),
            ));
        };
        let format = format!("-F{format}");
        let finished = if dump.format == DumpFormat::Directory {
            let (target, _) = self.upload(dump).await?;
            self.run(&["pg_restore", "--list", &format, &target], &[], None, true)
                .await?
        } else {
            let input = Input {
                path: &dump.path,
                compression: dump.compression,
            };
            self.run(&["pg_restore", "--list", &format], &[], Some(input), true)
                .await?
        };
        if finished.exit_code != 0 {
            return Err(EngineError::Failed(format!(
                "pg_restore --list failed: {}",
                finished.error_text()
            )));
        }
        Ok(parse_toc(&String::from_utf8_lossy(&finished.stdout)))
    }

    async fn ready(&self, timeout: Duration) -> Result<(), EngineError> {
        let deadline = Instant::now() + timeout;
        let mut initialised = self.warm;
        loop {
            let inspect = self
                .docker
                .inspect_container(&self.name, None::<InspectContainerOptions>)
                .await
                .map_err(|e| docker_error(&format!("inspecting {}", self.name), e))?;
            let state = inspect.state.unwrap_or_default();
            if state.running != Some(true) {
                let log = self.log_tail(ERROR_LINES).await.unwrap_or_default();
                return Err(EngineError::Failed(format!(
                    "the throwaway server {} stopped before it was ready (exit code {}): {}",
                    self.name,
                    state.exit_code.unwrap_or(-1),
                    last_lines(&log)
                )));
            }
            if !initialised {
                // The entry point runs a temporary server to initialise, then stops it and
                // starts the real one: a connection before its message may reach the former.
                let log = self.log_tail(10_000).await?;
                initialised = log.contains(INIT_COMPLETE) || log.contains(INIT_SKIPPED);
            }
            if initialised {
                let finished = self
                    .run(&["pg_isready", "-q", "-d", DATABASE], &[], None, false)
                    .await?;
                if finished.exit_code == 0 {
                    return Ok(());
                }
            }
            let now = Instant::now();
            if now >= deadline {
                let log = self.log_tail(ERROR_LINES).await.unwrap_or_default();
                return Err(EngineError::Failed(format!(
                    "the throwaway server {} was not ready after {}s: {}",
                    self.name,
                    timeout.as_secs(),
                    last_lines(&log)
                )));
            }
            // Often: each look is a cheap exec, and every run waits here.
            tokio::time::sleep(Duration::from_millis(50).min(deadline - now)).await;
        }
    }

    async fn restore(&self, dump: &Dump, roles: &[String]) -> Result<RestoreStats, EngineError> {
        self.create_roles(roles).await?;
        let input = Input {
            path: &dump.path,
            compression: dump.compression,
        };
        let (finished, tool, bytes_read) = match archive_format(dump.format) {
            Some(format) => {
                let format = format!("-F{format}");
                // One transaction: with wal_level=minimal, COPY into a table created in the
                // same transaction writes no WAL (about 25% faster on pgbench data).
                let mut argv = vec![
                    "pg_restore",
                    "--single-transaction",
                    "--exit-on-error",
                    "--no-owner",
                    "--no-privileges",
                    // The source's tablespaces do not exist here.
                    "--no-tablespaces",
                    &format,
                    "-d",
                    DATABASE,
                ];
                if dump.format == DumpFormat::Directory {
                    let (target, bytes) = self.upload(dump).await?;
                    argv.push(&target);
                    let finished = self.run(&argv, &[], None, false).await?;
                    (finished, "pg_restore", bytes)
                } else {
                    let finished = self.run(&argv, &[], Some(input), false).await?;
                    let fed = finished.fed;
                    (finished, "pg_restore", fed)
                }
            }
            None => {
                if let Some(database) = &dump.database {
                    // The dump makes and switches to this database itself.
                    let _ = self.database.set(database.clone());
                }
                let argv = [
                    "psql",
                    "-X",
                    "-q",
                    "-v",
                    "ON_ERROR_STOP=1",
                    "-d",
                    DATABASE,
                    "-f",
                    "-",
                ];
                let finished = self.run(&argv, &[], Some(input), false).await?;
                let fed = finished.fed;
                (finished, "psql", fed)
            }
        };
        if finished.exit_code != 0 {
            let text = finished.error_text();
            return Err(EngineError::Failed(if text.is_empty() {
                format!("{tool} failed with exit code {}", finished.exit_code)
            } else {
                text
            }));
        }
        let size = self
            .psql_rows(
                self.database_name(),
                "SELECT pg_catalog.pg_database_size(pg_catalog.current_database())",
                "0",
            )
            .await?;
        let database_bytes = size
            .rows
            .first()
            .and_then(|row| row.first())
            .and_then(|v| v.as_deref())
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| {
                EngineError::Failed(format!(
                    "pg_database_size of {} gave no number",
                    self.database_name()
                ))
            })?;
        Ok(RestoreStats {
            bytes_read,
            database_bytes,
        })
    }

    fn database(&self) -> &str {
        self.database_name()
    }

    async fn tables(&self) -> Result<Vec<TableRows>, EngineError> {
        let result = self
            .psql_rows(self.database_name(), TABLES_SQL, "0")
            .await?;
        let mut tables = Vec::with_capacity(result.rows.len());
        for row in &result.rows {
            let [Some(schema), Some(name), Some(rows)] = row.as_slice() else {
                return Err(EngineError::Failed(format!(
                    "counting rows gave an unexpected row: {row:?}"
                )));
            };
            let rows = rows.parse().map_err(|e| {
                EngineError::Failed(format!("counting rows of {schema}.{name} gave {rows}: {e}"))
            })?;
            tables.push(TableRows {
                schema: schema.clone(),
                name: name.clone(),
                rows,
            });
        }
        tables.sort_by(|a, b| (&a.schema, &a.name).cmp(&(&b.schema, &b.name)));
        Ok(tables)
    }

    async fn query(&self, sql: &str) -> Result<QueryRows, EngineError> {
        self.psql_rows(self.database_name(), sql, STATEMENT_TIMEOUT)
            .await
    }

    async fn remove(&self) -> Result<(), EngineError> {
        remove_container(&self.docker, &self.name).await
    }
}

/// Every user table (ordinary and partitioned; a partitioned table counts its partitions'
/// rows) with its exact row count, in one statement: `query_to_xml` runs a `count(*)` per
/// table.
const TABLES_SQL: &str = "\
SELECT n.nspname, c.relname, \
 (pg_catalog.xpath('/row/n/text()', pg_catalog.query_to_xml(\
 pg_catalog.format('SELECT count(*) AS n FROM %I.%I', n.nspname, c.relname), false, true, '')\
 ))[1]::text::bigint \
FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
WHERE c.relkind IN ('r', 'p') \
 AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
 AND n.nspname !~ '^pg_(toast|temp_|toast_temp_)' \
ORDER BY n.nspname, c.relname";

/// Quotes an identifier: double quotes around it, inner double quotes doubled.
fn quote_ident(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// `postgres (PostgreSQL) 15.18 (Debian 15.18-1.pgdg120+1)` → 15, `15.18`.
fn parse_version(text: &str) -> Option<ServerVersion> {
    let (_, rest) = text.split_once("(PostgreSQL)")?;
    let version = rest.split_whitespace().next()?;
    let major = version
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()?;
    Some(ServerVersion {
        major,
        text: version.to_owned(),
    })
}

/// Counts the entries of a `pg_restore --list` listing (`3345; 0 16390 TABLE DATA public t
/// owner`); lines starting with `;` are comments.
fn parse_toc(listing: &str) -> TableOfContents {
    let mut toc = TableOfContents::default();
    for line in listing.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with(';') {
            continue;
        }
        toc.entries += 1;
        // `id; tableoid oid DESCRIPTION ...`: skip the three numbers.
        let description = line
            .split_once(';')
            .map(|(_, rest)| rest.trim_start())
            .and_then(|rest| rest.split_once(' '))
            .and_then(|(_, rest)| rest.split_once(' '))
            .map(|(_, rest)| rest);
        if description.is_some_and(|d| d.starts_with("TABLE DATA ")) {
            toc.table_data += 1;
        }
    }
    toc
}

/// Parses `psql --csv` output: a header line, then rows; a field equal to `null` is NULL.
fn parse_csv(output: &[u8], null: &str) -> Result<QueryRows, EngineError> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .from_reader(output);
    let mut records = reader.records();
    let unreadable =
        |e: csv::Error| EngineError::Failed(format!("psql printed unreadable CSV: {e}"));
    let Some(header) = records.next() else {
        // A statement without a result (`SET`, `DO`).
        return Ok(QueryRows::default());
    };
    let columns = header
        .map_err(unreadable)?
        .iter()
        .map(str::to_owned)
        .collect();
    let mut rows = Vec::new();
    for record in records {
        rows.push(
            record
                .map_err(unreadable)?
                .iter()
                .map(|v| (v != null).then(|| v.to_owned()))
                .collect(),
        );
    }
    Ok(QueryRows { columns, rows })
}

/// The last [`ERROR_LINES`] non-empty lines of `text`, at most [`ERROR_CHARS`] characters
/// (the end kept), trimmed.
fn last_lines(text: &str) -> String {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.trim().is_empty())
        .collect();
    let joined = lines[lines.len().saturating_sub(ERROR_LINES)..].join("\n");
    let chars = joined.chars().count();
    if chars <= ERROR_CHARS {
        return joined;
    }
    joined
        .chars()
        .skip(chars - ERROR_CHARS)
        .collect::<String>()
        .trim()
        .to_owned()
}

/// The server's `ERROR:` line from psql's standard error (with its DETAIL or HINT), or the
/// last lines when there is none (psql could not connect, say).
fn server_error(stderr: &str) -> String {
    let mut lines = stderr.lines().skip_while(|l| !l.contains("ERROR:"));
    let Some(error) = lines.next() else {
        return last_lines(stderr);
    };
    let mut message = error.trim().to_owned();
    for line in lines {
        let line = line.trim();
        if line.starts_with("DETAIL:") || line.starts_with("HINT:") {
            message.push(' ');
            message.push_str(line);
        }
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_quoted_with_inner_quotes_doubled() {
        assert_eq!(quote_ident("app_owner"), "\"app_owner\"");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(
            quote_ident("x\" NOLOGIN; DROP ROLE y; --"),
            "\"x\"\" NOLOGIN; DROP ROLE y; --\""
        );
    }

    #[test]
    fn versions_are_read_from_postgres_version_output() {
        assert_eq!(
            parse_version("postgres (PostgreSQL) 15.18 (Debian 15.18-1.pgdg120+1)\n"),
            Some(ServerVersion {
                major: 15,
                text: "15.18".to_owned()
            })
        );
        assert_eq!(
            parse_version("postgres (PostgreSQL) 17.2\n").map(|v| v.major),
            Some(17)
        );
        assert_eq!(
            parse_version("postgres (PostgreSQL) 18beta1").map(|v| v.major),
            Some(18)
        );
        assert_eq!(parse_version("bash: postgres: not found"), None);
    }

    #[test]
    fn a_listing_counts_entries_and_table_data() {
        let listing = "\
;
; Archive created at 2026-11-02 10:00:00 UTC
;     dbname: shop
;
; Selected TOC Entries:
;
5; 2615 16386 SCHEMA - sales app_owner
215; 1259 16387 TABLE public customers postgres
3340; 0 16387 TABLE DATA public customers postgres
3341; 0 16392 TABLE DATA sales orders postgres
3342; 0 0 SEQUENCE SET public customers_id_seq postgres
3343; 0 16399 TABLE public TABLE DATA postgres
";
        assert_eq!(
            parse_toc(listing),
            TableOfContents {
                entries: 6,
                table_data: 2
            }
        );
    }

    #[test]
    fn csv_tells_null_from_the_empty_string_by_the_marker() {
        let rows =
            parse_csv(b"a,b,c\nNULL-x,,\"x,y\"\n1,\" s\",\"l1\nl2\"\n", "NULL-x").expect("CSV");
        assert_eq!(rows.columns, ["a", "b", "c"]);
        assert_eq!(
            rows.rows,
            vec![
                vec![None, Some(String::new()), Some("x,y".to_owned())],
                vec![
                    Some("1".to_owned()),
                    Some(" s".to_owned()),
                    Some("l1\nl2".to_owned())
                ],
            ]
        );
        assert_eq!(
            parse_csv(b"", "NULL-x").expect("empty"),
            QueryRows::default()
        );
    }

    #[test]
    fn error_text_keeps_the_last_lines_and_characters() {
        let text: String = (0..30).map(|i| format!("line {i}\n\n")).collect();
        let kept = last_lines(&text);
        assert!(kept.starts_with("line 10\n"), "{kept}");
        assert!(kept.ends_with("line 29"), "{kept}");
        let long = "x".repeat(5000);
        assert_eq!(last_lines(&long).len(), ERROR_CHARS);
    }

    #[test]
    fn the_server_error_line_is_picked_from_psql_output() {
        let stderr = "ERROR:  relation \"nope\" does not exist\nLINE 1: select * from nope\n  \
                      ^\nHINT:  Perhaps you meant to reference the table \"public.nop\".\n";
        assert_eq!(
            server_error(stderr),
            "ERROR:  relation \"nope\" does not exist HINT:  Perhaps you meant to reference \
             the table \"public.nop\"."
        );
        assert_eq!(
            server_error("psql: error: connection refused\n"),
            "psql: error: connection refused"
        );
    }

    #[test]
    fn the_container_has_no_network_and_the_fast_settings() {
        let spec = ServerSpec {
            name: "v".to_owned(),
            image: "postgres:15".to_owned(),
            labels: BTreeMap::from([("a".to_owned(), "b".to_owned())]),
        };
        let source = Image {
            id: "sha256:0123".to_owned(),
            entrypoint: vec!["docker-entrypoint.sh".to_owned()],
            pgdata: "/var/lib/postgresql/data".to_owned(),
        };
        let body = container_body(&spec, "postgres:15", Layout::Scratch);
        assert_eq!(body.entrypoint, None);
        assert!(
            !body
                .env
                .expect("env")
                .iter()
                .any(|e| e.starts_with("PGDATA="))
        );
        let template = container_body(&spec, "postgres:15", Layout::Template);
        assert!(
            template
                .env
                .expect("env")
                .contains(&format!("PGDATA={TEMPLATE}"))
        );
        // Outside the image's VOLUME, or the warm image would lose it.
        assert!(!TEMPLATE.starts_with("/var/lib/postgresql"));
        let body = container_body(
            &spec,
            "infrapilot-restore-warm:0123-v1",
            Layout::Warm(&source),
        );
        // The template is copied into the source image's PGDATA, then its entry point runs.
        let entrypoint = body.entrypoint.clone().expect("an entry point");
        assert_eq!(entrypoint[..2], ["/bin/sh".to_owned(), "-c".to_owned()]);
        assert!(entrypoint[2].contains(&format!("tar -C {TEMPLATE} -cf - .")));
        assert_eq!(
            entrypoint.last().map(String::as_str),
            Some("docker-entrypoint.sh")
        );
        assert_eq!(
            body.image.as_deref(),
            Some("infrapilot-restore-warm:0123-v1")
        );
        let host = body.host_config.expect("host config");
        assert_eq!(host.network_mode.as_deref(), Some("none"));
        let env = body.env.expect("env");
        assert!(env.contains(&"POSTGRES_HOST_AUTH_METHOD=trust".to_owned()));
        assert!(env.contains(&"POSTGRES_DB=validation".to_owned()));
        assert!(!env.iter().any(|e| e.starts_with("POSTGRES_PASSWORD")));
        assert!(env.contains(&"PGDATA=/var/lib/postgresql/data".to_owned()));
        let cmd = body.cmd.expect("cmd").join(" ");
        for setting in ["fsync=off", "wal_level=minimal", "listen_addresses="] {
            assert!(cmd.contains(&format!("-c {setting}")), "{cmd}");
        }
    }
}
